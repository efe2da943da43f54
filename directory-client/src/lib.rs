//! How a signal or media pod follows the operator's Directory.
//!
//! The pod subscribes, gets the cluster's provider and member lists pushed
//! whenever their version changes, applies each version, and acknowledges
//! it on the same stream so the operator can count the pods that run the
//! current version. The stream is kept open for the life of the pod: when
//! the operator replica behind it goes away, the client reconnects (through
//! the Service, so to any replica) with back-off, and a version the pod
//! already applied is acknowledged again at once.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Endpoint;
use voicecluster_api::grpc::directory_client::DirectoryClient;
use voicecluster_api::grpc::{
    Ack, ConfigResult, DirectorySnapshot, FailoverReport, Load, WatchMessage, WatchRequest,
    watch_message,
};
use voicecluster_telemetry::metrics::{Labels, inc, register_all};

pub mod config;

/// Back-off between reconnects: from this ...
const RETRY_MIN: Duration = Duration::from_millis(200);
/// ... doubling up to this.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Where the Directory is and who this pod is; the operator sets all of it
/// in the pods it creates.
#[derive(Args, Clone, Debug, Default)]
pub struct DirectoryArgs {
    /// The operator's Directory, `http://host:port`; without it the pod
    /// does not follow the Directory.
    #[arg(long, env = voicecluster_api::ENV_DIRECTORY_URL)]
    pub directory_url: Option<String>,
    /// Name of this pod's VoiceCluster.
    #[arg(long, env = "VC_CLUSTER")]
    pub cluster: Option<String>,
    /// This pod's name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// This pod's namespace (the VoiceCluster's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
}

/// Whom to subscribe to, and as whom.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `http://host:port` of the Directory.
    pub url: String,
    /// Namespace of the VoiceCluster.
    pub namespace: String,
    /// Name of the VoiceCluster.
    pub cluster: String,
    /// This pod's name.
    pub pod: String,
    /// The port of this pod's CallLegs service, when it took one other
    /// than the well-known port; 0 otherwise.
    pub call_legs_port: u16,
}

impl DirectoryArgs {
    /// The subscription these flags describe: none without a URL, an error
    /// when the URL is there but the pod's identity is not.
    pub fn target(&self) -> Result<Option<Target>, String> {
        let Some(url) = self.directory_url.clone().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let need = |v: &Option<String>, what: &str| {
            v.clone()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("--directory-url is set but {what} is not"))
        };
        Ok(Some(Target {
            url,
            namespace: need(&self.pod_namespace, "--pod-namespace (POD_NAMESPACE)")?,
            cluster: need(&self.cluster, "--cluster (VC_CLUSTER)")?,
            pod: need(&self.pod_name, "--pod-name (POD_NAME)")?,
            call_legs_port: 0,
        }))
    }
}

/// The client's metrics, on the pod's `/metrics`.
#[derive(Clone, Default)]
pub struct ClientMetrics {
    version: Gauge,
    providers: Gauge,
    members: Gauge,
    sessions: Family<Labels, Counter>,
}

impl ClientMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        register_all(
            registry,
            &[
                (
                    "voicecluster_directory_applied_version",
                    "The Directory version this pod applied last",
                    &m.version,
                ),
                (
                    "voicecluster_directory_providers",
                    "Call-leg providers in the applied Directory version",
                    &m.providers,
                ),
                (
                    "voicecluster_directory_signal_members",
                    "Signal members in the applied Directory version",
                    &m.members,
                ),
                (
                    "voicecluster_directory_sessions",
                    "Directory streams this pod opened, by how they ended",
                    &m.sessions,
                ),
            ],
        );
        m
    }

    fn session(&self, outcome: &str) {
        inc(&self.sessions, &[("outcome", outcome)]);
    }
}

/// A running subscription: the newest version received, and a way to say
/// which version the pod has applied.
pub struct Follower {
    received: watch::Receiver<Option<Arc<DirectorySnapshot>>>,
    applied: watch::Sender<i64>,
}

/// What a pod says of itself on the Directory stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Report {
    /// A media pod's legs and drain.
    Load(Load),
    /// A signal pod's or edge's failover view.
    Failover(FailoverReport),
}

impl Report {
    fn message(self) -> WatchMessage {
        WatchMessage {
            kind: Some(match self {
                Report::Load(l) => watch_message::Kind::Load(l),
                Report::Failover(f) => watch_message::Kind::Failover(f),
            }),
        }
    }
}

/// A pod's reports; each is sent whenever it changes (and again after a
/// reconnect). None: nothing to say.
pub type Reports = watch::Receiver<Option<Report>>;

/// What a pod did with its last configuration version, sent on the
/// Directory stream whenever it changes (and again after a reconnect).
pub type ConfigResults = watch::Receiver<Option<ConfigResult>>;

