//! The local cluster itself (issue: "A real local Kubernetes cluster"):
//! a real control plane at the pinned version, a real node that runs our
//! images, kwok nodes, Services through kube-proxy and namespace deletion.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::{ListParams, LogParams, PostParams};
use kube::{Api, ResourceExt};
use voicecluster_api::nodes::address;
use voicecluster_e2e::{
    INTERNET_FACING, REAL_NODE, REAL_NODE_IP, TestNamespace, client, eventually, http_get, image,
};

const K8S_VERSION: &str = "v1.34.4";

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    serde_json::from_value(v).context("building a manifest")
}

fn pod_phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".into())
}

#[tokio::test]
async fn control_plane_and_kubelet_report_the_pinned_version() -> Result<()> {
    let client = client().await?;
    let info = client.apiserver_version().await?;
    ensure!(
        info.git_version == K8S_VERSION,
        "apiserver reports {}, want {K8S_VERSION}",
        info.git_version
    );
    let node = Api::<Node>::all(client).get(REAL_NODE).await?;
    let kubelet = node
        .status
        .and_then(|s| s.node_info)
        .map(|i| (i.kubelet_version, i.kube_proxy_version))
        .context("real node has no nodeInfo")?;
    ensure!(kubelet.0 == K8S_VERSION, "kubelet reports {}", kubelet.0);
    Ok(())
}

#[tokio::test]
async fn real_node_and_fake_nodes_are_ready() -> Result<()> {
    let nodes = Api::<Node>::all(client().await?);
    let real = nodes.get(REAL_NODE).await?;
    ensure!(is_ready(&real), "real node {REAL_NODE} is not Ready");
    ensure!(
        real.labels().get(INTERNET_FACING).map(String::as_str) == Some("true"),
        "real node is not labelled {INTERNET_FACING}=true"
    );
    ensure!(
        address(&real, "InternalIP").as_deref() == Some(REAL_NODE_IP),
        "real node's InternalIP is {:?}",
        address(&real, "InternalIP")
    );

    let fake = nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await?;
    ensure!(
        fake.items.len() >= 4,
        "only {} kwok nodes",
        fake.items.len()
    );
    for n in &fake.items {
        ensure!(is_ready(n), "kwok node {} is not Ready", n.name_any());
    }
    let facing: Vec<&Node> = fake
        .items
        .iter()
        .filter(|n| n.labels().get(INTERNET_FACING).map(String::as_str) == Some("true"))
        .collect();
    ensure!(!facing.is_empty(), "no internet-facing kwok node");
    ensure!(
        facing.len() < fake.items.len(),
        "every kwok node is internet-facing; placement tests need both kinds"
    );
    for n in facing {
        let ip = address(n, "ExternalIP").unwrap_or_default();
        ensure!(
            ip.starts_with("203.0.113."),
            "internet-facing kwok node {} has ExternalIP {ip:?}, want one in 203.0.113.0/24",
            n.name_any()
        );
    }
    Ok(())
}

#[tokio::test]
async fn pod_from_a_locally_built_image_runs_to_completion() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "image").await?;
    let pods: Api<Pod> = ns.api();
    let pod: Pod = json(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "version"},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {"kubernetes.io/hostname": REAL_NODE},
            "containers": [{
                "name": "operator", "image": image("operator"),
                // Never: the test fails if the image had to come from a registry.
                "imagePullPolicy": "Never",
                "args": ["--version"],
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    eventually("pod Succeeded", Duration::from_secs(120), || async {
        let p = pods.get("version").await.map_err(|e| e.to_string())?;
        match pod_phase(&p).as_str() {
            "Succeeded" => Ok(()),
            phase => Err(format!("phase {phase}, status {:?}", p.status)),
        }
    })
    .await?;
    let logs = pods.logs("version", &LogParams::default()).await?;
    let want = format!("voicecluster-operator {}", env!("CARGO_PKG_VERSION"));
    ensure!(logs.contains(&want), "pod printed {logs:?}, want {want:?}");
    ns.delete().await
}

#[tokio::test]
async fn cluster_ip_service_reaches_a_real_pod() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "svc").await?;
    let pods: Api<Pod> = ns.api();
    let services: Api<Service> = ns.api();
    let pod: Pod = json(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "signal", "labels": {"app": "signal"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": REAL_NODE},
            "containers": [{
                "name": "signal", "image": image("signal-node"), "imagePullPolicy": "Never",
                "ports": [{"name": "admin", "containerPort": 9090}],
                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"},
                                   "periodSeconds": 1},
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let svc: Service = json(serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "signal"},
        "spec": {"type": "ClusterIP", "selector": {"app": "signal"},
                 "ports": [{"port": 80, "targetPort": "admin"}]},
    }))?;
    let svc = services.create(&PostParams::default(), &svc).await?;
    let cluster_ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("Service has no ClusterIP")?;

    eventually("pod Ready", Duration::from_secs(120), || async {
        let p = pods.get("signal").await.map_err(|e| e.to_string())?;
        if voicecluster_e2e::is_pod_ready(&p) {
            Ok(())
        } else {
            Err(format!("{:?}", p.status))
        }
    })
    .await?;

    // From this machine through kube-proxy's rules to the pod's address.
    let addr = format!("{cluster_ip}:80");
    let (status, body) = eventually("ClusterIP answers", Duration::from_secs(60), || async {
        http_get(&addr, "/healthz").await.map_err(|e| e.to_string())
    })
    .await?;
    ensure!(
        status.contains(" 200 "),
        "GET /healthz via {addr}: {status}"
    );
    ensure!(
        body.trim() == "ok",
        "GET /healthz via {addr} returned {body:?}"
    );
    ns.delete().await
}

