//! The registrar (RFC 3261 §10.3): REGISTER with digest authentication,
//! several contacts per user, expiry, removal, and `*`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use rsipstack::sip::headers::make_header;
use rsipstack::sip::prelude::*;
use rsipstack::sip::{Request, Response};

use crate::digest::{Authenticator, Refusal, Users, parse_authorization};
use crate::transaction::{Peer, response_to};
use crate::wire::headers::user_of;
use crate::wire::split_list;

/// Shortest registration accepted (a shorter one gets 423).
pub const MIN_EXPIRES: u32 = 60;
/// Longest registration granted; longer requests are cut to it.
pub const MAX_EXPIRES: u32 = 7200;
/// Granted when neither the contact nor the request says.
pub const DEFAULT_EXPIRES: u32 = 3600;

/// One registered contact of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The contact URI, as the device sent it.
    pub contact: String,
    /// When it lapses.
    pub expires_at: SystemTime,
    /// Call-ID of the REGISTER that made it.
    pub call_id: String,
    /// Its CSeq: an older REGISTER of the same Call-ID cannot undo it.
    pub cseq: u32,
    /// Where the REGISTER came from: requests for the user go back along
    /// this flow (RFC 5626 style), which gets through NAT and reuses TCP.
    pub source: Peer,
    /// The REGISTER's Path (RFC 3327): the proxies, such as the edge, that
    /// requests for this contact must go through, first one first.
    pub path: Vec<String>,
}

/// All bindings of this member.
pub struct Registrar {
    auth: Authenticator,
    bindings: HashMap<String, Vec<Binding>>,
    /// Users whose bindings a REGISTER changed, for the other members.
    changed: Vec<String>,
}

/// A request without credentials that pass: ask for them again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("credentials required: {value}")]
pub struct Challenge {
    /// The `WWW-Authenticate`/`Proxy-Authenticate` value to send.
    pub value: String,
}

/// A Contact header entry.
#[derive(Debug, PartialEq, Eq)]
struct ContactEntry {
    uri: String,
    expires: Option<u32>,
}

/// Why a Contact entry of a REGISTER was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ContactError {
    /// Angle brackets that do not pair up.
    #[error("bad Contact {0:?}")]
    Malformed(String),
    /// Neither `sip:`, `sips:` nor `tel:`.
    #[error("Contact URI {0:?} is not a SIP URI")]
    NotSip(String),
    /// An `expires` parameter that is not a number of seconds.
    #[error("bad expires {0:?}")]
    BadExpires(String),
}

fn parse_contact(entry: &str) -> Result<ContactEntry, ContactError> {
    let (uri, params) = match (entry.find('<'), entry.rfind('>')) {
        (Some(a), Some(b)) if a < b => (&entry[a + 1..b], &entry[b + 1..]),
        (None, None) => match entry.split_once(';') {
            Some((u, p)) => (u, p),
            None => (entry, ""),
        },
        _ => return Err(ContactError::Malformed(entry.to_string())),
    };
    let uri = uri.trim();
    if !(uri.starts_with("sip:") || uri.starts_with("sips:") || uri.starts_with("tel:")) {
        return Err(ContactError::NotSip(uri.to_string()));
    }
    let mut expires = None;
    for p in params.split(';') {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("expires")
        {
            expires = Some(
                v.trim()
                    .parse::<u32>()
                    .map_err(|_| ContactError::BadExpires(v.to_string()))?,
            );
        }
    }
    Ok(ContactEntry {
        uri: uri.to_string(),
        expires,
    })
}

impl Registrar {
    /// A registrar authenticating with `auth`.
    pub fn new(auth: Authenticator) -> Self {
        Self {
            auth,
            bindings: HashMap::new(),
            changed: Vec::new(),
        }
    }

    /// The users from now on, as HA1s: a user no longer there can neither
    /// register nor call, and their bindings go at once.
    pub fn put_users(&mut self, users: Users) -> Vec<String> {
        let gone = self.auth.put_users(users);
        for user in &gone {
            if self.bindings.remove(user).is_some() {
                self.changed.push(user.clone());
            }
        }
        gone
    }

    /// Users whose bindings changed through REGISTERs since the last call.
    pub fn take_changed(&mut self) -> Vec<String> {
        std::mem::take(&mut self.changed)
    }

    /// Sets `user`'s bindings to what another member holds for them.
    pub fn replace(&mut self, user: &str, bindings: Vec<Binding>, now: SystemTime) {
        let live: Vec<Binding> = bindings
            .into_iter()
            .filter(|b| b.expires_at > now)
            .collect();
        if live.is_empty() {
            self.bindings.remove(user);
        } else {
            self.bindings.insert(user.to_string(), live);
        }
    }

    /// Every user with a live binding.
    pub fn users(&self, now: SystemTime) -> Vec<String> {
        let mut users: Vec<String> = self
            .bindings
            .iter()
            .filter(|(_, b)| b.iter().any(|b| b.expires_at > now))
            .map(|(u, _)| u.clone())
            .collect();
        users.sort();
        users
    }

