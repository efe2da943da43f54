//! From bytes on the wire to a SIP message we can act on, or to the
//! response that tells the sender what was wrong with it.
//!
//! rsipstack's parser is lenient (a bad Content-Length reads as 0, a short
//! body is cut silently) and knows only the standard methods, so the raw
//! layer here checks framing and the mandatory headers first, and can build
//! a `400`/`501` from the raw header lines of a message that never parses.

use std::fmt::Write as _;

use rsipstack::sip::prelude::*;
use rsipstack::sip::{self, SipMessage};

/// Larger messages are refused: no real device sends them, and a peer that
/// does is misframing or attacking.
pub const MAX_MESSAGE: usize = 65_535;

/// What the receiving side should do with some bytes.
#[derive(Debug)]
pub enum Inbound {
    /// A request that passed every check.
    Request(Box<sip::Request>),
    /// A response that passed every check.
    Response(Box<sip::Response>),
    /// Not acceptable. `reply` is the response to send back, when the
    /// message was a request with enough headers to answer it.
    Rejected {
        /// Why, for logs and the Warning header.
        why: String,
        /// The response bytes, if one can be sent.
        reply: Option<Vec<u8>>,
    },
    /// A CRLF keep-alive (RFC 5626): answered with nothing on UDP.
    KeepAlive,
}

/// The canonical name of a header, expanding compact forms (RFC 3261 §7.3.3).
pub fn canonical_name(name: &str) -> String {
    let long = match name.to_ascii_lowercase().as_str() {
        "i" | "call-id" => "Call-ID",
        "m" | "contact" => "Contact",
        "e" => "Content-Encoding",
        "l" | "content-length" => "Content-Length",
        "c" | "content-type" => "Content-Type",
        "f" | "from" => "From",
        "s" => "Subject",
        "k" => "Supported",
        "t" | "to" => "To",
        "v" | "via" => "Via",
        "cseq" => "CSeq",
        "max-forwards" => "Max-Forwards",
        _ => return name.to_string(),
    };
    long.to_string()
}

/// A message split into lines without interpreting any header.
#[derive(Debug)]
pub struct RawMessage<'a> {
    /// The first line.
    pub start_line: &'a str,
    /// Headers in order, names canonical, folded lines joined.
    pub headers: Vec<(String, String)>,
    /// Everything after the blank line.
    pub body: &'a [u8],
}

impl RawMessage<'_> {
    /// Values of every header called `name` (canonical), in order; values
    /// separated by commas on one line are not split.
    pub fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn first<'s>(&'s self, name: &'s str) -> Option<&'s str> {
        self.values(name).next()
    }

    /// The request method, if this is a request line.
    pub fn method(&self) -> Option<&str> {
        if self.start_line.starts_with("SIP/") {
            return None;
        }
        self.start_line.split([' ', '\t']).next()
    }
}

/// Splits at commas outside quotes and angle brackets.
pub fn split_list(v: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut angle) = (Vec::new(), 0, false, false);
    for (i, c) in v.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(v[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(v[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// Why bytes are not a SIP message, before any header is interpreted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The headers never end.
    #[error("no blank line after the headers")]
    NoBlankLine,
    /// Header bytes that are not text.
    #[error("headers are not UTF-8")]
    NotUtf8,
    /// Nothing before the first line end.
    #[error("empty start line")]
    EmptyStartLine,
    /// A folded line with nothing to fold into.
    #[error("continuation line before any header")]
    LeadingContinuation,
    /// A header line without a colon (its start, clipped).
    #[error("header line without a colon: {0:?}")]
    NoColon(String),
    /// A header name with other than token characters (clipped).
    #[error("bad header name {0:?}")]
    BadHeaderName(String),
    /// Two Content-Length headers, which may say different things.
    #[error("more than one Content-Length")]
    ContentLengths,
    /// A Content-Length that is not a number.
    #[error("Content-Length {0:?} is not a number")]
    BadContentLength(String),
}

/// Splits `bytes` into start line, headers and body.
pub fn split(bytes: &[u8]) -> Result<RawMessage<'_>, Malformed> {
    let end = find(bytes, b"\r\n\r\n").ok_or(Malformed::NoBlankLine)?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| Malformed::NotUtf8)?;
    let mut lines = head.split("\r\n");
    let start_line = lines.next().unwrap_or_default();
    if start_line.is_empty() {
        return Err(Malformed::EmptyStartLine);
    }
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            let Some(last) = headers.last_mut() else {
                return Err(Malformed::LeadingContinuation);
            };
            last.1.push(' ');
            last.1.push_str(line.trim());
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| Malformed::NoColon(clip(line).to_string()))?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(Malformed::BadHeaderName(clip(name).to_string()));
        }
        headers.push((canonical_name(name), value.trim().to_string()));
    }
    Ok(RawMessage {
        start_line,
        headers,
        body: &bytes[end + 4..],
    })
}

