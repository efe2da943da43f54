//! The edge role: the SIP front door, forwarding to the live backends, as
//! a handle that serves until it fails or is stopped; on `stop` it hands
//! the SIP port to a successor edge on the node, or drains.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use voicecluster_directory_client::Report;
use voicecluster_signal_node::edge::drain::{
    media_admin as media_admin_of, successor, until_media_idle,
};
use voicecluster_signal_node::edge::{Edge, EdgeMetrics, HeartbeatConfig};
use voicecluster_signal_node::leg_providers::DirectoryView;
use voicecluster_signal_node::lifecycle::Lifecycle;
use voicecluster_signal_node::port_sharing;
use voicecluster_signal_node::transport::{self, Links, Listeners};
use voicecluster_telemetry::Readiness;

use crate::settings::SipSettings;
use crate::{EdgeArgs, SipTask};

/// How often an edge looks again at a SIP port someone else holds.
const PORT_RETRY: Duration = Duration::from_secs(1);

/// The edge's SIP port is shared with the edges of its own VoiceCluster
/// only (its successor on the node); `group` names the cluster, `slot` and
/// `slots` are the pod's port slot and how many there are.
pub(crate) struct PortShare {
    pub(crate) group: String,
    pub(crate) slot: u16,
    pub(crate) slots: u16,
}

/// What the edge needs from the process around it.
pub(crate) struct Context {
    pub(crate) directory: Option<DirectoryView>,
    pub(crate) reports: watch::Sender<Option<Report>>,
    pub(crate) metrics: EdgeMetrics,
    pub(crate) share: PortShare,
    pub(crate) readiness: Readiness,
    /// This process's admin address, which a successor is not.
    pub(crate) admin: SocketAddr,
}

/// A running edge.
pub(crate) struct EdgeRole {
    /// Serving SIP; ends only on failure.
    pub(crate) task: SipTask,
    lifecycle: watch::Sender<Lifecycle>,
    addr: SocketAddr,
    share: PortShare,
    admin: SocketAddr,
    /// The media node beside it: its instance file (read when the drain
    /// starts: the media node writes it once it listens) or fixed address.
    media: (Option<PathBuf>, Option<SocketAddr>),
    drain_limit: Duration,
}

/// The backends to send to: the fixed ones and the Directory's ready
/// signal members, on the edge's own SIP port (the spec's).
fn backends(
    fixed: Vec<SocketAddr>,
    directory: Option<DirectoryView>,
    port: u16,
) -> impl Fn() -> Vec<SocketAddr> + Send + 'static {
    move || {
        let mut live = fixed.clone();
        if let Some(snapshot) = directory.as_ref().and_then(|d| d.borrow().clone()) {
            live.extend(
                snapshot
                    .signal_members
                    .iter()
                    .filter(|m| m.ready)
                    .filter_map(|m| m.address.parse().ok())
                    .map(|ip| SocketAddr::new(ip, port)),
            );
        }
        live.sort();
        live.dedup();
        live
    }
}

/// Ready once it holds the SIP port and has the Directory (the members to
/// send calls to), so that its pod replaces a predecessor only when it
/// can serve.
fn ready_when_serving(
    mut directory: Option<DirectoryView>,
    mut bound: watch::Receiver<bool>,
    readiness: Readiness,
) {
    tokio::spawn(async move {
        if let Some(rx) = directory.as_mut() {
            let _ = rx.wait_for(Option::is_some).await;
        }
        // A serve task that ended before it bound the port never makes the
        // edge ready.
        if bound.wait_for(|b| *b).await.is_ok() {
            readiness.set_ready();
        }
    });
}

/// Binds the shared SIP port once only edges of this cluster hold it, and
/// serves the edge on it.
async fn serve(
    edge: Edge,
    s: (SocketAddr, SocketAddr),
    share: (String, u16, u16),
    links: Links,
    bound: watch::Sender<bool>,
) -> std::io::Result<()> {
    let ((addr, advertised), (group, slot, slots)) = (s, share);
    // Another process on the port (another VoiceCluster's edge, or an
    // older edge that cannot share): wait until it goes, unready.
    let mut warned = false;
    while !port_sharing::may_bind(addr, &group, slot, slots) {
        if !warned {
            tracing::warn!(%addr, "the SIP port is held by a process that is not an edge of this VoiceCluster; waiting for it");
            warned = true;
        }
        tokio::time::sleep(PORT_RETRY).await;
    }
    let _claim = port_sharing::claim(&group, addr.port(), slot)?;
    let listeners = Listeners::bind_edge(addr).await?;
    tracing::info!(
        udp = %listeners.udp_addr()?,
        tcp = %listeners.tcp_addr()?,
        %advertised,
        slot,
        "serving SIP as the edge"
    );
    bound.send_replace(true);
    transport::serve(listeners, edge, links).await
}

impl EdgeRole {
    /// Starts the edge.
    pub(crate) fn start(flags: &EdgeArgs, s: &SipSettings, cx: Context) -> Self {
        let heartbeat = HeartbeatConfig {
            interval: Duration::from_millis(flags.heartbeat_interval_ms.max(10)),
            threshold: flags.failure_threshold.max(1),
            ramp: Duration::from_secs(flags.ramp_seconds),
        };
        let (lifecycle, lifecycle_rx) = watch::channel(Lifecycle::Serving);
        let (bound_tx, bound) = watch::channel(false);
        ready_when_serving(cx.directory.clone(), bound, cx.readiness);
        let links = Links {
            reports: Some(cx.reports),
            // Nobody waits for an edge to settle.
            lifecycle: Some((lifecycle_rx, watch::channel(true).0)),
            ..Links::default()
        };
        let live = backends(flags.backends.clone(), cx.directory, s.addr.port());
        let edge = Edge::new(s.advertised, Box::new(live), heartbeat, cx.metrics);
        let share = (cx.share.group.clone(), cx.share.slot, cx.share.slots);
        let task = tokio::spawn(serve(edge, (s.addr, s.advertised), share, links, bound_tx));
        Self {
            task,
            lifecycle,
            addr: s.addr,
            share: cx.share,
            admin: cx.admin,
            media: (flags.media_instance.clone(), flags.media_admin),
            drain_limit: Duration::from_secs(flags.drain_seconds),
        }
    }

    /// With a ready successor edge of this cluster sharing the SIP port,
    /// closes the sockets at once (the kernel gives it the traffic);
    /// without one, refuses new calls and stays until the media node
    /// beside it carries no leg.
    pub(crate) async fn stop(self) {
        let share = &self.share;
        let sharing =
            port_sharing::holders(&share.group, self.addr.port(), share.slot, share.slots);
        match successor(self.admin, sharing).await {
            Some(next) => {
                tracing::info!(successor = %next, "a successor edge serves beside this one: handing the SIP port over");
                self.task.abort();
            }
            None => {
                self.lifecycle.send_replace(Lifecycle::Draining);
                let media = media_admin_of(self.media.0.as_deref(), self.media.1);
                until_media_idle(media, self.drain_limit).await;
                tracing::info!("edge drained");
            }
        }
    }
}
