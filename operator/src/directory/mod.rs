//! The Directory gRPC service. Every replica serves it from its own watch
//! cache of VoiceClusters; the versions and lists come from the status the
//! leader writes, so all replicas serve the same version for the same lists;
//! [`versions`] decides which version the leader writes for which lists.

pub mod versions;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::{Api, Client};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use voicecluster_api::grpc::directory_server::{Directory, DirectoryServer};
use voicecluster_api::grpc::{
    Ack, CallLegProvider, ConfigSubscribe, ConfigUpdate, DirectorySnapshot, FailoverPolicy,
    ReplicaAcks, ReportAcksReply, SignalMember, WatchMessage, WatchRequest, watch_message,
};
use voicecluster_api::voicecluster::{FailoverMode, VoiceClusterStatus};
use voicecluster_telemetry::metrics::{Labels, register_all};

use crate::acks::{AckBook, StreamEntry};
pub use crate::cache::Cache;
use crate::live_config::store::{ConfigStore, Part};

/// Name of the Directory port on the operator's Service (set by the chart).
pub const DIRECTORY_PORT_NAME: &str = "grpc-directory";

/// Directory metrics.
#[derive(Clone)]
pub struct DirectoryMetrics {
    watchers: Gauge,
    snapshots: Counter,
    acks: Counter,
    stray_acks: Counter,
    propagation: Histogram,
    reports_received: Counter,
    /// Reports this replica sent to the leader, by result.
    pub(crate) reports_sent: Family<Labels, Counter>,
}

impl Default for DirectoryMetrics {
    fn default() -> Self {
        Self {
            watchers: Gauge::default(),
            snapshots: Counter::default(),
            acks: Counter::default(),
            stray_acks: Counter::default(),
            // From 1 ms: a pod on the same node acks within milliseconds.
            propagation: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            reports_received: Counter::default(),
            reports_sent: Family::default(),
        }
    }
}

impl DirectoryMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        register_all(
            registry,
            &[
                (
                    "voicecluster_directory_watchers",
                    "Directory streams open on this replica",
                    &m.watchers,
                ),
                (
                    "voicecluster_directory_snapshots_sent",
                    "Directory versions pushed to watchers by this replica",
                    &m.snapshots,
                ),
                (
                    "voicecluster_directory_acks",
                    "Versions pods acknowledged on this replica's streams",
                    &m.acks,
                ),
                (
                    "voicecluster_directory_stray_acks",
                    "Acks ignored because the stream was never sent that version",
                    &m.stray_acks,
                ),
                (
                    "voicecluster_directory_propagation_seconds",
                    "Time from pushing a Directory version on a stream to the pod's ack of it",
                    &m.propagation,
                ),
                (
                    "voicecluster_directory_ack_reports_received",
                    "Ack reports received from other replicas",
                    &m.reports_received,
                ),
                (
                    "voicecluster_directory_ack_reports_sent",
                    "Ack reports sent to the leader, by result",
                    &m.reports_sent,
                ),
            ],
        );
        m
    }
}

/// The Directory's view of a cluster in the cache.
trait Snapshots {
    fn snapshot(&self, namespace: &str, name: &str) -> Option<DirectorySnapshot>;
}

impl Snapshots for Cache {
    fn snapshot(&self, namespace: &str, name: &str) -> Option<DirectorySnapshot> {
        let vc = self.get(namespace, name)?;
        let status = vc.status.as_ref()?;
        Some(DirectorySnapshot {
            version: status.directory.as_ref().map_or(0, |d| d.version),
            providers: status
                .call_leg_providers
                .iter()
                .map(|p| CallLegProvider {
                    pod: p.pod.clone(),
                    node: p.node.clone(),
                    public_address: p.public_address.clone(),
                    grpc_address: p.grpc_address.clone(),
                    capacity: p.capacity,
                    active_legs: p.active_legs,
                })
                .collect(),
            signal_members: status
                .signal_members
                .iter()
                .map(|m| SignalMember {
                    pod: m.pod.clone(),
                    address: m.address.clone(),
                    ready: m.ready,
                })
                .collect(),
            failover: Some(policy_of(status)),
        })
    }
}

