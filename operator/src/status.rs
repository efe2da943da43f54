//! The status one reconcile writes, from what it read: the workloads it
//! applied, the pod and node caches and what the pods reported on their
//! Directory streams. Pure, so what a user sees in `kubectl get` and
//! `kubectl describe` has unit tests.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use voicecluster_api::grpc::{FailoverReport, Load};
use voicecluster_api::voicecluster::{FailoverStatus, PodCounts, SignalMember, VoiceClusterStatus};
use voicecluster_api::{
    ANNOTATION_APPROVE_FAILOVER, COMPONENT_MEDIA, COMPONENT_SIGNAL, VoiceCluster,
};

use crate::conditions::{self, Facts};
use crate::directory::versions::{Lists, directory_status};
use crate::failover::{self, awaiting_approval, failover_status, policy};
use crate::providers::{
    ProviderView, cluster_pods, draining_media, is_ready, providers, signal_members,
};

/// What the workloads' own status said when they were applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Workloads {
    /// Signal pods ready (per the StatefulSet) and desired.
    pub signal: PodCounts,
    /// Media pods desired (scheduled by the DaemonSet, or the Deployment's
    /// replicas).
    pub media_desired: i32,
}

/// What the cluster's pods said on their Directory streams, by pod.
#[derive(Clone, Debug, Default)]
pub struct Reports {
    /// The port each media pod serves CallLegs on.
    pub call_legs_ports: HashMap<String, u16>,
    /// The members' and edges' last failover reports.
    pub failovers: HashMap<String, FailoverReport>,
    /// The highest Directory version each pod acknowledged.
    pub versions: HashMap<String, i64>,
    /// The last load report of each pod.
    pub loads: HashMap<String, Load>,
}

/// Everything a reconcile read that the status depends on, besides the
/// VoiceCluster itself.
pub struct Observed<'a> {
    /// Nodes media pods may run on.
    pub eligible_media_nodes: usize,
    /// The applied workloads; `None` when nothing was applied (no eligible
    /// node).
    pub workloads: Option<Workloads>,
    /// The pods the operator manages, of every VoiceCluster.
    pub pods: &'a [Arc<Pod>],
    /// All nodes.
    pub nodes: &'a [Arc<Node>],
    /// The pods' reports.
    pub reports: Reports,
    /// When this is: the transition time of conditions that change now.
    pub now: Time,
}

/// The status of `vc` for what was observed. The Directory version is the
/// one part that depends on more than that (on what this replica wrote
/// before): `version` gives it for the lists the status carries.
pub fn build(
    vc: &VoiceCluster,
    o: &Observed,
    version: impl FnOnce(&Lists) -> i64,
) -> VoiceClusterStatus {
    let signal_pods: Vec<&Pod> = cluster_pods(vc, o.pods, COMPONENT_SIGNAL).collect();
    let media_pods: Vec<&Pod> = cluster_pods(vc, o.pods, COMPONENT_MEDIA).collect();
    let nodes: HashMap<String, &Arc<Node>> = o.nodes.iter().map(|n| (n.name_any(), n)).collect();
    let view = providers(
        &vc.spec.media,
        media_pods.iter().copied(),
        |n| nodes.get(n).map(|n| Arc::clone(n)),
        &o.reports.call_legs_ports,
    );
    let members = signal_members(signal_pods.iter().copied());
    let failover = failover_of(vc, &members, &o.reports.failovers);
    let facts = facts(vc, o, &media_pods, &view, &failover);
    let previous = vc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let version = version(&Lists {
        providers: view.providers.clone(),
        members: members.clone(),
        policy: policy(Some(&failover)),
    });
    let directory = directory_status(
        version,
        signal_pods.iter().chain(&media_pods).copied(),
        &o.reports.versions,
    );
    VoiceClusterStatus {
        observed_generation: vc.metadata.generation,
        conditions: conditions::conditions(&facts, previous, &o.now),
        signal: Some(facts.signal),
        media: Some(facts.media),
        provider_count: i32::try_from(view.providers.len()).unwrap_or(i32::MAX),
        call_leg_providers: view.providers,
        draining_media_pods: draining_media(media_pods.iter().copied(), &o.reports.loads),
        signal_members: members,
        directory: Some(directory),
        failover: Some(failover),
        // The reconcile adds it: it depends on the sources, not on pods.
        config: None,
    }
}

