//! Re-INVITEs: a side that changes its media (a new address, another codec,
//! hold) sends a re-INVITE; its leg is pointed at the new address, and the
//! offer goes on to the other side with the other leg's address, so the
//! change (codec, direction) reaches the party it concerns. The other
//! side's answer comes back the same way. One re-INVITE per call at a time
//! (RFC 3261 §14.2: a second one gets 491).

use std::time::Instant;

use rsipstack::sip::Request;
use rsipstack::sip::Response;
use rsipstack::sip::headers::make_header;

use super::{B2bua, Stack};
use crate::calls::{Phase, Relayed};
use crate::legs::{LegRequest, Side};
use crate::sdp::{audio_address, rewrite_audio};
use crate::transaction::{TxKey, response_to};
use crate::wire::headers::{cseq_of, is_success, sdp_body, with_body};

impl B2bua {
    /// A re-INVITE from either side of an answered call.
    pub(crate) fn on_reinvite(
        &mut self,
        sip: &mut Stack<'_>,
        key: &TxKey,
        req: &Request,
        now: Instant,
    ) {
        let Some((id, side)) = self.dialog_of(sip, key, req, now) else {
            return;
        };
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        let dialog = match side {
            Side::A => call.a.clone(),
            Side::B => call.b.clone(),
        };
        let tag = dialog.local_tag.clone();
        if call.phase != Phase::Answered || call.reinvite.is_some() {
            let r = response_to(req, 491, Some(&tag));
            return self.answer(sip, key, r, now);
        }
        let media = call.media.clone();
        let offer = sdp_body(req, req.body());
        let Some(offer) = offer else {
            // No offer: ours is the session as it stands, and the answer
            // comes in the ACK.
            let current = call.sdp_sent(side).cloned();
            let mut ok = response_to(req, 200, Some(&tag));
            ok.headers
                .push(make_header("Contact", self.contact(dialog.peer)));
            if let Some(sdp) = current {
                ok = with_body(ok, "application/sdp", sdp);
            }
            self.remember_answered(id, side, key, req);
            return self.answer(sip, key, ok, now);
        };
        let Ok(remote) = audio_address(&offer) else {
            let r = response_to(req, 488, Some(&tag));
            return self.answer(sip, key, r, now);
        };
        self.leg_requests.push_back(LegRequest::Update {
            media: media.clone(),
            side,
            remote,
        });
        let towards = side.other();
        let relayed = rewrite_audio(&offer, media.leg(towards).addr);
        let Some((reinvite, peer)) =
            self.dialog_request(sip, id, towards, "INVITE", None, Some(&relayed))
        else {
            let r = response_to(req, 500, Some(&tag));
            return self.answer(sip, key, r, now);
        };
        let Some(client) = self.send(sip, reinvite, peer, now) else {
            let r = response_to(req, 500, Some(&tag));
            return self.answer(sip, key, r, now);
        };
        if let Some(call) = self.calls.get_mut(id) {
            call.set_sdp_sent(towards, relayed);
            call.reinvite = Some(Relayed {
                from: side,
                server: key.clone(),
                request: req.clone(),
            });
        }
        self.reinvites.insert(client, id);
    }

    /// Our 2xx to a re-INVITE waits for its ACK.
    fn remember_answered(&mut self, id: u64, side: Side, key: &TxKey, req: &Request) {
        if let Some(call) = self.calls.get_mut(id) {
            call.awaiting_ack.push((side, key.clone(), cseq_of(req)));
        }
    }

    /// The other side answered a re-INVITE we relayed.
    pub(crate) fn on_reinvite_response(
        &mut self,
        sip: &mut Stack<'_>,
        key: &TxKey,
        resp: &Response,
        now: Instant,
    ) {
        let code = resp.status_code().code();
        if code < 200 {
            return;
        }
        let Some(id) = self.reinvites.remove(key) else {
            return;
        };
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        let Some(relayed) = call.reinvite.take() else {
            return;
        };
        let from = relayed.from;
        let towards = from.other();
        let media = call.media.clone();
        let tag = match from {
            Side::A => call.a.local_tag.clone(),
            Side::B => call.b.local_tag.clone(),
        };
        let peer = match from {
            Side::A => call.a.peer,
            Side::B => call.b.peer,
        };
        if !is_success(resp) {
            // Refused (488, 491, ...): the side that asked hears the same.
            let r = response_to(&relayed.request, code, Some(&tag));
            return self.answer(sip, &relayed.server, r, now);
        }
        self.ack_2xx(sip, id, towards, resp, now);
        let mut ok = response_to(&relayed.request, 200, Some(&tag));
        ok.headers.push(make_header("Contact", self.contact(peer)));
        if let Some(answer) = sdp_body(resp, resp.body()) {
            if let Ok(remote) = audio_address(&answer) {
                self.leg_requests.push_back(LegRequest::Update {
                    media: media.clone(),
                    side: towards,
                    remote,
                });
            }
            let back = rewrite_audio(&answer, media.leg(from).addr);
            if let Some(call) = self.calls.get_mut(id) {
                call.set_sdp_sent(from, back.clone());
            }
            ok = with_body(ok, "application/sdp", back);
        }
        self.remember_answered(id, from, &relayed.server, &relayed.request);
        // The buddy learns the new session (and CSeqs) before the answer goes.
        self.replicate(id);
        self.answer_when_replicated(sip, id, &relayed.server, ok, now);
    }

    /// The other side never answered a relayed re-INVITE.
    pub(crate) fn on_reinvite_timeout(&mut self, sip: &mut Stack<'_>, key: &TxKey, now: Instant) {
        let Some(id) = self.reinvites.remove(key) else {
            return;
        };
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        if let Some(relayed) = call.reinvite.take() {
            let tag = match relayed.from {
                Side::A => call.a.local_tag.clone(),
                Side::B => call.b.local_tag.clone(),
            };
            let r = response_to(&relayed.request, 408, Some(&tag));
            self.answer(sip, &relayed.server, r, now);
        }
    }
}