/// The failover policy a status carries to the members.
fn policy_of(status: &VoiceClusterStatus) -> FailoverPolicy {
    let (mode, approved) = crate::failover::policy(status.failover.as_ref());
    FailoverPolicy {
        manual: mode == FailoverMode::Manual,
        approved,
    }
}

/// How many recently pushed versions a stream remembers, to time their acks.
const SENT_WINDOW: usize = 16;

/// The gRPC service.
pub struct DirectoryService {
    cache: Cache,
    acks: Arc<AckBook>,
    metrics: DirectoryMetrics,
    configs: Arc<ConfigStore>,
}

impl DirectoryService {
    /// A service answering from `cache` and recording acks in `acks`.
    pub fn new(cache: Cache, acks: Arc<AckBook>, metrics: DirectoryMetrics) -> Self {
        Self {
            cache,
            acks,
            metrics,
            configs: Arc::default(),
        }
    }

    /// Serves the live configuration versions of `configs` too.
    #[must_use]
    pub fn with_configs(mut self, configs: Arc<ConfigStore>) -> Self {
        self.configs = configs;
        self
    }
}

type ConfigStream = Pin<Box<dyn Stream<Item = Result<ConfigUpdate, Status>> + Send>>;

/// Sends `part` of `follow`'s versions on `tx`, each as the update from
/// the one sent before (from `have`, what the pod said it has, at first).
async fn send_configs(
    store: Arc<ConfigStore>,
    (key, part): ((String, String), Part),
    mut have: Option<(i64, String)>,
    mut follow: watch::Receiver<Option<Arc<crate::live_config::store::Version>>>,
    tx: mpsc::Sender<Result<ConfigUpdate, Status>>,
) {
    loop {
        let current = follow.borrow_and_update().clone();
        if let Some(cur) = current {
            let had = have.as_ref().map(|(v, h)| (*v, h.as_str()));
            let sent = part.of(&cur);
            if had != Some((sent.version, sent.hash.as_str())) {
                let update = store.update(&key, had, &cur, part);
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
                have = Some((sent.version, sent.hash.clone()));
            }
        }
        tokio::select! {
            changed = follow.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<DirectorySnapshot, Status>> + Send>>;

/// One pod's open Directory stream.
struct Subscription {
    req: WatchRequest,
    cache: Cache,
    entry: StreamEntry,
    metrics: DirectoryMetrics,
    /// Versions pushed on this stream and when, newest last.
    sent: VecDeque<(i64, Instant)>,
}

impl Subscription {
    fn on_message(&mut self, msg: WatchMessage) {
        match msg.kind {
            Some(watch_message::Kind::Ack(Ack { version })) => {
                let Some(&(_, at)) = self.sent.iter().find(|(v, _)| *v == version) else {
                    self.metrics.stray_acks.inc();
                    tracing::warn!(pod = %self.req.pod, version, "ignoring an ack of a version this stream was not sent");
                    return;
                };
                self.metrics.acks.inc();
                self.metrics.propagation.observe(at.elapsed().as_secs_f64());
                self.entry.ack(version);
            }
            Some(watch_message::Kind::Load(load)) => {
                tracing::debug!(pod = %self.req.pod, active_legs = load.active_legs, draining = load.draining, "load report");
                self.entry.load(load);
            }
            Some(watch_message::Kind::Failover(report)) => {
                tracing::debug!(pod = %self.req.pod, ?report, "failover report");
                self.entry.failover(report);
            }
            Some(watch_message::Kind::Config(result)) => {
                if result.failed {
                    tracing::warn!(pod = %self.req.pod, version = result.version, reason = %result.reason, "a pod refused a configuration version");
                } else {
                    tracing::debug!(pod = %self.req.pod, version = result.version, "configuration applied");
                }
                self.entry.config(result);
            }
            Some(watch_message::Kind::Subscribe(_)) | None => {
                tracing::warn!(pod = %self.req.pod, "ignoring a message that is not an ack after the subscription");
            }
        }
    }

    async fn run(
        mut self,
        mut inbound: impl Stream<Item = Result<WatchMessage, Status>> + Unpin,
        tx: mpsc::Sender<Result<DirectorySnapshot, Status>>,
    ) {
        let mut changes = self.cache.changes();
        let mut inbound_open = true;
        'stream: loop {
            changes.mark_unchanged();
            match self.cache.snapshot(&self.req.namespace, &self.req.cluster) {
                Some(s) if self.sent.back().map(|(v, _)| *v) != Some(s.version) => {
                    let version = s.version;
                    if tx.send(Ok(s)).await.is_err() {
                        break;
                    }
                    if self.sent.len() == SENT_WINDOW {
                        self.sent.pop_front();
                    }
                    self.sent.push_back((version, Instant::now()));
                    self.metrics.snapshots.inc();
                }
                Some(_) => {}
                None => {
                    let _ = tx
                        .send(Err(Status::not_found("the VoiceCluster was deleted")))
                        .await;
                    break;
                }
            }
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() { break 'stream }
                        continue 'stream;
                    }
                    () = tx.closed() => break 'stream,
                    msg = inbound.next(), if inbound_open => match msg {
                        Some(Ok(m)) => self.on_message(m),
                        Some(Err(e)) => {
                            tracing::debug!(pod = %self.req.pod, error = %e, "directory stream broke");
                            break 'stream;
                        }
                        // The pod sends no more acks but still listens.
                        None => inbound_open = false,
                    },
                }
            }
        }
        tracing::debug!(pod = %self.req.pod, cluster = %self.req.cluster, "directory watch closed");
    }
}