/// The failover part, from the members, their reports, the administrator's
/// approvals and what the status said before.
fn failover_of(
    vc: &VoiceCluster,
    members: &[SignalMember],
    reports: &HashMap<String, FailoverReport>,
) -> FailoverStatus {
    failover_status(&failover::Observed {
        mode: vc.spec.failover.mode,
        members,
        reports,
        approvals: vc
            .annotations()
            .get(ANNOTATION_APPROVE_FAILOVER)
            .map(String::as_str),
        previous: vc.status.as_ref().and_then(|s| s.failover.as_ref()),
    })
}

/// What the conditions are computed from.
fn facts(
    vc: &VoiceCluster,
    o: &Observed,
    media_pods: &[&Pod],
    view: &ProviderView,
    failover: &FailoverStatus,
) -> Facts {
    let (signal, media_desired) = match &o.workloads {
        Some(w) => (w.signal.clone(), w.media_desired),
        None => (PodCounts::new(0, vc.spec.signal.replicas), 0),
    };
    // Pods from the watch are newer than the workload's status.
    let media_ready = media_pods.iter().filter(|p| is_ready(p)).count();
    Facts {
        generation: vc.metadata.generation,
        eligible_media_nodes: o.eligible_media_nodes,
        media_node_selector: selector_string(vc),
        signal,
        media: PodCounts::new(
            i32::try_from(media_ready).unwrap_or(i32::MAX),
            media_desired,
        ),
        providers: view.providers.len(),
        without_address: view.without_address.clone(),
        call_leg_mode: vc.spec.signal.call_leg_mode,
        name: vc.name_any(),
        awaiting_approval: awaiting_approval(failover),
    }
}

