//! The Directory on the local cluster: real signal and media pods follow it
//! and acknowledge each version; acks reach the leader through any replica
//! and the status counts the pods on the current version; a media pod that
//! turns NotReady leaves the provider list and every watcher's view.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use voicecluster_api::voicecluster::DirectoryStatus;
use voicecluster_api::{LABEL_CLUSTER, VoiceCluster};
use voicecluster_e2e::operator::{
    DirectoryWatcher, OPERATOR_NS, example, install_operator, leader, media_selector,
    wait_condition,
};
use voicecluster_e2e::{
    REAL_NODE, TestNamespace, client, eventually, http_get, is_pod_ready, metric_value,
};

/// Operator pods serve the Directory on 9443 and metrics on 9090.
const DIRECTORY_PORT: u16 = 9443;
const ADMIN_PORT: u16 = 9090;

fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

fn is_running(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

async fn directory_status(vcs: &Api<VoiceCluster>, name: &str) -> Result<DirectoryStatus, String> {
    let vc = vcs.get(name).await.map_err(|e| e.to_string())?;
    vc.status
        .and_then(|s| s.directory)
        .ok_or_else(|| "no directory status".to_string())
}

/// Waits until the status counts `pods` running pods, `current` of them on
/// the current version.
async fn wait_counts(
    vcs: &Api<VoiceCluster>,
    name: &str,
    pods: i32,
    current: i32,
) -> Result<DirectoryStatus> {
    eventually(
        &format!("{current} of {pods} pods on the current Directory version"),
        Duration::from_secs(60),
        || async {
            let d = directory_status(vcs, name).await?;
            if (d.pods, d.current_pods) == (pods, current) {
                Ok(d)
            } else {
                Err(format!("{d:?}"))
            }
        },
    )
    .await
}

/// Pod IP of an operator replica that does not hold the Lease.
async fn follower_ip(client: &Client) -> Result<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    let holder = eventually("a leader", Duration::from_secs(60), || leader(&leases)).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    pods.list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.name_any() != holder && is_pod_ready(p))
        .find_map(|p| p.status?.pod_ip)
        .context("no ready follower replica")
}

async fn metrics_of(addr: &str) -> Result<String, String> {
    let (status, body) = http_get(addr, "/metrics")
        .await
        .map_err(|e| e.to_string())?;
    if status.contains("200") {
        Ok(body)
    } else {
        Err(format!("GET /metrics on {addr}: {status}"))
    }
}

#[tokio::test]
async fn pods_acknowledge_versions_and_the_leader_counts_them() -> Result<()> {
    let client = client().await?;
    install_operator(&client).await?;
    let ns = TestNamespace::create(&client, "acks").await?;
    // Clean up whatever the outcome: media pods hold host ports.
    let result = pods_acknowledge_versions_and_the_leader_counts_them_in(&client, &ns).await;
    ns.delete_and_wait().await?;
    result
}

async fn pods_acknowledge_versions_and_the_leader_counts_them_in(
    client: &Client,
    ns: &TestNamespace,
) -> Result<()> {
    let vcs: Api<VoiceCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let vc = example(&ns.name)?;
    let name = vc.name_any();
    vcs.create(&PostParams::default(), &vc).await?;
    wait_condition(&vcs, &name, "Ready", "True").await?;

    // Only pods on the real node run a process; kwok pods never ack.
    let all: Vec<Pod> = pods
        .list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={name}")))
        .await?
        .items
        .into_iter()
        .filter(is_running)
        .collect();
    let real: Vec<&Pod> = all.iter().filter(|p| node_of(p) == REAL_NODE).collect();
    ensure!(!real.is_empty(), "no pod of the example on {REAL_NODE}");
    let n_all = i32::try_from(all.len())?;
    let n_real = i32::try_from(real.len())?;
    let d = wait_counts(&vcs, &name, n_all, n_real).await?;

    // Each real pod applied that version, as its own metrics say.
    for p in &real {
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .context("pod IP")?;
        let container = p
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .context("a container")?;
        // Pods on the node's network declare no ports: their admin port is
        // in the pod's first port slot, the base one, on a fresh node.
        let declared = container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("admin"))
            .map(|p| p.container_port);
        let base = container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "VC_ADMIN_ADDR")
            .and_then(|e| e.value.as_deref()?.rsplit_once(':')?.1.parse::<i32>().ok());
        let port = declared.or(base).context("admin port")?;
        let addr = format!("{ip}:{port}");
        let page = eventually("the pod's metrics", Duration::from_secs(30), || {
            metrics_of(&addr)
        })
        .await?;
        let applied = metric_value(&page, "voicecluster_directory_applied_version");
        ensure!(
            applied == Some(d.version as f64),
            "{} applied {applied:?}, want {}",
            p.name_any(),
            d.version
        );
    }

    // A pod that acks through a follower counts in the status the leader
    // writes: the follower reported it.
    let kwok_pod = pods
        .list(&media_selector(&name))
        .await?
        .items
        .into_iter()
        .find(|p| node_of(p).starts_with("kwok-") && is_running(p))
        .map(|p| p.name_any())
        .context("no media pod on a kwok node")?;
    let follower = follower_ip(client).await?;
    let mut w = DirectoryWatcher::open(
        &format!("http://{follower}:{DIRECTORY_PORT}"),
        &ns.name,
        &name,
        &kwok_pod,
    )
    .await?;
    let first = w.next().await?;
    ensure!(first.version == d.version, "follower serves {first:?}");
    w.ack(first.version).await?;
    wait_counts(&vcs, &name, n_all, n_real + 1).await?;
    let page = metrics_of(&format!("{follower}:{ADMIN_PORT}"))
        .await
        .map_err(anyhow::Error::msg)?;
    for metric in [
        "voicecluster_directory_ack_reports_sent_total{result=\"ok\"}",
        "voicecluster_directory_propagation_seconds_count",
    ] {
        let v = metric_value(&page, metric);
        ensure!(v.is_some_and(|v| v >= 1.0), "follower {metric} = {v:?}");
    }

    // The pod's stream closes: its ack stops counting.
    drop(w);
    wait_counts(&vcs, &name, n_all, n_real).await?;
    Ok(())
}