    /// Checks a request's credentials in `header` (`Authorization` or
    /// `Proxy-Authorization`): the authenticated user, or the challenge to
    /// send.
    pub fn authenticate(
        &self,
        req: &Request,
        header: &str,
        now: SystemTime,
    ) -> Result<String, Challenge> {
        let value = req
            .headers
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case(header))
            .map(|h| h.value().to_string());
        let challenge = |stale| Challenge {
            value: self.auth.challenge(now, stale),
        };
        let Some(Ok(creds)) = value.as_deref().map(parse_authorization) else {
            return Err(challenge(false));
        };
        match self.auth.verify(&creds, &req.method().to_string(), now) {
            Ok(()) => Ok(creds.username),
            Err(Refusal::Stale) => Err(challenge(true)),
            Err(Refusal::Wrong) => Err(challenge(false)),
        }
    }

    /// Whether `user` is a user of this service.
    pub fn knows(&self, user: &str) -> bool {
        self.auth.knows(user)
    }

    /// How `user` is shown to those they call, when the directory says.
    pub fn display_name(&self, user: &str) -> Option<&str> {
        self.auth.display_name(user)
    }

    /// The live bindings of `user`.
    pub fn lookup(&self, user: &str, now: SystemTime) -> Vec<Binding> {
        self.bindings
            .get(user)
            .map(|b| b.iter().filter(|b| b.expires_at > now).cloned().collect())
            .unwrap_or_default()
    }

    /// Users with at least one live binding.
    pub fn registered_users(&self, now: SystemTime) -> usize {
        self.bindings
            .values()
            .filter(|b| b.iter().any(|b| b.expires_at > now))
            .count()
    }

    /// A static registration (a device or trunk configured rather than
    /// registering itself), valid for an hour.
    pub fn bind(&mut self, user: &str, contact: &str, source: Peer, now: SystemTime) {
        self.bindings
            .entry(user.to_string())
            .or_default()
            .push(Binding {
                contact: contact.to_string(),
                expires_at: now + Duration::from_secs(3600),
                call_id: "test".to_string(),
                cseq: 1,
                source,
                path: Vec::new(),
            });
    }

    /// Drops lapsed bindings.
    pub fn expire(&mut self, now: SystemTime) {
        for b in self.bindings.values_mut() {
            b.retain(|b| b.expires_at > now);
        }
        self.bindings.retain(|_, b| !b.is_empty());
    }

    /// Answers a REGISTER. `to_tag` is the tag this response gets.
    pub fn register(
        &mut self,
        req: &Request,
        source: Peer,
        to_tag: &str,
        now: SystemTime,
    ) -> Response {
        let reply = |code: u16| response_to(req, code, Some(to_tag));
        match self.try_register(req, source, &reply, now) {
            Ok(ok) | Err(ok) => ok,
        }
    }

    /// The steps of [`Self::register`]: the 200 with the user's bindings,
    /// or the response that refuses the REGISTER.
    fn try_register(
        &mut self,
        req: &Request,
        source: Peer,
        reply: &dyn Fn(u16) -> Response,
        now: SystemTime,
    ) -> Result<Response, Response> {
        let user = self.registering_user(req, reply, now)?;
        let update = Update::read(req, reply)?;
        let current = self.bindings.entry(user.clone()).or_default();
        current.retain(|b| b.expires_at > now);
        update.check(current, reply)?;
        update.apply(current, source, now);
        let ok = update.registered(reply(200), current, now);
        if current.is_empty() {
            self.bindings.remove(&user);
        }
        self.changed.push(user);
        Ok(ok)
    }

    /// The user a REGISTER authenticates as, who may register their own
    /// address only; or the 401, 400 or 403 that refuses it.
    fn registering_user(
        &self,
        req: &Request,
        reply: &dyn Fn(u16) -> Response,
        now: SystemTime,
    ) -> Result<String, Response> {
        let challenge = |stale: bool| {
            let mut r = reply(401);
            r.headers.push(make_header(
                "WWW-Authenticate",
                self.auth.challenge(now, stale),
            ));
            r
        };
        let Some(authorization) = req.authorization_header() else {
            return Err(challenge(false));
        };
        let creds = parse_authorization(authorization.value())
            .map_err(|why| with_warning(reply(400), &why.to_string()))?;
        match self.auth.verify(&creds, "REGISTER", now) {
            Ok(()) => {}
            Err(Refusal::Stale) => return Err(challenge(true)),
            Err(Refusal::Wrong) => return Err(challenge(false)),
        }
        let to = req
            .to_header()
            .map(|t| t.value().to_string())
            .unwrap_or_default();
        let Some(user) = user_of(&to) else {
            return Err(with_warning(reply(400), "To has no user"));
        };
        if user != creds.username {
            return Err(with_warning(
                reply(403),
                "may only register your own address",
            ));
        }
        Ok(user)
    }
}

