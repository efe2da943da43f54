//! Which pods of a VoiceCluster the Directory lists: the media pods that
//! are call-leg providers (and those draining), and the signal pods that
//! are members. Pure functions over pods, run against the pod cache.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use voicecluster_api::grpc::Load;
use voicecluster_api::voicecluster::{
    CallLegProvider, DrainingPod, MediaSpec, ProviderState, SignalMember,
};
use voicecluster_api::{
    ANNOTATION_ACTIVE_LEGS, ANNOTATION_DRAINING, LABEL_CLUSTER, LABEL_COMPONENT, MEDIA_GRPC_PORT,
    VoiceCluster,
};

use super::nodes::public_address;

/// True when the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A pod drains when it is being deleted or says so itself.
pub fn is_draining(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || pod
            .annotations()
            .get(ANNOTATION_DRAINING)
            .map(String::as_str)
            == Some("true")
}

/// The pods among `pods` of one component of `vc`: the pod cache holds
/// every VoiceCluster's.
pub fn cluster_pods<'a>(
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

/// What the provider list says about the media pods of one VoiceCluster.
#[derive(Debug, Default, PartialEq)]
pub struct ProviderView {
    /// Ready, non-draining pods with a known public address, by pod name.
    pub providers: Vec<CallLegProvider>,
    /// Ready pods left out because their node has no public address.
    pub without_address: Vec<String>,
}

/// The call-leg providers among `pods` (the media pods of one
/// VoiceCluster); `node` looks a node up by name. A pod serves CallLegs on
/// the port it said when it subscribed to the Directory (`ports`, by pod),
/// or else on the well-known port: a pod that shares its node's network
/// with its successor takes another one.
pub fn providers<'a>(
    media: &MediaSpec,
    pods: impl IntoIterator<Item = &'a Pod>,
    node: impl Fn(&str) -> Option<Arc<Node>>,
    ports: &HashMap<String, u16>,
) -> ProviderView {
    let mut view = ProviderView::default();
    for pod in pods {
        if !is_ready(pod) || is_draining(pod) {
            continue;
        }
        let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let address = node(&node_name).and_then(|n| public_address(media, &n));
        let Some(public_address) = address else {
            view.without_address.push(pod.name_any());
            continue;
        };
        let pod_ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let active_legs = pod
            .annotations()
            .get(ANNOTATION_ACTIVE_LEGS)
            .and_then(|v| v.parse::<i32>().ok())
            .unwrap_or(0);
        view.providers.push(CallLegProvider {
            pod: pod.name_any(),
            node: node_name,
            public_address,
            grpc_address: format!(
                "{pod_ip}:{}",
                ports.get(&pod.name_any()).unwrap_or(&MEDIA_GRPC_PORT)
            ),
            capacity: media.capacity,
            active_legs,
            state: ProviderState::Active,
        });
    }
    view.providers.sort_by(|a, b| a.pod.cmp(&b.pod));
    view.without_address.sort();
    view
}

/// The media pods among `pods` that drain, with the legs each last said it
/// still carries, by name.
pub fn draining_media<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    loads: &HashMap<String, Load>,
) -> Vec<DrainingPod> {
    let mut out: Vec<DrainingPod> = pods
        .into_iter()
        .filter(|p| is_draining(p))
        .map(|p| DrainingPod {
            pod: p.name_any(),
            node: p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            active_legs: loads.get(&p.name_any()).map(|l| l.active_legs),
        })
        .collect();
    out.sort_by(|a, b| a.pod.cmp(&b.pod));
    out
}

/// The signal pods as the Directory lists them, by name. Pods without an
/// address yet are left out: nothing could reach them.
pub fn signal_members<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Vec<SignalMember> {
    let mut members: Vec<SignalMember> = pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let address = p.status.as_ref()?.pod_ip.clone()?;
            Some(SignalMember {
                pod: p.name_any(),
                address,
                ready: is_ready(p),
            })
        })
        .collect();
    members.sort_by(|a, b| a.pod.cmp(&b.pod));
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::{lookup, node, pod};

    #[test]
    fn only_ready_non_draining_pods_are_providers() {
        let media = MediaSpec::default();
        let nodes = vec![node("edge", &[], Some("203.0.113.10"))];
        let mut draining = pod("c-draining", "edge", true);
        draining
            .annotations_mut()
            .insert(ANNOTATION_DRAINING.to_string(), "true".to_string());
        let mut deleting = pod("d-deleting", "edge", true);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let mut busy = pod("a-ready", "edge", true);
        busy.annotations_mut()
            .insert(ANNOTATION_ACTIVE_LEGS.to_string(), "12".to_string());
        let pods = [busy, pod("b-not-ready", "edge", false), draining, deleting];
        let view = providers(&media, &pods, lookup(nodes.clone()), &HashMap::new());
        assert_eq!(view.providers.len(), 1);
        let p = &view.providers[0];
        assert_eq!(p.pod, "a-ready");
        assert_eq!(p.node, "edge");
        assert_eq!(p.public_address, "203.0.113.10");
        assert_eq!(p.grpc_address, format!("10.0.0.7:{MEDIA_GRPC_PORT}"));
        assert_eq!(p.active_legs, 12);
        assert_eq!(p.capacity, media.capacity);
        // A pod beside its successor took another port slot and said so.
        let ports = HashMap::from([("a-ready".to_string(), 9455)]);
        let view = providers(&media, &pods, lookup(nodes), &ports);
        assert_eq!(view.providers[0].grpc_address, "10.0.0.7:9455");

        // The draining ones are listed apart, with what they still carry.
        let loads = HashMap::from([(
            "d-deleting".to_string(),
            Load {
                active_legs: 3,
                draining: true,
            },
        )]);
        let drains = draining_media(&pods, &loads);
        let listed: Vec<(&str, Option<i32>)> = drains
            .iter()
            .map(|d| (d.pod.as_str(), d.active_legs))
            .collect();
        assert_eq!(listed, vec![("c-draining", None), ("d-deleting", Some(3))]);
        assert_eq!(drains[0].node, "edge");
    }

    #[test]
    fn a_pod_on_a_node_without_public_address_is_reported_not_listed() {
        let media = MediaSpec::default();
        let view = providers(
            &media,
            &[pod("m", "internal", true)],
            lookup(vec![node("internal", &[], None)]),
            &HashMap::new(),
        );
        assert!(view.providers.is_empty());
        assert_eq!(view.without_address, vec!["m".to_string()]);
    }

    #[test]
    fn signal_members_need_an_address() {
        let mut no_ip = pod("s-1", "n", false);
        no_ip.status.as_mut().unwrap().pod_ip = None;
        let members = signal_members(&[pod("s-0", "n", true), no_ip]);
        assert_eq!(members.len(), 1);
        assert_eq!((members[0].pod.as_str(), members[0].ready), ("s-0", true));
    }
}
