//! The requests the B2BUA starts (INVITE to B, in-dialog requests, ACK,
//! BYE, CANCEL), written as text in one template and parsed back, so every
//! request leaves through the same checks as those that arrive.

use rsipstack::sip::Request;

use crate::transaction::Peer;
use crate::wire::headers::{request_from_text, route_lines};

/// One request to write.
pub(super) struct Outgoing<'a> {
    pub(super) method: &'a str,
    /// The Request-URI.
    pub(super) target: &'a str,
    /// The whole Via value.
    pub(super) via: String,
    pub(super) max_forwards: u8,
    /// The whole From and To values.
    pub(super) from: String,
    pub(super) to: String,
    pub(super) call_id: &'a str,
    pub(super) cseq: u32,
    /// Route set, first first.
    pub(super) routes: &'a [String],
    /// More header lines, each ending in CRLF.
    pub(super) headers: String,
    pub(super) body: &'a str,
}

/// Our Via towards `peer`.
pub(super) fn via(peer: Peer, local: std::net::SocketAddr, branch: &str) -> String {
    let transport = if peer.reliable { "TCP" } else { "UDP" };
    format!("SIP/2.0/{transport} {local};branch={branch};rport")
}

impl Outgoing<'_> {
    /// The request; `None` (logged) only if our own template is broken.
    pub(super) fn build(&self) -> Option<Request> {
        let text = format!(
            "{method} {target} SIP/2.0\r\n\
             Via: {via}\r\n\
             Max-Forwards: {max_forwards}\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             {routes}\
             {headers}\
             Content-Length: {len}\r\n\r\n{body}",
            method = self.method,
            target = self.target,
            via = self.via,
            max_forwards = self.max_forwards,
            from = self.from,
            to = self.to,
            call_id = self.call_id,
            cseq = self.cseq,
            routes = route_lines(self.routes),
            headers = self.headers,
            len = self.body.len(),
            body = self.body,
        );
        let request = request_from_text(&text);
        if request.is_none() {
            tracing::error!(%text, "built a request that does not parse");
        }
        request
    }
}
