//! A new call: A's INVITE is checked (caller authenticated, callee
//! registered, an SDP offer), the call waits for its legs, then the INVITE
//! goes on to B with the callee-side leg's address; a CANCEL from A ends
//! it on both sides.

use std::time::{Instant, SystemTime};

use rsipstack::sip::Request;
use rsipstack::sip::headers::make_header;
use rsipstack::sip::prelude::*;

use super::outgoing::{Outgoing, via};
use super::{At, B2bua, Pending, Stack};
use crate::calls::{Call, CallRecord, Dialog, Phase};
use crate::legs::{LegRequest, Media};
use crate::sdp::{audio_address, rewrite_audio, telephone_event_payload};
use crate::transaction::{Peer, TxKey, response_to};
use crate::wire::headers::{callee_of, header, header_values, name_addr, sdp_body, tag_of, uri_of};

impl B2bua {
    /// A new INVITE (no To tag) or a re-INVITE.
    pub(crate) fn on_invite(
        &mut self,
        sip: &mut Stack<'_>,
        key: &TxKey,
        req: &Request,
        from: Peer,
        at: At,
    ) {
        let to = header(req, "To").unwrap_or_default().to_string();
        if tag_of(&to).is_some() {
            return self.on_reinvite(sip, key, req, at.now);
        }
        let tag = sip.tags.tag();
        let refuse = |code: u16| response_to(req, code, Some(&tag));
        // Only users of this service place calls, as themselves.
        let caller = match sip
            .registrar
            .authenticate(req, "Proxy-Authorization", at.wall)
        {
            Ok(user) => user,
            Err(challenge) => {
                let mut r = refuse(407);
                r.headers
                    .push(make_header("Proxy-Authenticate", challenge.value));
                return self.answer(sip, key, r, at.now);
            }
        };
        let from_user = crate::wire::headers::user_of(header(req, "From").unwrap_or_default());
        if from_user.as_deref() != Some(caller.as_str()) {
            return self.answer(sip, key, refuse(403), at.now);
        }
        let Some(callee) = callee_of(req) else {
            return self.answer(sip, key, refuse(404), at.now);
        };
        if !sip.registrar.knows(&callee) {
            return self.answer(sip, key, refuse(404), at.now);
        }
        let Some(binding) = sip.registrar.lookup(&callee, at.wall).into_iter().last() else {
            return self.answer(sip, key, refuse(480), at.now);
        };
        let offer = sdp_body(req, req.body());
        let Some(Ok(offer_addr)) = offer.as_deref().map(audio_address) else {
            // An INVITE without an SDP offer (or a broken one) is not served.
            return self.answer(sip, key, refuse(488), at.now);
        };
        if !self.media_enabled {
            return self.answer(sip, key, refuse(503), at.now);
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
                started: at.wall,
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
        sip: &mut Stack<'_>,
        task: u64,
        media: Result<Media, String>,
        at: At,
    ) {
        let Some(p) = self.pending.remove(&task) else {
            // The caller gave up meanwhile.
            if let Ok(media) = media {
                self.leg_requests.push_back(LegRequest::Release { media });
            }
            return;
        };
        let media = match media {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "no call legs for a call");
                let r = response_to(&p.req, 503, Some(&p.tag));
                self.answer(sip, &p.key, r, at.now);
                return self.finished_unanswered(&p, "503", at.wall);
            }
        };
        let a = a_dialog(&p);
        let body = rewrite_audio(&p.offer, media.b.addr);
        let sent = self.invite_b(sip, &p, &a, &body, at.now);
        let Some((b, b_key, b_invite)) = sent else {
            self.leg_requests.push_back(LegRequest::Release { media });
            let r = response_to(&p.req, 500, Some(&p.tag));
            self.answer(sip, &p.key, r, at.now);
            return self.finished_unanswered(&p, "500", at.wall);
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
                invite_sent: Some(at.now),
                started: p.started,
                answered: None,
                reinvite: None,
                awaiting_ack: Vec::new(),
                sent_sdp: (None, Some(body)),
                replicated: 0,
                confirmed: 0,
                pinned: self.local,
            },
        );
        self.update_call_metrics();
    }

    /// Sends the call's INVITE to B, with `body` as its offer; B's dialog,
    /// the client transaction and the INVITE.
    fn invite_b(
        &mut self,
        sip: &mut Stack<'_>,
        p: &Pending,
        a: &Dialog,
        body: &str,
        now: Instant,
    ) -> Option<(Dialog, TxKey, Request)> {
        let binding = &p.binding;
        let b_peer = binding.source;
        let b_tag = sip.tags.tag();
        let b_call_id = format!("{}-b@{}", sip.tags.tag(), self.local.ip());
        let branch = sip.tags.branch();
        let b_invite = Outgoing {
            method: "INVITE",
            target: &binding.contact,
            via: via(b_peer, self.local, &branch),
            max_forwards: 69,
            // The caller as the directory shows them, whatever their
            // phone put in its From.
            from: format!(
                "{};tag={b_tag}",
                name_addr(sip.registrar.display_name(&p.caller), &a.remote_uri)
            ),
            to: format!("<{}>", a.local_uri),
            call_id: &b_call_id,
            cseq: 1,
            // RFC 3327: through the proxies the REGISTER came through.
            routes: &binding.path,
            headers: format!(
                "Contact: {}\r\nContent-Type: application/sdp\r\n",
                self.contact(b_peer)
            ),
            body,
        }
        .build()?;
        let b_key = self.send(sip, b_invite.clone(), b_peer, now)?;
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
        Some((b, b_key, b_invite))
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

    /// CANCEL from A for its pending INVITE.
    pub(crate) fn on_cancel(&mut self, sip: &mut Stack<'_>, key: &TxKey, req: &Request, at: At) {
        let cancelled = key.cancelled_invite();
        let waiting = self
            .pending
            .iter()
            .find(|(_, p)| p.key == cancelled)
            .map(|(task, _)| *task);
        if let Some(p) = waiting.and_then(|task| self.pending.remove(&task)) {
            // No INVITE went to B yet; the legs are released when they come.
            let ok = response_to(req, 200, Some(&p.tag));
            self.answer(sip, key, ok, at.now);
            let terminated = response_to(&p.req, 487, Some(&p.tag));
            self.answer(sip, &p.key, terminated, at.now);
            return self.finished_unanswered(&p, "cancelled", at.wall);
        }
        let Some(id) = self.calls.by_a_invite(&cancelled) else {
            let r = response_to(req, 481, None);
            return self.answer(sip, key, r, at.now);
        };
        let Some(call) = self.calls.get_mut(id) else {
            return;
        };
        let ok = response_to(req, 200, Some(&call.a.local_tag));
        if call.phase != Phase::Calling {
            // Too late: the call is up; the CANCEL changes nothing.
            return self.answer(sip, key, ok, at.now);
        }
        let a_key = call.a_invite.0.clone();
        let terminated = response_to(&call.a_invite.1, 487, Some(&call.a.local_tag));
        let b_invite = call.b_invite.1.clone();
        let b_peer = call.b.peer;
        self.answer(sip, key, ok, at.now);
        self.answer(sip, &a_key, terminated, at.now);
        // CANCEL to B: same Request-URI, Call-ID, From, To, top Via, CSeq number.
        let top_via = header(&b_invite, "Via").unwrap_or_default();
        let seq = b_invite.cseq_header().and_then(|c| c.seq()).unwrap_or(1);
        let cancel = Outgoing {
            method: "CANCEL",
            target: &b_invite.uri.to_string(),
            via: top_via.to_string(),
            max_forwards: 70,
            from: header(&b_invite, "From").unwrap_or_default().to_string(),
            to: header(&b_invite, "To").unwrap_or_default().to_string(),
            call_id: header(&b_invite, "Call-ID").unwrap_or_default(),
            cseq: seq,
            // RFC 3261 §9.1: the same Route as the INVITE.
            routes: &header_values(&b_invite, "Route"),
            headers: String::new(),
            body: "",
        }
        .build();
        if let Some(cancel) = cancel {
            self.send(sip, cancel, b_peer, at.now);
        }
        self.end_call(id, "cancelled", at.wall);
    }
}

/// The caller's side of a call, from its INVITE.
fn a_dialog(p: &Pending) -> Dialog {
    let req = &p.req;
    let to = header(req, "To").unwrap_or_default();
    let a_from = header(req, "From").unwrap_or_default();
    Dialog {
        call_id: header(req, "Call-ID").unwrap_or_default().to_string(),
        local_tag: p.tag.clone(),
        remote_tag: tag_of(a_from),
        local_uri: uri_of(to),
        remote_uri: uri_of(a_from),
        remote_target: header(req, "Contact").map(uri_of).unwrap_or_default(),
        peer: p.from,
        cseq: 1,
        // RFC 3261 §12.1.1: the UAS's route set is the Record-Route as received.
        route_set: header_values(req, "Record-Route"),
    }
}
