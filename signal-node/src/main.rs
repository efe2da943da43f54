//! `signal-node`: SIP signalling for a VoiceCluster — the backend role (registrar, PBX tasks,
//! billing) and the edge role (SIP front door on internet-facing nodes).
//!
//! Today it serves SIP over UDP and TCP with the transaction layer, OPTIONS
//! and the digest-authenticated registrar, follows the operator's Directory,
//! serves the admin endpoints (`/healthz`, `/readyz`, `/metrics`), and exits
//! cleanly on SIGTERM or SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use prometheus_client::registry::Registry;
use std::time::Duration;

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use voicecluster_api::{TASK_EVENTS_PORT, VoiceClusterSpec};

use voicecluster_api::voicecluster::{BillingSpec, CallLegMode};
use voicecluster_directory_client::{ClientMetrics, DirectoryArgs, Report, follow_target};
use voicecluster_media_node::engine::MediaEngine;
use voicecluster_media_node::ports::PortPool;
use voicecluster_media_node::relay::Relay;
use voicecluster_media_node::service::LegService;
use voicecluster_signal_node::billing::{BillStore, RateTable};
use voicecluster_signal_node::digest::{Authenticator, parse_users};
use voicecluster_signal_node::edge::drain::{
    media_admin as media_admin_of, successor, until_media_idle,
};
use voicecluster_signal_node::edge::{Edge, EdgeMetrics, HeartbeatConfig};
use voicecluster_signal_node::endpoint::{Endpoint, Lifecycle, SipMetrics};
use voicecluster_signal_node::leg_providers::{DirectoryView, Legs};
use voicecluster_signal_node::management::{self, SharedBills};
use voicecluster_signal_node::port_sharing;
use voicecluster_signal_node::registrar::Registrar;
use voicecluster_signal_node::task_events::{EventMetrics, Peers, TaskEventsService};
use voicecluster_signal_node::transaction::Timers;
use voicecluster_signal_node::transport::{self, Links, Listeners};
use voicecluster_telemetry::{
    BuildInfo, CommonArgs, Readiness, Telemetry, probe_if_asked, shutdown_signal,
};

const BUILD: BuildInfo = BuildInfo::new(env!("CARGO_BIN_NAME"), env!("CARGO_PKG_VERSION"));

/// A voicecluster signal node: SIP signalling, as a backend (registrar, PBX tasks, billing) or
/// as the edge SIP front door.
#[derive(Debug, Parser)]
#[command(name = "signal-node", version, about, long_about = None)]
struct Args {
    #[command(flatten)]
    telemetry: CommonArgs,
    #[command(flatten)]
    directory: DirectoryArgs,
    #[command(subcommand)]
    role: Option<Role>,
    /// The VoiceCluster spec as JSON (the operator mounts it): SIP domain and port.
    #[arg(long, env = "VC_CONFIG")]
    config: Option<PathBuf>,
    /// Address to serve SIP on, UDP and TCP; the port defaults to the spec's.
    /// Without it or a config, SIP is not served.
    #[arg(long, env = "VC_SIP_ADDR")]
    sip_addr: Option<SocketAddr>,
    /// SIP domain (the digest realm); defaults to the spec's.
    #[arg(long, env = "VC_SIP_DOMAIN")]
    sip_domain: Option<String>,
    /// Users allowed to register: `user:password` per line (mounted from a Secret).
    #[arg(long, env = "VC_USERS_FILE")]
    users_file: Option<PathBuf>,
    /// Key of the digest nonces; members that share it accept each other's nonces.
    #[arg(long, env = "VC_NONCE_SECRET", hide_env_values = true)]
    nonce_secret: Option<String>,
    /// This pod's IP: put in Via and Contact when SIP listens on all addresses.
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<IpAddr>,
    /// Where call legs are made (`Locally`, `LocallyForOthers`, `Remotely`);
    /// defaults to the spec's.
    #[arg(long, env = "VC_CALL_LEG_MODE", value_parser = parse_mode)]
    call_leg_mode: Option<CallLegMode>,
    /// RTP ports of in-process call legs, `min-max`; defaults to the spec's.
    #[arg(long, env = "VC_RTP_PORTS")]
    rtp_ports: Option<String>,
    /// Address put in SDP for in-process call legs; defaults to the SIP address.
    #[arg(long, env = "VC_MEDIA_PUBLIC_IP")]
    media_public_ip: Option<IpAddr>,
    /// Where bills are written (append-only, fsync'd), on the pod's volume.
    #[arg(
        long,
        env = "VC_BILLS_FILE",
        default_value = "/var/lib/voicecluster/bills.jsonl"
    )]
    bills_file: PathBuf,
    /// Where this member's gRPC services listen (TaskEvents; CallLegs too
    /// when `LocallyForOthers`).
    #[arg(long, env = "VC_GRPC_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], TASK_EVENTS_PORT)))]
    grpc_addr: SocketAddr,
    /// Call-leg providers' CallLegs addresses (host:port, comma-separated),
    /// tried after the Directory's, for `Remotely`.
    #[arg(long, env = "VC_CALL_LEG_PROVIDERS", value_delimiter = ',')]
    call_leg_providers: Vec<String>,
    /// Other signal members' TaskEvents addresses (host:port,
    /// comma-separated), besides the Directory's.
    #[arg(long, env = "VC_SIGNAL_PEERS", value_delimiter = ',')]
    signal_peers: Vec<String>,
    /// Where the management API (bills) listens.
    #[arg(long, env = "VC_MANAGEMENT_ADDR", default_value = "0.0.0.0:8080")]
    management_addr: SocketAddr,
}

