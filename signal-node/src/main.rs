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
use clap::Parser;
use prometheus_client::registry::Registry;
use voicecluster_api::VoiceClusterSpec;
use voicecluster_directory_client::{ClientMetrics, DirectoryArgs, follow};
use voicecluster_signal_node::digest::{Authenticator, parse_users};
use voicecluster_signal_node::endpoint::{Endpoint, SipMetrics};
use voicecluster_signal_node::registrar::Registrar;
use voicecluster_signal_node::transaction::Timers;
use voicecluster_signal_node::transport::{self, Listeners};
use voicecluster_telemetry::{BuildInfo, CommonArgs, Telemetry, shutdown_signal};

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
}

/// What SIP serves on, from the flags and the spec.
struct SipSettings {
    addr: SocketAddr,
    domain: String,
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
    let domain = args
        .sip_domain
        .clone()
        .or_else(|| spec.map(|s| s.sip.domain))
        .unwrap_or_else(|| "voicecluster.local".to_string());
    Ok(Some(SipSettings { addr, domain }))
}

fn nonce_secret(args: &Args) -> String {
    args.nonce_secret.clone().unwrap_or_else(|| {
        tracing::warn!("no VC_NONCE_SECRET: nonces are valid on this member only");
        use std::hash::{BuildHasher, RandomState};
        format!("{:x}", RandomState::new().hash_one(std::process::id()))
    })
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
    let sip_metrics = SipMetrics::register(&mut registry);
    let telemetry = Telemetry::start(BUILD, &args.telemetry, registry).await?;
    // The providers and members in use; what this pod applied and acked.
    let _directory = match target {
        Some(target) => {
            tracing::info!(url = %target.url, "following the Directory");
            Some(follow(target, directory_metrics))
        }
        None => {
            tracing::info!("no Directory URL: not following the Directory");
            None
        }
    };

    let sip = match sip_settings(&args)? {
        Some(s) => {
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
            let auth = Authenticator::new(&s.domain, &nonce_secret(&args), users);
            let endpoint = Endpoint::new(Registrar::new(auth), Timers::default(), sip_metrics);
            let listeners = Listeners::bind(s.addr, s.addr)
                .await
                .with_context(|| format!("binding SIP on {}", s.addr))?;
            tracing::info!(
                udp = %listeners.udp_addr()?,
                tcp = %listeners.tcp_addr()?,
                domain = %s.domain,
                "serving SIP"
            );
            Some(tokio::spawn(transport::serve(listeners, endpoint)))
        }
        None => {
            tracing::info!("no VC_CONFIG or --sip-addr: SIP not served");
            None
        }
    };

    telemetry.readiness().set_ready();
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
    telemetry.shutdown().await?;
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}
