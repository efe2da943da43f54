//! The `Ready`, `Progressing` and `Degraded` conditions, computed from what
//! the reconciler observed. Pure, so each rule has a unit test.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use voicecluster_api::voicecluster::{CallLegMode, PodCounts};

/// What the reconciler saw, the only input of the conditions.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// The spec generation observed.
    pub generation: Option<i64>,
    /// Nodes media pods may run on.
    pub eligible_media_nodes: usize,
    /// How media pods are selected, for messages.
    pub media_node_selector: String,
    /// Signal pods ready/desired.
    pub signal: PodCounts,
    /// Media pods ready/desired.
    pub media: PodCounts,
    /// Entries in the provider list.
    pub providers: usize,
    /// Ready media pods whose node has no public address.
    pub without_address: Vec<String>,
    /// The signal pods' call-leg mode.
    pub call_leg_mode: CallLegMode,
    /// The VoiceCluster's name, for commands in messages.
    pub name: String,
    /// Failed members whose calls wait for approval (Manual failover), as
    /// "address (pod): n calls".
    pub awaiting_approval: Vec<String>,
}

/// A condition's status, reason and message, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// `True` or `False`.
    pub status: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// What a person can act on.
    pub message: String,
}

impl Verdict {
    fn new(status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Why the VoiceCluster cannot be served as specified, if it cannot.
pub fn degraded(f: &Facts) -> Verdict {
    if f.eligible_media_nodes == 0 {
        return Verdict::new(
            true,
            "NoEligibleMediaNodes",
            format!(
                "no schedulable node matches spec.media.nodeSelector ({}) with the given tolerations; \
                 label internet-facing nodes voicecluster.io/internet-facing=true or change the selector. \
                 Nothing was created.",
                f.media_node_selector
            ),
        );
    }
    if !f.without_address.is_empty() {
        return Verdict::new(
            true,
            "NoPublicAddress",
            format!(
                "media pods {} run on nodes without a public address for spec.media.publicAddress; \
                 they are not call-leg providers",
                f.without_address.join(", ")
            ),
        );
    }
    Verdict::new(false, "AsExpected", "the spec can be served")
}

/// Whether pods are still being created or updated.
pub fn progressing(f: &Facts, degraded: &Verdict) -> Verdict {
    if degraded.status && degraded.reason == "NoEligibleMediaNodes" {
        return Verdict::new(false, "Blocked", "waiting for an eligible media node");
    }
    if f.signal.ready < f.signal.desired || f.media.ready < f.media.desired {
        return Verdict::new(
            true,
            "RollingOut",
            format!(
                "signal pods {} ready, media pods {} ready",
                f.signal.summary, f.media.summary
            ),
        );
    }
    Verdict::new(false, "Complete", "all pods are ready")
}

/// Whether the voice service can take calls.
pub fn ready(f: &Facts, degraded: &Verdict) -> Verdict {
    if degraded.status && degraded.reason == "NoEligibleMediaNodes" {
        return Verdict::new(false, degraded.reason, degraded.message.clone());
    }
    if f.signal.desired == 0 || f.signal.ready < f.signal.desired {
        return Verdict::new(
            false,
            "SignalPodsNotReady",
            format!("signal pods {} ready", f.signal.summary),
        );
    }
    if f.media.desired == 0 || f.media.ready < f.media.desired {
        return Verdict::new(
            false,
            "MediaPodsNotReady",
            format!("media pods {} ready", f.media.summary),
        );
    }
    if f.call_leg_mode == CallLegMode::Remotely && f.providers == 0 {
        return Verdict::new(
            false,
            "NoCallLegProviders",
            "signal pods create call legs remotely but no media pod is a provider",
        );
    }
    Verdict::new(
        true,
        "AllPodsReady",
        format!(
            "signal {} and media {} ready, {} call-leg providers",
            f.signal.summary, f.media.summary, f.providers
        ),
    )
}

/// Whether calls of a failed member wait for an administrator.
pub fn failover_pending(f: &Facts) -> Verdict {
    if f.awaiting_approval.is_empty() {
        return Verdict::new(
            false,
            "NoneWaiting",
            "no failed member's calls wait for approval",
        );
    }
    Verdict::new(
        true,
        "AwaitingApproval",
        format!(
            "failed members whose calls wait for takeover: {}; approve with \
             kubectl annotate voicecluster {} {}=<address or pod>[,...] --overwrite",
            f.awaiting_approval.join("; "),
            f.name,
            voicecluster_api::ANNOTATION_APPROVE_FAILOVER
        ),
    )
}

fn condition(type_: &str, v: &Verdict, f: &Facts, previous: &[Condition], now: &Time) -> Condition {
    let status = if v.status { "True" } else { "False" };
    // The transition time moves only when the status does.
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: v.reason.to_string(),
        message: v.message.clone(),
        observed_generation: f.generation,
        last_transition_time,
    }
}

/// The conditions, keeping transition times of unchanged ones.
pub fn conditions(f: &Facts, previous: &[Condition], now: &Time) -> Vec<Condition> {
    let d = degraded(f);
    let p = progressing(f, &d);
    let r = ready(f, &d);
    vec![
        condition("Ready", &r, f, previous, now),
        condition("Progressing", &p, f, previous, now),
        condition("Degraded", &d, f, previous, now),
        condition("FailoverPending", &failover_pending(f), f, previous, now),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn healthy() -> Facts {
        Facts {
            generation: Some(3),
            eligible_media_nodes: 2,
            media_node_selector: "voicecluster.io/internet-facing=true".into(),
            signal: PodCounts::new(2, 2),
            media: PodCounts::new(2, 2),
            providers: 2,
            without_address: vec![],
            call_leg_mode: CallLegMode::Remotely,
            name: "demo".into(),
            awaiting_approval: vec![],
        }
    }

    #[test]
    fn waiting_calls_make_failover_pending_with_the_command_to_approve() {
        let mut f = healthy();
        assert!(!failover_pending(&f).status);
        f.awaiting_approval = vec!["10.0.0.2 (pod demo-signal-1): 3 calls".into()];
        let v = failover_pending(&f);
        assert!(v.status);
        assert_eq!(v.reason, "AwaitingApproval");
        assert!(
            v.message.contains("demo-signal-1): 3 calls"),
            "{}",
            v.message
        );
        assert!(
            v.message
                .contains("kubectl annotate voicecluster demo voicecluster.io/approve-failover="),
            "{}",
            v.message
        );
    }

    #[test]
    fn all_ready_is_ready_and_not_progressing() {
        let f = healthy();
        let d = degraded(&f);
        assert!(!d.status);
        assert!(ready(&f, &d).status);
        assert!(!progressing(&f, &d).status);
    }

    #[test]
    fn no_eligible_node_is_degraded_with_an_actionable_reason() {
        let f = Facts {
            eligible_media_nodes: 0,
            ..healthy()
        };
        let d = degraded(&f);
        assert!(d.status);
        assert_eq!(d.reason, "NoEligibleMediaNodes");
        assert!(d.message.contains("voicecluster.io/internet-facing=true"));
        assert!(!ready(&f, &d).status);
        assert_eq!(progressing(&f, &d).reason, "Blocked");
    }

    #[test]
    fn remotely_without_providers_is_not_ready() {
        let f = Facts {
            providers: 0,
            ..healthy()
        };
        assert_eq!(ready(&f, &degraded(&f)).reason, "NoCallLegProviders");
        let locally = Facts {
            call_leg_mode: CallLegMode::Locally,
            ..f
        };
        assert!(ready(&locally, &degraded(&locally)).status);
    }

    #[test]
    fn pods_coming_up_are_progressing() {
        let f = Facts {
            signal: PodCounts::new(1, 2),
            ..healthy()
        };
        let d = degraded(&f);
        assert_eq!(ready(&f, &d).reason, "SignalPodsNotReady");
        assert!(progressing(&f, &d).status);
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let t0 = Time(Timestamp::UNIX_EPOCH);
        let t1 = Time(Timestamp::from_second(100).unwrap());
        let first = conditions(&healthy(), &[], &t0);
        let again = conditions(&healthy(), &first, &t1);
        assert_eq!(
            again[0].last_transition_time, t0,
            "unchanged Ready keeps its time"
        );
        let broken = Facts {
            providers: 0,
            ..healthy()
        };
        let changed = conditions(&broken, &again, &t1);
        assert_eq!(changed[0].status, "False");
        assert_eq!(changed[0].last_transition_time, t1);
        assert!(changed.iter().all(|c| c.observed_generation == Some(3)));
    }
}
