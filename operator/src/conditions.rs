//! The `Ready`, `Progressing`, `Degraded` and `FailoverPending` conditions
//! (and the names of `ConfigApplied`, which the live configuration decides),
//! computed from what the reconciler observed, and which of their changes
//! are news worth an Event. Pure, so each rule has a unit test.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::runtime::events::{Event, EventType};
use voicecluster_api::voicecluster::{CallLegMode, PodCounts};

/// A condition's `status` when it holds.
pub const TRUE: &str = "True";

/// A condition's `status` when it does not.
pub const FALSE: &str = "False";

/// The conditions a VoiceCluster's status carries. Users and scripts
/// (`kubectl wait --for=condition=Ready`) match the wire names, so they
/// never change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionType {
    /// The voice service can take calls.
    Ready,
    /// Pods are still being created or updated.
    Progressing,
    /// The spec cannot be served as it stands.
    Degraded,
    /// Calls of a failed member wait for an administrator.
    FailoverPending,
    /// Every signal pod uses the live configuration the sources give.
    ConfigApplied,
}

impl ConditionType {
    /// Every type, in the order the status lists them.
    pub const ALL: [Self; 5] = [
        Self::Ready,
        Self::Progressing,
        Self::Degraded,
        Self::FailoverPending,
        Self::ConfigApplied,
    ];

    /// The wire name, as in `Condition::type_`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Progressing => "Progressing",
            Self::Degraded => "Degraded",
            Self::FailoverPending => "FailoverPending",
            Self::ConfigApplied => "ConfigApplied",
        }
    }

    /// The type with wire name `type_`, if it is one of ours.
    pub fn of(type_: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == type_)
    }
}

impl fmt::Display for ConditionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a condition has its status: the CamelCase `reason` users see in
/// `kubectl describe` and Events, and alerts match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No schedulable node matches the media node selector (Degraded, Ready).
    NoEligibleMediaNodes,
    /// Ready media pods run on nodes without a public address (Degraded).
    NoPublicAddress,
    /// Nothing stands in the way of the spec (Degraded).
    AsExpected,
    /// Nothing can roll out until a media node is eligible (Progressing).
    Blocked,
    /// Pods are not all ready yet (Progressing).
    RollingOut,
    /// All pods are ready (Progressing).
    Complete,
    /// Signal pods are missing or not ready (Ready).
    SignalPodsNotReady,
    /// Media pods are missing or not ready (Ready).
    MediaPodsNotReady,
    /// Signal pods need remote call legs and no media pod provides them (Ready).
    NoCallLegProviders,
    /// Everything is up (Ready).
    AllPodsReady,
    /// No failed member's calls wait (FailoverPending).
    NoneWaiting,
    /// A failed member's calls wait for approval (FailoverPending).
    AwaitingApproval,
    /// Every reporting signal pod uses the version (ConfigApplied).
    Applied,
    /// Signal pods are taking the version up (ConfigApplied).
    Applying,
    /// A version failed on a pod; every pod went back to the last good one
    /// (ConfigApplied).
    RolledBack,
    /// A version failed on a pod and there is no earlier one (ConfigApplied).
    ConfigFailed,
    /// The configuration's sources cannot be read (ConfigApplied).
    SourceError,
}

impl Reason {
    /// The wire value, as in `Condition::reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoEligibleMediaNodes => "NoEligibleMediaNodes",
            Self::NoPublicAddress => "NoPublicAddress",
            Self::AsExpected => "AsExpected",
            Self::Blocked => "Blocked",
            Self::RollingOut => "RollingOut",
            Self::Complete => "Complete",
            Self::SignalPodsNotReady => "SignalPodsNotReady",
            Self::MediaPodsNotReady => "MediaPodsNotReady",
            Self::NoCallLegProviders => "NoCallLegProviders",
            Self::AllPodsReady => "AllPodsReady",
            Self::NoneWaiting => "NoneWaiting",
            Self::AwaitingApproval => "AwaitingApproval",
            Self::Applied => "Applied",
            Self::Applying => "Applying",
            Self::RolledBack => "RolledBack",
            Self::ConfigFailed => "ConfigFailed",
            Self::SourceError => "SourceError",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// Why.
    pub reason: Reason,
    /// What a person can act on.
    pub message: String,
}

impl Verdict {
    /// A verdict.
    pub fn new(status: bool, reason: Reason, message: impl Into<String>) -> Self {
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
            Reason::NoEligibleMediaNodes,
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
            Reason::NoPublicAddress,
            format!(
                "media pods {} run on nodes without a public address for spec.media.publicAddress; \
                 they are not call-leg providers",
                f.without_address.join(", ")
            ),
        );
    }
    Verdict::new(false, Reason::AsExpected, "the spec can be served")
}

