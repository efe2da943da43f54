//! Task events from other members for this member's calls: leg events,
//! replicas and their drops, takeovers and hand-overs.

use voicecluster_api::grpc::TaskHandle;
use voicecluster_api::grpc::task_event::Kind;

use super::{At, B2bua, Stack};
use crate::task_events::{REGISTRAR_TASK, kind_name};

impl B2bua {
    /// An event of kind `kind` from `from` for task `task` of this member.
    pub(crate) fn on_task_event(
        &mut self,
        sip: &mut Stack<'_>,
        (task, from): (u64, Option<TaskHandle>),
        kind: Kind,
        at: At,
    ) {
        let now = at.now;
        match kind {
            Kind::Leg(leg) => {
                let from = from.map(|f| f.member).unwrap_or_default();
                self.on_leg_event(sip, task, &from, &leg, at);
            }
            Kind::CallReplica(r) if task == REGISTRAR_TASK => {
                let Some(from) = from else { return };
                self.on_replica(from, r, now);
            }
            Kind::CallDropped(d) if task == REGISTRAR_TASK => {
                let Some(from) = from else { return };
                // The sender's own replica when it is here; by the Call-ID
                // otherwise (a taker's drop of the copies, or a drop that
                // overtook its replica on the way).
                if d.call_id.is_empty() || self.replicas.sent_by(&from) {
                    self.replicas.drop_call(&from, d.version, now);
                } else {
                    self.replicas.drop_taken(&d.call_id, d.version, now);
                }
                self.count_replicas();
            }
            Kind::TakenOver(t) => self.on_taken_over(task, &t.by),
            Kind::ReplicaStored(s) => self.on_replica_stored(sip, task, s.version, now),
            Kind::HandOver(_) if task == REGISTRAR_TASK => {
                let Some(from) = from else { return };
                self.take_over_calls_of(|held| held.owner.member == from.member);
            }
            kind => {
                tracing::debug!(task, kind = kind_name(&kind), "task event for no task here");
            }
        }
    }
}
