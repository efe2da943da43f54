//! How a signal or media pod follows its live configuration: it asks the Directory's
//! `WatchConfig` for the version it has, gets the whole of a newer one or
//! the delta from its own, rebuilds and checks it against the version's
//! hash, and offers each checked version to the pod. What the pod did with
//! it goes back on the Directory stream (see [`crate::follow_with_config`]).
//!
//! A delta that does not rebuild to the hash (another replica's history,
//! a lost update) is never offered: the client asks again for the whole.

use std::sync::Arc;

use futures::StreamExt;
use prost::Message;
use tokio::sync::watch;
use voicecluster_api::config::{apply, decompress, hash};
use voicecluster_api::grpc::directory_client::DirectoryClient;
use voicecluster_api::grpc::{
    ClusterConfig, ConfigDelta, ConfigResult, ConfigSubscribe, ConfigUpdate, config_update,
};

use crate::{Backoff, BoxError, Target};

/// A checked configuration version, ready to apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Offered {
    /// The version number.
    pub version: i64,
    /// Hex SHA-256 of the content; checked.
    pub hash: String,
    /// Calls answered from then on (Unix ms) are priced with its rates.
    pub effective_unix_ms: i64,
    /// The content.
    pub config: Arc<ClusterConfig>,
    /// When it came as a delta: what changed from the version offered
    /// before it, so a pod that applied that one can apply only this.
    pub delta: Option<Arc<OfferedDelta>>,
}

/// What turned the version offered before into this one.
#[derive(Clone, Debug, PartialEq)]
pub struct OfferedDelta {
    /// The version it applies to ...
    pub base_version: i64,
    /// ... and that version's hash.
    pub base_hash: String,
    /// The users added, changed and removed, and the whole rates and
    /// settings when they changed.
    pub delta: ConfigDelta,
}

impl OfferedDelta {
    /// Whether this delta applies to the version `applied` (number, hash).
    pub fn applies_to(&self, applied: (i64, &str)) -> bool {
        (self.base_version, self.base_hash.as_str()) == applied
    }
}

impl Offered {
    /// What to tell the operator about this version: applied, or
    /// refused with the reason.
    pub fn result(&self, outcome: &Result<(), String>) -> ConfigResult {
        ConfigResult {
            version: self.version,
            hash: self.hash.clone(),
            failed: outcome.is_err(),
            reason: outcome.as_ref().err().cloned().unwrap_or_default(),
        }
    }

    /// The version as bytes for a file: what a restarted pod starts on.
    pub fn to_bytes(&self) -> Vec<u8> {
        ConfigUpdate {
            version: self.version,
            hash: self.hash.clone(),
            body: Some(config_update::Body::Snapshot(
                voicecluster_api::config::compress(self.config.as_ref()),
            )),
            base_version: 0,
            effective_unix_ms: self.effective_unix_ms,
        }
        .encode_to_vec()
    }

    /// A version back from [`Self::to_bytes`], checked against its hash.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let update = ConfigUpdate::decode(bytes).map_err(|e| e.to_string())?;
        Self::rebuild(None, update)
    }

    /// The version `update` describes, on top of `base` for a delta,
    /// checked against its hash: what [`follow_config`] does with each
    /// update (public for the benchmarks, which time it alone).
    pub fn rebuild(base: Option<&Offered>, update: ConfigUpdate) -> Result<Self, String> {
        let (config, delta) = match update.body {
            Some(config_update::Body::Snapshot(bytes)) => (
                decompress::<ClusterConfig>(&bytes, "configuration").map_err(|e| e.to_string())?,
                None,
            ),
            Some(config_update::Body::Delta(bytes)) => {
                let base = base
                    .filter(|b| b.version == update.base_version)
                    .ok_or_else(|| {
                        format!(
                            "a delta from version {} to a pod that has {:?}",
                            update.base_version,
                            base.map(|b| b.version)
                        )
                    })?;
                let d: ConfigDelta = decompress(&bytes, "delta").map_err(|e| e.to_string())?;
                let config = apply(&base.config, &d);
                let delta = OfferedDelta {
                    base_version: base.version,
                    base_hash: base.hash.clone(),
                    delta: d,
                };
                (config, Some(Arc::new(delta)))
            }
            None => return Err("an update with no content".to_string()),
        };
        let got = hash(&config);
        if got != update.hash {
            return Err(format!(
                "version {} rebuilt to hash {got}, not {}",
                update.version, update.hash
            ));
        }
        Ok(Self {
            version: update.version,
            hash: update.hash,
            effective_unix_ms: update.effective_unix_ms,
            config: Arc::new(config),
            delta,
        })
    }
}

/// Follows the configuration for the life of the process, starting from
/// `have` (the version the pod keeps on its volume). The view holds the
/// newest checked version; `have` is in it from the start.
pub fn follow_config(
    target: Target,
    have: Option<Offered>,
) -> watch::Receiver<Option<Arc<Offered>>> {
    let (tx, rx) = watch::channel(have.map(Arc::new));
    tokio::spawn(keep_following(target, tx, false));
    rx
}