fn clip(s: &str) -> &str {
    let mut end = s.len().min(40);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// RFC 3261 token characters.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// The length the Content-Length header declares: `Ok(None)` without one.
pub fn content_length(raw: &RawMessage<'_>) -> Result<Option<usize>, Malformed> {
    let mut values = raw.values("Content-Length");
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Malformed::ContentLengths);
    }
    v.parse::<usize>()
        .map(Some)
        .map_err(|_| Malformed::BadContentLength(v.to_string()))
}

/// The mandatory headers every request and response carries (RFC 3261 §8.1.1).
const MANDATORY: [&str; 5] = ["Via", "From", "To", "Call-ID", "CSeq"];

/// Decodes one message. `framed` says a stream framer already cut it to
/// its Content-Length; on a datagram the length is checked here.
pub fn decode(bytes: &[u8], framed: bool) -> Inbound {
    if bytes.iter().all(|b| matches!(b, b'\r' | b'\n')) {
        return Inbound::KeepAlive;
    }
    if bytes.len() > MAX_MESSAGE {
        return Inbound::Rejected {
            why: format!("message of {} bytes exceeds {MAX_MESSAGE}", bytes.len()),
            // Answering would mean trusting the headers of a misframed blob.
            reply: None,
        };
    }
    let raw = match split(bytes) {
        Ok(raw) => raw,
        Err(why) => {
            return Inbound::Rejected {
                why: why.to_string(),
                reply: None,
            };
        }
    };
    match check(&raw, framed) {
        Ok(body_len) => parse(bytes, &raw, body_len),
        Err((code, why)) => reject(&raw, code, why),
    }
}

/// Framing and mandatory headers; the body length to keep, or the status
/// code and reason to refuse with.
fn check(raw: &RawMessage<'_>, framed: bool) -> Result<usize, (u16, String)> {
    let declared = content_length(raw).map_err(|e| (400, e.to_string()))?;
    let body_len = match declared {
        Some(n) if n > raw.body.len() => {
            return Err((
                400,
                format!(
                    "Content-Length {n} but the body has {} bytes",
                    raw.body.len()
                ),
            ));
        }
        Some(n) => n,
        None if framed => 0,
        None => raw.body.len(),
    };
    for name in MANDATORY {
        if raw.first(name).is_none_or(str::is_empty) {
            return Err((400, format!("missing {name} header")));
        }
    }
    if let Some(method) = raw.method() {
        let parts: Vec<&str> = raw.start_line.split([' ', '\t']).collect();
        if parts.len() != 3 || parts[2] != "SIP/2.0" {
            return Err((400, format!("bad request line {:?}", clip(raw.start_line))));
        }
        if !method.bytes().all(is_token_byte) {
            return Err((400, "bad method".into()));
        }
        if method.parse::<sip::Method>().is_err() {
            return Err((501, format!("method {method} is not implemented")));
        }
        let cseq = raw.first("CSeq").unwrap_or_default();
        let mut cseq_parts = cseq.split_whitespace();
        let number_ok = cseq_parts.next().is_some_and(|n| n.parse::<u32>().is_ok());
        let cseq_method = cseq_parts.next().unwrap_or_default();
        if !number_ok || !cseq_method.eq_ignore_ascii_case(method) {
            return Err((400, format!("CSeq {cseq:?} does not match {method}")));
        }
        if let Some(mf) = raw.first("Max-Forwards")
            && mf.parse::<u8>().is_err()
        {
            return Err((400, format!("bad Max-Forwards {mf:?}")));
        }
    }
    Ok(body_len)
}

