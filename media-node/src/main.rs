//! `media-node`: the edge call legs of a VoiceCluster — RTP relay and WebRTC legs on internet-
//! facing nodes, with their port allocation and drain.
//!
//! For now it does what every voicecluster pod does: parse its flags, log,
//! serve the admin endpoints (`/healthz`, `/readyz`, `/metrics`), follow
//! the operator's Directory, report ready, and exit cleanly on SIGTERM or
//! SIGINT.

use clap::Parser;
use prometheus_client::registry::Registry;
use voicecluster_directory_client::{ClientMetrics, DirectoryArgs, follow_target};
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
    // The providers and members in use; what this pod applied and acked.
    let _directory = follow_target(target, directory_metrics);

    telemetry.readiness().set_ready();
    tracing::info!(
        version = BUILD.version,
        admin_addr = %telemetry.admin_addr(),
        "started"
    );

    let signal = shutdown.await;
    tracing::info!(%signal, "shutting down");
    telemetry.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}
