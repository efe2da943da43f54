//! A VoiceCluster's live configuration from its sources: the users Secret
//! (`spec.sip.usersSecret`, key `users`) and the spec's rate table. Pure:
//! every replica assembles the same content from the same objects, so the
//! hash the leader writes names what each replica serves.

use k8s_openapi::api::core::v1::Secret;
use voicecluster_api::VoiceCluster;
use voicecluster_api::config::users::parse_users;
use voicecluster_api::config::{canonical, ha1};
use voicecluster_api::grpc::{BillingConfig, ClusterConfig, ConfigUser, RateConfig};

/// The key of the users file in the users Secret.
pub const USERS_KEY: &str = "users";

/// Why a configuration cannot be assembled; the pods keep the version
/// they have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The named Secret does not exist (yet).
    #[error("the users Secret {0:?} does not exist")]
    NoSecret(String),
    /// The Secret has no `users` key.
    #[error("the users Secret {0:?} has no key {USERS_KEY:?}")]
    NoUsersKey(String),
    /// The users file is not UTF-8.
    #[error("the users Secret {0:?}: {USERS_KEY:?} is not UTF-8 text")]
    NotText(String),
    /// A line of the users file is wrong.
    #[error("the users Secret {0:?}: {1}")]
    BadLine(String, String),
}

/// The name of the users Secret `vc` names, if any.
pub fn users_secret(vc: &VoiceCluster) -> Option<&str> {
    vc.spec
        .sip
        .users_secret
        .as_deref()
        .filter(|s| !s.is_empty())
}

/// The configuration of `vc`, with `secret` the Secret it names (None when
/// it names one that is not there).
pub fn assemble(vc: &VoiceCluster, secret: Option<&Secret>) -> Result<ClusterConfig, SourceError> {
    let realm = &vc.spec.sip.domain;
    let users = match users_secret(vc) {
        None => Vec::new(),
        Some(name) => {
            let secret = secret.ok_or_else(|| SourceError::NoSecret(name.to_string()))?;
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(USERS_KEY))
                .ok_or_else(|| SourceError::NoUsersKey(name.to_string()))?;
            let text = std::str::from_utf8(&bytes.0)
                .map_err(|_| SourceError::NotText(name.to_string()))?;
            let parsed = parse_users(text)
                .map_err(|e| SourceError::BadLine(name.to_string(), e.to_string()))?;
            parsed
                .into_iter()
                .map(|(user, password)| ConfigUser {
                    ha1: ha1(&user, realm, &password),
                    name: user,
                })
                .collect()
        }
    };
    let billing = &vc.spec.billing;
    Ok(canonical(ClusterConfig {
        users,
        billing: Some(BillingConfig {
            currency: billing.currency.clone(),
            rates: billing
                .rates
                .iter()
                .map(|r| RateConfig {
                    prefix: r.prefix.clone(),
                    price_per_minute: r.price_per_minute.clone(),
                    increment_seconds: r.increment_seconds,
                })
                .collect(),
        }),
        settings: Some(super::settings::live_settings(vc)),
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use voicecluster_api::config::hash;

    use super::*;
    use crate::fixtures::vc;

    fn secret(users: &str) -> Secret {
        Secret {
            data: Some(BTreeMap::from([(
                USERS_KEY.to_string(),
                ByteString(users.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        }
    }

    fn spec(rate: &str) -> VoiceCluster {
        vc(serde_json::json!({
            "sip": {"domain": "voice.test", "usersSecret": "people"},
            "billing": {"rates": [{"prefix": "", "pricePerMinute": rate}]}
        }))
    }

    #[test]
    fn users_and_rates_come_from_the_secret_and_the_spec_as_ha1s() {
        let c = assemble(&spec("0.05"), Some(&secret("bob:b\nalice:a\n"))).unwrap();
        let names: Vec<&str> = c.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(c.users[0].ha1, ha1("alice", "voice.test", "a"));
        let billing = c.billing.as_ref().unwrap();
        assert_eq!(billing.rates[0].price_per_minute, "0.05");
        assert_eq!(billing.currency, "EUR");
        // The same sources give the same hash on any replica; a price
        // change gives another.
        let again = assemble(&spec("0.05"), Some(&secret("alice:a\nbob:b\n"))).unwrap();
        assert_eq!(hash(&c), hash(&again));
        let repriced = assemble(&spec("0.07"), Some(&secret("alice:a\nbob:b\n"))).unwrap();
        assert_ne!(hash(&c), hash(&repriced));
    }

    #[test]
    fn a_missing_or_broken_source_says_what_is_wrong() {
        let vc = spec("0.05");
        assert_eq!(
            assemble(&vc, None),
            Err(SourceError::NoSecret("people".into()))
        );
        assert_eq!(
            assemble(&vc, Some(&Secret::default())),
            Err(SourceError::NoUsersKey("people".into()))
        );
        let err = assemble(&vc, Some(&secret("alice:a\nbob\n"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the users Secret \"people\": line 2: expected user:password"
        );
        // Without a users Secret there are no users, and that is no error.
        let open = vc_without_secret();
        assert!(assemble(&open, None).unwrap().users.is_empty());
    }

    fn vc_without_secret() -> VoiceCluster {
        vc(serde_json::json!({"sip": {"domain": "voice.test"}}))
    }
}
