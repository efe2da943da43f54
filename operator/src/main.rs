//! `voicecluster-operator`: the Kubernetes controller that turns each VoiceCluster resource
//! into backend signal pods and edge media pods, and publishes the live list of call-leg
//! providers.
//!
//! For now it only does what every voicecluster binary does: parse its
//! flags, log, serve the admin endpoints (`/healthz`, `/readyz`,
//! `/metrics`), report ready, and exit cleanly on SIGTERM or SIGINT.

use anyhow::Context;
use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use prometheus_client::registry::Registry;
use voicecluster_api::VoiceCluster;
use voicecluster_telemetry::{BuildInfo, CommonArgs, Telemetry, shutdown_signal};

const BUILD: BuildInfo = BuildInfo::new(env!("CARGO_BIN_NAME"), env!("CARGO_PKG_VERSION"));

/// The voicecluster Kubernetes operator: reconciles VoiceCluster resources into signal and
/// media pods.
#[derive(Debug, Parser)]
#[command(name = "voicecluster-operator", version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    telemetry: CommonArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the VoiceCluster CustomResourceDefinition as YAML (the source of `crds/`).
    Crd,
}

fn print_crd() -> anyhow::Result<()> {
    let yaml = serde_yaml::to_string(&VoiceCluster::crd()).context("serialising the CRD")?;
    print!("{yaml}");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Crd) = args.command {
        return print_crd();
    }
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