/// A role other than the backend's.
#[derive(Debug, Subcommand)]
enum Role {
    /// The SIP front door on internet-facing nodes: forwards every message
    /// to a live backend, keeping each Call-ID and dialog on one backend.
    Edge {
        /// Backends' SIP addresses (host:port, comma-separated), besides
        /// the Directory's ready signal members.
        #[arg(long, env = "VC_EDGE_BACKENDS", value_delimiter = ',')]
        backends: Vec<SocketAddr>,
        /// Milliseconds between heartbeats (OPTIONS) to each backend.
        #[arg(long, env = "VC_HEARTBEAT_INTERVAL_MS", default_value_t = 200)]
        heartbeat_interval_ms: u64,
        /// Heartbeats a backend misses in a row before it is down.
        #[arg(long, env = "VC_FAILURE_THRESHOLD", default_value_t = 3)]
        failure_threshold: u32,
        /// Seconds a backend that came back takes to get its full share
        /// of new calls.
        #[arg(long, env = "VC_RAMP_SECONDS", default_value_t = 10)]
        ramp_seconds: u64,
        /// Admin address of the media node beside this edge: on SIGTERM the
        /// edge refuses new calls and stays until that media node carries
        /// no leg (or stops), for at most --drain-seconds.
        #[arg(long, env = "VC_EDGE_MEDIA_ADMIN")]
        media_admin: Option<SocketAddr>,
        /// The instance file of the media node beside this edge, where it
        /// says its admin address when that is not --media-admin (its port
        /// may be in another slot).
        #[arg(long, env = "VC_EDGE_MEDIA_INSTANCE")]
        media_instance: Option<PathBuf>,
        /// The longest an edge drains.
        #[arg(long, env = "VC_EDGE_DRAIN_SECONDS", default_value_t = 30)]
        drain_seconds: u64,
    },
}

fn parse_mode(s: &str) -> Result<CallLegMode, String> {
    match s {
        "Locally" => Ok(CallLegMode::Locally),
        "LocallyForOthers" => Ok(CallLegMode::LocallyForOthers),
        "Remotely" => Ok(CallLegMode::Remotely),
        other => Err(format!(
            "{other:?}: expected Locally, LocallyForOthers or Remotely"
        )),
    }
}

fn parse_ports(s: &str) -> anyhow::Result<(u16, u16)> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| anyhow::anyhow!("RTP ports {s:?}: expected min-max"))?;
    Ok((a.trim().parse()?, b.trim().parse()?))
}

/// What SIP serves on, from the flags and the spec.
struct SipSettings {
    addr: SocketAddr,
    /// The address in Via and Contact.
    advertised: SocketAddr,
    domain: String,
    mode: CallLegMode,
    rtp_ports: (u16, u16),
    capacity: usize,
    billing: BillingSpec,
}

