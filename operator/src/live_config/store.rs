//! The configuration versions one replica serves, per VoiceCluster: the
//! current one, a few before it (so a pod that has one of them gets only
//! what changed), and the compressed forms already made, so a thousand pods
//! on the same version cost one compression.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use voicecluster_api::config::{compress, delta, hash};
use voicecluster_api::grpc::{ClusterConfig, ConfigUpdate, config_update};
use voicecluster_telemetry::metrics::{Labels, inc, register_all};

/// Versions kept besides the current one. Each holds the whole user list,
/// so this bounds memory (about 10 MB per version at 100,000 users).
const HISTORY: usize = 4;

/// (namespace, cluster).
pub type ClusterKey = (String, String);

/// One version of one cluster's configuration.
#[derive(Debug)]
pub struct Version {
    /// The version number the leader wrote.
    pub version: i64,
    /// Hex SHA-256 of the content.
    pub hash: String,
    /// When the leader made it (Unix ms).
    pub effective_unix_ms: i64,
    /// The content, canonical.
    pub config: Arc<ClusterConfig>,
    /// Its compressed snapshot, made once when first asked for.
    snapshot: OnceLock<Arc<Vec<u8>>>,
    /// Its settings alone, made once when first asked for.
    settings_view: OnceLock<Arc<Version>>,
}

/// What part of each version a pod gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// All of it: a signal member.
    Whole,
    /// The settings alone, no users and no rates: a media pod, on a node
    /// that faces the internet, never holds a user's HA1.
    Settings,
}

impl Part {
    /// This part of `v`: a version of its own, with the same number.
    pub fn of(self, v: &Arc<Version>) -> Arc<Version> {
        match self {
            Self::Whole => Arc::clone(v),
            Self::Settings => v.settings_view(),
        }
    }
}

impl Version {
    /// A version of `config`.
    pub fn new(
        version: i64,
        hash: String,
        effective_unix_ms: i64,
        config: impl Into<Arc<ClusterConfig>>,
    ) -> Self {
        Self {
            version,
            hash,
            effective_unix_ms,
            config: config.into(),
            snapshot: OnceLock::new(),
            settings_view: OnceLock::new(),
        }
    }

    /// The version with its settings alone.
    fn settings_view(&self) -> Arc<Version> {
        Arc::clone(self.settings_view.get_or_init(|| {
            let config = ClusterConfig {
                users: Vec::new(),
                billing: None,
                settings: self.config.settings.clone(),
            };
            Arc::new(Version::new(
                self.version,
                hash(&config),
                self.effective_unix_ms,
                config,
            ))
        }))
    }

    fn snapshot(&self) -> Arc<Vec<u8>> {
        Arc::clone(
            self.snapshot
                .get_or_init(|| Arc::new(compress(self.config.as_ref()))),
        )
    }
}

/// Bytes of configuration this replica sent, by form.
#[derive(Clone, Default)]
pub struct StoreMetrics {
    /// `form` = `snapshot` or `delta`.
    pub bytes_sent: Family<Labels, Counter>,
    /// Updates sent, by form.
    pub updates_sent: Family<Labels, Counter>,
}

impl StoreMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        register_all(
            registry,
            &[
                (
                    "voicecluster_config_bytes_sent",
                    "Bytes of configuration updates sent to pods, by form (snapshot or delta)",
                    &m.bytes_sent,
                ),
                (
                    "voicecluster_config_updates_sent",
                    "Configuration updates sent to pods, by form (snapshot or delta)",
                    &m.updates_sent,
                ),
            ],
        );
        m
    }
}

struct Cluster {
    current: watch::Sender<Option<Arc<Version>>>,
    /// Older versions, newest last.
    history: VecDeque<Arc<Version>>,
    /// Compressed deltas made, by (from, to) version.
    deltas: HashMap<(i64, i64), Arc<Vec<u8>>>,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            current: watch::channel(None).0,
            history: VecDeque::new(),
            deltas: HashMap::new(),
        }
    }
}

/// The served versions of every cluster.
#[derive(Default)]
pub struct ConfigStore {
    clusters: Mutex<HashMap<ClusterKey, Cluster>>,
    metrics: StoreMetrics,
}

