//! The operator as the tests meet it: installed with helm, a VoiceCluster
//! from the example, its conditions, its pods, and Directory streams opened
//! the way pods open them.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use voicecluster_api::grpc::directory_client::DirectoryClient;
use voicecluster_api::grpc::{Ack, DirectorySnapshot, WatchMessage, WatchRequest, watch_message};
use voicecluster_api::{LABEL_CLUSTER, LABEL_COMPONENT, VoiceCluster};

use crate::{eventually, is_pod_ready, kubeconfig_path, tool_path};

/// The helm release the tests install.
pub const RELEASE: &str = "voicecluster";
/// Namespace of the operator release.
pub const OPERATOR_NS: &str = "voicecluster-system";
/// The example VoiceCluster users apply.
pub const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/voicecluster.yaml"
);
/// The operator's chart.
pub const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../charts/voicecluster-operator"
);

/// `helm upgrade --install` of the chart as a user would run it, with the
/// operator pinned to the node that really runs pods. Idempotent.
pub async fn install_operator(client: &Client) -> Result<()> {
    let out = tokio::process::Command::new(tool_path("helm"))
        .args([
            "upgrade",
            "--install",
            RELEASE,
            CHART,
            "--namespace",
            OPERATOR_NS,
        ])
        .args([
            "--create-namespace",
            "--wait",
            "--timeout",
            "180s",
            "--kubeconfig",
        ])
        .arg(kubeconfig_path())
        .args([
            "--set-string",
            "nodeSelector.voicecluster\\.io/real-node=true",
        ])
        .output()
        .await
        .context("running helm")?;
    ensure!(
        out.status.success(),
        "helm install failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), OPERATOR_NS);
    eventually(
        "operator Deployment 2/2 ready",
        Duration::from_secs(120),
        || async {
            let list = deployments
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?;
            let d = list.items.first().ok_or("no operator Deployment")?;
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            if ready == 2 {
                Ok(())
            } else {
                Err(format!("{ready} ready"))
            }
        },
    )
    .await
}

/// The example VoiceCluster, placed in `namespace`.
pub fn example(namespace: &str) -> Result<VoiceCluster> {
    let yaml = std::fs::read_to_string(EXAMPLE).context("reading the example")?;
    let mut vc: VoiceCluster = serde_yaml::from_str(&yaml).context("parsing the example")?;
    vc.metadata.namespace = Some(namespace.to_string());
    Ok(vc)
}

/// Status and reason of one condition.
pub fn condition(vc: &VoiceCluster, type_: &str) -> Option<(String, String)> {
    vc.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// Waits until condition `type_` has `status`; returns the VoiceCluster then.
pub async fn wait_condition(
    api: &Api<VoiceCluster>,
    name: &str,
    type_: &str,
    status: &str,
) -> Result<VoiceCluster> {
    eventually(
        &format!("{type_}={status}"),
        Duration::from_secs(180),
        || async {
            let vc = api.get(name).await.map_err(|e| e.to_string())?;
            match condition(&vc, type_) {
                Some((s, _)) if s == status => Ok(vc),
                other => Err(format!("{type_} is {other:?}; status {:?}", vc.status)),
            }
        },
    )
    .await
}

/// Selects the media pods of VoiceCluster `name`.
pub fn media_selector(name: &str) -> ListParams {
    ListParams::default().labels(&format!("{LABEL_CLUSTER}={name},{LABEL_COMPONENT}=media"))
}

/// (uid, restarts) of every pod of the VoiceCluster.
pub async fn pod_identities(
    pods: &Api<Pod>,
    name: &str,
) -> Result<BTreeMap<String, (String, i32)>> {
    let list = pods
        .list(&ListParams::default().labels(&format!("{LABEL_CLUSTER}={name}")))
        .await?;
    Ok(list
        .items
        .iter()
        .map(|p| {
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|cs| cs.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            (p.name_any(), (p.uid().unwrap_or_default(), restarts))
        })
        .collect())
}

/// `ip:port` of the Directory on every operator pod (reachable from this
/// machine through the pod bridge).
pub async fn operator_directory_addrs(client: &Client) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    let list = pods.list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|p| is_pod_ready(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .map(|ip| format!("http://{ip}:9443"))
        .collect())
}

/// A Directory stream opened the way a signal or media pod opens it.
pub struct DirectoryWatcher {
    stream: tonic::Streaming<DirectorySnapshot>,
    acks: tokio::sync::mpsc::Sender<WatchMessage>,
}

impl DirectoryWatcher {
    /// Subscribes as pod `pod` of `namespace/cluster`.
    pub async fn open(addr: &str, namespace: &str, cluster: &str, pod: &str) -> Result<Self> {
        let mut c = DirectoryClient::connect(addr.to_string())
            .await
            .with_context(|| format!("connecting to the Directory at {addr}"))?;
        let (acks, rx) = tokio::sync::mpsc::channel(4);
        acks.send(WatchMessage {
            kind: Some(watch_message::Kind::Subscribe(WatchRequest {
                namespace: namespace.to_string(),
                cluster: cluster.to_string(),
                pod: pod.to_string(),
                call_legs_port: 0,
            })),
        })
        .await?;
        let stream = c
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .with_context(|| format!("watching at {addr}"))?
            .into_inner();
        Ok(Self { stream, acks })
    }

    /// The next version pushed.
    pub async fn next(&mut self) -> Result<DirectorySnapshot> {
        self.stream
            .message()
            .await?
            .context("the Directory stream ended")
    }

    /// Says the pod applied `version`, as a pod does.
    pub async fn ack(&self, version: i64) -> Result<()> {
        self.acks
            .send(WatchMessage {
                kind: Some(watch_message::Kind::Ack(Ack { version })),
            })
            .await?;
        Ok(())
    }
}

/// Holder of the operator's Lease (the chart names it after the release).
pub async fn leader(leases: &Api<Lease>) -> Result<String, String> {
    let list = leases
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let lease = list
        .items
        .into_iter()
        .find(|l| l.name_any().starts_with(RELEASE))
        .ok_or("no operator Lease")?;
    lease
        .spec
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "no holder".to_string())
}
