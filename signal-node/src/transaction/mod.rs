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

    /// A request arrived.
    pub fn on_request(&mut self, request: Request, from: Peer, now: Instant) {
        let Some(branch) = branch_of(&request) else {
            // The wire layer refuses these; nothing to match on.
            return;
        };
        let key = TxKey::of(&branch, request.method());
        if request.method() == &Method::Ack {
            match self.server.get_mut(&key) {
                Some(tx) if tx.state == ServerState::Completed => {
                    // ACK for a non-2xx final response.
                    tx.state = ServerState::Confirmed;
                    self.cancel(Side::Server, &key, TimerKind::ResendResponse);
                    self.cancel(Side::Server, &key, TimerKind::AckWait);
                    let t4 = if from.reliable {
                        Duration::ZERO
                    } else {
                        self.timers_cfg.t4
                    };
                    self.forget_after(Side::Server, &key, t4, now);
                }
                Some(tx) if tx.state == ServerState::Confirmed => {}
                _ => self.out.push_back(Output::Ack {
                    request: Box::new(request),
                    from,
                }),
            }
            return;
        }
        if let Some(tx) = self.server.get(&key) {
            // A retransmission: repeat the last response, if any.
            if let Some(bytes) = &tx.last_response
                && tx.state != ServerState::Accepted
            {
                self.out.push_back(Output::Transmit {
                    to: tx.peer,
                    bytes: bytes.clone(),
                });
            }
            return;
        }
        let invite = request.method() == &Method::Invite;
        self.server.insert(
            key.clone(),
            ServerTx {
                invite,
                peer: from,
                state: if invite {
                    ServerState::Proceeding
                } else {
                    ServerState::Trying
                },
                last_response: None,
                resend_interval: self.timers_cfg.t1,
            },
        );
        if invite {
            // 100 Trying at once stops the caller's INVITE retransmissions.
            let trying = response_to(&request, 100, None);
            let bytes = trying.to_bytes();
            if let Some(tx) = self.server.get_mut(&key) {
                tx.last_response = Some(bytes.clone());
            }
            self.out.push_back(Output::Transmit { to: from, bytes });
        }
        self.out.push_back(Output::Request {
            key,
            request: Box::new(request),
            from,
        });
    }

    /// The transaction user answers the request of server transaction `key`.
    pub fn respond(
        &mut self,
        key: &TxKey,
        response: Response,
        now: Instant,
    ) -> Result<(), TxError> {
        let t1 = self.timers_cfg.t1;
        let Some(tx) = self.server.get_mut(key) else {
            return Err(TxError::NoSuchTransaction(key.clone()));
        };
        if !matches!(tx.state, ServerState::Trying | ServerState::Proceeding) {
            return Err(TxError::NoSuchTransaction(key.clone()));
        }
        let code = response.status_code().code();
        let bytes = response.to_bytes();
        let peer = tx.peer;
        tx.last_response = Some(bytes.clone());
        self.out.push_back(Output::Transmit { to: peer, bytes });
        if code < 200 {
            tx.state = ServerState::Proceeding;
            return Ok(());
        }
        if !tx.invite {
            tx.state = ServerState::Completed;
            let j = if peer.reliable {
                Duration::ZERO
            } else {
                64 * t1
            };
            self.forget_after(Side::Server, key, j, now);
        } else if code < 300 {
            tx.state = ServerState::Accepted;
            tx.resend_interval = t1;
            // The 2xx is resent until the dialog reports the ACK
            // ([`Self::acknowledged`]); the ACK has its own branch, so only
            // the dialog can match it.
            if !peer.reliable {
                self.schedule(Side::Server, key, TimerKind::ResendResponse, now + t1);
            }
            self.schedule(Side::Server, key, TimerKind::Forget, now + 64 * t1);
        } else {
            tx.state = ServerState::Completed;
            tx.resend_interval = t1;
            if !peer.reliable {
                self.schedule(Side::Server, key, TimerKind::ResendResponse, now + t1);
            }
            self.schedule(Side::Server, key, TimerKind::AckWait, now + 64 * t1);
        }
        Ok(())
    }

    /// The dialog got the ACK for the 2xx of INVITE server transaction
    /// `key`: stop resending the 2xx.
    pub fn acknowledged(&mut self, key: &TxKey) {
        self.cancel(Side::Server, key, TimerKind::ResendResponse);
    }

    /// Sends a request in a new client transaction; its responses come out
    /// as [`Output::Response`] under the returned key.
    pub fn send_request(
        &mut self,
        request: Request,
        to: Peer,
        now: Instant,
    ) -> Result<TxKey, TxError> {
        let branch = branch_of(&request).ok_or(TxError::NoBranch)?;
        let key = TxKey::of(&branch, request.method());
        let bytes = request.to_bytes();
        let invite = request.method() == &Method::Invite;
        let t1 = self.timers_cfg.t1;
        self.out.push_back(Output::Transmit {
            to,
            bytes: bytes.clone(),
        });
        if request.method() == &Method::Ack {
            // An ACK for a 2xx has no transaction.
            return Ok(key);
        }
        self.client.insert(
            key.clone(),
            ClientTx {
                invite,
                peer: to,
                state: ClientState::Calling,
                request,
                bytes,
                interval: t1,
            },
        );
        if !to.reliable {
            self.schedule(Side::Client, &key, TimerKind::Retransmit, now + t1);
        }
        self.schedule(Side::Client, &key, TimerKind::Give, now + 64 * t1);
        Ok(key)
    }

    /// A response arrived.
    pub fn on_response(&mut self, response: Response, now: Instant) {
        let Some(branch) = branch_of(&response) else {
            return;
        };
        let Ok(cseq) = response.cseq_header().and_then(|c| c.method()) else {
            return;
        };
        let key = TxKey::of(&branch, &cseq);
        let t4 = self.timers_cfg.t4;
        let t1 = self.timers_cfg.t1;
        let t2 = self.timers_cfg.t2;
        let Some(tx) = self.client.get_mut(&key) else {
            // A stray response (RFC 3261 §18.1.2): dropped.
            return;
        };
        let code = response.status_code().code();
        match (tx.invite, &tx.state, code) {
            (_, ClientState::Completed, _) => {
                if tx.invite && code >= 300 {
                    // Our ACK was lost: send it again.
                    let ack = ack_for(&tx.request, &response);
                    self.out.push_back(Output::Transmit {
                        to: tx.peer,
                        bytes: ack.to_bytes(),
                    });
                }
            }
            (true, ClientState::Accepted, 200..=299) => {
                // A 2xx retransmission: the dialog re-sends its ACK.
                self.out.push_back(Output::Response {
                    key,
                    response: Box::new(response),
                });
            }
            (_, ClientState::Accepted, _) => {}
            (invite, _, 100..=199) => {
                tx.state = ClientState::Proceeding;
                if invite {
                    self.cancel(Side::Client, &key, TimerKind::Retransmit);
                } else {
                    tx.interval = t2;
                }
                self.out.push_back(Output::Response {
                    key,
                    response: Box::new(response),
                });
            }
            (true, _, 200..=299) => {
                tx.state = ClientState::Accepted;
                self.cancel(Side::Client, &key, TimerKind::Retransmit);
                self.cancel(Side::Client, &key, TimerKind::Give);
                self.schedule(Side::Client, &key, TimerKind::Forget, now + 64 * t1);
                self.out.push_back(Output::Response {
                    key,
                    response: Box::new(response),
                });
            }
            (true, _, _) => {
                let ack = ack_for(&tx.request, &response);
                let reliable = tx.peer.reliable;
                self.out.push_back(Output::Transmit {
                    to: tx.peer,
                    bytes: ack.to_bytes(),
                });
                tx.state = ClientState::Completed;
                self.cancel(Side::Client, &key, TimerKind::Retransmit);
                self.cancel(Side::Client, &key, TimerKind::Give);
                self.out.push_back(Output::Response {
                    key: key.clone(),
                    response: Box::new(response),
                });
                // Timer D: at least 32 s on UDP.
                let d = if reliable {
                    Duration::ZERO
                } else {
                    Duration::from_secs(32).max(64 * t1)
                };
                self.forget_after(Side::Client, &key, d, now);
            }
            (false, _, _) => {
                tx.state = ClientState::Completed;
                let reliable = tx.peer.reliable;
                self.cancel(Side::Client, &key, TimerKind::Retransmit);
                self.cancel(Side::Client, &key, TimerKind::Give);
                self.out.push_back(Output::Response {
                    key: key.clone(),
                    response: Box::new(response),
                });
                let k = if reliable { Duration::ZERO } else { t4 };
                self.forget_after(Side::Client, &key, k, now);
            }
        }
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

/// The ACK for a non-2xx final response (RFC 3261 §17.1.1.3).
fn ack_for(request: &Request, response: &Response) -> Request {
    let mut headers = rsipstack::sip::Headers::default();
    if let Ok(via) = request.top_via_header() {
        headers.push(Header::Via(via.clone()));
    }
    for h in request.headers.iter() {
        match h {
            Header::From(_) | Header::CallId(_) | Header::Route(_) | Header::MaxForwards(_) => {
                headers.push(h.clone());
            }
            _ => {}
        }
    }
    if let Ok(to) = response.to_header() {
        headers.push(Header::To(to.clone()));
    }
    let seq = request
        .cseq_header()
        .and_then(|c| c.seq())
        .unwrap_or_default();
    headers.push(make_header("CSeq", format!("{seq} ACK")));
    headers.push(make_header("Content-Length", "0".into()));
    Request {
        method: Method::Ack,
        uri: request.uri.clone(),
        version: rsipstack::sip::Version::V2,
        headers,
        body: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
