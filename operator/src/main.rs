//! `voicecluster-operator`: the Kubernetes controller that turns each VoiceCluster resource
//! into backend signal pods and edge media pods, and publishes the live list of call-leg
//! providers.
//!
//! For now it only does what every voicecluster binary does: parse its
//! flags, log, serve the admin endpoints (`/healthz`, `/readyz`,
//! `/metrics`), report ready, and exit cleanly on SIGTERM or SIGINT.

use clap::Parser;
use prometheus_client::registry::Registry;
use voicecluster_telemetry::{BuildInfo, CommonArgs, Telemetry, shutdown_signal};

const BUILD: BuildInfo = BuildInfo::new(env!("CARGO_BIN_NAME"), env!("CARGO_PKG_VERSION"));

/// The voicecluster Kubernetes operator: reconciles VoiceCluster resources into signal and
/// media pods.
#[derive(Debug, Parser)]
#[command(name = "voicecluster-operator", version, about, long_about = None)]
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
