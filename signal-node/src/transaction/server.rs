//! Server transactions (RFC 3261 §17.2): requests that arrive, their
//! retransmissions absorbed, and the answers the transaction user gives.

use std::time::{Duration, Instant};

use rsipstack::sip::{Request, Response};

use super::*;

impl Transactions {
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
}
