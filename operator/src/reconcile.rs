//! One reconcile of one VoiceCluster: apply what it should own
//! ([`crate::resources`]), read the caches and the pods' reports, build the
//! status from them ([`crate::status`]) and write it. The I/O lives here,
//! the decisions in those pure modules. Runs on the leader only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use voicecluster_api::voicecluster::{PodCounts, VoiceClusterStatus};
use voicecluster_api::{MANAGER_NAME, VoiceCluster};

use crate::acks::AckBook;
use crate::conditions::{ConditionType, condition_of, transition_events};
use crate::directory::versions::DirectoryVersions;
use crate::live_config::Sources;
use crate::live_config::condition::config_applied;
use crate::live_config::status::{ConfigVersions, Seen};
use crate::metrics::Metrics;
use crate::providers::eligible_media_nodes;
use crate::resources::{self, MediaWorkload, Settings, child_name};
use crate::status::{self, Observed, Reports, Workloads};

/// What every reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Images and addresses handed to pods.
    pub settings: Settings,
    /// Publishes Events on VoiceClusters.
    pub recorder: Recorder,
    /// Pods the operator manages, kept current by a watch.
    pub pods: Store<Pod>,
    /// All nodes, kept current by a watch.
    pub nodes: Store<Node>,
    /// Reconcile metrics.
    pub metrics: Metrics,
    /// Which Directory version each pod applied.
    pub acks: Arc<AckBook>,
    /// The Directory versions this replica wrote.
    pub directory_versions: DirectoryVersions,
    /// Where configurations come from, and their assembly.
    pub sources: Sources,
    /// The configuration versions this replica wrote.
    pub config_versions: ConfigVersions,
}

/// A failed reconcile; retried with back-off.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The VoiceCluster could not be turned into objects.
    #[error(transparent)]
    Build(#[from] resources::BuildError),
    /// A watch cache stopped (the operator is shutting down).
    #[error("the {0} cache stopped")]
    CacheGone(&'static str),
    /// The API server refused or failed a request.
    #[error("{action}: {source}")]
    Kube {
        /// What the operator was doing.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.patch(
        &name,
        &PatchParams::apply(MANAGER_NAME).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(kube_err(format!("applying {} {ns}/{name}", K::kind(&()))))
}

async fn delete_if_present<K>(client: &Client, ns: &str, name: &str) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_err(format!("deleting {} {ns}/{name}", K::kind(&())))(
            e,
        )),
    }
}

/// Applies the owned objects and returns what their workloads said.
async fn apply_all(vc: &VoiceCluster, ns: &str, ctx: &Context) -> Result<Workloads, Error> {
    let d = resources::desired(vc, &ctx.settings)?;
    let c = &ctx.client;
    apply::<ConfigMap>(c, ns, &d.config).await?;
    apply::<Service>(c, ns, &d.signal_headless).await?;
    apply::<Service>(c, ns, &d.sip).await?;
    apply::<PodDisruptionBudget>(c, ns, &d.signal_pdb).await?;
    apply::<PodDisruptionBudget>(c, ns, &d.media_pdb).await?;
    let sts = apply::<StatefulSet>(c, ns, &d.signal).await?;
    let signal = PodCounts::new(
        sts.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0),
        vc.spec.signal.replicas,
    );
    // One placement at a time: switching removes the other one's workload.
    let media_name = child_name(vc, "media");
    let media_desired = match &d.media {
        MediaWorkload::DaemonSet(ds) => {
            delete_if_present::<Deployment>(c, ns, &media_name).await?;
            let ds = apply::<DaemonSet>(c, ns, ds).await?;
            ds.status.unwrap_or_default().desired_number_scheduled
        }
        MediaWorkload::Deployment(dep) => {
            delete_if_present::<DaemonSet>(c, ns, &media_name).await?;
            apply::<Deployment>(c, ns, dep).await?;
            vc.spec.media.placement.replicas.unwrap_or(1)
        }
    };
    Ok(Workloads {
        signal,
        media_desired,
    })
}

/// What the cluster's pods reported to this replica and its followers.
fn reports(acks: &AckBook, ns: &str, name: &str) -> Reports {
    Reports {
        call_legs_ports: acks.call_legs_ports(ns, name),
        failovers: acks.failovers(ns, name),
        versions: acks.versions(ns, name),
        loads: acks.loads(ns, name),
    }
}

/// Reconciles one VoiceCluster.
pub async fn reconcile(vc: Arc<VoiceCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&vc, &ctx).await;
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.is_ok());
    result
}

