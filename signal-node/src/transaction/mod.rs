//! The RFC 3261 §17 transaction layer as a sans-I/O state machine.
//!
//! Input: parsed messages with where they came from, the transaction user's
//! responses and requests, and the current time. Output: bytes to send,
//! messages for the transaction user, and the next instant a timer is due.
//! It never reads a clock or a socket, so every retransmission and timeout
//! is tested deterministically.
//!
//! INVITE server transactions follow RFC 6026: after a 2xx they stay
//! `Accepted` for 64·T1 to absorb retransmitted INVITEs, and the 2xx
//! itself is retransmitted by the dialog layer until the ACK arrives.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rsipstack::sip::headers::make_header;
use rsipstack::sip::prelude::*;
use rsipstack::sip::{Header, Method, Request, Response};

/// Timer base values (RFC 3261 §17.1.1.1).
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    /// Round-trip estimate.
    pub t1: Duration,
    /// Longest retransmission interval for non-INVITE requests and INVITE responses.
    pub t2: Duration,
    /// Longest time a message stays in the network.
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// Where a message came from or goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Remote address.
    pub addr: SocketAddr,
    /// Whether the transport is reliable (TCP): no retransmissions then.
    pub reliable: bool,
}

/// Identifies a transaction: the top Via's branch and the method, with ACK
/// matching its INVITE (RFC 3261 §17.2.3; branches are RFC 3261 ones).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TxKey {
    /// The branch parameter.
    pub branch: String,
    /// INVITE, CANCEL, or another method.
    pub method: String,
}

impl TxKey {
    fn of(branch: &str, method: &Method) -> Self {
        let method = if *method == Method::Ack {
            Method::Invite
        } else {
            *method
        };
        Self {
            branch: branch.to_string(),
            method: method.to_string(),
        }
    }

    /// The INVITE transaction a CANCEL with this key cancels.
    pub fn cancelled_invite(&self) -> Self {
        Self {
            branch: self.branch.clone(),
            method: Method::Invite.to_string(),
        }
    }
}

/// What the layer hands out.
#[derive(Debug)]
pub enum Output {
    /// Bytes to send.
    Transmit {
        /// Destination.
        to: Peer,
        /// A whole message.
        bytes: Vec<u8>,
    },
    /// A new request for the transaction user; answer it with
    /// [`Transactions::respond`] under `key`.
    Request {
        /// The server transaction.
        key: TxKey,
        /// The request.
        request: Box<Request>,
        /// Where it came from.
        from: Peer,
    },
    /// An ACK for a 2xx: it belongs to a dialog, not a transaction.
    Ack {
        /// The ACK.
        request: Box<Request>,
        /// Where it came from.
        from: Peer,
    },
    /// A response to a request the transaction user sent.
    Response {
        /// The client transaction.
        key: TxKey,
        /// The response.
        response: Box<Response>,
    },
    /// A client transaction got no final response in time (Timer B or F):
    /// treat as 408.
    Timeout {
        /// The client transaction.
        key: TxKey,
    },
}

/// Misuse by the transaction user (never caused by the network).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxError {
    /// The server transaction is gone or already answered finally.
    #[error("no server transaction {0:?} awaiting a response")]
    NoSuchTransaction(TxKey),
    /// The request has no top Via with a branch.
    #[error("the request has no Via branch")]
    NoBranch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum TimerKind {
    /// Retransmit the request (A: INVITE, E: non-INVITE).
    Retransmit,
    /// Give up waiting (B: INVITE, F: non-INVITE).
    Give,
    /// Retransmit the final response (G).
    ResendResponse,
    /// Stop waiting for the ACK (H).
    AckWait,
    /// Forget the transaction (D, I, J, K, L, M).
    Forget,
}

#[derive(Debug, PartialEq, Eq)]
enum ServerState {
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
}

struct ServerTx {
    invite: bool,
    peer: Peer,
    state: ServerState,
    last_response: Option<Vec<u8>>,
    resend_interval: Duration,
}

#[derive(Debug, PartialEq, Eq)]
enum ClientState {
    Calling,
    Proceeding,
    Completed,
    Accepted,
}

struct ClientTx {
    invite: bool,
    peer: Peer,
    state: ClientState,
    request: Request,
    bytes: Vec<u8>,
    interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Side {
    Server,
    Client,
}

/// All transactions of one SIP endpoint.
pub struct Transactions {
    timers_cfg: Timers,
    server: HashMap<TxKey, ServerTx>,
    client: HashMap<TxKey, ClientTx>,
    /// Due instants; an entry fires only if it is still the transaction's
    /// current timer of that kind (stale ones are skipped).
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    scheduled: HashMap<u64, (Side, TxKey, TimerKind)>,
    current: HashMap<(Side, TxKey, TimerKind), u64>,
    next_timer: u64,
    out: VecDeque<Output>,
}

fn branch_of(m: &impl HeadersExt) -> Option<String> {
    let via = m.top_via_header().ok()?.typed().ok()?;
    via.branch().map(|b| b.to_string())
}

impl Transactions {
    /// An empty layer with these timers.
    pub fn new(timers: Timers) -> Self {
        Self {
            timers_cfg: timers,
            server: HashMap::new(),
            client: HashMap::new(),
            heap: BinaryHeap::new(),
            scheduled: HashMap::new(),
            current: HashMap::new(),
            next_timer: 0,
            out: VecDeque::new(),
        }
    }

