//! Every replica's feed of its [`ConfigStore`]: whenever the VoiceCluster
//! cache or a source changes, each cluster whose status names a version
//! this replica does not serve yet is assembled from this replica's own
//! caches and served under that version, once its content has the hash
//! the leader wrote. A replica whose caches lag serves the version before
//! until it catches up, never other content under a number; one whose LDAP
//! search lags asks for a new one. The feed also keeps each cluster's LDAP
//! syncs running on this replica.

use std::collections::HashSet;
use std::sync::Arc;

use kube::ResourceExt;

use super::Sources;
use super::store::{ConfigStore, Version};
use crate::cache::Cache;

/// Feeds `store` for as long as the caches run.
pub async fn run(cache: Cache, sources: Sources, store: Arc<ConfigStore>) {
    let mut clusters = cache.changes();
    let mut news = sources.news.subscribe();
    if !cache.wait_ready().await || !sources.wait_ready().await {
        return;
    }
    loop {
        feed_once(&cache, &sources, &store);
        tokio::select! {
            changed = clusters.changed() => if changed.is_err() { return },
            news = news.recv() => match news {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// One pass over the clusters.
pub fn feed_once(cache: &Cache, sources: &Sources, store: &ConfigStore) {
    let mut alive = HashSet::new();
    for vc in cache.clusters() {
        let key = (vc.namespace().unwrap_or_default(), vc.name_any());
        alive.insert(key.clone());
        sources.ldap.ensure(&vc);
        let Some(wanted) = vc.status.as_ref().and_then(|s| s.config.as_ref()) else {
            continue;
        };
        if wanted.version == 0 {
            continue;
        }
        let served = store.current(&key).map_or(0, |v| v.version);
        if served >= wanted.version {
            continue;
        }
        let assembled = sources.assemble(&vc);
        let content = match &assembled.content {
            Ok((config, hash)) if *hash == wanted.hash => Some(Arc::clone(config)),
            // A rollback: content served before, no longer what the
            // sources give.
            _ => store.content(&key, &wanted.hash),
        };
        match content {
            Some(config) => {
                store.publish(
                    &key,
                    Version::new(
                        wanted.version,
                        wanted.hash.clone(),
                        wanted.effective_unix_ms,
                        config,
                    ),
                );
            }
            None => {
                sources.ldap.kick(&key.0, &key.1);
                tracing::debug!(namespace = %key.0, cluster = %key.1, version = wanted.version, "this replica has no content with the version's hash yet");
            }
        }
    }
    sources.ldap.retain(&alive);
}
