//! Wiring: watches, caches, leader election and the controller loop.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{Controller, PredicateConfig, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use kube_lease_manager::LeaseManagerBuilder;
use voicecluster_api::{LABEL_CLUSTER, LABEL_MANAGED_BY, MANAGER_NAME, VoiceCluster};
use voicecluster_telemetry::Readiness;

use crate::acks::AckBook;
use crate::live_config::Sources;
use crate::live_config::objects::News;
use crate::live_config::sources::reads;
use crate::metrics::Metrics;
use crate::reconcile::{Context, error_policy, reconcile};
use crate::resources::Settings;

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Lease could not be read or created.
    #[error("setting up leader election")]
    Election(#[source] kube_lease_manager::LeaseManagerError),
    /// The election's task ended before this replica became the leader.
    #[error("leader election stopped")]
    ElectionStopped(#[source] tokio::sync::watch::error::RecvError),
    /// Another replica holds the Lease now.
    #[error("lost leadership")]
    LostLeadership,
}

/// How this replica takes part in leader election.
#[derive(Clone, Debug)]
pub struct Election {
    /// Lease name.
    pub lease: String,
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
}

/// Only what decides whether media pods may run on a node: heartbeats and
/// other status churn must not wake every VoiceCluster.
fn node_shape(node: &Node) -> Option<u64> {
    let mut h = DefaultHasher::new();
    node.labels().hash(&mut h);
    node.annotations().hash(&mut h);
    if let Some(spec) = &node.spec {
        spec.unschedulable.hash(&mut h);
        for t in spec.taints.iter().flatten() {
            (&t.key, &t.value, &t.effect).hash(&mut h);
        }
    }
    if let Some(addresses) = node.status.as_ref().and_then(|s| s.addresses.as_ref()) {
        for a in addresses {
            (&a.type_, &a.address).hash(&mut h);
        }
    }
    Some(h.finish())
}

/// The VoiceClusters to reconcile when something their configuration is
/// made from changes: a Secret or ConfigMap one of their sources names, or
/// one of their LDAP searches.
fn source_triggers(
    news: &News,
    voice_clusters: reflector::Store<VoiceCluster>,
) -> impl futures::Stream<Item = ObjectRef<VoiceCluster>> + Send + 'static {
    let news = news.subscribe();
    futures::stream::unfold((news, voice_clusters), |(mut news, vcs)| async move {
        loop {
            let changed = match news.recv().await {
                Ok(changed) => changed,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    // Some news lost: every cluster looks again.
                    let all: Vec<_> = vcs
                        .state()
                        .iter()
                        .map(|vc| ObjectRef::from_obj(vc.as_ref()))
                        .collect();
                    return Some((futures::stream::iter(all), (news, vcs)));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            let readers: Vec<ObjectRef<VoiceCluster>> = vcs
                .state()
                .iter()
                .filter(|vc| reads(vc, &changed))
                .map(|vc| ObjectRef::from_obj(vc.as_ref()))
                .collect();
            if !readers.is_empty() {
                return Some((futures::stream::iter(readers), (news, vcs)));
            }
        }
    })
    .flatten()
}

/// What every reconcile shares, around the caches.
fn context(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    acks: &Arc<AckBook>,
    sources: Sources,
    (pods, nodes): (reflector::Store<Pod>, reflector::Store<Node>),
) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER_NAME.to_string(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    Arc::new(Context {
        client,
        settings,
        recorder,
        pods,
        nodes,
        metrics,
        acks: Arc::clone(acks),
        directory_versions: Default::default(),
        sources,
        config_versions: Default::default(),
    })
}

/// Runs the controller until its watches end (only when the process does).
async fn run_controller(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    acks: Arc<AckBook>,
    sources: Sources,
) {
    let managed = format!("{LABEL_MANAGED_BY}={MANAGER_NAME}");
    let owned = || watcher::Config::default().labels(&managed);

    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_stream = watcher(Api::<Pod>::all(client.clone()), owned())
        .default_backoff()
        .reflect(pod_writer)
        .touched_objects();
    let (nodes, node_writer) = reflector::store::<Node>();
    let node_stream = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .reflect(node_writer)
        .touched_objects()
        .predicate_filter(node_shape, PredicateConfig::default());

    let ctx = context(
        client.clone(),
        settings,
        metrics,
        &acks,
        sources.clone(),
        (pods, nodes),
    );

    let controller = Controller::new(
        Api::<VoiceCluster>::all(client.clone()),
        watcher::Config::default(),
    );
    let voice_clusters = controller.store();
    let source_changes = source_triggers(&sources.news, controller.store());
    controller
        .owns(Api::<StatefulSet>::all(client.clone()), owned())
        .owns(Api::<DaemonSet>::all(client.clone()), owned())
        .owns(Api::<Deployment>::all(client.clone()), owned())
        .owns(Api::<Service>::all(client.clone()), owned())
        .owns(Api::<ConfigMap>::all(client.clone()), owned())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), owned())
        .watches_stream(pod_stream, |pod: Pod| {
            let ns = pod.namespace();
            pod.labels()
                .get(LABEL_CLUSTER)
                .zip(ns)
                .map(|(name, ns)| ObjectRef::<VoiceCluster>::new(name).within(&ns))
        })
        .watches_stream(node_stream, move |_node: Node| {
            voice_clusters
                .state()
                .iter()
                .map(|vc| ObjectRef::from_obj(vc.as_ref()))
                .collect::<Vec<_>>()
        })
        // Acks only change the status counts, never what is applied.
        .reconcile_on(acks.triggers())
        // A users source changed: maybe a new configuration version.
        .reconcile_on(source_changes)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => tracing::debug!(voicecluster = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
            }
        })
        .await;
}

/// Runs the operator: with an election, only the replica holding the Lease
/// reconciles and writes; a replica that loses it exits, so that it comes
/// back as a follower with clean state.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    acks: Arc<AckBook>,
    sources: Sources,
    election: Option<Election>,
    readiness: Readiness,
) -> Result<(), Error> {
    let Some(election) = election else {
        readiness.set_ready();
        run_controller(client, settings, metrics, acks, sources).await;
        return Ok(());
    };
    let manager = LeaseManagerBuilder::new(client.clone(), &election.lease)
        .with_namespace(&election.namespace)
        .with_identity(&election.identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(Error::Election)?;
    let (mut is_leader, _task) = manager.watch().await;
    // Followers are ready too: they serve from their caches and stand by.
    readiness.set_ready();
    tracing::info!(lease = %election.lease, identity = %election.identity, "waiting for leadership");
    while !*is_leader.borrow_and_update() {
        is_leader.changed().await.map_err(Error::ElectionStopped)?;
    }
    tracing::info!("became the leader");
    let lost = async move {
        loop {
            if is_leader.changed().await.is_err() || !*is_leader.borrow_and_update() {
                return;
            }
        }
    };
    tokio::select! {
        () = run_controller(client, settings, metrics, acks, sources) => Ok(()),
        () = lost => Err(Error::LostLeadership),
    }
}