impl ConfigStore {
    /// An empty store counting into `metrics`.
    pub fn new(metrics: StoreMetrics) -> Arc<Self> {
        Arc::new(Self {
            clusters: Mutex::default(),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ClusterKey, Cluster>> {
        self.clusters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The version `key` serves now, if any.
    pub fn current(&self, key: &ClusterKey) -> Option<Arc<Version>> {
        self.lock().get(key)?.current.borrow().clone()
    }

    /// Serves `version` for `key` when it is newer than the current one;
    /// the current one goes to the history.
    pub fn publish(&self, key: &ClusterKey, version: Version) -> bool {
        let mut clusters = self.lock();
        let c = clusters.entry(key.clone()).or_default();
        let previous = c.current.borrow().clone();
        if previous
            .as_ref()
            .is_some_and(|p| p.version >= version.version)
        {
            return false;
        }
        if let Some(p) = previous {
            c.history.push_back(p);
            while c.history.len() > HISTORY {
                c.history.pop_front();
            }
            let kept: Vec<i64> = c.history.iter().map(|v| v.version).collect();
            c.deltas.retain(|(from, _), _| kept.contains(from));
        }
        tracing::info!(namespace = %key.0, cluster = %key.1, version = version.version, users = version.config.users.len(), "serving a configuration version");
        c.current.send_replace(Some(Arc::new(version)));
        true
    }

    /// The content with `hash` this replica served for `key`, now or
    /// before: what a rollback serves again.
    pub fn content(&self, key: &ClusterKey, hash: &str) -> Option<Arc<ClusterConfig>> {
        let clusters = self.lock();
        let c = clusters.get(key)?;
        let current = c.current.borrow().clone();
        current
            .iter()
            .chain(c.history.iter().rev())
            .find(|v| v.hash == hash)
            .map(|v| Arc::clone(&v.config))
    }

    /// Forgets a cluster that is gone.
    pub fn remove(&self, key: &ClusterKey) {
        self.lock().remove(key);
    }

    /// Follows the version `key` serves.
    pub fn follow(&self, key: &ClusterKey) -> watch::Receiver<Option<Arc<Version>>> {
        self.lock()
            .entry(key.clone())
            .or_default()
            .current
            .subscribe()
    }

    /// The update that brings a pod from `have` (version and hash of its
    /// `part`; `None` for nothing) to `part` of `to`: the delta when this
    /// replica still has `have`, the whole version otherwise.
    pub fn update(
        &self,
        key: &ClusterKey,
        have: Option<(i64, &str)>,
        to: &Arc<Version>,
        part: Part,
    ) -> ConfigUpdate {
        let base = have.and_then(|(v, h)| {
            let clusters = self.lock();
            let c = clusters.get(key)?;
            c.history
                .iter()
                .find(|old| old.version == v && part.of(old).hash == h)
                .cloned()
        });
        let to = &part.of(to);
        let (body, form) = match base {
            Some(base) => (
                config_update::Body::Delta(match part {
                    Part::Whole => self.delta_bytes(key, &base, to).to_vec(),
                    // A handful of scalars: not worth keeping.
                    Part::Settings => compress(&delta(&part.of(&base).config, &to.config)),
                }),
                "delta",
            ),
            None => (
                config_update::Body::Snapshot(to.snapshot().to_vec()),
                "snapshot",
            ),
        };
        let bytes = match &body {
            config_update::Body::Delta(b) | config_update::Body::Snapshot(b) => b.len(),
        };
        inc(&self.metrics.updates_sent, &[("form", form)]);
        self.metrics
            .bytes_sent
            .get_or_create(&vec![("form".to_string(), form.to_string())])
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
        ConfigUpdate {
            version: to.version,
            hash: to.hash.clone(),
            base_version: match body {
                config_update::Body::Delta(_) => have.map_or(0, |(v, _)| v),
                config_update::Body::Snapshot(_) => 0,
            },
            body: Some(body),
            effective_unix_ms: to.effective_unix_ms,
        }
    }

    fn delta_bytes(&self, key: &ClusterKey, from: &Version, to: &Version) -> Arc<Vec<u8>> {
        let pair = (from.version, to.version);
        if let Some(d) = self.lock().get(key).and_then(|c| c.deltas.get(&pair)) {
            return Arc::clone(d);
        }
        // Made outside the lock: a delta of many users takes a while.
        let bytes = Arc::new(compress(&delta(&from.config, &to.config)));
        if let Some(c) = self.lock().get_mut(key) {
            c.deltas.insert(pair, Arc::clone(&bytes));
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use voicecluster_api::config::{apply, decompress, hash};
    use voicecluster_api::grpc::{ConfigDelta, ConfigUser};

    use super::*;

    fn config(users: &[&str]) -> ClusterConfig {
        ClusterConfig {
            users: users
                .iter()
                .map(|u| ConfigUser {
                    name: (*u).to_string(),
                    ha1: format!("ha1-{u}"),
                    display_name: String::new(),
                })
                .collect(),
            billing: None,
            settings: None,
        }
    }

    fn version(v: i64, users: &[&str]) -> Version {
        let c = config(users);
        Version::new(v, hash(&c), 1000 * v, c)
    }

    fn key() -> ClusterKey {
        ("voice".into(), "demo".into())
    }

    #[test]
    fn a_settings_pod_gets_no_user_and_no_rate() {
        let store = ConfigStore::new(StoreMetrics::default());
        let with = |v: i64, level: &str| {
            let mut c = config(&["alice", "bob"]);
            c.billing = Some(Default::default());
            c.settings = Some(voicecluster_api::grpc::LiveSettings {
                log_level: level.into(),
                media_timeout_seconds: 30,
                leg_stats_seconds: 10,
            });
            Version::new(v, hash(&c), 1000 * v, c)
        };
        store.publish(&key(), with(1, "info"));
        let v1 = store.current(&key()).unwrap();
        store.publish(&key(), with(2, "debug"));
        let v2 = store.current(&key()).unwrap();
        let view = |v: &Arc<Version>| Part::Settings.of(v);
        let whole = store.update(&key(), None, &v2, Part::Settings);
        let Some(config_update::Body::Snapshot(bytes)) = &whole.body else {
            panic!("the whole: {whole:?}")
        };
        let got: ClusterConfig = decompress(bytes, "configuration").unwrap();
        assert!(got.users.is_empty() && got.billing.is_none(), "{got:?}");
        assert_eq!(got.settings.as_ref().unwrap().log_level, "debug");
        assert_eq!((whole.version, whole.hash.clone()), (2, hash(&got)));
        assert_eq!(whole.hash, view(&v2).hash);
        assert_ne!(whole.hash, v2.hash, "its own hash, not the version's");
        // From the settings of version 1: the delta, on the view's hash.
        let d = store.update(&key(), Some((1, &view(&v1).hash)), &v2, Part::Settings);
        let Some(config_update::Body::Delta(bytes)) = &d.body else {
            panic!("a delta: {d:?}")
        };
        let d: ConfigDelta = decompress(bytes, "delta").unwrap();
        assert!(d.upsert.is_empty() && d.remove.is_empty() && d.billing.is_none());
        assert_eq!(d.settings.unwrap().log_level, "debug");
        // The whole version's hash is not the settings': the whole again.
        let again = store.update(&key(), Some((1, &v1.hash)), &v2, Part::Settings);
        assert!(matches!(again.body, Some(config_update::Body::Snapshot(_))));
    }

    #[test]
    fn a_pod_on_a_known_version_gets_the_delta_else_the_whole() {
        let store = ConfigStore::new(StoreMetrics::default());
        let mut follow = store.follow(&key());
        assert!(store.publish(&key(), version(1, &["alice"])));
        let v1 = store.current(&key()).unwrap();
        assert!(store.publish(&key(), version(2, &["alice", "bob"])));
        assert!(!store.publish(&key(), version(2, &["other"])), "not newer");
        assert!(follow.has_changed().unwrap());
        let v2 = follow.borrow_and_update().clone().unwrap();

        let u = store.update(&key(), Some((1, &v1.hash)), &v2, Part::Whole);
        let Some(config_update::Body::Delta(bytes)) = &u.body else {
            panic!("a delta: {u:?}")
        };
        assert_eq!(u.base_version, 1);
        let d: ConfigDelta = decompress(bytes, "delta").unwrap();
        assert_eq!(hash(&apply(&v1.config, &d)), u.hash);

        // A version number it has, with other content (another history):
        // the whole version.
        let u = store.update(&key(), Some((1, "not-that")), &v2, Part::Whole);
        assert!(matches!(u.body, Some(config_update::Body::Snapshot(_))));
        let u = store.update(&key(), None, &v2, Part::Whole);
        let Some(config_update::Body::Snapshot(bytes)) = &u.body else {
            panic!("a snapshot")
        };
        let whole: ClusterConfig = decompress(bytes, "snapshot").unwrap();
        assert_eq!(whole, *v2.config);
        assert_eq!(u.effective_unix_ms, 2000);
    }

    #[test]
    fn only_a_few_versions_are_kept() {
        let store = ConfigStore::new(StoreMetrics::default());
        let mut hashes = Vec::new();
        for v in 1..=(HISTORY as i64 + 2) {
            let ver = version(v, &[&format!("u{v}")]);
            hashes.push(ver.hash.clone());
            store.publish(&key(), ver);
        }
        let now = store.current(&key()).unwrap();
        let oldest = store.update(&key(), Some((1, &hashes[0])), &now, Part::Whole);
        assert!(matches!(
            oldest.body,
            Some(config_update::Body::Snapshot(_))
        ));
        let recent = store.update(&key(), Some((2, &hashes[1])), &now, Part::Whole);
        assert!(matches!(recent.body, Some(config_update::Body::Delta(_))));
        // What a rollback serves again is found by its hash.
        assert_eq!(
            store.content(&key(), &hashes[2]).unwrap().users[0].name,
            "u3"
        );
        assert!(store.content(&key(), &hashes[0]).is_none());
    }
}
