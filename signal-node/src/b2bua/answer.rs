//! B's answers to our INVITE, relayed to A with the caller-side leg's
//! address in the SDP; B's silence ends the call with 408.

use rsipstack::sip::headers::make_header;
use rsipstack::sip::{Request, Response};

use super::{At, B2bua, Stack};
use crate::calls::{Dialog, Phase};
use crate::legs::{LegRequest, Side};
use crate::sdp::{audio_address, rewrite_audio};
use crate::transaction::{Peer, TxKey, response_to};
use crate::wire::headers::{
    header, header_values, is_success, sdp_body, tag_of, uri_of, with_body,
};

impl B2bua {
    /// A response to our INVITE to B.
    pub(crate) fn on_client_response(
        &mut self,
        sip: &mut Stack<'_>,
        key: &TxKey,
        resp: &Response,
        at: At,
    ) {
        if self.reinvites.contains_key(key) {
            return self.on_reinvite_response(sip, key, resp, at.now);
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
        learn_b_dialog(&mut call.b, resp);
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
            self.metrics
                .session_request_delay
                .observe(at.now.duration_since(sent).as_secs_f64());
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
            self.ack_2xx(sip, id, Side::B, resp, at.now);
            if phase != Phase::Calling {
                return;
            }
        }
        if phase != Phase::Calling {
            return;
        }
        let to_a = self.relayed_to_a(id, resp, answer_sdp, (&a_invite, &a_tag, a_peer));
        if is_success(resp) {
            if let Some(call) = self.calls.get_mut(id) {
                call.phase = Phase::Answered;
                call.answered = Some(at.wall);
            }
            // The buddy holds the call before A hears it is up.
            self.replicate(id);
        }
        self.answer_when_replicated(sip, id, &a_key, to_a, at.now);
        if is_success(resp) {
            tracing::info!(call = id, "call answered");
        } else if code >= 300 {
            self.end_call(id, &code.to_string(), at.wall);
        }
    }

    /// B's answer as A's: A's tag, our Contact and A's Record-Route on a
    /// dialog-making answer, the SDP pointed at A's leg.
    fn relayed_to_a(
        &mut self,
        id: u64,
        resp: &Response,
        answer_sdp: Option<String>,
        (a_invite, a_tag, a_peer): (&Request, &str, Peer),
    ) -> Response {
        let code = resp.status_code().code();
        let mut to_a = response_to(a_invite, code, Some(a_tag));
        if code > 100 && code < 300 {
            to_a.headers
                .push(make_header("Contact", self.contact(a_peer)));
            // RFC 3261 §12.1.1: the UAS copies the Record-Route into responses
            // that make the dialog.
            for rr in header_values(a_invite, "Record-Route") {
                to_a.headers.push(make_header("Record-Route", rr));
            }
        }
        if let Some(sdp) = answer_sdp
            && code < 300
        {
            let Some(a_leg) = self.calls.get(id).map(|c| c.media.a.addr) else {
                return to_a;
            };
            let to_a_sdp = rewrite_audio(&sdp, a_leg);
            if let Some(call) = self.calls.get_mut(id) {
                call.set_sdp_sent(Side::A, to_a_sdp.clone());
            }
            to_a = with_body(to_a, "application/sdp", to_a_sdp);
        }
        to_a
    }

    /// Our INVITE to B got no final answer in time.
    pub(crate) fn on_client_timeout(&mut self, sip: &mut Stack<'_>, key: &TxKey, at: At) {
        if self.reinvites.contains_key(key) {
            return self.on_reinvite_timeout(sip, key, at.now);
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
            self.answer(sip, &a_key, r, at.now);
            self.end_call(id, "408", at.wall);
        }
    }
}

/// What B's answer says of its dialog: its tag, and on a 2xx its target
/// and route set.
fn learn_b_dialog(b: &mut Dialog, resp: &Response) {
    let to = header(resp, "To").unwrap_or_default();
    if let Some(tag) = tag_of(to) {
        b.remote_tag = Some(tag);
    }
    if is_success(resp)
        && let Some(contact) = header(resp, "Contact")
    {
        b.remote_target = uri_of(contact);
    }
    let recorded = header_values(resp, "Record-Route");
    if is_success(resp) && !recorded.is_empty() {
        // RFC 3261 §12.1.2: the UAC's route set is the Record-Route reversed.
        b.route_set = recorded.into_iter().rev().collect();
    }
}
