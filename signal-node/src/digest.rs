//! SIP digest authentication (RFC 3261 §22.4 with RFC 2617's MD5 and
//! `qop=auth`), as devices and SIPp implement it.
//!
//! Nonces are stateless: a timestamp and a keyed hash of it, so any signal
//! member can check a nonce another member issued as long as they share the
//! secret, and a restart does not invalidate a device's registration loop.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use md5::{Digest as _, Md5};

/// How long a nonce is accepted; afterwards the client is told `stale=true`
/// and retries with a fresh one without asking its user again.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(300);

fn md5_hex(s: &str) -> String {
    let d = Md5::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a client puts in its answer to a challenge with `qop=auth`.
pub struct ClientAuth<'a> {
    /// User name.
    pub user: &'a str,
    /// Password.
    pub password: &'a str,
    /// Realm of the challenge.
    pub realm: &'a str,
    /// Nonce of the challenge.
    pub nonce: &'a str,
    /// Method of the request.
    pub method: &'a str,
    /// Request-URI.
    pub uri: &'a str,
    /// Nonce count.
    pub nc: &'a str,
    /// Client nonce.
    pub cnonce: &'a str,
}

/// The `response` a client computes (RFC 2617 §3.2.2): for our own
/// requests to peers that challenge us, and tests.
pub fn client_response(a: &ClientAuth<'_>) -> String {
    let ha1 = md5_hex(&format!("{}:{}:{}", a.user, a.realm, a.password));
    let ha2 = md5_hex(&format!("{}:{}", a.method, a.uri));
    md5_hex(&format!(
        "{ha1}:{}:{}:{}:auth:{ha2}",
        a.nonce, a.nc, a.cnonce
    ))
}

/// The `Authorization` header's fields.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// `username`.
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `uri`.
    pub uri: String,
    /// `response`.
    pub response: String,
    /// `qop`, if any.
    pub qop: Option<String>,
    /// `nc`, with qop.
    pub nc: Option<String>,
    /// `cnonce`, with qop.
    pub cnonce: Option<String>,
    /// `algorithm`, if any.
    pub algorithm: Option<String>,
}

/// Why an `Authorization` header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizationError {
    /// Another scheme (`Basic`, …).
    #[error("not a Digest authorization")]
    NotDigest,
    /// A quoted value that never ends.
    #[error("unterminated quote in {0}")]
    UnterminatedQuote(String),
    /// A field every digest answer carries is missing.
    #[error("Authorization has no {0}")]
    Missing(&'static str),
}

/// Parses `Digest k=v, k="v", …`.
pub fn parse_authorization(value: &str) -> Result<Credentials, AuthorizationError> {
    let rest = value
        .trim()
        .strip_prefix("Digest")
        .or_else(|| value.trim().strip_prefix("digest"))
        .ok_or(AuthorizationError::NotDigest)?;
    let mut fields = fields(rest)?;
    let mut take = |k: &str| fields.remove(k);
    let need = |v: Option<String>, k: &'static str| v.ok_or(AuthorizationError::Missing(k));
    Ok(Credentials {
        username: need(take("username"), "username")?,
        realm: need(take("realm"), "realm")?,
        nonce: need(take("nonce"), "nonce")?,
        uri: need(take("uri"), "uri")?,
        response: need(take("response"), "response")?,
        qop: take("qop"),
        nc: take("nc"),
        cnonce: take("cnonce"),
        algorithm: take("algorithm"),
    })
}

/// The `k=v, k="v"` fields after the scheme, keys in lower case, quoted
/// values unescaped.
fn fields(rest: &str) -> Result<HashMap<String, String>, AuthorizationError> {
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            val.push(n);
                        }
                    }
                    '"' => {
                        closed = true;
                        break;
                    }
                    c => val.push(c),
                }
            }
            if !closed {
                return Err(AuthorizationError::UnterminatedQuote(key));
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                val.push(*c);
                chars.next();
            }
            val = val.trim().to_string();
        }
        fields.insert(key, val);
    }
    Ok(fields)
}

/// Why credentials were not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown user, wrong password or realm, or a forged nonce: ask again.
    Wrong,
    /// A nonce we issued that has expired: ask again with `stale=true`.
    Stale,
}

/// A user map larger than this is freed on a thread of its own.
const FREE_ELSEWHERE_FROM: usize = 10_000;

/// What a member knows of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// `MD5(user:realm:password)`, hex: all a response needs, so a member
    /// never holds a password it was not given.
    pub ha1: String,
    /// How the user is shown to those they call.
    pub display_name: Option<String>,
}

