//! `status.config`: which version the leader serves for what content, and
//! what each signal pod did with it. Pure; [`ConfigVersions`] remembers
//! what this replica wrote, as the Directory's versions do, so a reconcile
//! that read a stale status never gives one number two contents.

use std::collections::HashMap;
use std::sync::Mutex;

use voicecluster_api::grpc::ConfigResult;
use voicecluster_api::voicecluster::{ConfigStatus, PodConfig};

use super::assembler::Assembled;

/// A version as written: number, hash, effective time (Unix ms).
type Written = (i64, String, i64);

/// The version, hash and effective time this replica wrote last, per
/// cluster.
#[derive(Default)]
pub struct ConfigVersions {
    written: Mutex<HashMap<(String, String), Written>>,
}

impl ConfigVersions {
    /// The status of the configuration of cluster `key`: `previous` is what
    /// the reconcile read, `assembled` the content now, `results` what pods
    /// reported, `signal_pods` the cluster's signal pods now.
    pub fn status(
        &self,
        key: (String, String),
        previous: Option<&ConfigStatus>,
        assembled: &Assembled,
        results: &HashMap<String, ConfigResult>,
        signal_pods: &[String],
        now_unix_ms: i64,
    ) -> ConfigStatus {
        let mut written = self
            .written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let read = previous.map(|p| (p.version, p.hash.clone(), p.effective_unix_ms));
        // The newer of what was read and what this replica wrote.
        let last = match (read, written.get(&key).cloned()) {
            (Some(r), Some(w)) => Some(if w.0 >= r.0 { w } else { r }),
            (r, w) => r.or(w),
        };
        let (mut status, users) = match assembled.as_ref() {
            Ok((config, hash)) => {
                let (version, effective) = match &last {
                    Some((v, h, e)) if h == hash => (*v, *e),
                    Some((v, _, _)) => (v + 1, now_unix_ms),
                    None => (1, now_unix_ms),
                };
                written.insert(key, (version, hash.clone(), effective));
                let status = ConfigStatus {
                    version,
                    hash: hash.clone(),
                    effective_unix_ms: effective,
                    ..ConfigStatus::default()
                };
                (
                    status,
                    i32::try_from(config.users.len()).unwrap_or(i32::MAX),
                )
            }
            Err(e) => {
                // The pods keep the last good version.
                let (version, hash, effective) = last.unwrap_or_default();
                let status = ConfigStatus {
                    version,
                    hash,
                    effective_unix_ms: effective,
                    error: Some(e.to_string()),
                    ..ConfigStatus::default()
                };
                (status, previous.map_or(0, |p| p.users))
            }
        };
        status.users = users;
        let mut pods: Vec<PodConfig> = signal_pods
            .iter()
            .filter_map(|pod| {
                let r = results.get(pod)?;
                Some(PodConfig {
                    pod: pod.clone(),
                    version: r.version,
                    state: if r.failed { "Failed" } else { "Applied" }.to_string(),
                    reason: r.failed.then(|| r.reason.clone()),
                })
            })
            .collect();
        pods.sort_by(|a, b| a.pod.cmp(&b.pod));
        status.current_pods = i32::try_from(
            pods.iter()
                .filter(|p| p.version == status.version && p.state == "Applied")
                .count(),
        )
        .unwrap_or(i32::MAX);
        status.pods = pods;
        status
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use voicecluster_api::grpc::ClusterConfig;

    use super::super::sources::SourceError;
    use super::*;

    fn ok(hash: &str, users: usize) -> Assembled {
        let config = ClusterConfig {
            users: vec![Default::default(); users],
            billing: None,
        };
        Arc::new(Ok((Arc::new(config), hash.to_string())))
    }

    fn key() -> (String, String) {
        ("voice".into(), "demo".into())
    }

    #[test]
    fn new_content_gets_the_next_version_and_the_same_content_keeps_it() {
        let v = ConfigVersions::default();
        let none = HashMap::new();
        let first = v.status(key(), None, &ok("a", 2), &none, &[], 1000);
        assert_eq!(
            (first.version, first.effective_unix_ms, first.users),
            (1, 1000, 2)
        );
        let same = v.status(key(), Some(&first), &ok("a", 2), &none, &[], 2000);
        assert_eq!((same.version, same.effective_unix_ms), (1, 1000));
        let changed = v.status(key(), Some(&same), &ok("b", 3), &none, &[], 3000);
        assert_eq!((changed.version, changed.effective_unix_ms), (2, 3000));
        // A stale read (the first status again) does not hand out 2 twice.
        let stale = v.status(key(), Some(&first), &ok("c", 3), &none, &[], 4000);
        assert_eq!(stale.version, 3);
    }

    #[test]
    fn a_broken_source_keeps_the_good_version_and_says_why() {
        let v = ConfigVersions::default();
        let good = v.status(key(), None, &ok("a", 2), &HashMap::new(), &[], 1000);
        let broken: Assembled = Arc::new(Err(SourceError::NoSecret("people".into())));
        let s = v.status(key(), Some(&good), &broken, &HashMap::new(), &[], 2000);
        assert_eq!((s.version, s.hash.as_str(), s.users), (1, "a", 2));
        assert_eq!(
            s.error.as_deref(),
            Some("the users Secret \"people\" does not exist")
        );
    }

    #[test]
    fn each_signal_pod_shows_its_version_and_state() {
        let v = ConfigVersions::default();
        let results = HashMap::from([
            (
                "sig-0".to_string(),
                ConfigResult {
                    version: 1,
                    hash: "a".into(),
                    failed: false,
                    reason: String::new(),
                },
            ),
            (
                "sig-1".to_string(),
                ConfigResult {
                    version: 1,
                    hash: "a".into(),
                    failed: true,
                    reason: "bad rate".into(),
                },
            ),
            (
                "gone".to_string(),
                ConfigResult {
                    version: 1,
                    ..Default::default()
                },
            ),
        ]);
        let pods = ["sig-1".to_string(), "sig-0".to_string()];
        let s = v.status(key(), None, &ok("a", 1), &results, &pods, 1000);
        assert_eq!(s.current_pods, 1);
        assert_eq!(s.pods.len(), 2);
        assert_eq!(
            (s.pods[0].pod.as_str(), s.pods[0].state.as_str()),
            ("sig-0", "Applied")
        );
        assert_eq!(s.pods[1].reason.as_deref(), Some("bad rate"));
    }
}
