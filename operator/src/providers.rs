//! Which media pods are call-leg providers right now, and where media pods
//! may run: pure functions over pods and nodes, so they are tested without
//! an API server and run against the watch caches in the operator.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use kube::ResourceExt;
use voicecluster_api::grpc::Load;
use voicecluster_api::voicecluster::{
    CallLegProvider, DirectoryStatus, DrainingPod, FailoverMode, MediaSpec, ProviderState,
    PublicAddressSource, SignalMember, VoiceClusterStatus,
};
use voicecluster_api::{ANNOTATION_ACTIVE_LEGS, ANNOTATION_DRAINING, MEDIA_GRPC_PORT};

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

fn node_address(node: &Node, kind: &str) -> Option<String> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == kind)
        .map(|a| a.address.clone())
}

/// The public address of media pods on `node`, per the spec's source.
pub fn public_address(media: &MediaSpec, node: &Node) -> Option<String> {
    match media.public_address.source {
        PublicAddressSource::NodeExternalIP => node_address(node, "ExternalIP"),
        PublicAddressSource::NodeAnnotation => {
            let key = media.public_address.annotation.as_deref()?;
            node.annotations().get(key).cloned()
        }
        PublicAddressSource::Static => media
            .public_address
            .addresses
            .as_ref()?
            .get(&node.name_any())
            .cloned(),
    }
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
    node: impl Fn(&str) -> Option<std::sync::Arc<Node>>,
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

/// What a Directory version carries: equal versions carry equal lists.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lists {
    /// The call-leg providers.
    pub providers: Vec<CallLegProvider>,
    /// The signal members.
    pub members: Vec<SignalMember>,
    /// The failover mode and the approved failed members.
    pub policy: (FailoverMode, Vec<String>),
}

impl Lists {
    /// What a written status carries.
    pub fn of_status(s: &VoiceClusterStatus) -> Self {
        Self {
            providers: s.call_leg_providers.clone(),
            members: s.signal_members.clone(),
            policy: crate::failover::policy(s.failover.as_ref()),
        }
    }
}

/// The Directory version for these lists: the previous one when nothing
/// changed, the next one otherwise, so equal versions mean equal lists.
pub fn next_directory_version(previous: Option<&VoiceClusterStatus>, lists: &Lists) -> i64 {
    let Some(prev) = previous else {
        return 1;
    };
    let version = prev.directory.as_ref().map_or(0, |d| d.version);
    if version > 0 && Lists::of_status(prev) == *lists {
        version
    } else {
        version + 1
    }
}

/// The Directory versions this replica wrote, per VoiceCluster, so a
/// reconcile that reads a status older than its own last write (the watch
/// cache lags the write) does not hand out a version twice: a pod that has
/// a version is never sent it again, so one number must never carry two
/// different lists.
#[derive(Default)]
pub struct DirectoryVersions {
    written: std::sync::Mutex<HashMap<(String, String), (i64, Lists)>>,
}

impl DirectoryVersions {
    /// The version for these lists of cluster `key`, given the status the
    /// reconcile read.
    pub fn next(
        &self,
        key: (String, String),
        previous: Option<&VoiceClusterStatus>,
        lists: &Lists,
    ) -> i64 {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let from_status = next_directory_version(previous, lists);
        let read = previous
            .and_then(|s| s.directory.as_ref())
            .map_or(0, |d| d.version);
        let version = match written.get(&key) {
            // What this replica wrote last is newer than what it read.
            Some((v, l)) if *v >= read => {
                if l == lists {
                    *v
                } else {
                    v + 1
                }
            }
            _ => from_status,
        };
        written.insert(key, (version, lists.clone()));
        version
    }
}

/// Whether a pod is meant to be running a Directory client now: scheduled,
/// not finished and not on its way out.
fn should_watch(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && matches!(phase, Some("Running"))
}

