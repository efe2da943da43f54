//! The RTP/RTCP relay between bridged call legs, sans I/O: a packet in
//! (local port, source, bytes, time) gives at most one packet out (local
//! port to send from, destination, bytes). Sockets live in the driver.
//!
//! A leg's media either goes over UDP to an endpoint (plain RTP) or ends in
//! this process, in a media stack that speaks to the endpoint itself
//! (WebRTC: ICE, DTLS-SRTP). The relay counts, detects and bridges both the
//! same way; only the destination differs.
//!
//! Symmetric latching: a leg sends to where its peer's packets really come
//! from, learnt from the first packet, not to the address in the SDP, which
//! behind NAT is often wrong. Packets from anywhere else are dropped, so a
//! third party cannot inject media into a call.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::ports::{PortError, PortPool};

pub mod dtmf;
pub mod rtcp;
pub use dtmf::{Digit, DtmfDetector};
pub use rtcp::Reception;

/// A leg's id, unique in one relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u64);

/// Counters of one leg, for statistics events and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LegStats {
    /// RTP packets received from the leg's endpoint.
    pub packets_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// RTP packets sent to the leg's endpoint.
    pub packets_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// RTCP packets received.
    pub rtcp_in: u64,
    /// Packets dropped: not RTP/RTCP, from a stranger, or with nowhere to go.
    pub dropped: u64,
    /// What the endpoint's last RTCP report said of the media it receives.
    pub reception: Reception,
}

#[derive(Debug)]
struct Leg {
    rtp_port: u16,
    /// Where the SDP says the endpoint receives RTP.
    remote: Option<SocketAddr>,
    /// Where its RTP really comes from (and so where it receives).
    latched: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    peer: Option<LegId>,
    stats: LegStats,
    last_packet: Instant,
    timed_out: bool,
    dtmf: DtmfDetector,
    /// Media ends in an in-process stack (WebRTC), not at a UDP endpoint.
    in_process: bool,
}

/// Where a relayed packet goes.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Destination {
    /// Over UDP to the endpoint's address.
    Udp(SocketAddr),
    /// To the in-process media stack of the leg that owns `from_port`.
    InProcess,
}

/// A packet to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The local port to send from (the peer leg's RTP or RTCP port).
    pub from_port: u16,
    /// Destination.
    pub to: Destination,
    /// The packet; unchanged but for the payload type of telephone-events
    /// when the two legs numbered them differently.
    pub bytes: Vec<u8>,
}

/// Misuse of the relay API (by the signalling side, never the network).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    /// No port pair left.
    #[error(transparent)]
    Ports(#[from] PortError),
    /// The leg limit of this media node is reached.
    #[error("at capacity: {0} legs")]
    AtCapacity(usize),
    /// No such leg.
    #[error("no leg {0:?}")]
    NoSuchLeg(LegId),
    /// A leg cannot be bridged to itself or to a leg already bridged.
    #[error("legs {0:?} and {1:?} cannot be bridged")]
    BadBridge(LegId, LegId),
}

/// All legs of one media engine.
pub struct Relay {
    ports: PortPool,
    capacity: usize,
    media_timeout: Duration,
    legs: HashMap<LegId, Leg>,
    by_port: HashMap<u16, LegId>,
    next: u64,
    /// DTMF digits detected, until taken.
    digits: Vec<(LegId, Digit)>,
}

/// Whether `b` looks like RTP or RTCP (version 2, long enough); the second
/// byte tells them apart (RFC 5761 §4: RTCP packet types 192..=223).
fn classify(b: &[u8]) -> Option<bool> {
    if b.len() < 8 || b[0] >> 6 != 2 {
        return None;
    }
    let rtcp = (192..=223).contains(&b[1]);
    if !rtcp && b.len() < 12 {
        return None;
    }
    Some(rtcp)
}

impl Relay {
    /// A relay over `ports`, holding at most `capacity` legs; a leg whose
    /// endpoint is silent for `media_timeout` is reported.
    pub fn new(ports: PortPool, capacity: usize, media_timeout: Duration) -> Self {
        Self {
            ports,
            capacity,
            media_timeout,
            legs: HashMap::new(),
            by_port: HashMap::new(),
            digits: Vec::new(),
            next: 0,
        }
    }