impl Account {
    /// An account with `ha1` and no display name.
    pub fn ha1(ha1: String) -> Self {
        Self {
            ha1,
            display_name: None,
        }
    }
}

/// Users to put in force: the whole list, or what changed in it since the
/// version in force.
#[derive(Debug, PartialEq)]
pub enum Users {
    /// User name → account, every user.
    Whole(HashMap<String, Account>),
    /// What changed: users removed, then users added or changed.
    Changed {
        /// User name → account, added or changed.
        upsert: Vec<(String, Account)>,
        /// User names removed.
        remove: Vec<String>,
    },
}

/// Issues and checks nonces and responses for one realm.
pub struct Authenticator {
    realm: String,
    secret: String,
    /// User name → account.
    accounts: HashMap<String, Account>,
}

impl Authenticator {
    /// `users` maps user names to passwords; `secret` keys the nonces.
    pub fn new(realm: &str, secret: &str, users: HashMap<String, String>) -> Self {
        let ha1s = users
            .into_iter()
            .map(|(user, password)| {
                let h = voicecluster_api::config::ha1(&user, realm, &password);
                (user, h)
            })
            .collect();
        Self::with_ha1s(realm, secret, ha1s)
    }

    /// `ha1s` maps user names to their HA1s.
    pub fn with_ha1s(realm: &str, secret: &str, ha1s: HashMap<String, String>) -> Self {
        Self {
            realm: realm.to_string(),
            secret: secret.to_string(),
            accounts: ha1s
                .into_iter()
                .map(|(u, h)| (u, Account::ha1(h)))
                .collect(),
        }
    }

    /// Puts `users` in force; returns the users no longer there. A
    /// changed password holds from the next challenge: nonces are not
    /// tied to a password.
    pub fn put_users(&mut self, users: Users) -> Vec<String> {
        match users {
            Users::Whole(accounts) => {
                let gone = self
                    .accounts
                    .keys()
                    .filter(|u| !accounts.contains_key(*u))
                    .cloned()
                    .collect();
                // The old map of a large list takes a while to free; its
                // memory goes back off the SIP loop.
                let old = std::mem::replace(&mut self.accounts, accounts);
                if old.len() > FREE_ELSEWHERE_FROM {
                    std::thread::spawn(move || drop(old));
                }
                gone
            }
            Users::Changed { upsert, remove } => {
                let gone = remove
                    .into_iter()
                    .filter(|u| self.accounts.remove(u).is_some())
                    .collect();
                self.accounts.extend(upsert);
                gone
            }
        }
    }

    /// Whether `user` may register and call.
    pub fn knows(&self, user: &str) -> bool {
        self.accounts.contains_key(user)
    }

    /// How `user` is shown to those they call, when the directory says.
    pub fn display_name(&self, user: &str) -> Option<&str> {
        self.accounts.get(user)?.display_name.as_deref()
    }

    /// The realm challenged in.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn nonce_at(&self, secs: u64) -> String {
        let ts = format!("{secs:x}");
        format!("{ts}{}", &md5_hex(&format!("{ts}:{}", self.secret))[..16])
    }

    /// A `WWW-Authenticate` value for a fresh challenge.
    pub fn challenge(&self, now: SystemTime, stale: bool) -> String {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        format!(
            "Digest realm=\"{}\", nonce=\"{}\", algorithm=MD5, qop=\"auth\"{}",
            self.realm,
            self.nonce_at(secs),
            if stale { ", stale=true" } else { "" }
        )
    }

    /// Checks credentials for a request with `method`.
    pub fn verify(&self, c: &Credentials, method: &str, now: SystemTime) -> Result<(), Refusal> {
        if c.realm != self.realm {
            return Err(Refusal::Wrong);
        }
        if c.algorithm
            .as_deref()
            .is_some_and(|a| !a.eq_ignore_ascii_case("MD5"))
        {
            return Err(Refusal::Wrong);
        }
        // The nonce must be one of ours: timestamp plus its keyed hash.
        let split = c.nonce.len().saturating_sub(16);
        let Some(Ok(issued)) = c.nonce.get(..split).map(|ts| u64::from_str_radix(ts, 16)) else {
            return Err(Refusal::Wrong);
        };
        if self.nonce_at(issued) != c.nonce {
            return Err(Refusal::Wrong);
        }
        let Some(ha1) = self.accounts.get(&c.username).map(|a| &a.ha1) else {
            return Err(Refusal::Wrong);
        };
        let ha2 = md5_hex(&format!("{method}:{}", c.uri));
        let expected = match (&c.qop, &c.nc, &c.cnonce) {
            (Some(qop), Some(nc), Some(cnonce)) if qop.eq_ignore_ascii_case("auth") => {
                md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:{qop}:{ha2}", c.nonce))
            }
            (None, _, _) => md5_hex(&format!("{ha1}:{}:{ha2}", c.nonce)),
            _ => return Err(Refusal::Wrong),
        };
        if !expected.eq_ignore_ascii_case(&c.response) {
            return Err(Refusal::Wrong);
        }
        let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if now_secs.saturating_sub(issued) > NONCE_LIFETIME.as_secs() {
            return Err(Refusal::Stale);
        }
        Ok(())
    }
}

