//! The `VoiceCluster` custom resource (`voicecluster.io/v1alpha1`).
//!
//! Validation lives in the schema (ranges, enums, patterns) and in CEL rules
//! (relations between fields), so the API server refuses a bad spec with a
//! message that names the field, and the operator never sees it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{INTERNET_FACING_TRUE, LABEL_INTERNET_FACING};

/// One voice service: backend signal pods, edge media pods on
/// internet-facing nodes, and how calls are routed, failed over and billed.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// Several printer columns share a `type_`; clippy takes them for repeats.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "voicecluster.io",
    version = "v1alpha1",
    kind = "VoiceCluster",
    plural = "voiceclusters",
    shortname = "vc",
    namespaced,
    status = "VoiceClusterStatus",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Signal",
        type_ = "string",
        json_path = ".status.signal.summary"
    ),
    printcolumn(name = "Media", type_ = "string", json_path = ".status.media.summary"),
    printcolumn(
        name = "Providers",
        type_ = "integer",
        json_path = ".status.providerCount"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VoiceClusterSpec {
    /// Backend signal pods (SIP signalling, no direct internet access).
    #[serde(default)]
    pub signal: SignalSpec,
    /// Edge media pods: they own the call legs' media.
    #[serde(default)]
    pub media: MediaSpec,
    /// The SIP service users and trunks reach.
    pub sip: SipSpec,
    /// How a failed signal pod's calls are taken over.
    #[serde(default)]
    pub failover: FailoverSpec,
    /// How calls are priced.
    #[serde(default)]
    pub billing: BillingSpec,
}

/// Where call legs (media) are created for the calls a member handles.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CallLegMode {
    /// In this member's own process.
    Locally,
    /// In this member's own process, and for other members too.
    LocallyForOthers,
    /// On a `LocallyForOthers` member (an edge media pod), over gRPC.
    #[default]
    Remotely,
}

/// The backend signal pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalSpec {
    /// Number of signal pods. At least one; two or more let calls survive a
    /// pod's crash.
    #[serde(default = "default_signal_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// Container image; defaults to the operator's own signal-node image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Compute resources of the signal container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where the calls' legs are created.
    #[serde(default)]
    pub call_leg_mode: CallLegMode,
    /// Nodes signal pods may run on (any node when empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the signal pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

fn default_signal_replicas() -> i32 {
    2
}

impl Default for SignalSpec {
    fn default() -> Self {
        Self {
            replicas: default_signal_replicas(),
            image: None,
            resources: None,
            call_leg_mode: CallLegMode::default(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
        }
    }
}

/// How media pods are spread over the eligible nodes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PlacementKind {
    /// One media pod on every eligible node.
    #[default]
    DaemonSet,
    /// A fixed number of media pods (`replicas`), one per node at most.
    Deployment,
}

/// Placement of the media pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("self.kind == 'Deployment' ? has(self.replicas) : !has(self.replicas)").message("replicas is required with kind Deployment and not allowed with kind DaemonSet"))]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// `DaemonSet` (every eligible node) or `Deployment` (`replicas` pods).
    #[serde(default)]
    pub kind: PlacementKind,
    /// Number of media pods with kind `Deployment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub replicas: Option<i32>,
}

/// A range of UDP ports for RTP/RTCP (and WebRTC) on each media pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.min <= self.max").message("rtpPortRange.min must not be greater than rtpPortRange.max"))]
pub struct PortRange {
    /// First port of the range.
    #[schemars(range(min = 1024, max = 65535))]
    pub min: i32,
    /// Last port of the range (inclusive).
    #[schemars(range(min = 1024, max = 65535))]
    pub max: i32,
}

impl Default for PortRange {
    fn default() -> Self {
        Self {
            min: 20000,
            max: 29999,
        }
    }
}

/// Where a media pod's public address (the one put into SDP) comes from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PublicAddressSource {
    /// The `ExternalIP` address of the pod's Node.
    #[default]
    NodeExternalIP,
    /// The value of an annotation on the pod's Node.
    NodeAnnotation,
    /// A static map from node name to address.
    Static,
}

