//! The edge role: the SIP front door on internet-facing nodes, a stateless
//! proxy (RFC 3261 §16.11) between devices and the backend signal members.
//!
//! - A request from a device goes to a live backend chosen by Call-ID
//!   affinity (rendezvous hashing, so a backend that leaves moves only its
//!   own calls). In-dialog requests carry the edge's Record-Route, which
//!   names the backend the dialog lives on, so both sides of a B2BUA call
//!   stay on one backend whichever Call-ID they use.
//! - The edge records the device's flow (transport and source address) in
//!   a flow token in the Path it adds to REGISTERs and the Record-Route it
//!   adds to dialog-creating requests. A request from a backend routed
//!   through the edge goes back along that flow, through NAT and over the
//!   device's own TCP connection.
//! - Responses follow the Via chain: the edge's own Via is removed and the
//!   next one says where to.
//!
//! - Backends are probed with heartbeats ([`heartbeat`]); new calls go to
//!   live ones only, a backend that came back is ramped up, and the
//!   in-dialog requests of a backend that stopped answering go to its buddy
//!   ([`buddy`]), which holds a replica of its calls and takes them over.
//!
//! Nothing is kept per call, so any edge can carry any message of a dialog
//! and a restarted edge loses nothing.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use voicecluster_api::grpc::{BackendHealth, FailoverReport};

use crate::calls::{tag_of, target_addr, uri_of};
use crate::rendezvous::{buddy, fnv, ranked};
use crate::transaction::Peer;
use crate::wire::private::{FAILOVER_HEADER, HANDOVER_PARAM, STATE_HEADER};
use crate::wire::{self, Inbound, split_list};

pub mod drain;
pub mod heartbeat;
pub use heartbeat::{Health, HeartbeatConfig, Heartbeats};

/// The live backends' SIP addresses, asked for each message.
pub type Backends = Box<dyn Fn() -> Vec<SocketAddr> + Send>;

type Labels = Vec<(String, String)>;

/// Metrics of the edge role.
#[derive(Clone, Default)]
pub struct EdgeMetrics {
    forwarded: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    backends: Gauge,
    backend_changes: Family<Labels, Counter>,
    failovers: Counter,
}

impl EdgeMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "voicecluster_edge_forwarded",
            "SIP messages forwarded, by direction (to_backend, to_client) and kind",
            m.forwarded.clone(),
        );
        registry.register(
            "voicecluster_edge_refused",
            "Requests the edge answered itself, by status code",
            m.refused.clone(),
        );
        registry.register(
            "voicecluster_edge_dropped",
            "Messages the edge dropped, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "voicecluster_edge_backends",
            "Backends that answer the edge's heartbeats and take new calls",
            m.backends.clone(),
        );
        registry.register(
            "voicecluster_edge_backend_changes",
            "Backend health changes the heartbeats saw, by new health (up, draining, down)",
            m.backend_changes.clone(),
        );
        registry.register(
            "voicecluster_edge_failovers",
            "In-dialog requests sent to the buddy of a backend that is down",
            m.failovers.clone(),
        );
        m
    }

    fn inc(family: &Family<Labels, Counter>, labels: &[(&str, &str)]) {
        family
            .get_or_create(
                &labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
            .inc();
    }
}

/// A message as the edge handles it: lines it can rewrite, body untouched.
struct Message {
    start_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn parse(bytes: &[u8]) -> Option<Self> {
        let raw = wire::split(bytes).ok()?;
        // A datagram may carry more than Content-Length says; the rest is
        // not part of the message (wire::decode already checked it is not less).
        let len = wire::content_length(&raw).ok()?.unwrap_or(raw.body.len());
        Some(Self {
            start_line: raw.start_line.to_string(),
            headers: raw.headers.clone(),
            body: raw.body.get(..len)?.to_vec(),
        })
    }

    fn is_request(&self) -> bool {
        !self.start_line.starts_with("SIP/")
    }

    fn method(&self) -> &str {
        self.start_line.split(' ').next().unwrap_or_default()
    }