fn sip_settings(args: &Args) -> anyhow::Result<Option<SipSettings>> {
    let spec: Option<VoiceClusterSpec> =
        match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Some(serde_json::from_str(&text).with_context(|| {
                    format!("parsing {} as a VoiceCluster spec", path.display())
                })?)
            }
            None => None,
        };
    let port = spec
        .as_ref()
        .and_then(|s| u16::try_from(s.sip.port).ok())
        .unwrap_or(5060);
    let addr = match (args.sip_addr, &spec) {
        (Some(a), _) => a,
        (None, Some(_)) => SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port),
        (None, None) => return Ok(None),
    };
    let advertised_ip = if addr.ip().is_unspecified() {
        args.pod_ip
            .ok_or_else(|| anyhow::anyhow!("SIP listens on {addr}: set POD_IP to advertise"))?
    } else {
        addr.ip()
    };
    let rtp_ports = match &args.rtp_ports {
        Some(r) => parse_ports(r)?,
        None => spec.as_ref().map_or(Ok((20000, 29999)), |s| {
            let r = &s.media.rtp_port_range;
            Ok::<_, anyhow::Error>((u16::try_from(r.min)?, u16::try_from(r.max)?))
        })?,
    };
    let mode = args
        .call_leg_mode
        .or(spec.as_ref().map(|s| s.signal.call_leg_mode))
        .unwrap_or(CallLegMode::Locally);
    let capacity = spec
        .as_ref()
        .and_then(|s| usize::try_from(s.media.capacity).ok())
        .unwrap_or(1000);
    let billing = spec.as_ref().map(|s| s.billing.clone()).unwrap_or_default();
    let domain = args
        .sip_domain
        .clone()
        .or_else(|| spec.map(|s| s.sip.domain))
        .unwrap_or_else(|| "voicecluster.local".to_string());
    Ok(Some(SipSettings {
        addr,
        advertised: SocketAddr::new(advertised_ip, addr.port()),
        domain,
        mode,
        rtp_ports,
        capacity,
        billing,
    }))
}

