//! `spec.failover`: how a failed signal member is detected and its calls
//! taken over.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    /// `Automatic` or `Manual`. Applies live: members get it (and the
    /// approvals of `status.failover`) with the next Directory version.
    #[serde(default)]
    pub mode: FailoverMode,
    /// Heartbeat interval between the SIP front door and the signal pods.
    /// A change rolls the media pods (their SIP edge containers probe with
    /// it from start); the signal pods answer any interval.
    #[serde(default = "default_heartbeat_ms")]
    #[schemars(range(min = 50, max = 60000))]
    pub heartbeat_interval_ms: i32,
    /// Missed heartbeats after which a member is considered failed. A
    /// change rolls the media pods, as `heartbeatIntervalMs`.
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
