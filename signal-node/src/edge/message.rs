//! A SIP message as the edge handles it: its lines, which the edge rewrites
//! as a proxy does (RFC 3261 §16), and its body, which it never touches.

use std::net::SocketAddr;

use crate::rendezvous::fnv;
use crate::wire::headers::tag_of;
use crate::wire::{self, split_list};

use super::via::Via;

/// A message as the edge handles it: lines it can rewrite, body untouched.
pub(super) struct Message {
    pub(super) start_line: String,
    pub(super) headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    pub(super) fn parse(bytes: &[u8]) -> Option<Self> {
        let raw = wire::split(bytes).ok()?;
        // A datagram may carry more than Content-Length says; the rest is
        // not part of the message (wire::decode already checked it is not less).
        let len = wire::content_length(&raw).ok()?.unwrap_or(raw.body.len());
        Some(Self {
            start_line: raw.start_line.to_string(),
            headers: raw.headers.clone(),
            body: raw.body.get(..len)?.to_vec(),
        })
    }

    pub(super) fn is_request(&self) -> bool {
        !self.start_line.starts_with("SIP/")
    }

    pub(super) fn method(&self) -> &str {
        self.start_line.split(' ').next().unwrap_or_default()
    }

    /// The Request-URI of a request.
    pub(super) fn request_uri(&self) -> Option<&str> {
        self.start_line.split(' ').nth(1)
    }

    /// The status code of a response; 500 when it has none that parses.
    pub(super) fn status(&self) -> u16 {
        self.start_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(500)
    }

    pub(super) fn first(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of the first `name` header (lists split).
    pub(super) fn top(&self, name: &str) -> Option<String> {
        self.first(name)
            .and_then(|v| split_list(v).first().map(|s| s.to_string()))
    }

    /// The top Via, if it parses.
    pub(super) fn top_via(&self) -> Option<Via> {
        self.top("Via").as_deref().and_then(Via::parse)
    }

    /// RFC 3581: the sender's real address goes in its Via, so the
    /// responses find it behind NAT. The Via's branch, for the edge's own;
    /// `None` without a Via that parses.
    pub(super) fn mark_received(&mut self, from: SocketAddr) -> Option<String> {
        let mut via = self.top_via()?;
        via.mark_received(from);
        let branch = via.branch().unwrap_or_default().to_string();
        self.set_top("Via", via.text());
        Some(branch)
    }

    /// Removes the first value of the first `name` header.
    pub(super) fn pop(&mut self, name: &str) -> Option<String> {
        let i = self
            .headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))?;
        let values: Vec<String> = split_list(&self.headers[i].1)
            .into_iter()
            .map(str::to_string)
            .collect();
        let (first, rest) = values.split_first()?;
        if rest.is_empty() {
            self.headers.remove(i);
        } else {
            self.headers[i].1 = rest.join(", ");
        }
        Some(first.clone())
    }

    /// Replaces the first value of the first `name` header.
    pub(super) fn set_top(&mut self, name: &str, value: String) {
        if self.pop(name).is_some() {
            self.push_top(name, value);
        }
    }

    /// Adds `value` before every other `name` header.
    pub(super) fn push_top(&mut self, name: &str, value: String) {
        let i = self
            .headers
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
            .unwrap_or(self.headers.len());
        self.headers.insert(i, (name.to_string(), value));
    }

    /// Removes every `name` header.
    pub(super) fn remove_all(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Max-Forwards less one; false when it ran out (RFC 3261 §16.3 step 3).
    pub(super) fn hop(&mut self) -> bool {
        let left = self
            .first("Max-Forwards")
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(70);
        if left == 0 {
            return false;
        }
        self.remove_all("Max-Forwards");
        self.headers
            .push(("Max-Forwards".to_string(), (left - 1).to_string()));
        true
    }

    /// A request that starts a dialog, which the edge stays in through its
    /// Record-Route.
    pub(super) fn dialog_creating(&self) -> bool {
        matches!(self.method(), "INVITE" | "SUBSCRIBE" | "REFER")
            && self.first("To").and_then(tag_of).is_none()
    }

    /// The stateless answer `code` to this request (never to an ACK): its
    /// Via, From, Call-ID and CSeq, and its To with a tag derived from it,
    /// so a retransmission gets the same one.
    pub(super) fn answer(&self, code: u16) -> Vec<u8> {
        let mut text = format!("SIP/2.0 {code} {}\r\n", reason(code));
        for (n, v) in &self.headers {
            let keep = ["Via", "From", "Call-ID", "CSeq"]
                .iter()
                .any(|k| n.eq_ignore_ascii_case(k));
            if keep {
                text.push_str(&format!("{n}: {v}\r\n"));
            } else if n.eq_ignore_ascii_case("To") {
                let tag = if tag_of(v).is_some() {
                    String::new()
                } else {
                    format!(";tag=edge{:x}", fnv(&[v.as_bytes()]))
                };
                text.push_str(&format!("To: {v}{tag}\r\n"));
            }
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        text.into_bytes()
    }

    pub(super) fn bytes(&self) -> Vec<u8> {
        let mut out = self.start_line.clone();
        out.push_str("\r\n");
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        // Always stated: a message forwarded onto TCP needs it.
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        483 => "Too Many Hops",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: &str) -> Message {
        let text = format!("OPTIONS sip:b@h SIP/2.0\r\n{headers}Content-Length: 2\r\n\r\nokextra");
        Message::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn values_come_off_and_go_on_at_the_top_of_their_header() {
        let mut m =
            message("Route: <sip:a;lr>, <sip:b;lr>\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n");
        assert_eq!(m.pop("Route").as_deref(), Some("<sip:a;lr>"));
        assert_eq!(m.first("Route"), Some("<sip:b;lr>"));
        m.push_top("Via", "SIP/2.0/UDP e;branch=z9hG4bKe".to_string());
        m.set_top("Route", "<sip:c;lr>".to_string());
        let text = String::from_utf8(m.bytes()).unwrap();
        assert!(
            text.ends_with(
                "Via: SIP/2.0/UDP e;branch=z9hG4bKe\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
                 Route: <sip:c;lr>\r\nContent-Length: 2\r\n\r\nok"
            ),
            "the body is cut to its Content-Length: {text}"
        );
    }

    #[test]
    fn max_forwards_counts_down_to_zero() {
        let mut m = message("Max-Forwards: 1\r\n");
        assert!(m.hop());
        assert_eq!(m.first("Max-Forwards"), Some("0"));
        assert!(!m.hop(), "spent");
        assert!(message("").hop(), "70 when absent");
    }
}
