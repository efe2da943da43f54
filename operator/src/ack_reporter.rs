//! Followers send the acks of their own Directory streams to the leader,
//! which alone writes the status. Every report carries the replica's full
//! set, so a new leader learns everything from the next report, and a lost
//! report is repaired by the one after it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use tonic::transport::{Channel, Endpoint};
use voicecluster_api::grpc::ReplicaAcks;
use voicecluster_api::grpc::directory_client::DirectoryClient;
use voicecluster_telemetry::metrics::inc;

use crate::acks::{AckBook, REPORT_TTL};
use crate::controller::Election;
use crate::directory::DirectoryMetrics;

/// How often a follower refreshes its report even when nothing changed;
/// well within [`REPORT_TTL`].
const REFRESH: Duration = Duration::from_secs(REPORT_TTL.as_secs() / 3);

/// Acks that arrive together go out in one report.
const BATCH: Duration = Duration::from_millis(20);

/// The leader's Directory, as last resolved.
struct Leader {
    holder: String,
    client: DirectoryClient<Channel>,
}

/// Reports this replica's acks to the leader until the process ends; on the
/// leader itself it only ages out reports of replicas that went away.
pub async fn run(
    client: Client,
    election: Election,
    directory_port: u16,
    book: Arc<AckBook>,
    metrics: DirectoryMetrics,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &election.namespace);
    let pods: Api<Pod> = Api::namespaced(client, &election.namespace);
    let mut leader: Option<Leader> = None;
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = book.local_changed() => tokio::time::sleep(BATCH).await,
        }
        book.expire(Instant::now());
        let holder = match leases.get_opt(&election.lease).await {
            Ok(lease) => lease.and_then(|l| l.spec).and_then(|s| s.holder_identity),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the leader Lease to report Directory acks");
                continue;
            }
        };
        let Some(holder) = holder.filter(|h| !h.is_empty() && *h != election.identity) else {
            leader = None;
            continue;
        };
        if leader.as_ref().is_none_or(|l| l.holder != holder) {
            leader = match connect(&pods, &holder, directory_port).await {
                Ok(client) => Some(Leader { holder, client }),
                Err(e) => {
                    tracing::warn!(%holder, error = %e, "cannot reach the leader's Directory");
                    count(&metrics, "unreachable");
                    continue;
                }
            };
        }
        let Some(l) = leader.as_mut() else { continue };
        let report = ReplicaAcks {
            replica: election.identity.clone(),
            acks: book.local(),
        };
        match l.client.report_acks(report).await {
            Ok(_) => count(&metrics, "ok"),
            Err(e) => {
                tracing::warn!(holder = %l.holder, error = %e, "the leader refused or missed an ack report");
                count(&metrics, "error");
                // Resolve the leader afresh next time: it may have moved.
                leader = None;
            }
        }
    }
}

fn count(metrics: &DirectoryMetrics, result: &str) {
    inc(&metrics.reports_sent, &[("result", result)]);
}

/// Why the leader's Directory cannot be reached.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// The leader's pod could not be read.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The Lease names a pod that is gone.
    #[error("the leader's pod does not exist")]
    NoPod,
    /// The leader's pod is not running yet.
    #[error("the leader's pod has no IP yet")]
    NoIp,
    /// The pod's IP is not an address.
    #[error(transparent)]
    BadIp(#[from] std::net::AddrParseError),
    /// The address is no endpoint.
    #[error(transparent)]
    Endpoint(#[from] tonic::transport::Error),
}

/// A client for the Directory of the pod named `holder`.
async fn connect(
    pods: &Api<Pod>,
    holder: &str,
    port: u16,
) -> Result<DirectoryClient<Channel>, ConnectError> {
    let pod = pods.get_opt(holder).await?.ok_or(ConnectError::NoPod)?;
    let ip: IpAddr = pod
        .status
        .and_then(|s| s.pod_ip)
        .ok_or(ConnectError::NoIp)?
        .parse()?;
    let endpoint = Endpoint::from_shared(format!("http://{}", SocketAddr::new(ip, port)))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5));
    // Lazily: the report itself is the connection check.
    Ok(DirectoryClient::new(endpoint.connect_lazy()))
}
