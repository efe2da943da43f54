//! What the edge remembers of a dialog, kept in the dialog itself: the
//! URI the edge puts in a Path or Record-Route names the device's flow
//! (`ft`, its transport and source address) and the backend the dialog
//! lives on (`vb`), so the requests routed back through the edge say where
//! they go and the edge keeps nothing per call.

use std::net::SocketAddr;

use crate::transaction::Peer;
use crate::wire::headers::uri_of;

pub(super) fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// A device's flow as a URI parameter value.
pub(super) fn flow_token(p: Peer) -> String {
    format!(
        "{}{}",
        if p.reliable { 't' } else { 'u' },
        hex(&p.addr.to_string())
    )
}

pub(super) fn flow_of(token: &str) -> Option<Peer> {
    let reliable = match token.get(..1)? {
        "t" => true,
        "u" => false,
        _ => return None,
    };
    let addr = unhex(token.get(1..)?)?.parse().ok()?;
    Some(Peer { addr, reliable })
}

/// A URI parameter's value (`;name=value`).
pub(super) fn uri_param(uri: &str, name: &str) -> Option<String> {
    uri.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// The edge's route at `local` for a dialog between the device at `flow`
/// and `backend`, as it goes in a Path or Record-Route.
pub(super) fn edge_route(local: SocketAddr, flow: Peer, backend: SocketAddr) -> String {
    format!(
        "<sip:{local};lr;ft={};vb={}>",
        flow_token(flow),
        hex(&backend.to_string())
    )
}

/// The backend an edge route (a Route value) pins its dialog to.
pub(super) fn pinned_backend(route: &str) -> Option<SocketAddr> {
    uri_param(&uri_of(route), "vb")
        .and_then(|v| unhex(&v))
        .and_then(|v| v.parse().ok())
}

/// The device's flow an edge route (a Route value) names.
pub(super) fn device_flow(route: &str) -> Option<Peer> {
    uri_param(&uri_of(route), "ft").and_then(|t| flow_of(&t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_route_names_the_flow_and_the_backend() {
        let device = Peer {
            addr: "203.0.113.7:40000".parse().unwrap(),
            reliable: true,
        };
        let backend: SocketAddr = "10.1.0.2:5060".parse().unwrap();
        let route = edge_route("198.51.100.1:5060".parse().unwrap(), device, backend);
        assert!(
            route.starts_with("<sip:198.51.100.1:5060;lr;ft=t"),
            "{route}"
        );
        assert_eq!(device_flow(&route), Some(device));
        assert_eq!(pinned_backend(&route), Some(backend));
        assert_eq!(pinned_backend("<sip:198.51.100.1:5060;lr;vb=zz>"), None);
        assert_eq!(flow_of("x31"), None, "neither TCP nor UDP");
        assert_eq!(unhex("313"), None, "odd length");
    }
}
