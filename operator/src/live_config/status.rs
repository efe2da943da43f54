//! `status.config`: which version the leader serves for what content, what
//! each signal and media pod did with it, and the rollback: a version a pod refuses
//! sends every pod back to the last version all of them applied, which is
//! served (under a new number) until the sources change again. Pure;
//! [`ConfigVersions`] remembers what this replica wrote, as the Directory's
//! versions do, so a reconcile that read a stale status never gives one
//! number two contents.

use std::collections::HashMap;
use std::sync::Mutex;

use voicecluster_api::grpc::ConfigResult;
use voicecluster_api::voicecluster::{ConfigStatus, ConfigVersionRef, PodConfig, RolledBackConfig};

use super::assembler::Assembled;

/// A pod's state when it uses the version.
pub const APPLIED: &str = "Applied";
/// A pod's state when it refused the version.
pub const FAILED: &str = "Failed";

/// The configuration status this replica wrote last, per cluster.
#[derive(Default)]
pub struct ConfigVersions {
    written: Mutex<HashMap<(String, String), ConfigStatus>>,
}

/// What one reconcile saw of a cluster's configuration.
pub struct Seen<'a> {
    /// The status the reconcile read.
    pub previous: Option<&'a ConfigStatus>,
    /// The content the sources give now.
    pub assembled: &'a Assembled,
    /// What each pod reported last.
    pub results: &'a HashMap<String, ConfigResult>,
    /// The cluster's pods that follow the configuration now: its signal
    /// and media pods.
    pub following: &'a [String],
    /// Now, in Unix ms.
    pub now_unix_ms: i64,
}

impl ConfigVersions {
    /// The status of the configuration of cluster `key`.
    pub fn status(&self, key: (String, String), seen: &Seen<'_>) -> ConfigStatus {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // What was decided last: the newer of what was read and written.
        let last = match (seen.previous, written.get(&key)) {
            (Some(p), Some(w)) => Some(if w.version >= p.version { w } else { p }.clone()),
            (p, w) => p.or(w).cloned(),
        };
        let mut s = last.unwrap_or_default();
        s.error = None;
        s.sources.clone_from(&seen.assembled.sources);
        match &seen.assembled.content {
            Err(e) => s.error = Some(e.to_string()),
            Ok((config, hash)) => {
                let users = i32::try_from(config.users.len()).unwrap_or(i32::MAX);
                // The content a pod refused stays refused until the
                // sources give other content.
                let refused = s.rolled_back.as_ref().is_some_and(|r| r.hash == *hash);
                if s.version == 0 || (s.hash != *hash && !refused) {
                    s.version += 1;
                    s.hash.clone_from(hash);
                    s.effective_unix_ms = seen.now_unix_ms;
                    s.users = users;
                    s.rolled_back = None;
                } else if s.hash == *hash && !refused {
                    // The sources came back to the good content.
                    s.rolled_back = None;
                }
            }
        }
        s.pods = pods(seen.results, seen.following);
        s.current_pods = on(&s.pods, s.version);
        if !s.pods.is_empty() && usize::try_from(s.current_pods).ok() == Some(s.pods.len()) {
            s.last_known_good = Some(ConfigVersionRef {
                version: s.version,
                hash: s.hash.clone(),
                effective_unix_ms: s.effective_unix_ms,
                users: s.users,
            });
        }
        roll_back_if_refused(&mut s, seen.now_unix_ms);
        let mut kept = s.clone();
        kept.pods.clear();
        written.insert(key, kept);
        s
    }
}

/// When a pod refused the version served, every pod goes back to the last
/// known good content, under the next number.
fn roll_back_if_refused(s: &mut ConfigStatus, now_unix_ms: i64) {
    let Some(refusal) = s
        .pods
        .iter()
        .find(|p| p.state == FAILED && p.version == s.version)
    else {
        return;
    };
    let Some(good) = s.last_known_good.clone().filter(|g| g.hash != s.hash) else {
        // Nothing earlier to return to: the pods keep what they have.
        return;
    };
    tracing::warn!(version = s.version, pod = %refusal.pod, reason = ?refusal.reason, back_to = good.version, "a pod refused a configuration version; rolling back");
    s.rolled_back = Some(RolledBackConfig {
        version: s.version,
        hash: s.hash.clone(),
        pod: refusal.pod.clone(),
        reason: refusal.reason.clone().unwrap_or_default(),
    });
    s.version += 1;
    s.hash = good.hash;
    s.effective_unix_ms = now_unix_ms;
    s.users = good.users;
    s.current_pods = on(&s.pods, s.version);
}

fn pods(results: &HashMap<String, ConfigResult>, following: &[String]) -> Vec<PodConfig> {
    let mut pods: Vec<PodConfig> = following
        .iter()
        .filter_map(|pod| {
            let r = results.get(pod)?;
            Some(PodConfig {
                pod: pod.clone(),
                version: r.version,
                state: if r.failed { FAILED } else { APPLIED }.to_string(),
                reason: r.failed.then(|| r.reason.clone()),
            })
        })
        .collect();
    pods.sort_by(|a, b| a.pod.cmp(&b.pod));
    pods
}

