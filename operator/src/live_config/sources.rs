//! A VoiceCluster's live configuration from its sources: the users Secret
//! (`spec.sip.usersSecret`, key `users`), then the user sources of
//! `spec.sip.userSources` in order (CSV files, LDAP searches), and the
//! spec's rate table. The first source naming a user wins. Pure: every
//! replica assembles the same content from the same objects, so the hash
//! the leader writes names what each replica serves.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt;
use voicecluster_api::VoiceCluster;
use voicecluster_api::config::users::parse_users;
use voicecluster_api::config::{canonical, ha1};
use voicecluster_api::grpc::{BillingConfig, ClusterConfig, ConfigUser, RateConfig};
use voicecluster_api::voicecluster::{
    CsvObjectKind, CsvSource, InvalidEntries, UserSource, UserSourceStatus,
};

use super::csv_users;
use super::entries::Entries;
use super::ldap_syncs::{SourceKey, SyncState};
use super::objects::Changed;

/// The key of the users file in the users Secret.
pub const USERS_KEY: &str = "users";
/// The name of the users Secret's entry in `status.config.sources`.
pub const USERS_SECRET_SOURCE: &str = "usersSecret";

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
    /// A source of `spec.sip.userSources` gives no users to use.
    #[error("user source {0:?}: {1}")]
    UserSource(String, String),
}

/// What the assembly reads besides the VoiceCluster: the caches of this
/// replica, or what a test hands it.
pub trait Lookup {
    /// The Secret `namespace/name`.
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>>;
    /// The ConfigMap `namespace/name`.
    fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>>;
    /// What the searches of an LDAP source gave.
    fn ldap(&self, key: &SourceKey) -> Option<SyncState>;
}

/// A configuration with its hash, or why there is none; and what each
/// user source gave.
#[derive(Debug)]
pub struct Assembly {
    /// The content and its hash.
    pub content: Result<(Arc<ClusterConfig>, String), SourceError>,
    /// Each user source's part, in precedence order.
    pub sources: Vec<UserSourceStatus>,
}

/// The name of the users Secret `vc` names, if any.
pub fn users_secret(vc: &VoiceCluster) -> Option<&str> {
    vc.spec
        .sip
        .users_secret
        .as_deref()
        .filter(|s| !s.is_empty())
}

/// Whether `changed` is something `vc`'s configuration is made from.
pub fn reads(vc: &VoiceCluster, changed: &Changed) -> bool {
    let ns = vc.namespace().unwrap_or_default();
    let csv = |kind: CsvObjectKind, name: &str| {
        vc.spec.sip.user_sources.iter().any(|s| {
            s.csv
                .as_ref()
                .is_some_and(|c| c.kind == kind && c.name == name)
        })
    };
    match changed {
        Changed::Secret(n, name) => {
            *n == ns
                && (users_secret(vc) == Some(name.as_str())
                    || csv(CsvObjectKind::Secret, name)
                    || vc.spec.sip.user_sources.iter().any(|s| {
                        s.ldap.as_ref().is_some_and(|l| {
                            l.bind_secret.as_deref() == Some(name.as_str())
                                || l.ca_secret.as_deref() == Some(name.as_str())
                        })
                    }))
        }
        Changed::ConfigMap(n, name) => *n == ns && csv(CsvObjectKind::ConfigMap, name),
        Changed::Ldap(n, name) => *n == ns && *name == vc.name_any(),
    }
}

/// What a reconcile compares to know the content is the same as last
/// time: everything the assembly reads, by version.
pub fn fingerprint(vc: &VoiceCluster, lookup: &impl Lookup) -> String {
    let ns = vc.namespace().unwrap_or_default();
    let secret_rv = |n: &str| lookup.secret(&ns, n).and_then(|s| s.resource_version());
    let mut parts = vec![
        serde_json::to_string(&vc.spec.sip.domain).unwrap_or_default(),
        serde_json::to_string(&vc.spec.billing).unwrap_or_default(),
        serde_json::to_string(&vc.spec.sip.user_sources).unwrap_or_default(),
        format!("{:?}", super::settings::live_settings(vc)),
        format!("{:?}", users_secret(vc).map(|n| (n, secret_rv(n)))),
    ];
    for s in &vc.spec.sip.user_sources {
        if let Some(c) = &s.csv {
            parts.push(format!(
                "{:?}",
                match c.kind {
                    CsvObjectKind::Secret => secret_rv(&c.name),
                    CsvObjectKind::ConfigMap => lookup
                        .config_map(&ns, &c.name)
                        .and_then(|m| m.resource_version()),
                }
            ));
        }
        if s.ldap.is_some() {
            let state = lookup.ldap(&(ns.clone(), vc.name_any(), s.name.clone()));
            parts.push(format!(
                "{:?}",
                state.map(|st| (
                    st.good.map(|g| (g.generation, g.at_unix_ms)),
                    st.error,
                    st.last_unix_ms
                ))
            ));
        }
    }
    parts.join("\n")
}