/// How to find each media pod's public address.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("self.source == 'NodeAnnotation' ? has(self.annotation) : !has(self.annotation)").message("annotation is required with source NodeAnnotation and not allowed otherwise"))]
#[x_kube(validation = Rule::new("self.source == 'Static' ? has(self.addresses) && size(self.addresses) > 0 : !has(self.addresses)").message("addresses (node name to address) is required with source Static and not allowed otherwise"))]
#[serde(rename_all = "camelCase")]
pub struct PublicAddress {
    /// Where the address comes from.
    #[serde(default)]
    pub source: PublicAddressSource,
    /// The Node annotation that holds the address, with source `NodeAnnotation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 317))]
    pub annotation: Option<String>,
    /// Node name to public address, with source `Static`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addresses: Option<BTreeMap<String, String>>,
}

/// The edge media pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaSpec {
    /// Container image; defaults to the operator's own media-node image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Nodes media pods may run on. Defaults to internet-facing nodes.
    #[serde(default = "default_media_node_selector")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations, for internet-facing nodes that are tainted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// DaemonSet or Deployment.
    #[serde(default)]
    pub placement: Placement,
    /// Use the node's network namespace, so RTP ports are the node's ports.
    #[serde(default = "default_true")]
    pub host_network: bool,
    /// UDP ports for media on each pod.
    #[serde(default)]
    pub rtp_port_range: PortRange,
    /// Call legs one media pod accepts at most.
    #[serde(default = "default_capacity")]
    #[schemars(range(min = 1, max = 100000))]
    pub capacity: i32,
    /// Where each pod's public address comes from.
    #[serde(default)]
    pub public_address: PublicAddress,
    /// How long a stopping media pod keeps its legs before it exits.
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = 0, max = 86400))]
    pub drain_timeout_seconds: i32,
    /// Compute resources of the media container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

fn default_media_node_selector() -> BTreeMap<String, String> {
    BTreeMap::from([(
        LABEL_INTERNET_FACING.to_string(),
        INTERNET_FACING_TRUE.to_string(),
    )])
}

fn default_true() -> bool {
    true
}

fn default_capacity() -> i32 {
    1000
}

fn default_drain_timeout() -> i32 {
    3600
}

impl Default for MediaSpec {
    fn default() -> Self {
        Self {
            image: None,
            node_selector: default_media_node_selector(),
            tolerations: Vec::new(),
            placement: Placement::default(),
            host_network: true,
            rtp_port_range: PortRange::default(),
            capacity: default_capacity(),
            public_address: PublicAddress::default(),
            drain_timeout_seconds: default_drain_timeout(),
            resources: None,
        }
    }
}

/// A SIP transport.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Transport {
    /// SIP over UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SIP over TCP.
    #[serde(rename = "TCP")]
    Tcp,
}

/// Kubernetes Service type of the SIP Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Through the cloud's load balancer.
    LoadBalancer,
}

/// The SIP service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SipSpec {
    /// The SIP domain users register in (`sip:alice@<domain>`).
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
    )]
    pub domain: String,
    /// Transports to listen on, each once.
    #[serde(default = "default_transports")]
    #[schemars(length(min = 1, max = 2), extend("x-kubernetes-list-type" = "set"))]
    pub transports: Vec<Transport>,
    /// SIP port.
    #[serde(default = "default_sip_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Service type of the SIP Service.
    #[serde(default)]
    pub service_type: ServiceType,
    /// Name of a Secret in this namespace holding the users who may
    /// register and call: key `users`, one `user:password` per line. An
    /// optional key `nonce-secret` keys the digest nonces, so that every
    /// signal member accepts the nonces of the others. Without it, every
    /// REGISTER is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub users_secret: Option<String>,
    /// Run the SIP front door (`signal-node edge`) in every media pod, on
    /// the media pod's network: devices reach the service there, and it
    /// forwards to the live signal pods with Call-ID affinity. Turn it off
    /// to put another SBC in front of the SIP Service.
    #[serde(default = "default_true")]
    pub edge: bool,
    /// Image of the SIP front door; defaults to `signal.image`. Pin it to
    /// upgrade the signal pods without rolling the media pods (whose edge
    /// containers drain their calls), and change it on its own to upgrade
    /// the edges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_image: Option<String>,
}

fn default_transports() -> Vec<Transport> {
    vec![Transport::Udp, Transport::Tcp]
}

fn default_sip_port() -> i32 {
    5060
}

/// Who decides that a failed member's calls are taken over.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum FailoverMode {
    /// At once, when heartbeats stop.
    #[default]
    Automatic,
    /// Only after an administrator approves it.
    Manual,
}

/// Failure detection and takeover.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// `Automatic` or `Manual`.
    #[serde(default)]
    pub mode: FailoverMode,
    /// Heartbeat interval between the SIP front door and the signal pods.
    #[serde(default = "default_heartbeat_ms")]
    #[schemars(range(min = 50, max = 60000))]
    pub heartbeat_interval_ms: i32,
    /// Missed heartbeats after which a member is considered failed.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
}

