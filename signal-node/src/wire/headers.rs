//! Reading and writing the SIP headers the B2BUA and the edge work with,
//! on messages rsip has already parsed: name-addrs, tags, route sets, SDP
//! bodies. Kept apart from the call logic so both roles share one reading.

use std::net::SocketAddr;

use rsipstack::sip::headers::make_header;
use rsipstack::sip::prelude::*;
use rsipstack::sip::{Request, Response};

use crate::wire::{self, Inbound};

/// A request or response from text we wrote ourselves; `None` only if our
/// own template is broken, which the tests rule out.
pub fn request_from_text(text: &str) -> Option<Request> {
    match wire::decode(text.as_bytes(), false) {
        Inbound::Request(r) => Some(*r),
        _ => None,
    }
}

/// The value of header `name` (first), as text.
pub fn header<'a>(m: &'a impl HasHeaders, name: &str) -> Option<&'a str> {
    m.headers()
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .map(|h| h.value())
}

/// The URI inside a name-addr (`"A" <sip:a@h>;tag=x` → `sip:a@h`).
pub fn uri_of(value: &str) -> String {
    // A quoted display name may hold `<` and `>` of its own.
    let value = after_display_name(value);
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].to_string(),
        _ => value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// `value` past its leading quoted string, if it has one.
fn after_display_name(value: &str) -> &str {
    let Some(rest) = value.trim_start().strip_prefix('"') else {
        return value;
    };
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return &rest[i + 1..],
            _ => {}
        }
    }
    value
}

/// `<uri>`, after `display` as a quoted string (RFC 3261 §25.1: `"` and
/// `\` escaped) when there is one.
pub fn name_addr(display: Option<&str>, uri: &str) -> String {
    match display {
        Some(d) => {
            let escaped = d.replace('\\', "\\\\").replace('"', "\\\"");
            format!("\"{escaped}\" <{uri}>")
        }
        None => format!("<{uri}>"),
    }
}

/// Every value of every header called `name`, comma lists split, in order.
pub fn header_values(m: &impl HasHeaders, name: &str) -> Vec<String> {
    m.headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .flat_map(|h| {
            wire::split_list(h.value())
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `Route` header lines for a route set, each ending in CRLF.
pub fn route_lines(route_set: &[String]) -> String {
    route_set
        .iter()
        .map(|r| format!("Route: {r}\r\n"))
        .collect()
}

/// The `tag` parameter of a From/To value.
pub fn tag_of(value: &str) -> Option<String> {
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("tag")
            .then(|| v.trim().to_string())
    })
}

/// The user part of a To/From value such as `"A" <sip:alice@host>;tag=x`.
pub fn user_of(value: &str) -> Option<String> {
    // As uri_of reads it: a display name's `<` and `>` are not the URI's.
    let value = after_display_name(value);
    let uri = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(';').next().unwrap_or_default(),
    };
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let (user, _) = rest.split_once('@')?;
    let user = user.split(':').next().unwrap_or_default();
    (!user.is_empty()).then(|| user.to_string())
}

/// The callee's user name from the Request-URI.
pub fn callee_of(req: &Request) -> Option<String> {
    user_of(&req.uri.to_string())
}

/// `host:port` of a SIP URI, with the default port.
pub fn target_addr(uri: &str) -> Option<SocketAddr> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let hostport = hostport.split([';', '?']).next()?;
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip = hostport.trim_start_matches('[').trim_end_matches(']');
    ip.parse().ok().map(|ip| SocketAddr::new(ip, 5060))
}

/// The SDP body of a message, if it has one.
pub fn sdp_body(m: &impl HasHeaders, body: &[u8]) -> Option<String> {
    let is_sdp = header(m, "Content-Type")
        .is_some_and(|t| t.trim().to_ascii_lowercase().starts_with("application/sdp"));
    (is_sdp && !body.is_empty()).then(|| String::from_utf8_lossy(body).into_owned())
}

/// Whether a response is 2xx.
pub fn is_success(r: &Response) -> bool {
    (200..300).contains(&r.status_code().code())
}

/// Replaces a response's body.
pub fn with_body(mut r: Response, content_type: &str, body: String) -> Response {
    r.headers
        .retain(|h| !h.name().eq_ignore_ascii_case("Content-Length"));
    r.headers
        .push(make_header("Content-Type", content_type.to_string()));
    r.headers
        .push(make_header("Content-Length", body.len().to_string()));
    r.body = body.into_bytes();
    r
}

/// A message's CSeq number (1 when it has none that parses).
pub fn cseq_of(m: &impl HeadersExt) -> u32 {
    m.cseq_header().ok().and_then(|c| c.seq().ok()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_parts() {
        assert_eq!(
            uri_of("\"A\" <sip:a@h:5060;transport=tcp>;tag=x"),
            "sip:a@h:5060;transport=tcp"
        );
        assert_eq!(uri_of("sip:a@h;tag=x"), "sip:a@h");
        assert_eq!(tag_of("<sip:a@h;lr>;tag=x1").as_deref(), Some("x1"));
        assert_eq!(tag_of("<sip:a@h;tag=inside>"), None);
        assert_eq!(tag_of("sip:a@h;tag=y"), Some("y".into()));
    }

    #[test]
    fn display_names_are_quoted_and_read_past() {
        let odd = r#"Bob "<sip:bob@h>" \ Boss"#;
        let from = format!("{};tag=t1", name_addr(Some(odd), "sip:alice@h"));
        assert_eq!(
            from,
            r#""Bob \"<sip:bob@h>\" \\ Boss" <sip:alice@h>;tag=t1"#
        );
        assert_eq!(uri_of(&from), "sip:alice@h");
        assert_eq!(user_of(&from).as_deref(), Some("alice"));
        assert_eq!(tag_of(&from).as_deref(), Some("t1"));
        assert_eq!(name_addr(None, "sip:a@h"), "<sip:a@h>");
        // Unquoted display names, and a quote that never closes.
        assert_eq!(uri_of("Alice <sip:alice@h>"), "sip:alice@h");
        assert_eq!(user_of("\"open <sip:eve@h>").as_deref(), Some("eve"));
    }

    #[test]
    fn targets() {
        assert_eq!(
            target_addr("sip:bob@127.0.0.1:5070;transport=UDP"),
            Some("127.0.0.1:5070".parse().unwrap())
        );
        assert_eq!(
            target_addr("sip:10.0.0.1"),
            Some("10.0.0.1:5060".parse().unwrap())
        );
        assert_eq!(
            target_addr("sip:bob@[2001:db8::1]:5062"),
            Some("[2001:db8::1]:5062".parse().unwrap())
        );
        assert_eq!(target_addr("sip:bob@example.com"), None);
        assert_eq!(target_addr("http://x"), None);
    }
}
