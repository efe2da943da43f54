//! `signal-node`: SIP signalling for a VoiceCluster — the backend role (registrar, PBX tasks,
//! billing) and the edge role (SIP front door on internet-facing nodes).
//!
//! For now it only does what every voicecluster binary does: parse its
//! flags, log, serve the admin endpoints (`/healthz`, `/readyz`,
//! `/metrics`), report ready, and exit cleanly on SIGTERM or SIGINT.

use clap::Parser;
use prometheus_client::registry::Registry;
use voicecluster_telemetry::{BuildInfo, CommonArgs, Telemetry, shutdown_signal};

const BUILD: BuildInfo = BuildInfo::new(env!("CARGO_BIN_NAME"), env!("CARGO_PKG_VERSION"));

/// A voicecluster signal node: SIP signalling, as a backend (registrar, PBX tasks, billing) or
/// as the edge SIP front door.
#[derive(Debug, Parser)]
#[command(name = "signal-node", version, about, long_about = None)]
struct Args {
    #[command(flatten)]
    telemetry: CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before anything else, so a SIGTERM during start-up still stops us
    // gracefully.
    let shutdown = shutdown_signal()?;
    let telemetry = Telemetry::start(BUILD, &args.telemetry, Registry::default()).await?;

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
