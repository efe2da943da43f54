//! RTP port allocation from the configured range: RTP on an even port,
//! RTCP on the odd one above it (RFC 3550 §11), never two legs on one pair,
//! every pair back in the pool when its leg is destroyed.

use std::collections::BTreeSet;

/// Why no port pair could be handed out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortError {
    /// Every pair of the range is in use.
    #[error("all {pairs} RTP port pairs of {min}-{max} are in use")]
    Exhausted {
        /// Lowest port of the range.
        min: u16,
        /// Highest port of the range.
        max: u16,
        /// How many pairs the range holds.
        pairs: usize,
    },
    /// The range holds no even/odd pair at all.
    #[error("the port range {min}-{max} holds no RTP/RTCP pair")]
    EmptyRange {
        /// Lowest port.
        min: u16,
        /// Highest port.
        max: u16,
    },
}

/// The free pairs of one range, by RTP (even) port.
#[derive(Debug)]
pub struct PortPool {
    min: u16,
    max: u16,
    free: BTreeSet<u16>,
    pairs: usize,
    /// Where the next search starts, so a just-released port is not reused
    /// at once (late packets of the old leg would reach the new one).
    cursor: u16,
}

impl PortPool {
    /// The pairs within `min..=max`.
    pub fn new(min: u16, max: u16) -> Result<Self, PortError> {
        let first = min.saturating_add(min % 2);
        let free: BTreeSet<u16> = (first..max)
            .step_by(2)
            .filter(|p| p.checked_add(1).is_some_and(|rtcp| rtcp <= max))
            .collect();
        if free.is_empty() {
            return Err(PortError::EmptyRange { min, max });
        }
        let pairs = free.len();
        Ok(Self {
            min,
            max,
            free,
            pairs,
            cursor: first,
        })
    }

    /// Takes a free pair; returns its RTP port.
    pub fn take(&mut self) -> Result<u16, PortError> {
        let port = self
            .free
            .range(self.cursor..)
            .next()
            .or_else(|| self.free.iter().next())
            .copied()
            .ok_or(PortError::Exhausted {
                min: self.min,
                max: self.max,
                pairs: self.pairs,
            })?;
        self.free.remove(&port);
        self.cursor = port.saturating_add(2);
        Ok(port)
    }

    /// Gives a pair back; a port that is not ours or already free is ignored.
    pub fn release(&mut self, rtp_port: u16) {
        if rtp_port.is_multiple_of(2) && rtp_port >= self.min && rtp_port < self.max {
            self.free.insert(rtp_port);
        }
    }

    /// Pairs free now.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Pairs in the range.
    pub fn pairs(&self) -> usize {
        self.pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_even_odd_and_never_handed_out_twice() {
        let mut pool = PortPool::new(30001, 30010).unwrap();
        // 30002/3, 30004/5, 30006/7, 30008/9: 30010 has no RTCP port.
        assert_eq!(pool.pairs(), 4);
        let taken: Vec<u16> = (0..4).map(|_| pool.take().unwrap()).collect();
        assert_eq!(taken, [30002, 30004, 30006, 30008]);
        assert!(matches!(
            pool.take(),
            Err(PortError::Exhausted { pairs: 4, .. })
        ));
        pool.release(30004);
        assert_eq!(pool.take(), Ok(30004));
        // Releasing everything makes every pair free again.
        for p in taken {
            pool.release(p);
        }
        assert_eq!(pool.free(), 4);
    }

    #[test]
    fn a_released_pair_is_not_the_next_one_handed_out() {
        let mut pool = PortPool::new(40000, 40009).unwrap();
        let a = pool.take().unwrap();
        pool.release(a);
        assert_ne!(pool.take().unwrap(), a);
    }

    #[test]
    fn foreign_ports_do_not_enter_the_pool() {
        let mut pool = PortPool::new(40000, 40003).unwrap();
        pool.release(40001);
        pool.release(50000);
        assert_eq!(pool.free(), 2);
        assert!(PortPool::new(40001, 40001).is_err());
    }
}
