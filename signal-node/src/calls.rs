//! Calls: one task per call, a B2BUA between caller (side A) and callee
//! (side B) with the media anchored on two bridged call legs.
//!
//! Each side is its own dialog with its own Call-ID and tags, so nothing of
//! one side leaks to the other; only the SDP crosses, rewritten to the legs'
//! addresses. Requests from either side are answered here and, where they
//! change the call (BYE, CANCEL), turned into requests on the other side.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use rsipstack::sip::prelude::*;
use rsipstack::sip::{Request, Response};

use crate::legs::Media;
use crate::registrar::user_of;
use crate::transaction::{Peer, TxKey};
use crate::wire::{self, Inbound};

/// Which dialog of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The caller's.
    A,
    /// The callee's.
    B,
}

/// How far a call got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// INVITE sent to B, no answer yet.
    Calling,
    /// B answered; the call is up.
    Answered,
    /// Over.
    Ended,
}

/// One side's dialog.
#[derive(Clone, Debug)]
pub struct Dialog {
    /// Call-ID of this side.
    pub call_id: String,
    /// Our tag on this side.
    pub local_tag: String,
    /// The other party's tag, once known.
    pub remote_tag: Option<String>,
    /// Our URI (From on requests we send on this side).
    pub local_uri: String,
    /// Their URI.
    pub remote_uri: String,
    /// Where in-dialog requests go (their Contact).
    pub remote_target: String,
    /// The flow to them.
    pub peer: Peer,
    /// Proxies in-dialog requests go through (Route headers), first first.
    pub route_set: Vec<String>,
    /// Our next CSeq on this side.
    pub cseq: u32,
}

/// One call.
pub struct Call {
    /// The caller's user name.
    pub caller: String,
    /// The callee's user name.
    pub callee: String,
    /// The caller's dialog.
    pub a: Dialog,
    /// The callee's dialog.
    pub b: Dialog,
    /// A's INVITE server transaction and the INVITE itself.
    pub a_invite: (TxKey, Request),
    /// Our INVITE to B: its client transaction and the request.
    pub b_invite: (TxKey, Request),
    /// The legs facing A and B.
    pub media: Media,
    /// Progress.
    pub phase: Phase,
    /// When the INVITE to B left, until its session request delay is known.
    pub invite_sent: Option<std::time::Instant>,
    /// When A's INVITE arrived.
    pub started: SystemTime,
    /// When B answered.
    pub answered: Option<SystemTime>,
    /// A re-INVITE relayed from one side to the other, until answered.
    pub reinvite: Option<Relayed>,
    /// 2xx answers to re-INVITEs that wait for their ACK: side, server
    /// transaction, CSeq.
    pub awaiting_ack: Vec<(Side, TxKey, u32)>,
    /// The session description last sent to A and to B.
    pub sent_sdp: (Option<String>, Option<String>),
    /// The version of the last replica sent to the buddy; 0: none yet.
    pub replicated: u64,
    /// The newest version a buddy confirmed holding.
    pub confirmed: u64,
    /// The member SIP address the edges pin this call's dialogs to (the
    /// one that set it up).
    pub pinned: SocketAddr,
}

impl Call {
    /// The session description last sent to `side`.
    pub fn sdp_sent(&self, side: Side) -> Option<&String> {
        match side {
            Side::A => self.sent_sdp.0.as_ref(),
            Side::B => self.sent_sdp.1.as_ref(),
        }
    }

    /// Records what was last sent to `side`.
    pub fn set_sdp_sent(&mut self, side: Side, sdp: String) {
        match side {
            Side::A => self.sent_sdp.0 = Some(sdp),
            Side::B => self.sent_sdp.1 = Some(sdp),
        }
    }
}

/// A re-INVITE being relayed: where it came from and its transaction.
#[derive(Clone, Debug)]
pub struct Relayed {
    /// The side that sent it.
    pub from: Side,
    /// Its server transaction.
    pub server: TxKey,
    /// The request.
    pub request: Request,
}

/// A finished call, for billing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    /// A's Call-ID (the one the caller knows).
    pub call_id: String,
    /// Caller user.
    pub caller: String,
    /// Callee user.
    pub callee: String,
    /// INVITE received.
    pub started: SystemTime,
    /// Answer, if any.
    pub answered: Option<SystemTime>,
    /// End.
    pub ended: SystemTime,
    /// Why it ended: `caller-bye`, `callee-bye`, `cancelled`, or the
    /// final status code that refused it.
    pub reason: String,
}

/// All calls of one endpoint, indexed by what messages carry.
#[derive(Default)]
pub struct Calls {
    calls: HashMap<u64, Call>,
    by_call_id: HashMap<String, (u64, Side)>,
    by_b_invite: HashMap<TxKey, u64>,
    by_a_invite: HashMap<TxKey, u64>,
    next: u64,
}

impl Calls {
    /// Calls in progress.
    pub fn active(&self) -> usize {
        self.calls.len()
    }

