//! `media-node`: the edge call legs of a VoiceCluster — RTP relay and WebRTC legs on internet-
//! facing nodes, with their port allocation and drain.
//!
//! It serves gRPC `CallLegs` to the signal members (legs on RTP/RTCP port
//! pairs from its range, bridged and relayed here), follows the operator's
//! Directory and its live configuration (log filter, media timeout, leg
//! statistics interval), serves the admin endpoints (`/healthz`, `/readyz`,
//! `/metrics`), and exits cleanly on SIGTERM or SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use voicecluster_api::grpc::{DirectorySnapshot, Load};
use voicecluster_directory_client::config::follow_settings;
use voicecluster_directory_client::{ClientMetrics, DirectoryArgs, Report, Target, follow_target};
use voicecluster_media_node::engine::MediaEngine;
use voicecluster_media_node::leg_events::Notifier;
use voicecluster_media_node::live_config;
use voicecluster_media_node::metrics::MediaMetrics;
use voicecluster_media_node::ports::PortPool;
use voicecluster_media_node::relay::Relay;
use voicecluster_media_node::service::{LegService, LegTiming};
use voicecluster_telemetry::instance::bind_slot;
use voicecluster_telemetry::{
    BuildInfo, CommonArgs, Readiness, ShutdownSignal, Telemetry, probe_if_asked, shutdown_signal,
};

const BUILD: BuildInfo = BuildInfo::new(env!("CARGO_BIN_NAME"), env!("CARGO_PKG_VERSION"));

/// A voicecluster media node: RTP and WebRTC call legs on an internet-facing node.
#[derive(Debug, Parser)]
#[command(name = "media-node", version, about, long_about = None)]
struct Args {
    #[command(flatten)]
    telemetry: CommonArgs,
    #[command(flatten)]
    directory: DirectoryArgs,
    /// Where the gRPC CallLegs service listens (the operator sets port
    /// 9445); without it no call legs are offered.
    #[arg(long, env = "VC_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// RTP ports of call legs, `min-max` (a leg takes an even port and the
    /// odd one above it for RTCP).
    #[arg(long, env = "VC_RTP_PORTS", default_value = "20000-29999", value_parser = parse_ports)]
    rtp_ports: (u16, u16),
    /// Call legs accepted at most.
    #[arg(long, env = "VC_CAPACITY", default_value_t = 1000)]
    capacity: usize,
    /// Address the legs' sockets bind to.
    #[arg(long, env = "VC_MEDIA_BIND_IP", default_value = "0.0.0.0")]
    bind_ip: IpAddr,
    /// Address given for the legs (signal members put the Directory's
    /// public address of this pod's node in SDP when they know it).
    #[arg(long, env = "VC_MEDIA_PUBLIC_IP")]
    public_ip: Option<IpAddr>,
    /// This pod's IP, the legs' address when no public one is given.
    #[arg(long, env = "POD_IP")]
    pod_ip: Option<IpAddr>,
    /// Seconds a stopping pod waits for its legs to end before it exits.
    #[arg(long, env = "VC_DRAIN_TIMEOUT_SECONDS", default_value_t = 3600)]
    drain_timeout_seconds: u64,
    /// Seconds without media after which a leg times out, until the live
    /// configuration says (`spec.media.mediaTimeoutSeconds`).
    #[arg(long, env = "VC_MEDIA_TIMEOUT_SECONDS", default_value_t = 30)]
    media_timeout_seconds: u64,
    /// Seconds between statistics events to each leg's owner; 0: none.
    /// Until the live configuration says (`spec.media.legStatsSeconds`).
    #[arg(long, env = "VC_LEG_STATS_SECONDS", default_value_t = 10)]
    leg_stats_seconds: u64,
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected min-max"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|e| format!("{s:?}: {p:?} is not a port: {e}"))
    };
    Ok((port(a)?, port(b)?))
}

