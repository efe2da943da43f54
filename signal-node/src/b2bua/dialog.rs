//! Requests inside a call's two dialogs: building them (route set, CSeq,
//! tags), ACKs both ways, BYE from either side, and the call legs' events
//! that end or annotate a call.

use std::time::Instant;

use rsipstack::sip::prelude::*;
use rsipstack::sip::{Request, Response};

use super::outgoing::{Outgoing, via};
use super::{At, B2bua, Stack};
use crate::calls::Phase;
use crate::legs::{LegRequest, Side};
use crate::sdp::audio_address;
use crate::transaction::{Peer, TxKey, response_to};
use crate::wire::headers::{header, sdp_body};
use voicecluster_api::grpc::{LegEvent, leg_event};

impl B2bua {
    /// A request in call `id`'s dialog with `side`: a new CSeq, or `cseq`
    /// (an ACK takes its INVITE's); with `sdp` as its body. Also where it goes.
    pub(crate) fn dialog_request(
        &mut self,
        sip: &mut Stack<'_>,
        id: u64,
        side: Side,
        method: &str,
        cseq: Option<u32>,
        sdp: Option<&str>,
    ) -> Option<(Request, Peer)> {
        let branch = sip.tags.branch();
        let local = self.local;
        let peer = self.calls.get(id).map(|c| match side {
            Side::A => c.a.peer,
            Side::B => c.b.peer,
        })?;
        let contact = self.contact(peer);
        let call = self.calls.get_mut(id)?;
        let d = match side {
            Side::A => &mut call.a,
            Side::B => &mut call.b,
        };
        let cseq = match cseq {
            Some(n) => n,
            None => {
                d.cseq += 1;
                d.cseq
            }
        };
        let remote_tag = d
            .remote_tag
            .as_deref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let (body_headers, body) = match sdp {
            Some(b) => (
                format!("Contact: {contact}\r\nContent-Type: application/sdp\r\n"),
                b,
            ),
            None => (String::new(), ""),
        };
        let request = Outgoing {
            method,
            target: &d.remote_target,
            via: via(peer, local, &branch),
            max_forwards: 70,
            from: format!("<{}>;tag={}", d.local_uri, d.local_tag),
            to: format!("<{}>{remote_tag}", d.remote_uri),
            call_id: &d.call_id,
            cseq,
            routes: &d.route_set,
            headers: body_headers,
            body,
        }
        .build()?;
        Some((request, peer))
    }

    /// ACKs a 2xx from `side` to our INVITE (or re-INVITE) with that CSeq.
    pub(crate) fn ack_2xx(
        &mut self,
        sip: &mut Stack<'_>,
        id: u64,
        side: Side,
        resp: &Response,
        now: Instant,
    ) {
        let cseq = resp
            .cseq_header()
            .ok()
            .and_then(|c| c.seq().ok())
            .unwrap_or(1);
        if let Some((ack, peer)) = self.dialog_request(sip, id, side, "ACK", Some(cseq), None) {
            self.send(sip, ack, peer, now);
        }
    }

    /// ACK for a 2xx we sent: to A's INVITE, or to a re-INVITE from either
    /// side (whose SDP answer it may carry).
    pub(crate) fn on_ack(&mut self, sip: &mut Stack<'_>, req: &Request) {
        let call_id = header(req, "Call-ID").unwrap_or_default();
        let Some((id, side)) = self.calls.by_call_id(call_id) else {
            return;
        };
        let cseq = req.cseq_header().ok().and_then(|c| c.seq().ok());
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        let mut done = Vec::new();
        if side == Side::A
            && cseq
                == call
                    .a_invite
                    .1
                    .cseq_header()
                    .ok()
                    .and_then(|c| c.seq().ok())
        {
            done.push(call.a_invite.0.clone());
        }
        if let Some(i) = call
            .awaiting_ack
            .iter()
            .position(|(s, _, n)| *s == side && Some(*n) == cseq)
        {
            done.push(call.awaiting_ack.remove(i).1);
        }
        let media = call.media.clone();
        for key in done {
            sip.tx.acknowledged(&key);
        }
        // An offerless re-INVITE's answer comes in the ACK.
        if let Some(Ok(remote)) = sdp_body(req, req.body()).as_deref().map(audio_address) {
            self.leg_requests.push_back(LegRequest::Update {
                media,
                side,
                remote,
            });
        }
    }

