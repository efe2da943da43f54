//! Answers held until the buddy stored the replica they depend on, so a
//! crash right after an answer loses no call; a slow or absent buddy only
//! delays them.

use std::time::{Duration, Instant};

use rsipstack::sip::Response;

use super::{B2bua, HeldAnswer, Stack};
use crate::transaction::TxKey;

/// How long an answer waits for the buddy to store its call's replica.
const REPLICA_WAIT: Duration = Duration::from_millis(250);

impl B2bua {
    /// Sends `response` once the buddy holds the current replica of call
    /// `id` (at once when the call has none).
    pub(crate) fn answer_when_replicated(
        &mut self,
        sip: &mut Stack<'_>,
        id: u64,
        key: &TxKey,
        response: Response,
        now: Instant,
    ) {
        let version = self.calls.get(id).map_or(0, |c| c.replicated);
        if version == 0 {
            return self.answer(sip, key, response, now);
        }
        self.held.insert(
            id,
            HeldAnswer {
                version,
                key: key.clone(),
                response,
                until: now + REPLICA_WAIT,
            },
        );
    }

    fn release_answer(&mut self, sip: &mut Stack<'_>, id: u64, now: Instant) {
        if let Some(h) = self.held.remove(&id) {
            self.answer(sip, &h.key, h.response, now);
        }
    }

    /// The buddy stored call `task`'s replica at `version`.
    pub(crate) fn on_replica_stored(
        &mut self,
        sip: &mut Stack<'_>,
        task: u64,
        version: u64,
        now: Instant,
    ) {
        if let Some(call) = self.calls.get_mut(task) {
            call.confirmed = call.confirmed.max(version);
        }
        if self.held.get(&task).is_some_and(|h| h.version <= version) {
            self.release_answer(sip, task, now);
        }
    }

    /// Call `task` has no buddy to hold its replica: nothing to wait for.
    pub(crate) fn on_no_buddy(&mut self, sip: &mut Stack<'_>, task: u64, now: Instant) {
        self.release_answer(sip, task, now);
    }

    /// Answers whose buddy did not confirm in time go out anyway.
    pub(crate) fn release_overdue_answers(&mut self, sip: &mut Stack<'_>, now: Instant) {
        let overdue: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, h)| h.until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in overdue {
            tracing::warn!(
                call = id,
                "the buddy did not confirm the call's replica in time; answering anyway"
            );
            self.metrics.replica_timeouts.inc();
            self.release_answer(sip, id, now);
        }
    }
}
