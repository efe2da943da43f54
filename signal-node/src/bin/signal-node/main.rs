//! `signal-node`: SIP signalling for a VoiceCluster — the backend role
//! (registrar, PBX tasks, billing) and the edge role (SIP front door on
//! internet-facing nodes). This file reads the flags, starts the common
//! runtime and the Directory, and runs one role until SIGTERM or failure;
//! [`backend`] and [`edge`] hold the roles.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use voicecluster_api::TASK_EVENTS_PORT;
use voicecluster_api::voicecluster::CallLegMode;
use voicecluster_directory_client::config::follow_config;
use voicecluster_directory_client::{ClientMetrics, DirectoryArgs, Report, follow_target};
use voicecluster_signal_node::edge::EdgeMetrics;
use voicecluster_signal_node::live_config::{self, ConfigMetrics};
use voicecluster_signal_node::metrics::SipMetrics;
use voicecluster_signal_node::task_events::EventMetrics;
use voicecluster_signal_node::transport::ConfigLink;
use voicecluster_telemetry::{BuildInfo, CommonArgs, Telemetry, probe_if_asked, shutdown_signal};

mod backend;
mod edge;
mod settings;

use backend::Backend;
use edge::{EdgeRole, PortShare};

const BUILD: BuildInfo = BuildInfo::new(env!("CARGO_BIN_NAME"), env!("CARGO_PKG_VERSION"));

/// What serving SIP returns when it ends.
type SipTask = tokio::task::JoinHandle<std::io::Result<()>>;

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
    /// Where a member keeps the live configuration version it applied last,
    /// on the pod's volume, to start on it after a restart.
    #[arg(long, env = "VC_LIVE_CONFIG_FILE")]
    live_config_file: Option<PathBuf>,
    /// Where the management API (bills) listens.
    #[arg(long, env = "VC_MANAGEMENT_ADDR", default_value = "0.0.0.0:8080")]
    management_addr: SocketAddr,
}

/// A role other than the backend's.
#[derive(Debug, Subcommand)]
enum Role {
    /// The SIP front door on internet-facing nodes: forwards every message
    /// to a live backend, keeping each Call-ID and dialog on one backend.
    Edge(EdgeArgs),
}

/// The edge role's flags.
#[derive(Debug, clap::Args)]
struct EdgeArgs {
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

/// The role this process runs.
enum Running {
    Backend(Backend),
    Edge(EdgeRole),
    /// No SIP configured: only the admin endpoints.
    Idle,
}

impl Running {
    async fn start(
        args: &Args,
        telemetry: &Telemetry,
        registry_metrics: (SipMetrics, EventMetrics, EdgeMetrics),
        (directory, reports, live): (
            Option<voicecluster_signal_node::leg_providers::DirectoryView>,
            watch::Sender<Option<Report>>,
            Option<ConfigLink>,
        ),
    ) -> anyhow::Result<Self> {
        let (sip_metrics, event_metrics, edge_metrics) = registry_metrics;
        let Some(s) = settings::sip_settings(args)? else {
            tracing::info!("no VC_CONFIG or --sip-addr: SIP not served");
            telemetry.readiness().set_ready();
            return Ok(Self::Idle);
        };
        Ok(match &args.role {
            Some(Role::Edge(flags)) => {
                // Edges of one VoiceCluster share the SIP port, and only they.
                let group = format!(
                    "{}/{}",
                    args.directory.pod_namespace.as_deref().unwrap_or_default(),
                    args.directory.cluster.as_deref().unwrap_or_default()
                );
                let cx = edge::Context {
                    directory,
                    reports,
                    metrics: edge_metrics,
                    share: PortShare {
                        group,
                        slot: telemetry.slot(),
                        slots: args.telemetry.port_slots,
                    },
                    readiness: telemetry.readiness().clone(),
                    admin: args.telemetry.admin_addr,
                };
                Self::Edge(EdgeRole::start(flags, &s, cx))
            }
            None => {
                let cx = backend::Context {
                    directory,
                    reports,
                    live,
                    sip_metrics,
                    event_metrics,
                    readiness: telemetry.readiness().clone(),
                };
                Self::Backend(Backend::start(args, &s, cx).await?)
            }
        })
    }

    /// Waits until the role's SIP service ends (it should not).
    async fn ended(&mut self) -> anyhow::Error {
        let ended = match self {
            Self::Backend(b) => (&mut b.task).await,
            Self::Edge(e) => (&mut e.task).await,
            Self::Idle => std::future::pending().await,
        };
        match ended {
            Ok(Ok(())) => anyhow::anyhow!("the SIP server stopped"),
            Ok(Err(e)) => anyhow::Error::new(e).context("the SIP server failed"),
            Err(e) => anyhow::Error::new(e).context("the SIP server panicked"),
        }
    }

    /// Stops the role gracefully (see [`Backend::stop`], [`EdgeRole::stop`]).
    async fn stop(self) {
        match self {
            Self::Backend(b) => b.stop().await,
            Self::Edge(e) => e.stop().await,
            Self::Idle => {}
        }
    }
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
    let config_metrics = ConfigMetrics::register(&mut registry);
    let metrics = (
        SipMetrics::register(&mut registry),
        EventMetrics::register(&mut registry),
        EdgeMetrics::register(&mut registry),
    );
    let telemetry = Telemetry::start(BUILD, &args.telemetry, registry).await?;
    // The providers and members in use; what this pod applied and acked.
    // Members and edges report their failover view on the same stream.
    let (reports, reports_rx) = watch::channel(None::<Report>);
    // A member follows its live configuration beside the Directory and
    // says on the Directory stream what it did with each version.
    let (results, results_rx) = watch::channel(None);
    let live = match (&target, &args.role) {
        (Some(t), None) => Some(ConfigLink {
            offered: follow_config(
                t.clone(),
                args.live_config_file.as_deref().and_then(live_config::load),
            ),
            results,
            keep_at: args.live_config_file.clone(),
            metrics: config_metrics,
            log: telemetry.log_filter().clone(),
            in_force: live_config::InForce::default(),
        }),
        _ => None,
    };
    let results_rx = live.is_some().then_some(results_rx);
    let directory = follow_target(target, directory_metrics, reports_rx, results_rx);
    let mut role = Running::start(&args, &telemetry, metrics, (directory, reports, live)).await?;
    tracing::info!(
        version = BUILD.version,
        admin_addr = %telemetry.admin_addr(),
        "started"
    );
    let failure = tokio::select! {
        signal = shutdown => {
            tracing::info!(%signal, "shutting down");
            None
        }
        e = role.ended() => Some(e),
    };
    if failure.is_none() {
        role.stop().await;
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
