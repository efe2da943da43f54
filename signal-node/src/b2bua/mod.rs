//! The B2BUA: one task per call between the caller (side A) and the
//! callee (side B), each side its own dialog, the media anchored on two
//! bridged call legs. It owns everything a call is made of: the calls and
//! the ones waiting for legs, relayed re-INVITEs, answers held for the
//! buddy's replica, the replicas of other members' calls and takeovers.
//!
//! Sans I/O: it answers and sends through the transaction layer it is
//! given ([`Stack`]), and leaves leg work ([`LegRequest`]), task events for
//! other members and finished calls in queues its driver empties.
//!
//! Where a message goes: [`invite`] (new calls, CANCEL), [`answer`] (B's
//! answers), [`dialog`] (ACK, BYE, leg events), [`reinvite`], [`held`]
//! (answers waiting for the buddy), [`replication`] and [`takeover`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime};

use rsipstack::sip::{Request, Response};

use crate::calls::{CallRecord, Calls, Phase};
use crate::failover_policy::FailoverPolicy;
use crate::legs::{LegReply, LegRequest};
use crate::metrics::SipMetrics;
use crate::registrar::{Binding, Registrar};
use crate::replicas::Replicas;
use crate::tags::Tags;
use crate::task_events::Outbound;
use crate::transaction::{Peer, Transactions, TxKey};

mod answer;
mod dialog;
mod events;
mod held;
mod invite;
mod outgoing;
mod reinvite;
mod replication;
pub(crate) mod takeover;

/// Finished calls kept until taken.
const RECORDS_KEPT: usize = 10_000;

/// When something happens, on both clocks: `now` for timers and
/// durations, `wall` for the times bills and registrations record.
#[derive(Clone, Copy, Debug)]
pub struct At {
    /// The monotonic clock.
    pub now: Instant,
    /// The wall clock.
    pub wall: SystemTime,
}

/// The layers under the B2BUA, lent to it for one step: the transactions
/// it answers and sends on, the registrar that says who may call whom,
/// and the tags that make its dialogs unique.
pub(crate) struct Stack<'a> {
    pub(crate) tx: &'a mut Transactions,
    pub(crate) registrar: &'a mut Registrar,
    pub(crate) tags: &'a mut Tags,
}

/// A response held until the buddy stored the replica it depends on.
pub(crate) struct HeldAnswer {
    pub(crate) version: u64,
    pub(crate) key: TxKey,
    pub(crate) response: Response,
    /// Sent anyway then: a slow or dead buddy must not stop calls.
    pub(crate) until: Instant,
}

/// A call that waits for its legs before the INVITE goes to B.
pub(crate) struct Pending {
    pub(crate) key: TxKey,
    pub(crate) req: Request,
    pub(crate) from: Peer,
    pub(crate) caller: String,
    pub(crate) callee: String,
    pub(crate) binding: Binding,
    pub(crate) offer: String,
    /// Our tag towards A.
    pub(crate) tag: String,
    pub(crate) started: SystemTime,
}

/// The calls of one member.
pub struct B2bua {
    pub(crate) calls: Calls,
    /// Whether calls can have media (call legs from somewhere).
    media_enabled: bool,
    /// Work for the call legs, for the driver.
    leg_requests: VecDeque<LegRequest>,
    /// Calls waiting for their legs, by task id.
    pending: HashMap<u64, Pending>,
    /// Re-INVITEs relayed to the other side: client transaction to call.
    reinvites: HashMap<TxKey, u64>,
    /// This member's TaskEvents address; without it nothing is replicated.
    pub(crate) member: Option<String>,
    /// Task events for other members, with the sending task.
    events_out: VecDeque<(u64, Outbound)>,
    /// Other members' calls, as their buddy.
    pub(crate) replicas: Replicas,
    /// Answers that wait until the buddy holds their call's replica.
    held: HashMap<u64, HeldAnswer>,
    /// Whose calls may be taken over, from the Directory.
    policy: FailoverPolicy,
    /// Calls taken over since start, by the member they came from.
    taken_from: HashMap<IpAddr, i32>,
    /// This node's SIP address, in Via and Contact.
    local: SocketAddr,
    /// Finished calls, for the driver to bill.
    records: VecDeque<CallRecord>,
    metrics: SipMetrics,
}