/// Where calls' legs come from, by mode; for `LocallyForOthers` also the
/// service to offer other members.
fn call_legs(
    s: &SipSettings,
    args: &Args,
    directory: Option<DirectoryView>,
    member: String,
) -> anyhow::Result<(Legs, Option<LegService>)> {
    if s.mode == CallLegMode::Remotely {
        if directory.is_none() && args.call_leg_providers.is_empty() {
            tracing::warn!("Remotely without a Directory or VC_CALL_LEG_PROVIDERS: calls get 503");
        }
        let legs = Legs::remote(args.call_leg_providers.clone(), directory, member);
        return Ok((legs, None));
    }
    let (min, max) = s.rtp_ports;
    let pool = PortPool::new(min, max)?;
    let relay = Relay::new(pool, s.capacity, Duration::from_secs(30));
    let bind = s.advertised.ip();
    let engine = MediaEngine::new(relay, bind, args.media_public_ip.unwrap_or(bind));
    let service = LegService::new(engine, s.capacity);
    tracing::info!(mode = ?s.mode, ports = %format!("{min}-{max}"), "call legs in this process");
    let offered = (s.mode == CallLegMode::LocallyForOthers).then(|| service.clone());
    Ok((Legs::local(service, member), offered))
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

fn nonce_secret(args: &Args) -> String {
    args.nonce_secret.clone().unwrap_or_else(|| {
        tracing::warn!("no VC_NONCE_SECRET: nonces are valid on this member only");
        use std::hash::{BuildHasher, RandomState};
        format!("{:x}", RandomState::new().hash_one(std::process::id()))
    })
}

/// What serving SIP returns when it ends.
type SipTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// The backend role: registrar, PBX tasks, billing, task events.
async fn start_backend(
    args: &Args,
    s: &SipSettings,
    (directory, reports): (Option<DirectoryView>, watch::Sender<Option<Report>>),
    sip_metrics: SipMetrics,
    event_metrics: EventMetrics,
    lifecycle: (watch::Receiver<Lifecycle>, watch::Sender<bool>),
    started: (watch::Sender<Lifecycle>, Readiness),
) -> anyhow::Result<SipTask> {
    let users = match &args.users_file {
        Some(path) => parse_users(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        None => {
            tracing::warn!("no users file: every REGISTER will be refused");
            Default::default()
        }
    };
    let auth = Authenticator::new(&s.domain, &nonce_secret(args), users);
    let member = SocketAddr::new(s.advertised.ip(), args.grpc_addr.port()).to_string();
    let (legs, offered) = call_legs(s, args, directory.clone(), member.clone())?;
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(1024);
    let events = TaskEventsService::new(member.clone(), events_tx, event_metrics.clone());
    // Members are known to the edges by IP and the common SIP port; the
    // buddy is found the same way.
    let peers = Arc::new(
        Peers::new(
            member.clone(),
            args.signal_peers.clone(),
            directory.clone(),
            event_metrics,
        )
        .with_sip_port(s.advertised.port()),
    );
    let (first_sync, synced) = tokio::sync::oneshot::channel();
    let syncing = tokio::spawn(Arc::clone(&peers).keep_synced(first_sync));
    // Serving (and ready) once the other members told this one their
    // registrations and replicas, or after SYNC_LIMIT in any case.
    let (serving, readiness) = started;
    tokio::spawn(async move {
        if tokio::time::timeout(SYNC_LIMIT, synced).await.is_err() {
            tracing::warn!(
                ?SYNC_LIMIT,
                "not every member answered the first sync; serving anyway"
            );
        }
        serving.send_if_modified(|l| {
            let starting = *l == Lifecycle::Starting;
            if starting {
                *l = Lifecycle::Serving;
            }
            starting
        });
        readiness.set_ready();
    });
    let rates = RateTable::from_spec(&s.billing).map_err(anyhow::Error::msg)?;
    let bills: SharedBills = Arc::new(Mutex::new(
        BillStore::open(&args.bills_file)
            .with_context(|| format!("opening {}", args.bills_file.display()))?,
    ));
    let endpoint = Endpoint::new(
        s.advertised,
        Registrar::new(auth),
        true,
        Timers::default(),
        sip_metrics,
    )
    .with_billing(rates, Arc::clone(&bills))
    .with_member(member);
    let management = tokio::spawn(management::serve(args.management_addr, bills));
    let grpc = tokio::spawn(serve_grpc(args.grpc_addr, events, offered));
    let listeners = Listeners::bind(s.addr, s.addr)
        .await
        .with_context(|| format!("binding SIP on {}", s.addr))?;
    tracing::info!(
        udp = %listeners.udp_addr()?,
        tcp = %listeners.tcp_addr()?,
        domain = %s.domain,
        "serving SIP"
    );
    let links = Links {
        legs: Some(Arc::new(legs)),
        peers: Some(peers),
        events: Some(events_rx),
        lifecycle: Some(lifecycle),
        directory,
        reports: Some(reports),
    };
    let sip = tokio::spawn(async move {
        let served = transport::serve(listeners, endpoint, links).await;
        syncing.abort();
        served
    });
    Ok(tokio::spawn(async move {
        tokio::select! {
            r = sip => r.map_err(std::io::Error::other)?,
            r = management => r.map_err(std::io::Error::other)?,
            r = grpc => r.map_err(std::io::Error::other)?,
        }
    }))
}

/// How long a starting member waits for the others' registrations and
/// replicas before it serves anyway.
const SYNC_LIMIT: Duration = Duration::from_secs(10);
/// How long the edges take to hear a lifecycle step: their heartbeats
/// (200 ms by default) times the failure threshold, with room to spare.
const HANDOVER_NOTICE: Duration = Duration::from_secs(1);
/// Time for the hand-over event to reach the buddy.
const HANDOVER_TELL: Duration = Duration::from_millis(300);
/// How long calls being set up may take to be answered before the member
/// hands over anyway (the pod's grace period is 30 s).
const HANDOVER_WAIT: Duration = Duration::from_secs(20);

/// Stopping without dropping a call: no new calls (the edges hear 503),
/// the calls being set up are answered (and replicated), then the
/// heartbeats say the member is gone and the edges send its dialogs to its
/// buddy, which takes them over on their next request.
async fn hand_over(to: watch::Sender<Lifecycle>, mut settled: watch::Receiver<bool>) {
    to.send_replace(Lifecycle::Draining);
    tokio::time::sleep(HANDOVER_NOTICE).await;
    if tokio::time::timeout(HANDOVER_WAIT, settled.wait_for(|s| *s))
        .await
        .is_err()
    {
        tracing::warn!(
            ?HANDOVER_WAIT,
            "calls still being set up; handing over anyway"
        );
    }
    to.send_replace(Lifecycle::Gone);
    // Requests already on their way are still answered here.
    tokio::time::sleep(HANDOVER_NOTICE).await;
    // The edges send the dialogs to the buddy now: it takes every call
    // over at once, even those that have no request for a while.
    to.send_replace(Lifecycle::Left);
    tokio::time::sleep(HANDOVER_TELL).await;
    tracing::info!("calls handed over to the buddy");
}

/// The edge's SIP port is shared with the edges of its own VoiceCluster
/// only (its successor on the node); `group` names the cluster, `slot` and
/// `slots` are the pod's port slot and how many there are.
struct PortShare {
    group: String,
    slot: u16,
    slots: u16,
}

/// How often an edge looks again at a SIP port someone else holds.
const PORT_RETRY: Duration = Duration::from_secs(1);

/// The edge role: the SIP front door, forwarding to the live backends.
async fn start_edge(
    s: &SipSettings,
    fixed: Vec<SocketAddr>,
    heartbeat: HeartbeatConfig,
    (directory, reports): (Option<DirectoryView>, watch::Sender<Option<Report>>),
    metrics: EdgeMetrics,
    (lifecycle, share, bound): (watch::Receiver<Lifecycle>, PortShare, watch::Sender<bool>),
) -> anyhow::Result<SipTask> {
    let links = Links {
        reports: Some(reports),
        // Nobody waits for an edge to settle.
        lifecycle: Some((lifecycle, watch::channel(true).0)),
        ..Links::default()
    };
    // Backends serve SIP on the same port as the edge (the spec's).
    let port = s.addr.port();
    let backends = move || {
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
    };
    let edge = Edge::new(s.advertised, Box::new(backends), heartbeat, metrics);
    let (addr, advertised) = (s.addr, s.advertised);
    Ok(tokio::spawn(async move {
        // Another process on the port (another VoiceCluster's edge, or an
        // older edge that cannot share): wait until it goes, unready.
        let mut warned = false;
        while !port_sharing::may_bind(addr, &share.group, share.slot, share.slots) {
            if !warned {
                tracing::warn!(%addr, "the SIP port is held by a process that is not an edge of this VoiceCluster; waiting for it");
                warned = true;
            }
            tokio::time::sleep(PORT_RETRY).await;
        }
        let _claim = port_sharing::claim(&share.group, addr.port(), share.slot)?;
        let listeners = Listeners::bind_edge(addr).await?;
        tracing::info!(
            udp = %listeners.udp_addr()?,
            tcp = %listeners.tcp_addr()?,
            %advertised,
            slot = share.slot,
            "serving SIP as the edge"
        );
        bound.send_replace(true);
        transport::serve(listeners, edge, links).await
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    probe_if_asked(BUILD.binary);
    let args = Args::parse();
    // Before anything else, so a SIGTERM during start-up still stops us
    // gracefully.
    let shutdown = shutdown_signal()?;
    let target = args.directory.target().map_err(anyhow::Error::msg)?;
    let mut registry = Registry::default();
    let directory_metrics = ClientMetrics::register(&mut registry);
    let sip_metrics = SipMetrics::register(&mut registry);
    let event_metrics = EventMetrics::register(&mut registry);
    let edge_metrics = EdgeMetrics::register(&mut registry);
    let telemetry = Telemetry::start(BUILD, &args.telemetry, registry).await?;
    // The providers and members in use; what this pod applied and acked.
    // Members and edges report their failover view on the same stream.
    let (reports, reports_rx) = watch::channel(None::<Report>);
    let directory = follow_target(target, directory_metrics, reports_rx);
    let directory_in_use = directory.clone();

    // Edges of one VoiceCluster share the SIP port, and only they.
    let share_group = format!(
        "{}/{}",
        args.directory.pod_namespace.as_deref().unwrap_or_default(),
        args.directory.cluster.as_deref().unwrap_or_default()
    );
    let mut sip_addr = None;
    // An edge is ready only once it holds the SIP port.
    let (sip_bound_tx, mut sip_bound) = watch::channel(true);
    // A backend hands its calls over to its buddy before it stops; an
    // edge drains.
    let mut handover = None;
    let mut edge_drain = None;
    let sip = match (sip_settings(&args)?, &args.role) {
        (
            Some(s),
            Some(Role::Edge {
                backends,
                heartbeat_interval_ms,
                failure_threshold,
                ramp_seconds,
                media_admin,
                media_instance,
                drain_seconds,
            }),
        ) => {
            let (to, lifecycle) = watch::channel(Lifecycle::Serving);
            sip_bound_tx.send_replace(false);
            sip_addr = Some(s.addr);
            edge_drain = Some((
                to,
                // Read when the drain starts: the media node writes it once
                // it listens.
                (media_instance.clone(), *media_admin),
                Duration::from_secs(*drain_seconds),
            ));
            let heartbeat = HeartbeatConfig {
                interval: Duration::from_millis((*heartbeat_interval_ms).max(10)),
                threshold: (*failure_threshold).max(1),
                ramp: Duration::from_secs(*ramp_seconds),
            };
            Some(
                start_edge(
                    &s,
                    backends.clone(),
                    heartbeat,
                    (directory, reports),
                    edge_metrics,
                    (
                        lifecycle,
                        PortShare {
                            group: share_group.clone(),
                            slot: telemetry.slot(),
                            slots: args.telemetry.port_slots,
                        },
                        sip_bound_tx.clone(),
                    ),
                )
                .await?,
            )
        }
        (Some(s), None) => {
            // A member alone (no peers, no Directory) has nobody to wait for.
            let alone = args.signal_peers.is_empty() && directory.is_none();
            let (to, lifecycle) = watch::channel(if alone {
                Lifecycle::Serving
            } else {
                Lifecycle::Starting
            });
            let (settled_tx, settled) = watch::channel(true);
            let serving = to.clone();
            handover = Some((to, settled));
            Some(
                start_backend(
                    &args,
                    &s,
                    (directory, reports),
                    sip_metrics,
                    event_metrics,
                    (lifecycle, settled_tx),
                    (serving, telemetry.readiness().clone()),
                )
                .await?,
            )
        }
        (None, _) => {
            tracing::info!("no VC_CONFIG or --sip-addr: SIP not served");
            None
        }
    };

    // A backend is ready once it synced with the other members; an edge
    // once it has the Directory (the members to send calls to), so that its
    // pod replaces a predecessor only when it can serve.
    if handover.is_none() {
        let readiness = telemetry.readiness().clone();
        let mut directory = directory_in_use.filter(|_| edge_drain.is_some());
        tokio::spawn(async move {
            if let Some(rx) = directory.as_mut() {
                let _ = rx.wait_for(Option::is_some).await;
            }
            let _ = sip_bound.wait_for(|b| *b).await;
            readiness.set_ready();
        });
    }
    // An edge handing its port over closes its sockets at once.
    let sip_abort = sip.as_ref().map(tokio::task::JoinHandle::abort_handle);
    tracing::info!(
        version = BUILD.version,
        admin_addr = %telemetry.admin_addr(),
        "started"
    );

    let sip_ended = async {
        match sip {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let failure = tokio::select! {
        signal = shutdown => {
            tracing::info!(%signal, "shutting down");
            None
        }
        ended = sip_ended => Some(match ended {
            Ok(Ok(())) => anyhow::anyhow!("the SIP server stopped"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the SIP server failed"),
            Err(e) => anyhow::Error::new(e).context("the SIP server panicked"),
        }),
    };
    if let (None, Some((to, settled))) = (&failure, handover) {
        hand_over(to, settled).await;
    }
    if let (None, Some((to, media, max))) = (&failure, edge_drain) {
        // Edges of this cluster that share the SIP port (their claims).
        let sharing = sip_addr.map_or_else(Vec::new, |a| {
            port_sharing::holders(
                &share_group,
                a.port(),
                telemetry.slot(),
                args.telemetry.port_slots,
            )
        });
        match successor(args.telemetry.admin_addr, sharing).await {
            Some(next) => {
                tracing::info!(successor = %next, "a successor edge serves beside this one: handing the SIP port over");
                if let Some(sip) = &sip_abort {
                    sip.abort();
                }
            }
            None => {
                to.send_replace(Lifecycle::Draining);
                until_media_idle(media_admin_of(media.0.as_deref(), media.1), max).await;
                tracing::info!("edge drained");
            }
        }
    }
    telemetry.shutdown().await?;
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}
