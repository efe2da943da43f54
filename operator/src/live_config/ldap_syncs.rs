//! Every replica's LDAP syncs: one task per LDAP user source, searching on
//! its interval, at once when the VoiceCluster's resync annotation or the
//! bind Secret changes, and when the feed finds the leader named content
//! this replica lacks. A failed search keeps the last good users.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::ResourceExt;
use tokio::sync::Notify;
use voicecluster_api::VoiceCluster;
use voicecluster_api::voicecluster::{LDAP_RESYNC_ANNOTATION, LdapSource};

use super::entries::Entries;
use super::ldap::{Connection, entries, search};
use super::now_unix_ms;
use super::objects::{Changed, News, SecretCache};

/// The Secret key of the bind DN.
pub const BIND_DN_KEY: &str = "bindDN";
/// The Secret key of the bind password.
pub const BIND_PASSWORD_KEY: &str = "password";
/// The Secret key of the CA certificates.
pub const CA_KEY: &str = "ca.crt";
/// The feed asks for a resync of one cluster at most this often.
const KICK_EVERY: Duration = Duration::from_secs(5);

/// A source: (namespace, VoiceCluster, source name).
pub type SourceKey = (String, String, String);

/// A search that came back good.
#[derive(Debug, PartialEq, Eq)]
pub struct GoodSearch {
    /// Its users and the entries it could not use.
    pub entries: Entries,
    /// Entries it returned.
    pub returned: usize,
    /// Increases each time the users differ from the search before.
    pub generation: u64,
    /// When it ended (Unix ms).
    pub at_unix_ms: i64,
}

/// What a source's searches gave so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncState {
    /// The last good search.
    pub good: Option<Arc<GoodSearch>>,
    /// Why the last search failed, if it did.
    pub error: Option<String>,
    /// When the last search ended, good or not (Unix ms).
    pub last_unix_ms: Option<i64>,
}

struct Sync {
    spec: LdapSource,
    resync: Option<String>,
    secret_versions: Vec<Option<String>>,
    wake: Arc<Notify>,
    task: tokio::task::AbortHandle,
    state: Arc<Mutex<SyncState>>,
    kicked: Option<Instant>,
}

