//! The SIP endpoint of a signal node, sans I/O: bytes in (with where they
//! came from), bytes out, timers. It decodes, runs the transactions and
//! serves OPTIONS, REGISTER and calls (INVITE, ACK, BYE, CANCEL, re-INVITE;
//! see [`crate::b2bua`]); a request for a dialog that does not exist gets
//! 481, a method it does not serve 501.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rsipstack::sip::headers::make_header;
use rsipstack::sip::{Method, Request};

use crate::b2bua::takeover::Takeover;
use crate::billing::{Bill, RateTable, bill};
use crate::calls::{CallRecord, Calls, Phase};
use crate::failover_policy::FailoverPolicy;
use crate::legs::{LegReply, LegRequest};
use crate::management::SharedBills;
use crate::registrar::{Binding, Registrar};
use crate::replicas::Replicas;
use crate::task_events::{Outbound, REGISTRAR_TASK, binding_from_proto, kind_name, registrations};
use crate::transaction::{Output, Peer, Timers, Transactions, TxKey, response_to};
use crate::wire::private::STATE_HEADER;
use crate::wire::{self, Inbound};
use voicecluster_api::grpc::task_event::Kind;
use voicecluster_api::grpc::{self, TaskEvent};

/// The methods this endpoint serves.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER";

/// Finished calls kept for billing until taken.
const RECORDS_KEPT: usize = 10_000;

type Labels = Vec<(String, String)>;

/// SIP metrics of a signal node.
#[derive(Clone)]
pub struct SipMetrics {
    requests: Family<Labels, Counter>,
    responses: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    registered_users: Gauge,
    transactions: Gauge,
    calls_active: Gauge,
    calls_completed: Family<Labels, Counter>,
    call_media_packets: Family<Labels, Counter>,
    bill_write_errors: Counter,
    session_request_delay: Histogram,
    dtmf_digits: Counter,
    leg_reports: Counter,
    leg_fraction_lost: Histogram,
    leg_jitter: Histogram,
    pub(crate) replicas_held: Gauge,
    pub(crate) takeovers: Counter,
    pub(crate) takeovers_waiting: Counter,
    pub(crate) moves: Counter,
    pub(crate) taken_over: Counter,
    pub(crate) replica_timeouts: Counter,
}

impl Default for SipMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            responses: Family::default(),
            rejected: Family::default(),
            registered_users: Gauge::default(),
            transactions: Gauge::default(),
            calls_active: Gauge::default(),
            calls_completed: Family::default(),
            call_media_packets: Family::default(),
            bill_write_errors: Counter::default(),
            dtmf_digits: Counter::default(),
            leg_reports: Counter::default(),
            replicas_held: Gauge::default(),
            takeovers: Counter::default(),
            takeovers_waiting: Counter::default(),
            moves: Counter::default(),
            taken_over: Counter::default(),
            replica_timeouts: Counter::default(),
            leg_fraction_lost: Histogram::new([0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
            // 1 ms to about half a second.
            leg_jitter: Histogram::new(exponential_buckets(0.001, 2.0, 10)),
            // 1 ms to about 33 s: a local answer to a slow PSTN gateway.
            session_request_delay: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
        }
    }
}