fn on(pods: &[PodConfig], version: i64) -> i32 {
    let n = pods
        .iter()
        .filter(|p| p.version == version && p.state == APPLIED)
        .count();
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use voicecluster_api::grpc::ClusterConfig;

    use super::super::sources::{Assembly, SourceError};
    use super::*;

    fn ok(hash: &str, users: usize) -> Assembled {
        let config = ClusterConfig {
            users: vec![Default::default(); users],
            billing: None,
            settings: None,
        };
        Arc::new(Assembly {
            content: Ok((Arc::new(config), hash.to_string())),
            sources: Vec::new(),
        })
    }

    fn key() -> (String, String) {
        ("voice".into(), "demo".into())
    }

    fn result(version: i64, failed: bool) -> ConfigResult {
        ConfigResult {
            version,
            hash: String::new(),
            failed,
            reason: if failed {
                "bad user".into()
            } else {
                String::new()
            },
        }
    }

    struct Cluster {
        v: ConfigVersions,
        status: Option<ConfigStatus>,
        results: HashMap<String, ConfigResult>,
        now: i64,
    }

    impl Cluster {
        fn new() -> Self {
            Self {
                v: ConfigVersions::default(),
                status: None,
                results: HashMap::new(),
                now: 1000,
            }
        }

        fn reconcile(&mut self, assembled: &Assembled) -> ConfigStatus {
            self.now += 1000;
            let pods = ["sig-0".to_string(), "sig-1".to_string()];
            let s = self.v.status(
                key(),
                &Seen {
                    previous: self.status.as_ref(),
                    assembled,
                    results: &self.results,
                    following: &pods,
                    now_unix_ms: self.now,
                },
            );
            self.status = Some(s.clone());
            s
        }

        fn report(&mut self, pod: &str, version: i64, failed: bool) {
            self.results.insert(pod.into(), result(version, failed));
        }
    }

    #[test]
    fn new_content_gets_the_next_version_and_the_same_content_keeps_it() {
        let mut c = Cluster::new();
        let first = c.reconcile(&ok("a", 2));
        assert_eq!(
            (first.version, first.effective_unix_ms, first.users),
            (1, 2000, 2)
        );
        let same = c.reconcile(&ok("a", 2));
        assert_eq!((same.version, same.effective_unix_ms), (1, 2000));
        let changed = c.reconcile(&ok("b", 3));
        assert_eq!((changed.version, changed.effective_unix_ms), (2, 4000));
        // A stale read (the first status again) does not hand out 3 twice.
        let v = &c.v;
        let pods: [String; 0] = [];
        let stale = v.status(
            key(),
            &Seen {
                previous: Some(&first),
                assembled: &ok("c", 3),
                results: &HashMap::new(),
                following: &pods,
                now_unix_ms: 9000,
            },
        );
        assert_eq!(stale.version, 3);
    }

    #[test]
    fn a_broken_source_keeps_the_good_version_and_says_why() {
        let mut c = Cluster::new();
        c.reconcile(&ok("a", 2));
        let broken: Assembled = Arc::new(Assembly {
            content: Err(SourceError::NoSecret("people".into())),
            sources: Vec::new(),
        });
        let s = c.reconcile(&broken);
        assert_eq!((s.version, s.hash.as_str(), s.users), (1, "a", 2));
        assert_eq!(
            s.error.as_deref(),
            Some("the users Secret \"people\" does not exist")
        );
    }

    #[test]
    fn a_refused_version_rolls_every_pod_back_until_the_sources_change() {
        let mut c = Cluster::new();
        c.reconcile(&ok("good", 2));
        c.report("sig-0", 1, false);
        c.report("sig-1", 1, false);
        let s = c.reconcile(&ok("good", 2));
        assert_eq!(s.current_pods, 2);
        assert_eq!(s.last_known_good.as_ref().map(|g| g.version), Some(1));

        // Version 2 fails on one pod: version 3 is the good content again.
        assert_eq!(c.reconcile(&ok("bad", 3)).version, 2);
        c.report("sig-0", 2, false);
        c.report("sig-1", 2, true);
        let s = c.reconcile(&ok("bad", 3));
        assert_eq!((s.version, s.hash.as_str(), s.users), (3, "good", 2));
        let rb = s.rolled_back.clone().unwrap();
        assert_eq!(
            (rb.version, rb.pod.as_str(), rb.reason.as_str()),
            (2, "sig-1", "bad user")
        );
        // The sources still give the refused content: it stays refused.
        c.report("sig-0", 3, false);
        c.report("sig-1", 3, false);
        let s = c.reconcile(&ok("bad", 3));
        assert_eq!((s.version, s.current_pods), (3, 2));
        assert!(s.rolled_back.is_some());
        // The sources back at the good content: the rollback is over.
        let back = c.reconcile(&ok("good", 2));
        assert!(back.rolled_back.is_none());
        assert_eq!(back.version, 3, "the good content is what version 3 serves");
        // New content: a new version, and the rollback is over.
        let s = c.reconcile(&ok("fixed", 3));
        assert_eq!((s.version, s.hash.as_str()), (4, "fixed"));
        assert!(s.rolled_back.is_none());
    }

    #[test]
    fn the_first_version_refused_has_nothing_to_return_to() {
        let mut c = Cluster::new();
        c.reconcile(&ok("bad", 1));
        c.report("sig-0", 1, true);
        let s = c.reconcile(&ok("bad", 1));
        assert_eq!(s.version, 1);
        assert!(s.rolled_back.is_none() && s.last_known_good.is_none());
        assert_eq!(s.pods[0].state, FAILED);
    }
}