/// The Directory part of the status: the version, and how many of the
/// cluster's running pods acknowledged exactly that version.
pub fn directory_status<'a>(
    version: i64,
    pods: impl IntoIterator<Item = &'a Pod>,
    acked: &HashMap<String, i64>,
) -> DirectoryStatus {
    let (mut running, mut current) = (0i32, 0i32);
    for p in pods.into_iter().filter(|p| should_watch(p)) {
        running = running.saturating_add(1);
        let name = p.metadata.name.as_deref().unwrap_or_default();
        if acked.get(name) == Some(&version) {
            current = current.saturating_add(1);
        }
    }
    DirectoryStatus {
        version,
        pods: running,
        current_pods: current,
    }
}

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match t.key.as_deref() {
            None | Some("") => t.operator.as_deref() == Some("Exists"),
            Some(k) => k == taint.key,
        };
        let value_ok = match t.operator.as_deref() {
            Some("Exists") => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        };
        effect_ok && key_ok && value_ok
    })
}

/// Whether media pods of `media` may be scheduled onto `node`: its labels
/// match the node selector and every NoSchedule/NoExecute taint is tolerated.
pub fn is_eligible_media_node(media: &MediaSpec, node: &Node) -> bool {
    let labels = node.labels();
    let selected = media
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let unschedulable = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let taints_ok = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_none_or(|taints| {
            taints
                .iter()
                .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
                .all(|t| tolerates(&media.tolerations, t))
        });
    selected && !unschedulable && taints_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use voicecluster_api::voicecluster::PublicAddress;

    fn node(name: &str, labels: &[(&str, &str)], external: Option<&str>) -> Node {
        let mut addresses =
            vec![serde_json::json!({"type": "InternalIP", "address": "198.51.100.1"})];
        if let Some(ip) = external {
            addresses.push(serde_json::json!({"type": "ExternalIP", "address": ip}));
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>(),
                         "annotations": {"voicecluster.io/public-address": "192.0.2.99"}},
            "status": {"addresses": addresses},
        }))
        .unwrap()
    }

    fn pod(name: &str, node: &str, ready: bool) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": []},
            "status": {"podIP": "10.0.0.7", "phase": "Running",
                       "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]},
        }))
        .unwrap()
    }

    fn lookup(nodes: Vec<Node>) -> impl Fn(&str) -> Option<Arc<Node>> {
        move |name| {
            nodes
                .iter()
                .find(|n| n.name_any() == name)
                .cloned()
                .map(Arc::new)
        }
    }

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
    fn public_address_follows_the_configured_source() {
        let n = node("edge", &[], Some("203.0.113.10"));
        let mut media = MediaSpec::default();
        assert_eq!(public_address(&media, &n).as_deref(), Some("203.0.113.10"));
        media.public_address = PublicAddress {
            source: PublicAddressSource::NodeAnnotation,
            annotation: Some("voicecluster.io/public-address".into()),
            addresses: None,
        };
        assert_eq!(public_address(&media, &n).as_deref(), Some("192.0.2.99"));
        media.public_address = PublicAddress {
            source: PublicAddressSource::Static,
            annotation: None,
            addresses: Some(BTreeMap::from([(
                "edge".to_string(),
                "192.0.2.5".to_string(),
            )])),
        };
        assert_eq!(public_address(&media, &n).as_deref(), Some("192.0.2.5"));
    }

    #[test]
    fn directory_version_moves_only_when_the_lists_change() {
        let first = next_directory_version(None, &Lists::default());
        assert_eq!(first, 1);
        let status = VoiceClusterStatus {
            directory: Some(DirectoryStatus {
                version: first,
                ..DirectoryStatus::default()
            }),
            ..VoiceClusterStatus::default()
        };
        assert_eq!(next_directory_version(Some(&status), &Lists::default()), 1);
        let member = SignalMember {
            pod: "s-0".into(),
            address: "10.0.0.1".into(),
            ready: true,
        };
        let with_member = Lists {
            members: vec![member],
            ..Lists::default()
        };
        assert_eq!(next_directory_version(Some(&status), &with_member), 2);
        let approved = Lists {
            policy: (FailoverMode::Manual, vec!["10.0.0.2".into()]),
            ..Lists::default()
        };
        assert_eq!(
            next_directory_version(Some(&status), &approved),
            2,
            "an approval is news for the members"
        );
    }

    #[test]
    fn current_pods_are_running_pods_that_acked_this_version() {
        let mut pending = pod("s-2", "n", false);
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let mut leaving = pod("s-3", "n", true);
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let pods = [
            pod("s-0", "n", true),
            pod("s-1", "n", true),
            pending,
            leaving,
        ];
        let acked = HashMap::from([
            ("s-0".to_string(), 5),
            ("s-1".to_string(), 4),
            ("s-3".to_string(), 5),
        ]);
        let d = directory_status(5, &pods, &acked);
        assert_eq!((d.version, d.pods, d.current_pods), (5, 2, 1));
        // Once s-1 catches up, both running pods are current.
        let acked = HashMap::from([("s-0".to_string(), 5), ("s-1".to_string(), 5)]);
        assert_eq!(directory_status(5, &pods, &acked).current_pods, 2);
    }

    #[test]
    fn signal_members_need_an_address() {
        let mut no_ip = pod("s-1", "n", false);
        no_ip.status.as_mut().unwrap().pod_ip = None;
        let members = signal_members(&[pod("s-0", "n", true), no_ip]);
        assert_eq!(members.len(), 1);
        assert_eq!((members[0].pod.as_str(), members[0].ready), ("s-0", true));
    }

    #[test]
    fn eligibility_follows_labels_and_taints() {
        let mut media = MediaSpec::default();
        let edge = node("edge", &[("voicecluster.io/internet-facing", "true")], None);
        let core = node(
            "core",
            &[("voicecluster.io/internet-facing", "false")],
            None,
        );
        assert!(is_eligible_media_node(&media, &edge));
        assert!(!is_eligible_media_node(&media, &core));

        let mut tainted = edge.clone();
        tainted.spec = Some(
            serde_json::from_value(serde_json::json!({
                "taints": [{"key": "edge", "value": "yes", "effect": "NoSchedule"}]
            }))
            .unwrap(),
        );
        assert!(!is_eligible_media_node(&media, &tainted));
        media.tolerations = vec![
            serde_json::from_value(serde_json::json!({
                "key": "edge", "operator": "Equal", "value": "yes", "effect": "NoSchedule"
            }))
            .unwrap(),
        ];
        assert!(is_eligible_media_node(&media, &tainted));
    }

    #[test]
    fn a_stale_status_never_gets_a_version_reused_for_other_lists() {
        let versions = DirectoryVersions::default();
        let key = ("voice".to_string(), "demo".to_string());
        let member = |ready| SignalMember {
            pod: "s-1".into(),
            address: "10.0.0.2".into(),
            ready,
        };
        let lists = |ready| Lists {
            members: vec![member(ready)],
            ..Lists::default()
        };
        let stale = VoiceClusterStatus {
            directory: Some(DirectoryStatus {
                version: 4,
                ..Default::default()
            }),
            signal_members: vec![member(false)],
            ..Default::default()
        };
        // The write of version 4 is not in the cache yet; the reconcile
        // reads version 3 with the member not ready, then the member turns
        // ready: a new version, not 4 again.
        let older = VoiceClusterStatus {
            directory: Some(DirectoryStatus {
                version: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(versions.next(key.clone(), Some(&stale), &lists(false)), 4);
        assert_eq!(versions.next(key.clone(), Some(&older), &lists(true)), 5);
        assert_eq!(
            versions.next(key.clone(), Some(&older), &lists(true)),
            5,
            "same lists, same version"
        );
        // A newer status than anything this replica wrote (another leader)
        // is followed.
        let newer = VoiceClusterStatus {
            directory: Some(DirectoryStatus {
                version: 9,
                ..Default::default()
            }),
            signal_members: vec![member(true)],
            ..Default::default()
        };
        assert_eq!(versions.next(key, Some(&newer), &lists(true)), 9);
    }
}
