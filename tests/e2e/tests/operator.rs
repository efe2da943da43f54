//! The operator installed with helm, reconciling VoiceClusters on the local
//! cluster: workloads on the right nodes, the live provider list, Degraded
//! for a spec no node can serve, clean deletion, and leader failover or a
//! restart of every replica that leaves workload pods alone.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use voicecluster_api::{LABEL_CLUSTER, VoiceCluster};
use voicecluster_e2e::operator::{
    DirectoryWatcher, OPERATOR_NS, RELEASE, condition, example, install_operator, leader,
    media_selector, operator_directory_addrs, pod_identities, wait_condition,
};
use voicecluster_e2e::{
    REAL_NODE, TestNamespace, client, eventually, http_get, is_pod_ready, kubectl, metric_value,
};

#[tokio::test]
async fn example_is_ready_with_live_providers_and_deletes_cleanly() -> Result<()> {
    let client = client().await?;
    install_operator(&client).await?;
    let ns = TestNamespace::create(&client, "op").await?;
    // Clean up whatever the outcome: media pods hold host ports.
    let result = example_is_ready_with_live_providers_and_deletes_cleanly_in(&client, &ns).await;
    ns.delete_and_wait().await?;
    result
}

async fn example_is_ready_with_live_providers_and_deletes_cleanly_in(
    client: &Client,
    ns: &TestNamespace,
) -> Result<()> {
    let client = client.clone();
    let vcs: Api<VoiceCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let vc = example(&ns.name)?;
    let name = vc.name_any();
    vcs.create(&PostParams::default(), &vc)
        .await
        .context("applying the example")?;
    // As a user waits for it.
    kubectl(&[
        "-n",
        &ns.name,
        "wait",
        "--for=condition=Ready",
        &format!("vc/{name}"),
        "--timeout=180s",
    ])
    .await?;
    let ready = vcs.get(&name).await?;
    let status = ready.status.clone().context("no status")?;
    ensure!(condition(&ready, "Degraded").map(|c| c.0).as_deref() == Some("False"));
    ensure!(
        status.observed_generation == ready.metadata.generation,
        "observedGeneration"
    );

    // Media pods exactly on the internet-facing nodes, real and kwok.
    let nodes: Api<Node> = Api::all(client.clone());
    let facing: Vec<Node> = nodes
        .list(&ListParams::default().labels("voicecluster.io/internet-facing=true"))
        .await?
        .items;
    let media = pods.list(&media_selector(&name)).await?.items;
    let mut media_nodes: Vec<String> = media
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    let mut facing_names: Vec<String> = facing.iter().map(|n| n.name_any()).collect();
    media_nodes.sort();
    facing_names.sort();
    ensure!(
        media_nodes == facing_names,
        "media pods on {media_nodes:?}, internet-facing nodes {facing_names:?}"
    );
    ensure!(
        media_nodes.iter().any(|n| n == REAL_NODE),
        "no media pod on the real node"
    );

    // The provider list is exactly the Ready media pods, each with its node's public address.
    let mut want: Vec<(String, String, String)> = media
        .iter()
        .filter(|p| is_pod_ready(p))
        .map(|p| {
            let node = p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let addr = facing
                .iter()
                .find(|n| n.name_any() == node)
                .and_then(|n| {
                    n.annotations()
                        .get("voicecluster.io/public-address")
                        .cloned()
                })
                .unwrap_or_default();
            (p.name_any(), node, addr)
        })
        .collect();
    want.sort();
    let got: Vec<(String, String, String)> = status
        .call_leg_providers
        .iter()
        .map(|p| (p.pod.clone(), p.node.clone(), p.public_address.clone()))
        .collect();
    ensure!(got == want, "providers {got:?}, want {want:?}");
    ensure!(status.provider_count as usize == want.len());
    let signal = status.signal.context("no signal counts")?;
    ensure!(
        (signal.ready, signal.desired) == (2, 2),
        "signal {}",
        signal.summary
    );

    // Every operator replica serves the same Directory version and lists.
    let version = status
        .directory
        .as_ref()
        .map(|d| d.version)
        .context("no directory version")?;
    let mut watchers = Vec::new();
    for addr in operator_directory_addrs(&client).await? {
        let mut w = DirectoryWatcher::open(&addr, &ns.name, &name, "e2e").await?;
        let first = w.next().await?;
        ensure!(
            first.version == version,
            "replica {addr} serves version {} (status {version})",
            first.version
        );
        let mut pods_seen: Vec<String> = first.providers.iter().map(|p| p.pod.clone()).collect();
        pods_seen.sort();
        let want_pods: Vec<String> = want.iter().map(|w| w.0.clone()).collect();
        ensure!(
            pods_seen == want_pods,
            "replica {addr} lists {pods_seen:?}, want {want_pods:?}"
        );
        ensure!(
            first.signal_members.len() == 2,
            "signal members {:?}",
            first.signal_members
        );
        watchers.push((addr, w));
    }
    ensure!(
        watchers.len() == 2,
        "{} operator replicas serve the Directory",
        watchers.len()
    );

    // A draining media pod leaves the list at once.
    let draining = &want[0].0;
    pods.patch(
        draining,
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"metadata": {"annotations": {"voicecluster.io/draining": "true"}}}),
        ),
    )
    .await?;
    eventually(
        "draining pod leaves the provider list",
        Duration::from_secs(30),
        || async {
            let vc = vcs.get(&name).await.map_err(|e| e.to_string())?;
            let list: Vec<String> = vc
                .status
                .map(|s| s.call_leg_providers.into_iter().map(|p| p.pod).collect())
                .unwrap_or_default();
            if list.contains(draining) {
                Err(format!("still listed: {list:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await?;
    // ...and every Directory watcher is pushed a newer version without it.
    for (addr, w) in &mut watchers {
        let next = tokio::time::timeout(Duration::from_secs(30), w.next())
            .await
            .with_context(|| format!("no new version from {addr}"))??;
        ensure!(
            next.version > version,
            "replica {addr} pushed version {}",
            next.version
        );
        ensure!(
            next.providers.iter().all(|p| &p.pod != draining),
            "replica {addr} still lists {draining}"
        );
    }

    // Deleting the VoiceCluster removes everything it created.
    vcs.delete(&name, &DeleteParams::default()).await?;
    let selector = ListParams::default().labels(&format!("{LABEL_CLUSTER}={name}"));
    eventually("owned objects gone", Duration::from_secs(120), || async {
        let selector = &selector;
        let counts = [
            ("statefulsets", ns.count::<StatefulSet>(selector).await?),
            ("daemonsets", ns.count::<DaemonSet>(selector).await?),
            ("services", ns.count::<Service>(selector).await?),
            ("configmaps", ns.count::<ConfigMap>(selector).await?),
            ("pdbs", ns.count::<PodDisruptionBudget>(selector).await?),
            ("pods", ns.count::<Pod>(selector).await?),
        ];
        if counts.iter().all(|(_, c)| *c == 0) {
            Ok(())
        } else {
            Err(format!("{counts:?}"))
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_spec_no_node_can_serve_is_degraded_and_creates_nothing() -> Result<()> {
    let client = client().await?;
    install_operator(&client).await?;
    let ns = TestNamespace::create(&client, "degraded").await?;
    // Clean up whatever the outcome: media pods hold host ports.
    let result = a_spec_no_node_can_serve_is_degraded_and_creates_nothing_in(&client, &ns).await;
    ns.delete_and_wait().await?;
    result
}

async fn a_spec_no_node_can_serve_is_degraded_and_creates_nothing_in(
    _client: &Client,
    ns: &TestNamespace,
) -> Result<()> {
    let vcs: Api<VoiceCluster> = ns.api();
    let mut vc = example(&ns.name)?;
    vc.spec.media.node_selector =
        BTreeMap::from([("voicecluster.io/no-such-node".into(), "true".into())]);
    let name = vc.name_any();
    vcs.create(&PostParams::default(), &vc).await?;
    let degraded = wait_condition(&vcs, &name, "Degraded", "True").await?;
    let reason = condition(&degraded, "Degraded").map(|c| c.1);
    ensure!(
        reason.as_deref() == Some("NoEligibleMediaNodes"),
        "reason {reason:?}"
    );
    ensure!(condition(&degraded, "Ready").map(|c| c.0).as_deref() == Some("False"));
    let selector = ListParams::default().labels(&format!("{LABEL_CLUSTER}={name}"));
    let sts = ns.api::<StatefulSet>().list(&selector).await?.items.len();
    let ds = ns.api::<DaemonSet>().list(&selector).await?.items.len();
    let svc = ns.api::<Service>().list(&selector).await?.items.len();
    ensure!(
        (sts, ds, svc) == (0, 0, 0),
        "half-applied: {sts} StatefulSets, {ds} DaemonSets, {svc} Services"
    );
    Ok(())
}

#[tokio::test]
async fn killing_the_leader_hands_over_without_touching_workload_pods() -> Result<()> {
    let client = client().await?;
    install_operator(&client).await?;
    let ns = TestNamespace::create(&client, "failover").await?;
    // Clean up whatever the outcome: media pods hold host ports.
    let result =
        killing_the_leader_hands_over_without_touching_workload_pods_in(&client, &ns).await;
    ns.delete_and_wait().await?;
    result
}

async fn killing_the_leader_hands_over_without_touching_workload_pods_in(
    client: &Client,
    ns: &TestNamespace,
) -> Result<()> {
    let client = client.clone();
    let vcs: Api<VoiceCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let vc = example(&ns.name)?;
    let name = vc.name_any();
    vcs.create(&PostParams::default(), &vc).await?;
    wait_condition(&vcs, &name, "Ready", "True").await?;
    let before = pod_identities(&pods, &name).await?;

    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    let old = eventually("a leader", Duration::from_secs(60), || leader(&leases)).await?;
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    operator_pods
        .delete(
            &old,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await?;
    let new = eventually(
        "another replica takes the lease",
        Duration::from_secs(90),
        || async {
            match leader(&leases).await? {
                h if h == old => Err(format!("still {h}")),
                h => Ok(h),
            }
        },
    )
    .await?;
    ensure!(new != old);

    // The new leader reconciles: a draining media pod leaves the list.
    let media = pods.list(&media_selector(&name)).await?.items;
    let Some(target) = media.iter().find(|p| is_pod_ready(p)).map(|p| p.name_any()) else {
        bail!("no ready media pod");
    };
    pods.patch(
        &target,
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"metadata": {"annotations": {"voicecluster.io/draining": "true"}}}),
        ),
    )
    .await?;
    eventually(
        "new leader updates the provider list",
        Duration::from_secs(60),
        || async {
            let vc = vcs.get(&name).await.map_err(|e| e.to_string())?;
            let list: Vec<String> = vc
                .status
                .map(|s| s.call_leg_providers.into_iter().map(|p| p.pod).collect())
                .unwrap_or_default();
            if list.contains(&target) {
                Err(format!("still listed: {list:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await?;

    let after = pod_identities(&pods, &name).await?;
    ensure!(
        before == after,
        "workload pods changed across the failover:\nbefore {before:?}\nafter  {after:?}"
    );
    Ok(())
}

/// metadata.generation of the VoiceCluster's StatefulSets and DaemonSets:
/// any change the operator makes to a pod template moves it.
async fn workload_generations(ns: &TestNamespace, name: &str) -> Result<BTreeMap<String, i64>> {
    let selector = ListParams::default().labels(&format!("{LABEL_CLUSTER}={name}"));
    let mut out = BTreeMap::new();
    for s in ns.api::<StatefulSet>().list(&selector).await?.items {
        out.insert(
            format!("sts/{}", s.name_any()),
            s.metadata.generation.unwrap_or(0),
        );
    }
    for d in ns.api::<DaemonSet>().list(&selector).await?.items {
        out.insert(
            format!("ds/{}", d.name_any()),
            d.metadata.generation.unwrap_or(0),
        );
    }
    Ok(out)
}

#[tokio::test]
async fn restarting_the_operator_changes_no_pod() -> Result<()> {
    let client = client().await?;
    install_operator(&client).await?;
    let ns = TestNamespace::create(&client, "restart").await?;
    // Clean up whatever the outcome: media pods hold host ports.
    let result = restarting_the_operator_changes_no_pod_in(&client, &ns).await;
    ns.delete_and_wait().await?;
    result
}

async fn restarting_the_operator_changes_no_pod_in(
    client: &Client,
    ns: &TestNamespace,
) -> Result<()> {
    let vcs: Api<VoiceCluster> = ns.api();
    let pods: Api<Pod> = ns.api();
    let vc = example(&ns.name)?;
    let name = vc.name_any();
    vcs.create(&PostParams::default(), &vc).await?;
    wait_condition(&vcs, &name, "Ready", "True").await?;
    let pods_before = pod_identities(&pods, &name).await?;
    let generations_before = workload_generations(ns, &name).await?;

    // Every replica replaced, as in an upgrade or a node drain.
    let operator_pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    let old: Vec<String> = operator_pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    let deployment = format!("deployment/{RELEASE}-voicecluster-operator");
    kubectl(&["-n", OPERATOR_NS, "rollout", "restart", &deployment]).await?;
    kubectl(&[
        "-n",
        OPERATOR_NS,
        "rollout",
        "status",
        &deployment,
        "--timeout=180s",
    ])
    .await?;

    // A new replica leads and has reconciled the VoiceCluster.
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NS);
    let new_leader = eventually("a new replica leads", Duration::from_secs(90), || async {
        match leader(&leases).await? {
            h if old.contains(&h) => Err(format!("still {h}")),
            h => Ok(h),
        }
    })
    .await?;
    let leader_ip = operator_pods
        .get(&new_leader)
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .context("new leader's IP")?;
    eventually(
        "the new leader reconciled",
        Duration::from_secs(60),
        || async {
            let (_, page) = http_get(&format!("{leader_ip}:9090"), "/metrics")
                .await
                .map_err(|e| e.to_string())?;
            match metric_value(&page, "voicecluster_reconciles_total{result=\"success\"}") {
                Some(n) if n >= 1.0 => Ok(()),
                other => Err(format!("successful reconciles: {other:?}")),
            }
        },
    )
    .await?;
    wait_condition(&vcs, &name, "Ready", "True").await?;

    let pods_after = pod_identities(&pods, &name).await?;
    ensure!(
        pods_before == pods_after,
        "workload pods changed across the restart:\nbefore {pods_before:?}\nafter  {pods_after:?}"
    );
    let generations_after = workload_generations(ns, &name).await?;
    ensure!(
        generations_before == generations_after,
        "workloads changed across the restart:\nbefore {generations_before:?}\nafter  {generations_after:?}"
    );
    Ok(())
}