/// The legs this pod offers, from its flags.
fn leg_service(args: &Args, metrics: MediaMetrics) -> anyhow::Result<(LegService, IpAddr)> {
    let (min, max) = args.rtp_ports;
    let pool = PortPool::new(min, max).with_context(|| format!("RTP ports {min}-{max}"))?;
    let public_ip = args
        .public_ip
        .or(args.pod_ip)
        .or((!args.bind_ip.is_unspecified()).then_some(args.bind_ip))
        .context("set VC_MEDIA_PUBLIC_IP or POD_IP: the legs need an address")?;
    let relay = Relay::new(
        pool,
        args.capacity,
        Duration::from_secs(args.media_timeout_seconds),
    );
    let engine = MediaEngine::new(relay, args.bind_ip, public_ip).with_metrics(metrics);
    tracing::info!(ports = %format!("{min}-{max}"), %public_ip, capacity = args.capacity, "call legs offered");
    let service = LegService::new(engine, args.capacity);
    service.set_timing(LegTiming {
        media_timeout: Duration::from_secs(args.media_timeout_seconds),
        statistics: (args.leg_stats_seconds > 0)
            .then(|| Duration::from_secs(args.leg_stats_seconds)),
    });
    Ok((service, public_ip))
}

/// Serves CallLegs on `listener` and tells leg owners about silent legs;
/// ends only if the server fails.
async fn offer_legs(
    service: &LegService,
    listener: TcpListener,
    addr: SocketAddr,
) -> anyhow::Error {
    let timeouts = tokio::spawn(service.clone().report_leg_events(Duration::from_secs(1)));
    let served = tonic::transport::Server::builder()
        .add_service(service.clone().into_server())
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await;
    timeouts.abort();
    match served {
        Ok(()) => anyhow::anyhow!("the CallLegs server on {addr} stopped"),
        Err(e) => anyhow::Error::new(e).context(format!("CallLegs on {addr}")),
    }
}

/// The CallLegs side of this pod: its listener and the legs it serves.
struct Legs {
    listener: TcpListener,
    addr: SocketAddr,
    service: LegService,
}

/// Binds CallLegs near `base` for the legs the flags describe, records its
/// address, gives `target` its port, and names this pod in leg events.
async fn bind_legs(
    args: &Args,
    base: SocketAddr,
    telemetry: &Telemetry,
    target: Option<&mut Target>,
    metrics: MediaMetrics,
) -> anyhow::Result<Legs> {
    let (service, public_ip) = leg_service(args, metrics)?;
    // In the slot the admin server took: a pod's ports go together.
    let slot = telemetry.slot();
    let listener = bind_slot(base, slot)
        .await
        .with_context(|| format!("CallLegs on {base}, port slot {slot}"))?;
    let addr = listener.local_addr()?;
    telemetry.instance().record("grpc", addr)?;
    if let Some(t) = target {
        t.call_legs_port = addr.port();
    }
    // Leg events name this pod by its CallLegs address.
    let sender = SocketAddr::new(args.pod_ip.unwrap_or(public_ip), addr.port());
    let notifier = Notifier::new(sender.to_string(), service.metrics().clone());
    Ok(Legs {
        listener,
        addr,
        service: service.with_notifier(notifier),
    })
}

/// Ready once the operator has heard from this pod (and so knows its
/// CallLegs port) and it has the Directory in use: only then may it
/// become a provider, or replace its predecessor.
fn become_ready(
    readiness: Readiness,
    mut directory: Option<watch::Receiver<Option<Arc<DirectorySnapshot>>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Some(rx) = directory.as_mut() {
            let _ = rx.wait_for(Option::is_some).await;
        }
        readiness.set_ready();
    })
}

