//! Users from an LDAP directory: one paged search (bind DN and password
//! from a Secret, TLS by `ldaps://` or StartTLS) and the mapping of its
//! entries to users by the attributes the spec names.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ldap3::adapters::{Adapter, EntriesOnly, PagedResults};
use ldap3::{LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use voicecluster_api::voicecluster::{InvalidEntries, LdapAttributes, LdapSource};

use super::entries::{Credential, Entries, SourceUser};

/// Entries per page: under OpenLDAP's default size limit (500), so a
/// directory of any size comes back whole.
const PAGE_SIZE: i32 = 400;

/// One directory entry: its DN and its text attributes by lower-case name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawEntry {
    /// The entry's DN.
    pub dn: String,
    /// Attribute (lower case) → values.
    pub attrs: HashMap<String, Vec<String>>,
}

/// How to reach and authenticate to the directory.
pub struct Connection<'a> {
    /// The source in the spec.
    pub source: &'a LdapSource,
    /// Bind DN and password; anonymous when None.
    pub bind: Option<(String, String)>,
    /// PEM certificates TLS trusts; the system's roots when None.
    pub ca_pem: Option<Vec<u8>>,
}

/// Searches the directory: every entry under the base DN that matches the
/// filter, with the mapped attributes only.
pub async fn search(c: Connection<'_>) -> Result<Vec<RawEntry>, String> {
    let s = c.source;
    let timeout = Duration::from_secs(u64::try_from(s.timeout_seconds.max(1)).unwrap_or(10));
    let mut settings = LdapConnSettings::new()
        .set_conn_timeout(timeout)
        .set_starttls(s.start_tls);
    if let Some(pem) = &c.ca_pem {
        settings = settings.set_config(Arc::new(tls_config(pem)?));
    }
    let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &s.url)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", s.url))?;
    ldap3::drive!(conn);
    ldap.with_timeout(timeout);
    if let Some((dn, password)) = &c.bind {
        ldap.simple_bind(dn, password)
            .await
            .and_then(ldap3::LdapResult::success)
            .map_err(|e| format!("bind as {dn:?} refused: {e}"))?;
    }
    let a = &s.attributes;
    let mut wanted = vec![a.user.clone(), a.password.clone(), a.display_name.clone()];
    wanted.extend(a.ha1.clone());
    let adapters: Vec<Box<dyn Adapter<'_, String, Vec<String>>>> = vec![
        Box::new(EntriesOnly::new()),
        Box::new(PagedResults::new(PAGE_SIZE)),
    ];
    let mut stream = ldap
        .streaming_search_with(adapters, &s.base_dn, Scope::Subtree, &s.filter, wanted)
        .await
        .map_err(|e| format!("search under {:?} failed: {e}", s.base_dn))?;
    let mut out = Vec::new();
    while let Some(entry) = stream
        .next()
        .await
        .map_err(|e| format!("search under {:?} failed: {e}", s.base_dn))?
    {
        let e = SearchEntry::construct(entry);
        out.push(RawEntry {
            dn: e.dn,
            attrs: e
                .attrs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        });
    }
    stream
        .finish()
        .await
        .success()
        .map_err(|e| format!("search under {:?} failed: {e}", s.base_dn))?;
    // A failed unbind loses nothing: the search is complete.
    let _ = ldap.unbind().await;
    Ok(out)
}

fn tls_config(pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("ca.crt is not PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("ca.crt holds a bad certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("ca.crt holds no certificate".into());
    }
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The single value of `attr`, if the entry has it.
fn one<'a>(e: &'a RawEntry, attr: &str) -> Result<Option<&'a str>, String> {
    match e.attrs.get(&attr.to_ascii_lowercase()).map(Vec::as_slice) {
        None | Some([]) => Ok(None),
        Some([v]) => Ok(Some(v.as_str())),
        Some(_) => Err(format!("{attr} has more than one value")),
    }
}

