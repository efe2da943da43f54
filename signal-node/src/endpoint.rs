//! The SIP endpoint of a signal node, sans I/O: bytes in (with where they
//! came from), bytes out, timers. It decodes, runs the transactions and
//! answers what the node serves today: OPTIONS and REGISTER; a request for a
//! dialog that does not exist gets 481, anything else 501.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rsipstack::sip::headers::make_header;
use rsipstack::sip::{Method, Request};

use crate::registrar::Registrar;
use crate::transaction::{Output, Peer, Timers, Transactions, TxKey, response_to};
use crate::wire::{self, Inbound};

/// The methods this endpoint answers with something other than 501.
pub const ALLOW: &str = "OPTIONS, REGISTER";

type Labels = Vec<(String, String)>;

/// SIP metrics of a signal node.
#[derive(Clone, Default)]
pub struct SipMetrics {
    requests: Family<Labels, Counter>,
    responses: Family<Labels, Counter>,
    rejected: Family<Labels, Counter>,
    registered_users: Gauge,
    transactions: Gauge,
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
        m
    }

    fn count(family: &Family<Labels, Counter>, key: &str, value: String) {
        family.get_or_create(&vec![(key.to_string(), value)]).inc();
    }
}

/// One signal node's SIP endpoint.
pub struct Endpoint {
    transactions: Transactions,
    registrar: Registrar,
    metrics: SipMetrics,
    out: VecDeque<(Peer, Vec<u8>)>,
    next_tag: u64,
}

impl Endpoint {
    /// An endpoint registering users through `registrar`.
    pub fn new(registrar: Registrar, timers: Timers, metrics: SipMetrics) -> Self {
        Self {
            transactions: Transactions::new(timers),
            registrar,
            metrics,
            out: VecDeque::new(),
            next_tag: 0,
        }
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

    /// The next bytes to send.
    pub fn poll_transmit(&mut self) -> Option<(Peer, Vec<u8>)> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] is due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.transactions.poll_timeout()
    }

    /// Runs due timers and housekeeping.
    pub fn handle_timeout(&mut self, now: Instant, wall: SystemTime) {
        self.transactions.handle_timeout(now);
        self.registrar.expire(wall);
        self.pump(now, wall);
    }

    fn pump(&mut self, now: Instant, wall: SystemTime) {
        while let Some(o) = self.transactions.poll_output() {
            match o {
                Output::Transmit { to, bytes } => self.out.push_back((to, bytes)),
                Output::Request { key, request, from } => {
                    self.serve(&key, &request, from, now, wall)
                }
                // No dialogs yet: nothing to acknowledge, nothing sent.
                Output::Ack { .. } | Output::Response { .. } | Output::Timeout { .. } => {}
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

    fn tag(&mut self) -> String {
        self.next_tag += 1;
        format!("vc{:x}{:x}", std::process::id(), self.next_tag)
    }

    fn serve(&mut self, key: &TxKey, req: &Request, from: Peer, now: Instant, wall: SystemTime) {
        let tag = self.tag();
        let response = match req.method() {
            Method::Options => {
                let mut r = response_to(req, 200, Some(&tag));
                r.headers.push(make_header("Allow", ALLOW.into()));
                r.headers
                    .push(make_header("Accept", "application/sdp".into()));
                r
            }
            Method::Register => self.registrar.register(req, from, &tag, wall),
            // In-dialog requests for a dialog this node does not have.
            Method::Bye | Method::Cancel | Method::Update | Method::Info | Method::PRack => {
                response_to(req, 481, Some(&tag))
            }
            _ => {
                let mut r = response_to(req, 501, Some(&tag));
                r.headers.push(make_header("Allow", ALLOW.into()));
                r
            }
        };
        SipMetrics::count(
            &self.metrics.responses,
            "code",
            response.status_code().code().to_string(),
        );
        if let Err(e) = self.transactions.respond(key, response, now) {
            tracing::warn!(error = %e, "cannot answer a request");
        }
    }
}