fn default_heartbeat_ms() -> i32 {
    200
}

fn default_failure_threshold() -> i32 {
    3
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            mode: FailoverMode::default(),
            heartbeat_interval_ms: default_heartbeat_ms(),
            failure_threshold: default_failure_threshold(),
        }
    }
}

/// One entry of the rate table.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rate {
    /// Destination number prefix; the longest matching prefix wins. Empty
    /// matches every destination.
    #[schemars(length(max = 32), regex(pattern = r"^\+?[0-9]*$"))]
    pub prefix: String,
    /// Price per minute as a decimal string (no float rounding in bills).
    #[schemars(regex(pattern = r"^[0-9]{1,9}(\.[0-9]{1,6})?$"))]
    pub price_per_minute: String,
    /// Billing increment: durations are rounded up to a multiple of it.
    #[serde(default = "default_increment")]
    #[schemars(range(min = 1, max = 3600))]
    pub increment_seconds: i32,
}

fn default_increment() -> i32 {
    60
}

/// Pricing of calls.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BillingSpec {
    /// ISO 4217 currency code of the prices.
    #[serde(default = "default_currency")]
    #[schemars(regex(pattern = r"^[A-Z]{3}$"))]
    pub currency: String,
    /// The rate table; each prefix at most once (the API server enforces
    /// it as a list map keyed by prefix).
    #[serde(default)]
    #[schemars(
        length(max = 10000),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["prefix"])
    )]
    pub rates: Vec<Rate>,
}

fn default_currency() -> String {
    "EUR".to_string()
}

impl Default for BillingSpec {
    fn default() -> Self {
        Self {
            currency: default_currency(),
            rates: Vec::new(),
        }
    }
}

/// Ready versus desired pods of one kind.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodCounts {
    /// Pods that are Ready.
    pub ready: i32,
    /// Pods that should exist.
    pub desired: i32,
    /// `ready/desired`, for `kubectl get`.
    pub summary: String,
}

impl PodCounts {
    /// Counts with their printed summary.
    pub fn new(ready: i32, desired: i32) -> Self {
        Self {
            ready,
            desired,
            summary: format!("{ready}/{desired}"),
        }
    }
}

/// State of a call-leg provider.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ProviderState {
    /// Accepting new call legs.
    Active,
}

/// A media pod that currently creates call legs for others.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallLegProvider {
    /// Pod name.
    pub pod: String,
    /// Node the pod runs on.
    pub node: String,
    /// Address put into SDP for this pod's legs.
    pub public_address: String,
    /// `host:port` of the pod's gRPC `CallLegs` service.
    pub grpc_address: String,
    /// Call legs the pod accepts at most.
    pub capacity: i32,
    /// Call legs the pod has now, as last reported.
    pub active_legs: i32,
    /// Provider state.
    pub state: ProviderState,
}

/// A media pod that takes no new call legs and waits for its calls to end
/// (being deleted, or asked to drain).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainingPod {
    /// Pod name.
    pub pod: String,
    /// Node the pod runs on.
    pub node: String,
    /// Call legs it still carries, as it last reported (absent until its
    /// first report).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_legs: Option<i32>,
}

/// A signal pod as the Directory lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalMember {
    /// Pod name (stable: the StatefulSet's ordinal name).
    pub pod: String,
    /// Pod IP, where the member's task handles are addressed.
    pub address: String,
    /// Whether the pod is Ready.
    pub ready: bool,
}

/// A signal member's heartbeat state, as the SIP edges see it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Heartbeat {
    /// Answering heartbeats.
    Up,
    /// Answering, but taking no new calls (stopping).
    Draining,
    /// Not answering (or gone): its dialogs go to its buddy.
    Down,
    /// No edge reported it yet.
    #[default]
    Unknown,
}

/// A signal member and its heartbeat state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberHealth {
    /// Pod name.
    pub pod: String,
    /// Pod IP.
    pub address: String,
    /// Worst state any edge reports (`Down` over `Draining` over `Up`).
    pub heartbeat: Heartbeat,
}

/// A member that failed while other members hold replicas of its calls.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailedMember {
    /// Its address (pod IP).
    pub address: String,
    /// Its pod, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Its calls the other members hold and have not taken over yet.
    pub calls: i32,
    /// In `Manual` mode: whether an administrator approved the takeover.
    pub approved: bool,
}

