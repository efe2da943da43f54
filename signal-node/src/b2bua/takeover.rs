//! The buddy side of failover, and the owner's share of it: replicas out
//! when a call changes, a takeover when a request comes for a call this
//! member only holds a replica of (the edges send it here because the
//! call's member stopped answering their heartbeats).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rsipstack::sip::Request;
use rsipstack::sip::headers::make_header;
use voicecluster_api::grpc::task_event::Kind;
use voicecluster_api::grpc::{
    CallReplicaDropped, CallTakenOver, DirectorySnapshot, FailoverReport, MemberCalls,
};

use super::{B2bua, Stack};
use crate::failover_policy::FailoverPolicy;
use crate::legs::LegRequest;
use crate::rendezvous::buddy;
use crate::replicas::{Held, call_from_replica};
use crate::task_events::Outbound;
use crate::transaction::{TxKey, response_to};
use crate::wire::headers::header;
use crate::wire::private::{FAILOVER_HEADER, HANDOVER_PARAM};

impl B2bua {
    /// When `req` belongs to a call this member holds only a replica of,
    /// and an edge says the call's member is down, the call becomes this
    /// member's (if the failover policy lets it): its legs report here from
    /// now on, its member is told, and it gets a buddy of its own.
    pub(crate) fn take_over_if_replica(&mut self, req: &Request) -> Takeover {
        let call_id = header(req, "Call-ID").unwrap_or_default();
        if self.calls.by_call_id(call_id).is_some() {
            return Takeover::NotHeld;
        }
        let Some(held) = self.replicas.find(call_id) else {
            return Takeover::NotHeld;
        };
        // "<member's SIP address>[;handover]"
        let mut said = header(req, FAILOVER_HEADER).unwrap_or_default().split(';');
        let down = said.next().map(str::trim).filter(|d| !d.is_empty());
        let handover = said.any(|p| p.trim() == HANDOVER_PARAM);
        // Taken over when an edge says its member is down; or when the
        // edges now send here the dialogs of the member the call was set up
        // on (the member set changed since another took it over: the call
        // moves to where its requests come); or taken back when the edges
        // route its dialogs here again (this member set it up, went away,
        // and is back).
        let owner = held.replica.owner_sip.clone();
        let failed_over = down.is_some_and(|d| d == owner || d == held.replica.pinned_sip);
        let back_home = down.is_none() && held.replica.pinned_sip == self.local.to_string();
        if !failed_over && !back_home {
            tracing::warn!(%call_id, %owner, ?down, "a request for a call of a member no edge reported down; not taking it over");
            return Takeover::NotHeld;
        }
        let allowed = back_home
            || down
                .and_then(|d| d.parse::<SocketAddr>().ok())
                .is_some_and(|d| self.policy.allows(d.ip(), handover));
        if !allowed {
            tracing::info!(%call_id, %owner, "a call of a failed member waits for the takeover's approval");
            self.metrics.takeovers_waiting.inc();
            return Takeover::Waiting;
        }
        // The call's carrier is alive: the call only moves.
        let moved = down.is_some_and(|d| d != owner);
        let call_id = call_id.to_string();
        if self.take_over(&call_id, moved) {
            Takeover::Taken
        } else {
            Takeover::NotHeld
        }
    }

    /// Answers a request for a call whose takeover waits for approval:
    /// the call is not lost, so the device should try again later.
    pub(crate) fn refuse_until_approved(
        &mut self,
        sip: &mut Stack<'_>,
        key: &TxKey,
        req: &Request,
        now: Instant,
    ) {
        if req.method() == &rsipstack::sip::Method::Ack {
            return;
        }
        let tag = sip.tags.tag();
        let mut r = response_to(req, 503, Some(&tag));
        r.headers.push(make_header("Retry-After", "5".into()));
        r.headers.push(make_header(
            "Warning",
            "399 voicecluster \"the call's member failed; its takeover awaits approval\"".into(),
        ));
        self.answer(sip, key, r, now);
    }

