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
//!   adds to dialog-creating requests (`flow`). A request from a backend
//!   routed through the edge goes back along that flow, through NAT and
//!   over the device's own TCP connection.
//! - Responses follow the Via chain (`via`): the edge's own Via is
//!   removed and the next one says where to.
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

use voicecluster_api::grpc::{BackendHealth, FailoverReport};

use crate::rendezvous::{buddy, fnv, ranked};
use crate::transaction::Peer;
use crate::wire::headers::{target_addr, uri_of};
use crate::wire::private::{FAILOVER_HEADER, HANDOVER_PARAM, STATE_HEADER};
use crate::wire::{self, Inbound};

pub mod drain;
mod flow;
pub mod heartbeat;
mod message;
mod metrics;
mod via;

pub use heartbeat::{Health, HeartbeatConfig, Heartbeats};
pub use metrics::EdgeMetrics;

use flow::{device_flow, edge_route, pinned_backend};
use message::Message;

/// The live backends' SIP addresses, asked for each message.
pub type Backends = Box<dyn Fn() -> Vec<SocketAddr> + Send>;

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
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        // Before the first round, at once.
        Some(self.heartbeats.poll_timeout().unwrap_or(now))
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
        let health = metrics::health_label(c.health);
        match c.health {
            Health::Down => {
                tracing::warn!(backend = %c.backend, "backend missed its heartbeats: down")
            }
            _ => tracing::info!(backend = %c.backend, health, "backend answers heartbeats"),
        }
        self.metrics.backend_changed(c.health);
    }

    fn count_up(&self, candidates: &[SocketAddr]) {
        let up = candidates
            .iter()
            .filter(|b| self.heartbeats.health(b) == Health::Up)
            .count();
        self.metrics.backends_up(up);
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
        self.metrics.dropped(outcome);
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
        let ours = msg.top_via().is_some_and(|v| {
            v.branch()
                .is_some_and(|b| b.starts_with(heartbeat::BRANCH_PREFIX))
        });
        if !ours {
            return false;
        }
        let state = msg
            .first(STATE_HEADER)
            .unwrap_or_default()
            .trim()
            .to_string();
        if let Some(c) = self.heartbeats.on_answer(from, msg.status(), &state, now) {
            self.changed(c);
            let candidates = (self.backends)();
            self.count_up(&candidates);
        }
        true
    }

    fn drop_message(&self, why: &str) {
        self.metrics.dropped(why);
    }

    /// Removes the top Route when it is the edge's own, and gives it back.
    fn take_own_route(&self, msg: &mut Message) -> Option<String> {
        let route = msg
            .top("Route")
            .filter(|r| target_addr(&uri_of(r)) == Some(self.local))?;
        msg.pop("Route");
        Some(route)
    }

    /// Answers a request statelessly (never an ACK).
    fn refuse(&mut self, msg: &Message, to: Peer, code: u16) {
        if msg.method() == "ACK" {
            return self.drop_message("unroutable-ack");
        }
        self.metrics.refused(code);
        self.out.push_back((to, msg.answer(code)));
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

    /// A device's request, to a backend.
    fn forward_to_backend(
        &mut self,
        mut msg: Message,
        from: Peer,
        backends: &[SocketAddr],
        now: Instant,
    ) {
        let Some(branch) = msg.mark_received(from.addr) else {
            return self.drop_message("bad-via");
        };
        if !msg.hop() {
            return self.refuse(&msg, from, 483);
        }
        if self.draining && msg.dialog_creating() {
            return self.refuse(&msg, from, 503);
        }
        let pinned = self
            .take_own_route(&mut msg)
            .and_then(|route| pinned_backend(&route));
        // A device cannot make a member take a call over.
        msg.remove_all(FAILOVER_HEADER);
        let Some(backend) = self.backend_for(&mut msg, pinned, backends, now) else {
            let call_id = msg.first("Call-ID").unwrap_or_default();
            tracing::warn!(%call_id, "no live backend");
            return self.refuse(&msg, from, 503);
        };
        let me = edge_route(self.local, from, backend);
        if msg.method() == "REGISTER" {
            msg.push_top("Path", me);
        } else if msg.dialog_creating() {
            msg.push_top("Record-Route", me);
        }
        self.push_via(&mut msg, false, &branch);
        self.metrics.forwarded("to_backend", "request");
        let to = Peer {
            addr: backend,
            reliable: false,
        };
        self.out.push_back((to, msg.bytes()));
    }

    /// Where a device's request goes: the backend its dialog is `pinned`
    /// to while that one is not down, else that backend's buddy; a request
    /// of no dialog goes where its Call-ID says.
    fn backend_for(
        &self,
        msg: &mut Message,
        pinned: Option<SocketAddr>,
        backends: &[SocketAddr],
        now: Instant,
    ) -> Option<SocketAddr> {
        let call_id = msg.first("Call-ID").unwrap_or_default().to_string();
        match pinned {
            Some(b) if backends.contains(&b) && self.heartbeats.health(&b) != Health::Down => {
                Some(b)
            }
            Some(b) => self.fail_over(msg, b, backends, &call_id),
            None => self.choose(&call_id, backends, now),
        }
    }

    /// The dialogs of `down` go to the member holding their replicas, its
    /// buddy among the backends that are up; the request names `down` in
    /// [`FAILOVER_HEADER`] so the buddy takes the call over.
    fn fail_over(
        &self,
        msg: &mut Message,
        down: SocketAddr,
        backends: &[SocketAddr],
        call_id: &str,
    ) -> Option<SocketAddr> {
        let up: Vec<SocketAddr> = backends
            .iter()
            .copied()
            .filter(|c| self.heartbeats.health(c) == Health::Up)
            .collect();
        let to = buddy(down, &up)?;
        tracing::info!(%call_id, %down, buddy = %to, "in-dialog request to the buddy");
        self.metrics.failover();
        let said = if self.heartbeats.said_gone(&down) {
            format!("{down};{HANDOVER_PARAM}")
        } else {
            down.to_string()
        };
        msg.headers.push((FAILOVER_HEADER.to_string(), said));
        Some(to)
    }

    /// A backend's request, to a device along the flow the route names.
    fn forward_to_client(&mut self, mut msg: Message, from: Peer) {
        let branch = msg
            .top_via()
            .and_then(|v| v.branch().map(str::to_string))
            .unwrap_or_default();
        if !msg.hop() {
            return self.refuse(&msg, from, 483);
        }
        let flow = self
            .take_own_route(&mut msg)
            .and_then(|route| device_flow(&route));
        let target = flow.or_else(|| {
            // Without a flow token, the Request-URI says where (UDP).
            Some(Peer {
                addr: target_addr(msg.request_uri()?)?,
                reliable: false,
            })
        });
        let Some(target) = target else {
            return self.refuse(&msg, from, 502);
        };
        if msg.dialog_creating() {
            msg.push_top("Record-Route", edge_route(self.local, target, from.addr));
        }
        self.push_via(&mut msg, target.reliable, &branch);
        self.metrics.forwarded("to_client", "request");
        self.out.push_back((target, msg.bytes()));
    }

    /// A response: the edge's Via comes off and the next one says where to.
    fn response(&mut self, mut msg: Message, from_backend: bool) {
        let ours = msg.top_via().and_then(|v| v.sent_by_addr()) == Some(self.local);
        if !ours {
            return self.drop_message("not-via-edge");
        }
        msg.pop("Via");
        let Some(next) = msg.top_via().and_then(|v| v.response_peer()) else {
            return self.drop_message("no-next-via");
        };
        let direction = if from_backend {
            "to_client"
        } else {
            "to_backend"
        };
        self.metrics.forwarded(direction, "response");
        self.out.push_back((next, msg.bytes()));
    }
}

#[cfg(test)]
mod tests;
