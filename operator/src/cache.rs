//! The VoiceCluster watch cache every replica keeps: the Directory and the
//! live configuration's feed serve from it.

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;
use voicecluster_api::VoiceCluster;

/// The VoiceCluster cache the Directory serves from, and a signal that
/// ticks on every change to it.
#[derive(Clone)]
pub struct Cache {
    store: Store<VoiceCluster>,
    changes: watch::Receiver<u64>,
}

impl Cache {
    /// Starts watching VoiceClusters in the background.
    pub fn start(client: Client) -> Self {
        let (store, writer) = reflector::store::<VoiceCluster>();
        let (tx, changes) = watch::channel(0u64);
        let stream = watcher(Api::<VoiceCluster>::all(client), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .touched_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!(error = %e, "VoiceCluster watch failed; retrying");
                }
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        Self { store, changes }
    }

    /// Whether the first list has arrived.
    pub async fn wait_ready(&self) -> bool {
        self.store.wait_until_ready().await.is_ok()
    }

    /// Every VoiceCluster in the cache.
    pub fn clusters(&self) -> Vec<Arc<VoiceCluster>> {
        self.store.state()
    }

    /// Ticks on every change to the cache.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// The VoiceCluster `namespace/name`, if the cache holds it.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<VoiceCluster>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// A cache over `store`, ticking with `changes` (tests fill both).
    pub fn from_parts(store: Store<VoiceCluster>, changes: watch::Receiver<u64>) -> Self {
        Self { store, changes }
    }
}
