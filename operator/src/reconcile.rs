//! One reconcile of one VoiceCluster: apply what it should own, observe the
//! pods, write the status. Runs on the leader only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use voicecluster_api::voicecluster::{PodCounts, VoiceClusterStatus};
use voicecluster_api::{
    ANNOTATION_APPROVE_FAILOVER, COMPONENT_MEDIA, COMPONENT_SIGNAL, LABEL_CLUSTER, LABEL_COMPONENT,
    MANAGER_NAME, VoiceCluster,
};

use crate::acks::AckBook;
use crate::conditions::{self, Facts};
use crate::failover::{Observed, awaiting_approval, failover_status, policy};
use crate::metrics::Metrics;
use crate::providers::{
    Lists, directory_status, draining_media, is_eligible_media_node, is_ready, providers,
    signal_members,
};
use crate::resources::{self, MediaWorkload, Settings, child_name};

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
    pub directory_versions: crate::providers::DirectoryVersions,
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

fn selector_string(vc: &VoiceCluster) -> String {
    vc.spec
        .media
        .node_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Applies the owned objects and returns the signal and media pod counts.
async fn apply_all(
    vc: &VoiceCluster,
    ns: &str,
    ctx: &Context,
) -> Result<(PodCounts, PodCounts), Error> {
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
    let media_name = child_name(vc, "media");
    let media = match &d.media {
        MediaWorkload::DaemonSet(ds) => {
            delete_if_present::<Deployment>(c, ns, &media_name).await?;
            let ds = apply::<DaemonSet>(c, ns, ds).await?;
            let st = ds.status.unwrap_or_default();
            PodCounts::new(st.number_ready, st.desired_number_scheduled)
        }
        MediaWorkload::Deployment(dep) => {
            delete_if_present::<DaemonSet>(c, ns, &media_name).await?;
            let dep = apply::<Deployment>(c, ns, dep).await?;
            let ready = dep.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            PodCounts::new(ready, vc.spec.media.placement.replicas.unwrap_or(1))
        }
    };
    Ok((signal, media))
}

fn media_pods<'a>(vc: &'a VoiceCluster, pods: &'a [Arc<Pod>]) -> impl Iterator<Item = &'a Pod> {
    component_pods(vc, pods, COMPONENT_MEDIA)
}

fn component_pods<'a>(
    vc: &'a VoiceCluster,
    pods: &'a [Arc<Pod>],
    component: &'a str,
) -> impl Iterator<Item = &'a Pod> {
    let name = vc.name_any();
    let ns = vc.namespace();
    pods.iter().map(|p| p.as_ref()).filter(move |p| {
        p.namespace() == ns
            && p.labels().get(LABEL_CLUSTER) == Some(&name)
            && p.labels().get(LABEL_COMPONENT).map(String::as_str) == Some(component)
    })
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
    let eligible = ctx
        .nodes
        .state()
        .iter()
        .filter(|n| is_eligible_media_node(&vc.spec.media, n))
        .count();

    // A spec no node can serve creates nothing, rather than signal pods
    // that could never place a call.
    let (signal, media) = if eligible == 0 {
        (
            PodCounts::new(0, vc.spec.signal.replicas),
            PodCounts::new(0, 0),
        )
    } else {
        apply_all(vc, &ns, ctx).await?
    };

    let pods = ctx.pods.state();
    let nodes = &ctx.nodes;
    let view = providers(
        &vc.spec.media,
        media_pods(vc, &pods),
        |n| nodes.get(&kube::runtime::reflector::ObjectRef::new(n)),
        &ctx.acks.call_legs_ports(&ns, &name),
    );
    // Pods from the watch are newer than the workload's status.
    let media_ready = media_pods(vc, &pods).filter(|p| is_ready(p)).count();
    let media = PodCounts::new(
        i32::try_from(media_ready).unwrap_or(i32::MAX),
        media.desired,
    );

    let members = signal_members(component_pods(vc, &pods, COMPONENT_SIGNAL));
    let failover = failover_status(&Observed {
        mode: vc.spec.failover.mode,
        members: &members,
        reports: &ctx.acks.failovers(&ns, &name),
        approvals: vc
            .annotations()
            .get(ANNOTATION_APPROVE_FAILOVER)
            .map(String::as_str),
        previous: vc.status.as_ref().and_then(|s| s.failover.as_ref()),
    });
    let facts = Facts {
        generation: vc.metadata.generation,
        eligible_media_nodes: eligible,
        media_node_selector: selector_string(vc),
        signal,
        media,
        providers: view.providers.len(),
        without_address: view.without_address.clone(),
        call_leg_mode: vc.spec.signal.call_leg_mode,
        name: name.clone(),
        awaiting_approval: awaiting_approval(&failover),
    };
    let previous: Vec<Condition> = vc
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let conditions = conditions::conditions(&facts, &previous, &now);
    let version = ctx.directory_versions.next(
        (ns.clone(), name.clone()),
        vc.status.as_ref(),
        &Lists {
            providers: view.providers.clone(),
            members: members.clone(),
            policy: policy(Some(&failover)),
        },
    );
    let directory = directory_status(
        version,
        component_pods(vc, &pods, COMPONENT_SIGNAL).chain(media_pods(vc, &pods)),
        &ctx.acks.versions(&ns, &name),
    );
    let status = VoiceClusterStatus {
        observed_generation: vc.metadata.generation,
        conditions: conditions.clone(),
        signal: Some(facts.signal.clone()),
        media: Some(facts.media.clone()),
        provider_count: i32::try_from(view.providers.len()).unwrap_or(i32::MAX),
        call_leg_providers: view.providers,
        draining_media_pods: draining_media(media_pods(vc, &pods), &ctx.acks.loads(&ns, &name)),
        signal_members: members,
        directory: Some(directory),
        failover: Some(failover),
    };
    if vc.status.as_ref() != Some(&status) {
        let api: Api<VoiceCluster> = Api::namespaced(ctx.client.clone(), &ns);
        let body = serde_json::json!({
            "apiVersion": VoiceCluster::api_version(&()),
            "kind": VoiceCluster::kind(&()),
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER_NAME).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(kube_err(format!("writing the status of {ns}/{name}")))?;
    }
    publish_transitions(vc, &previous, &conditions, ctx).await;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// An Event for every condition whose status changed, so `kubectl describe`
/// tells the story.
async fn publish_transitions(
    vc: &VoiceCluster,
    previous: &[Condition],
    now: &[Condition],
    ctx: &Context,
) {
    for c in now {
        let before = previous.iter().find(|p| p.type_ == c.type_);
        if before.is_some_and(|b| b.status == c.status && b.reason == c.reason) {
            continue;
        }
        let was_ready = before.is_some_and(|b| b.status == "True");
        // Not ready while starting up is no news.
        if c.type_ == "Ready" && c.status == "False" && !was_ready {
            continue;
        }
        // Nothing pending from the start is no news either.
        if c.type_ == "FailoverPending" && c.status == "False" && before.is_none() {
            continue;
        }
        let bad = ((c.type_ == "Degraded" || c.type_ == "FailoverPending") && c.status == "True")
            || (c.type_ == "Ready" && c.status == "False" && was_ready);
        if c.type_ == "Progressing" {
            continue;
        }
        let event = Event {
            type_: if bad {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: c.reason.clone(),
            note: Some(format!("{} is {}: {}", c.type_, c.status, c.message)),
            action: "Reconcile".to_string(),
            secondary: None,
        };
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
