//! The call logic of [`Endpoint`]: INVITE, answers, ACK, BYE and CANCEL on
//! both sides of each call, and the call legs between them.

use std::time::{Instant, SystemTime};

use rsipstack::sip::headers::make_header;
use rsipstack::sip::prelude::*;
use rsipstack::sip::{Request, Response};

use crate::calls::{
    Call, CallRecord, Dialog, Phase, Side, callee_of, header, header_values, is_success,
    request_from_text, route_lines, sdp_body, tag_of, uri_of,
};
use crate::endpoint::{Endpoint, Pending};
use crate::legs::{LegRequest, Media};
use crate::sdp::{audio_address, rewrite_audio, telephone_event_payload};
use crate::transaction::{Peer, TxKey, response_to};
use voicecluster_api::grpc::{LegEvent, leg_event};

/// Replaces a message's body.
pub(crate) fn with_body(mut r: Response, content_type: &str, body: String) -> Response {
    r.headers
        .retain(|h| !h.name().eq_ignore_ascii_case("Content-Length"));
    r.headers
        .push(make_header("Content-Type", content_type.to_string()));
    r.headers
        .push(make_header("Content-Length", body.len().to_string()));
    r.body = body.into_bytes();
    r
}

fn transport(peer: Peer) -> &'static str {
    if peer.reliable { "TCP" } else { "UDP" }
}

impl Endpoint {
    fn branch(&mut self) -> String {
        format!("z9hG4bK{}", self.tag())
    }

    pub(crate) fn contact(&self, peer: Peer) -> String {
        if peer.reliable {
            format!("<sip:{};transport=tcp>", self.local)
        } else {
            format!("<sip:{}>", self.local)
        }
    }

    pub(crate) fn answer(&mut self, key: &TxKey, response: Response, now: Instant) {
        self.count_response(&response);
        if let Err(e) = self.transactions.respond(key, response, now) {
            tracing::debug!(error = %e, "response not sent");
        }
    }