#[tonic::async_trait]
impl Directory for DirectoryService {
    type WatchStream = SnapshotStream;
    type WatchConfigStream = ConfigStream;

    async fn watch_config(
        &self,
        request: Request<ConfigSubscribe>,
    ) -> Result<Response<ConfigStream>, Status> {
        let req = request.into_inner();
        self.check_pod(&req.namespace, &req.cluster, &req.pod)
            .await?;
        tracing::debug!(pod = %req.pod, cluster = %req.cluster, version = req.version, "configuration watch opened");
        let key = (req.namespace, req.cluster);
        let follow = self.configs.follow(&key);
        let have = (req.version > 0).then_some((req.version, req.hash));
        let part = if req.settings_only {
            Part::Settings
        } else {
            Part::Whole
        };
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(send_configs(
            Arc::clone(&self.configs),
            (key, part),
            have,
            follow,
            tx,
        ));
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as ConfigStream
        ))
    }

    async fn watch(
        &self,
        request: Request<Streaming<WatchMessage>>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let mut inbound = request.into_inner();
        self.subscribe(&mut inbound).await.map(|(req, entry)| {
            let (tx, rx) = mpsc::channel(4);
            let sub = Subscription {
                req,
                cache: self.cache.clone(),
                entry,
                metrics: self.metrics.clone(),
                sent: VecDeque::new(),
            };
            let metrics = self.metrics.clone();
            tokio::spawn(async move {
                metrics.watchers.inc();
                sub.run(inbound, tx).await;
                metrics.watchers.dec();
            });
            Response::new(Box::pin(ReceiverStream::new(rx)) as SnapshotStream)
        })
    }

    async fn report_acks(
        &self,
        request: Request<ReplicaAcks>,
    ) -> Result<Response<ReportAcksReply>, Status> {
        let report = request.into_inner();
        if report.replica.is_empty() {
            return Err(Status::invalid_argument("replica is required"));
        }
        if let Some(bad) = report
            .acks
            .iter()
            .find(|a| a.namespace.is_empty() || a.cluster.is_empty() || a.pod.is_empty())
        {
            return Err(Status::invalid_argument(format!(
                "every ack needs a namespace, cluster and pod; got {bad:?}"
            )));
        }
        self.metrics.reports_received.inc();
        self.acks
            .report(&report.replica, report.acks, Instant::now());
        Ok(Response::new(ReportAcksReply {}))
    }
}