/// Calls one member took over from a failed one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PerformedFailover {
    /// The failed member's address.
    pub member: String,
    /// The pod that took its calls.
    pub taken_over_by: String,
    /// How many.
    pub calls: i32,
}

/// Failover as observed: members, failures, takeovers.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverStatus {
    /// The mode in effect.
    #[serde(default)]
    pub mode: FailoverMode,
    /// Every signal member and its heartbeat state.
    #[serde(default)]
    pub members: Vec<MemberHealth>,
    /// Failed members whose calls wait to be taken over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<FailedMember>,
    /// Takeovers performed (most recent members last, at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub performed: Vec<PerformedFailover>,
    /// Calls taken over in all, as far as `performed` goes.
    #[serde(default)]
    pub calls_taken_over: i64,
}

impl FailoverStatus {
    /// The failed members the Directory lets the others take over.
    pub fn approved(&self) -> Vec<String> {
        self.failed
            .iter()
            .filter(|f| f.approved)
            .map(|f| f.address.clone())
            .collect()
    }
}

/// The Directory's current version.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryStatus {
    /// Increases whenever `callLegProviders` or `signalMembers` change; every
    /// operator replica serves this version over the Directory stream.
    pub version: i64,
    /// The cluster's running signal and media pods.
    #[serde(default)]
    pub pods: i32,
    /// How many of `pods` acknowledged applying `version`.
    #[serde(default)]
    pub current_pods: i32,
}

/// Observed state of a VoiceCluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VoiceClusterStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Signal pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<PodCounts>,
    /// Media pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<PodCounts>,
    /// Media pods that are Ready and not draining.
    #[serde(default)]
    pub call_leg_providers: Vec<CallLegProvider>,
    /// Media pods draining: out of `callLegProviders`, still carrying calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub draining_media_pods: Vec<DrainingPod>,
    /// Number of entries in `callLegProviders`.
    #[serde(default)]
    pub provider_count: i32,
    /// Signal pods, as the Directory lists them.
    #[serde(default)]
    pub signal_members: Vec<SignalMember>,
    /// The Directory's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<DirectoryStatus>,
    /// Members' heartbeats, failed members, takeovers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverStatus>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn a_minimal_spec_gets_the_documented_defaults() {
        let spec: VoiceClusterSpec =
            serde_json::from_value(serde_json::json!({"sip": {"domain": "voice.example.com"}}))
                .unwrap();
        assert_eq!(spec.signal.replicas, 2);
        assert_eq!(spec.signal.call_leg_mode, CallLegMode::Remotely);
        assert_eq!(
            spec.media
                .node_selector
                .get(LABEL_INTERNET_FACING)
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(spec.media.placement.kind, PlacementKind::DaemonSet);
        assert!(spec.media.host_network);
        assert_eq!(
            spec.media.rtp_port_range,
            PortRange {
                min: 20000,
                max: 29999
            }
        );
        assert_eq!(spec.sip.transports, vec![Transport::Udp, Transport::Tcp]);
        assert_eq!(spec.sip.port, 5060);
        assert_eq!(spec.failover.mode, FailoverMode::Automatic);
        assert_eq!(spec.billing.currency, "EUR");
    }

    /// The API server fills defaults from the schema, the operator from
    /// serde: both must agree, or an object means different things to each.
    #[test]
    fn schema_defaults_match_serde_defaults() {
        let crd = serde_json::to_value(VoiceCluster::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let ours = serde_json::to_value(VoiceClusterSpec {
            signal: SignalSpec::default(),
            media: MediaSpec::default(),
            sip: serde_json::from_value(serde_json::json!({"domain": "x"})).unwrap(),
            failover: FailoverSpec::default(),
            billing: BillingSpec::default(),
        })
        .unwrap();
        for field in ["signal", "media", "failover", "billing"] {
            assert_eq!(
                spec[field]["default"], ours[field],
                "default of spec.{field}"
            );
        }
    }

    #[test]
    fn enums_serialise_as_kubernetes_style_strings() {
        let v = serde_json::to_value(Transport::Udp).unwrap();
        assert_eq!(v, "UDP");
        let v = serde_json::to_value(PublicAddressSource::NodeExternalIP).unwrap();
        assert_eq!(v, "NodeExternalIP");
    }

    #[test]
    fn pod_counts_print_ready_over_desired() {
        assert_eq!(PodCounts::new(1, 3).summary, "1/3");
    }
}
