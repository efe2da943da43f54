//! What an endpoint's RTCP says about the media it receives (RFC 3550
//! §6.4): the first report block of a sender or receiver report.

/// Reception quality one endpoint reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reception {
    /// Fraction of packets lost since its previous report, in 1/256.
    pub fraction_lost: u8,
    /// Packets lost over the whole call (may be negative with duplicates).
    pub packets_lost: i32,
    /// Interarrival jitter, in RTP timestamp units.
    pub jitter: u32,
}

const SR: u8 = 200;
const RR: u8 = 201;
const REPORT_BLOCK: usize = 24;

/// The first report block of the first SR or RR in a compound packet.
pub fn reception(packet: &[u8]) -> Option<Reception> {
    let mut rest = packet;
    while rest.len() >= 8 {
        let count = usize::from(rest[0] & 0x1f);
        let kind = rest[1];
        let words = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let len = (words + 1) * 4;
        let this = rest.get(..len)?;
        let blocks_at = match kind {
            // Header, sender SSRC, then 20 bytes of sender info.
            SR => 28,
            RR => 8,
            _ => {
                rest = &rest[len..];
                continue;
            }
        };
        if count == 0 {
            return None;
        }
        let block = this.get(blocks_at..blocks_at + REPORT_BLOCK)?;
        // Cumulative loss is a signed 24-bit number.
        let lost = i32::from_be_bytes([block[5], block[6], block[7], 0]) >> 8;
        return Some(Reception {
            fraction_lost: block[4],
            packets_lost: lost,
            jitter: u32::from_be_bytes([block[12], block[13], block[14], block[15]]),
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver_report(fraction: u8, lost: [u8; 3], jitter: u32) -> Vec<u8> {
        let mut p = vec![0x81, RR, 0, 7];
        p.extend_from_slice(&0x1111_1111u32.to_be_bytes());
        p.extend_from_slice(&0x2222_2222u32.to_be_bytes());
        p.push(fraction);
        p.extend_from_slice(&lost);
        p.extend_from_slice(&1000u32.to_be_bytes());
        p.extend_from_slice(&jitter.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        p
    }

    #[test]
    fn a_receiver_report_gives_loss_and_jitter() {
        let r = reception(&receiver_report(64, [0, 0, 12], 80)).unwrap();
        assert_eq!(
            r,
            Reception {
                fraction_lost: 64,
                packets_lost: 12,
                jitter: 80
            }
        );
        let dup = reception(&receiver_report(0, [0xff, 0xff, 0xfe], 0)).unwrap();
        assert_eq!(dup.packets_lost, -2, "negative with duplicates");
    }

    #[test]
    fn a_sender_report_block_comes_after_the_sender_info() {
        let mut sr = vec![0x81, SR, 0, 12];
        sr.extend_from_slice(&[0; 24]);
        sr.extend_from_slice(&receiver_report(32, [0, 1, 0], 5)[8..]);
        let r = reception(&sr).unwrap();
        assert_eq!((r.fraction_lost, r.packets_lost, r.jitter), (32, 256, 5));
    }

    #[test]
    fn other_packets_and_truncation_give_nothing() {
        // An SDES alone, then a report cut short.
        assert_eq!(reception(&[0x81, 202, 0, 1, 0, 0, 0, 0]), None);
        let rr = receiver_report(1, [0, 0, 1], 1);
        assert_eq!(reception(&rr[..20]), None);
        assert_eq!(reception(&[0x80, RR, 0, 1, 1, 2, 3, 4]), None, "no block");
        // SDES first, then the RR: the compound packet is walked.
        let mut compound = vec![0x81, 202, 0, 1, 0, 0, 0, 0];
        compound.extend_from_slice(&rr);
        assert_eq!(reception(&compound).map(|r| r.jitter), Some(1));
    }
}
