//! DTMF digits in RTP (RFC 4733 telephone-events): the relay passes the
//! packets on unchanged and reports each digit once, when its end packet
//! comes (senders repeat the end packet three times).

/// A digit an endpoint pressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digit {
    /// `0`-`9`, `*`, `#`, `A`-`D`.
    pub digit: char,
    /// How long it was pressed, in RTP timestamp units.
    pub duration: u16,
}

const DIGITS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
];

/// Follows one leg's telephone-events.
#[derive(Clone, Debug, Default)]
pub struct DtmfDetector {
    /// The payload type of telephone-event on this leg.
    payload_type: Option<u8>,
    /// RTP timestamp of the last event reported: the repeated end packets
    /// of one event share it.
    last_reported: Option<u32>,
}

impl DtmfDetector {
    /// Detects events of `payload_type` (none: nothing is reported).
    pub fn new(payload_type: Option<u8>) -> Self {
        Self {
            payload_type,
            last_reported: None,
        }
    }

    /// The payload type it follows.
    pub fn payload_type(&self) -> Option<u8> {
        self.payload_type
    }

    /// Looks at one RTP packet; the digit that just ended, if any.
    pub fn on_rtp(&mut self, packet: &[u8]) -> Option<Digit> {
        let pt = self.payload_type?;
        if packet.len() < 16 || packet[1] & 0x7f != pt {
            return None;
        }
        // Skip CSRCs and a header extension, if any.
        let csrcs = usize::from(packet[0] & 0x0f) * 4;
        let mut at = 12 + csrcs;
        if packet[0] & 0x10 != 0 {
            let ext = packet.get(at + 2..at + 4)?;
            at += 4 + usize::from(u16::from_be_bytes([ext[0], ext[1]])) * 4;
        }
        let event = packet.get(at..at + 4)?;
        let end = event[1] & 0x80 != 0;
        if !end {
            return None;
        }
        let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        if self.last_reported == Some(timestamp) {
            return None;
        }
        let digit = *DIGITS.get(usize::from(event[0]))?;
        self.last_reported = Some(timestamp);
        Some(Digit {
            digit,
            duration: u16::from_be_bytes([event[2], event[3]]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pt: u8, timestamp: u32, code: u8, end: bool, duration: u16) -> Vec<u8> {
        let mut p = vec![0x80, pt];
        p.extend_from_slice(&7u16.to_be_bytes());
        p.extend_from_slice(&timestamp.to_be_bytes());
        p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        p.push(code);
        p.push(if end { 0x80 | 10 } else { 10 });
        p.extend_from_slice(&duration.to_be_bytes());
        p
    }

    #[test]
    fn each_digit_is_reported_once_at_its_end() {
        let mut d = DtmfDetector::new(Some(101));
        assert_eq!(
            d.on_rtp(&event(101, 8000, 5, false, 160)),
            None,
            "still pressed"
        );
        let five = d.on_rtp(&event(101, 8000, 5, true, 800));
        assert_eq!(
            five,
            Some(Digit {
                digit: '5',
                duration: 800
            })
        );
        // The end packet is sent three times.
        assert_eq!(d.on_rtp(&event(101, 8000, 5, true, 800)), None);
        assert_eq!(d.on_rtp(&event(101, 8000, 5, true, 800)), None);
        let hash = d.on_rtp(&event(101, 9600, 11, true, 400));
        assert_eq!(hash.map(|h| h.digit), Some('#'));
    }

    #[test]
    fn other_payloads_and_unknown_events_are_not_digits() {
        let mut d = DtmfDetector::new(Some(101));
        assert_eq!(d.on_rtp(&event(0, 8000, 5, true, 800)), None, "audio");
        assert_eq!(
            d.on_rtp(&event(101, 8000, 40, true, 800)),
            None,
            "not a DTMF event"
        );
        assert_eq!(
            d.on_rtp(&event(101, 8000, 5, true, 800)[..14]),
            None,
            "truncated"
        );
        let mut off = DtmfDetector::new(None);
        assert_eq!(off.on_rtp(&event(101, 8000, 5, true, 800)), None);
    }
}
