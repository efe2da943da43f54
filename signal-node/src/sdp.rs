//! The part of SDP (RFC 4566) a media-anchoring B2BUA touches: where a side
//! receives audio, and rewriting that to a call leg's address. Every other
//! line passes through unchanged, so codecs and attributes are negotiated
//! end to end.

use std::net::{IpAddr, SocketAddr};

/// Why an SDP says nowhere to send audio to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// An `m=audio` line without a port that parses.
    #[error("bad m= line {0:?}")]
    BadMedia(String),
    /// A `c=` line of another network or address type than IP4/IP6.
    #[error("unsupported c= line {0:?}")]
    UnsupportedConnection(String),
    /// A `c=` line that stops after the address type.
    #[error("c= without an address")]
    NoConnectionAddress,
    /// A `c=` address that is not an IP address.
    #[error("bad c= address {0:?}")]
    BadConnectionAddress(String),
    /// No audio stream at all.
    #[error("no m=audio line")]
    NoAudio,
    /// An audio stream with no `c=` for it, at either level.
    #[error("no c= line for the audio")]
    NoAudioConnection,
}

/// Where the SDP's first audio stream is received: the media-level `c=`
/// if any, else the session-level one, and the `m=audio` port.
pub fn audio_address(sdp: &str) -> Result<SocketAddr, SdpError> {
    let mut session_ip: Option<IpAddr> = None;
    let mut in_audio = false;
    let mut audio_port: Option<u16> = None;
    let mut media_ip: Option<IpAddr> = None;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            if audio_port.is_some() {
                break;
            }
            in_audio = m.starts_with("audio ");
            if in_audio {
                let port = m
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| SdpError::BadMedia(line.to_string()))?;
                audio_port = Some(port);
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            let ip = parse_connection(c)?;
            match (audio_port, in_audio) {
                (None, false) => session_ip = Some(ip),
                (Some(_), true) => media_ip = Some(ip),
                _ => {}
            }
        }
    }
    let port = audio_port.ok_or(SdpError::NoAudio)?;
    let ip = media_ip.or(session_ip).ok_or(SdpError::NoAudioConnection)?;
    Ok(SocketAddr::new(ip, port))
}

fn parse_connection(c: &str) -> Result<IpAddr, SdpError> {
    let mut parts = c.split_whitespace();
    let (net, kind, addr) = (parts.next(), parts.next(), parts.next());
    if net != Some("IN") || !matches!(kind, Some("IP4" | "IP6")) {
        return Err(SdpError::UnsupportedConnection(c.to_string()));
    }
    let addr = addr.ok_or(SdpError::NoConnectionAddress)?;
    // Multicast TTL suffixes ("/127") are not for unicast calls.
    addr.split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|_| SdpError::BadConnectionAddress(addr.to_string()))
}

/// The SDP with every `c=` line and the first audio port pointing at `to`.
pub fn rewrite_audio(sdp: &str, to: SocketAddr) -> String {
    let kind = if to.is_ipv4() { "IP4" } else { "IP6" };
    let mut out = String::with_capacity(sdp.len() + 16);
    let mut port_done = false;
    for line in sdp.lines().map(str::trim_end) {
        if line.starts_with("c=") {
            out.push_str(&format!("c=IN {kind} {}", to.ip()));
        } else if let Some(m) = line.strip_prefix("m=audio ").filter(|_| !port_done) {
            port_done = true;
            let rest = m.split_once(' ').map_or("", |(_, r)| r);
            out.push_str(&format!("m=audio {} {rest}", to.port()));
        } else if let Some(o) = line.strip_prefix("o=") {
            // The origin's address follows the connection address.
            let fields: Vec<&str> = o.split_whitespace().collect();
            if fields.len() == 6 {
                out.push_str(&format!(
                    "o={} {} {} IN {kind} {}",
                    fields[0],
                    fields[1],
                    fields[2],
                    to.ip()
                ));
            } else {
                out.push_str(line);
            }
        } else {
            out.push_str(line);
        }
        out.push_str("\r\n");
    }
    out
}

/// The payload type of RFC 4733 telephone-events an SDP offers, if any.
pub fn telephone_event_payload(sdp: &str) -> Option<u8> {
    sdp.lines().find_map(|l| {
        let (pt, codec) = l.trim().strip_prefix("a=rtpmap:")?.split_once(' ')?;
        codec
            .to_ascii_lowercase()
            .starts_with("telephone-event/")
            .then(|| pt.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n\
c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n";

    #[test]
    fn finds_the_audio_address() {
        assert_eq!(audio_address(OFFER), Ok("127.0.0.1:6000".parse().unwrap()));
        let media_level =
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 7000 RTP/AVP 0\r\nc=IN IP4 10.0.0.2\r\n";
        assert_eq!(
            audio_address(media_level),
            Ok("10.0.0.2:7000".parse().unwrap())
        );
        let v6 = "v=0\r\nc=IN IP6 2001:db8::1\r\nm=audio 7000 RTP/AVP 0\r\n";
        assert_eq!(audio_address(v6), Ok("[2001:db8::1]:7000".parse().unwrap()));
    }

    #[test]
    fn bad_sdp_is_an_error_not_a_panic() {
        for (bad, why) in [
            ("", SdpError::NoAudio),
            (
                "v=0\r\nm=audio x RTP/AVP 0\r\n",
                SdpError::BadMedia("m=audio x RTP/AVP 0".to_string()),
            ),
            (
                "v=0\r\nm=audio 5000 RTP/AVP 0\r\n",
                SdpError::NoAudioConnection,
            ),
            (
                "v=0\r\nc=IN IP4 nowhere\r\nm=audio 5000 RTP/AVP 0\r\n",
                SdpError::BadConnectionAddress("nowhere".to_string()),
            ),
            (
                "v=0\r\nc=ATM x y\r\nm=audio 5000 RTP/AVP 0\r\n",
                SdpError::UnsupportedConnection("ATM x y".to_string()),
            ),
        ] {
            assert_eq!(audio_address(bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            SdpError::BadConnectionAddress("nowhere".to_string()).to_string(),
            "bad c= address \"nowhere\""
        );
    }

    #[test]
    fn rewrites_address_and_port_and_keeps_the_rest() {
        let out = rewrite_audio(OFFER, "203.0.113.10:30002".parse().unwrap());
        assert_eq!(
            audio_address(&out),
            Ok("203.0.113.10:30002".parse().unwrap())
        );
        assert!(out.contains("m=audio 30002 RTP/AVP 0 8 101\r\n"), "{out}");
        assert!(out.contains("o=user1 53655765 2353687637 IN IP4 203.0.113.10\r\n"));
        assert!(out.contains("a=rtpmap:101 telephone-event/8000\r\n"));
    }

    #[test]
    fn the_telephone_event_payload_type_is_found() {
        let sdp = "v=0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
        assert_eq!(telephone_event_payload(sdp), Some(101));
        assert_eq!(
            telephone_event_payload("v=0\r\nm=audio 4000 RTP/AVP 0\r\n"),
            None
        );
    }
}
