//! The Directory gRPC service. Every replica serves it from its own watch
//! cache of VoiceClusters; the versions and lists come from the status the
//! leader writes, so all replicas serve the same version for the same lists.

use std::net::SocketAddr;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use voicecluster_api::VoiceCluster;
use voicecluster_api::grpc::directory_server::{Directory, DirectoryServer};
use voicecluster_api::grpc::{CallLegProvider, DirectorySnapshot, SignalMember, WatchRequest};

/// Directory metrics.
#[derive(Clone, Default)]
pub struct DirectoryMetrics {
    watchers: Gauge,
    snapshots: Counter,
}

impl DirectoryMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "voicecluster_directory_watchers",
            "Directory streams open on this replica",
            m.watchers.clone(),
        );
        registry.register(
            "voicecluster_directory_snapshots_sent",
            "Directory versions pushed to watchers by this replica",
            m.snapshots.clone(),
        );
        m
    }
}

/// The VoiceCluster cache the Directory serves from, and a signal that
/// ticks on every change to it.
#[derive(Clone)]
pub struct Cache {
    store: Store<VoiceCluster>,
    changes: watch::Receiver<u64>,
}

impl Cache {
    /// Starts watching VoiceClusters in the background.
    pub fn start(client: Client) -> Self {
        let (store, writer) = reflector::store::<VoiceCluster>();
        let (tx, changes) = watch::channel(0u64);
        let stream = watcher(Api::<VoiceCluster>::all(client), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .touched_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "VoiceCluster watch failed; retrying");
                }
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        Self { store, changes }
    }

    /// Whether the first list has arrived.
    pub async fn wait_ready(&self) -> bool {
        self.store.wait_until_ready().await.is_ok()
    }

    fn snapshot(&self, namespace: &str, name: &str) -> Option<DirectorySnapshot> {
        let vc = self.store.get(&ObjectRef::new(name).within(namespace))?;
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
        })
    }
}

/// The gRPC service.
pub struct DirectoryService {
    cache: Cache,
    metrics: DirectoryMetrics,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<DirectorySnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl Directory for DirectoryService {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let req = request.into_inner();
        if req.namespace.is_empty() || req.cluster.is_empty() {
            return Err(Status::invalid_argument(
                "namespace and cluster are required",
            ));
        }
        if !self.cache.wait_ready().await {
            return Err(Status::unavailable("the operator's cache is not running"));
        }
        if self.cache.snapshot(&req.namespace, &req.cluster).is_none() {
            return Err(Status::not_found(format!(
                "no VoiceCluster {}/{} with a status yet",
                req.namespace, req.cluster
            )));
        }
        tracing::debug!(pod = %req.pod, cluster = %req.cluster, "directory watch opened");
        let (tx, rx) = mpsc::channel(4);
        let cache = self.cache.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            metrics.watchers.inc();
            let mut changes = cache.changes.clone();
            let mut sent = None;
            loop {
                changes.mark_unchanged();
                match cache.snapshot(&req.namespace, &req.cluster) {
                    Some(s) if Some(s.version) != sent => {
                        sent = Some(s.version);
                        if tx.send(Ok(s)).await.is_err() {
                            break;
                        }
                        metrics.snapshots.inc();
                    }
                    Some(_) => {}
                    None => {
                        let _ = tx
                            .send(Err(Status::not_found("the VoiceCluster was deleted")))
                            .await;
                        break;
                    }
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    () = tx.closed() => break,
                }
            }
            metrics.watchers.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves the Directory on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    cache: Cache,
    metrics: DirectoryMetrics,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(DirectoryServer::new(DirectoryService { cache, metrics }))
        .serve(addr)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher::Event;
    use voicecluster_api::voicecluster::{DirectoryStatus, VoiceClusterStatus};

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
            directory: Some(DirectoryStatus { version }),
            ..VoiceClusterStatus::default()
        });
        vc
    }

    fn service() -> (
        DirectoryService,
        reflector::store::Writer<VoiceCluster>,
        watch::Sender<u64>,
    ) {
        let (store, writer) = reflector::store::<VoiceCluster>();
        let (tx, changes) = watch::channel(0);
        let svc = DirectoryService {
            cache: Cache { store, changes },
            metrics: DirectoryMetrics::default(),
        };
        (svc, writer, tx)
    }

    fn request(ns: &str, cluster: &str) -> Request<WatchRequest> {
        Request::new(WatchRequest {
            namespace: ns.into(),
            cluster: cluster.into(),
            pod: "test".into(),
        })
    }

    #[tokio::test]
    async fn pushes_the_current_version_then_each_new_one() {
        let (svc, mut writer, tx) = service();
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(vc(3, &["a", "b"])));
        writer.apply_watcher_event(&Event::InitDone);
        let mut stream = svc
            .watch(request("voice", "demo"))
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.version, 3);
        assert_eq!(first.providers.len(), 2);

        // The same version again is not pushed; a new one is.
        writer.apply_watcher_event(&Event::Apply(vc(3, &["a", "b"])));
        tx.send_modify(|n| *n += 1);
        writer.apply_watcher_event(&Event::Apply(vc(4, &["a"])));
        tx.send_modify(|n| *n += 1);
        let next = stream.next().await.unwrap().unwrap();
        assert_eq!(next.version, 4);
        assert_eq!(next.providers.len(), 1);
    }

    #[tokio::test]
    async fn bad_requests_get_clear_errors() {
        let (svc, mut writer, _tx) = service();
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        let err = svc.watch(request("", "demo")).await.err().unwrap();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = svc.watch(request("voice", "nope")).await.err().unwrap();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }
}
