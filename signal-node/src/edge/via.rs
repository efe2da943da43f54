//! Via values (RFC 3261 §20.42): where the responses to a request go back,
//! hop by hop, and how the edge marks a device's real address in them.

use std::net::SocketAddr;

use crate::transaction::Peer;
use crate::wire::headers::target_addr;

/// A Via value's transport, sent-by and parameters.
pub(super) struct Via {
    transport: String,
    pub(super) sent_by: String,
    params: Vec<(String, Option<String>)>,
}

impl Via {
    pub(super) fn parse(value: &str) -> Option<Self> {
        let (proto, rest) = value.trim().split_once([' ', '\t'])?;
        let transport = proto.rsplit('/').next()?.trim().to_ascii_uppercase();
        let mut parts = rest.split(';');
        let sent_by = parts.next()?.trim().to_string();
        let params = parts
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                None => (p.trim().to_string(), None),
            })
            .collect();
        Some(Self {
            transport,
            sent_by,
            params,
        })
    }

    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_deref())
    }

    /// The `branch` parameter: the transaction this hop belongs to.
    pub(super) fn branch(&self) -> Option<&str> {
        self.param("branch")
    }

    /// The sent-by as an address, when it is one.
    pub(super) fn sent_by_addr(&self) -> Option<SocketAddr> {
        target_addr(&format!("sip:{}", self.sent_by))
    }

    /// RFC 3581: the address the request really came from goes in the Via
    /// (`received`, `rport`), so the responses find the sender behind NAT.
    pub(super) fn mark_received(&mut self, from: SocketAddr) {
        self.params.retain(|(k, _)| {
            !k.eq_ignore_ascii_case("received") && !k.eq_ignore_ascii_case("rport")
        });
        self.params
            .push(("received".to_string(), Some(from.ip().to_string())));
        self.params
            .push(("rport".to_string(), Some(from.port().to_string())));
    }

    /// Where responses for this hop go (RFC 3261 §18.2.2, RFC 3581).
    pub(super) fn response_peer(&self) -> Option<Peer> {
        let sent_by = self.sent_by_addr()?;
        let ip = self
            .param("received")
            .and_then(|r| r.trim_matches(['[', ']']).parse().ok())
            .unwrap_or(sent_by.ip());
        let port = self
            .param("rport")
            .and_then(|p| p.parse().ok())
            .unwrap_or(sent_by.port());
        Some(Peer {
            addr: SocketAddr::new(ip, port),
            reliable: self.transport != "UDP",
        })
    }

    pub(super) fn text(&self) -> String {
        let mut s = format!("SIP/2.0/{} {}", self.transport, self.sent_by);
        for (k, v) in &self.params {
            match v {
                Some(v) => s.push_str(&format!(";{k}={v}")),
                None => s.push_str(&format!(";{k}")),
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_go_to_the_received_address_and_rport() {
        let mut via = Via::parse("SIP/2.0/tcp 192.168.1.20:5062;branch=z9hG4bK-1;rport").unwrap();
        assert_eq!(via.branch(), Some("z9hG4bK-1"));
        via.mark_received("203.0.113.7:40000".parse().unwrap());
        assert_eq!(
            via.text(),
            "SIP/2.0/TCP 192.168.1.20:5062;branch=z9hG4bK-1;received=203.0.113.7;rport=40000"
        );
        assert_eq!(
            via.response_peer(),
            Some(Peer {
                addr: "203.0.113.7:40000".parse().unwrap(),
                reliable: true,
            })
        );
        let plain = Via::parse("SIP/2.0/UDP 10.1.0.1:5060;branch=z9hG4bK-2").unwrap();
        assert_eq!(
            plain.response_peer(),
            Some(Peer {
                addr: "10.1.0.1:5060".parse().unwrap(),
                reliable: false,
            })
        );
        assert!(Via::parse("SIP/2.0/UDP").is_none());
    }
}
