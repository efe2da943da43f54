//! The Secrets and ConfigMaps users come from, as watch caches every
//! replica keeps, and one stream of news of what changed — theirs and the
//! LDAP syncs'. Only `Opaque` Secrets: users Secrets are, and Helm's release
//! Secrets (large, and many) stay out of memory.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

/// Something a configuration may be made from changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// The Secret (namespace, name).
    Secret(String, String),
    /// The ConfigMap (namespace, name).
    ConfigMap(String, String),
    /// An LDAP sync of the VoiceCluster (namespace, name) ended.
    Ldap(String, String),
}

/// Where the news of [`Changed`] goes; listeners subscribe.
#[derive(Clone)]
pub struct News(broadcast::Sender<Changed>);

impl Default for News {
    fn default() -> Self {
        Self(broadcast::channel(1024).0)
    }
}

impl News {
    /// Tells the listeners; nobody listening yet is fine (they read the
    /// caches when they start).
    pub fn send(&self, changed: Changed) {
        let _ = self.0.send(changed);
    }

    /// The news from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Changed> {
        self.0.subscribe()
    }
}

/// A watch cache of one kind of object.
pub struct ObjectCache<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
}

impl<K: Resource<DynamicType = ()> + 'static> Clone for ObjectCache<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
        }
    }
}

/// The Secrets users and bind passwords come from.
pub type SecretCache = ObjectCache<Secret>;
/// The ConfigMaps CSV files come from.
pub type ConfigMapCache = ObjectCache<ConfigMap>;

impl<K> ObjectCache<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
{
    fn start(
        client: Client,
        config: watcher::Config,
        news: News,
        changed: fn(String, String) -> Changed,
    ) -> Self {
        let (store, writer) = reflector::store::<K>();
        let stream = watcher(Api::<K>::all(client), config)
            .default_backoff()
            .reflect(writer)
            .touched_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(o) => news.send(changed(o.namespace().unwrap_or_default(), o.name_any())),
                    Err(e) => {
                        tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                    }
                }
            }
        });
        Self { store }
    }

    /// A cache the caller fills (tests).
    pub fn from_store(store: Store<K>) -> Self {
        Self { store }
    }

    /// The object `namespace/name`, if it exists.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    /// Whether the first list has arrived.
    pub async fn wait_ready(&self) -> bool {
        self.store.wait_until_ready().await.is_ok()
    }
}

impl SecretCache {
    /// Starts watching `Opaque` Secrets in every namespace.
    pub fn start_opaque(client: Client, news: News) -> Self {
        let config = watcher::Config::default().fields("type=Opaque");
        Self::start(client, config, news, Changed::Secret)
    }
}

impl ConfigMapCache {
    /// Starts watching ConfigMaps in every namespace.
    pub fn start_all(client: Client, news: News) -> Self {
        Self::start(client, watcher::Config::default(), news, Changed::ConfigMap)
    }
}