/// Whether pods are still being created or updated.
pub fn progressing(f: &Facts, degraded: &Verdict) -> Verdict {
    if degraded.status && degraded.reason == Reason::NoEligibleMediaNodes {
        return Verdict::new(false, Reason::Blocked, "waiting for an eligible media node");
    }
    if f.signal.ready < f.signal.desired || f.media.ready < f.media.desired {
        return Verdict::new(
            true,
            Reason::RollingOut,
            format!(
                "signal pods {} ready, media pods {} ready",
                f.signal.summary, f.media.summary
            ),
        );
    }
    Verdict::new(false, Reason::Complete, "all pods are ready")
}

/// Whether the voice service can take calls.
pub fn ready(f: &Facts, degraded: &Verdict) -> Verdict {
    if degraded.status && degraded.reason == Reason::NoEligibleMediaNodes {
        return Verdict::new(false, degraded.reason, degraded.message.clone());
    }
    if f.signal.desired == 0 || f.signal.ready < f.signal.desired {
        return Verdict::new(
            false,
            Reason::SignalPodsNotReady,
            format!("signal pods {} ready", f.signal.summary),
        );
    }
    if f.media.desired == 0 || f.media.ready < f.media.desired {
        return Verdict::new(
            false,
            Reason::MediaPodsNotReady,
            format!("media pods {} ready", f.media.summary),
        );
    }
    if f.call_leg_mode == CallLegMode::Remotely && f.providers == 0 {
        return Verdict::new(
            false,
            Reason::NoCallLegProviders,
            "signal pods create call legs remotely but no media pod is a provider",
        );
    }
    Verdict::new(
        true,
        Reason::AllPodsReady,
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
            Reason::NoneWaiting,
            "no failed member's calls wait for approval",
        );
    }
    Verdict::new(
        true,
        Reason::AwaitingApproval,
        format!(
            "failed members whose calls wait for takeover: {}; approve with \
             kubectl annotate voicecluster {} {}=<address or pod>[,...] --overwrite",
            f.awaiting_approval.join("; "),
            f.name,
            voicecluster_api::ANNOTATION_APPROVE_FAILOVER
        ),
    )
}

fn condition(
    type_: ConditionType,
    v: &Verdict,
    f: &Facts,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    condition_of(type_, v, f.generation, previous, now)
}