/// As [`follow_config`], for a pod that uses only the settings (a media
/// pod): its versions carry no users and no rates, so it never holds a
/// user's HA1; the numbers are the cluster's.
pub fn follow_settings(target: Target) -> watch::Receiver<Option<Arc<Offered>>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(keep_following(target, tx, true));
    rx
}

async fn keep_following(
    target: Target,
    offered: watch::Sender<Option<Arc<Offered>>>,
    settings_only: bool,
) {
    let mut backoff = Backoff::new();
    // After a delta that did not check, ask for the whole.
    let mut whole = false;
    loop {
        let mut got_any = false;
        match session(&target, &offered, (settings_only, &mut whole), &mut got_any).await {
            Ok(()) => {
                tracing::info!(url = %target.url, "the configuration stream ended; reconnecting")
            }
            Err(e) => {
                tracing::warn!(url = %target.url, error = %e, "configuration stream failed; reconnecting")
            }
        }
        if offered.is_closed() {
            return;
        }
        backoff.pause(got_any).await;
    }
}

async fn session(
    target: &Target,
    offered: &watch::Sender<Option<Arc<Offered>>>,
    (settings_only, whole): (bool, &mut bool),
    got_any: &mut bool,
) -> Result<(), BoxError> {
    let channel = crate::connect(&target.url).await?;
    let have = offered.borrow().clone().filter(|_| !*whole);
    let request = ConfigSubscribe {
        namespace: target.namespace.clone(),
        cluster: target.cluster.clone(),
        pod: target.pod.clone(),
        version: have.as_ref().map_or(0, |h| h.version),
        hash: have.as_ref().map(|h| h.hash.clone()).unwrap_or_default(),
        settings_only,
    };
    let mut updates = DirectoryClient::new(channel)
        .max_decoding_message_size(
            usize::try_from(voicecluster_api::config::MAX_DECODED_BYTES).unwrap_or(usize::MAX),
        )
        .watch_config(request)
        .await?
        .into_inner();
    while let Some(update) = updates.next().await.transpose()? {
        *got_any = true;
        let version = update.version;
        let base = offered.borrow().clone();
        match Offered::rebuild(base.as_deref(), update) {
            Ok(next) => {
                *whole = false;
                tracing::info!(
                    version,
                    users = next.config.users.len(),
                    "configuration version received"
                );
                offered.send_replace(Some(Arc::new(next)));
            }
            Err(e) => {
                tracing::warn!(version, error = %e, "a configuration update did not check; asking for the whole version");
                *whole = true;
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use voicecluster_api::config::{compress, delta};
    use voicecluster_api::grpc::ConfigUser;

    use super::*;

    fn config(users: &[&str]) -> ClusterConfig {
        ClusterConfig {
            users: users
                .iter()
                .map(|u| ConfigUser {
                    name: (*u).to_string(),
                    ha1: format!("{u:0>32}"),
                    display_name: String::new(),
                })
                .collect(),
            billing: None,
            settings: None,
        }
    }

    fn snapshot(version: i64, c: &ClusterConfig) -> ConfigUpdate {
        ConfigUpdate {
            version,
            hash: hash(c),
            body: Some(config_update::Body::Snapshot(compress(c))),
            base_version: 0,
            effective_unix_ms: version * 10,
        }
    }

    #[test]
    fn a_delta_rebuilds_on_its_base_and_is_checked() {
        let (a, b) = (config(&["alice"]), config(&["alice", "bob"]));
        let v1 = Offered::rebuild(None, snapshot(1, &a)).unwrap();
        let d = ConfigUpdate {
            version: 2,
            hash: hash(&b),
            body: Some(config_update::Body::Delta(compress(&delta(&a, &b)))),
            base_version: 1,
            effective_unix_ms: 20,
        };
        let v2 = Offered::rebuild(Some(&v1), d.clone()).unwrap();
        assert_eq!(*v2.config, b);
        assert_eq!(v2.effective_unix_ms, 20);
        // It says what changed, and on top of what.
        let said = v2.delta.as_deref().unwrap();
        assert!(said.applies_to((1, &v1.hash)) && !said.applies_to((1, &v2.hash)));
        assert_eq!(said.delta.upsert.len(), 1);
        assert_eq!(said.delta.upsert[0].name, "bob");
        assert!(v1.delta.is_none(), "a snapshot is no delta");
        // On another base, or with a hash that does not match: refused.
        assert!(
            Offered::rebuild(Some(&v2), d.clone())
                .unwrap_err()
                .contains("delta from version 1")
        );
        let lying = ConfigUpdate {
            hash: "00".repeat(32),
            ..d
        };
        assert!(
            Offered::rebuild(Some(&v1), lying)
                .unwrap_err()
                .contains("rebuilt to hash")
        );
    }

    #[test]
    fn a_kept_version_reads_back_only_when_whole() {
        let v = Offered::rebuild(None, snapshot(3, &config(&["carol"]))).unwrap();
        let bytes = v.to_bytes();
        assert_eq!(Offered::from_bytes(&bytes).unwrap(), v);
        assert!(Offered::from_bytes(&bytes[..bytes.len() / 2]).is_err());
    }
}
