//! Client transactions (RFC 3261 §17.1): requests we send, retransmitted
//! until answered, and the answers that come back.

use std::time::{Duration, Instant};

use rsipstack::sip::prelude::*;
use rsipstack::sip::{Request, Response};

use super::*;

impl Transactions {
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
            (invite, _, _) => {
                let final_response = Box::new(response);
                self.completed(key, invite, final_response, now);
            }
        }
    }

    /// A final non-2xx answer (or any final answer to a non-INVITE): the
    /// INVITE's is ACKed here; the transaction lingers to absorb
    /// retransmissions (timer D or K), then goes.
    fn completed(&mut self, key: TxKey, invite: bool, response: Box<Response>, now: Instant) {
        let (t1, t4) = (self.timers_cfg.t1, self.timers_cfg.t4);
        let Some(tx) = self.client.get_mut(&key) else {
            return;
        };
        tx.state = ClientState::Completed;
        let reliable = tx.peer.reliable;
        if invite {
            let ack = ack_for(&tx.request, &response);
            self.out.push_back(Output::Transmit {
                to: tx.peer,
                bytes: ack.to_bytes(),
            });
        }
        self.cancel(Side::Client, &key, TimerKind::Retransmit);
        self.cancel(Side::Client, &key, TimerKind::Give);
        self.out.push_back(Output::Response {
            key: key.clone(),
            response,
        });
        let linger = match (reliable, invite) {
            (true, _) => Duration::ZERO,
            // Timer D: at least 32 s on UDP.
            (false, true) => Duration::from_secs(32).max(64 * t1),
            (false, false) => t4,
        };
        self.forget_after(Side::Client, &key, linger, now);
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
