//! `status`: what the operator observed: pods, call-leg providers, signal
//! members, the Directory's version and failover.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::FailoverMode;

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

/// The live configuration: the version the operator serves and what each
/// signal and media pod did with it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    /// Increases whenever the users, the rate table or a live setting
    /// (`logLevel`, `media.mediaTimeoutSeconds`, `media.legStatsSeconds`)
    /// change.
    pub version: i64,
    /// SHA-256 of the version's content (hex): equal hashes, equal content.
    pub hash: String,
    /// When the version was made (Unix ms): calls answered from then on
    /// are priced with its rates.
    pub effective_unix_ms: i64,
    /// Users in the version.
    #[serde(default)]
    pub users: i32,
    /// Why the configuration could not be assembled from its sources (the
    /// pods keep `version` meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Signal and media pods that applied `version`, of those that
    /// reported.
    #[serde(default)]
    pub current_pods: i32,
    /// Each signal and media pod's last result.
    #[serde(default)]
    pub pods: Vec<PodConfig>,
    /// The last version every reporting pod applied: what a
    /// version that fails on a pod is rolled back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_known_good: Option<ConfigVersionRef>,
    /// The version that failed and was rolled back; the operator serves
    /// `lastKnownGood`'s content until the sources change again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<RolledBackConfig>,
    /// What each user source gave, in precedence order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<UserSourceStatus>,
}

/// What one user source gave the configuration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserSourceStatus {
    /// The source: `usersSecret`, or its name in `spec.sip.userSources`.
    pub name: String,
    /// `Secret`, `CSV` or `LDAP`.
    pub kind: String,
    /// `Ready`, `Failed` (nothing from it is used: see `message`), or for
    /// LDAP `Pending` (no search finished yet) and `Stale` (the last search
    /// failed; the users of the one before are used).
    pub state: String,
    /// What went wrong, when something did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Users the source gave that are in the configuration.
    #[serde(default)]
    pub users: i32,
    /// Users marked disabled, left out.
    #[serde(default)]
    pub disabled: i32,
    /// Users an earlier source named already, left out.
    #[serde(default)]
    pub shadowed: i32,
    /// Rows or entries that could not be used.
    #[serde(default)]
    pub invalid: i32,
    /// The first of them, each with its line (CSV) or DN (LDAP) and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// LDAP: entries the last good search returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entries: Option<i32>,
    /// LDAP: when the last search ended, good or not (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// LDAP: when the last good search ended (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_time: Option<String>,
}

/// A configuration version by number and content hash.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigVersionRef {
    /// The version.
    pub version: i64,
    /// Its content hash.
    pub hash: String,
    /// When it was made (Unix ms).
    #[serde(default)]
    pub effective_unix_ms: i64,
    /// Users in it.
    #[serde(default)]
    pub users: i32,
}

/// A configuration version a pod refused, and why.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolledBackConfig {
    /// The version refused.
    pub version: i64,
    /// Its content hash: while the sources give this content again, the
    /// operator keeps serving the good one.
    pub hash: String,
    /// The first pod that refused it.
    pub pod: String,
    /// What the pod said.
    pub reason: String,
}

/// What one pod did with a configuration version.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodConfig {
    /// The pod.
    pub pod: String,
    /// The version it reported on.
    pub version: i64,
    /// `Applied` or `Failed`.
    pub state: String,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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
    /// The live configuration (users, rates, live settings) and each pod's
    /// version of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigStatus>,
}
