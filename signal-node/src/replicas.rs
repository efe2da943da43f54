//! Calls survive their member: each answered call's state goes to the
//! member's buddy ([`crate::rendezvous::buddy`]) as a [`CallReplica`] whenever it
//! changes, and is dropped when the call ends. When the member stops
//! answering the edges' heartbeats, the edges send the call's in-dialog
//! requests to the buddy, which turns the replica back into a call and
//! carries on: it takes over the legs, answers, and bills the whole call.
//!
//! This module holds the conversions and the buddy's book of replicas; the
//! endpoint decides when to replicate and when to take over.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use voicecluster_api::grpc::{CallReplica, DialogState, TaskHandle};

use crate::calls::{Call, Dialog, Phase};
use crate::legs::{Leg, Media};
use crate::transaction::{Peer, TxKey};
use crate::wire::headers::{header, request_from_text};

/// How long a dropped call's version is remembered, so a replica that
/// overtook its own drop on the way is not taken for a live call.
const TOMBSTONE_TTL: Duration = Duration::from_secs(120);

/// CSeq numbers skipped on taking a call over: requests the failed member
/// sent after its last replica must not be outnumbered (RFC 3261 §12.2.1.1
/// only asks for an increase).
const CSEQ_JUMP: u32 = 100;

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn from_unix_ms(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok()?;
    Some(UNIX_EPOCH + Duration::from_millis(ms))
}

fn dialog_state(d: &Dialog) -> DialogState {
    DialogState {
        call_id: d.call_id.clone(),
        local_tag: d.local_tag.clone(),
        remote_tag: d.remote_tag.clone().unwrap_or_default(),
        local_uri: d.local_uri.clone(),
        remote_uri: d.remote_uri.clone(),
        remote_target: d.remote_target.clone(),
        peer: d.peer.addr.to_string(),
        peer_reliable: d.peer.reliable,
        route_set: d.route_set.clone(),
        cseq: d.cseq,
    }
}

fn dialog(d: &DialogState) -> Option<Dialog> {
    Some(Dialog {
        call_id: d.call_id.clone(),
        local_tag: d.local_tag.clone(),
        remote_tag: (!d.remote_tag.is_empty()).then(|| d.remote_tag.clone()),
        local_uri: d.local_uri.clone(),
        remote_uri: d.remote_uri.clone(),
        remote_target: d.remote_target.clone(),
        peer: Peer {
            addr: d.peer.parse().ok()?,
            reliable: d.peer_reliable,
        },
        route_set: d.route_set.clone(),
        cseq: d.cseq.saturating_add(CSEQ_JUMP),
    })
}

/// The replica of `call`, at `version`, as member `owner_sip` has it.
pub fn replica_of(call: &Call, version: u64, owner_sip: SocketAddr) -> CallReplica {
    CallReplica {
        version,
        caller: call.caller.clone(),
        callee: call.callee.clone(),
        a: Some(dialog_state(&call.a)),
        b: Some(dialog_state(&call.b)),
        provider: call.media.provider.clone().unwrap_or_default(),
        leg_a: call.media.a.id,
        leg_a_address: call.media.a.addr.to_string(),
        leg_b: call.media.b.id,
        leg_b_address: call.media.b.addr.to_string(),
        started_unix_ms: unix_ms(call.started),
        answered_unix_ms: call.answered.map_or(0, unix_ms),
        sdp_to_a: call.sent_sdp.0.clone().unwrap_or_default(),
        sdp_to_b: call.sent_sdp.1.clone().unwrap_or_default(),
        owner_sip: owner_sip.to_string(),
        a_invite: call.a_invite.1.to_string(),
        b_invite: call.b_invite.1.to_string(),
        pinned_sip: call.pinned.to_string(),
    }
}

fn key_of(req: &rsipstack::sip::Request) -> Option<TxKey> {
    let via = header(req, "Via")?;
    let branch = via.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("branch").then(|| v.trim())
    })?;
    Some(TxKey {
        branch: branch.to_string(),
        method: "INVITE".to_string(),
    })
}

