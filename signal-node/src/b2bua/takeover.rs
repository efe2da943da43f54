//! The buddy side of failover, and the owner's share of it: replicas out
//! when a call changes, a takeover when a request comes for a call this
//! member only holds a replica of (the edges send it here because the
//! call's member stopped answering their heartbeats).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use rsipstack::sip::headers::make_header;
use rsipstack::sip::{Request, Response};
use voicecluster_api::grpc::task_event::Kind;
use voicecluster_api::grpc::{
    CallReplica, CallReplicaDropped, CallTakenOver, DirectorySnapshot, FailoverReport, MemberCalls,
    ReplicaStored, TaskHandle,
};

use crate::calls::{Phase, header};
use crate::endpoint::{Endpoint, HeldAnswer};
use crate::failover_policy::FailoverPolicy;
use crate::legs::LegRequest;
use crate::rendezvous::buddy;
use crate::replicas::{Held, call_from_replica, replica_of};
use crate::task_events::{Outbound, REGISTRAR_TASK};
use crate::transaction::{TxKey, response_to};
use crate::wire::private::{FAILOVER_HEADER, HANDOVER_PARAM};

/// How long an answer waits for the buddy to store its call's replica.
const REPLICA_WAIT: Duration = Duration::from_millis(250);

impl Endpoint {
    /// Sends `response` once the buddy holds the current replica of call
    /// `id` (at once when the call has none).
    pub(crate) fn answer_when_replicated(
        &mut self,
        id: u64,
        key: &TxKey,
        response: Response,
        now: Instant,
    ) {
        let version = self.calls.get(id).map_or(0, |c| c.replicated);
        if version == 0 {
            return self.answer(key, response, now);
        }
        self.held.insert(
            id,
            HeldAnswer {
                version,
                key: key.clone(),
                response,
                until: now + REPLICA_WAIT,
            },
        );
    }

    fn release_answer(&mut self, id: u64, now: Instant) {
        if let Some(h) = self.held.remove(&id) {
            self.answer(&h.key, h.response, now);
        }
    }

    /// The buddy stored call `task`'s replica at `version`.
    pub(crate) fn on_replica_stored(&mut self, task: u64, version: u64, now: Instant) {
        if let Some(call) = self.calls.get_mut(task) {
            call.confirmed = call.confirmed.max(version);
        }
        if self.held.get(&task).is_some_and(|h| h.version <= version) {
            self.release_answer(task, now);
        }
    }

    /// Call `task` has no buddy to hold its replica: nothing to wait for.
    pub fn on_no_buddy(&mut self, task: u64, now: Instant, wall: SystemTime) {
        self.release_answer(task, now);
        self.pump(now, wall);
    }