    /// Takes over the call a dialog with `call_id` belongs to from its
    /// replica (`moved`: from a live member, as the edges now route it
    /// here); false when there is none (or it makes no call).
    fn take_over(&mut self, call_id: &str, moved: bool) -> bool {
        let Some(held) = self.replicas.take(call_id) else {
            return false;
        };
        self.count_replicas();
        let Some(call) = call_from_replica(&held.replica) else {
            tracing::error!(%call_id, owner = %held.owner.member, "a replica that does not make a call; cannot take it over");
            return false;
        };
        let id = self.calls.next_id();
        let media = call.media.clone();
        tracing::warn!(
            call_id = %call.a.call_id,
            owner = %held.replica.owner_sip,
            caller = %call.caller,
            callee = %call.callee,
            "taking over a call of a member that went down"
        );
        self.calls.insert(id, call);
        self.leg_requests
            .push_back(LegRequest::Adopt { task: id, media });
        // A call of this member's own earlier life has nobody to tell.
        if held.replica.owner_sip != self.local.to_string() {
            let by = self.member.clone().unwrap_or_default();
            self.events_out.push_back((
                id,
                Outbound::To(held.owner, Kind::TakenOver(CallTakenOver { by })),
            ));
            if let Ok(owner) = held.replica.owner_sip.parse::<SocketAddr>()
                && !moved
            {
                *self.taken_from.entry(owner.ip()).or_default() += 1;
            }
        }
        // Other members may hold copies (passed on when they joined):
        // they go, so nobody else takes the call or counts it as waiting.
        self.events_out.push_back((
            id,
            Outbound::Broadcast(Kind::CallDropped(CallReplicaDropped {
                version: held.replica.version,
                call_id: call_id.to_string(),
            })),
        ));
        if moved {
            self.metrics.moves.inc();
        } else {
            self.metrics.takeovers.inc();
        }
        self.replicate(id);
        self.update_call_metrics();
        true
    }

    /// Takes over at once every call whose replica `pick` picks.
    pub(crate) fn take_over_calls_of(&mut self, pick: impl Fn(&Held) -> bool) {
        let ids: Vec<String> = self
            .replicas
            .held()
            .filter(|h| pick(h))
            .filter_map(|h| h.replica.a.as_ref().map(|a| a.call_id.clone()))
            .collect();
        for call_id in ids {
            self.take_over(&call_id, false);
        }
    }

    /// A new Directory version: its failover policy applies from now on,
    /// and calls it lets go (approved, or of a member gone for good) are
    /// taken over now rather than at their next request.
    pub fn on_directory(&mut self, snapshot: &DirectorySnapshot) {
        let policy = FailoverPolicy::from_snapshot(snapshot);
        if policy == self.policy {
            return;
        }
        self.policy = policy;
        let local = self.local;
        let live: Vec<SocketAddr> = self
            .policy
            .live
            .iter()
            .map(|ip| SocketAddr::new(*ip, local.port()))
            .collect();
        let policy = self.policy.clone();
        // Of the members holding a copy, only the one the edges send the
        // call's dialogs to takes it.
        self.take_over_calls_of(|h| {
            h.replica.owner_sip.parse::<SocketAddr>().is_ok_and(|o| {
                o.ip() != local.ip()
                    && policy.take_at_once(o.ip())
                    && buddy(o, &live) == Some(local)
            })
        });
    }

    /// What the operator should know of this member's failover work.
    pub fn failover_report(&self) -> FailoverReport {
        let mut held: BTreeMap<IpAddr, i32> = BTreeMap::new();
        for h in self.replicas.held() {
            if let Ok(owner) = h.replica.owner_sip.parse::<SocketAddr>() {
                *held.entry(owner.ip()).or_default() += 1;
            }
        }
        let list = |m: BTreeMap<IpAddr, i32>| {
            m.into_iter()
                .map(|(member, calls)| MemberCalls {
                    member: member.to_string(),
                    calls,
                })
                .collect()
        };
        FailoverReport {
            backends: Vec::new(),
            held: list(held),
            taken_over: list(self.taken_from.iter().map(|(k, v)| (*k, *v)).collect()),
        }
    }
}

/// What became of a request for a call this member may hold a replica of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Takeover {
    /// Not a call to take over: served as usual.
    NotHeld,
    /// The call is this member's now.
    Taken,
    /// The call's member failed, and the takeover waits for approval.
    Waiting,
}
