//! The failover part of the status, from what the members and edges report
//! on their Directory streams: each member's heartbeat state (as the edges
//! see it), the failed members whose calls other members hold, the
//! administrator's approvals (Manual mode), and the takeovers performed.
//! Pure, so each rule has a unit test.

use std::collections::{BTreeMap, HashMap};

use voicecluster_api::grpc::FailoverReport;
use voicecluster_api::voicecluster::{
    FailedMember, FailoverMode, FailoverStatus, Heartbeat, MemberHealth, PerformedFailover,
    SignalMember,
};

/// Takeovers kept in the status.
const PERFORMED_KEPT: usize = 20;

/// The mode and the approved failed members a status hands the members.
pub fn policy(status: Option<&FailoverStatus>) -> (FailoverMode, Vec<String>) {
    status.map_or((FailoverMode::Automatic, Vec::new()), |f| {
        (f.mode, f.approved())
    })
}

/// What the reconcile knows that failover depends on.
pub struct Observed<'a> {
    /// The spec's mode.
    pub mode: FailoverMode,
    /// The signal pods, as the Directory lists them.
    pub members: &'a [SignalMember],
    /// The members' and edges' last reports, by pod.
    pub reports: &'a HashMap<String, FailoverReport>,
    /// The approval annotation's value.
    pub approvals: Option<&'a str>,
    /// The status written last.
    pub previous: Option<&'a FailoverStatus>,
}

fn parse_heartbeat(s: &str) -> Heartbeat {
    match s {
        "Up" => Heartbeat::Up,
        "Draining" => Heartbeat::Draining,
        "Down" => Heartbeat::Down,
        _ => Heartbeat::Unknown,
    }
}

/// The worse of two states: Down, then Draining, then Up.
fn worse(a: Heartbeat, b: Heartbeat) -> Heartbeat {
    let rank = |h| match h {
        Heartbeat::Unknown => 0,
        Heartbeat::Up => 1,
        Heartbeat::Draining => 2,
        Heartbeat::Down => 3,
    };
    if rank(b) > rank(a) { b } else { a }
}

/// The failover status for what was observed.
pub fn failover_status(o: &Observed) -> FailoverStatus {
    let mut heartbeats: HashMap<&str, Heartbeat> = HashMap::new();
    let mut held: BTreeMap<&str, i32> = BTreeMap::new();
    for r in o.reports.values() {
        for b in &r.backends {
            let h = heartbeats.entry(b.address.as_str()).or_default();
            *h = worse(*h, parse_heartbeat(&b.state));
        }
        // A member's buddy holds its calls; a member that joined since
        // may hold copies of them: the largest count is the calls'.
        for m in r.held.iter().filter(|m| m.calls > 0) {
            let n = held.entry(m.member.as_str()).or_default();
            *n = (*n).max(m.calls);
        }
    }
    let heartbeat = |a: &str| heartbeats.get(a).copied().unwrap_or_default();
    let members: Vec<MemberHealth> = o
        .members
        .iter()
        .map(|m| MemberHealth {
            pod: m.pod.clone(),
            address: m.address.clone(),
            heartbeat: heartbeat(&m.address),
        })
        .collect();

    let approvals: Vec<&str> = o
        .approvals
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    let failed = held
        .into_iter()
        .filter(|(address, _)| {
            let live = o.members.iter().any(|m| m.address == *address && m.ready);
            !live || heartbeat(address) == Heartbeat::Down
        })
        .map(|(address, calls)| {
            let pod = known_pod(o, address);
            let approved = o.mode == FailoverMode::Manual
                && approvals
                    .iter()
                    .any(|a| *a == "*" || *a == address || Some(*a) == pod.as_deref());
            FailedMember {
                address: address.to_string(),
                pod,
                calls,
                approved,
            }
        })
        .collect();

    let (performed, calls_taken_over) = performed(o);
    FailoverStatus {
        mode: o.mode,
        members,
        failed,
        performed,
        calls_taken_over,
    }
}