    /// Answers whose buddy did not confirm in time go out anyway.
    pub(crate) fn release_overdue_answers(&mut self, now: Instant) {
        let overdue: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            tracing::warn!(
                call = id,
                "the buddy did not confirm the call's replica in time; answering anyway"
            );
            self.metrics.replica_timeouts.inc();
            self.release_answer(id, now);
        }
    }

    /// Sends the buddy the state of answered call `id`.
    pub(crate) fn replicate(&mut self, id: u64) {
        if self.member.is_none() {
            return;
        }
        let local = self.local;
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        if call.phase != Phase::Answered {
            return;
        }
        call.replicated += 1;
        let replica = replica_of(call, call.replicated, local);
        self.events_out
            .push_back((id, Outbound::Buddy(Kind::CallReplica(replica))));
    }

    /// Member `member` (its TaskEvents address) started or came back. The
    /// edges may now pick it to carry the dialogs of a member that is down
    /// (the buddy of a down member is chosen among the live ones), or route
    /// to it the dialogs it set up before a restart: so it gets every
    /// replica this member holds and a replica of every call this member
    /// carries. It takes a call over only when a request for it comes.
    pub(crate) fn on_member_back(&mut self, member: &str) {
        if self.member.is_none() {
            return;
        }
        let registrar = TaskHandle {
            member: member.to_string(),
            task: REGISTRAR_TASK,
        };
        let local = self.local;
        for replica in self.replicas.all() {
            self.events_out.push_back((
                REGISTRAR_TASK,
                Outbound::To(registrar.clone(), Kind::CallReplica(replica)),
            ));
        }
        for id in self.calls.ids() {
            let Some(call) = self.calls.get_mut(id) else {
                continue;
            };
            if call.phase != Phase::Answered {
                continue;
            }
            call.replicated += 1;
            let replica = replica_of(call, call.replicated, local);
            self.events_out.push_back((
                id,
                Outbound::To(registrar.clone(), Kind::CallReplica(replica)),
            ));
            self.replicate(id);
        }
        tracing::info!(%member, calls = self.calls.active(), replicas = self.replicas.len(), "a member (re)joined: replicas sent to it");
    }

    /// Calls whose latest replica no buddy confirmed (it had none then, or
    /// the delivery failed) are replicated again.
    pub fn retry_unconfirmed(&mut self, now: Instant, wall: SystemTime) {
        let due: Vec<u64> = self
            .calls
            .ids()
            .into_iter()
            .filter(|id| {
                self.calls.get(*id).is_some_and(|c| {
                    c.phase == Phase::Answered
                        && c.confirmed < c.replicated
                        && !self.held.contains_key(id)
                })
            })
            .collect();
        for id in due {
            self.replicate(id);
        }
        self.pump(now, wall);
    }

    /// The buddy changed (a member left or joined): the new one gets every
    /// answered call.
    pub fn on_buddy_changed(&mut self, now: Instant, wall: SystemTime) {
        for id in self.calls.ids() {
            self.replicate(id);
        }
        self.pump(now, wall);
    }

    /// Call `id` (the caller's Call-ID `call_id`) is over: its replica
    /// goes. By the Call-ID, so that a replica overtaken on the way by its
    /// drop is refused when it comes.
    pub(crate) fn drop_replica(&mut self, id: u64, call_id: &str, version: u64) {
        if self.member.is_none() || version == 0 {
            return;
        }
        self.events_out.push_back((
            id,
            Outbound::Buddy(Kind::CallDropped(CallReplicaDropped {
                version,
                call_id: call_id.to_string(),
            })),
        ));
    }

    pub(crate) fn count_replicas(&self) {
        self.metrics
            .replicas_held
            .set(i64::try_from(self.replicas.len()).unwrap_or(i64::MAX));
    }

    /// A replica from the member whose task `from` handles the call.
    pub(crate) fn on_replica(&mut self, from: TaskHandle, replica: CallReplica, now: Instant) {
        let version = replica.version;
        // A member passing on what it holds after this member lost touch
        // with it sends back the replicas of this member's own calls.
        let ours = replica
            .a
            .as_ref()
            .is_some_and(|a| self.calls.by_call_id(&a.call_id).is_some());
        if ours {
            return;
        }
        if self.replicas.store(from.clone(), replica, now) {
            self.events_out.push_back((
                REGISTRAR_TASK,
                Outbound::To(from, Kind::ReplicaStored(ReplicaStored { version })),
            ));
        }
        self.count_replicas();
    }

    /// Another member took over call `task` of this member.
    pub(crate) fn on_taken_over(&mut self, task: u64, by: &str) {
        let Some(call) = self.calls.remove(task) else {
            return;
        };
        // Its legs and its bill are the other member's now, and so is the
        // replica at this member's buddy.
        tracing::warn!(call_id = %call.a.call_id, %by, "call taken over by another member");
        // Its own replicas only (the taker dropped the copies it took).
        self.drop_replica(task, "", call.replicated);
        self.metrics.taken_over.inc();
        self.update_call_metrics();
    }

    /// When `req` belongs to a call this member holds only a replica of,
    /// and an edge says the call's member is down, the call becomes this
    /// member's (if the failover policy lets it): its legs report here from
    /// now on, its member is told, and it gets a buddy of its own.
    pub(crate) fn take_over_if_replica(&mut self, req: &Request, _now: Instant) -> Takeover {
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
    pub(crate) fn refuse_until_approved(&mut self, key: &TxKey, req: &Request, now: Instant) {
        if req.method() == &rsipstack::sip::Method::Ack {
            return;
        }
        let tag = self.tag();
        let mut r = response_to(req, 503, Some(&tag));
        r.headers.push(make_header("Retry-After", "5".into()));
        r.headers.push(make_header(
            "Warning",
            "399 voicecluster \"the call's member failed; its takeover awaits approval\"".into(),
        ));
        self.answer(key, r, now);
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
    pub fn on_directory(&mut self, snapshot: &DirectorySnapshot, now: Instant, wall: SystemTime) {
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
        self.pump(now, wall);
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