/// The call a replica describes, answered and ready to go on; `None` when
/// the replica does not make sense (it came over the network).
pub fn call_from_replica(r: &CallReplica) -> Option<Call> {
    let a = dialog(r.a.as_ref()?)?;
    let b = dialog(r.b.as_ref()?)?;
    let a_invite = request_from_text(&r.a_invite)?;
    let b_invite = request_from_text(&r.b_invite)?;
    let media = Media {
        provider: (!r.provider.is_empty()).then(|| r.provider.clone()),
        a: Leg {
            id: r.leg_a,
            addr: r.leg_a_address.parse().ok()?,
        },
        b: Leg {
            id: r.leg_b,
            addr: r.leg_b_address.parse().ok()?,
        },
    };
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Some(Call {
        caller: r.caller.clone(),
        callee: r.callee.clone(),
        a,
        b,
        a_invite: (key_of(&a_invite)?, a_invite),
        b_invite: (key_of(&b_invite)?, b_invite),
        media,
        phase: Phase::Answered,
        invite_sent: None,
        started: from_unix_ms(r.started_unix_ms)?,
        answered: from_unix_ms(r.answered_unix_ms).filter(|_| r.answered_unix_ms > 0),
        reinvite: None,
        awaiting_ack: Vec::new(),
        sent_sdp: (nonempty(&r.sdp_to_a), nonempty(&r.sdp_to_b)),
        // Its replicas go on numbering from here, wherever they are held.
        replicated: r.version,
        confirmed: 0,
        pinned: r.pinned_sip.parse().ok()?,
    })
}

/// A call of another member, as its buddy keeps it.
#[derive(Clone, Debug)]
pub struct Held {
    /// The task that handles the call on its member.
    pub owner: TaskHandle,
    /// Its latest state.
    pub replica: CallReplica,
}

/// (member, task) of the call's handler.
type OwnerKey = (String, u64);

/// The replicas this member holds, by the caller's Call-ID (a call keeps
/// it whoever carries the call, and its versions go on across takeovers).
#[derive(Default)]
pub struct Replicas {
    held: HashMap<String, Held>,
    /// Either dialog's Call-ID to the call's key.
    by_call_id: HashMap<String, String>,
    /// The handling task to the call's key, for its drop.
    by_owner: HashMap<OwnerKey, String>,
    /// Dropped calls' last versions, and when they were dropped.
    dropped: HashMap<String, (u64, Instant)>,
}

fn key_of_replica(r: &CallReplica) -> Option<String> {
    Some(r.a.as_ref()?.call_id.clone())
}

