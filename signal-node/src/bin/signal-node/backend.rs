//! The backend role: registrar, PBX tasks, billing and task events, as a
//! handle that serves until it fails or is stopped, and on `stop` hands its
//! calls over to its buddy without dropping one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;
use voicecluster_directory_client::Report;
use voicecluster_media_node::service::LegService;
use voicecluster_signal_node::billing::{BillStore, BillWriter, RateTable, SharedBills};
use voicecluster_signal_node::digest::{Authenticator, parse_users};
use voicecluster_signal_node::endpoint::Endpoint;
use voicecluster_signal_node::handover::{HandOver, Limits};
use voicecluster_signal_node::leg_providers::DirectoryView;
use voicecluster_signal_node::lifecycle::Lifecycle;
use voicecluster_signal_node::management;
use voicecluster_signal_node::metrics::SipMetrics;
use voicecluster_signal_node::registrar::Registrar;
use voicecluster_signal_node::task_events::{EventMetrics, Peers, TaskEventsService};
use voicecluster_signal_node::transaction::Timers;
use voicecluster_signal_node::transport::{self, ConfigLink, Links, Listeners};
use voicecluster_telemetry::Readiness;

use crate::settings::{SipSettings, call_legs};
use crate::{Args, SipTask};

/// How long a starting member waits for the others' registrations and
/// replicas before it serves anyway.
const SYNC_LIMIT: Duration = Duration::from_secs(10);
/// The hand-over's limits: the edges hear a lifecycle step within their
/// heartbeats (200 ms by default) times the failure threshold, with room
/// to spare; calls being set up get 20 s to be answered (the pod's grace
/// period is 30 s); the buddy 3 s to confirm.
const HANDOVER: Limits = Limits {
    notice: Duration::from_secs(1),
    settle: Duration::from_secs(20),
    confirm: Duration::from_secs(3),
};

/// What the backend needs from the process around it.
pub(crate) struct Context {
    pub(crate) directory: Option<DirectoryView>,
    pub(crate) reports: watch::Sender<Option<Report>>,
    /// The live configuration, when the member follows the Directory.
    pub(crate) live: Option<ConfigLink>,
    pub(crate) sip_metrics: SipMetrics,
    pub(crate) event_metrics: EventMetrics,
    pub(crate) readiness: Readiness,
}

/// A running backend.
pub(crate) struct Backend {
    /// Serving SIP, gRPC and the management API; ends only on failure.
    pub(crate) task: SipTask,
    lifecycle: watch::Sender<Lifecycle>,
    settled: watch::Receiver<bool>,
    handed_over: watch::Receiver<Option<bool>>,
}