    /// Legs now.
    pub fn len(&self) -> usize {
        self.legs.len()
    }

    /// True without legs.
    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }

    /// Port pairs free now.
    pub fn free_ports(&self) -> usize {
        self.ports.free()
    }

    /// A new leg with its own RTP/RTCP port pair; returns its RTP port.
    pub fn create_leg(&mut self, now: Instant) -> Result<(LegId, u16), RelayError> {
        if self.legs.len() >= self.capacity {
            return Err(RelayError::AtCapacity(self.capacity));
        }
        let port = self.ports.take()?;
        self.next += 1;
        let id = LegId(self.next);
        self.legs.insert(
            id,
            Leg {
                rtp_port: port,
                remote: None,
                latched: None,
                latched_rtcp: None,
                peer: None,
                stats: LegStats::default(),
                last_packet: now,
                timed_out: false,
                dtmf: DtmfDetector::default(),
                in_process: false,
            },
        );
        self.by_port.insert(port, id);
        Ok((id, port))
    }

    /// Where the leg's endpoint says (in SDP) it receives RTP. A new address
    /// (re-INVITE) also forgets what was latched.
    pub fn set_remote(&mut self, id: LegId, remote: SocketAddr) -> Result<(), RelayError> {
        let leg = self.legs.get_mut(&id).ok_or(RelayError::NoSuchLeg(id))?;
        if leg.remote != Some(remote) {
            leg.remote = Some(remote);
            leg.latched = None;
            leg.latched_rtcp = None;
        }
        Ok(())
    }

    /// The leg's media ends in an in-process stack: packets for it are
    /// handed over ([`Destination::InProcess`]) and its packets come in by
    /// [`Self::on_media`]. RTCP is not relayed across such a bridge: the
    /// stack runs its own RTCP with its endpoint.
    pub fn set_in_process(&mut self, id: LegId) -> Result<(), RelayError> {
        let leg = self.legs.get_mut(&id).ok_or(RelayError::NoSuchLeg(id))?;
        leg.in_process = true;
        Ok(())
    }

    /// DTMF digits sent on the leg as telephone-events of `payload_type`
    /// are reported (see [`Self::take_digits`]).
    pub fn detect_dtmf(&mut self, id: LegId, payload_type: u8) -> Result<(), RelayError> {
        let leg = self.legs.get_mut(&id).ok_or(RelayError::NoSuchLeg(id))?;
        leg.dtmf = DtmfDetector::new(Some(payload_type));
        Ok(())
    }

    /// Digits endpoints sent since the last call, oldest first.
    pub fn take_digits(&mut self) -> Vec<(LegId, Digit)> {
        self.digits.drain(..).collect()
    }

    /// Media of each leg goes to the other.
    pub fn bridge(&mut self, a: LegId, b: LegId) -> Result<(), RelayError> {
        let free = |l: Option<&Leg>| l.is_some_and(|l| l.peer.is_none());
        if a == b || !free(self.legs.get(&a)) || !free(self.legs.get(&b)) {
            return Err(RelayError::BadBridge(a, b));
        }
        if let Some(l) = self.legs.get_mut(&a) {
            l.peer = Some(b);
        }
        if let Some(l) = self.legs.get_mut(&b) {
            l.peer = Some(a);
        }
        Ok(())
    }

    /// Removes a leg and frees its ports; its peer stays, unbridged.
    pub fn destroy(&mut self, id: LegId) -> Result<LegStats, RelayError> {
        let leg = self.legs.remove(&id).ok_or(RelayError::NoSuchLeg(id))?;
        self.by_port.remove(&leg.rtp_port);
        self.ports.release(leg.rtp_port);
        if let Some(peer) = leg.peer.and_then(|p| self.legs.get_mut(&p)) {
            peer.peer = None;
        }
        Ok(leg.stats)
    }

    /// A leg's counters.
    pub fn stats(&self, id: LegId) -> Option<LegStats> {
        self.legs.get(&id).map(|l| l.stats)
    }

    /// The RTP port of a leg.
    pub fn port(&self, id: LegId) -> Option<u16> {
        self.legs.get(&id).map(|l| l.rtp_port)
    }

    /// A packet arrived on `local_port` from `from`.
    pub fn on_packet(
        &mut self,
        local_port: u16,
        from: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) -> Option<Transmit> {
        let rtp_port = local_port & !1;
        let id = *self.by_port.get(&rtp_port)?;
        let leg = self.legs.get_mut(&id)?;
        let Some(rtcp) = classify(bytes) else {
            leg.stats.dropped += 1;
            return None;
        };
        if rtcp != (local_port % 2 == 1) || leg.in_process {
            leg.stats.dropped += 1;
            return None;
        }
        let latched = if rtcp {
            &mut leg.latched_rtcp
        } else {
            &mut leg.latched
        };
        match latched {
            Some(addr) if *addr != from => {
                leg.stats.dropped += 1;
                return None;
            }
            Some(_) => {}
            None => *latched = Some(from),
        }
        self.forward(id, rtcp, bytes, now)
    }

    /// A packet (decrypted RTP or RTCP) from the in-process stack of leg
    /// `id`.
    pub fn on_media(&mut self, id: LegId, bytes: &[u8], now: Instant) -> Option<Transmit> {
        let leg = self.legs.get_mut(&id)?;
        let Some(rtcp) = classify(bytes) else {
            leg.stats.dropped += 1;
            return None;
        };
        self.forward(id, rtcp, bytes, now)
    }

    fn forward(&mut self, id: LegId, rtcp: bool, bytes: &[u8], now: Instant) -> Option<Transmit> {
        // Disjoint borrows: the leg, its peer and the digits found.
        let Self { legs, digits, .. } = self;
        let leg = legs.get_mut(&id)?;
        leg.last_packet = now;
        leg.timed_out = false;
        if rtcp {
            leg.stats.rtcp_in += 1;
            if let Some(r) = rtcp::reception(bytes) {
                leg.stats.reception = r;
            }
        } else {
            if let Some(d) = leg.dtmf.on_rtp(bytes) {
                digits.push((id, d));
            }
            leg.stats.packets_in += 1;
            leg.stats.bytes_in += bytes.len() as u64;
        }
        let (source_in_process, source_dtmf) = (leg.in_process, leg.dtmf.payload_type());
        let Some(peer_id) = leg.peer else {
            leg.stats.dropped += 1;
            return None;
        };
        let peer = legs.get_mut(&peer_id)?;
        if rtcp && (source_in_process || peer.in_process) {
            // Each side's RTCP describes streams the other side never sees.
            return None;
        }
        let to = if peer.in_process {
            Some(Destination::InProcess)
        } else if rtcp {
            peer.latched_rtcp
                .or_else(|| {
                    peer.latched
                        .or(peer.remote)
                        .map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1)))
                })
                .map(Destination::Udp)
        } else {
            peer.latched.or(peer.remote).map(Destination::Udp)
        };
        let Some(to) = to else {
            peer.stats.dropped += 1;
            return None;
        };
        let mut bytes = bytes.to_vec();
        if !rtcp {
            peer.stats.packets_out += 1;
            peer.stats.bytes_out += bytes.len() as u64;
            // Each endpoint numbers telephone-event as its own SDP said.
            if let (Some(from_pt), Some(to_pt)) = (source_dtmf, peer.dtmf.payload_type())
                && bytes[1] & 0x7f == from_pt
            {
                bytes[1] = (bytes[1] & 0x80) | to_pt;
            }
        }
        Some(Transmit {
            from_port: peer.rtp_port + u16::from(rtcp),
            to,
            bytes,
        })
    }

    /// Changes the media timeout, for the legs there are too: a live
    /// configuration version that changes `spec.media.mediaTimeoutSeconds`.
    pub fn set_media_timeout(&mut self, media_timeout: Duration) {
        self.media_timeout = media_timeout;
    }

    /// The media timeout in force.
    pub fn media_timeout(&self) -> Duration {
        self.media_timeout
    }

    /// Legs silent for the media timeout, each reported once until media
    /// resumes.
    pub fn timed_out(&mut self, now: Instant) -> Vec<LegId> {
        let mut out: Vec<LegId> = self
            .legs
            .iter_mut()
            .filter(|(_, l)| {
                !l.timed_out && now.duration_since(l.last_packet) >= self.media_timeout
            })
            .map(|(id, l)| {
                l.timed_out = true;
                *id
            })
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests;
