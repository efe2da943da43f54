//! `media-node`: the edge call legs of a VoiceCluster — RTP relay and WebRTC legs on internet-
//! facing nodes, with their port allocation and drain.
//!
//! It serves gRPC `CallLegs` to the signal members (legs on RTP/RTCP port
//! pairs from its range, bridged and relayed here), follows the operator's
//! Directory, serves the admin endpoints (`/healthz`, `/readyz`, `/metrics`),
//! and exits cleanly on SIGTERM or SIGINT.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use prometheus_client::registry::Registry;
use voicecluster_directory_client::{ClientMetrics, DirectoryArgs, follow_target};
use voicecluster_media_node::engine::MediaEngine;
use voicecluster_media_node::ports::PortPool;
use voicecluster_media_node::relay::Relay;
use voicecluster_media_node::service::LegService;
use voicecluster_telemetry::{BuildInfo, CommonArgs, Telemetry, shutdown_signal};

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
    /// Seconds without media after which a leg times out.
    #[arg(long, env = "VC_MEDIA_TIMEOUT_SECONDS", default_value_t = 30)]
    media_timeout_seconds: u64,
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
fn leg_service(args: &Args) -> anyhow::Result<LegService> {
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
    let engine = MediaEngine::new(relay, args.bind_ip, public_ip);
    tracing::info!(ports = %format!("{min}-{max}"), %public_ip, capacity = args.capacity, "call legs offered");
    Ok(LegService::new(engine, args.capacity))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before anything else, so a SIGTERM during start-up still stops us
    // gracefully.
    let shutdown = shutdown_signal()?;
    let target = args.directory.target().map_err(anyhow::Error::msg)?;
    let mut registry = Registry::default();
    let directory_metrics = ClientMetrics::register(&mut registry);
    let telemetry = Telemetry::start(BUILD, &args.telemetry, registry).await?;
    let service = match args.grpc_addr {
        Some(addr) => Some((addr, leg_service(&args)?)),
        None => {
            tracing::warn!("no VC_GRPC_ADDR: no call legs offered");
            None
        }
    };
    // The providers and members in use; what this pod applied and acked.
    let _directory = follow_target(target, directory_metrics);

    let grpc = async {
        match &service {
            Some((addr, service)) => {
                let served = tonic::transport::Server::builder()
                    .add_service(service.clone().into_server())
                    .serve(*addr)
                    .await;
                Some((*addr, served))
            }
            None => std::future::pending().await,
        }
    };
    telemetry.readiness().set_ready();
    tracing::info!(
        version = BUILD.version,
        admin_addr = %telemetry.admin_addr(),
        grpc_addr = ?service.as_ref().map(|s| s.0),
        "started"
    );

    let failure = tokio::select! {
        signal = shutdown => {
            tracing::info!(%signal, "shutting down");
            None
        }
        ended = grpc => Some(match ended {
            Some((addr, Ok(()))) => anyhow::anyhow!("the CallLegs server on {addr} stopped"),
            Some((addr, Err(e))) => anyhow::Error::new(e).context(format!("CallLegs on {addr}")),
            None => anyhow::anyhow!("the CallLegs server ended"),
        }),
    };
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