#[tokio::test]
async fn deployment_pinned_to_a_kwok_node_runs() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "kwok").await?;
    let deployments: Api<Deployment> = ns.api();
    let pods: Api<Pod> = ns.api();
    let fake_node = "kwok-edge-0";
    let deployment: Deployment = json(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "media"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "media"}},
            "template": {
                "metadata": {"labels": {"app": "media"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": fake_node},
                    "containers": [{"name": "media", "image": image("media-node")}],
                },
            },
        },
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    eventually("3 replicas ready", Duration::from_secs(120), || async {
        let d = deployments.get("media").await.map_err(|e| e.to_string())?;
        let ready = d
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        if ready == 3 {
            Ok(())
        } else {
            Err(format!("{ready} ready: {:?}", d.status))
        }
    })
    .await?;
    let list = pods
        .list(&ListParams::default().labels("app=media"))
        .await?;
    ensure!(list.items.len() == 3, "{} pods", list.items.len());
    for p in &list.items {
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        ensure!(
            node.as_deref() == Some(fake_node),
            "pod {} on {node:?}",
            p.name_any()
        );
        ensure!(
            pod_phase(p) == "Running",
            "pod {} is {}",
            p.name_any(),
            pod_phase(p)
        );
    }
    ns.delete().await
}

#[tokio::test]
async fn deleting_a_namespace_finishes() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "delete").await?;
    let name = ns.name.clone();
    let pods: Api<Pod> = ns.api();
    // One pod the kubelet really runs and one on a kwok node: the namespace
    // is only gone once both were stopped by their nodes.
    for (pod_name, node) in [("real", REAL_NODE), ("fake", "kwok-core-0")] {
        let pod: Pod = json(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod_name},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "terminationGracePeriodSeconds": 5,
                "containers": [{"name": "media", "image": image("media-node"),
                                "imagePullPolicy": "Never"}],
            },
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    eventually("both pods Running", Duration::from_secs(120), || async {
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let phases: Vec<String> = list.items.iter().map(pod_phase).collect();
        if phases.len() == 2 && phases.iter().all(|p| p == "Running") {
            Ok(())
        } else {
            Err(format!("phases {phases:?}"))
        }
    })
    .await?;
    ns.delete().await?;
    let namespaces = Api::<Namespace>::all(client);
    eventually("namespace gone", Duration::from_secs(120), || async {
        match namespaces.get_opt(&name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(n) => Err(format!("still there: {:?}", n.status)),
        }
    })
    .await
}

/// Runs one of the client tools `cluster up` installs next to the cached
/// binaries, and returns what it printed.
fn run_tool(tool: &str, args: &[&str]) -> Result<String> {
    let path = voicecluster_e2e::tool_path(tool);
    let out = std::process::Command::new(&path)
        .args(args)
        .output()
        .with_context(|| format!("running {path}"))?;
    ensure!(
        out.status.success(),
        "{path} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn helm_v4_and_kubectl_are_ready() -> Result<()> {
    let helm = run_tool("helm", &["version", "--short"])?;
    ensure!(helm.starts_with("v4."), "helm version {helm:?}, want v4.x");

    let kubeconfig = voicecluster_e2e::kubeconfig_path();
    let version = run_tool(
        "kubectl",
        &["--kubeconfig", &kubeconfig, "version", "-o", "json"],
    )?;
    let v: serde_json::Value = serde_json::from_str(&version)?;
    ensure!(
        v["serverVersion"]["gitVersion"] == K8S_VERSION,
        "kubectl version shows server {}",
        v["serverVersion"]["gitVersion"]
    );
    ensure!(
        v["clientVersion"]["minor"] == "33",
        "kubectl client {}, want 1.33 (within one minor of the server)",
        v["clientVersion"]["gitVersion"]
    );
    Ok(())
}