    /// Open transactions (server, client).
    pub fn len(&self) -> (usize, usize) {
        (self.server.len(), self.client.len())
    }

    /// True when no transaction is open.
    pub fn is_empty(&self) -> bool {
        self.server.is_empty() && self.client.is_empty()
    }

    fn schedule(&mut self, side: Side, key: &TxKey, kind: TimerKind, at: Instant) {
        self.next_timer += 1;
        let id = self.next_timer;
        self.heap.push(Reverse((at, id)));
        self.scheduled.insert(id, (side, key.clone(), kind));
        if let Some(old) = self.current.insert((side, key.clone(), kind), id) {
            self.scheduled.remove(&old);
        }
    }

    fn cancel(&mut self, side: Side, key: &TxKey, kind: TimerKind) {
        if let Some(id) = self.current.remove(&(side, key.clone(), kind)) {
            self.scheduled.remove(&id);
        }
    }

    fn forget(&mut self, side: Side, key: &TxKey) {
        for kind in [
            TimerKind::Retransmit,
            TimerKind::Give,
            TimerKind::ResendResponse,
            TimerKind::AckWait,
            TimerKind::Forget,
        ] {
            self.cancel(side, key, kind);
        }
        match side {
            Side::Server => {
                self.server.remove(key);
            }
            Side::Client => {
                self.client.remove(key);
            }
        }
    }

    /// Forgets after `d`, or at once when `d` is zero (reliable transports).
    fn forget_after(&mut self, side: Side, key: &TxKey, d: Duration, now: Instant) {
        if d.is_zero() {
            self.forget(side, key);
        } else {
            self.schedule(side, key, TimerKind::Forget, now + d);
        }
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Self::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if self.scheduled.contains_key(&id) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            let Some((side, key, kind)) = self.scheduled.remove(&id) else {
                continue;
            };
            self.current.remove(&(side, key.clone(), kind));
            self.fire(side, &key, kind, now);
        }
    }

    fn fire(&mut self, side: Side, key: &TxKey, kind: TimerKind, now: Instant) {
        let t2 = self.timers_cfg.t2;
        match (side, kind) {
            (_, TimerKind::Forget) => self.forget(side, key),
            (Side::Server, TimerKind::ResendResponse) => {
                let Some(tx) = self.server.get_mut(key) else {
                    return;
                };
                if let Some(bytes) = &tx.last_response {
                    self.out.push_back(Output::Transmit {
                        to: tx.peer,
                        bytes: bytes.clone(),
                    });
                }
                tx.resend_interval = (tx.resend_interval * 2).min(t2);
                let next = now + tx.resend_interval;
                self.schedule(Side::Server, key, TimerKind::ResendResponse, next);
            }
            (Side::Server, TimerKind::AckWait) => {
                // No ACK ever came (Timer H).
                self.forget(Side::Server, key);
            }
            (Side::Client, TimerKind::Retransmit) => {
                let Some(tx) = self.client.get_mut(key) else {
                    return;
                };
                self.out.push_back(Output::Transmit {
                    to: tx.peer,
                    bytes: tx.bytes.clone(),
                });
                tx.interval = if tx.invite {
                    tx.interval * 2
                } else {
                    (tx.interval * 2).min(t2)
                };
                let next = now + tx.interval;
                self.schedule(Side::Client, key, TimerKind::Retransmit, next);
            }
            (Side::Client, TimerKind::Give) => {
                self.forget(Side::Client, key);
                self.out.push_back(Output::Timeout { key: key.clone() });
            }
            _ => {}
        }
    }
}

/// A response to `request` with the headers RFC 3261 §8.2.6.2 copies; a To
/// tag is added to anything but 100 when the request had none.
pub fn response_to(request: &Request, code: u16, to_tag: Option<&str>) -> Response {
    let mut headers = rsipstack::sip::Headers::default();
    for h in request.headers.iter() {
        match h {
            Header::Via(_) | Header::From(_) | Header::CallId(_) | Header::CSeq(_) => {
                headers.push(h.clone());
            }
            Header::To(to) => {
                let has_tag = to.tag().ok().flatten().is_some();
                match to_tag {
                    Some(tag) if !has_tag && code != 100 => {
                        headers.push(make_header("To", format!("{};tag={tag}", to.value())))
                    }
                    _ => headers.push(h.clone()),
                }
            }
            _ => {}
        }
    }
    headers.push(make_header("Content-Length", "0".into()));
    Response {
        status_code: code.into(),
        wire_reason: None,
        version: rsipstack::sip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

mod client;
mod server;

#[cfg(test)]
mod tests;