impl DirectoryService {
    /// A stream is for a pod of a cluster this replica serves.
    async fn check_pod(&self, namespace: &str, cluster: &str, pod: &str) -> Result<(), Status> {
        if namespace.is_empty() || cluster.is_empty() || pod.is_empty() {
            return Err(Status::invalid_argument(
                "namespace, cluster and pod are required",
            ));
        }
        if !self.cache.wait_ready().await {
            return Err(Status::unavailable("the operator's cache is not running"));
        }
        if self.cache.snapshot(namespace, cluster).is_none() {
            return Err(Status::not_found(format!(
                "no VoiceCluster {namespace}/{cluster} with a status yet"
            )));
        }
        Ok(())
    }

    /// Reads and checks the stream's first message.
    async fn subscribe(
        &self,
        inbound: &mut Streaming<WatchMessage>,
    ) -> Result<(WatchRequest, StreamEntry), Status> {
        let first = inbound.next().await.transpose()?;
        let Some(WatchMessage {
            kind: Some(watch_message::Kind::Subscribe(req)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                "the first message of a Directory stream must be a subscribe",
            ));
        };
        self.check_pod(&req.namespace, &req.cluster, &req.pod)
            .await?;
        tracing::debug!(pod = %req.pod, cluster = %req.cluster, "directory watch opened");
        let entry = self.acks.open(&req.namespace, &req.cluster, &req.pod);
        if req.call_legs_port != 0 {
            entry.call_legs_port(req.call_legs_port);
        }
        Ok((req, entry))
    }
}

