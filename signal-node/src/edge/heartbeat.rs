//! Which backends are alive, from the edge's own heartbeats: an OPTIONS to
//! every candidate backend each interval, over the same UDP path calls
//! take. A backend that misses `threshold` answers in a row is down at
//! once (sub-second with the defaults), long before Kubernetes would
//! notice; one answer brings it back. Sans I/O, like the edge.
//!
//! A backend that comes back (a restart, a new member) is ramped up: for
//! `ramp` it takes a growing share of new calls instead of its whole
//! rendezvous share at once, so a cold member is not flooded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The branch prefix of heartbeat OPTIONS; their answers are ours.
pub const BRANCH_PREFIX: &str = "z9hG4bKhb";

/// Heartbeat settings (the VoiceCluster's `failover`).
#[derive(Clone, Copy, Debug)]
pub struct HeartbeatConfig {
    /// Between probes.
    pub interval: Duration,
    /// Probes unanswered in a row after which a backend is down.
    pub threshold: u32,
    /// How long a backend that came back takes to get its full share.
    pub ramp: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(200),
            threshold: 3,
            ramp: Duration::from_secs(10),
        }
    }
}

/// What a backend's answers say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Answers 2xx: takes new calls and its dialogs.
    Up,
    /// Answers, but 503: finishing its calls (a drain), no new ones.
    Draining,
    /// Missed `threshold` probes.
    Down,
}

#[derive(Debug)]
struct Backend {
    health: Health,
    /// Probes sent since the last answer.
    missed: u32,
    /// When it came back up, for the ramp; None: up from the start.
    up_since: Option<Instant>,
    /// Its last answer said it handed its calls over; it stays so when
    /// it then stops answering (it left on purpose).
    gone: bool,
}

/// A state change worth telling about.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    /// The backend.
    pub backend: SocketAddr,
    /// Its health now.
    pub health: Health,
}

/// The heartbeat book of one edge.
#[derive(Debug)]
pub struct Heartbeats {
    config: HeartbeatConfig,
    backends: HashMap<SocketAddr, Backend>,
    next_probe: Option<Instant>,
    seq: u64,
    /// Tells this edge's heartbeats from those of an edge at the same
    /// address before it (a restart, or the edge it replaces): a member
    /// takes a branch it saw in the last 32 s for a retransmission and
    /// answers the earlier sender.
    instance: u64,
    /// When the edge started: backends seen in the first interval are up
    /// without a ramp (the edge is new, not they).
    started: Option<Instant>,
}

impl Heartbeats {
    /// A book with `config`.
    pub fn new(config: HeartbeatConfig) -> Self {
        Self {
            config,
            backends: HashMap::new(),
            next_probe: None,
            seq: 0,
            instance: {
                use std::hash::{BuildHasher, Hasher};
                // Randomly keyed per process and per call.
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            },
            started: None,
        }
    }

    /// When [`Self::probe`] is due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_probe
    }

    /// Counts the unanswered probes of the interval that ends now and
    /// returns the probes to send to `candidates` (OPTIONS from `local`),
    /// and the changes.
    pub fn probe(
        &mut self,
        candidates: &[SocketAddr],
        local: SocketAddr,
        now: Instant,
    ) -> (Vec<(SocketAddr, Vec<u8>)>, Vec<Change>) {
        let started = *self.started.get_or_insert(now);
        let mut changes = Vec::new();
        let threshold = self.config.threshold;
        self.backends.retain(|b, _| candidates.contains(b));
        let mut probes = Vec::new();
        for &b in candidates {
            let fresh = now.duration_since(started) <= self.config.interval;
            let entry = self.backends.entry(b).or_insert_with(|| Backend {
                health: Health::Up,
                missed: 0,
                // A member that appears later is new: it ramps.
                up_since: (!fresh).then_some(now),
                gone: false,
            });
            if entry.missed >= threshold && entry.health != Health::Down {
                entry.health = Health::Down;
                changes.push(Change {
                    backend: b,
                    health: Health::Down,
                });
            }
            entry.missed = entry.missed.saturating_add(1);
            self.seq += 1;
            probes.push((b, options(local, b, self.instance, self.seq)));
        }
        self.next_probe = Some(now + self.config.interval);
        (probes, changes)
    }

    /// A backend answered a probe with `code`, saying `state` of itself
    /// (`gone`: it handed its calls over; `starting`: it has not got the
    /// registrations and replicas yet). Either way it is down for the edge,
    /// though it answers.
    pub fn on_answer(
        &mut self,
        from: SocketAddr,
        code: u16,
        state: &str,
        now: Instant,
    ) -> Option<Change> {
        let b = self.backends.get_mut(&from)?;
        b.missed = 0;
        b.gone = state.eq_ignore_ascii_case("gone");
        let health = if b.gone || state.eq_ignore_ascii_case("starting") {
            Health::Down
        } else if (200..300).contains(&code) {
            Health::Up
        } else {
            Health::Draining
        };
        if b.health == health {
            return None;
        }
        if b.health != Health::Up && health == Health::Up {
            b.up_since = Some(now);
        }
        b.health = health;
        Some(Change {
            backend: from,
            health,
        })
    }

    /// Whether `b` said it handed its calls over (rather than failing).
    pub fn said_gone(&self, b: &SocketAddr) -> bool {
        self.backends.get(b).is_some_and(|s| s.gone)
    }

    /// The health of `b`; a backend never probed is taken as up.
    pub fn health(&self, b: &SocketAddr) -> Health {
        self.backends.get(b).map_or(Health::Up, |s| s.health)
    }

    /// The share of its new calls `b` takes now, 0 to 1.
    pub fn share(&self, b: &SocketAddr, now: Instant) -> f64 {
        let Some(s) = self.backends.get(b) else {
            return 1.0;
        };
        if s.health != Health::Up {
            return 0.0;
        }
        match s.up_since {
            Some(since) if !self.config.ramp.is_zero() => {
                (now.duration_since(since).as_secs_f64() / self.config.ramp.as_secs_f64()).min(1.0)
            }
            _ => 1.0,
        }
    }
}