impl SipMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "voicecluster_sip_requests",
            "SIP requests received, by method",
            m.requests.clone(),
        );
        registry.register(
            "voicecluster_sip_responses_sent",
            "SIP responses sent by the transaction user, by status code",
            m.responses.clone(),
        );
        registry.register(
            "voicecluster_sip_rejected",
            "Malformed messages, by outcome (answered with a 4xx/5xx, or dropped)",
            m.rejected.clone(),
        );
        registry.register(
            "voicecluster_sip_registered_users",
            "Users with at least one live registration on this member",
            m.registered_users.clone(),
        );
        registry.register(
            "voicecluster_sip_transactions",
            "Open SIP transactions",
            m.transactions.clone(),
        );
        registry.register(
            "voicecluster_calls_active",
            "Calls in progress on this member",
            m.calls_active.clone(),
        );
        registry.register(
            "voicecluster_calls_completed",
            "Calls ended on this member, by outcome (answered, or the refusal's status code, cancelled)",
            m.calls_completed.clone(),
        );
        registry.register(
            "voicecluster_sip_session_request_delay_seconds",
            "Session request delay (RFC 6076 SRD) of INVITEs sent to callees",
            m.session_request_delay.clone(),
        );
        registry.register(
            "voicecluster_bill_write_errors",
            "Bills that could not be written at once (kept and retried)",
            m.bill_write_errors.clone(),
        );
        registry.register(
            "voicecluster_dtmf_digits",
            "DTMF digits (RFC 4733) the call legs reported",
            m.dtmf_digits.clone(),
        );
        registry.register(
            "voicecluster_call_leg_reports",
            "Statistics reports the call legs of answered calls sent",
            m.leg_reports.clone(),
        );
        registry.register(
            "voicecluster_call_leg_fraction_lost",
            "Fraction of packets lost, as endpoints report it in RTCP, per leg report",
            m.leg_fraction_lost.clone(),
        );
        registry.register(
            "voicecluster_call_leg_jitter_seconds",
            "Interarrival jitter endpoints report in RTCP (8 kHz audio), per leg report",
            m.leg_jitter.clone(),
        );
        registry.register(
            "voicecluster_call_replicas_held",
            "Calls of other members this member holds replicas of, as their buddy",
            m.replicas_held.clone(),
        );
        registry.register(
            "voicecluster_call_takeovers",
            "Calls of a failed member this member took over from their replicas",
            m.takeovers.clone(),
        );
        registry.register(
            "voicecluster_call_moves",
            "Calls taken from a live member because the edges now send their dialogs here (the member set changed after a takeover)",
            m.moves.clone(),
        );
        registry.register(
            "voicecluster_call_takeovers_awaiting_approval",
            "Requests for calls of a failed member refused (503) because the takeover awaits approval (Manual failover)",
            m.takeovers_waiting.clone(),
        );
        registry.register(
            "voicecluster_call_replica_timeouts",
            "Answers sent without the buddy's confirmation that it holds the call's replica",
            m.replica_timeouts.clone(),
        );
        registry.register(
            "voicecluster_calls_taken_over",
            "Calls of this member that another member took over",
            m.taken_over.clone(),
        );
        registry.register(
            "voicecluster_call_media_packets",
            "RTP packets relayed in ended calls, by direction",
            m.call_media_packets.clone(),
        );
        m
    }

    fn count(family: &Family<Labels, Counter>, key: &str, value: String) {
        family.get_or_create(&vec![(key.to_string(), value)]).inc();
    }
}

/// Where bills go.
struct Billing {
    rates: RateTable,
    store: SharedBills,
    /// Bills a failed write left behind; written before the next one.
    pending: Vec<Bill>,
}

impl Billing {
    fn record(&mut self, record: &CallRecord, metrics: &SipMetrics) {
        self.pending.push(bill(record, &self.rates));
        let mut store = self
            .store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(b) = self.pending.first().cloned() {
            if let Err(e) = store.append(b) {
                tracing::error!(error = %e, path = %store.path().display(), pending = self.pending.len(), "cannot write a bill; kept for the next attempt");
                metrics.bill_write_errors.inc();
                return;
            }
            self.pending.remove(0);
        }
    }
}

/// Where a member is in its life, as the edges' heartbeats hear it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lifecycle {
    /// Getting the registrations and replicas from the other members: no
    /// new calls, and its dialogs go to their buddies (heartbeats get 503,
    /// "starting"), so nothing reaches it that it cannot know yet.
    Starting,
    /// Takes new calls.
    #[default]
    Serving,
    /// Stopping: no new calls from the edges (heartbeats get 503); the
    /// calls being set up finish.
    Draining,
    /// Its calls are its buddy's from now on: heartbeats say it is gone,
    /// so the edges send their dialogs to the buddy at once.
    Gone,
    /// Gone, and the buddy told to take every call over now.
    Left,
}