fn status(name: &str, kind: &str) -> UserSourceStatus {
    UserSourceStatus {
        name: name.to_string(),
        kind: kind.to_string(),
        state: "Ready".to_string(),
        ..UserSourceStatus::default()
    }
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The users of the users Secret.
fn secret_users(
    name: &str,
    secret: Option<&Secret>,
    realm: &str,
) -> Result<Vec<ConfigUser>, SourceError> {
    let secret = secret.ok_or_else(|| SourceError::NoSecret(name.to_string()))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(USERS_KEY))
        .ok_or_else(|| SourceError::NoUsersKey(name.to_string()))?;
    let text = std::str::from_utf8(&bytes.0).map_err(|_| SourceError::NotText(name.to_string()))?;
    let parsed =
        parse_users(text).map_err(|e| SourceError::BadLine(name.to_string(), e.to_string()))?;
    Ok(parsed
        .into_iter()
        .map(|(user, password)| ConfigUser {
            ha1: ha1(&user, realm, &password),
            display_name: String::new(),
            name: user,
        })
        .collect())
}

/// The text of a CSV source's file.
fn csv_text(ns: &str, c: &CsvSource, lookup: &impl Lookup) -> Result<String, String> {
    let what = match c.kind {
        CsvObjectKind::Secret => "Secret",
        CsvObjectKind::ConfigMap => "ConfigMap",
    };
    let missing = || format!("the {what} {:?} does not exist", c.name);
    let no_key = || format!("the {what} {:?} has no key {:?}", c.name, c.key);
    let bytes: Vec<u8> = match c.kind {
        CsvObjectKind::Secret => {
            let s = lookup.secret(ns, &c.name).ok_or_else(missing)?;
            s.data
                .as_ref()
                .and_then(|d| d.get(&c.key))
                .ok_or_else(no_key)?
                .0
                .clone()
        }
        CsvObjectKind::ConfigMap => {
            let m = lookup.config_map(ns, &c.name).ok_or_else(missing)?;
            match m.data.as_ref().and_then(|d| d.get(&c.key)) {
                Some(text) => text.clone().into_bytes(),
                None => m
                    .binary_data
                    .as_ref()
                    .and_then(|d| d.get(&c.key))
                    .ok_or_else(no_key)?
                    .0
                    .clone(),
            }
        }
    };
    String::from_utf8(bytes)
        .map_err(|_| format!("the {what} {:?}: {:?} is not UTF-8 text", c.name, c.key))
}

/// What a CSV or LDAP source gives, or why it gives nothing.
fn source_entries(
    vc: &VoiceCluster,
    source: &UserSource,
    lookup: &impl Lookup,
    st: &mut UserSourceStatus,
) -> Result<Entries, String> {
    let ns = vc.namespace().unwrap_or_default();
    if let Some(c) = &source.csv {
        let text = csv_text(&ns, c, lookup)?;
        let entries = csv_users::parse(&text).map_err(|e| e.to_string())?;
        if c.invalid_rows == InvalidEntries::Reject
            && let Some(first) = entries.errors.first()
        {
            st.invalid = count(entries.invalid);
            st.errors.clone_from(&entries.errors);
            let more = entries.invalid - 1;
            return Err(if more == 0 {
                format!("{first} (invalidRows: Reject)")
            } else {
                format!("{first}, and {more} more bad rows (invalidRows: Reject)")
            });
        }
        return Ok(entries);
    }
    let Some(_) = &source.ldap else {
        return Err("sets neither csv nor ldap".into());
    };
    let state = lookup
        .ldap(&(ns, vc.name_any(), source.name.clone()))
        .unwrap_or_default();
    st.last_sync_time = state.last_unix_ms.map(rfc3339);
    let Some(good) = state.good else {
        st.state = "Pending".into();
        return Err(match state.error {
            Some(e) => format!("no LDAP search has succeeded yet: {e}"),
            None => "waiting for the first LDAP search".into(),
        });
    };
    st.entries = Some(count(good.returned));
    st.last_success_time = Some(rfc3339(good.at_unix_ms));
    if let Some(e) = state.error {
        st.state = "Stale".into();
        st.message = Some(format!(
            "the last search failed, the users of the one before are used: {e}"
        ));
    }
    Ok(good.entries.clone())
}

