//! Live configuration: what signal and media pods apply while they run
//! (users, the rate table, the live settings of [`settings`]), versioned and hashed, served to them over the Directory's
//! `WatchConfig` stream as the whole version or the delta from the one they
//! have, zstd-compressed.
//!
//! Every replica assembles the content from its own caches ([`sources`],
//! [`assembler`]; the Secrets and ConfigMaps of [`objects`], the LDAP
//! searches of [`ldap_syncs`]); the leader alone numbers the versions in
//! `status.config` ([`status`]); each replica serves a version once its own
//! content has the hash the leader wrote ([`feed`], [`store`]). Pods report
//! what they did with each version on their Directory stream.

pub mod assembler;
pub mod condition;
pub mod csv_users;
pub mod entries;
pub mod feed;
pub mod ldap;
pub mod ldap_syncs;
pub mod objects;
pub mod settings;
pub mod sources;
pub mod status;
pub mod store;

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Client;

/// Now, in Unix ms: what versions and LDAP syncs are stamped with.
pub fn now_unix_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
    )
    .unwrap_or(i64::MAX)
}

/// Where every replica's configuration comes from: the caches, the LDAP
/// syncs and the assembler over them, shared by the reconciles and the
/// feed.
#[derive(Clone)]
pub struct Sources {
    /// The Secrets users files, CSV files and bind passwords come from.
    pub secrets: objects::SecretCache,
    /// The ConfigMaps CSV files come from.
    pub config_maps: objects::ConfigMapCache,
    /// The LDAP sources' searches.
    pub ldap: ldap_syncs::LdapSyncs,
    /// What changed among all of these.
    pub news: objects::News,
    /// Assembles each cluster's configuration once per change.
    pub assembler: Arc<assembler::Assembler>,
}

impl Sources {
    /// Starts the caches (the LDAP syncs start as the feed meets clusters).
    pub fn start(client: &Client) -> Self {
        let news = objects::News::default();
        let secrets = objects::SecretCache::start_opaque(client.clone(), news.clone());
        Self {
            config_maps: objects::ConfigMapCache::start_all(client.clone(), news.clone()),
            ldap: ldap_syncs::LdapSyncs::new(secrets.clone(), news.clone()),
            secrets,
            news,
            assembler: Arc::default(),
        }
    }

    /// Whether the caches have their first lists.
    pub async fn wait_ready(&self) -> bool {
        self.secrets.wait_ready().await && self.config_maps.wait_ready().await
    }

    /// The configuration of `vc` now.
    pub fn assemble(&self, vc: &voicecluster_api::VoiceCluster) -> assembler::Assembled {
        self.assembler.get(vc, self)
    }
}

impl sources::Lookup for Sources {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.secrets.get(namespace, name)
    }
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.config_maps.get(namespace, name)
    }
    fn ldap(&self, key: &ldap_syncs::SourceKey) -> Option<ldap_syncs::SyncState> {
        self.ldap.state(key)
    }
}