/// Why the pod stops: SIGTERM or SIGINT, or a drain asked for over gRPC
/// (both `None`: it drains), or the CallLegs server's failure.
async fn stop_reason(
    shutdown: impl Future<Output = ShutdownSignal>,
    service: Option<&LegService>,
    serving: Pin<&mut impl Future<Output = anyhow::Error>>,
) -> Option<anyhow::Error> {
    let drain_asked = async {
        match service {
            Some(service) => service.drain_requested().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        signal = shutdown => {
            tracing::info!(%signal, "shutting down");
            None
        }
        () = drain_asked => {
            tracing::info!("drain requested");
            None
        }
        e = serving => Some(e),
    }
}

/// Refuses new legs and lets the ones running end, within `timeout`,
/// telling the operator (through `load`) how many are left; cuts off the
/// rest then. Fails only if the CallLegs server (`serving`) does meanwhile.
async fn drain(
    service: &LegService,
    timeout: Duration,
    load: &watch::Sender<Option<Report>>,
    serving: Pin<&mut impl Future<Output = anyhow::Error>>,
) -> anyhow::Result<()> {
    service.drain();
    let left = tokio::select! {
        left = service.drained(timeout, |legs| {
            load.send_replace(Some(Report::Load(Load {
                active_legs: i32::try_from(legs).unwrap_or(i32::MAX),
                draining: true,
            })));
        }) => left,
        e = serving => return Err(e),
    };
    if left > 0 {
        tracing::warn!(legs = left, ?timeout, "drain timeout: legs cut off");
        // Their calls hear of it and hang up.
        let closing = service.close_all("the media pod's drain timeout passed");
        tokio::select! {
            () = closing => {}
            () = tokio::time::sleep(Duration::from_secs(3)) => {}
        }
    } else {
        tracing::info!("drained: no legs left");
        // A moment for the last report to reach the operator.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    probe_if_asked(BUILD.binary);
    let args = Args::parse();
    // Before anything else, so a SIGTERM during start-up still stops us
    // gracefully.
    let shutdown = shutdown_signal()?;
    let mut target = args.directory.target().map_err(anyhow::Error::msg)?;
    let mut registry = Registry::default();
    let directory_metrics = ClientMetrics::register(&mut registry);
    let media_metrics = MediaMetrics::register(&mut registry);
    let telemetry = Telemetry::start(BUILD, &args.telemetry, registry).await?;
    let legs = match args.grpc_addr {
        Some(base) => {
            let metrics = media_metrics.clone();
            Some(bind_legs(&args, base, &telemetry, target.as_mut(), metrics).await?)
        }
        None => {
            tracing::warn!("no VC_GRPC_ADDR: no call legs offered");
            None
        }
    };
    // The live configuration's settings beside the Directory (no users, no
    // rates: this node faces the internet), from its first version on (the
    // flags hold until then; a restart asks for the whole again); what
    // became of each version goes on the Directory stream.
    let (results, results_rx) = watch::channel(None);
    let live = target.clone().map(|t| {
        tokio::spawn(live_config::follow(
            follow_settings(t),
            telemetry.log_filter().clone(),
            legs.as_ref().map(|l| l.service.clone()),
            results,
            media_metrics,
        ))
    });
    // The providers and members in use; what this pod applied and acked.
    // While draining, the legs left go to the operator on the same stream.
    let (load, load_reports) = watch::channel(None::<Report>);
    let results_rx = live.is_some().then_some(results_rx);
    let directory = follow_target(target, directory_metrics, load_reports, results_rx);
    let (listener, service) = match legs {
        Some(Legs {
            listener,
            addr,
            service,
        }) => (Some(listener), Some((addr, service))),
        None => (None, None),
    };

    // The server keeps running through a drain: the legs still need it.
    let serving = async {
        match (&service, listener) {
            (Some((addr, service)), Some(listener)) => offer_legs(service, listener, *addr).await,
            _ => std::future::pending().await,
        }
    };
    tokio::pin!(serving);
    let ready = become_ready(telemetry.readiness().clone(), directory.clone());
    tracing::info!(
        version = BUILD.version,
        admin_addr = %telemetry.admin_addr(),
        grpc_addr = ?service.as_ref().map(|s| s.0),
        "started"
    );

    let failure = stop_reason(shutdown, service.as_ref().map(|s| &s.1), serving.as_mut()).await;
    if let (None, Some((_, service))) = (&failure, &service) {
        // Leave the provider list (not ready), refuse new legs, and let the
        // ones running end, within the drain timeout.
        ready.abort();
        telemetry.readiness().set_not_ready("draining");
        let timeout = Duration::from_secs(args.drain_timeout_seconds);
        drain(service, timeout, &load, serving.as_mut()).await?;
    }
    telemetry.shutdown().await?;
    match failure {
        Some(e) => Err(e),
        None => {
            let legs = service.as_ref().map_or(0, |s| s.1.active_legs());
            tracing::info!(legs, "stopped");
            Ok(())
        }
    }
}
