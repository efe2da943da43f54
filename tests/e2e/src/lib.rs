//! Shared helpers for the end-to-end tests. They talk to the local cluster
//! that `tests/cluster/cluster up` starts, through its kubeconfig.

pub mod config;
pub mod operator;
pub mod slapd;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where `tests/cluster/cluster up` writes the admin kubeconfig.
pub const DEFAULT_KUBECONFIG: &str = "/var/lib/voicecluster/kubeconfig";
/// The real node's name and address (tests/cluster/lib.sh).
pub const REAL_NODE: &str = "vc-real";
/// Address of the real node on its own interface.
pub const REAL_NODE_IP: &str = "10.250.0.1";
/// Label that marks nodes whose pods may face the internet.
pub const INTERNET_FACING: &str = "voicecluster.io/internet-facing";
/// Tag of the images `cluster load-images` builds.
pub const IMAGE_TAG: &str = "dev";

/// Installs the rustls crypto provider once per process; kube's client
/// needs one and the tests run several clients.
fn install_crypto() {
    // Err means another test installed it first, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The kubeconfig the tests use: `VC_KUBECONFIG`, then `KUBECONFIG`, then
/// the cluster scripts' fixed path.
pub fn kubeconfig_path() -> String {
    std::env::var("VC_KUBECONFIG")
        .or_else(|_| std::env::var("KUBECONFIG"))
        .unwrap_or_else(|_| DEFAULT_KUBECONFIG.to_string())
}

/// Path of a client tool (helm, kubectl) that `cluster up` installs next to
/// the cached binaries.
pub fn tool_path(name: &str) -> String {
    let cache = std::env::var("VC_CACHE").unwrap_or_else(|_| "/var/cache/voicecluster".into());
    format!("{cache}/bin/{name}")
}

/// True when the pod's Ready condition is True.
pub fn is_pod_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A client for the local cluster (kubeconfig from [`kubeconfig_path`]).
/// Fails with a hint when the cluster is not up.
pub async fn client() -> Result<Client> {
    install_crypto();
    let path = kubeconfig_path();
    let kubeconfig = Kubeconfig::read_from(&path).with_context(|| {
        format!("reading {path}: is the cluster up? (tests/cluster/cluster up)")
    })?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .context("loading the kubeconfig")?;
    Client::try_from(config).context("building the client")
}

/// GET `path` over plain HTTP/1.0; returns the status line and the body.
pub async fn http_get(addr: &str, path: &str) -> Result<(String, String)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(3), stream.read_to_string(&mut response))
        .await
        .context("read timed out")??;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or_default().to_string();
    Ok((status, body.to_string()))
}