/// A response held until the buddy stored the replica it depends on.
pub(crate) struct HeldAnswer {
    pub(crate) version: u64,
    pub(crate) key: TxKey,
    pub(crate) response: rsipstack::sip::Response,
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

/// One signal node's SIP endpoint.
pub struct Endpoint {
    pub(crate) transactions: Transactions,
    pub(crate) registrar: Registrar,
    pub(crate) calls: Calls,
    /// Whether calls can have media (call legs from somewhere).
    pub(crate) media_enabled: bool,
    /// Work for the call legs, for the driver.
    pub(crate) leg_requests: VecDeque<LegRequest>,
    /// Calls waiting for their legs, by task id.
    pub(crate) pending: HashMap<u64, Pending>,
    /// Re-INVITEs relayed to the other side: client transaction to call.
    pub(crate) reinvites: HashMap<TxKey, u64>,
    /// This member's TaskEvents address; without it nothing is shared.
    pub(crate) member: Option<String>,
    /// Task events for other members, for the driver.
    pub(crate) events_out: VecDeque<(u64, Outbound)>,
    /// Other members' calls, as their buddy.
    pub(crate) replicas: Replicas,
    /// Answers that wait until the buddy holds their call's replica.
    pub(crate) held: HashMap<u64, HeldAnswer>,
    lifecycle: Lifecycle,
    /// Whose calls may be taken over, from the Directory.
    pub(crate) policy: FailoverPolicy,
    /// Calls taken over since start, by the member they came from.
    pub(crate) taken_from: HashMap<IpAddr, i32>,
    /// This node's SIP address, in Via and Contact.
    pub(crate) local: SocketAddr,
    records: VecDeque<CallRecord>,
    billing: Option<Billing>,
    pub(crate) metrics: SipMetrics,
    out: VecDeque<(Peer, Vec<u8>)>,
    next_tag: u64,
}

impl Endpoint {
    /// An endpoint at `local` registering users through `registrar`; it
    /// places calls only with `media` (call legs to ask for, see
    /// [`Self::poll_leg_request`]).
    pub fn new(
        local: SocketAddr,
        registrar: Registrar,
        media: bool,
        timers: Timers,
        metrics: SipMetrics,
    ) -> Self {
        Self {
            transactions: Transactions::new(timers),
            registrar,
            calls: Calls::default(),
            media_enabled: media,
            leg_requests: VecDeque::new(),
            pending: HashMap::new(),
            reinvites: HashMap::new(),
            member: None,
            events_out: VecDeque::new(),
            replicas: Replicas::default(),
            held: HashMap::new(),
            lifecycle: Lifecycle::Serving,
            policy: FailoverPolicy::default(),
            taken_from: HashMap::new(),
            local,
            records: VecDeque::new(),
            billing: None,
            metrics,
            out: VecDeque::new(),
            next_tag: 0,
        }
    }

    /// Shares registrations with the other members, as member `member`
    /// (its TaskEvents address).
    pub fn with_member(mut self, member: String) -> Self {
        self.member = Some(member);
        self
    }