fn options(local: SocketAddr, to: SocketAddr, instance: u64, seq: u64) -> Vec<u8> {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch={BRANCH_PREFIX}{instance:x}.{seq:x}\r\n\
         Max-Forwards: 1\r\n\
         From: <sip:heartbeat@{local}>;tag=hb\r\n\
         To: <sip:{to}>\r\n\
         Call-ID: heartbeat-{instance:x}-{local}\r\n\
         CSeq: {} OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        seq % 0x7fff_ffff
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn config() -> HeartbeatConfig {
        HeartbeatConfig {
            interval: Duration::from_millis(200),
            threshold: 3,
            ramp: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_backend_is_down_after_threshold_missed_probes_and_up_on_one_answer() {
        let (a, b) = (addr("10.0.0.1:5060"), addr("10.0.0.2:5060"));
        let local = addr("10.0.9.9:5060");
        let mut h = Heartbeats::new(config());
        let t0 = Instant::now();
        let tick = |i: u32| t0 + Duration::from_millis(200) * i;
        let mut down_at = None;
        for i in 0..6 {
            let (probes, changes) = h.probe(&[a, b], local, tick(i));
            assert_eq!(probes.len(), 2);
            let text = String::from_utf8(probes[0].1.clone()).unwrap();
            assert!(text.starts_with("OPTIONS sip:"), "{text}");
            assert!(text.contains(BRANCH_PREFIX));
            // a answers every probe; b never does.
            h.on_answer(a, 200, "", tick(i) + Duration::from_millis(1));
            if changes.contains(&Change {
                backend: b,
                health: Health::Down,
            }) {
                down_at = Some(i);
            }
        }
        assert_eq!(down_at, Some(3), "three unanswered probes, then down");
        assert_eq!(h.health(&a), Health::Up);
        assert_eq!(h.health(&b), Health::Down);
        assert_eq!(h.share(&b, tick(6)), 0.0);
        // b restarted: one answer brings it back, ramping.
        let back = tick(7);
        assert_eq!(
            h.on_answer(b, 200, "", back),
            Some(Change {
                backend: b,
                health: Health::Up
            })
        );
        assert!(h.share(&b, back) < 0.01);
        let half = h.share(&b, back + Duration::from_secs(5));
        assert!((0.45..0.55).contains(&half), "{half}");
        assert_eq!(h.share(&b, back + Duration::from_secs(11)), 1.0);
        assert_eq!(h.share(&a, back), 1.0, "up from the start: no ramp");
    }

    #[test]
    fn an_edge_replacing_another_at_its_address_never_reuses_its_branches() {
        let (local, b) = (addr("10.0.0.1:5060"), addr("10.0.0.2:5060"));
        let branches = |book: &mut Heartbeats| -> Vec<String> {
            let now = Instant::now();
            let (probes, _) = book.probe(&[b], local, now);
            probes
                .iter()
                .map(|(_, bytes)| {
                    let text = String::from_utf8_lossy(bytes).to_string();
                    let via = text.lines().find(|l| l.starts_with("Via:")).unwrap();
                    via.split("branch=").nth(1).unwrap().trim().to_string()
                })
                .collect()
        };
        let (mut old, mut new) = (Heartbeats::new(config()), Heartbeats::new(config()));
        let first = branches(&mut old);
        assert!(first[0].starts_with(BRANCH_PREFIX));
        // Same address, same sequence: a member would take the new edge's
        // probe for a retransmission of the old one's and answer the old.
        assert_ne!(first, branches(&mut new));
    }

    #[test]
    fn a_503_means_draining_and_unknown_backends_leave_the_book() {
        let a = addr("10.0.0.1:5060");
        let mut h = Heartbeats::new(config());
        let t0 = Instant::now();
        h.probe(&[a], addr("10.0.9.9:5060"), t0);
        assert_eq!(
            h.on_answer(a, 503, "", t0).map(|c| c.health),
            Some(Health::Draining)
        );
        assert_eq!(h.share(&a, t0), 0.0);
        h.probe(&[], addr("10.0.9.9:5060"), t0 + Duration::from_millis(200));
        assert_eq!(h.health(&a), Health::Up, "forgotten: never probed");
        assert_eq!(h.on_answer(a, 200, "", t0), None);
        h.probe(&[a], addr("10.0.9.9:5060"), t0 + Duration::from_millis(400));
        assert_eq!(
            h.on_answer(a, 503, "gone", t0).map(|c| c.health),
            Some(Health::Down),
            "handed over: down at once"
        );
        assert!(h.said_gone(&a));
        assert_eq!(
            h.on_answer(a, 503, "starting", t0).map(|c| c.health),
            None,
            "back, but not ready for its dialogs: still down"
        );
        assert!(!h.said_gone(&a));
        assert_eq!(
            h.on_answer(a, 200, "", t0).map(|c| c.health),
            Some(Health::Up)
        );
        assert!(h.share(&a, t0) < 0.1, "it ramps up");
    }
}