impl Follower {
    /// Subscribes in the background, reconnecting for as long as the
    /// follower lives, and passing on the pod's `load` reports.
    pub fn spawn(
        target: Target,
        metrics: ClientMetrics,
        load: Reports,
        results: Option<ConfigResults>,
    ) -> Self {
        let (received_tx, received) = watch::channel(None);
        let (applied, applied_rx) = watch::channel(0);
        tokio::spawn(keep_subscribed(
            target,
            received_tx,
            applied_rx,
            (load, results),
            metrics,
        ));
        Self { received, applied }
    }

    /// The next version not seen yet; `None` once the subscription ended.
    pub async fn next(&mut self) -> Option<Arc<DirectorySnapshot>> {
        loop {
            self.received.changed().await.ok()?;
            if let Some(s) = self.received.borrow_and_update().clone() {
                return Some(s);
            }
        }
    }

    /// Tells the operator this version is in use now.
    pub fn applied(&self, version: i64) {
        self.applied.send_replace(version);
    }
}

/// Follows the Directory for the life of the process. The returned view
/// holds the version in use: a version is acknowledged once it is in the
/// view, where the rest of the pod reads its providers and members.
pub fn follow(
    target: Target,
    metrics: ClientMetrics,
    load: Reports,
) -> watch::Receiver<Option<Arc<DirectorySnapshot>>> {
    follow_with_config(target, metrics, load, None)
}

/// As [`follow`], and sends what the pod did with its configuration
/// versions (`results`) on the same stream.
pub fn follow_with_config(
    target: Target,
    metrics: ClientMetrics,
    load: Reports,
    results: Option<ConfigResults>,
) -> watch::Receiver<Option<Arc<DirectorySnapshot>>> {
    let (view_tx, view) = watch::channel(None);
    let mut follower = Follower::spawn(target, metrics.clone(), load, results);
    tokio::spawn(async move {
        while let Some(s) = follower.next().await {
            let version = s.version;
            tracing::info!(
                version,
                providers = s.providers.len(),
                signal_members = s.signal_members.len(),
                "applying Directory version"
            );
            metrics.version.set(version);
            metrics.providers.set(gauge_len(s.providers.len()));
            metrics.members.set(gauge_len(s.signal_members.len()));
            view_tx.send_replace(Some(s));
            follower.applied(version);
        }
    });
    view
}

/// Follows the Directory when the pod was given one (`target`), and says
/// in the log which it is; the pod works on without a Directory otherwise.
pub fn follow_target(
    target: Option<Target>,
    metrics: ClientMetrics,
    load: Reports,
    results: Option<ConfigResults>,
) -> Option<watch::Receiver<Option<Arc<DirectorySnapshot>>>> {
    match target {
        Some(target) => {
            tracing::info!(url = %target.url, "following the Directory");
            Some(follow_with_config(target, metrics, load, results))
        }
        None => {
            tracing::info!("no Directory URL: not following the Directory");
            None
        }
    }
}

fn gauge_len(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

async fn keep_subscribed(
    target: Target,
    received: watch::Sender<Option<Arc<DirectorySnapshot>>>,
    mut applied: watch::Receiver<i64>,
    (mut load, mut results): (Reports, Option<ConfigResults>),
    metrics: ClientMetrics,
) {
    let mut backoff = Backoff::new();
    loop {
        let mut got_any = false;
        let says = Says {
            load: &mut load,
            results: results.as_mut(),
        };
        match session(&target, &received, &mut applied, says, &mut got_any).await {
            Ok(End::FollowerGone) => return,
            Ok(End::ServerClosed) => {
                metrics.session("closed");
                tracing::info!(url = %target.url, "the Directory closed the stream; reconnecting");
            }
            Err(e) => {
                metrics.session("failed");
                tracing::warn!(url = %target.url, error = %e, "Directory stream failed; reconnecting");
            }
        }
        if received.is_closed() {
            return;
        }
        backoff.pause(got_any).await;
    }
}

/// The pause between a stream's end and the next try: from [`RETRY_MIN`],
/// doubling up to [`RETRY_MAX`], back at the minimum after a stream that
/// delivered something.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Self(RETRY_MIN)
    }

    /// Waits before the next try; `got_any`: the last stream delivered.
    pub(crate) async fn pause(&mut self, got_any: bool) {
        if got_any {
            self.0 = RETRY_MIN;
        }
        tokio::time::sleep(jittered(self.0)).await;
        self.0 = (self.0 * 2).min(RETRY_MAX);
    }
}

