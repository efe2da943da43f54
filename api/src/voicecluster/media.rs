//! `spec.media`: the edge media pods, where they run and which address
//! and ports their legs take.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::default_true;
use crate::{INTERNET_FACING_TRUE, LABEL_INTERNET_FACING};

/// How media pods are spread over the eligible nodes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PlacementKind {
    /// One media pod on every eligible node.
    #[default]
    DaemonSet,
    /// A fixed number of media pods (`replicas`), one per node at most.
    Deployment,
}

/// Placement of the media pods. Changing `kind` replaces every media pod
/// (the other workload); changing `replicas` scales without a roll.
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

/// The edge media pods. Their settings reach them as variables of their
/// template, so a change rolls the media pods (one node at a time, each
/// draining its calls) unless its field says it applies live.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaSpec {
    /// Container image; defaults to the operator's own media-node image.
    /// A change rolls the media pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Nodes media pods may run on. Defaults to internet-facing nodes. A
    /// change rolls the media pods.
    #[serde(default = "default_media_node_selector")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations, for internet-facing nodes that are tainted. A change
    /// rolls the media pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// DaemonSet or Deployment.
    #[serde(default)]
    pub placement: Placement,
    /// Use the node's network namespace, so RTP ports are the node's ports.
    /// A change rolls the media pods.
    #[serde(default = "default_true")]
    pub host_network: bool,
    /// UDP ports for media on each pod. A change rolls the media pods and
    /// the signal pods (members read it at start for their own legs).
    #[serde(default)]
    pub rtp_port_range: PortRange,
    /// Call legs one media pod accepts at most. A change rolls the media
    /// pods and the signal pods (members read it at start).
    #[serde(default = "default_capacity")]
    #[schemars(range(min = 1, max = 100000))]
    pub capacity: i32,
    /// Where each pod's public address comes from. Applies live: the
    /// operator reads it and the pods get the addresses from the Directory.
    #[serde(default)]
    pub public_address: PublicAddress,
    /// How long a stopping media pod keeps its legs before it exits. A
    /// change rolls the media pods (it is also their grace period).
    #[serde(default = "default_drain_timeout")]
    #[schemars(range(min = 0, max = 86400))]
    pub drain_timeout_seconds: i32,
    /// Compute resources of the media container. A change rolls the media
    /// pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Seconds without media after which a media pod tells a leg's owner
    /// the leg is silent (the member then hangs the call up). Applies
    /// live: running media pods take it with the live configuration
    /// version (`status.config`), for the legs they have too.
    #[serde(default = "default_media_timeout")]
    #[schemars(range(min = 1, max = 86400))]
    pub media_timeout_seconds: i32,
    /// Seconds between a media pod's statistics events (packets, RTCP loss
    /// and jitter) to each leg's owner; 0: none. Applies live, like
    /// `mediaTimeoutSeconds`.
    #[serde(default = "default_leg_stats")]
    #[schemars(range(min = 0, max = 3600))]
    pub leg_stats_seconds: i32,
}

fn default_media_node_selector() -> BTreeMap<String, String> {
    BTreeMap::from([(
        LABEL_INTERNET_FACING.to_string(),
        INTERNET_FACING_TRUE.to_string(),
    )])
}

fn default_capacity() -> i32 {
    1000
}

fn default_drain_timeout() -> i32 {
    3600
}

fn default_media_timeout() -> i32 {
    30
}

fn default_leg_stats() -> i32 {
    10
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
            media_timeout_seconds: default_media_timeout(),
            leg_stats_seconds: default_leg_stats(),
        }
    }
}
