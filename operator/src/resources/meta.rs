//! What every owned object carries: its name, its labels and the owner
//! reference that lets Kubernetes delete it with its VoiceCluster, and the
//! selectors that find one component's pods again.

use std::collections::BTreeMap;

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use voicecluster_api::{
    LABEL_CLUSTER, LABEL_COMPONENT, LABEL_MANAGED_BY, MANAGER_NAME, VoiceCluster,
};

/// Name of an owned object: `<vc>-<suffix>`.
pub fn child_name(vc: &VoiceCluster, suffix: &str) -> String {
    format!("{}-{suffix}", vc.name_any())
}

/// Labels that select one component's pods of one VoiceCluster.
pub fn selector_labels(vc: &VoiceCluster, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_CLUSTER.to_string(), vc.name_any()),
        (LABEL_COMPONENT.to_string(), component.to_string()),
    ])
}

/// The selector of one component's pods, as workloads and budgets want it.
pub(super) fn label_selector(vc: &VoiceCluster, component: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(vc, component)),
        ..LabelSelector::default()
    }
}

/// Every label of an owned object or pod: the selector's, and the standard
/// ones tools group by.
pub(super) fn labels(vc: &VoiceCluster, component: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(vc, component);
    l.insert(LABEL_MANAGED_BY.to_string(), MANAGER_NAME.to_string());
    l.insert(
        "app.kubernetes.io/name".to_string(),
        "voicecluster".to_string(),
    );
    l.insert("app.kubernetes.io/instance".to_string(), vc.name_any());
    l
}

/// The metadata of the owned object `<vc>-<suffix>`.
pub(super) fn meta(
    vc: &VoiceCluster,
    owner: &OwnerReference,
    suffix: &str,
    component: &str,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(child_name(vc, suffix)),
        namespace: vc.namespace(),
        labels: Some(labels(vc, component)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The metadata of one component's pod template.
pub(super) fn pod_meta(vc: &VoiceCluster, component: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        labels: Some(labels(vc, component)),
        ..ObjectMeta::default()
    })
}

/// A budget is only a selector and a number, so both components' come
/// from here (named after the component, like its workload).
pub(super) fn disruption_budget(
    vc: &VoiceCluster,
    owner: &OwnerReference,
    component: &str,
    max_unavailable: i32,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(vc, owner, component, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable)),
            selector: Some(label_selector(vc, component)),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// How long a new signal or media pod stays Ready before its workload
/// counts it available and goes on to stop the next old pod. Ready says
/// the pod can serve; its consumers learn of it a little later: the
/// Directory carries it to them, and the edges' heartbeats must then see a
/// member answer. Without this margin a rollout could stop the last old
/// pod a consumer knew before that consumer knew the new one, and a new
/// call in that gap would find nobody.
pub(super) fn min_ready_seconds(vc: &VoiceCluster) -> i32 {
    /// The Directory's own share: a reconcile and one stream message,
    /// with room for a loaded operator.
    const DIRECTORY_SECONDS: i32 = 2;
    let heartbeats_ms = vc
        .spec
        .failover
        .heartbeat_interval_ms
        .max(0)
        .saturating_mul(2);
    DIRECTORY_SECONDS.saturating_add(heartbeats_ms.saturating_add(999) / 1000)
}
