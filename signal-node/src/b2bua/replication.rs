//! The owner's side of failover: a replica of each answered call goes to
//! the buddy whenever the call changes, again to a new buddy or a member
//! that came back, and a drop when the call ends.

use std::time::Instant;

use voicecluster_api::grpc::task_event::Kind;
use voicecluster_api::grpc::{CallReplica, CallReplicaDropped, ReplicaStored, TaskHandle};

use super::B2bua;
use crate::calls::Phase;
use crate::replicas::replica_of;
use crate::task_events::{Outbound, REGISTRAR_TASK};

impl B2bua {
    /// Sends the buddy the state of answered call `id`.
    pub(crate) fn replicate(&mut self, id: u64) {
        if self.member.is_none() {
            return;
        }
        if let Some(replica) = self.next_replica(id) {
            self.events_out
                .push_back((id, Outbound::Buddy(Kind::CallReplica(replica))));
        }
    }

    /// A new replica of call `id` (its version counted), if it is answered.
    fn next_replica(&mut self, id: u64) -> Option<CallReplica> {
        let local = self.local;
        let call = self.calls.get_mut(id)?;
        if call.phase != Phase::Answered {
            return None;
        }
        call.replicated += 1;
        Some(replica_of(call, call.replicated, local))
    }

    /// Member `member` (its TaskEvents address) started or came back. The
    /// edges may now pick it to carry the dialogs of a member that is down
    /// (the buddy of a down member is chosen among the live ones), or route
    /// to it the dialogs it set up before a restart: so it gets every
    /// replica this member holds and a replica of every call this member
    /// carries (returned, for the answer to its sync). It takes a call over
    /// only when a request for it comes.
    pub(crate) fn on_member_back(&mut self, member: &str) -> Vec<(u64, Kind)> {
        if self.member.is_none() {
            return Vec::new();
        }
        let mut to_it: Vec<(u64, Kind)> = self
            .replicas
            .all()
            .into_iter()
            .map(|replica| (REGISTRAR_TASK, Kind::CallReplica(replica)))
            .collect();
        for id in self.calls.ids() {
            let Some(replica) = self.next_replica(id) else {
                continue;
            };
            to_it.push((id, Kind::CallReplica(replica)));
            self.replicate(id);
        }
        tracing::info!(%member, calls = self.calls.active(), replicas = self.replicas.len(), "a member (re)joined: replicas sent to it");
        to_it
    }

    /// Calls whose latest replica no buddy confirmed (it had none then, or
    /// the delivery failed) are replicated again.
    pub fn retry_unconfirmed(&mut self) {
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
    }

    /// The buddy changed (a member left or joined): the new one gets every
    /// answered call.
    pub fn on_buddy_changed(&mut self) {
        for id in self.calls.ids() {
            self.replicate(id);
        }
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
}