impl Replicas {
    /// Replicas held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True without replicas.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn forget(&mut self, key: &str) -> Option<Held> {
        let held = self.held.remove(key)?;
        for d in [&held.replica.a, &held.replica.b].into_iter().flatten() {
            self.by_call_id.remove(&d.call_id);
        }
        self.by_owner.retain(|_, k| k != key);
        Some(held)
    }

    /// Keeps `replica`, sent by `from` (the call's task, or a member
    /// passing on what it holds), unless a newer one of the call (or its
    /// drop) is already here; true when kept.
    pub fn store(&mut self, from: TaskHandle, replica: CallReplica, now: Instant) -> bool {
        let Some(key) = key_of_replica(&replica) else {
            return false;
        };
        let newer_here = self
            .held
            .get(&key)
            .is_some_and(|h| h.replica.version >= replica.version)
            || self
                .dropped
                .get(&key)
                .is_some_and(|(v, _)| *v >= replica.version);
        if newer_here {
            return false;
        }
        self.forget(&key);
        for d in [&replica.a, &replica.b].into_iter().flatten() {
            self.by_call_id.insert(d.call_id.clone(), key.clone());
        }
        self.by_owner
            .insert((from.member.clone(), from.task), key.clone());
        self.held.insert(
            key,
            Held {
                owner: from,
                replica,
            },
        );
        self.expire(now);
        true
    }

    /// Whether a replica from task `owner` is held.
    pub fn sent_by(&self, owner: &TaskHandle) -> bool {
        self.by_owner
            .contains_key(&(owner.member.clone(), owner.task))
    }

    /// The call `owner` handles ended at `version`.
    pub fn drop_call(&mut self, owner: &TaskHandle, version: u64, now: Instant) {
        let Some(key) = self
            .by_owner
            .get(&(owner.member.clone(), owner.task))
            .cloned()
        else {
            return;
        };
        if self
            .held
            .get(&key)
            .is_some_and(|h| h.replica.version <= version)
        {
            self.forget(&key);
        }
        self.dropped.insert(key, (version, now));
        self.expire(now);
    }

    /// Call `key` (the caller's Call-ID) was taken over at `version`:
    /// copies of it at that version or older go, whoever sent them.
    pub fn drop_taken(&mut self, key: &str, version: u64, now: Instant) {
        if self
            .held
            .get(key)
            .is_some_and(|h| h.replica.version <= version)
        {
            self.forget(key);
        }
        let last = self
            .dropped
            .entry(key.to_string())
            .or_insert((version, now));
        last.0 = last.0.max(version);
        self.expire(now);
    }

    /// Every replica held, with its owner.
    pub fn held(&self) -> impl Iterator<Item = &Held> {
        self.held.values()
    }

    /// Every replica held.
    pub fn all(&self) -> Vec<CallReplica> {
        self.held.values().map(|h| h.replica.clone()).collect()
    }

    /// The replica of the call a dialog with `call_id` belongs to.
    pub fn find(&self, call_id: &str) -> Option<&Held> {
        self.held.get(self.by_call_id.get(call_id)?)
    }

    /// The replica of the call a dialog with `call_id` belongs to, removed
    /// from the book: the caller takes the call over.
    pub fn take(&mut self, call_id: &str) -> Option<Held> {
        let key = self.by_call_id.get(call_id)?.clone();
        self.forget(&key)
    }

    fn expire(&mut self, now: Instant) {
        self.dropped
            .retain(|_, (_, at)| now.duration_since(*at) < TOMBSTONE_TTL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(version: u64, a: &str, b: &str) -> CallReplica {
        CallReplica {
            version,
            a: Some(DialogState {
                call_id: a.into(),
                ..Default::default()
            }),
            b: Some(DialogState {
                call_id: b.into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn owner(task: u64) -> TaskHandle {
        TaskHandle {
            member: "10.0.0.1:9446".into(),
            task,
        }
    }

    #[test]
    fn the_newest_replica_wins_and_a_drop_is_final() {
        let mut r = Replicas::default();
        let t = Instant::now();
        assert!(r.store(owner(1), replica(2, "a1", "b1"), t));
        assert!(!r.store(owner(1), replica(1, "a1", "b1"), t), "older");
        assert_eq!(r.len(), 1);
        r.drop_call(&owner(1), 3, t);
        assert!(r.is_empty());
        // The replica sent before the drop arrives after it.
        assert!(!r.store(owner(1), replica(3, "a1", "b1"), t));
        assert!(r.take("a1").is_none());
    }

    #[test]
    fn a_call_keeps_its_replica_across_holders_and_versions_go_on() {
        let mut r = Replicas::default();
        let t = Instant::now();
        assert!(r.store(owner(1), replica(3, "a1", "b1"), t));
        // Passed on by another member (its registrar): the same version is
        // no news; the new carrier's next version replaces it.
        let passer = TaskHandle {
            member: "10.0.0.2:9446".into(),
            task: 0,
        };
        assert!(!r.store(passer, replica(3, "a1", "b1"), t));
        let carrier = TaskHandle {
            member: "10.0.0.3:9446".into(),
            task: 9,
        };
        assert!(r.store(carrier.clone(), replica(4, "a1", "b1"), t));
        assert_eq!(r.len(), 1);
        assert_eq!(r.find("b1").unwrap().owner, carrier);
        r.drop_call(&carrier, 4, t);
        assert!(r.is_empty());
    }

    #[test]
    fn a_drop_that_overtakes_its_replica_refuses_it() {
        let mut r = Replicas::default();
        let t = Instant::now();
        assert!(!r.sent_by(&owner(1)));
        r.drop_taken("a1", 2, t);
        assert!(!r.store(owner(1), replica(2, "a1", "b1"), t), "late");
        assert!(r.is_empty());
    }

    #[test]
    fn a_taken_over_call_drops_every_copy_but_newer_ones() {
        let mut r = Replicas::default();
        let t = Instant::now();
        let passer = TaskHandle {
            member: "10.0.0.2:9446".into(),
            task: 0,
        };
        assert!(r.store(passer, replica(3, "a1", "b1"), t));
        r.drop_taken("a1", 3, t);
        assert!(r.is_empty());
        assert!(!r.store(owner(1), replica(3, "a1", "b1"), t), "late copy");
        // The taker's own next replica is newer: kept.
        assert!(r.store(owner(2), replica(4, "a1", "b1"), t));
        r.drop_taken("a1", 3, t);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn either_call_id_finds_the_call_once() {
        let mut r = Replicas::default();
        let t = Instant::now();
        r.store(owner(1), replica(1, "a1", "b1"), t);
        r.store(owner(2), replica(1, "a2", "b2"), t);
        let held = r.take("b2").unwrap();
        assert_eq!(held.owner.task, 2);
        assert!(r.take("a2").is_none(), "taken over once");
        assert!(r.take("a1").is_some());
        assert!(r.is_empty());
    }
}