impl Drop for Sync {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The syncs of every LDAP source of every cluster.
#[derive(Clone)]
pub struct LdapSyncs {
    syncs: Arc<Mutex<HashMap<SourceKey, Sync>>>,
    secrets: SecretCache,
    news: News,
}

impl LdapSyncs {
    /// Syncs that read bind Secrets from `secrets` and tell `news`.
    pub fn new(secrets: SecretCache, news: News) -> Self {
        Self {
            syncs: Arc::default(),
            secrets,
            news,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SourceKey, Sync>> {
        self.syncs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What the searches of a source gave; None when it has no sync.
    pub fn state(&self, key: &SourceKey) -> Option<SyncState> {
        self.lock().get(key).map(|s| {
            s.state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
    }

    /// Starts, restarts or wakes the syncs `vc`'s LDAP sources need.
    pub fn ensure(&self, vc: &VoiceCluster) {
        let ns = vc.namespace().unwrap_or_default();
        let name = vc.name_any();
        let resync = vc.annotations().get(LDAP_RESYNC_ANNOTATION).cloned();
        let mut syncs = self.lock();
        syncs.retain(|k, _| {
            k.0 != ns
                || k.1 != name
                || vc
                    .spec
                    .sip
                    .user_sources
                    .iter()
                    .any(|s| s.name == k.2 && s.ldap.is_some())
        });
        for source in &vc.spec.sip.user_sources {
            let Some(spec) = &source.ldap else { continue };
            let key = (ns.clone(), name.clone(), source.name.clone());
            let versions = self.secret_versions(&ns, spec);
            match syncs.get_mut(&key) {
                Some(s) if s.spec == *spec => {
                    if s.resync != resync || s.secret_versions != versions {
                        tracing::info!(namespace = %ns, cluster = %name, source = %source.name, "LDAP resync asked for");
                        s.resync.clone_from(&resync);
                        s.secret_versions = versions;
                        s.wake.notify_one();
                    }
                }
                _ => {
                    let s = self.start(key.clone(), spec.clone(), resync.clone(), versions);
                    syncs.insert(key, s);
                }
            }
        }
    }

    /// Stops the syncs of clusters not in `alive` (namespace, name).
    pub fn retain(&self, alive: &HashSet<(String, String)>) {
        self.lock()
            .retain(|k, _| alive.contains(&(k.0.clone(), k.1.clone())));
    }

    /// Resyncs the LDAP sources of a cluster soon, at most every
    /// [`KICK_EVERY`]: the leader named content this replica lacks.
    pub fn kick(&self, namespace: &str, cluster: &str) {
        for (k, s) in self.lock().iter_mut() {
            if k.0 == namespace
                && k.1 == cluster
                && s.kicked.is_none_or(|t| t.elapsed() >= KICK_EVERY)
            {
                s.kicked = Some(Instant::now());
                s.wake.notify_one();
            }
        }
    }

    fn secret_versions(&self, ns: &str, spec: &LdapSource) -> Vec<Option<String>> {
        [&spec.bind_secret, &spec.ca_secret]
            .into_iter()
            .map(|n| {
                n.as_ref()
                    .and_then(|n| self.secrets.get(ns, n))
                    .and_then(|s| s.resource_version())
            })
            .collect()
    }

    fn start(
        &self,
        key: SourceKey,
        spec: LdapSource,
        resync: Option<String>,
        secret_versions: Vec<Option<String>>,
    ) -> Sync {
        let wake = Arc::new(Notify::new());
        let state = Arc::new(Mutex::new(SyncState::default()));
        let task = tokio::spawn(run(
            key,
            spec.clone(),
            Arc::clone(&wake),
            Arc::clone(&state),
            (self.secrets.clone(), self.news.clone()),
        ));
        Sync {
            spec,
            resync,
            secret_versions,
            wake,
            task: task.abort_handle(),
            state,
            kicked: None,
        }
    }
}

/// The text of `key` in Secret `name`.
fn secret_text(secrets: &SecretCache, ns: &str, name: &str, key: &str) -> Result<String, String> {
    let secret = secrets
        .get(ns, name)
        .ok_or_else(|| format!("the Secret {name:?} does not exist"))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("the Secret {name:?} has no key {key:?}"))?;
    String::from_utf8(bytes.0.clone())
        .map_err(|_| format!("the Secret {name:?}: {key:?} is not UTF-8"))
}

/// One search with the credentials of now.
async fn search_once(
    ns: &str,
    spec: &LdapSource,
    secrets: &SecretCache,
) -> Result<(Entries, usize), String> {
    let bind = match &spec.bind_secret {
        None => None,
        Some(name) => Some((
            secret_text(secrets, ns, name, BIND_DN_KEY)?,
            secret_text(secrets, ns, name, BIND_PASSWORD_KEY)?,
        )),
    };
    let ca_pem = match &spec.ca_secret {
        None => None,
        Some(name) => Some(secret_text(secrets, ns, name, CA_KEY)?.into_bytes()),
    };
    let limit = Duration::from_secs(u64::try_from(spec.timeout_seconds.max(1)).unwrap_or(10));
    // The search runs in its own task: a panic in the LDAP client on a
    // malformed reply fails this search, not the sync.
    let owned = spec.clone();
    let found = tokio::spawn(async move {
        tokio::time::timeout(
            limit * 3,
            search(Connection {
                source: &owned,
                bind,
                ca_pem,
            }),
        )
        .await
    })
    .await
    .map_err(|e| format!("the LDAP client failed: {e}"))?
    .map_err(|_| format!("the search took longer than {}s", limit.as_secs() * 3))??;
    let returned = found.len();
    entries(&found, &spec.attributes, spec.invalid_entries).map(|e| (e, returned))
}

async fn run(
    key: SourceKey,
    spec: LdapSource,
    wake: Arc<Notify>,
    state: Arc<Mutex<SyncState>>,
    (secrets, news): (SecretCache, News),
) {
    if !secrets.wait_ready().await {
        return;
    }
    let interval =
        Duration::from_secs(u64::try_from(spec.sync_interval_seconds.max(1)).unwrap_or(300));
    loop {
        let started = Instant::now();
        let outcome = search_once(&key.0, &spec, &secrets).await;
        let now = now_unix_ms();
        {
            let mut s = state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            s.last_unix_ms = Some(now);
            match outcome {
                Ok((entries, returned)) => {
                    let generation = match &s.good {
                        Some(g) if g.entries.users == entries.users => g.generation,
                        Some(g) => g.generation + 1,
                        None => 1,
                    };
                    tracing::info!(namespace = %key.0, cluster = %key.1, source = %key.2, users = entries.users.len(), invalid = entries.invalid, took_ms = started.elapsed().as_millis(), "LDAP sync done");
                    s.good = Some(Arc::new(GoodSearch {
                        entries,
                        returned,
                        generation,
                        at_unix_ms: now,
                    }));
                    s.error = None;
                }
                Err(e) => {
                    tracing::warn!(namespace = %key.0, cluster = %key.1, source = %key.2, error = %e, "LDAP sync failed; keeping the users of the last good one");
                    s.error = Some(e);
                }
            }
        }
        news.send(Changed::Ldap(key.0.clone(), key.1.clone()));
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = wake.notified() => {}
        }
    }
}