    /// A request outside any transaction we keep (ACK for a 2xx), or in a
    /// new client transaction.
    pub(crate) fn send(&mut self, req: Request, to: Peer, now: Instant) -> Option<TxKey> {
        match self.transactions.send_request(req, to, now) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(error = %e, "cannot send a request");
                None
            }
        }
    }

    /// A new INVITE (no To tag) or a re-INVITE.
    pub(crate) fn on_invite(
        &mut self,
        key: &TxKey,
        req: &Request,
        from: Peer,
        now: Instant,
        wall: SystemTime,
    ) {
        let to = header(req, "To").unwrap_or_default().to_string();
        if tag_of(&to).is_some() {
            return self.on_reinvite(key, req, now);
        }
        let tag = self.tag();
        let refuse = |code: u16| response_to(req, code, Some(&tag));
        // Only users of this service place calls, as themselves.
        let caller = match self
            .registrar
            .authenticate(req, "Proxy-Authorization", wall)
        {
            Ok(user) => user,
            Err(challenge) => {
                let mut r = refuse(407);
                r.headers.push(make_header("Proxy-Authenticate", challenge));
                return self.answer(key, r, now);
            }
        };
        let from_user = crate::registrar::user_of(header(req, "From").unwrap_or_default());
        if from_user.as_deref() != Some(caller.as_str()) {
            return self.answer(key, refuse(403), now);
        }
        let Some(callee) = callee_of(req) else {
            return self.answer(key, refuse(404), now);
        };
        if !self.registrar.knows(&callee) {
            return self.answer(key, refuse(404), now);
        }
        let Some(binding) = self.registrar.lookup(&callee, wall).into_iter().last() else {
            return self.answer(key, refuse(480), now);
        };
        let offer = sdp_body(req, req.body());
        let Some(Ok(offer_addr)) = offer.as_deref().map(audio_address) else {
            // An INVITE without an SDP offer (or a broken one) is not served.
            return self.answer(key, refuse(488), now);
        };
        if !self.media_enabled {
            return self.answer(key, refuse(503), now);
        }
        let dtmf = offer.as_deref().and_then(telephone_event_payload);
        // The call waits for its legs; the INVITE's 100 Trying is out.
        let task = self.calls.next_id();
        self.pending.insert(
            task,
            Pending {
                key: key.clone(),
                req: req.clone(),
                from,
                caller,
                callee,
                binding,
                offer: offer.unwrap_or_default(),
                tag,
                started: wall,
            },
        );
        self.leg_requests.push_back(LegRequest::Setup {
            task,
            caller: offer_addr,
            dtmf,
        });
    }

    /// The legs of a waiting call are made (or cannot be): the INVITE goes
    /// on to B, or A is refused.
    pub(crate) fn on_legs_ready(
        &mut self,
        task: u64,
        media: Result<Media, String>,
        now: Instant,
        wall: SystemTime,
    ) {
        let Some(p) = self.pending.remove(&task) else {
            // The caller gave up meanwhile.
            if let Ok(media) = media {
                self.leg_requests.push_back(LegRequest::Release { media });
            }
            return;
        };
        let key = &p.key;
        let req = &p.req;
        let media = match media {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "no call legs for a call");
                let r = response_to(req, 503, Some(&p.tag));
                self.answer(key, r, now);
                return self.finished_unanswered(&p, "503", wall);
            }
        };
        let to = header(req, "To").unwrap_or_default().to_string();
        let tag = p.tag.clone();
        let a_from = header(req, "From").unwrap_or_default().to_string();
        let a_contact = header(req, "Contact").map(uri_of).unwrap_or_default();
        let a_call_id = header(req, "Call-ID").unwrap_or_default().to_string();
        let a = Dialog {
            call_id: a_call_id,
            local_tag: tag.clone(),
            remote_tag: tag_of(&a_from),
            local_uri: uri_of(&to),
            remote_uri: uri_of(&a_from),
            remote_target: a_contact,
            peer: p.from,
            cseq: 1,
            // RFC 3261 §12.1.1: the UAS's route set is the Record-Route as received.
            route_set: header_values(req, "Record-Route"),
        };
        let binding = &p.binding;
        let b_peer = binding.source;
        let b_tag = self.tag();
        let b_call_id = format!("{}-b@{}", self.tag(), self.local.ip());
        let branch = self.branch();
        let body = rewrite_audio(&p.offer, media.b.addr);
        let text = format!(
            "INVITE {target} SIP/2.0\r\n\
             Via: SIP/2.0/{t} {local};branch={branch};rport\r\n\
             Max-Forwards: 69\r\n\
             From: <{a_uri}>;tag={b_tag}\r\n\
             To: <{b_uri}>\r\n\
             Call-ID: {b_call_id}\r\n\
             CSeq: 1 INVITE\r\n\
             {routes}\
             Contact: {contact}\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {len}\r\n\r\n{body}",
            // RFC 3327: through the proxies the REGISTER came through.
            routes = route_lines(&binding.path),
            target = binding.contact,
            t = transport(b_peer),
            local = self.local,
            a_uri = a.remote_uri,
            b_uri = a.local_uri,
            contact = self.contact(b_peer),
            len = body.len(),
        );
        let sent = request_from_text(&text).and_then(|b_invite| {
            let b_key = self.send(b_invite.clone(), b_peer, now)?;
            Some((b_key, b_invite))
        });
        let Some((b_key, b_invite)) = sent else {
            tracing::error!(%text, "built an INVITE that does not parse or cannot be sent");
            self.leg_requests.push_back(LegRequest::Release { media });
            let r = response_to(req, 500, Some(&tag));
            self.answer(key, r, now);
            return self.finished_unanswered(&p, "500", wall);
        };
        let b = Dialog {
            call_id: b_call_id,
            local_tag: b_tag,
            remote_tag: None,
            local_uri: a.remote_uri.clone(),
            remote_uri: a.local_uri.clone(),
            remote_target: binding.contact.clone(),
            peer: b_peer,
            cseq: 1,
            route_set: binding.path.clone(),
        };
        tracing::info!(caller = %p.caller, callee = %p.callee, call_id = %a.call_id, provider = ?media.provider, "call started");
        self.calls.insert(
            task,
            Call {
                caller: p.caller,
                callee: p.callee,
                a,
                b,
                a_invite: (p.key, p.req),
                b_invite: (b_key, b_invite),
                media,
                phase: Phase::Calling,
                invite_sent: Some(now),
                started: p.started,
                answered: None,
                reinvite: None,
                awaiting_ack: Vec::new(),
                sent_sdp: (None, Some(body.clone())),
                replicated: 0,
                confirmed: 0,
                pinned: self.local,
            },
        );
        self.update_call_metrics();
    }

    /// A call that ended before it had legs and a dialog with B.
    fn finished_unanswered(&mut self, p: &Pending, reason: &str, wall: SystemTime) {
        self.finished(CallRecord {
            call_id: header(&p.req, "Call-ID").unwrap_or_default().to_string(),
            caller: p.caller.clone(),
            callee: p.callee.clone(),
            started: p.started,
            answered: None,
            ended: wall,
            reason: reason.to_string(),
        });
    }

    /// ACK for a 2xx we sent: to A's INVITE, or to a re-INVITE from either
    /// side (whose SDP answer it may carry).
    pub(crate) fn on_ack(&mut self, req: &Request) {
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
            self.transactions.acknowledged(&key);
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
    pub(crate) fn on_bye(&mut self, key: &TxKey, req: &Request, now: Instant, wall: SystemTime) {
        let call_id = header(req, "Call-ID").unwrap_or_default();
        let Some((id, side)) = self.calls.by_call_id(call_id) else {
            let r = response_to(req, 481, None);
            return self.answer(key, r, now);
        };
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        let tag = match side {
            Side::A => call.a.local_tag.clone(),
            Side::B => call.b.local_tag.clone(),
        };
        let ok = response_to(req, 200, Some(&tag));
        self.answer(key, ok, now);
        let other = match side {
            Side::A => Side::B,
            Side::B => Side::A,
        };
        self.send_bye(id, other, now);
        let reason = match side {
            Side::A => "caller-bye",
            Side::B => "callee-bye",
        };
        self.end_call(id, reason, wall);
    }

    /// A request in call `id`'s dialog with `side`: a new CSeq, or `cseq`
    /// (an ACK takes its INVITE's); with `sdp` as its body. Also where it goes.
    pub(crate) fn dialog_request(
        &mut self,
        id: u64,
        side: Side,
        method: &str,
        cseq: Option<u32>,
        sdp: Option<&str>,
    ) -> Option<(Request, Peer)> {
        let branch = self.branch();
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
        let text = format!(
            "{method} {target} SIP/2.0\r\n\
             Via: SIP/2.0/{t} {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <{local_uri}>;tag={local_tag}\r\n\
             To: <{remote_uri}>{remote_tag}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             {routes}\
             {body_headers}\
             Content-Length: {len}\r\n\r\n{body}",
            routes = route_lines(&d.route_set),
            target = d.remote_target,
            t = transport(peer),
            local_uri = d.local_uri,
            local_tag = d.local_tag,
            remote_uri = d.remote_uri,
            call_id = d.call_id,
            len = body.len(),
        );
        match request_from_text(&text) {
            Some(r) => Some((r, peer)),
            None => {
                tracing::error!(%text, "built an in-dialog request that does not parse");
                None
            }
        }
    }

    /// A call leg's provider says the leg went silent or is gone: the call
    /// cannot go on, so both sides are hung up.
    pub(crate) fn on_leg_event(
        &mut self,
        task: u64,
        provider: &str,
        event: &LegEvent,
        now: Instant,
        wall: SystemTime,
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
                self.count_dtmf();
                return;
            }
            Some(leg_event::Kind::Statistics(stats)) => {
                tracing::debug!(call_id = %call.a.call_id, leg = event.leg, ?stats, "leg statistics");
                self.observe_leg_statistics(stats);
                return;
            }
            Some(leg_event::Kind::Closed(c)) => {
                tracing::info!(call_id = %call.a.call_id, reason = %c.reason, "call leg closed: hanging up");
                "leg-closed"
            }
            None => return,
        };
        self.send_bye(task, Side::A, now);
        self.send_bye(task, Side::B, now);
        self.end_call(task, reason, wall);
    }

    fn send_bye(&mut self, id: u64, side: Side, now: Instant) {
        if let Some((bye, peer)) = self.dialog_request(id, side, "BYE", None, None) {
            self.send(bye, peer, now);
        }
    }

    /// CANCEL from A for its pending INVITE.
    pub(crate) fn on_cancel(&mut self, key: &TxKey, req: &Request, now: Instant, wall: SystemTime) {
        let cancelled = key.cancelled_invite();
        let waiting = self
            .pending
            .iter()
            .find(|(_, p)| p.key == cancelled)
            .map(|(task, _)| *task);
        if let Some(p) = waiting.and_then(|task| self.pending.remove(&task)) {
            // No INVITE went to B yet; the legs are released when they come.
            let ok = response_to(req, 200, Some(&p.tag));
            self.answer(key, ok, now);
            let terminated = response_to(&p.req, 487, Some(&p.tag));
            self.answer(&p.key, terminated, now);
            return self.finished_unanswered(&p, "cancelled", wall);
        }
        let Some(id) = self.calls.by_a_invite(&cancelled) else {
            let r = response_to(req, 481, None);
            return self.answer(key, r, now);
        };
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        let ok = response_to(req, 200, Some(&call.a.local_tag));
        if call.phase != Phase::Calling {
            // Too late: the call is up; the CANCEL changes nothing.
            return self.answer(key, ok, now);
        }
        let a_key = call.a_invite.0.clone();
        let terminated = response_to(&call.a_invite.1, 487, Some(&call.a.local_tag));
        let b_invite = call.b_invite.1.clone();
        let b_peer = call.b.peer;
        self.answer(key, ok, now);
        self.answer(&a_key, terminated, now);
        // CANCEL to B: same Request-URI, Call-ID, From, To, top Via, CSeq number.
        let via = header(&b_invite, "Via").unwrap_or_default();
        let seq = b_invite.cseq_header().and_then(|c| c.seq()).unwrap_or(1);
        let text = format!(
            "CANCEL {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
             Call-ID: {call_id}\r\nCSeq: {seq} CANCEL\r\n{routes}Content-Length: 0\r\n\r\n",
            // RFC 3261 §9.1: the same Route as the INVITE.
            routes = route_lines(&header_values(&b_invite, "Route")),
            uri = b_invite.uri,
            from = header(&b_invite, "From").unwrap_or_default(),
            to = header(&b_invite, "To").unwrap_or_default(),
            call_id = header(&b_invite, "Call-ID").unwrap_or_default(),
        );
        if let Some(cancel) = request_from_text(&text) {
            self.send(cancel, b_peer, now);
        }
        self.end_call(id, "cancelled", wall);
    }

    /// A response to our INVITE to B.
    pub(crate) fn on_client_response(
        &mut self,
        key: &TxKey,
        resp: &Response,
        now: Instant,
        wall: SystemTime,
    ) {
        if self.reinvites.contains_key(key) {
            return self.on_reinvite_response(key, resp, now);
        }
        let Some(id) = self.calls.by_b_invite(key) else {
            return;
        };
        let code = resp.status_code().code();
        if code == 100 {
            return;
        }
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        let to = header(resp, "To").unwrap_or_default();
        if let Some(tag) = tag_of(to) {
            call.b.remote_tag = Some(tag);
        }
        if is_success(resp)
            && let Some(contact) = header(resp, "Contact")
        {
            call.b.remote_target = uri_of(contact);
        }
        let recorded = header_values(resp, "Record-Route");
        if is_success(resp) && !recorded.is_empty() {
            // RFC 3261 §12.1.2: the UAC's route set is the Record-Route reversed.
            call.b.route_set = recorded.into_iter().rev().collect();
        }
        let media = call.media.clone();
        let a_key = call.a_invite.0.clone();
        let a_invite = call.a_invite.1.clone();
        let a_tag = call.a.local_tag.clone();
        let a_peer = call.a.peer;
        let phase = call.phase;
        // RFC 6076 §4.2: from the INVITE to the first response that is a
        // 2xx or a provisional other than 100.
        if (code > 100 && code < 300)
            && let Some(sent) = call.invite_sent.take()
        {
            self.observe_session_request_delay(now.duration_since(sent));
        }
        let answer_sdp = sdp_body(resp, resp.body());
        if let Some(sdp) = &answer_sdp
            && let Ok(remote) = audio_address(sdp)
        {
            self.leg_requests.push_back(LegRequest::Update {
                media: media.clone(),
                side: Side::B,
                remote,
            });
        }
        if is_success(resp) {
            // ACK B's 2xx (each 2xx retransmission too).
            self.ack_2xx(id, Side::B, resp, now);
            if phase != Phase::Calling {
                return;
            }
        }
        if phase != Phase::Calling {
            return;
        }
        let mut to_a = response_to(&a_invite, code, Some(&a_tag));
        if code > 100 && code < 300 {
            to_a.headers
                .push(make_header("Contact", self.contact(a_peer)));
            // RFC 3261 §12.1.1: the UAS copies the Record-Route into responses
            // that make the dialog.
            for rr in header_values(&a_invite, "Record-Route") {
                to_a.headers.push(make_header("Record-Route", rr));
            }
        }
        if let Some(sdp) = answer_sdp
            && code < 300
        {
            let to_a_sdp = rewrite_audio(&sdp, media.a.addr);
            if let Some(call) = self.calls.get_mut(id) {
                call.set_sdp_sent(Side::A, to_a_sdp.clone());
            }
            to_a = with_body(to_a, "application/sdp", to_a_sdp);
        }
        if is_success(resp) {
            if let Some(call) = self.calls.get_mut(id) {
                call.phase = Phase::Answered;
                call.answered = Some(wall);
            }
            // The buddy holds the call before A hears it is up.
            self.replicate(id);
        }
        self.answer_when_replicated(id, &a_key, to_a, now);
        if is_success(resp) {
            tracing::info!(call = id, "call answered");
        } else if code >= 300 {
            self.end_call(id, &code.to_string(), wall);
        }
    }

    /// ACKs a 2xx from `side` to our INVITE (or re-INVITE) with that CSeq.
    pub(crate) fn ack_2xx(&mut self, id: u64, side: Side, resp: &Response, now: Instant) {
        let cseq = resp
            .cseq_header()
            .ok()
            .and_then(|c| c.seq().ok())
            .unwrap_or(1);
        if let Some((ack, peer)) = self.dialog_request(id, side, "ACK", Some(cseq), None) {
            self.send(ack, peer, now);
        }
    }

    /// Our INVITE to B got no final answer in time.
    pub(crate) fn on_client_timeout(&mut self, key: &TxKey, now: Instant, wall: SystemTime) {
        if self.reinvites.contains_key(key) {
            return self.on_reinvite_timeout(key, now);
        }
        let Some(id) = self.calls.by_b_invite(key) else {
            return;
        };
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        if call.phase == Phase::Calling {
            let r = response_to(&call.a_invite.1, 408, Some(&call.a.local_tag));
            let a_key = call.a_invite.0.clone();
            self.answer(&a_key, r, now);
            self.end_call(id, "408", wall);
        }
    }

    fn end_call(&mut self, id: u64, reason: &str, wall: SystemTime) {
        let Some(call) = self.calls.remove(id) else {
            return;
        };
        self.leg_requests.push_back(LegRequest::Release {
            media: call.media.clone(),
        });
        self.drop_replica(id, &call.a.call_id, call.replicated);
        tracing::info!(call_id = %call.a.call_id, %reason, "call ended");
        self.finished(CallRecord {
            call_id: call.a.call_id,
            caller: call.caller,
            callee: call.callee,
            started: call.started,
            answered: call.answered,
            ended: wall,
            reason: reason.to_string(),
        });
        self.update_call_metrics();
    }
}

mod reinvite;
pub(crate) mod takeover;

#[cfg(test)]
mod tests;