    fn first(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of the first `name` header (lists split).
    fn top(&self, name: &str) -> Option<String> {
        self.first(name)
            .and_then(|v| split_list(v).first().map(|s| s.to_string()))
    }

    /// Removes the first value of the first `name` header.
    fn pop(&mut self, name: &str) -> Option<String> {
        let i = self
            .headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))?;
        let values: Vec<String> = split_list(&self.headers[i].1)
            .into_iter()
            .map(str::to_string)
            .collect();
        let (first, rest) = values.split_first()?;
        if rest.is_empty() {
            self.headers.remove(i);
        } else {
            self.headers[i].1 = rest.join(", ");
        }
        Some(first.clone())
    }

    /// Replaces the first value of the first `name` header.
    fn set_top(&mut self, name: &str, value: String) {
        if self.pop(name).is_some() {
            self.push_top(name, value);
        }
    }

    /// Adds `value` before every other `name` header.
    fn push_top(&mut self, name: &str, value: String) {
        let i = self
            .headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
            .unwrap_or(self.headers.len());
        self.headers.insert(i, (name.to_string(), value));
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.start_line.clone();
        out.push_str("\r\n");
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        // Always stated: a message forwarded onto TCP needs it.
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// A device's flow as a URI parameter value.
fn flow_token(p: Peer) -> String {
    format!(
        "{}{}",
        if p.reliable { 't' } else { 'u' },
        hex(&p.addr.to_string())
    )
}

fn flow_of(token: &str) -> Option<Peer> {
    let reliable = match token.get(..1)? {
        "t" => true,
        "u" => false,
        _ => return None,
    };
    let addr = unhex(token.get(1..)?)?.parse().ok()?;
    Some(Peer { addr, reliable })
}

/// A URI parameter's value (`;name=value`).
fn uri_param(uri: &str, name: &str) -> Option<String> {
    uri.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// A Via value's transport, sent-by and parameters.
struct Via {
    transport: String,
    sent_by: String,
    params: Vec<(String, Option<String>)>,
}

impl Via {
    fn parse(value: &str) -> Option<Self> {
        let (proto, rest) = value.trim().split_once([' ', '\t'])?;
        let transport = proto.rsplit('/').next()?.trim().to_ascii_uppercase();
        let mut parts = rest.split(';');
        let sent_by = parts.next()?.trim().to_string();
        let params = parts
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                None => (p.trim().to_string(), None),
            })
            .collect();
        Some(Self {
            transport,
            sent_by,
            params,
        })
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_deref())
    }

    /// Where responses for this hop go (RFC 3261 §18.2.2, RFC 3581).
    fn response_peer(&self) -> Option<Peer> {
        let sent_by = target_addr(&format!("sip:{}", self.sent_by))?;
        let ip = self
            .param("received")
            .and_then(|r| r.trim_matches(['[', ']']).parse().ok())
            .unwrap_or(sent_by.ip());
        let port = self
            .param("rport")
            .and_then(|p| p.parse().ok())
            .unwrap_or(sent_by.port());
        Some(Peer {
            addr: SocketAddr::new(ip, port),
            reliable: self.transport != "UDP",
        })
    }

    fn text(&self) -> String {
        let mut s = format!("SIP/2.0/{} {}", self.transport, self.sent_by);
        for (k, v) in &self.params {
            match v {
                Some(v) => s.push_str(&format!(";{k}={v}")),
                None => s.push_str(&format!(";{k}")),
            }
        }
        s
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        483 => "Too Many Hops",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// The edge proxy, sans I/O: bytes in with where they came from, bytes out
/// with where they go.
pub struct Edge {
    /// The edge's address, in its Via, Path and Record-Route.
    local: SocketAddr,
    backends: Backends,
    heartbeats: Heartbeats,
    metrics: EdgeMetrics,
    out: VecDeque<(Peer, Vec<u8>)>,
    /// Heartbeats, sent from a socket of their own: the SIP port may be
    /// shared with a successor edge, which would get their answers.
    probes: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Stopping: new dialogs are refused (503), the running ones go on.
    draining: bool,
}

impl Edge {
    /// Stopping (or not): while draining, requests that would start a
    /// dialog get 503, so devices try another edge, and everything else
    /// (the calls already up) is forwarded as before.
    pub fn set_draining(&mut self, draining: bool) {
        if draining != self.draining {
            tracing::info!(draining, "edge drain");
        }
        self.draining = draining;
    }

    /// An edge at `local` forwarding to `backends`, probing them as
    /// `heartbeat` says.
    pub fn new(
        local: SocketAddr,
        backends: Backends,
        heartbeat: HeartbeatConfig,
        metrics: EdgeMetrics,
    ) -> Self {
        Self {
            local,
            backends,
            heartbeats: Heartbeats::new(heartbeat),
            metrics,
            out: VecDeque::new(),
            probes: VecDeque::new(),
            draining: false,
        }
    }

    /// Each backend's health, for the operator's status.
    pub fn failover_report(&self) -> FailoverReport {
        let backends = (self.backends)()
            .into_iter()
            .map(|b| BackendHealth {
                address: b.ip().to_string(),
                state: match self.heartbeats.health(&b) {
                    Health::Up => "Up",
                    Health::Draining => "Draining",
                    Health::Down => "Down",
                }
                .to_string(),
            })
            .collect();
        FailoverReport {
            backends,
            ..Default::default()
        }
    }

    /// When [`Self::handle_timeout`] is due (the next heartbeat).
    pub fn poll_timeout(&self) -> Option<Instant> {
        // Before the first round, at once.
        Some(self.heartbeats.poll_timeout().unwrap_or_else(Instant::now))
    }

    /// Sends the heartbeats that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.heartbeats.poll_timeout().is_some_and(|t| t > now) {
            return;
        }
        let candidates = (self.backends)();
        let (probes, changes) = self.heartbeats.probe(&candidates, self.local, now);
        self.probes.extend(probes);
        for c in changes {
            self.changed(c);
        }
        self.count_up(&candidates);
    }

    fn changed(&self, c: heartbeat::Change) {
        let health = match c.health {
            Health::Up => "up",
            Health::Draining => "draining",
            Health::Down => "down",
        };
        match c.health {
            Health::Down => {
                tracing::warn!(backend = %c.backend, "backend missed its heartbeats: down")
            }
            _ => tracing::info!(backend = %c.backend, health, "backend answers heartbeats"),
        }
        EdgeMetrics::inc(&self.metrics.backend_changes, &[("health", health)]);
    }

    fn count_up(&self, candidates: &[SocketAddr]) {
        let up = candidates
            .iter()
            .filter(|b| self.heartbeats.health(b) == Health::Up)
            .count();
        self.metrics
            .backends
            .set(i64::try_from(up).unwrap_or(i64::MAX));
    }

    /// The backend for a new call: the first in rendezvous order that is up
    /// and, while it ramps up, takes this call's share.
    fn choose(&self, call_id: &str, backends: &[SocketAddr], now: Instant) -> Option<SocketAddr> {
        let up: Vec<SocketAddr> = ranked(call_id, backends)
            .into_iter()
            .filter(|b| self.heartbeats.health(b) == Health::Up)
            .collect();
        // Where this call falls in [0, 1), independent of the ranking.
        let point = (fnv(&[b"share", call_id.as_bytes()]) % 10_000) as f64 / 10_000.0;
        up.iter()
            .copied()
            .find(|b| point < self.heartbeats.share(b, now))
            .or_else(|| up.first().copied())
    }

    /// The next bytes to send.
    pub fn poll_transmit(&mut self) -> Option<(Peer, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The next heartbeat to send (over UDP, from the probe socket, whose
    /// answers come back to [`Self::on_bytes`]).
    pub fn poll_probe(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.probes.pop_front()
    }

    /// A stream broke on bad framing; `reply` answers the request that broke it.
    pub fn reject(&mut self, from: Peer, why: &str, reply: Option<Vec<u8>>) {
        tracing::debug!(peer = %from.addr, %why, "malformed SIP message at the edge");
        let outcome = if reply.is_some() {
            "answered"
        } else {
            "malformed"
        };
        EdgeMetrics::inc(&self.metrics.dropped, &[("reason", outcome)]);
        if let Some(bytes) = reply {
            self.out.push_back((from, bytes));
        }
    }

    /// Bytes arrived from `from`: a datagram, or a frame a stream framer cut.
    pub fn on_bytes(&mut self, bytes: &[u8], from: Peer, now: Instant) {
        match wire::decode(bytes, from.reliable) {
            Inbound::KeepAlive => return,
            Inbound::Rejected { why, reply } => return self.reject(from, &why, reply),
            Inbound::Request(_) | Inbound::Response(_) => {}
        }
        let Some(msg) = Message::parse(bytes) else {
            return self.drop_message("unparsable");
        };
        let backends = (self.backends)();
        // Backends talk to the edge over UDP from their SIP port.
        let from_backend = !from.reliable && backends.contains(&from.addr);
        if !msg.is_request() && from_backend && self.heartbeat_answer(&msg, from.addr, now) {
            return;
        }
        match (msg.is_request(), from_backend) {
            (true, false) => self.forward_to_backend(msg, from, &backends, now),
            (true, true) => self.forward_to_client(msg, from),
            (false, _) => self.response(msg, from_backend),
        }
    }

    /// True when `msg` answers one of our heartbeats (and was counted).
    fn heartbeat_answer(&mut self, msg: &Message, from: SocketAddr, now: Instant) -> bool {
        let ours = msg
            .top("Via")
            .as_deref()
            .and_then(Via::parse)
            .and_then(|v| v.param("branch").map(str::to_string))
            .is_some_and(|b| b.starts_with(heartbeat::BRANCH_PREFIX));
        if !ours {
            return false;
        }
        let code = msg
            .start_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(500);
        let state = msg
            .first(STATE_HEADER)
            .unwrap_or_default()
            .trim()
            .to_string();
        if let Some(c) = self.heartbeats.on_answer(from, code, &state, now) {
            self.changed(c);
            let candidates = (self.backends)();
            self.count_up(&candidates);
        }
        true
    }

    fn drop_message(&self, why: &str) {
        EdgeMetrics::inc(&self.metrics.dropped, &[("reason", why)]);
    }

    fn is_ours(&self, route: &str) -> bool {
        target_addr(&uri_of(route)) == Some(self.local)
    }

    /// Answers a request statelessly (never an ACK).
    fn refuse(&mut self, msg: &Message, to: Peer, code: u16) {
        if msg.method() == "ACK" {
            return self.drop_message("unroutable-ack");
        }
        EdgeMetrics::inc(&self.metrics.refused, &[("code", &code.to_string())]);
        let mut text = format!("SIP/2.0 {code} {}\r\n", reason(code));
        for (n, v) in &msg.headers {
            let keep = ["Via", "From", "Call-ID", "CSeq"]
                .iter()
                .any(|k| n.eq_ignore_ascii_case(k));
            if keep {
                text.push_str(&format!("{n}: {v}\r\n"));
            } else if n.eq_ignore_ascii_case("To") {
                let tag = if tag_of(v).is_some() {
                    String::new()
                } else {
                    format!(";tag=edge{:x}", fnv(&[v.as_bytes()]))
                };
                text.push_str(&format!("To: {v}{tag}\r\n"));
            }
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        self.out.push_back((to, text.into_bytes()));
    }

    /// Max-Forwards less one; false when it ran out (RFC 3261 §16.3 step 3).
    fn hop(msg: &mut Message) -> bool {
        let left = msg
            .first("Max-Forwards")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(70);
        if left == 0 {
            return false;
        }
        msg.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("Max-Forwards"));
        msg.headers
            .push(("Max-Forwards".to_string(), (left - 1).to_string()));
        true
    }

    /// The edge's Via for a request it forwards: the branch is derived from
    /// the incoming one, so retransmissions and a CANCEL get the same one.
    fn push_via(&self, msg: &mut Message, reliable: bool, incoming_branch: &str) {
        let branch = format!(
            "z9hG4bKe{:x}",
            fnv(&[
                incoming_branch.as_bytes(),
                self.local.to_string().as_bytes()
            ])
        );
        let t = if reliable { "TCP" } else { "UDP" };
        msg.push_top("Via", format!("SIP/2.0/{t} {};branch={branch}", self.local));
    }

    fn dialog_creating(msg: &Message) -> bool {
        matches!(msg.method(), "INVITE" | "SUBSCRIBE" | "REFER")
            && msg.first("To").and_then(tag_of).is_none()
    }

    /// A device's request, to a backend.
    fn forward_to_backend(
        &mut self,
        mut msg: Message,
        from: Peer,
        backends: &[SocketAddr],
        now: Instant,
    ) {
        // RFC 3581: the device's real address goes in its Via, so the
        // responses find it behind NAT.
        let Some(mut via) = msg.top("Via").as_deref().and_then(Via::parse) else {
            return self.drop_message("bad-via");
        };
        via.params.retain(|(k, _)| {
            !k.eq_ignore_ascii_case("received") && !k.eq_ignore_ascii_case("rport")
        });
        via.params
            .push(("received".to_string(), Some(from.addr.ip().to_string())));
        via.params
            .push(("rport".to_string(), Some(from.addr.port().to_string())));
        let branch = via.param("branch").unwrap_or_default().to_string();
        msg.set_top("Via", via.text());
        if !Self::hop(&mut msg) {
            return self.refuse(&msg, from, 483);
        }
        if self.draining && Self::dialog_creating(&msg) {
            return self.refuse(&msg, from, 503);
        }
        let mut pinned = None;
        if let Some(route) = msg.top("Route")
            && self.is_ours(&route)
        {
            msg.pop("Route");
            pinned = uri_param(&uri_of(&route), "vb")
                .and_then(|v| unhex(&v))
                .and_then(|v| v.parse::<SocketAddr>().ok());
        }
        let call_id = msg.first("Call-ID").unwrap_or_default().to_string();
        // A device cannot make a member take a call over.
        msg.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case(FAILOVER_HEADER));
        let backend = match pinned {
            Some(b) if backends.contains(&b) && self.heartbeats.health(&b) != Health::Down => {
                Some(b)
            }
            Some(b) => {
                // Its dialogs go to the member holding their replicas.
                let up: Vec<SocketAddr> = backends
                    .iter()
                    .copied()
                    .filter(|c| self.heartbeats.health(c) == Health::Up)
                    .collect();
                let to = buddy(b, &up);
                if let Some(to) = to {
                    tracing::info!(%call_id, down = %b, buddy = %to, "in-dialog request to the buddy");
                    self.metrics.failovers.inc();
                    let said = if self.heartbeats.said_gone(&b) {
                        format!("{b};{HANDOVER_PARAM}")
                    } else {
                        b.to_string()
                    };
                    msg.headers.push((FAILOVER_HEADER.to_string(), said));
                }
                to
            }
            None => self.choose(&call_id, backends, now),
        };
        let Some(backend) = backend else {
            tracing::warn!(%call_id, "no live backend");
            return self.refuse(&msg, from, 503);
        };
        let me = format!(
            "<sip:{};lr;ft={};vb={}>",
            self.local,
            flow_token(from),
            hex(&backend.to_string())
        );
        if msg.method() == "REGISTER" {
            msg.push_top("Path", me);
        } else if Self::dialog_creating(&msg) {
            msg.push_top("Record-Route", me);
        }
        self.push_via(&mut msg, false, &branch);
        EdgeMetrics::inc(
            &self.metrics.forwarded,
            &[("direction", "to_backend"), ("kind", "request")],
        );
        self.out.push_back((
            Peer {
                addr: backend,
                reliable: false,
            },
            msg.bytes(),
        ));
    }

    /// A backend's request, to a device along the flow the route names.
    fn forward_to_client(&mut self, mut msg: Message, from: Peer) {
        let branch = msg
            .top("Via")
            .as_deref()
            .and_then(Via::parse)
            .and_then(|v| v.param("branch").map(str::to_string))
            .unwrap_or_default();
        if !Self::hop(&mut msg) {
            return self.refuse(&msg, from, 483);
        }
        let mut flow = None;
        if let Some(route) = msg.top("Route")
            && self.is_ours(&route)
        {
            msg.pop("Route");
            flow = uri_param(&uri_of(&route), "ft").and_then(|t| flow_of(&t));
        }
        let target = flow.or_else(|| {
            // Without a flow token, the Request-URI says where (UDP).
            let uri = msg.start_line.split(' ').nth(1)?;
            Some(Peer {
                addr: target_addr(uri)?,
                reliable: false,
            })
        });
        let Some(target) = target else {
            return self.refuse(&msg, from, 502);
        };
        if Self::dialog_creating(&msg) {
            let me = format!(
                "<sip:{};lr;ft={};vb={}>",
                self.local,
                flow_token(target),
                hex(&from.addr.to_string())
            );
            msg.push_top("Record-Route", me);
        }
        self.push_via(&mut msg, target.reliable, &branch);
        EdgeMetrics::inc(
            &self.metrics.forwarded,
            &[("direction", "to_client"), ("kind", "request")],
        );
        self.out.push_back((target, msg.bytes()));
    }

    /// A response: the edge's Via comes off and the next one says where to.
    fn response(&mut self, mut msg: Message, from_backend: bool) {
        let ours = msg
            .top("Via")
            .as_deref()
            .and_then(Via::parse)
            .and_then(|v| target_addr(&format!("sip:{}", v.sent_by)))
            == Some(self.local);
        if !ours {
            return self.drop_message("not-via-edge");
        }
        msg.pop("Via");
        let Some(next) = msg
            .top("Via")
            .as_deref()
            .and_then(Via::parse)
            .and_then(|v| v.response_peer())
        else {
            return self.drop_message("no-next-via");
        };
        let direction = if from_backend {
            "to_client"
        } else {
            "to_backend"
        };
        EdgeMetrics::inc(
            &self.metrics.forwarded,
            &[("direction", direction), ("kind", "response")],
        );
        self.out.push_back((next, msg.bytes()));
    }
}

#[cfg(test)]
mod tests;