    /// Moves the member along its life (see [`Lifecycle`]).
    pub fn set_lifecycle(&mut self, to: Lifecycle) {
        if self.lifecycle != to {
            tracing::info!(from = ?self.lifecycle, ?to, calls = self.calls.active(), "member lifecycle");
            if to == Lifecycle::Left && self.member.is_some() {
                self.events_out.push_back((
                    REGISTRAR_TASK,
                    Outbound::Buddy(Kind::HandOver(grpc::HandOver {})),
                ));
            }
        }
        self.lifecycle = to;
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

    /// The next task event for another member, with the sending task.
    pub fn poll_task_event(&mut self) -> Option<(u64, Outbound)> {
        self.events_out.pop_front()
    }

    /// An event from another member for one of this member's tasks.
    pub fn on_task_event(&mut self, event: TaskEvent, now: Instant, wall: SystemTime) {
        let Some(to) = event.to else { return };
        match event.kind {
            Some(Kind::Registrations(r)) if to.task == REGISTRAR_TASK => {
                let bindings: Vec<Binding> =
                    r.bindings.iter().filter_map(binding_from_proto).collect();
                if bindings.len() != r.bindings.len() {
                    tracing::warn!(user = %r.user, "bindings from another member dropped: bad source address");
                }
                self.registrar.replace(&r.user, bindings, wall);
            }
            Some(Kind::Sync(_)) if to.task == REGISTRAR_TASK => {
                let Some(from) = event.from else { return };
                for user in self.registrar.users(wall) {
                    let bindings = self.registrar.lookup(&user, wall);
                    self.events_out.push_back((
                        REGISTRAR_TASK,
                        Outbound::To(from.clone(), registrations(&user, &bindings)),
                    ));
                }
                // A member (re)started: it gets back the replicas it needs.
                self.on_member_back(&from.member);
            }
            Some(Kind::Leg(leg)) => {
                let from = event.from.map(|f| f.member).unwrap_or_default();
                self.on_leg_event(to.task, &from, &leg, now, wall);
            }
            Some(Kind::CallReplica(r)) if to.task == REGISTRAR_TASK => {
                let Some(from) = event.from else { return };
                self.on_replica(from, r, now);
            }
            Some(Kind::CallDropped(d)) if to.task == REGISTRAR_TASK => {
                let Some(from) = event.from else { return };
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
            Some(Kind::TakenOver(t)) => self.on_taken_over(to.task, &t.by),
            Some(Kind::ReplicaStored(s)) => self.on_replica_stored(to.task, s.version, now),
            Some(Kind::HandOver(_)) if to.task == REGISTRAR_TASK => {
                let Some(from) = event.from else { return };
                self.take_over_calls_of(|held| held.owner.member == from.member);
            }
            Some(kind) => {
                tracing::debug!(
                    task = to.task,
                    kind = kind_name(&kind),
                    "task event for no task here"
                );
            }
            None => {}
        }
        self.pump(now, wall);
    }

    /// After REGISTERs: the changed users' bindings go to the other members.
    fn share_registrations(&mut self, wall: SystemTime) {
        let changed = self.registrar.take_changed();
        if self.member.is_none() {
            return;
        }
        for user in changed {
            let bindings = self.registrar.lookup(&user, wall);
            self.events_out.push_back((
                REGISTRAR_TASK,
                Outbound::Broadcast(registrations(&user, &bindings)),
            ));
        }
    }

    /// Bills every finished call with `rates` into `store`.
    pub fn with_billing(mut self, rates: RateTable, store: SharedBills) -> Self {
        self.billing = Some(Billing {
            rates,
            store,
            pending: Vec::new(),
        });
        self
    }

    /// Calls in progress.
    pub fn active_calls(&self) -> usize {
        self.calls.active()
    }

    /// Takes the records of the calls finished so far.
    pub fn take_records(&mut self) -> Vec<CallRecord> {
        self.records.drain(..).collect()
    }

    pub(crate) fn finished(&mut self, record: CallRecord) {
        let outcome = if record.answered.is_some() {
            "answered".to_string()
        } else {
            record.reason.clone()
        };
        SipMetrics::count(&self.metrics.calls_completed, "outcome", outcome);
        if let Some(b) = self.billing.as_mut() {
            b.record(&record, &self.metrics);
        }
        if self.records.len() == RECORDS_KEPT {
            self.records.pop_front();
        }
        self.records.push_back(record);
    }

    pub(crate) fn observe_session_request_delay(&self, d: std::time::Duration) {
        self.metrics.session_request_delay.observe(d.as_secs_f64());
    }

    /// A leg's statistics report; call quality comes from its endpoint's
    /// RTCP, when it sends any.
    pub(crate) fn observe_leg_statistics(&self, stats: &voicecluster_api::grpc::LegStats) {
        self.metrics.leg_reports.inc();
        if stats.rtcp_in > 0 {
            self.metrics
                .leg_fraction_lost
                .observe(f64::from(stats.fraction_lost) / 256.0);
            // G.711 and telephone-event: 8000 timestamp units a second.
            self.metrics
                .leg_jitter
                .observe(f64::from(stats.jitter) / 8000.0);
        }
    }

    pub(crate) fn count_dtmf(&self) {
        self.metrics.dtmf_digits.inc();
    }

    pub(crate) fn update_call_metrics(&self) {
        self.metrics
            .calls_active
            .set(i64::try_from(self.calls.active()).unwrap_or(i64::MAX));
    }

    pub(crate) fn count_response(&self, r: &rsipstack::sip::Response) {
        SipMetrics::count(
            &self.metrics.responses,
            "code",
            r.status_code().code().to_string(),
        );
    }

    /// The registrar, for lookups.
    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    /// Bytes arrived from `from`: a datagram, or a frame a stream framer cut.
    pub fn on_bytes(&mut self, bytes: &[u8], from: Peer, now: Instant, wall: SystemTime) {
        match wire::decode(bytes, from.reliable) {
            Inbound::Request(r) => {
                SipMetrics::count(&self.metrics.requests, "method", r.method().to_string());
                self.transactions.on_request(*r, from, now);
            }
            Inbound::Response(r) => self.transactions.on_response(*r, now),
            Inbound::Rejected { why, reply } => self.reject(from, &why, reply),
            Inbound::KeepAlive => {}
        }
        self.pump(now, wall);
    }

    /// A stream broke on bad framing; `reply` answers the request that broke it.
    pub fn reject(&mut self, from: Peer, why: &str, reply: Option<Vec<u8>>) {
        let outcome = if reply.is_some() {
            "answered"
        } else {
            "dropped"
        };
        tracing::debug!(peer = %from.addr, %why, outcome, "malformed SIP message");
        SipMetrics::count(&self.metrics.rejected, "outcome", outcome.to_string());
        if let Some(bytes) = reply {
            self.out.push_back((from, bytes));
        }
    }

    /// The next piece of work for the call legs.
    pub fn poll_leg_request(&mut self) -> Option<LegRequest> {
        self.leg_requests.pop_front()
    }

    /// What became of a [`LegRequest`].
    pub fn on_leg_reply(&mut self, reply: LegReply, now: Instant, wall: SystemTime) {
        match reply {
            LegReply::Ready { task, media } => self.on_legs_ready(task, media, now, wall),
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
        self.pump(now, wall);
    }

    /// The next bytes to send.
    pub fn poll_transmit(&mut self) -> Option<(Peer, Vec<u8>)> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] is due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let held = self.held.values().map(|h| h.until).min();
        match (self.transactions.poll_timeout(), held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs due timers and housekeeping.
    pub fn handle_timeout(&mut self, now: Instant, wall: SystemTime) {
        self.release_overdue_answers(now);
        self.transactions.handle_timeout(now);
        self.registrar.expire(wall);
        self.pump(now, wall);
    }

    pub(crate) fn pump(&mut self, now: Instant, wall: SystemTime) {
        while let Some(o) = self.transactions.poll_output() {
            match o {
                Output::Transmit { to, bytes } => self.out.push_back((to, bytes)),
                Output::Request { key, request, from } => {
                    if self.take_over_if_replica(&request, now) == Takeover::Waiting {
                        self.refuse_until_approved(&key, &request, now);
                    } else {
                        self.serve(&key, &request, from, now, wall)
                    }
                }
                Output::Ack { request, .. } => {
                    self.take_over_if_replica(&request, now);
                    self.on_ack(&request)
                }
                Output::Response { key, response } => {
                    self.on_client_response(&key, &response, now, wall)
                }
                Output::Timeout { key } => self.on_client_timeout(&key, now, wall),
            }
        }
        let (server, client) = self.transactions.len();
        self.metrics
            .transactions
            .set(i64::try_from(server + client).unwrap_or(i64::MAX));
        self.metrics
            .registered_users
            .set(i64::try_from(self.registrar.registered_users(wall)).unwrap_or(i64::MAX));
    }

    pub(crate) fn tag(&mut self) -> String {
        self.next_tag += 1;
        format!("vc{:x}{:x}", std::process::id(), self.next_tag)
    }

    fn serve(&mut self, key: &TxKey, req: &Request, from: Peer, now: Instant, wall: SystemTime) {
        match req.method() {
            Method::Invite => return self.on_invite(key, req, from, now, wall),
            Method::Bye => return self.on_bye(key, req, now, wall),
            Method::Cancel => return self.on_cancel(key, req, now, wall),
            _ => {}
        }
        let tag = self.tag();
        let response = match req.method() {
            Method::Options if self.lifecycle != Lifecycle::Serving => {
                let mut r = response_to(req, 503, Some(&tag));
                r.headers.push(make_header("Retry-After", "5".into()));
                match self.lifecycle {
                    Lifecycle::Gone | Lifecycle::Left => {
                        r.headers.push(make_header(STATE_HEADER, "gone".into()));
                    }
                    Lifecycle::Starting => {
                        r.headers.push(make_header(STATE_HEADER, "starting".into()));
                    }
                    Lifecycle::Serving | Lifecycle::Draining => {}
                }
                r
            }
            Method::Options => {
                let mut r = response_to(req, 200, Some(&tag));
                r.headers.push(make_header("Allow", ALLOW.into()));
                r.headers
                    .push(make_header("Accept", "application/sdp".into()));
                r
            }
            Method::Register => {
                let r = self.registrar.register(req, from, &tag, wall);
                self.share_registrations(wall);
                r
            }
            // In-dialog requests for a dialog this node does not have.
            Method::Update | Method::Info | Method::PRack => response_to(req, 481, Some(&tag)),
            _ => {
                let mut r = response_to(req, 501, Some(&tag));
                r.headers.push(make_header("Allow", ALLOW.into()));
                r
            }
        };
        self.count_response(&response);
        if let Err(e) = self.transactions.respond(key, response, now) {
            tracing::warn!(error = %e, "cannot answer a request");
        }
    }
}