/// The condition `type_` for verdict `v`, keeping its transition time when
/// the status did not change.
pub fn condition_of(
    type_: ConditionType,
    v: &Verdict,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let status = if v.status { TRUE } else { FALSE };
    // The transition time moves only when the status does.
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_.as_str() && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: v.reason.to_string(),
        message: v.message.clone(),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The conditions, keeping transition times of unchanged ones.
pub fn conditions(f: &Facts, previous: &[Condition], now: &Time) -> Vec<Condition> {
    let d = degraded(f);
    let p = progressing(f, &d);
    let r = ready(f, &d);
    vec![
        condition(ConditionType::Ready, &r, f, previous, now),
        condition(ConditionType::Progressing, &p, f, previous, now),
        condition(ConditionType::Degraded, &d, f, previous, now),
        condition(
            ConditionType::FailoverPending,
            &failover_pending(f),
            f,
            previous,
            now,
        ),
    ]
}

/// An Event for every condition whose status changed, so `kubectl describe`
/// tells the story; `previous` are the conditions before this reconcile.
pub fn transition_events(previous: &[Condition], now: &[Condition]) -> Vec<Event> {
    now.iter()
        .filter_map(|c| transition_event(previous, c))
        .collect()
}

fn transition_event(previous: &[Condition], c: &Condition) -> Option<Event> {
    let before = previous.iter().find(|p| p.type_ == c.type_);
    if before.is_some_and(|b| b.status == c.status && b.reason == c.reason) {
        return None;
    }
    let was_true = before.is_some_and(|b| b.status == TRUE);
    let type_ = ConditionType::of(&c.type_);
    let bad = match type_ {
        // A rollout's progress is no news.
        Some(ConditionType::Progressing) => return None,
        // Not ready while starting up is no news.
        Some(ConditionType::Ready) if c.status == FALSE && !was_true => return None,
        // Nothing pending from the start is no news either.
        Some(ConditionType::FailoverPending) if c.status == FALSE && before.is_none() => {
            return None;
        }
        // Pods taking a version up, or all of them on it from the start.
        Some(ConditionType::ConfigApplied)
            if c.reason == Reason::Applying.as_str() || (c.status == TRUE && before.is_none()) =>
        {
            return None;
        }
        Some(ConditionType::ConfigApplied) => c.status == FALSE,
        Some(ConditionType::Degraded | ConditionType::FailoverPending) => c.status == TRUE,
        Some(ConditionType::Ready) => c.status == FALSE && was_true,
        None => false,
    };
    Some(Event {
        type_: if bad {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: c.reason.clone(),
        note: Some(format!("{} is {}: {}", c.type_, c.status, c.message)),
        action: "Reconcile".to_string(),
        secondary: None,
    })
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
        assert_eq!(v.reason.as_str(), "AwaitingApproval");
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
        assert_eq!(d.reason.as_str(), "NoEligibleMediaNodes");
        assert!(d.message.contains("voicecluster.io/internet-facing=true"));
        assert!(!ready(&f, &d).status);
        assert_eq!(progressing(&f, &d).reason.as_str(), "Blocked");
    }

    #[test]
    fn remotely_without_providers_is_not_ready() {
        let f = Facts {
            providers: 0,
            ..healthy()
        };
        assert_eq!(
            ready(&f, &degraded(&f)).reason.as_str(),
            "NoCallLegProviders"
        );
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
        assert_eq!(ready(&f, &d).reason.as_str(), "SignalPodsNotReady");
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

    #[test]
    fn wire_names_stay_as_users_match_them() {
        let types: Vec<&str> = ConditionType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "Ready",
                "Progressing",
                "Degraded",
                "FailoverPending",
                "ConfigApplied"
            ]
        );
        for t in ConditionType::ALL {
            assert_eq!(ConditionType::of(t.as_str()), Some(t));
        }
        assert_eq!(ConditionType::of("Available"), None);
        let reasons = [
            (Reason::NoEligibleMediaNodes, "NoEligibleMediaNodes"),
            (Reason::NoPublicAddress, "NoPublicAddress"),
            (Reason::AsExpected, "AsExpected"),
            (Reason::Blocked, "Blocked"),
            (Reason::RollingOut, "RollingOut"),
            (Reason::Complete, "Complete"),
            (Reason::SignalPodsNotReady, "SignalPodsNotReady"),
            (Reason::MediaPodsNotReady, "MediaPodsNotReady"),
            (Reason::NoCallLegProviders, "NoCallLegProviders"),
            (Reason::AllPodsReady, "AllPodsReady"),
            (Reason::NoneWaiting, "NoneWaiting"),
            (Reason::AwaitingApproval, "AwaitingApproval"),
        ];
        for (reason, wire) in reasons {
            assert_eq!(reason.to_string(), wire);
        }
        let written = conditions(&healthy(), &[], &Time(Timestamp::UNIX_EPOCH));
        let pairs: Vec<(&str, &str, &str)> = written
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("Ready", "True", "AllPodsReady"),
                ("Progressing", "False", "Complete"),
                ("Degraded", "False", "AsExpected"),
                ("FailoverPending", "False", "NoneWaiting"),
            ]
        );
    }

    /// (type, reason, warning) of each Event for going from `before` to `after`.
    fn events(before: &[Condition], after: &[Condition]) -> Vec<(String, String, bool)> {
        transition_events(before, after)
            .into_iter()
            .map(|e| {
                let note = e.note.unwrap_or_default();
                let type_ = note.split(' ').next().unwrap_or_default().to_string();
                (type_, e.reason, e.type_ == EventType::Warning)
            })
            .collect()
    }

    #[test]
    fn events_tell_changes_worth_knowing() {
        let t = Time(Timestamp::UNIX_EPOCH);
        let starting = conditions(
            &Facts {
                signal: PodCounts::new(0, 2),
                ..healthy()
            },
            &[],
            &t,
        );
        // Starting up not ready, rolling out, nothing pending: no news; only
        // that the spec can be served.
        assert_eq!(
            events(&[], &starting),
            [("Degraded".to_string(), "AsExpected".to_string(), false)]
        );
        let up = conditions(&healthy(), &starting, &t);
        assert_eq!(
            events(&starting, &up),
            [("Ready".to_string(), "AllPodsReady".to_string(), false)]
        );
        assert!(events(&up, &up).is_empty(), "no change, no Event");
        let broken = conditions(
            &Facts {
                without_address: vec!["media-a".into()],
                providers: 0,
                ..healthy()
            },
            &up,
            &t,
        );
        assert_eq!(
            events(&up, &broken),
            [
                ("Ready".to_string(), "NoCallLegProviders".to_string(), true),
                ("Degraded".to_string(), "NoPublicAddress".to_string(), true),
            ]
        );
        let waiting = conditions(
            &Facts {
                awaiting_approval: vec!["10.0.0.2: 3 calls".into()],
                ..healthy()
            },
            &up,
            &t,
        );
        assert_eq!(
            events(&up, &waiting),
            [(
                "FailoverPending".to_string(),
                "AwaitingApproval".to_string(),
                true
            )]
        );
        assert_eq!(
            events(&waiting, &up),
            [(
                "FailoverPending".to_string(),
                "NoneWaiting".to_string(),
                false
            )]
        );
    }
}