/// Runs kubectl against the local cluster; its stdout, or an error with
/// what it printed.
pub async fn kubectl(args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(tool_path("kubectl"))
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .await
        .context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The value of the first sample of `metric` (name and labels exactly as
/// exposed) in a Prometheus text page.
pub fn metric_value(page: &str, metric: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(metric)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// Kills with SIGKILL every process of pod `pod` in `namespace` that runs
/// on this machine (the real node): a crash, with no time to say goodbye.
/// Returns how many it killed. Found by the POD_NAME and POD_NAMESPACE
/// variables our containers get.
pub fn kill_pod_processes(namespace: &str, pod: &str) -> Result<usize> {
    let name = format!("POD_NAME={pod}");
    let ns = format!("POD_NAMESPACE={namespace}");
    let mut killed = 0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Processes may end while we look.
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        let has = |v: &str| vars.contains(&v.as_bytes());
        if has(&name) && has(&ns) {
            let status = std::process::Command::new("kill")
                .args(["-s", "KILL", &pid])
                .status()?;
            if status.success() {
                killed += 1;
            }
        }
    }
    Ok(killed)
}

/// Full reference of one of our locally built images.
pub fn image(name: &str) -> String {
    format!("voicecluster.local/{name}:{IMAGE_TAG}")
}

/// The same image under its second name (`cluster load-images` tags it):
/// a VoiceCluster changed to it goes through a rolling upgrade.
pub fn next_image(name: &str) -> String {
    format!("{}-next", image(name))
}

/// A namespace of its own for one test, so tests never see each other's
/// objects. `delete` removes it; a failed test leaves it for inspection.
pub struct TestNamespace {
    /// The namespace's generated name.
    pub name: String,
    client: Client,
}

impl TestNamespace {
    /// Creates a fresh namespace whose name starts with `e2e-{prefix}-`.
    pub async fn create(client: &Client, prefix: &str) -> Result<Self> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let name = format!("e2e-{prefix}-{:x}", nanos ^ std::process::id());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    /// An API handle for namespaced objects of kind `K` in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// How many objects of kind `K` in this namespace match `params`; the
    /// error is a message for [`eventually`].
    pub async fn count<K>(
        &self,
        params: &kube::api::ListParams,
    ) -> std::result::Result<usize, String>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        self.api::<K>()
            .list(params)
            .await
            .map(|l| l.items.len())
            .map_err(|e| e.to_string())
    }

    /// Deletes the namespace and waits until it is gone, so objects that
    /// hold node resources (host ports) are released for the next test.
    pub async fn delete_and_wait(self) -> Result<()> {
        let api = Api::<Namespace>::all(self.client.clone());
        let name = self.name.clone();
        self.delete().await?;
        eventually(
            &format!("namespace {name} gone"),
            Duration::from_secs(180),
            || async {
                match api.get_opt(&name).await.map_err(|e| e.to_string())? {
                    None => Ok(()),
                    Some(_) => Err("still terminating".to_string()),
                }
            },
        )
        .await
    }

    /// Asks the API server to delete the namespace (without waiting).
    pub async fn delete(self) -> Result<()> {
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting namespace {}", self.name))?;
        Ok(())
    }
}

/// Polls `check` until it returns `Ok` (see the shared
/// [`voicecluster_telemetry::testing::eventually`]), as an error of this
/// crate's kind.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    check: impl AsyncFnMut() -> std::result::Result<T, String>,
) -> Result<T> {
    voicecluster_telemetry::testing::eventually(what, timeout, check)
        .await
        .map_err(anyhow::Error::msg)
}

/// The Secret `voice-users` in `namespace`: the users who may register
/// (`user:password`, one per entry) and the shared digest nonce key.
pub async fn users_secret(client: &Client, namespace: &str, users: &[(&str, &str)]) -> Result<()> {
    let lines: String = users.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "voice-users", "namespace": namespace},
        "stringData": {"users": lines, "nonce-secret": "e2e-nonce-key"},
    }))?;
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

/// A metric of the process whose admin server is at `addr`; 0 when it has
/// none or does not answer (a pod on its way, a counter not yet counted).
pub async fn metric(addr: &str, name: &str) -> f64 {
    match http_get(addr, "/metrics").await {
        Ok((_, page)) => metric_value(&page, name).unwrap_or(0.0),
        Err(_) => 0.0,
    }
}

/// Waits until VoiceCluster `name` lists a call-leg provider and all of its
/// `pods` running pods applied the current Directory version: every pod
/// knows its providers and the signal members.
pub async fn directory_settled(
    vcs: &Api<voicecluster_api::VoiceCluster>,
    name: &str,
    pods: i32,
) -> Result<()> {
    eventually(
        "every pod on the current Directory version",
        Duration::from_secs(90),
        || async {
            let vc = vcs.get(name).await.map_err(|e| e.to_string())?;
            let status = vc.status.unwrap_or_default();
            let d = status.directory.unwrap_or_default();
            if !status.call_leg_providers.is_empty() && d.pods == pods && d.current_pods == pods {
                Ok(())
            } else {
                Err(format!("providers {:?}, {d:?}", status.call_leg_providers))
            }
        },
    )
    .await
}
