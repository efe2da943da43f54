//! The live configuration's contract, shared by the operator that makes it
//! and the pods that apply it: its one canonical form, the hash that names
//! a version's content, the delta between two versions, and the compressed
//! form on the wire.

use std::collections::BTreeMap;
use std::io::Read;

use md5::{Digest as _, Md5};
use prost::Message;
use sha2::Sha256;

use crate::grpc::{ClusterConfig, ConfigDelta, ConfigUser, RateConfig};

pub mod users;

/// The largest configuration a pod takes in, decompressed: far above
/// 100,000 users (about 6 MB), far below what would hurt a member.
pub const MAX_DECODED_BYTES: u64 = 256 << 20;
/// zstd level: fast at both ends, and HA1s do not compress further anyway.
const LEVEL: i32 = 3;

/// Why bytes from the wire are not a configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Not zstd, or truncated.
    #[error("not a zstd frame: {0}")]
    Compression(String),
    /// Larger than [`MAX_DECODED_BYTES`] once decompressed.
    #[error("more than {MAX_DECODED_BYTES} bytes once decompressed")]
    TooLarge,
    /// zstd, but not the message.
    #[error("not a {0}: {1}")]
    Decode(&'static str, String),
}

/// RFC 2617's HA1, `MD5(user:realm:password)` in hex: what a member needs
/// to check a digest response, and all the operator sends of a password.
pub fn ha1(user: &str, realm: &str, password: &str) -> String {
    hex(&Md5::digest(
        format!("{user}:{realm}:{password}").as_bytes(),
    ))
}

/// `config` in its canonical form: users sorted by name (the last of a
/// repeated name wins), rates by prefix. Only this form is hashed or sent.
pub fn canonical(mut config: ClusterConfig) -> ClusterConfig {
    let users: BTreeMap<String, ConfigUser> = config
        .users
        .drain(..)
        .map(|u| (u.name.clone(), u))
        .collect();
    config.users = users.into_values().collect();
    if let Some(b) = config.billing.as_mut() {
        b.rates.sort_by(|x, y| x.prefix.cmp(&y.prefix));
    }
    config
}

/// The content hash of a canonical configuration: hex SHA-256 of its
/// encoding.
pub fn hash(config: &ClusterConfig) -> String {
    hex(&Sha256::digest(config.encode_to_vec()))
}

/// What turns `from` into `to` (both canonical).
pub fn delta(from: &ClusterConfig, to: &ClusterConfig) -> ConfigDelta {
    let mut d = ConfigDelta::default();
    let (mut old, mut new) = (from.users.iter().peekable(), to.users.iter().peekable());
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(o), None) => {
                d.remove.push(o.name.clone());
                old.next();
            }
            (None, Some(n)) => {
                d.upsert.push((*n).clone());
                new.next();
            }
            (Some(o), Some(n)) => match o.name.cmp(&n.name) {
                std::cmp::Ordering::Less => {
                    d.remove.push(o.name.clone());
                    old.next();
                }
                std::cmp::Ordering::Greater => {
                    d.upsert.push((*n).clone());
                    new.next();
                }
                std::cmp::Ordering::Equal => {
                    if o != n {
                        d.upsert.push((*n).clone());
                    }
                    old.next();
                    new.next();
                }
            },
        }
    }
    if from.billing != to.billing {
        d.billing = Some(to.billing.clone().unwrap_or_default());
    }
    // The settings are a handful of scalars: all of them travel when one
    // changed. (A version without settings after one with them cannot be
    // said as a delta; its hash then fails and the pod asks for the whole.
    // The operator always sends them.)
    if from.settings != to.settings {
        d.settings = Some(to.settings.clone().unwrap_or_default());
    }
    d
}

/// `base` with `delta` applied, canonical. The caller compares the hash of
/// the result with the version's: a delta against the wrong base shows.
pub fn apply(base: &ClusterConfig, delta: &ConfigDelta) -> ClusterConfig {
    let mut users: BTreeMap<&str, &ConfigUser> =
        base.users.iter().map(|u| (u.name.as_str(), u)).collect();
    for name in &delta.remove {
        users.remove(name.as_str());
    }
    for u in &delta.upsert {
        users.insert(u.name.as_str(), u);
    }
    let mut billing = delta.billing.clone().or_else(|| base.billing.clone());
    if let Some(b) = billing.as_mut() {
        b.rates.sort_by(|x: &RateConfig, y| x.prefix.cmp(&y.prefix));
    }
    ClusterConfig {
        users: users.into_values().cloned().collect(),
        billing,
        settings: delta.settings.clone().or_else(|| base.settings.clone()),
    }
}

/// A message, encoded and compressed for the wire.
pub fn compress(message: &impl Message) -> Vec<u8> {
    let encoded = message.encode_to_vec();
    // Compressing into memory fails only when allocation does.
    zstd::bulk::compress(&encoded, LEVEL).unwrap_or_else(|_| Vec::new())
}

/// A message from the wire, refusing more than [`MAX_DECODED_BYTES`].
pub fn decompress<M: Message + Default>(bytes: &[u8], what: &'static str) -> Result<M, WireError> {
    let decoder =
        zstd::stream::Decoder::new(bytes).map_err(|e| WireError::Compression(e.to_string()))?;
    let mut out = Vec::new();
    decoder
        .take(MAX_DECODED_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| WireError::Compression(e.to_string()))?;
    if out.len() as u64 > MAX_DECODED_BYTES {
        return Err(WireError::TooLarge);
    }
    M::decode(out.as_slice()).map_err(|e| WireError::Decode(what, e.to_string()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests;
