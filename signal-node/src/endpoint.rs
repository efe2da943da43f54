//! The SIP endpoint of a signal member, sans I/O: bytes in (with where they
//! came from), bytes out, timers. It decodes, runs the transactions and
//! routes what they deliver: OPTIONS (the edges' heartbeats, answered from
//! the member's [`Lifecycle`]) and REGISTER here, calls to the
//! [`B2bua`]; a request for a dialog that does not exist gets 481, a
//! method it does not serve 501. Registrations are shared with the other
//! members as task events.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use rsipstack::sip::headers::make_header;
use rsipstack::sip::{Method, Request, Response};
use voicecluster_api::grpc::task_event::Kind;
use voicecluster_api::grpc::{self, DirectorySnapshot, FailoverReport, TaskEvent};

use crate::b2bua::takeover::Takeover;
use crate::b2bua::{At, B2bua, Stack};
use crate::calls::CallRecord;
use crate::legs::{LegReply, LegRequest};
use crate::lifecycle::Lifecycle;
use crate::metrics::SipMetrics;
use crate::registrar::{Binding, Registrar};
use crate::tags::Tags;
use crate::task_events::{Outbound, REGISTRAR_TASK, binding_from_proto, registrations};
use crate::transaction::{Output, Peer, Timers, Transactions, TxKey, response_to};
use crate::wire::private::STATE_HEADER;
use crate::wire::{self, Inbound};

/// The methods this endpoint serves.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, REGISTER";