/// Why the operator's own Service gives no Directory address.
#[derive(Debug, thiserror::Error)]
pub enum ServiceUrlError {
    /// The Service could not be read.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The Service has no spec.
    #[error("the Service has no spec")]
    NoSpec,
    /// The Service is headless or has no cluster IP yet.
    #[error("the Service has no cluster IP")]
    NoClusterIp,
    /// The cluster IP is not an address.
    #[error(transparent)]
    BadClusterIp(#[from] std::net::AddrParseError),
    /// The Service has no port named [`DIRECTORY_PORT_NAME`].
    #[error("the Service has no port named {DIRECTORY_PORT_NAME}")]
    NoPort,
    /// The port is out of range.
    #[error(transparent)]
    BadPort(#[from] std::num::TryFromIntError),
}

/// `http://<cluster IP>:<port>` of the operator's Service: pods reach any
/// replica through it.
pub async fn service_url(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<String, ServiceUrlError> {
    let svc = Api::<Service>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    let spec = svc.spec.ok_or(ServiceUrlError::NoSpec)?;
    let ip: std::net::IpAddr = spec
        .cluster_ip
        .filter(|ip| ip != "None")
        .ok_or(ServiceUrlError::NoClusterIp)?
        .parse()?;
    let ports = spec.ports.unwrap_or_default();
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(DIRECTORY_PORT_NAME))
        .ok_or(ServiceUrlError::NoPort)?
        .port;
    let port = u16::try_from(port)?;
    Ok(format!("http://{}", SocketAddr::new(ip, port)))
}

/// Serves the Directory on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    service: DirectoryService,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(DirectoryServer::new(service))
        .serve(addr)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector;
    use kube::runtime::watcher::Event;
    use tonic::transport::Channel;
    use voicecluster_api::VoiceCluster;
    use voicecluster_api::grpc::PodAck;
    use voicecluster_api::grpc::directory_client::DirectoryClient;
    use voicecluster_api::voicecluster::{DirectoryStatus, VoiceClusterStatus};

    use crate::live_config::store::Version;

    fn vc(version: i64, providers: &[&str]) -> VoiceCluster {
        let mut vc: VoiceCluster = serde_json::from_value(serde_json::json!({
            "apiVersion": "voicecluster.io/v1alpha1", "kind": "VoiceCluster",
            "metadata": {"name": "demo", "namespace": "voice"},
            "spec": {"sip": {"domain": "x"}},
        }))
        .unwrap();
        vc.status = Some(VoiceClusterStatus {
            call_leg_providers: providers
                .iter()
                .map(|p| serde_json::from_value(serde_json::json!({
                    "pod": p, "node": "n", "publicAddress": "192.0.2.1",
                    "grpcAddress": "10.0.0.1:9445", "capacity": 10, "activeLegs": 0, "state": "Active"
                })).unwrap())
                .collect(),
            directory: Some(DirectoryStatus { version, ..DirectoryStatus::default() }),
            ..VoiceClusterStatus::default()
        });
        vc
    }

    struct Fixture {
        client: DirectoryClient<Channel>,
        writer: reflector::store::Writer<VoiceCluster>,
        changes: watch::Sender<u64>,
        acks: Arc<AckBook>,
        configs: Arc<ConfigStore>,
    }

    impl Fixture {
        fn publish(&mut self, vc: VoiceCluster) {
            self.writer.apply_watcher_event(&Event::Apply(vc));
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// A real gRPC server on loopback, answering from a store the test fills.
    async fn fixture(initial: Vec<VoiceCluster>) -> Fixture {
        let (store, mut writer) = reflector::store::<VoiceCluster>();
        writer.apply_watcher_event(&Event::Init);
        for vc in initial {
            writer.apply_watcher_event(&Event::InitApply(vc));
        }
        writer.apply_watcher_event(&Event::InitDone);
        let (changes, rx) = watch::channel(0);
        let acks = AckBook::new();
        let configs = ConfigStore::new(Default::default());
        let service = DirectoryService::new(
            Cache::from_parts(store, rx),
            Arc::clone(&acks),
            DirectoryMetrics::default(),
        )
        .with_configs(Arc::clone(&configs));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DirectoryServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let client = DirectoryClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        Fixture {
            client,
            writer,
            changes,
            acks,
            configs,
        }
    }

    fn users(names: &[&str]) -> voicecluster_api::grpc::ClusterConfig {
        voicecluster_api::grpc::ClusterConfig {
            users: names
                .iter()
                .map(|n| voicecluster_api::grpc::ConfigUser {
                    name: (*n).into(),
                    ha1: format!("{n:0>32}"),
                    display_name: String::new(),
                })
                .collect(),
            billing: None,
            settings: None,
        }
    }

    #[tokio::test]
    async fn a_config_watch_gets_the_whole_version_then_each_change_as_a_delta() {
        use voicecluster_api::config::hash;
        use voicecluster_api::grpc::config_update::Body;
        let mut f = fixture(vec![vc(1, &[])]).await;
        let key = ("voice".to_string(), "demo".to_string());
        let request = |version: i64, hash: String| ConfigSubscribe {
            namespace: "voice".into(),
            cluster: "demo".into(),
            pod: "demo-signal-0".into(),
            version,
            hash,
            settings_only: false,
        };
        // Asked before any version is served: it waits for the first.
        let mut updates = f
            .client
            .watch_config(request(0, String::new()))
            .await
            .unwrap()
            .into_inner();
        let one = users(&["alice"]);
        f.configs
            .publish(&key, Version::new(1, hash(&one), 10, one.clone()));
        let first = updates.next().await.unwrap().unwrap();
        assert!(matches!(first.body, Some(Body::Snapshot(_))), "{first:?}");
        let two = users(&["alice", "bob"]);
        f.configs
            .publish(&key, Version::new(2, hash(&two), 20, two.clone()));
        let second = updates.next().await.unwrap().unwrap();
        assert!(matches!(second.body, Some(Body::Delta(_))));
        assert_eq!((second.version, second.base_version), (2, 1));

        // A pod that has version 2 gets nothing until version 3.
        let mut current = f
            .client
            .watch_config(request(2, hash(&two)))
            .await
            .unwrap()
            .into_inner();
        let three = users(&["bob"]);
        f.configs
            .publish(&key, Version::new(3, hash(&three), 30, three));
        let next = current.next().await.unwrap().unwrap();
        assert_eq!((next.version, next.base_version), (3, 2));
        // A media pod asks for the settings alone: no user reaches it.
        let mut settings = f
            .client
            .watch_config(ConfigSubscribe {
                pod: "demo-media-x".into(),
                settings_only: true,
                ..request(0, String::new())
            })
            .await
            .unwrap()
            .into_inner();
        let got = settings.next().await.unwrap().unwrap();
        let Some(Body::Snapshot(bytes)) = &got.body else {
            panic!("the whole settings: {got:?}")
        };
        let c: voicecluster_api::grpc::ClusterConfig =
            voicecluster_api::config::decompress(bytes, "c").unwrap();
        assert!(c.users.is_empty(), "{c:?}");
        assert_eq!((got.version, got.hash.clone()), (3, hash(&c)));
        // An unknown cluster is refused.
        let err = f
            .client
            .watch_config(ConfigSubscribe {
                cluster: "nope".into(),
                ..request(0, String::new())
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }

    fn subscribe(ns: &str, cluster: &str, pod: &str) -> WatchMessage {
        WatchMessage {
            kind: Some(watch_message::Kind::Subscribe(WatchRequest {
                namespace: ns.into(),
                cluster: cluster.into(),
                pod: pod.into(),
                call_legs_port: 0,
            })),
        }
    }

    fn ack(version: i64) -> WatchMessage {
        WatchMessage {
            kind: Some(watch_message::Kind::Ack(Ack { version })),
        }
    }

    async fn until(mut check: impl FnMut() -> bool) {
        for _ in 0..200 {
            if check() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("condition not reached in 2 s");
    }

    #[tokio::test]
    async fn pushes_each_new_version_and_counts_acks_while_the_stream_lives() {
        let mut f = fixture(vec![vc(3, &["a", "b"])]).await;
        let (out, rx) = mpsc::channel(4);
        out.send(subscribe("voice", "demo", "signal-0"))
            .await
            .unwrap();
        let mut stream = f
            .client
            .watch(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!((first.version, first.providers.len()), (3, 2));
        out.send(ack(3)).await.unwrap();
        until(|| f.acks.versions("voice", "demo").get("signal-0") == Some(&3)).await;

        // The same version again is not pushed; a new one is.
        f.publish(vc(3, &["a", "b"]));
        f.publish(vc(4, &["a"]));
        let next = stream.next().await.unwrap().unwrap();
        assert_eq!((next.version, next.providers.len()), (4, 1));
        // An ack of a version this stream never saw does not count.
        out.send(ack(9)).await.unwrap();
        out.send(ack(4)).await.unwrap();
        until(|| f.acks.versions("voice", "demo").get("signal-0") == Some(&4)).await;

        // The pod goes away: its ack stops counting.
        drop(out);
        drop(stream);
        until(|| f.acks.versions("voice", "demo").is_empty()).await;
    }

    #[tokio::test]
    async fn bad_streams_get_clear_errors() {
        let mut f = fixture(vec![vc(1, &[])]).await;
        let cases = [
            (ack(1), tonic::Code::InvalidArgument),
            (subscribe("", "demo", "p"), tonic::Code::InvalidArgument),
            (subscribe("voice", "demo", ""), tonic::Code::InvalidArgument),
            (subscribe("voice", "nope", "p"), tonic::Code::NotFound),
        ];
        for (first, code) in cases {
            let err = f
                .client
                .watch(futures::stream::iter([first.clone()]))
                .await
                .err()
                .unwrap_or_else(|| panic!("{first:?} was accepted"));
            assert_eq!(err.code(), code, "{first:?}: {}", err.message());
        }
    }

    #[tokio::test]
    async fn reports_from_other_replicas_count_and_are_checked() {
        let mut f = fixture(vec![vc(1, &[])]).await;
        let good = PodAck {
            namespace: "voice".into(),
            cluster: "demo".into(),
            pod: "media-x".into(),
            version: 1,
            load: None,
            failover: None,
            call_legs_port: 9455,
            config: None,
        };
        f.client
            .report_acks(ReplicaAcks {
                replica: "operator-b".into(),
                acks: vec![good.clone()],
            })
            .await
            .unwrap();
        assert_eq!(f.acks.versions("voice", "demo").get("media-x"), Some(&1));
        assert_eq!(
            f.acks.call_legs_ports("voice", "demo").get("media-x"),
            Some(&9455)
        );
        let err = f
            .client
            .report_acks(ReplicaAcks {
                replica: "operator-b".into(),
                acks: vec![PodAck {
                    pod: String::new(),
                    ..good
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        // A refused report leaves the previous one in place.
        assert_eq!(f.acks.versions("voice", "demo").get("media-x"), Some(&1));
    }
}
