//! How a stopping member hands its calls to its buddy without dropping
//! one, as a state machine with deadlines: the driver feeds it the time,
//! whether the endpoint is settled and the buddy's confirmation, and moves
//! the member's [`Lifecycle`] to what it says.
//!
//! 1. `Draining`: the edges hear 503 and send no new calls; the calls being
//!    set up are answered (and replicated). It waits at least `notice` (the
//!    edges' heartbeats must hear it) and until the endpoint is settled, at
//!    most `notice + settle`.
//! 2. `Gone`: the heartbeats say the member is gone, so the edges send its
//!    dialogs to its buddy; requests already on their way are still
//!    answered here, for `notice`.
//! 3. `Left`: the buddy is told to take every call now, and the hand-over
//!    is done once the event was delivered (or could not be), or after
//!    `confirm` in any case; calls it did not take move at their next
//!    request.

use std::time::{Duration, Instant};

use crate::lifecycle::Lifecycle;

/// The hand-over's time limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// How long the edges take to hear a lifecycle step: their heartbeats
    /// times their failure threshold, with room to spare.
    pub notice: Duration,
    /// How long calls being set up may take to be answered.
    pub settle: Duration,
    /// How long the buddy may take to confirm.
    pub confirm: Duration,
}

/// Where the hand-over is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Draining { noticed: Instant, give_up: Instant },
    Gone { until: Instant },
    Left { until: Instant },
    Done { confirmed: bool },
}

/// A hand-over in progress.
#[derive(Debug)]
pub struct HandOver {
    limits: Limits,
    step: Step,
    settled: bool,
}

impl HandOver {
    /// Starts draining at `now`.
    pub fn start(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            step: Step::Draining {
                noticed: now + limits.notice,
                give_up: now + limits.notice + limits.settle,
            },
            settled: false,
        }
    }

    /// The lifecycle the member should be in now.
    pub fn lifecycle(&self) -> Lifecycle {
        match self.step {
            Step::Draining { .. } => Lifecycle::Draining,
            Step::Gone { .. } => Lifecycle::Gone,
            Step::Left { .. } | Step::Done { .. } => Lifecycle::Left,
        }
    }

    /// When [`Self::handle_timeout`] is due; `None` once done.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.step {
            Step::Draining { noticed, give_up } => {
                Some(if self.settled { noticed } else { give_up })
            }
            Step::Gone { until } | Step::Left { until } => Some(until),
            Step::Done { .. } => None,
        }
    }

    /// Whether the endpoint is settled (nothing being set up, no answer
    /// waiting for the buddy).
    pub fn on_settled(&mut self, settled: bool, now: Instant) {
        self.settled = settled;
        self.advance(now);
    }

    /// The hand-over event was delivered to the buddy (`confirmed`), or
    /// could not be (no buddy, or it refused): either way nothing is left
    /// to wait for.
    pub fn on_delivered(&mut self, confirmed: bool, now: Instant) {
        if let Step::Left { .. } = self.step {
            self.step = Step::Done { confirmed };
        }
        self.advance(now);
    }

    /// Moves on past the deadlines that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    /// `Some(confirmed)` once the hand-over is over.
    pub fn done(&self) -> Option<bool> {
        match self.step {
            Step::Done { confirmed } => Some(confirmed),
            _ => None,
        }
    }

    fn advance(&mut self, now: Instant) {
        loop {
            let next = match self.step {
                Step::Draining { noticed, give_up }
                    if (self.settled && now >= noticed) || now >= give_up =>
                {
                    if !self.settled {
                        tracing::warn!(
                            settle = ?self.limits.settle,
                            "calls still being set up; handing over anyway"
                        );
                    }
                    Step::Gone {
                        until: now + self.limits.notice,
                    }
                }
                Step::Gone { until } if now >= until => Step::Left {
                    until: now + self.limits.confirm,
                },
                Step::Left { until } if now >= until => Step::Done { confirmed: false },
                _ => return,
            };
            self.step = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        notice: Duration::from_secs(1),
        settle: Duration::from_secs(20),
        confirm: Duration::from_secs(3),
    };

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_settled_member_drains_for_the_notice_then_is_gone_then_left_until_confirmed() {
        let t0 = Instant::now();
        let mut h = HandOver::start(LIMITS, t0);
        h.on_settled(true, t0);
        assert_eq!(
            h.lifecycle(),
            Lifecycle::Draining,
            "the edges must hear it first"
        );
        assert_eq!(h.poll_timeout(), Some(at(t0, 1000)));
        h.handle_timeout(at(t0, 1000));
        assert_eq!(h.lifecycle(), Lifecycle::Gone);
        assert_eq!(h.poll_timeout(), Some(at(t0, 2000)));
        h.handle_timeout(at(t0, 2000));
        assert_eq!(h.lifecycle(), Lifecycle::Left);
        assert_eq!(h.done(), None, "waits for the buddy");
        h.on_delivered(true, at(t0, 2010));
        assert_eq!(h.done(), Some(true));
        assert_eq!(h.poll_timeout(), None);
    }

    #[test]
    fn calls_being_set_up_hold_the_drain_until_they_settle_or_the_limit() {
        let t0 = Instant::now();
        let mut h = HandOver::start(LIMITS, t0);
        h.on_settled(false, t0);
        h.handle_timeout(at(t0, 5000));
        assert_eq!(h.lifecycle(), Lifecycle::Draining, "a call is being set up");
        h.on_settled(true, at(t0, 6000));
        assert_eq!(
            h.lifecycle(),
            Lifecycle::Gone,
            "settled past the notice: on at once"
        );

        let mut stuck = HandOver::start(LIMITS, t0);
        stuck.on_settled(false, t0);
        assert_eq!(stuck.poll_timeout(), Some(at(t0, 21_000)));
        stuck.handle_timeout(at(t0, 21_000));
        assert_eq!(stuck.lifecycle(), Lifecycle::Gone, "hands over anyway");
    }

    #[test]
    fn a_buddy_that_never_confirms_ends_the_hand_over_after_the_limit() {
        let t0 = Instant::now();
        let mut h = HandOver::start(LIMITS, t0);
        h.on_settled(true, t0);
        h.handle_timeout(at(t0, 1000));
        h.handle_timeout(at(t0, 2000));
        assert_eq!(h.poll_timeout(), Some(at(t0, 5000)));
        h.handle_timeout(at(t0, 5000));
        assert_eq!(h.done(), Some(false));
        // A late confirmation changes nothing.
        h.on_delivered(true, at(t0, 6000));
        assert_eq!(h.done(), Some(false));
        // A delivery that failed ends the wait at once, unconfirmed.
        let mut refused = HandOver::start(LIMITS, t0);
        refused.on_settled(true, t0);
        refused.handle_timeout(at(t0, 1000));
        refused.handle_timeout(at(t0, 2000));
        refused.on_delivered(false, at(t0, 2100));
        assert_eq!(refused.done(), Some(false));
    }
}