/// One signal member's SIP endpoint.
pub struct Endpoint {
    transactions: Transactions,
    registrar: Registrar,
    tags: Tags,
    /// The calls.
    pub b2bua: B2bua,
    lifecycle: Lifecycle,
    /// This member's TaskEvents address; without it nothing is shared.
    member: Option<String>,
    /// The registrar's task events for other members.
    events_out: VecDeque<(u64, Outbound)>,
    /// Members whose answers to this member's sync all arrived.
    synced: VecDeque<String>,
    metrics: SipMetrics,
    out: VecDeque<(Peer, Vec<u8>)>,
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
            tags: Tags::default(),
            b2bua: B2bua::new(local, media, metrics.clone()),
            lifecycle: Lifecycle::Serving,
            member: None,
            events_out: VecDeque::new(),
            synced: VecDeque::new(),
            metrics,
            out: VecDeque::new(),
        }
    }

    /// Shares registrations and calls with the other members, as member
    /// `member` (its TaskEvents address).
    pub fn with_member(mut self, member: String) -> Self {
        self.b2bua.member = Some(member.clone());
        self.member = Some(member);
        self
    }

    /// The B2BUA and the layers under it, borrowed apart.
    fn split(&mut self) -> (&mut B2bua, Stack<'_>) {
        (
            &mut self.b2bua,
            Stack {
                tx: &mut self.transactions,
                registrar: &mut self.registrar,
                tags: &mut self.tags,
            },
        )
    }

    /// Moves the member along its life (see [`Lifecycle`]).
    pub fn set_lifecycle(&mut self, to: Lifecycle) {
        if self.lifecycle != to {
            tracing::info!(from = ?self.lifecycle, ?to, calls = self.b2bua.active(), "member lifecycle");
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
        self.b2bua.settled()
    }

    /// The next task event for another member, with the sending task.
    pub fn poll_task_event(&mut self) -> Option<(u64, Outbound)> {
        self.events_out
            .pop_front()
            .or_else(|| self.b2bua.poll_task_event())
    }

    /// The next member whose answers to this member's sync all arrived.
    pub fn poll_sync_done(&mut self) -> Option<String> {
        self.synced.pop_front()
    }

    /// An event from another member for one of this member's tasks.
    pub fn on_task_event(&mut self, event: TaskEvent, now: Instant, wall: SystemTime) {
        let (Some(to), Some(kind)) = (event.to, event.kind) else {
            return;
        };
        match kind {
            Kind::Registrations(r) if to.task == REGISTRAR_TASK => {
                let bindings: Vec<Binding> =
                    r.bindings.iter().filter_map(binding_from_proto).collect();
                if bindings.len() != r.bindings.len() {
                    tracing::warn!(user = %r.user, "bindings from another member dropped: bad source address");
                }
                self.registrar.replace(&r.user, bindings, wall);
            }
            Kind::Sync(_) if to.task == REGISTRAR_TASK => {
                let Some(from) = event.from else { return };
                let mut answers: Vec<(u64, Kind)> = self
                    .registrar
                    .users(wall)
                    .into_iter()
                    .map(|user| {
                        let bindings = self.registrar.lookup(&user, wall);
                        (REGISTRAR_TASK, registrations(&user, &bindings))
                    })
                    .collect();
                // A member (re)started: it gets back the replicas it needs.
                answers.extend(self.b2bua.on_member_back(&from.member));
                answers.push((REGISTRAR_TASK, Kind::SyncDone(grpc::SyncDone {})));
                self.events_out
                    .push_back((REGISTRAR_TASK, Outbound::InOrder(from, answers)));
            }
            Kind::SyncDone(_) if to.task == REGISTRAR_TASK => {
                if let Some(from) = event.from {
                    self.synced.push_back(from.member);
                }
            }
            kind => {
                let (b2bua, mut sip) = self.split();
                b2bua.on_task_event(&mut sip, (to.task, event.from), kind, At { now, wall });
            }
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

    /// Calls in progress.
    pub fn active_calls(&self) -> usize {
        self.b2bua.active()
    }

    /// Takes the records of the calls finished so far, for billing.
    pub fn take_records(&mut self) -> Vec<CallRecord> {
        self.b2bua.take_records()
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
        self.b2bua.poll_leg_request()
    }

    /// What became of a [`LegRequest`].
    pub fn on_leg_reply(&mut self, reply: LegReply, now: Instant, wall: SystemTime) {
        let (b2bua, mut sip) = self.split();
        b2bua.on_leg_reply(&mut sip, reply, At { now, wall });
        self.pump(now, wall);
    }

    /// Call `task` has no buddy to hold its replica: nothing to wait for.
    pub fn on_no_buddy(&mut self, task: u64, now: Instant, wall: SystemTime) {
        let (b2bua, mut sip) = self.split();
        b2bua.on_no_buddy(&mut sip, task, now);
        self.pump(now, wall);
    }

    /// Calls whose latest replica no buddy confirmed are replicated again.
    pub fn retry_unconfirmed(&mut self, now: Instant, wall: SystemTime) {
        self.b2bua.retry_unconfirmed();
        self.pump(now, wall);
    }

    /// The buddy changed (a member left or joined): the new one gets every
    /// answered call.
    pub fn on_buddy_changed(&mut self, now: Instant, wall: SystemTime) {
        self.b2bua.on_buddy_changed();
        self.pump(now, wall);
    }

    /// A new Directory version (see [`B2bua::on_directory`]).
    pub fn on_directory(&mut self, snapshot: &DirectorySnapshot, now: Instant, wall: SystemTime) {
        self.b2bua.on_directory(snapshot);
        self.pump(now, wall);
    }

    /// The users from now on (user → HA1): one that is gone can no longer
    /// register or call, and their bindings go.
    pub fn put_users(&mut self, users: crate::digest::Users, now: Instant, wall: SystemTime) {
        let gone = self.registrar.put_users(users);
        if !gone.is_empty() {
            tracing::info!(users = ?gone, "users removed by the configuration");
        }
        self.pump(now, wall);
    }

    /// What the operator should know of this member's failover work.
    pub fn failover_report(&self) -> FailoverReport {
        self.b2bua.failover_report()
    }

    /// The next bytes to send.
    pub fn poll_transmit(&mut self) -> Option<(Peer, Vec<u8>)> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] is due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        match (self.transactions.poll_timeout(), self.b2bua.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs due timers and housekeeping.
    pub fn handle_timeout(&mut self, now: Instant, wall: SystemTime) {
        let (b2bua, mut sip) = self.split();
        b2bua.release_overdue_answers(&mut sip, now);
        self.transactions.handle_timeout(now);
        self.registrar.expire(wall);
        self.pump(now, wall);
    }

    /// Routes what the transactions delivered until there is nothing left.
    fn pump(&mut self, now: Instant, wall: SystemTime) {
        while let Some(o) = self.transactions.poll_output() {
            match o {
                Output::Transmit { to, bytes } => self.out.push_back((to, bytes)),
                Output::Request { key, request, from } => {
                    let (b2bua, mut sip) = self.split();
                    if b2bua.take_over_if_replica(&request) == Takeover::Waiting {
                        b2bua.refuse_until_approved(&mut sip, &key, &request, now);
                    } else {
                        self.serve(&key, &request, from, now, wall)
                    }
                }
                Output::Ack { request, .. } => {
                    let (b2bua, mut sip) = self.split();
                    b2bua.take_over_if_replica(&request);
                    b2bua.on_ack(&mut sip, &request)
                }
                Output::Response { key, response } => {
                    let (b2bua, mut sip) = self.split();
                    b2bua.on_client_response(&mut sip, &key, &response, At { now, wall })
                }
                Output::Timeout { key } => {
                    let (b2bua, mut sip) = self.split();
                    b2bua.on_client_timeout(&mut sip, &key, At { now, wall })
                }
            }
        }
        let (server, client) = self.transactions.len();
        SipMetrics::set(&self.metrics.transactions, server + client);
        SipMetrics::set(
            &self.metrics.registered_users,
            self.registrar.registered_users(wall),
        );
    }

    fn serve(&mut self, key: &TxKey, req: &Request, from: Peer, now: Instant, wall: SystemTime) {
        let (b2bua, mut sip) = self.split();
        match req.method() {
            Method::Invite => return b2bua.on_invite(&mut sip, key, req, from, At { now, wall }),
            Method::Bye => return b2bua.on_bye(&mut sip, key, req, At { now, wall }),
            Method::Cancel => return b2bua.on_cancel(&mut sip, key, req, At { now, wall }),
            _ => {}
        }
        let tag = self.tags.tag();
        let response = match req.method() {
            Method::Options => self.heartbeat_answer(req, &tag),
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
        self.metrics.response(&response);
        if let Err(e) = self.transactions.respond(key, response, now) {
            tracing::warn!(error = %e, "cannot answer a request");
        }
    }

    /// OPTIONS: the edges' heartbeats hear where the member is in its life.
    fn heartbeat_answer(&self, req: &Request, tag: &str) -> Response {
        if self.lifecycle == Lifecycle::Serving {
            let mut r = response_to(req, 200, Some(tag));
            r.headers.push(make_header("Allow", ALLOW.into()));
            r.headers
                .push(make_header("Accept", "application/sdp".into()));
            return r;
        }
        let mut r = response_to(req, 503, Some(tag));
        r.headers.push(make_header("Retry-After", "5".into()));
        let state = match self.lifecycle {
            Lifecycle::Gone | Lifecycle::Left => Some("gone"),
            Lifecycle::Starting => Some("starting"),
            Lifecycle::Serving | Lifecycle::Draining => None,
        };
        if let Some(state) = state {
            r.headers.push(make_header(STATE_HEADER, state.into()));
        }
        r
    }
}
