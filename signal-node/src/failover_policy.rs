//! Who may take a failed member's calls over, as the operator's Directory
//! says: in `Automatic` mode any buddy the edges send the dialogs to; in
//! `Manual` mode only once an administrator approved the failed member.
//! A member that hands its calls over on its way out needs no approval.

use std::collections::HashSet;
use std::net::IpAddr;

use voicecluster_api::grpc::DirectorySnapshot;

/// The failover policy in use on a member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailoverPolicy {
    /// Takeovers wait for approval.
    pub manual: bool,
    /// Failed members whose calls may be taken over (Manual mode).
    pub approved: HashSet<IpAddr>,
    /// The members the Directory lists; `None` without a Directory.
    pub listed: Option<HashSet<IpAddr>>,
    /// The ready ones, whose first in rendezvous order for a failed
    /// member takes its calls (as the edges route them).
    pub live: Vec<IpAddr>,
}

impl FailoverPolicy {
    /// The policy a Directory version carries.
    pub fn from_snapshot(s: &DirectorySnapshot) -> Self {
        let policy = s.failover.clone().unwrap_or_default();
        Self {
            manual: policy.manual,
            approved: policy
                .approved
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            listed: Some(
                s.signal_members
                    .iter()
                    .filter_map(|m| m.address.parse().ok())
                    .collect(),
            ),
            live: s
                .signal_members
                .iter()
                .filter(|m| m.ready)
                .filter_map(|m| m.address.parse().ok())
                .collect(),
        }
    }

    /// Whether a call of `owner` whose dialogs an edge sent here (because
    /// `owner` is down, or `handover`: it left on purpose) may be taken
    /// over now.
    pub fn allows(&self, owner: IpAddr, handover: bool) -> bool {
        handover || !self.manual || self.approved.contains(&owner)
    }

    /// Whether the calls of `owner` are to be taken over at once, without
    /// waiting for their next request: approved ones in Manual mode; in
    /// Automatic mode those of a member the Directory no longer lists (its
    /// pod is gone, so it cannot come back for them).
    pub fn take_at_once(&self, owner: IpAddr) -> bool {
        if self.manual {
            self.approved.contains(&owner)
        } else {
            self.listed.as_ref().is_some_and(|l| !l.contains(&owner))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voicecluster_api::grpc::{FailoverPolicy as Proto, SignalMember};

    fn snapshot(manual: bool, approved: &[&str], members: &[&str]) -> DirectorySnapshot {
        DirectorySnapshot {
            signal_members: members
                .iter()
                .map(|a| SignalMember {
                    address: (*a).into(),
                    ..Default::default()
                })
                .collect(),
            failover: Some(Proto {
                manual,
                approved: approved.iter().map(|a| (*a).into()).collect(),
            }),
            ..Default::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn automatic_takes_over_when_told_and_at_once_when_the_member_is_unlisted() {
        let p = FailoverPolicy::from_snapshot(&snapshot(false, &[], &["10.0.0.1", "10.0.0.2"]));
        assert!(p.allows(ip("10.0.0.1"), false));
        assert!(!p.take_at_once(ip("10.0.0.1")), "listed: it may come back");
        assert!(p.take_at_once(ip("10.0.0.9")));
        assert!(
            !FailoverPolicy::default().take_at_once(ip("10.0.0.9")),
            "no Directory, no list to miss it from"
        );
    }

    #[test]
    fn manual_waits_for_approval_except_for_a_hand_over() {
        let p =
            FailoverPolicy::from_snapshot(&snapshot(true, &["10.0.0.2", "junk"], &["10.0.0.1"]));
        assert!(!p.allows(ip("10.0.0.3"), false));
        assert!(!p.take_at_once(ip("10.0.0.3")), "unlisted is not approved");
        assert!(p.allows(ip("10.0.0.3"), true), "it left on purpose");
        assert!(p.allows(ip("10.0.0.2"), false));
        assert!(p.take_at_once(ip("10.0.0.2")));
    }
}