/// The pod that had `address`: a pod's name outlives the pod in the
/// status, for the messages.
fn known_pod(o: &Observed, address: &str) -> Option<String> {
    let previous = o.previous.into_iter().flat_map(|p| {
        p.members
            .iter()
            .map(|m| (m.address.as_str(), Some(m.pod.as_str())))
            .chain(
                p.failed
                    .iter()
                    .map(|f| (f.address.as_str(), f.pod.as_deref())),
            )
    });
    o.members
        .iter()
        .map(|m| (m.address.as_str(), Some(m.pod.as_str())))
        .chain(previous)
        .find(|(a, _)| *a == address)
        .and_then(|(_, pod)| pod.map(str::to_string))
}

/// The takeovers so far: each reporter's count per failed member only
/// grows (a reporter that restarts counts from zero again, so the status
/// keeps the larger number), and the total adds what is new.
fn performed(o: &Observed) -> (Vec<PerformedFailover>, i64) {
    let mut list: Vec<PerformedFailover> =
        o.previous.map(|p| p.performed.clone()).unwrap_or_default();
    let mut total = o.previous.map_or(0, |p| p.calls_taken_over);
    let mut reporters: Vec<&String> = o.reports.keys().collect();
    reporters.sort();
    for pod in reporters {
        for t in &o.reports[pod].taken_over {
            let entry = list
                .iter_mut()
                .find(|p| p.member == t.member && p.taken_over_by == *pod);
            match entry {
                Some(p) if t.calls > p.calls => {
                    total += i64::from(t.calls - p.calls);
                    p.calls = t.calls;
                }
                Some(_) => {}
                None if t.calls > 0 => {
                    total += i64::from(t.calls);
                    list.push(PerformedFailover {
                        member: t.member.clone(),
                        taken_over_by: pod.clone(),
                        calls: t.calls,
                    });
                }
                None => {}
            }
        }
    }
    let excess = list.len().saturating_sub(PERFORMED_KEPT);
    list.drain(..excess);
    (list, total)
}