fn users(args: &Args) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let Some(path) = &args.users_file else {
        tracing::warn!("no users file: every REGISTER will be refused");
        return Ok(Default::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_users(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn nonce_secret(args: &Args) -> String {
    args.nonce_secret.clone().unwrap_or_else(|| {
        tracing::warn!("no VC_NONCE_SECRET: nonces are valid on this member only");
        use std::hash::{BuildHasher, RandomState};
        format!("{:x}", RandomState::new().hash_one(std::process::id()))
    })
}

/// Serves this member's gRPC services until the future is dropped.
async fn serve_grpc(
    addr: SocketAddr,
    events: TaskEventsService,
    offered: Option<LegService>,
) -> std::io::Result<()> {
    let router = tonic::transport::Server::builder()
        .add_service(events.into_server())
        .add_optional_service(offered.map(LegService::into_server));
    router
        .serve(addr)
        .await
        .map_err(|e| std::io::Error::other(format!("gRPC on {addr}: {e}")))
}

/// The member's bill file, and the writer the SIP loop bills into it with.
fn bills(
    args: &Args,
    s: &SipSettings,
    metrics: &SipMetrics,
) -> anyhow::Result<(BillWriter, SharedBills)> {
    let rates = RateTable::from_spec(&s.billing).map_err(anyhow::Error::msg)?;
    let store = BillStore::open(&args.bills_file)
        .with_context(|| format!("opening {}", args.bills_file.display()))?;
    let bills: SharedBills = Arc::new(Mutex::new(store));
    let writer = BillWriter::new(rates, Arc::clone(&bills), metrics.bill_write_errors());
    Ok((writer, bills))
}

/// Serving (and ready) once the other members told this one their
/// registrations and replicas, or after SYNC_LIMIT in any case.
fn serve_once_synced(
    synced: tokio::sync::oneshot::Receiver<()>,
    lifecycle: watch::Sender<Lifecycle>,
    readiness: Readiness,
) {
    tokio::spawn(async move {
        if tokio::time::timeout(SYNC_LIMIT, synced).await.is_err() {
            tracing::warn!(
                ?SYNC_LIMIT,
                "not every member answered the first sync; serving anyway"
            );
        }
        lifecycle.send_if_modified(|l| {
            let starting = *l == Lifecycle::Starting;
            if starting {
                *l = Lifecycle::Serving;
            }
            starting
        });
        readiness.set_ready();
    });
}

async fn listen(s: &SipSettings) -> anyhow::Result<Listeners> {
    let listeners = Listeners::bind(s.addr, s.addr)
        .await
        .with_context(|| format!("binding SIP on {}", s.addr))?;
    tracing::info!(
        udp = %listeners.udp_addr()?,
        tcp = %listeners.tcp_addr()?,
        domain = %s.domain,
        "serving SIP"
    );
    Ok(listeners)
}

impl Backend {
    /// Starts the backend; `alone` (no peers, no Directory): nobody to
    /// sync with, so it serves at once.
    pub(crate) async fn start(args: &Args, s: &SipSettings, cx: Context) -> anyhow::Result<Self> {
        let alone = args.signal_peers.is_empty() && cx.directory.is_none();
        let first = if alone {
            Lifecycle::Serving
        } else {
            Lifecycle::Starting
        };
        let (lifecycle, lifecycle_rx) = watch::channel(first);
        let (settled_tx, settled) = watch::channel(true);
        let (handed_tx, handed_over) = watch::channel(None);
        let member = SocketAddr::new(s.advertised.ip(), args.grpc_addr.port()).to_string();
        let (legs, offered) = call_legs(s, args, cx.directory.clone(), member.clone())?;
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(1024);
        let events = TaskEventsService::new(member.clone(), events_tx, cx.event_metrics.clone());
        // Members are known to the edges by IP and the common SIP port; the
        // buddy is found the same way.
        let peers = Peers::new(
            member.clone(),
            args.signal_peers.clone(),
            cx.directory.clone(),
            cx.event_metrics,
        );
        let peers = Arc::new(peers.with_sip_port(s.advertised.port()));
        let (writer, bills) = bills(args, s, &cx.sip_metrics)?;
        let auth = Authenticator::new(&s.domain, &nonce_secret(args), users(args)?);
        let endpoint = Endpoint::new(
            s.advertised,
            Registrar::new(auth),
            true,
            Timers::default(),
            cx.sip_metrics,
        )
        .with_member(member);
        let management = tokio::spawn(management::serve(args.management_addr, bills));
        let grpc = tokio::spawn(serve_grpc(args.grpc_addr, events, offered));
        // Asked only once this member listens for the answers.
        let (first_sync, synced) = tokio::sync::oneshot::channel();
        let syncing = tokio::spawn(Arc::clone(&peers).keep_synced(first_sync));
        serve_once_synced(synced, lifecycle.clone(), cx.readiness);
        let listeners = listen(s).await?;
        let links = Links {
            legs: Some(Arc::new(legs)),
            peers: Some(peers),
            events: Some(events_rx),
            lifecycle: Some((lifecycle_rx, settled_tx)),
            directory: cx.directory,
            reports: Some(cx.reports),
            bills: Some(writer),
            handed_over: Some(handed_tx),
            config: cx.live,
        };
        let sip = tokio::spawn(async move {
            let served = transport::serve(listeners, endpoint, links).await;
            syncing.abort();
            served
        });
        let task = tokio::spawn(async move {
            tokio::select! {
                r = sip => r.map_err(std::io::Error::other)?,
                r = management => r.map_err(std::io::Error::other)?,
                r = grpc => r.map_err(std::io::Error::other)?,
            }
        });
        Ok(Self {
            task,
            lifecycle,
            settled,
            handed_over,
        })
    }

    /// Stopping without dropping a call (see [`HandOver`]): the member
    /// drains, says it is gone, then tells its buddy to take every call and
    /// waits for its confirmation.
    pub(crate) async fn stop(mut self) {
        let mut handover = HandOver::start(HANDOVER, Instant::now());
        handover.on_settled(*self.settled.borrow_and_update(), Instant::now());
        loop {
            let to = handover.lifecycle();
            self.lifecycle
                .send_if_modified(|l| std::mem::replace(l, to) != to);
            if let Some(confirmed) = handover.done() {
                if confirmed {
                    tracing::info!("calls handed over to the buddy");
                } else {
                    tracing::warn!(confirm = ?HANDOVER.confirm, "the buddy did not confirm the hand-over; its calls go over at their next request");
                }
                return;
            }
            let Some(at) = handover.poll_timeout() else {
                return;
            };
            let left = to == Lifecycle::Left;
            tokio::select! {
                () = tokio::time::sleep_until(at.into()) => handover.handle_timeout(Instant::now()),
                Ok(()) = self.settled.changed() => {
                    let settled = *self.settled.borrow_and_update();
                    handover.on_settled(settled, Instant::now());
                }
                Ok(()) = self.handed_over.changed(), if left => {
                    if let Some(confirmed) = *self.handed_over.borrow_and_update() {
                        handover.on_delivered(confirmed, Instant::now());
                    }
                }
            }
        }
    }
}