/// What a REGISTER asks of the bindings of its user.
struct Update {
    call_id: String,
    cseq: u32,
    /// The request's Expires, for the contacts that say none.
    default_expires: Option<u32>,
    /// Its Path, stored with every binding it makes.
    path: Vec<String>,
    contacts: Vec<ContactEntry>,
    /// `Contact: *`: every binding goes.
    star: bool,
}

impl Update {
    /// Reads a REGISTER's headers, or the 400 that refuses it.
    fn read(req: &Request, reply: &dyn Fn(u16) -> Response) -> Result<Self, Response> {
        let call_id = req
            .call_id_header()
            .map(|c| c.value().to_string())
            .unwrap_or_default();
        let cseq = req.cseq_header().and_then(|c| c.seq()).unwrap_or_default();
        let default_expires = req
            .expires_header()
            .map(|e| e.value().trim().parse::<u32>())
            .transpose();
        let Ok(default_expires) = default_expires else {
            return Err(with_warning(reply(400), "bad Expires"));
        };
        let path: Vec<String> = req
            .headers
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case("Path"))
            .flat_map(|h| split_list(h.value()).into_iter().map(str::to_string))
            .collect();
        let mut contacts = Vec::new();
        let mut star = false;
        for h in req.contact_headers() {
            for entry in split_list(h.value()) {
                if entry == "*" {
                    star = true;
                    continue;
                }
                let contact = parse_contact(entry)
                    .map_err(|why| with_warning(reply(400), &why.to_string()))?;
                contacts.push(contact);
            }
        }
        Ok(Self {
            call_id,
            cseq,
            default_expires,
            path,
            contacts,
            star,
        })
    }

    /// How long `c` asks to be bound for, in seconds.
    fn requested(&self, c: &ContactEntry) -> u32 {
        c.expires
            .or(self.default_expires)
            .unwrap_or(DEFAULT_EXPIRES)
    }

    /// Whether the update may be made to the `current` bindings; the 400,
    /// 500 or 423 that refuses it when not.
    fn check(&self, current: &[Binding], reply: &dyn Fn(u16) -> Response) -> Result<(), Response> {
        if self.star {
            // RFC 3261 §10.3 step 6: `*` only alone and with Expires: 0.
            if !self.contacts.is_empty() || self.default_expires != Some(0) {
                return Err(with_warning(
                    reply(400),
                    "Contact * needs Expires: 0 and no other contact",
                ));
            }
            if current
                .iter()
                .any(|b| b.call_id == self.call_id && b.cseq >= self.cseq)
            {
                return Err(with_warning(reply(500), "out-of-order REGISTER"));
            }
        }
        for c in &self.contacts {
            let requested = self.requested(c);
            if requested > 0 && requested < MIN_EXPIRES {
                let mut r = reply(423);
                r.headers
                    .push(make_header("Min-Expires", MIN_EXPIRES.to_string()));
                return Err(r);
            }
        }
        Ok(())
    }

    /// Makes the update to the `current` bindings: new and refreshed
    /// contacts bound, expired (0) ones and, with `*`, all removed; a
    /// contact last bound by a later REGISTER of the same Call-ID stays.
    fn apply(&self, current: &mut Vec<Binding>, source: Peer, now: SystemTime) {
        if self.star {
            current.clear();
        }
        for c in &self.contacts {
            let requested = self.requested(c);
            let existing = current.iter().position(|b| b.contact == c.uri);
            if let Some(i) = existing
                && current[i].call_id == self.call_id
                && current[i].cseq >= self.cseq
            {
                continue;
            }
            if let Some(i) = existing {
                current.remove(i);
            }
            if requested > 0 {
                current.push(Binding {
                    contact: c.uri.clone(),
                    expires_at: now + Duration::from_secs(u64::from(requested.min(MAX_EXPIRES))),
                    call_id: self.call_id.clone(),
                    cseq: self.cseq,
                    source,
                    path: self.path.clone(),
                });
            }
        }
    }

    /// The 200 that says what is bound now: the `current` bindings with
    /// the seconds each has left.
    fn registered(&self, mut ok: Response, current: &[Binding], now: SystemTime) -> Response {
        // RFC 3327 §5.3: the Path the registrar stored goes back in the 200.
        for p in &self.path {
            ok.headers.push(make_header("Path", p.clone()));
        }
        for b in current {
            let left = b.expires_at.duration_since(now).map_or(0, |d| d.as_secs());
            ok.headers.push(make_header(
                "Contact",
                format!("<{}>;expires={left}", b.contact),
            ));
        }
        ok
    }
}

fn with_warning(mut r: Response, why: &str) -> Response {
    let text: String = why
        .chars()
        .filter(|c| *c != '"' && !c.is_control())
        .collect();
    r.headers.push(make_header(
        "Warning",
        format!("399 voicecluster \"{text}\""),
    ));
    r
}

#[cfg(test)]
mod tests;