impl B2bua {
    /// The calls of a member at SIP address `local`; with `media` false it
    /// has no call legs, and refuses calls.
    pub fn new(local: SocketAddr, media: bool, metrics: SipMetrics) -> Self {
        Self {
            calls: Calls::default(),
            media_enabled: media,
            leg_requests: VecDeque::new(),
            pending: HashMap::new(),
            reinvites: HashMap::new(),
            member: None,
            events_out: VecDeque::new(),
            replicas: Replicas::default(),
            held: HashMap::new(),
            policy: FailoverPolicy::default(),
            taken_from: HashMap::new(),
            local,
            records: VecDeque::new(),
            metrics,
        }
    }

    /// True when no call is being set up or waits for its buddy: handing
    /// over now loses nothing.
    pub fn settled(&self) -> bool {
        self.pending.is_empty()
            && self.held.is_empty()
            && self.calls.ids().iter().all(|id| {
                self.calls
                    .get(*id)
                    .is_none_or(|c| c.phase != Phase::Calling)
            })
    }

    /// Calls in progress.
    pub fn active(&self) -> usize {
        self.calls.active()
    }

    /// The next piece of work for the call legs.
    pub fn poll_leg_request(&mut self) -> Option<LegRequest> {
        self.leg_requests.pop_front()
    }

    /// The next task event for another member, with the sending task.
    pub fn poll_task_event(&mut self) -> Option<(u64, Outbound)> {
        self.events_out.pop_front()
    }

    /// Takes the records of the calls finished so far.
    pub fn take_records(&mut self) -> Vec<CallRecord> {
        self.records.drain(..).collect()
    }

    /// When the next held answer goes out anyway.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.held.values().map(|h| h.until).min()
    }

    /// What became of a [`LegRequest`].
    pub(crate) fn on_leg_reply(&mut self, sip: &mut Stack<'_>, reply: LegReply, at: At) {
        match reply {
            LegReply::Ready { task, media } => self.on_legs_ready(sip, task, media, at),
            LegReply::Released {
                to_callee,
                to_caller,
            } => {
                for (direction, n) in [("to_callee", to_callee), ("to_caller", to_caller)] {
                    self.metrics
                        .call_media_packets
                        .get_or_create(&vec![("direction".to_string(), direction.to_string())])
                        .inc_by(n);
                }
            }
        }
    }

    fn contact(&self, peer: Peer) -> String {
        if peer.reliable {
            format!("<sip:{};transport=tcp>", self.local)
        } else {
            format!("<sip:{}>", self.local)
        }
    }

    pub(crate) fn answer(
        &mut self,
        sip: &mut Stack<'_>,
        key: &TxKey,
        response: Response,
        now: Instant,
    ) {
        self.metrics.response(&response);
        if let Err(e) = sip.tx.respond(key, response, now) {
            tracing::debug!(error = %e, "response not sent");
        }
    }

    /// A request outside any transaction we keep (ACK for a 2xx), or in a
    /// new client transaction.
    pub(crate) fn send(
        &mut self,
        sip: &mut Stack<'_>,
        req: Request,
        to: Peer,
        now: Instant,
    ) -> Option<TxKey> {
        match sip.tx.send_request(req, to, now) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(error = %e, "cannot send a request");
                None
            }
        }
    }

    fn end_call(&mut self, id: u64, reason: &str, wall: SystemTime) {
        let Some(call) = self.calls.remove(id) else {
            return;
        };
        self.leg_requests.push_back(LegRequest::Release {
            media: call.media.clone(),
        });
        self.drop_replica(id, &call.a.call_id, call.replicated);
        tracing::info!(call_id = %call.a.call_id, %reason, "call ended");
        self.finished(CallRecord {
            call_id: call.a.call_id,
            caller: call.caller,
            callee: call.callee,
            started: call.started,
            answered: call.answered,
            ended: wall,
            reason: reason.to_string(),
        });
        self.update_call_metrics();
    }

    fn finished(&mut self, record: CallRecord) {
        let outcome = if record.answered.is_some() {
            "answered".to_string()
        } else {
            record.reason.clone()
        };
        SipMetrics::count(&self.metrics.calls_completed, "outcome", outcome);
        if self.records.len() == RECORDS_KEPT {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    fn update_call_metrics(&self) {
        SipMetrics::set(&self.metrics.calls_active, self.calls.active());
    }
}

#[cfg(test)]
mod tests;
