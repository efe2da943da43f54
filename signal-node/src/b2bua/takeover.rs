//! The buddy side of failover, and the owner's share of it: replicas out
//! when a call changes, a takeover when a request comes for a call this
//! member only holds a replica of (the edges send it here because the
//! call's member stopped answering their heartbeats).

use std::time::{Duration, Instant, SystemTime};

use rsipstack::sip::{Request, Response};
use voicecluster_api::grpc::task_event::Kind;
use voicecluster_api::grpc::{
    CallReplica, CallReplicaDropped, CallTakenOver, ReplicaStored, TaskHandle,
};

use crate::calls::{Phase, header};
use crate::edge::FAILOVER_HEADER;
use crate::endpoint::{Endpoint, HeldAnswer};
use crate::legs::LegRequest;
use crate::replicas::{call_from_replica, replica_of};
use crate::task_events::{Outbound, REGISTRAR_TASK};
use crate::transaction::TxKey;

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

    /// Call `id` is over: its replica goes.
    pub(crate) fn drop_replica(&mut self, id: u64, version: u64) {
        if self.member.is_none() || version == 0 {
            return;
        }
        self.events_out.push_back((
            id,
            Outbound::Buddy(Kind::CallDropped(CallReplicaDropped { version })),
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
        self.drop_replica(task, call.replicated);
        self.metrics.taken_over.inc();
        self.update_call_metrics();
    }

    /// When `req` belongs to a call this member holds only a replica of,
    /// and an edge says the call's member is down, the call becomes this
    /// member's: its legs report here from now on, its member is told, and
    /// it gets a buddy of its own.
    pub(crate) fn take_over_if_replica(&mut self, req: &Request, _now: Instant) {
        let call_id = header(req, "Call-ID").unwrap_or_default();
        if self.calls.by_call_id(call_id).is_some() {
            return;
        }
        let Some(held) = self.replicas.find(call_id) else {
            return;
        };
        let down = header(req, FAILOVER_HEADER).map(str::trim);
        // Taken over when an edge says its member is down, or taken back
        // when the edges route its dialogs here again (this member set it
        // up, went away, and is back).
        let failed_over = down == Some(held.replica.owner_sip.as_str());
        let local = self.local.to_string();
        let back_home = down.is_none() && held.replica.pinned_sip == local;
        if !failed_over && !back_home {
            tracing::warn!(%call_id, owner = %held.replica.owner_sip, ?down, "a request for a call of a member no edge reported down; not taking it over");
            return;
        }
        let Some(held) = self.replicas.take(call_id) else {
            return;
        };
        self.count_replicas();
        let Some(call) = call_from_replica(&held.replica) else {
            tracing::error!(%call_id, owner = %held.owner.member, "a replica that does not make a call; cannot take it over");
            return;
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
        if held.replica.owner_sip != local {
            let by = self.member.clone().unwrap_or_default();
            self.events_out.push_back((
                id,
                Outbound::To(held.owner, Kind::TakenOver(CallTakenOver { by })),
            ));
        }
        self.metrics.takeovers.inc();
        self.replicate(id);
        self.update_call_metrics();
    }
}