async fn reconcile_inner(vc: &VoiceCluster, ctx: &Context) -> Result<Action, Error> {
    let ns = vc
        .namespace()
        .ok_or(resources::BuildError::MissingMetadata("namespace"))?;
    let name = vc.name_any();
    // Until both caches hold the cluster's state, "no eligible node" or "no
    // provider" would only mean "not loaded yet".
    ctx.nodes
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone("nodes"))?;
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone("pods"))?;
    if !ctx.sources.wait_ready().await {
        return Err(Error::CacheGone("secrets and configmaps"));
    }
    let eligible = eligible_media_nodes(&vc.spec.media, &ctx.nodes.state());

    // A spec no node can serve creates nothing, rather than signal pods
    // that could never place a call.
    let workloads = if eligible == 0 {
        None
    } else {
        Some(apply_all(vc, &ns, ctx).await?)
    };

    let (pods, nodes) = (ctx.pods.state(), ctx.nodes.state());
    let observed = Observed {
        eligible_media_nodes: eligible,
        workloads,
        pods: &pods,
        nodes: &nodes,
        reports: reports(&ctx.acks, &ns, &name),
        now: Time(k8s_openapi::jiff::Timestamp::now()),
    };
    let key = (ns.clone(), name.clone());
    let mut status = status::build(vc, &observed, |lists| {
        ctx.directory_versions
            .next(key.clone(), vc.status.as_ref(), lists)
    });
    let config = config_status(vc, key, &pods, ctx);
    let previous_conditions = vc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    status.conditions.push(condition_of(
        ConditionType::ConfigApplied,
        &config_applied(&config),
        vc.metadata.generation,
        previous_conditions,
        &observed.now,
    ));
    status.config = Some(config);
    if vc.status.as_ref() != Some(&status) {
        write_status(&ctx.client, &ns, &name, &status).await?;
    }
    let previous = vc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    publish_transitions(vc, previous, &status.conditions, ctx).await;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// `status.config`: the version of the content the sources give now, and
/// what the cluster's signal and media pods did with it.
fn config_status(
    vc: &VoiceCluster,
    key: (String, String),
    pods: &[Arc<Pod>],
    ctx: &Context,
) -> voicecluster_api::voicecluster::ConfigStatus {
    let assembled = ctx.sources.assemble(vc);
    // Both kinds follow WatchConfig; a pod that never reports (an image
    // from before media pods followed it) is left out of the counts.
    let following: Vec<String> = pods
        .iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(key.0.as_str())
                && p.labels().get(voicecluster_api::LABEL_CLUSTER) == Some(&key.1)
                && matches!(
                    p.labels()
                        .get(voicecluster_api::LABEL_COMPONENT)
                        .map(String::as_str),
                    Some(voicecluster_api::COMPONENT_SIGNAL | voicecluster_api::COMPONENT_MEDIA)
                )
        })
        .map(|p| p.name_any())
        .collect();
    let results = ctx.acks.configs(&key.0, &key.1);
    let now_ms = crate::live_config::now_unix_ms();
    let seen = Seen {
        previous: vc.status.as_ref().and_then(|s| s.config.as_ref()),
        assembled: &assembled,
        results: &results,
        following: &following,
        now_unix_ms: now_ms,
    };
    let status = ctx.config_versions.status(key, &seen);
    let before = vc.status.as_ref().and_then(|s| s.config.as_ref());
    if status.rolled_back.is_some()
        && status.rolled_back != before.and_then(|b| b.rolled_back.clone())
    {
        ctx.metrics.rolled_back();
    }
    for s in status.sources.iter().filter(|s| s.state == "Failed") {
        ctx.metrics.source_failed(&s.kind);
    }
    status
}

/// Writes the status with server-side apply, as the only manager of it.
async fn write_status(
    client: &Client,
    ns: &str,
    name: &str,
    status: &VoiceClusterStatus,
) -> Result<(), Error> {
    let api: Api<VoiceCluster> = Api::namespaced(client.clone(), ns);
    let body = serde_json::json!({
        "apiVersion": VoiceCluster::api_version(&()),
        "kind": VoiceCluster::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER_NAME).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(kube_err(format!("writing the status of {ns}/{name}")))?;
    Ok(())
}

/// Publishes the Events of the conditions' changes; a lost Event is only
/// logged, as the status says it all.
async fn publish_transitions(
    vc: &VoiceCluster,
    previous: &[Condition],
    now: &[Condition],
    ctx: &Context,
) {
    for event in transition_events(previous, now) {
        if let Err(e) = ctx.recorder.publish(&event, &vc.object_ref(&())).await {
            tracing::warn!(error = %e, "cannot publish an event");
        }
    }
}

/// Retry a failed reconcile after a pause.
pub fn error_policy(vc: Arc<VoiceCluster>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(voicecluster = %vc.name_any(), %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}
