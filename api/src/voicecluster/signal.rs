//! `spec.signal`: the backend signal pods, and where their calls' legs are made.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

/// The backend signal pods. What they read only at start is hashed into
/// their template, so a change of it rolls them (one at a time, each
/// handing its calls to its buddy); each field says whether it does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalSpec {
    /// Number of signal pods. At least one; two or more let calls survive a
    /// pod's crash. A change scales them without rolling the others.
    #[serde(default = "default_signal_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// Container image; defaults to the operator's own signal-node image.
    /// A change rolls the signal pods (and the SIP edges in the media pods,
    /// unless `sip.edgeImage` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// Compute resources of the signal container. A change rolls the
    /// signal pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where the calls' legs are created. A change rolls the signal pods.
    #[serde(default)]
    pub call_leg_mode: CallLegMode,
    /// Nodes signal pods may run on (any node when empty). A change rolls
    /// the signal pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the signal pods. A change rolls the signal pods.
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