/// The media node selector as `kubectl get -l` takes it, for messages.
fn selector_string(vc: &VoiceCluster) -> String {
    vc.spec
        .media
        .node_selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;
    use voicecluster_api::voicecluster::{FailoverMode, PodCounts};
    use voicecluster_api::{ANNOTATION_DRAINING, LABEL_CLUSTER, LABEL_COMPONENT};

    use crate::conditions::ConditionType;
    use crate::fixtures::{node, pod, vc};

    /// A pod of `voice/<cluster>`'s `component`, IP 10.0.0.<n>.
    fn member(cluster: &str, component: &str, name: &str, node: &str, ready: bool) -> Arc<Pod> {
        let mut p = pod(name, node, ready);
        p.metadata.namespace = Some("voice".into());
        p.labels_mut()
            .insert(LABEL_CLUSTER.to_string(), cluster.to_string());
        p.labels_mut()
            .insert(LABEL_COMPONENT.to_string(), component.to_string());
        Arc::new(p)
    }

    /// Two signal pods and two media pods on two internet-facing nodes, all
    /// ready, and one pod of another VoiceCluster.
    struct Cluster {
        vc: VoiceCluster,
        pods: Vec<Arc<Pod>>,
        nodes: Vec<Arc<Node>>,
    }

    fn cluster() -> Cluster {
        let mut vc = vc(serde_json::json!({"sip": {"domain": "x"}, "signal": {"replicas": 2}}));
        vc.metadata.generation = Some(7);
        let facing = [("voicecluster.io/internet-facing", "true")];
        Cluster {
            vc,
            pods: vec![
                member("demo", COMPONENT_SIGNAL, "demo-signal-0", "edge-a", true),
                member("demo", COMPONENT_SIGNAL, "demo-signal-1", "edge-b", true),
                member("demo", COMPONENT_MEDIA, "demo-media-a", "edge-a", true),
                member("demo", COMPONENT_MEDIA, "demo-media-b", "edge-b", true),
                member("other", COMPONENT_MEDIA, "other-media-a", "edge-a", true),
            ],
            nodes: vec![
                Arc::new(node("edge-a", &facing, Some("203.0.113.1"))),
                Arc::new(node("edge-b", &facing, Some("203.0.113.2"))),
            ],
        }
    }

    fn applied(signal_ready: i32, media_desired: i32) -> Option<Workloads> {
        Some(Workloads {
            signal: PodCounts::new(signal_ready, 2),
            media_desired,
        })
    }

    fn observe<'a>(c: &'a Cluster, workloads: Option<Workloads>) -> Observed<'a> {
        Observed {
            eligible_media_nodes: if workloads.is_some() { 2 } else { 0 },
            workloads,
            pods: &c.pods,
            nodes: &c.nodes,
            reports: Reports::default(),
            now: Time(Timestamp::UNIX_EPOCH),
        }
    }

    fn first_version(_: &Lists) -> i64 {
        1
    }

    /// (status, reason) of each condition type, as `kubectl describe` shows.
    fn condition(s: &VoiceClusterStatus, t: ConditionType) -> (&str, &str) {
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == t.as_str())
            .unwrap_or_else(|| panic!("no {t} condition"));
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_cluster_with_all_pods_ready_is_ready_with_its_providers() {
        let c = cluster();
        let s = build(&c.vc, &observe(&c, applied(2, 2)), first_version);
        assert_eq!(s.observed_generation, Some(7));
        assert_eq!(
            condition(&s, ConditionType::Ready),
            ("True", "AllPodsReady")
        );
        assert_eq!(
            condition(&s, ConditionType::Progressing),
            ("False", "Complete")
        );
        assert_eq!(
            condition(&s, ConditionType::Degraded),
            ("False", "AsExpected")
        );
        assert_eq!(
            condition(&s, ConditionType::FailoverPending),
            ("False", "NoneWaiting")
        );
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(7))
        );
        assert_eq!(s.provider_count, 2);
        let providers: Vec<(&str, &str)> = s
            .call_leg_providers
            .iter()
            .map(|p| (p.pod.as_str(), p.public_address.as_str()))
            .collect();
        assert_eq!(
            providers,
            [
                ("demo-media-a", "203.0.113.1"),
                ("demo-media-b", "203.0.113.2")
            ],
            "the other VoiceCluster's pod is not ours"
        );
        let members: Vec<&str> = s.signal_members.iter().map(|m| m.pod.as_str()).collect();
        assert_eq!(members, ["demo-signal-0", "demo-signal-1"]);
        assert_eq!(s.signal.as_ref().map(|p| p.summary.as_str()), Some("2/2"));
        assert_eq!(s.media.as_ref().map(|p| p.summary.as_str()), Some("2/2"));
        assert!(s.draining_media_pods.is_empty());
        let failover = s.failover.as_ref().unwrap();
        assert_eq!(failover.mode, FailoverMode::Automatic);
        assert_eq!(failover.members.len(), 2);
    }

    #[test]
    fn without_an_eligible_node_nothing_is_ready_and_the_reason_says_why() {
        let c = cluster();
        let s = build(&c.vc, &observe(&c, None), first_version);
        assert_eq!(
            condition(&s, ConditionType::Ready),
            ("False", "NoEligibleMediaNodes")
        );
        assert_eq!(
            condition(&s, ConditionType::Degraded),
            ("True", "NoEligibleMediaNodes")
        );
        assert_eq!(
            condition(&s, ConditionType::Progressing),
            ("False", "Blocked")
        );
        assert_eq!(s.signal, Some(PodCounts::new(0, 2)));
        assert_eq!(
            s.media.as_ref().map(|m| m.desired),
            Some(0),
            "no workload, no desired media pods"
        );
    }

    #[test]
    fn media_readiness_comes_from_the_pods_not_the_workload() {
        let mut c = cluster();
        c.pods[3] = member("demo", COMPONENT_MEDIA, "demo-media-b", "edge-b", false);
        let s = build(&c.vc, &observe(&c, applied(2, 2)), first_version);
        assert_eq!(s.media, Some(PodCounts::new(1, 2)));
        assert_eq!(
            condition(&s, ConditionType::Ready),
            ("False", "MediaPodsNotReady")
        );
        assert_eq!(
            condition(&s, ConditionType::Progressing),
            ("True", "RollingOut")
        );
        assert_eq!(s.provider_count, 1);

        let s = build(&c.vc, &observe(&c, applied(1, 2)), first_version);
        assert_eq!(
            condition(&s, ConditionType::Ready),
            ("False", "SignalPodsNotReady")
        );
    }

    #[test]
    fn a_media_pod_without_public_address_degrades_the_cluster() {
        let mut c = cluster();
        c.nodes[1] = Arc::new(node(
            "edge-b",
            &[("voicecluster.io/internet-facing", "true")],
            None,
        ));
        let s = build(&c.vc, &observe(&c, applied(2, 2)), first_version);
        assert_eq!(
            condition(&s, ConditionType::Degraded),
            ("True", "NoPublicAddress")
        );
        assert_eq!(s.provider_count, 1);
        assert_eq!(
            condition(&s, ConditionType::Ready),
            ("True", "AllPodsReady"),
            "one provider is enough to take calls"
        );
    }

    #[test]
    fn draining_media_pods_are_listed_with_their_load_not_as_providers() {
        let mut c = cluster();
        let mut draining = (*c.pods[2]).clone();
        draining
            .annotations_mut()
            .insert(ANNOTATION_DRAINING.to_string(), "true".to_string());
        c.pods[2] = Arc::new(draining);
        let mut o = observe(&c, applied(2, 2));
        o.reports.loads.insert(
            "demo-media-a".into(),
            Load {
                active_legs: 4,
                draining: true,
            },
        );
        let s = build(&c.vc, &o, first_version);
        assert_eq!(s.provider_count, 1);
        assert_eq!(s.draining_media_pods.len(), 1);
        assert_eq!(s.draining_media_pods[0].pod, "demo-media-a");
        assert_eq!(s.draining_media_pods[0].active_legs, Some(4));
    }

    #[test]
    fn the_directory_part_counts_pods_on_the_version_given_for_the_lists() {
        let c = cluster();
        let mut o = observe(&c, applied(2, 2));
        o.reports.versions = HashMap::from([
            ("demo-signal-0".to_string(), 3),
            ("demo-signal-1".to_string(), 2),
            ("demo-media-a".to_string(), 3),
            ("other-media-a".to_string(), 3),
        ]);
        let mut seen = None;
        let s = build(&c.vc, &o, |lists| {
            seen = Some((lists.providers.len(), lists.members.len()));
            3
        });
        assert_eq!(seen, Some((2, 2)), "the lists the status carries");
        let d = s.directory.unwrap();
        assert_eq!((d.version, d.pods, d.current_pods), (3, 4, 2));
    }

    #[test]
    fn failed_members_waiting_for_approval_make_failover_pending() {
        let mut c = cluster();
        c.vc.spec.failover.mode = FailoverMode::Manual;
        c.pods.remove(1);
        let mut o = observe(&c, applied(1, 2));
        o.reports.failovers.insert(
            "demo-signal-0".into(),
            FailoverReport {
                held: vec![voicecluster_api::grpc::MemberCalls {
                    member: "10.0.0.8".into(),
                    calls: 3,
                }],
                ..Default::default()
            },
        );
        let s = build(&c.vc, &o, first_version);
        let (status, reason) = condition(&s, ConditionType::FailoverPending);
        assert_eq!((status, reason), ("True", "AwaitingApproval"));
        let failed = &s.failover.as_ref().unwrap().failed;
        assert_eq!(
            (failed[0].address.as_str(), failed[0].calls),
            ("10.0.0.8", 3)
        );
    }

    #[test]
    fn unchanged_conditions_keep_their_transition_time() {
        let mut c = cluster();
        let first = build(&c.vc, &observe(&c, applied(2, 2)), first_version);
        c.vc.status = Some(first.clone());
        let later = Time(Timestamp::from_second(60).unwrap());
        let again = build(
            &c.vc,
            &Observed {
                now: later.clone(),
                ..observe(&c, applied(2, 2))
            },
            first_version,
        );
        assert_eq!(again, first, "nothing changed, nothing to write");
        // The media pods are gone.
        c.pods.truncate(2);
        let changed = build(
            &c.vc,
            &Observed {
                now: later.clone(),
                ..observe(&c, applied(2, 2))
            },
            first_version,
        );
        let ready = &changed.conditions[0];
        assert_eq!(
            (ready.type_.as_str(), ready.status.as_str()),
            ("Ready", "False")
        );
        assert_eq!(ready.last_transition_time, later);
        assert_eq!(
            changed.conditions[2].last_transition_time, first.conditions[2].last_transition_time,
            "Degraded did not change"
        );
    }
}