/// A password value stored under a hash scheme (`{SSHA}…`): no HA1 can be
/// made from it.
fn hashed_scheme(value: &str) -> Option<&str> {
    let rest = value.strip_prefix('{')?;
    let (scheme, _) = rest.split_once('}')?;
    (!scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-'))
    .then_some(scheme)
}

fn user(e: &RawEntry, a: &LdapAttributes) -> Result<SourceUser, String> {
    let name = one(e, &a.user)?.ok_or_else(|| format!("no {} attribute", a.user))?;
    let ha1 = match &a.ha1 {
        Some(attr) => one(e, attr)?,
        None => None,
    };
    let credential = match (ha1, one(e, &a.password)?) {
        (Some(h), _) => Credential::Ha1(h.trim().to_string()),
        (None, Some(p)) => {
            if let Some(scheme) = hashed_scheme(p) {
                return Err(format!(
                    "{} is hashed with {{{scheme}}}: a digest needs the cleartext or an HA1 attribute",
                    a.password
                ));
            }
            Credential::Password(p.to_string())
        }
        (None, None) => return Err(format!("no {} attribute", a.password)),
    };
    let display = one(e, &a.display_name)?.map(str::to_string);
    SourceUser::new(name, credential, display)
}

/// The users of a search's entries. With `Reject`, the first entry that
/// cannot be used fails the search.
pub fn entries(
    raw: &[RawEntry],
    a: &LdapAttributes,
    invalid: InvalidEntries,
) -> Result<Entries, String> {
    let mut out = Entries::default();
    for e in raw {
        match user(e, a) {
            Ok(u) => out.users.push(u),
            Err(why) if invalid == InvalidEntries::Reject => {
                return Err(format!("{}: {why}", e.dn));
            }
            Err(why) => out.refuse(format!("{}: {why}", e.dn)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dn: &str, attrs: &[(&str, &str)]) -> RawEntry {
        let mut e = RawEntry {
            dn: dn.into(),
            ..RawEntry::default()
        };
        for (k, v) in attrs {
            e.attrs
                .entry(k.to_ascii_lowercase())
                .or_default()
                .push((*v).to_string());
        }
        e
    }

    #[test]
    fn entries_map_to_users_and_unusable_ones_say_why() {
        let raw = [
            entry(
                "uid=alice,ou=people",
                &[
                    ("uid", "alice"),
                    ("userPassword", "wonder"),
                    ("displayName", "Alice"),
                ],
            ),
            entry(
                "uid=bob,ou=people",
                &[("uid", "bob"), ("userPassword", "{SSHA}abcdefgh")],
            ),
            entry("cn=x,ou=people", &[("userPassword", "p")]),
            entry(
                "uid=carol,ou=people",
                &[("uid", "carol"), ("uid", "c2"), ("userPassword", "p")],
            ),
        ];
        let a = LdapAttributes::default();
        let e = entries(&raw, &a, InvalidEntries::Skip).unwrap();
        assert_eq!(e.users.len(), 1);
        assert_eq!(e.users[0].credential, Credential::Password("wonder".into()));
        assert_eq!(e.users[0].display_name.as_deref(), Some("Alice"));
        assert_eq!(
            e.errors,
            [
                "uid=bob,ou=people: userPassword is hashed with {SSHA}: a digest needs the cleartext or an HA1 attribute",
                "cn=x,ou=people: no uid attribute",
                "uid=carol,ou=people: uid has more than one value",
            ]
        );
        let refused = entries(&raw, &a, InvalidEntries::Reject).unwrap_err();
        assert!(refused.starts_with("uid=bob,ou=people: "), "{refused}");
    }

    #[test]
    fn an_ha1_attribute_wins_over_the_password() {
        let h = "0123456789abcdef0123456789abcdef";
        let raw = [entry(
            "uid=alice",
            &[("uid", "alice"), ("userPassword", "{SSHA}x"), ("sipHA1", h)],
        )];
        let a = LdapAttributes {
            ha1: Some("sipHA1".into()),
            ..LdapAttributes::default()
        };
        let e = entries(&raw, &a, InvalidEntries::Reject).unwrap();
        assert_eq!(e.users[0].credential, Credential::Ha1(h.into()));
    }

    #[test]
    fn a_directory_that_is_not_there_is_a_clear_error() {
        // A port nothing listens on: connection refused, at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let source: LdapSource = serde_json::from_value(serde_json::json!({
            "url": format!("ldap://127.0.0.1:{port}"),
            "baseDn": "dc=example,dc=com",
            "timeoutSeconds": 2,
        }))
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(search(Connection {
                source: &source,
                bind: None,
                ca_pem: None,
            }))
            .unwrap_err();
        assert!(
            err.starts_with(&format!("cannot connect to ldap://127.0.0.1:{port}")),
            "{err}"
        );
    }
}
