//! Every replica's feed of its [`ConfigStore`]: whenever the VoiceCluster
//! cache or a Secret changes, each cluster whose status names a version
//! this replica does not serve yet is assembled from this replica's own
//! caches and served under that version, once its content has the hash
//! the leader wrote. A replica whose Secret cache lags serves the version
//! before until it catches up, never other content under a number.

use std::sync::Arc;

use kube::ResourceExt;

use super::assembler::Assembler;
use super::secrets::SecretCache;
use super::store::{ConfigStore, Version};
use crate::cache::Cache;

/// Feeds `store` for as long as the caches run.
pub async fn run(
    cache: Cache,
    secrets: SecretCache,
    assembler: Arc<Assembler>,
    store: Arc<ConfigStore>,
) {
    let mut clusters = cache.changes();
    let mut secret_news = secrets.changes();
    if !cache.wait_ready().await || !secrets.wait_ready().await {
        return;
    }
    loop {
        feed_once(&cache, &secrets, &assembler, &store);
        tokio::select! {
            changed = clusters.changed() => if changed.is_err() { return },
            news = secret_news.recv() => match news {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// One pass over the clusters.
pub fn feed_once(cache: &Cache, secrets: &SecretCache, assembler: &Assembler, store: &ConfigStore) {
    for vc in cache.clusters() {
        let key = (vc.namespace().unwrap_or_default(), vc.name_any());
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
        let assembled = assembler.get(&vc, secrets);
        let content = match assembled.as_ref() {
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
                tracing::debug!(namespace = %key.0, cluster = %key.1, version = wanted.version, "this replica has no content with the version's hash yet")
            }
        }
    }
}