    /// The ids of the calls in progress.
    pub fn ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.calls.keys().copied().collect();
        ids.sort();
        ids
    }

    /// A new call id (the call's task id on this member).
    pub fn next_id(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Adds call `id` (from [`Self::next_id`]).
    pub fn insert(&mut self, id: u64, call: Call) {
        self.by_call_id
            .insert(call.a.call_id.clone(), (id, Side::A));
        self.by_call_id
            .insert(call.b.call_id.clone(), (id, Side::B));
        self.by_b_invite.insert(call.b_invite.0.clone(), id);
        self.by_a_invite.insert(call.a_invite.0.clone(), id);
        self.calls.insert(id, call);
    }

    /// The call and side a Call-ID belongs to.
    pub fn by_call_id(&self, call_id: &str) -> Option<(u64, Side)> {
        self.by_call_id.get(call_id).copied()
    }

    /// The call whose INVITE to B has this client transaction.
    pub fn by_b_invite(&self, key: &TxKey) -> Option<u64> {
        self.by_b_invite.get(key).copied()
    }

    /// The call whose INVITE from A has this server transaction.
    pub fn by_a_invite(&self, key: &TxKey) -> Option<u64> {
        self.by_a_invite.get(key).copied()
    }

    /// A call.
    pub fn get(&self, id: u64) -> Option<&Call> {
        self.calls.get(&id)
    }

    /// A call, to change.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut Call> {
        self.calls.get_mut(&id)
    }

    /// Removes a call and its indexes.
    pub fn remove(&mut self, id: u64) -> Option<Call> {
        let call = self.calls.remove(&id)?;
        self.by_call_id.remove(&call.a.call_id);
        self.by_call_id.remove(&call.b.call_id);
        self.by_b_invite.remove(&call.b_invite.0);
        self.by_a_invite.remove(&call.a_invite.0);
        Some(call)
    }
}

/// A request or response from text we wrote ourselves; `None` only if our
/// own template is broken, which the tests rule out.
pub fn request_from_text(text: &str) -> Option<Request> {
    match wire::decode(text.as_bytes(), false) {
        Inbound::Request(r) => Some(*r),
        _ => None,
    }
}

/// The value of header `name` (first), as text.
pub fn header<'a>(m: &'a impl HasHeaders, name: &str) -> Option<&'a str> {
    m.headers()
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .map(|h| h.value())
}

/// The URI inside a name-addr (`"A" <sip:a@h>;tag=x` → `sip:a@h`).
pub fn uri_of(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].to_string(),
        _ => value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Every value of every header called `name`, comma lists split, in order.
pub fn header_values(m: &impl HasHeaders, name: &str) -> Vec<String> {
    m.headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .flat_map(|h| {
            wire::split_list(h.value())
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `Route` header lines for a route set, each ending in CRLF.
pub fn route_lines(route_set: &[String]) -> String {
    route_set
        .iter()
        .map(|r| format!("Route: {r}\r\n"))
        .collect()
}

/// The `tag` parameter of a From/To value.
pub fn tag_of(value: &str) -> Option<String> {
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("tag")
            .then(|| v.trim().to_string())
    })
}

/// The callee's user name from the Request-URI.
pub fn callee_of(req: &Request) -> Option<String> {
    user_of(&req.uri.to_string())
}

/// `host:port` of a SIP URI, with the default port.
pub fn target_addr(uri: &str) -> Option<SocketAddr> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split([';', '?']).next()?;
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip = hostport.trim_start_matches('[').trim_end_matches(']');
    ip.parse().ok().map(|ip| SocketAddr::new(ip, 5060))
}

/// The SDP body of a message, if it has one.
pub fn sdp_body(m: &impl HasHeaders, body: &[u8]) -> Option<String> {
    let is_sdp = header(m, "Content-Type")
        .is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("application/sdp"));
    (is_sdp && !body.is_empty()).then(|| String::from_utf8_lossy(body).into_owned())
}

/// Whether a response is 2xx.
pub fn is_success(r: &Response) -> bool {
    (200..300).contains(&r.status_code().code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_parts() {
        assert_eq!(
            uri_of("\"A\" <sip:a@h:5060;transport=tcp>;tag=x"),
            "sip:a@h:5060;transport=tcp"
        );
        assert_eq!(uri_of("sip:a@h;tag=x"), "sip:a@h");
        assert_eq!(tag_of("<sip:a@h;lr>;tag=x1").as_deref(), Some("x1"));
        assert_eq!(tag_of("<sip:a@h;tag=inside>"), None);
        assert_eq!(tag_of("sip:a@h;tag=y"), Some("y".into()));
    }

    #[test]
    fn targets() {
        assert_eq!(
            target_addr("sip:bob@127.0.0.1:5070;transport=UDP"),
            Some("127.0.0.1:5070".parse().unwrap())
        );
        assert_eq!(
            target_addr("sip:10.0.0.1"),
            Some("10.0.0.1:5060".parse().unwrap())
        );
        assert_eq!(
            target_addr("sip:bob@[2001:db8::1]:5062"),
            Some("[2001:db8::1]:5062".parse().unwrap())
        );
        assert_eq!(target_addr("sip:bob@example.com"), None);
        assert_eq!(target_addr("http://x"), None);
    }
}
