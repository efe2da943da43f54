//! `voicecluster-operator`: the Kubernetes controller that turns each VoiceCluster resource
//! into backend signal pods and edge media pods, and publishes the live list of call-leg
//! providers in the VoiceCluster's status.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kube::{Client, CustomResourceExt};
use prometheus_client::registry::Registry;
use voicecluster_api::VoiceCluster;
use voicecluster_operator::ack_reporter;
use voicecluster_operator::acks::AckBook;
use voicecluster_operator::controller::{self, Election};
use voicecluster_operator::directory::{self, DirectoryMetrics, DirectoryService};
use voicecluster_operator::live_config::store::{ConfigStore, StoreMetrics};
use voicecluster_operator::live_config::{Sources, feed};
use voicecluster_operator::metrics::Metrics;
use voicecluster_operator::resources::{Images, Settings};
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
    /// Image of signal pods when a VoiceCluster names none.
    #[arg(
        long,
        env = "VC_SIGNAL_IMAGE",
        default_value = "voicecluster.local/signal-node:dev"
    )]
    signal_image: String,
    /// Image of media pods when a VoiceCluster names none.
    #[arg(
        long,
        env = "VC_MEDIA_IMAGE",
        default_value = "voicecluster.local/media-node:dev"
    )]
    media_image: String,
    /// Elect a leader among replicas through a Lease; only the leader writes.
    #[arg(long, env = "VC_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "VC_LEASE_NAME", default_value = "voicecluster-operator")]
    lease_name: String,
    /// This replica's pod name: its identity in the election.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// Where the gRPC Directory listens (every replica serves it).
    #[arg(long, env = "VC_DIRECTORY_ADDR", default_value = "0.0.0.0:9443")]
    directory_addr: std::net::SocketAddr,
    /// Where pods reach the Directory, e.g. `http://operator.ns.svc:9443`;
    /// when unset, the address of `--directory-service` is used.
    #[arg(long, env = "VC_DIRECTORY_URL")]
    directory_url: Option<String>,
    /// The operator's own Service in its namespace; pods are given its
    /// cluster IP, which works in clusters without DNS too.
    #[arg(long, env = "VC_DIRECTORY_SERVICE")]
    directory_service: Option<String>,
    /// The operator's namespace, where the Lease lives.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pod_namespace: String,
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

/// Where pods reach the Directory: the flag's URL, or else the address of
/// the operator's Service.
async fn directory_url(client: &Client, args: &Args) -> anyhow::Result<Option<String>> {
    match (&args.directory_url, &args.directory_service) {
        (Some(url), _) => Ok(Some(url.clone())),
        (None, Some(service)) => directory::service_url(client, &args.pod_namespace, service)
            .await
            .map(Some)
            .with_context(|| {
                format!(
                    "finding the Directory Service {}/{service}",
                    args.pod_namespace
                )
            }),
        (None, None) => {
            tracing::warn!(
                "neither --directory-url nor --directory-service is set: pods will not watch the Directory"
            );
            Ok(None)
        }
    }
}

/// This replica's part in the election, unless it is turned off.
fn election(args: &Args) -> Option<Election> {
    args.leader_election.then(|| Election {
        lease: args.lease_name.clone(),
        namespace: args.pod_namespace.clone(),
        identity: args
            .pod_name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", BUILD.binary, std::process::id())),
    })
}

/// The Directory server (with the live configuration it serves) and the
/// sources the reconciles assemble configurations from.
fn start_directory(
    client: &Client,
    addr: std::net::SocketAddr,
    acks: &Arc<AckBook>,
    (directory_metrics, config_metrics): (DirectoryMetrics, StoreMetrics),
) -> (
    impl std::future::Future<Output = Result<(), tonic::transport::Error>> + use<>,
    Sources,
) {
    let cache = directory::Cache::start(client.clone());
    let sources = Sources::start(client);
    let configs = ConfigStore::new(config_metrics);
    tokio::spawn(feed::run(
        cache.clone(),
        sources.clone(),
        Arc::clone(&configs),
    ));
    let service =
        DirectoryService::new(cache, Arc::clone(acks), directory_metrics).with_configs(configs);
    (directory::serve(addr, service), sources)
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
    // kube's TLS needs a process-wide crypto provider; an Err only means one
    // is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let directory_metrics = DirectoryMetrics::register(&mut registry);
    let config_metrics = StoreMetrics::register(&mut registry);
    let telemetry = Telemetry::start(BUILD, &args.telemetry, registry).await?;
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let election = election(&args);
    let settings = Settings {
        directory_url: directory_url(&client, &args).await?,
        images: Images {
            signal: args.signal_image,
            media: args.media_image,
        },
    };
    tracing::info!(
        version = BUILD.version,
        admin_addr = %telemetry.admin_addr(),
        "started"
    );

    let acks = AckBook::new();
    let (directory, sources) = start_directory(
        &client,
        args.directory_addr,
        &acks,
        (directory_metrics.clone(), config_metrics),
    );
    tracing::info!(addr = %args.directory_addr, url = ?settings.directory_url, "serving the Directory");
    if let Some(election) = &election {
        tokio::spawn(ack_reporter::run(
            client.clone(),
            election.clone(),
            args.directory_addr.port(),
            Arc::clone(&acks),
            directory_metrics,
        ));
    }
    let run = controller::run(
        client,
        settings,
        metrics,
        acks,
        sources,
        election,
        telemetry.readiness().clone(),
    );
    let outcome: Option<anyhow::Result<()>> = tokio::select! {
        result = run => Some(result.map_err(anyhow::Error::from)),
        result = directory => Some(match result {
            Ok(()) => Err(anyhow::anyhow!("the Directory server stopped")),
            Err(e) => Err(e.into()),
        }),
        signal = shutdown => {
            tracing::info!(%signal, "shutting down");
            None
        }
    };
    telemetry.shutdown().await?;
    match outcome {
        Some(Err(e)) => Err(e),
        Some(Ok(())) => anyhow::bail!("the controller stopped"),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}