fn set_ready(ready: bool) -> serde_json::Value {
    let s = if ready { "True" } else { "False" };
    serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": s}]}})
}

/// Waits for a version pushed on `w` newer than `after`; returns it.
async fn newer(
    w: &mut DirectoryWatcher,
    after: i64,
) -> Result<voicecluster_api::grpc::DirectorySnapshot> {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let s = w.next().await?;
            if s.version > after {
                return Ok(s);
            }
        }
    })
    .await
    .context("no newer Directory version in 30 s")?
}

#[tokio::test]
async fn a_media_pod_turning_not_ready_leaves_the_list_and_the_directory() -> Result<()> {
    let client = client().await?;
    install_operator(&client).await?;
    let ns = TestNamespace::create(&client, "notready").await?;
    // Clean up whatever the outcome: media pods hold host ports.
    let result = a_media_pod_turning_not_ready_leaves_the_list_and_the_directory_in(&ns).await;
    ns.delete_and_wait().await?;
    result
}

async fn a_media_pod_turning_not_ready_leaves_the_list_and_the_directory_in(
    ns: &TestNamespace,
) -> Result<()> {
    let vcs: Api<VoiceCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let vc = example(&ns.name)?;
    let name = vc.name_any();
    vcs.create(&PostParams::default(), &vc).await?;
    wait_condition(&vcs, &name, "Ready", "True").await?;

    // A kwok node's media pod: its Ready condition is data the test may
    // flip, as a failing readiness probe would.
    let target = pods
        .list(&media_selector(&name))
        .await?
        .items
        .into_iter()
        .find(|p| node_of(p).starts_with("kwok-") && is_pod_ready(p))
        .map(|p| p.name_any())
        .context("no ready media pod on a kwok node")?;
    let providers = |vc: VoiceCluster| -> Vec<String> {
        vc.status
            .map(|s| s.call_leg_providers.into_iter().map(|p| p.pod).collect())
            .unwrap_or_default()
    };
    let client = client().await?;
    let operator_pods: Api<Pod> = Api::namespaced(client, OPERATOR_NS);
    let operator_ip = operator_pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(is_pod_ready)
        .find_map(|p| p.status?.pod_ip)
        .context("no operator pod")?;
    let mut w = DirectoryWatcher::open(
        &format!("http://{operator_ip}:{DIRECTORY_PORT}"),
        &ns.name,
        &name,
        "e2e-watcher",
    )
    .await?;
    let first = w.next().await?;
    ensure!(
        first.providers.iter().any(|p| p.pod == target),
        "{target} not in {first:?}"
    );

    pods.patch_status(
        &target,
        &PatchParams::default(),
        &Patch::Merge(set_ready(false)),
    )
    .await?;
    eventually(
        "NotReady pod leaves the status",
        Duration::from_secs(30),
        || async {
            let list = providers(vcs.get(&name).await.map_err(|e| e.to_string())?);
            if list.contains(&target) {
                Err(format!("still listed: {list:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await?;
    let without = newer(&mut w, first.version).await?;
    ensure!(
        without.providers.iter().all(|p| p.pod != target),
        "the Directory still lists {target}: {without:?}"
    );
    ensure!(without.providers.len() + 1 == first.providers.len());

    // Ready again: back in both.
    pods.patch_status(
        &target,
        &PatchParams::default(),
        &Patch::Merge(set_ready(true)),
    )
    .await?;
    let with = newer(&mut w, without.version).await?;
    ensure!(
        with.providers.iter().any(|p| p.pod == target),
        "{target} did not come back: {with:?}"
    );
    let listed = providers(vcs.get(&name).await?);
    ensure!(listed.contains(&target), "status lists {listed:?}");
    Ok(())
}
