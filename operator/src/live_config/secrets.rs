//! The Secrets users files come from, as a watch cache every replica keeps,
//! and the news of which one changed. Only `Opaque` Secrets: users Secrets
//! are, and Helm's release Secrets (large, and many) stay out of memory.

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::broadcast;

/// The Secret cache and its change news.
#[derive(Clone)]
pub struct SecretCache {
    store: Store<Secret>,
    changed: broadcast::Sender<(String, String)>,
}

impl SecretCache {
    /// Starts watching `Opaque` Secrets in every namespace.
    pub fn start(client: Client) -> Self {
        let (store, writer) = reflector::store::<Secret>();
        let (changed, _) = broadcast::channel(256);
        let config = watcher::Config::default().fields("type=Opaque");
        let stream = watcher(Api::<Secret>::all(client), config)
            .default_backoff()
            .reflect(writer)
            .touched_objects();
        let tx = changed.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(secret) => {
                        let key = (secret.namespace().unwrap_or_default(), secret.name_any());
                        // Nobody listening yet is fine: they read the store.
                        let _ = tx.send(key);
                    }
                    Err(e) => tracing::warn!(error = %e, "Secret watch failed; retrying"),
                }
            }
        });
        Self { store, changed }
    }

    /// A cache the caller fills (tests).
    pub fn from_store(store: Store<Secret>) -> Self {
        Self {
            store,
            changed: broadcast::channel(16).0,
        }
    }

    /// The Secret `namespace/name`, if it exists.
    pub fn get(&self, namespace: &str, name: &str) -> Option<std::sync::Arc<Secret>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// Whether the first list has arrived.
    pub async fn wait_ready(&self) -> bool {
        self.store.wait_until_ready().await.is_ok()
    }

    /// News of each Secret that changed: (namespace, name).
    pub fn changes(&self) -> broadcast::Receiver<(String, String)> {
        self.changed.subscribe()
    }
}
