//! The `VoiceCluster` custom resource (`voicecluster.io/v1alpha1`).
//!
//! Validation lives in the schema (ranges, enums, patterns) and in CEL rules
//! (relations between fields), so the API server refuses a bad spec with a
//! message that names the field, and the operator never sees it.
//!
//! The types are split by the part of the resource they describe; every
//! one of them is used from here, as `voicecluster::SipSpec` and so on.

mod billing;
mod failover;
mod media;
mod signal;
mod sip;
mod status;
mod user_sources;

pub use billing::{BillingSpec, Rate};
pub use failover::{FailoverMode, FailoverSpec};
pub use media::{
    MediaSpec, Placement, PlacementKind, PortRange, PublicAddress, PublicAddressSource,
};
pub use signal::{CallLegMode, SignalSpec};
pub use sip::{ServiceType, SipSpec, Transport};
pub use status::{
    CallLegProvider, ConfigStatus, ConfigVersionRef, DirectoryStatus, DrainingPod, FailedMember,
    FailoverStatus, Heartbeat, MemberHealth, PerformedFailover, PodConfig, PodCounts,
    ProviderState, RolledBackConfig, SignalMember, UserSourceStatus, VoiceClusterStatus,
};
pub use user_sources::{
    CsvObjectKind, CsvSource, InvalidEntries, LDAP_RESYNC_ANNOTATION, LdapAttributes, LdapSource,
    UserSource,
};

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

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
        name = "Config",
        type_ = "integer",
        json_path = ".status.config.version"
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
    /// Log filter of the signal members and the media relays, in tracing
    /// `EnvFilter` syntax: a level (`info`) or per-target levels
    /// (`info,voicecluster_signal_node=debug`). Applies live: running pods
    /// swap their filter with the live configuration version that carries
    /// it (`status.config`). A filter a pod cannot parse is refused by
    /// that pod (state `Failed`, the reason names it) and every pod goes
    /// back to the last version they all applied. The SIP edge containers
    /// keep their own `VC_LOG_LEVEL`.
    #[serde(default = "default_log_level")]
    #[schemars(length(min = 1, max = 1024))]
    pub log_level: String,
}

fn default_log_level() -> String {
    "info".to_string()
}

/// serde's default of the flags that are on unless turned off.
fn default_true() -> bool {
    true
}

#[cfg(test)]
mod tests;