fn parse(bytes: &[u8], raw: &RawMessage<'_>, body_len: usize) -> Inbound {
    let end = bytes.len() - raw.body.len() + body_len;
    let msg = match sip::parser::parse_message(&bytes[..end]) {
        Ok(m) => m,
        Err(e) => return reject(raw, 400, e.to_string()),
    };
    // Typed checks of what every layer above relies on.
    let typed = match &msg {
        SipMessage::Request(r) => typed_ok(r),
        SipMessage::Response(r) => typed_ok(r),
    };
    if let Err(why) = typed {
        return reject(raw, 400, why.to_string());
    }
    match msg {
        SipMessage::Request(r) => Inbound::Request(Box::new(r)),
        SipMessage::Response(r) => Inbound::Response(Box::new(r)),
    }
}

/// A header every layer above relies on that rsip cannot read.
#[derive(Debug, thiserror::Error)]
enum BadHeader {
    /// A header that does not parse as its type.
    #[error("bad {name}: {source}")]
    Unparsable {
        /// The header's name.
        name: &'static str,
        /// What rsip said.
        source: sip::Error,
    },
    /// A top Via without the branch that names its transaction.
    #[error("Via has no branch")]
    NoBranch,
}

fn typed_ok(m: &impl HeadersExt) -> Result<(), BadHeader> {
    let bad = |name| move |source| BadHeader::Unparsable { name, source };
    let via = m
        .top_via_header()
        .and_then(|v| v.typed())
        .map_err(bad("Via"))?;
    if via.branch().is_none() {
        return Err(BadHeader::NoBranch);
    }
    m.cseq_header().and_then(|c| c.seq()).map_err(bad("CSeq"))?;
    m.from_header()
        .and_then(|f| f.typed())
        .map_err(bad("From"))?;
    m.to_header().and_then(|t| t.typed()).map_err(bad("To"))?;
    Ok(())
}

fn reject(raw: &RawMessage<'_>, code: u16, why: String) -> Inbound {
    // Only requests are answered, never a response or an ACK.
    let answerable =
        raw.method().is_some_and(|m| !m.eq_ignore_ascii_case("ACK")) && raw.first("Via").is_some();
    let reply = answerable.then(|| raw_response(raw, code, &why));
    Inbound::Rejected { why, reply }
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        501 => "Not Implemented",
        _ => "Error",
    }
}

/// A response built from raw header lines (RFC 3261 §8.2.6.2): the Vias,
/// From, To, Call-ID and CSeq copied as they came.
pub fn raw_response(raw: &RawMessage<'_>, code: u16, why: &str) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {code} {}\r\n", reason_phrase(code));
    for (name, value) in &raw.headers {
        if matches!(name.as_str(), "Via" | "From" | "To" | "Call-ID" | "CSeq") {
            let _ = write!(out, "{name}: {value}\r\n");
        }
    }
    // A Warning carries the reason so that a person reading a trace knows.
    let text: String = why
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .take(120)
        .collect();
    let _ = write!(
        out,
        "Warning: 399 voicecluster \"{text}\"\r\nContent-Length: 0\r\n\r\n"
    );
    out.into_bytes()
}

pub mod headers;
pub mod private;

#[cfg(test)]
mod tests;
