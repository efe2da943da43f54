//! Which Directory version the status carries for which lists, and how
//! many pods applied it. Pure but for [`DirectoryVersions`], the memory of
//! what this replica wrote.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use voicecluster_api::voicecluster::{
    CallLegProvider, DirectoryStatus, FailoverMode, SignalMember, VoiceClusterStatus,
};

/// What a Directory version carries: equal versions carry equal lists.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lists {
    /// The call-leg providers.
    pub providers: Vec<CallLegProvider>,
    /// The signal members.
    pub members: Vec<SignalMember>,
    /// The failover mode and the approved failed members.
    pub policy: (FailoverMode, Vec<String>),
}

impl Lists {
    /// What a written status carries.
    pub fn of_status(s: &VoiceClusterStatus) -> Self {
        Self {
            providers: s.call_leg_providers.clone(),
            members: s.signal_members.clone(),
            policy: crate::failover::policy(s.failover.as_ref()),
        }
    }
}

/// The Directory version for these lists: the previous one when nothing
/// changed, the next one otherwise, so equal versions mean equal lists.
pub fn next_directory_version(previous: Option<&VoiceClusterStatus>, lists: &Lists) -> i64 {
    let Some(prev) = previous else {
        return 1;
    };
    let version = prev.directory.as_ref().map_or(0, |d| d.version);
    if version > 0 && Lists::of_status(prev) == *lists {
        version
    } else {
        version + 1
    }
}

/// The Directory versions this replica wrote, per VoiceCluster, so a
/// reconcile that reads a status older than its own last write (the watch
/// cache lags the write) does not hand out a version twice: a pod that has
/// a version is never sent it again, so one number must never carry two
/// different lists.
#[derive(Default)]
pub struct DirectoryVersions {
    written: std::sync::Mutex<HashMap<(String, String), (i64, Lists)>>,
}

impl DirectoryVersions {
    /// The version for these lists of cluster `key`, given the status the
    /// reconcile read.
    pub fn next(
        &self,
        key: (String, String),
        previous: Option<&VoiceClusterStatus>,
        lists: &Lists,
    ) -> i64 {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let from_status = next_directory_version(previous, lists);
        let read = previous
            .and_then(|s| s.directory.as_ref())
            .map_or(0, |d| d.version);
        let version = match written.get(&key) {
            // What this replica wrote last is newer than what it read.
            Some((v, l)) if *v >= read => {
                if l == lists {
                    *v
                } else {
                    v + 1
                }
            }
            _ => from_status,
        };
        written.insert(key, (version, lists.clone()));
        version
    }
}

/// Whether a pod is meant to be running a Directory client now: scheduled,
/// not finished and not on its way out.
fn should_watch(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && matches!(phase, Some("Running"))
}

/// The Directory part of the status: the version, and how many of the
/// cluster's running pods acknowledged exactly that version.
pub fn directory_status<'a>(
    version: i64,
    pods: impl IntoIterator<Item = &'a Pod>,
    acked: &HashMap<String, i64>,
) -> DirectoryStatus {
    let (mut running, mut current) = (0i32, 0i32);
    for p in pods.into_iter().filter(|p| should_watch(p)) {
        running = running.saturating_add(1);
        let name = p.metadata.name.as_deref().unwrap_or_default();
        if acked.get(name) == Some(&version) {
            current = current.saturating_add(1);
        }
    }
    DirectoryStatus {
        version,
        pods: running,
        current_pods: current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixtures::pod;

    #[test]
    fn directory_version_moves_only_when_the_lists_change() {
        let first = next_directory_version(None, &Lists::default());
        assert_eq!(first, 1);
        let status = VoiceClusterStatus {
            directory: Some(DirectoryStatus {
                version: first,
                ..DirectoryStatus::default()
            }),
            ..VoiceClusterStatus::default()
        };
        assert_eq!(next_directory_version(Some(&status), &Lists::default()), 1);
        let member = SignalMember {
            pod: "s-0".into(),
            address: "10.0.0.1".into(),
            ready: true,
        };
        let with_member = Lists {
            members: vec![member],
            ..Lists::default()
        };
        assert_eq!(next_directory_version(Some(&status), &with_member), 2);
        let approved = Lists {
            policy: (FailoverMode::Manual, vec!["10.0.0.2".into()]),
            ..Lists::default()
        };
        assert_eq!(
            next_directory_version(Some(&status), &approved),
            2,
            "an approval is news for the members"
        );
    }

    #[test]
    fn current_pods_are_running_pods_that_acked_this_version() {
        let mut pending = pod("s-2", "n", false);
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let mut leaving = pod("s-3", "n", true);
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        let pods = [
            pod("s-0", "n", true),
            pod("s-1", "n", true),
            pending,
            leaving,
        ];
        let acked = HashMap::from([
            ("s-0".to_string(), 5),
            ("s-1".to_string(), 4),
            ("s-3".to_string(), 5),
        ]);
        let d = directory_status(5, &pods, &acked);
        assert_eq!((d.version, d.pods, d.current_pods), (5, 2, 1));
        // Once s-1 catches up, both running pods are current.
        let acked = HashMap::from([("s-0".to_string(), 5), ("s-1".to_string(), 5)]);
        assert_eq!(directory_status(5, &pods, &acked).current_pods, 2);
    }

    #[test]
    fn a_stale_status_never_gets_a_version_reused_for_other_lists() {
        let versions = DirectoryVersions::default();
        let key = ("voice".to_string(), "demo".to_string());
        let member = |ready| SignalMember {
            pod: "s-1".into(),
            address: "10.0.0.2".into(),
            ready,
        };
        let lists = |ready| Lists {
            members: vec![member(ready)],
            ..Lists::default()
        };
        let stale = VoiceClusterStatus {
            directory: Some(DirectoryStatus {
                version: 4,
                ..Default::default()
            }),
            signal_members: vec![member(false)],
            ..Default::default()
        };
        // The write of version 4 is not in the cache yet; the reconcile
        // reads version 3 with the member not ready, then the member turns
        // ready: a new version, not 4 again.
        let older = VoiceClusterStatus {
            directory: Some(DirectoryStatus {
                version: 3,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(versions.next(key.clone(), Some(&stale), &lists(false)), 4);
        assert_eq!(versions.next(key.clone(), Some(&older), &lists(true)), 5);
        assert_eq!(
            versions.next(key.clone(), Some(&older), &lists(true)),
            5,
            "same lists, same version"
        );
        // A newer status than anything this replica wrote (another leader)
        // is followed.
        let newer = VoiceClusterStatus {
            directory: Some(DirectoryStatus {
                version: 9,
                ..Default::default()
            }),
            signal_members: vec![member(true)],
            ..Default::default()
        };
        assert_eq!(versions.next(key, Some(&newer), &lists(true)), 9);
    }
}