/// Between half and all of `d`, so that pods cut off together do not all
/// come back in the same instant.
fn jittered(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d / 2 + d.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

enum End {
    ServerClosed,
    FollowerGone,
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One Directory stream, from subscribing until it ends: versions it
/// delivers go to `received` (or are acked at once when already
/// `applied`), versions the pod applies are acked, and the pod's reports
/// go up.
/// What the pod says of itself on a stream.
struct Says<'a> {
    load: &'a mut Reports,
    results: Option<&'a mut ConfigResults>,
}

async fn result_changed(results: &mut Option<&mut ConfigResults>) -> bool {
    match results {
        Some(r) => r.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn session(
    target: &Target,
    received: &watch::Sender<Option<Arc<DirectorySnapshot>>>,
    applied: &mut watch::Receiver<i64>,
    says: Says<'_>,
    got_any: &mut bool,
) -> Result<End, BoxError> {
    let Says { load, mut results } = says;
    let (out, mut inbound) = subscribe(target).await?;
    // A new stream may reach another replica: it hears the load again,
    // and the last configuration result.
    send_report(&out, load).await?;
    if let Some(r) = results.as_mut() {
        send_result(&out, r).await?;
    }
    // A pod that never reports drops its sender; stop watching then.
    let mut load_open = true;
    let mut results_open = results.is_some();
    let mut acks = Acks::new(out);
    loop {
        tokio::select! {
            msg = inbound.next() => {
                let Some(snapshot) = msg.transpose()? else {
                    return Ok(End::ServerClosed);
                };
                *got_any = true;
                acks.delivered(snapshot, received, applied).await?;
            }
            changed = load.changed(), if load_open => {
                if changed.is_err() {
                    load_open = false;
                    continue;
                }
                send_report(&acks.out, load).await?;
            }
            open = result_changed(&mut results), if results_open => {
                if !open {
                    results_open = false;
                    continue;
                }
                if let Some(r) = results.as_mut() {
                    send_result(&acks.out, r).await?;
                }
            }
            changed = applied.changed() => {
                if changed.is_err() {
                    return Ok(End::FollowerGone);
                }
                let version = *applied.borrow_and_update();
                acks.applied(version).await?;
            }
        }
    }
}

/// A channel to the Directory at `url`, kept alive so that a replica that
/// went away is noticed within seconds.
pub(crate) async fn connect(url: &str) -> Result<tonic::transport::Channel, BoxError> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

/// Connects to the Directory and subscribes as `target`: where the pod's
/// messages go on the new stream, and the versions coming down it.
async fn subscribe(
    target: &Target,
) -> Result<(mpsc::Sender<WatchMessage>, Streaming<DirectorySnapshot>), BoxError> {
    let channel = connect(&target.url).await?;
    let (out, out_rx) = mpsc::channel(8);
    out.send(WatchMessage {
        kind: Some(watch_message::Kind::Subscribe(WatchRequest {
            namespace: target.namespace.clone(),
            cluster: target.cluster.clone(),
            pod: target.pod.clone(),
            call_legs_port: u32::from(target.call_legs_port),
        })),
    })
    .await?;
    let inbound = DirectoryClient::new(channel)
        .watch(ReceiverStream::new(out_rx))
        .await?
        .into_inner();
    Ok((out, inbound))
}

/// Sends the pod's report as it is now, if it has one.
async fn send_report(out: &mpsc::Sender<WatchMessage>, load: &mut Reports) -> Result<(), BoxError> {
    let now = load.borrow_and_update().clone();
    if let Some(l) = now {
        out.send(l.message()).await?;
    }
    Ok(())
}

/// Sends the pod's last configuration result, if it has one.
async fn send_result(
    out: &mpsc::Sender<WatchMessage>,
    results: &mut ConfigResults,
) -> Result<(), BoxError> {
    let now = results.borrow_and_update().clone();
    if let Some(r) = now {
        out.send(WatchMessage {
            kind: Some(watch_message::Kind::Config(r)),
        })
        .await?;
    }
    Ok(())
}

/// The acknowledgements of one stream: a version is acked on the stream
/// that delivered it, once, when the pod has it in use.
struct Acks {
    out: mpsc::Sender<WatchMessage>,
    /// The newest version this stream delivered.
    latest: Option<i64>,
    /// The last one acked on it.
    acked: Option<i64>,
}

impl Acks {
    fn new(out: mpsc::Sender<WatchMessage>) -> Self {
        Self {
            out,
            latest: None,
            acked: None,
        }
    }

    /// The stream delivered `snapshot`: it goes to the follower, unless
    /// the pod already applied it.
    async fn delivered(
        &mut self,
        snapshot: DirectorySnapshot,
        received: &watch::Sender<Option<Arc<DirectorySnapshot>>>,
        applied: &watch::Receiver<i64>,
    ) -> Result<(), BoxError> {
        let version = snapshot.version;
        self.latest = Some(version);
        tracing::debug!(version, "Directory version received");
        let in_use = *applied.borrow() == version;
        if in_use {
            // Already in use (a reconnect): nothing to apply again.
            self.ack(version).await
        } else {
            received.send_replace(Some(Arc::new(snapshot)));
            Ok(())
        }
    }

    /// The pod applied `version`: acked if this stream delivered it last
    /// and has not acked it yet.
    async fn applied(&mut self, version: i64) -> Result<(), BoxError> {
        if self.latest == Some(version) && self.acked != Some(version) {
            self.ack(version).await?;
        }
        Ok(())
    }

    async fn ack(&mut self, version: i64) -> Result<(), BoxError> {
        self.out
            .send(WatchMessage {
                kind: Some(watch_message::Kind::Ack(Ack { version })),
            })
            .await?;
        self.acked = Some(version);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
