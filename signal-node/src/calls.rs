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

use rsipstack::sip::Request;

use crate::legs::{Media, Side};
use crate::transaction::{Peer, TxKey};

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