pub use voicecluster_api::config::users::{UsersError, parse_users};

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new(
            "example.com",
            "s3cret",
            HashMap::from([("alice".to_string(), "wonder".to_string())]),
        )
    }

    /// What a client computes, as in RFC 2617 §3.2.2.
    fn alice(nonce: &str, password: &str) -> String {
        client_response(&ClientAuth {
            user: "alice",
            password,
            realm: "example.com",
            nonce,
            method: "REGISTER",
            uri: "sip:example.com",
            nc: "00000001",
            cnonce: "0a4f113b",
        })
    }

    fn header(nonce: &str, response: &str) -> String {
        format!(
            "Digest username=\"alice\", realm=\"example.com\", nonce=\"{nonce}\", \
             uri=\"sip:example.com\", response=\"{response}\", algorithm=MD5, \
             qop=auth, nc=00000001, cnonce=\"0a4f113b\""
        )
    }

    fn nonce_of(challenge: &str) -> String {
        challenge
            .split("nonce=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_string()
    }

    #[test]
    fn the_right_password_passes_and_a_wrong_one_does_not() {
        let a = auth();
        let now = SystemTime::now();
        let nonce = nonce_of(&a.challenge(now, false));
        let good = parse_authorization(&header(&nonce, &alice(&nonce, "wonder"))).unwrap();
        assert_eq!(a.verify(&good, "REGISTER", now), Ok(()));
        let bad = parse_authorization(&header(&nonce, &alice(&nonce, "guess"))).unwrap();
        assert_eq!(a.verify(&bad, "REGISTER", now), Err(Refusal::Wrong));
        // The response binds the method.
        assert_eq!(a.verify(&good, "INVITE", now), Err(Refusal::Wrong));
    }

    #[test]
    fn forged_and_expired_nonces_are_refused() {
        let a = auth();
        let now = SystemTime::now();
        let forged = "5f5e100aaaaaaaaaaaaaaaa";
        let multibyte = "ééééééééééééééééé";
        let c = parse_authorization(&header(multibyte, "x")).unwrap();
        assert_eq!(a.verify(&c, "REGISTER", now), Err(Refusal::Wrong));
        let c = parse_authorization(&header(forged, &alice(forged, "wonder"))).unwrap();
        assert_eq!(a.verify(&c, "REGISTER", now), Err(Refusal::Wrong));
        let old = now - NONCE_LIFETIME - Duration::from_secs(1);
        let nonce = nonce_of(&a.challenge(old, false));
        let c = parse_authorization(&header(&nonce, &alice(&nonce, "wonder"))).unwrap();
        assert_eq!(a.verify(&c, "REGISTER", now), Err(Refusal::Stale));
        // Another member with the same secret accepts a fresh one.
        let other = auth();
        let nonce = nonce_of(&a.challenge(now, false));
        let c = parse_authorization(&header(&nonce, &alice(&nonce, "wonder"))).unwrap();
        assert_eq!(other.verify(&c, "REGISTER", now), Ok(()));
    }

    #[test]
    fn authorization_headers_parse_with_quotes_and_escapes() {
        let c = parse_authorization(
            "Digest username=\"a\\\"b\",realm=\"r, with comma\",nonce=n,uri=\"sip:x\",response=\"00\"",
        )
        .unwrap();
        assert_eq!(c.username, "a\"b");
        assert_eq!(c.realm, "r, with comma");
        assert_eq!(c.nonce, "n");
        assert_eq!(
            parse_authorization("Basic abc"),
            Err(AuthorizationError::NotDigest)
        );
        assert!(parse_authorization("Digest username=\"open").is_err());
        assert_eq!(
            parse_authorization("Digest username=x").map_err(|e| e.to_string()),
            Err("Authorization has no realm".to_string())
        );
    }
}