    /// BYE from either side: answered, and the other side is sent one.
    pub(crate) fn on_bye(&mut self, sip: &mut Stack<'_>, key: &TxKey, req: &Request, at: At) {
        let Some((id, side)) = self.dialog_of(sip, key, req, at.now) else {
            return;
        };
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        let tag = match side {
            Side::A => call.a.local_tag.clone(),
            Side::B => call.b.local_tag.clone(),
        };
        let ok = response_to(req, 200, Some(&tag));
        self.answer(sip, key, ok, at.now);
        let other = match side {
            Side::A => Side::B,
            Side::B => Side::A,
        };
        self.send_bye(sip, id, other, at.now);
        let reason = match side {
            Side::A => "caller-bye",
            Side::B => "callee-bye",
        };
        self.end_call(id, reason, at.wall);
    }

    fn send_bye(&mut self, sip: &mut Stack<'_>, id: u64, side: Side, now: Instant) {
        if let Some((bye, peer)) = self.dialog_request(sip, id, side, "BYE", None, None) {
            self.send(sip, bye, peer, now);
        }
    }

    /// The call and side an in-dialog request belongs to; a request for a
    /// dialog this member does not have is answered 481 here.
    pub(crate) fn dialog_of(
        &mut self,
        sip: &mut Stack<'_>,
        key: &TxKey,
        req: &Request,
        now: Instant,
    ) -> Option<(u64, Side)> {
        let call_id = header(req, "Call-ID").unwrap_or_default();
        let found = self.calls.by_call_id(call_id);
        if found.is_none() {
            let r = response_to(req, 481, None);
            self.answer(sip, key, r, now);
        }
        found
    }

    /// A call leg's provider says the leg went silent or is gone: the call
    /// cannot go on, so both sides are hung up.
    pub(crate) fn on_leg_event(
        &mut self,
        sip: &mut Stack<'_>,
        task: u64,
        provider: &str,
        event: &LegEvent,
        at: At,
    ) {
        let Some(call) = self.calls.get(task) else {
            tracing::debug!(task, "leg event for a call that is over");
            return;
        };
        let ours = [call.media.a.id, call.media.b.id].contains(&event.leg)
            && call.media.provider.as_deref().is_none_or(|p| p == provider);
        if !ours || call.phase != Phase::Answered {
            return;
        }
        let reason = match &event.kind {
            Some(leg_event::Kind::MediaTimeout(t)) => {
                tracing::info!(call_id = %call.a.call_id, silent_seconds = t.silent_seconds, "media timeout: hanging up");
                "media-timeout"
            }
            Some(leg_event::Kind::Dtmf(d)) => {
                tracing::info!(call_id = %call.a.call_id, digit = %d.digit, "DTMF");
                self.metrics.dtmf_digits.inc();
                return;
            }
            Some(leg_event::Kind::Statistics(stats)) => {
                tracing::debug!(call_id = %call.a.call_id, leg = event.leg, ?stats, "leg statistics");
                self.metrics.leg_statistics(stats);
                return;
            }
            Some(leg_event::Kind::Closed(c)) => {
                tracing::info!(call_id = %call.a.call_id, reason = %c.reason, "call leg closed: hanging up");
                "leg-closed"
            }
            None => return,
        };
        self.send_bye(sip, task, Side::A, at.now);
        self.send_bye(sip, task, Side::B, at.now);
        self.end_call(task, reason, at.wall);
    }
}