/// The failed members whose calls wait for an administrator, as
/// "address (pod p): n calls".
pub fn awaiting_approval(status: &FailoverStatus) -> Vec<String> {
    if status.mode != FailoverMode::Manual {
        return Vec::new();
    }
    status
        .failed
        .iter()
        .filter(|f| !f.approved)
        .map(|f| match &f.pod {
            Some(pod) => format!("{} (pod {pod}): {} calls", f.address, f.calls),
            None => format!("{}: {} calls", f.address, f.calls),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use voicecluster_api::grpc::{BackendHealth, MemberCalls};

    fn member(pod: &str, address: &str, ready: bool) -> SignalMember {
        SignalMember {
            pod: pod.into(),
            address: address.into(),
            ready,
        }
    }

    fn calls(member: &str, calls: i32) -> MemberCalls {
        MemberCalls {
            member: member.into(),
            calls,
        }
    }

    fn edge(states: &[(&str, &str)]) -> FailoverReport {
        FailoverReport {
            backends: states
                .iter()
                .map(|(a, s)| BackendHealth {
                    address: (*a).into(),
                    state: (*s).into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn observe(
        mode: FailoverMode,
        members: &[SignalMember],
        reports: &HashMap<String, FailoverReport>,
        approvals: Option<&str>,
        previous: Option<&FailoverStatus>,
    ) -> FailoverStatus {
        failover_status(&Observed {
            mode,
            members,
            reports,
            approvals,
            previous,
        })
    }

    #[test]
    fn heartbeats_are_the_worst_an_edge_reports() {
        let members = [
            member("s-0", "10.0.0.1", true),
            member("s-1", "10.0.0.2", true),
            member("s-2", "10.0.0.3", true),
        ];
        let reports = HashMap::from([
            (
                "media-a".to_string(),
                edge(&[("10.0.0.1", "Up"), ("10.0.0.2", "Up")]),
            ),
            (
                "media-b".to_string(),
                edge(&[("10.0.0.1", "Up"), ("10.0.0.2", "Down")]),
            ),
        ]);
        let s = observe(FailoverMode::Automatic, &members, &reports, None, None);
        let states: Vec<Heartbeat> = s.members.iter().map(|m| m.heartbeat).collect();
        assert_eq!(states, [Heartbeat::Up, Heartbeat::Down, Heartbeat::Unknown]);
        assert!(
            s.failed.is_empty(),
            "no calls held, nothing failed with calls"
        );
    }

    #[test]
    fn a_failed_member_waits_for_approval_by_address_or_pod_name_in_manual_mode() {
        let before = [
            member("s-0", "10.0.0.1", true),
            member("s-1", "10.0.0.2", true),
        ];
        let first = observe(FailoverMode::Manual, &before, &HashMap::new(), None, None);
        // s-1's pod is gone; s-0 holds 3 of its calls, and 1 of an unknown.
        let now = [member("s-0", "10.0.0.1", true)];
        let reports = HashMap::from([(
            "s-0".to_string(),
            FailoverReport {
                held: vec![calls("10.0.0.2", 3), calls("10.0.0.9", 1)],
                ..Default::default()
            },
        )]);
        let s = observe(FailoverMode::Manual, &now, &reports, None, Some(&first));
        assert_eq!(s.failed.len(), 2);
        assert_eq!(s.failed[0].pod.as_deref(), Some("s-1"), "known from before");
        assert_eq!(s.failed[0].calls, 3);
        assert_eq!(
            awaiting_approval(&s),
            ["10.0.0.2 (pod s-1): 3 calls", "10.0.0.9: 1 calls"]
        );
        assert!(policy(Some(&s)).1.is_empty());

        let s = observe(FailoverMode::Manual, &now, &reports, Some("s-1"), Some(&s));
        assert_eq!(
            policy(Some(&s)),
            (FailoverMode::Manual, vec!["10.0.0.2".to_string()])
        );
        assert_eq!(awaiting_approval(&s), ["10.0.0.9: 1 calls"]);
        let s = observe(
            FailoverMode::Manual,
            &now,
            &reports,
            Some(" 10.0.0.9 ,*"),
            Some(&s),
        );
        assert!(awaiting_approval(&s).is_empty());
        assert_eq!(policy(Some(&s)).1.len(), 2);
    }

    #[test]
    fn a_live_member_is_not_failed_unless_the_edges_see_it_down() {
        let members = [
            member("s-0", "10.0.0.1", true),
            member("s-1", "10.0.0.2", true),
        ];
        let mut reports = HashMap::from([(
            "s-0".to_string(),
            FailoverReport {
                held: vec![calls("10.0.0.2", 2)],
                ..Default::default()
            },
        )]);
        let s = observe(FailoverMode::Manual, &members, &reports, None, None);
        assert!(s.failed.is_empty(), "replicas of a live member are normal");
        reports.insert("media-a".into(), edge(&[("10.0.0.2", "Down")]));
        let s = observe(FailoverMode::Manual, &members, &reports, None, None);
        assert_eq!(s.failed.len(), 1);
        assert!(!s.failed[0].approved);
        assert!(
            awaiting_approval(&observe(
                FailoverMode::Automatic,
                &members,
                &reports,
                Some("*"),
                None
            ))
            .is_empty(),
            "Automatic waits for nobody"
        );
    }

    #[test]
    fn takeovers_add_up_and_survive_a_reporters_restart() {
        let members = [member("s-0", "10.0.0.1", true)];
        let taken = |n| {
            HashMap::from([(
                "s-0".to_string(),
                FailoverReport {
                    taken_over: vec![calls("10.0.0.2", n)],
                    ..Default::default()
                },
            )])
        };
        let s = observe(FailoverMode::Automatic, &members, &taken(2), None, None);
        assert_eq!((s.performed.len(), s.calls_taken_over), (1, 2));
        let s = observe(FailoverMode::Automatic, &members, &taken(5), None, Some(&s));
        assert_eq!(s.performed[0].calls, 5);
        assert_eq!(s.calls_taken_over, 5);
        // s-0 restarted: it counts from zero, the status remembers.
        let s = observe(FailoverMode::Automatic, &members, &taken(1), None, Some(&s));
        assert_eq!(s.calls_taken_over, 5);
        assert_eq!(s.performed[0].taken_over_by, "s-0");
    }
}
