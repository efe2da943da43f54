//! Live configuration: what signal and media pods apply while they run
//! (users, the rate table, the live settings of [`settings`]), versioned and hashed, served to them over the Directory's
//! `WatchConfig` stream as the whole version or the delta from the one they
//! have, zstd-compressed.
//!
//! Every replica assembles the content from its own caches ([`sources`],
//! [`assembler`], the Secrets of [`secrets`]); the leader alone numbers the
//! versions in `status.config` ([`status`]); each replica serves a version
//! once its own content has the hash the leader wrote ([`feed`], [`store`]).
//! Pods report what they did with each version on their Directory stream.

pub mod assembler;
pub mod condition;
pub mod feed;
pub mod secrets;
pub mod settings;
pub mod sources;
pub mod status;
pub mod store;

use std::sync::Arc;

/// Where every replica's configuration comes from: the Secret cache and
/// the assembler over it, shared by the reconciles and the feed.
#[derive(Clone)]
pub struct Sources {
    /// The Secrets users come from.
    pub secrets: secrets::SecretCache,
    /// Assembles each cluster's configuration once per change.
    pub assembler: Arc<assembler::Assembler>,
}