fn rfc3339(unix_ms: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_millisecond(unix_ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Adds a source's users that no earlier source named.
fn take(
    entries: &Entries,
    realm: &str,
    seen: &mut HashSet<String>,
    users: &mut Vec<ConfigUser>,
    st: &mut UserSourceStatus,
) {
    for u in &entries.users {
        if seen.insert(u.name.clone()) {
            users.push(u.config(realm));
            st.users += 1;
        } else {
            st.shadowed += 1;
        }
    }
    st.disabled = count(entries.disabled);
    st.invalid = count(entries.invalid);
    st.errors.clone_from(&entries.errors);
}

/// The configuration of `vc` from its sources as `lookup` has them.
pub fn assemble(vc: &VoiceCluster, lookup: &impl Lookup) -> Assembly {
    let ns = vc.namespace().unwrap_or_default();
    let realm = &vc.spec.sip.domain;
    let mut seen = HashSet::new();
    let mut users = Vec::new();
    let mut statuses = Vec::new();
    let mut failure: Option<SourceError> = None;
    if let Some(name) = users_secret(vc) {
        let mut st = status(USERS_SECRET_SOURCE, "Secret");
        match secret_users(name, lookup.secret(&ns, name).as_deref(), realm) {
            Ok(from_secret) => {
                for u in from_secret {
                    seen.insert(u.name.clone());
                    users.push(u);
                    st.users += 1;
                }
            }
            Err(e) => {
                st.state = "Failed".into();
                st.message = Some(e.to_string());
                failure.get_or_insert(e);
            }
        }
        statuses.push(st);
    }
    for source in &vc.spec.sip.user_sources {
        let kind = if source.ldap.is_some() { "LDAP" } else { "CSV" };
        let mut st = status(&source.name, kind);
        match source_entries(vc, source, lookup, &mut st) {
            Ok(entries) => take(&entries, realm, &mut seen, &mut users, &mut st),
            Err(e) => {
                if st.state == "Ready" {
                    st.state = "Failed".into();
                }
                st.message = Some(e.clone());
                failure.get_or_insert(SourceError::UserSource(source.name.clone(), e));
            }
        }
        statuses.push(st);
    }
    let content = match failure {
        Some(e) => Err(e),
        None => {
            let config = canonical(ClusterConfig {
                users,
                billing: Some(billing(vc)),
                settings: Some(super::settings::live_settings(vc)),
            });
            let h = voicecluster_api::config::hash(&config);
            Ok((Arc::new(config), h))
        }
    };
    Assembly {
        content,
        sources: statuses,
    }
}

fn billing(vc: &VoiceCluster) -> BillingConfig {
    let billing = &vc.spec.billing;
    BillingConfig {
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
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use k8s_openapi::ByteString;
    use voicecluster_api::config::hash;

    use super::super::entries::{Credential, SourceUser};
    use super::super::ldap_syncs::GoodSearch;
    use super::*;
    use crate::fixtures::vc;

    /// The objects a test hands the assembly.
    #[derive(Default)]
    struct Objects {
        secrets: HashMap<String, Arc<Secret>>,
        maps: HashMap<String, Arc<ConfigMap>>,
        ldap: HashMap<String, SyncState>,
    }

    impl Lookup for Objects {
        fn secret(&self, _: &str, name: &str) -> Option<Arc<Secret>> {
            self.secrets.get(name).cloned()
        }
        fn config_map(&self, _: &str, name: &str) -> Option<Arc<ConfigMap>> {
            self.maps.get(name).cloned()
        }
        fn ldap(&self, key: &SourceKey) -> Option<SyncState> {
            self.ldap.get(&key.2).cloned()
        }
    }

    fn secret(key: &str, text: &str) -> Arc<Secret> {
        Arc::new(Secret {
            data: Some(BTreeMap::from([(
                key.to_string(),
                ByteString(text.as_bytes().to_vec()),
            )])),
            ..Secret::default()
        })
    }

    fn with_users(users: &str) -> Objects {
        let mut o = Objects::default();
        o.secrets.insert("people".into(), secret(USERS_KEY, users));
        o
    }

    fn spec(rate: &str) -> VoiceCluster {
        vc(serde_json::json!({
            "sip": {"domain": "voice.test", "usersSecret": "people"},
            "billing": {"rates": [{"prefix": "", "pricePerMinute": rate}]}
        }))
    }

    fn content(a: Assembly) -> (Arc<ClusterConfig>, String) {
        a.content.unwrap()
    }

    #[test]
    fn users_and_rates_come_from_the_secret_and_the_spec_as_ha1s() {
        let (c, h) = content(assemble(&spec("0.05"), &with_users("bob:b\nalice:a\n")));
        let names: Vec<&str> = c.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(c.users[0].ha1, ha1("alice", "voice.test", "a"));
        let billing = c.billing.as_ref().unwrap();
        assert_eq!(billing.rates[0].price_per_minute, "0.05");
        assert_eq!(billing.currency, "EUR");
        assert_eq!(h, hash(&c));
        // The same sources give the same hash on any replica; a price
        // change gives another.
        let (_, again) = content(assemble(&spec("0.05"), &with_users("alice:a\nbob:b\n")));
        assert_eq!(h, again);
        let (_, repriced) = content(assemble(&spec("0.07"), &with_users("alice:a\nbob:b\n")));
        assert_ne!(h, repriced);
    }

    #[test]
    fn a_missing_or_broken_source_says_what_is_wrong() {
        let vc = spec("0.05");
        let err = |o: &Objects| assemble(&vc, o).content.unwrap_err();
        assert_eq!(
            err(&Objects::default()),
            SourceError::NoSecret("people".into())
        );
        let mut no_key = Objects::default();
        no_key
            .secrets
            .insert("people".into(), Arc::new(Secret::default()));
        assert_eq!(err(&no_key), SourceError::NoUsersKey("people".into()));
        assert_eq!(
            err(&with_users("alice:a\nbob\n")).to_string(),
            "the users Secret \"people\": line 2: expected user:password"
        );
        let failed = assemble(&vc, &with_users("bob\n"));
        assert_eq!(failed.sources[0].state, "Failed");
        // Without a users Secret there are no users, and that is no error.
        let open = vc_with(serde_json::json!({"domain": "voice.test"}));
        assert!(
            content(assemble(&open, &Objects::default()))
                .0
                .users
                .is_empty()
        );
    }

    fn vc_with(sip: serde_json::Value) -> VoiceCluster {
        vc(serde_json::json!({"sip": sip}))
    }

    fn csv_map(text: &str) -> Arc<ConfigMap> {
        Arc::new(ConfigMap {
            data: Some(BTreeMap::from([(
                "users.csv".to_string(),
                text.to_string(),
            )])),
            ..ConfigMap::default()
        })
    }

    fn searched(users: &[(&str, &str)], error: Option<&str>) -> SyncState {
        let mut entries = Entries::default();
        for (u, p) in users {
            entries
                .users
                .push(SourceUser::new(u, Credential::Password((*p).to_string()), None).unwrap());
        }
        SyncState {
            good: Some(Arc::new(GoodSearch {
                returned: users.len(),
                entries,
                generation: 1,
                at_unix_ms: 1_700_000_000_000,
            })),
            error: error.map(str::to_string),
            last_unix_ms: Some(1_700_000_001_000),
        }
    }

    fn layered(invalid_rows: &str) -> VoiceCluster {
        vc_with(serde_json::json!({
            "domain": "voice.test",
            "usersSecret": "people",
            "userSources": [
                {"name": "staff", "csv": {"kind": "ConfigMap", "name": "staff",
                                          "invalidRows": invalid_rows}},
                {"name": "corp", "ldap": {"url": "ldap://127.0.0.1:3389",
                                          "baseDn": "dc=example,dc=com"}},
            ],
        }))
    }

    #[test]
    fn the_first_source_naming_a_user_wins_and_the_rest_are_counted() {
        let mut o = with_users("alice:from-secret\n");
        o.maps.insert(
            "staff".into(),
            csv_map("user,password,enabled\nalice,from-csv,\nbob,b1,\ncarol,c1,false\n"),
        );
        o.ldap.insert(
            "corp".into(),
            searched(&[("bob", "from-ldap"), ("dave", "d1")], None),
        );
        let a = assemble(&layered("Reject"), &o);
        let (c, _) = a.content.unwrap();
        let by_name: HashMap<&str, &str> = c
            .users
            .iter()
            .map(|u| (u.name.as_str(), u.ha1.as_str()))
            .collect();
        assert_eq!(by_name.len(), 3, "{by_name:?}");
        assert_eq!(by_name["alice"], ha1("alice", "voice.test", "from-secret"));
        assert_eq!(by_name["bob"], ha1("bob", "voice.test", "b1"));
        assert_eq!(by_name["dave"], ha1("dave", "voice.test", "d1"));
        let [secret, csv, ldap] = a.sources.as_slice() else {
            panic!("{:?}", a.sources)
        };
        assert_eq!((secret.users, secret.kind.as_str()), (1, "Secret"));
        assert_eq!((csv.users, csv.shadowed, csv.disabled), (1, 1, 1));
        assert_eq!((ldap.users, ldap.shadowed, ldap.entries), (1, 1, Some(2)));
        assert_eq!(ldap.state, "Ready");
        assert!(
            ldap.last_success_time
                .as_deref()
                .unwrap()
                .starts_with("2023-11-14T22:13:20")
        );
    }

    #[test]
    fn a_bad_csv_row_fails_the_source_unless_skipped() {
        let mut o = with_users("alice:a\n");
        o.maps.insert(
            "staff".into(),
            csv_map("user,password\nbob,b1\nbroken\ncarol,c1\n"),
        );
        o.ldap.insert("corp".into(), searched(&[], None));
        let rejected = assemble(&layered("Reject"), &o);
        assert_eq!(
            rejected.content.unwrap_err().to_string(),
            "user source \"staff\": line 3: 1 fields, the header has 2 (invalidRows: Reject)"
        );
        assert_eq!(rejected.sources[1].state, "Failed");
        assert_eq!(
            rejected.sources[1].errors,
            ["line 3: 1 fields, the header has 2"]
        );
        let skipped = assemble(&layered("Skip"), &o);
        assert_eq!(skipped.content.unwrap().0.users.len(), 3);
        assert_eq!(
            (
                skipped.sources[1].state.as_str(),
                skipped.sources[1].invalid
            ),
            ("Ready", 1)
        );
    }

    #[test]
    fn ldap_without_a_good_search_fails_and_a_failed_one_keeps_the_last_users() {
        let mut o = with_users("alice:a\n");
        o.maps.insert("staff".into(), csv_map("user,password\n"));
        let pending = assemble(&layered("Reject"), &o);
        assert_eq!(
            pending.content.unwrap_err().to_string(),
            "user source \"corp\": waiting for the first LDAP search"
        );
        o.ldap.insert(
            "corp".into(),
            SyncState {
                error: Some("cannot connect".into()),
                ..SyncState::default()
            },
        );
        let failing = assemble(&layered("Reject"), &o);
        assert!(failing.content.is_err());
        assert_eq!(failing.sources[2].state, "Pending");
        o.ldap.insert(
            "corp".into(),
            searched(&[("dave", "d1")], Some("cannot connect")),
        );
        let stale = assemble(&layered("Reject"), &o);
        assert_eq!(stale.content.unwrap().0.users.len(), 2);
        assert_eq!(stale.sources[2].state, "Stale");
        assert!(
            stale.sources[2]
                .message
                .as_deref()
                .unwrap()
                .contains("cannot connect")
        );
    }

    #[test]
    fn a_cluster_reads_the_objects_its_sources_name() {
        let mut v = layered("Reject");
        v.spec.sip.user_sources[1]
            .ldap
            .as_mut()
            .unwrap()
            .bind_secret = Some("ldap-bind".into());
        let s = |n: &str| Changed::Secret("voice".into(), n.into());
        assert!(reads(&v, &s("people")));
        assert!(reads(&v, &s("ldap-bind")));
        assert!(!reads(&v, &s("staff")), "staff is a ConfigMap");
        assert!(reads(
            &v,
            &Changed::ConfigMap("voice".into(), "staff".into())
        ));
        assert!(!reads(
            &v,
            &Changed::ConfigMap("other".into(), "staff".into())
        ));
        assert!(reads(&v, &Changed::Ldap("voice".into(), "demo".into())));
    }
}
