//! Leg events from the service to the legs' owners: what happened to
//! their legs (silent, DTMF, a failed WebRTC connection, closed by a
//! drain timeout) and their counters, through the [`Notifier`].

use std::time::Duration;

use voicecluster_api::grpc::{Dtmf, LegClosed, MediaTimeout, TaskHandle, leg_event};

use super::{LegService, stats};
use crate::leg_events::Notifier;
use crate::relay::LegId;

impl LegService {
    /// Tells every leg's owner that the leg is gone, and returns once the
    /// events are delivered (or failed).
    pub async fn close_all(&self, reason: &str) {
        let Some(notifier) = self.notifier.clone() else {
            return;
        };
        for (id, owner) in self.owners() {
            notifier
                .deliver(
                    owner,
                    id.0,
                    leg_event::Kind::Closed(LegClosed {
                        reason: reason.to_string(),
                    }),
                )
                .await;
        }
    }

    /// Tells the owners of legs what happened to them (silent for the
    /// media timeout, DTMF digits, a failed WebRTC connection), every
    /// `every`, and their counters at the statistics interval, until
    /// dropped. Both come from the timing in force at each report
    /// ([`LegService::set_timing`]), so a new one holds from the next.
    pub async fn report_leg_events(self, every: Duration) {
        let Some(notifier) = self.notifier.clone() else {
            return;
        };
        let mut last_statistics = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            if let Some(interval) = self.timing().statistics
                && last_statistics.elapsed() >= interval
            {
                last_statistics = tokio::time::Instant::now();
                self.send_statistics(&notifier);
            }
            self.send_digits_and_failures(&notifier);
            self.send_timeouts(&notifier);
        }
    }

    /// Every owned leg's counters to its owner.
    fn send_statistics(&self, notifier: &Notifier) {
        for (id, owner) in self.owners() {
            if let Some(s) = self.engine.stats(id) {
                notifier.send(owner, id.0, leg_event::Kind::Statistics(stats(s)));
            }
        }
    }

    /// The DTMF digits detected, and the WebRTC legs that failed, since the
    /// last call.
    fn send_digits_and_failures(&self, notifier: &Notifier) {
        for (id, d) in self.engine.take_digits() {
            self.tell_owner(
                notifier,
                id,
                leg_event::Kind::Dtmf(Dtmf {
                    digit: d.digit.to_string(),
                    duration: u32::from(d.duration),
                }),
            );
        }
        for (id, why) in self.engine.failed() {
            self.tell_owner(
                notifier,
                id,
                leg_event::Kind::Closed(LegClosed {
                    reason: format!("webrtc: {why}"),
                }),
            );
        }
    }

    /// The legs silent for the media timeout since the last call.
    fn send_timeouts(&self, notifier: &Notifier) {
        let (silent_legs, silent) = self.engine.timed_out();
        for id in silent_legs {
            if let Some(owner) = self.owner(id) {
                tracing::info!(leg = id.0, task = owner.task, member = %owner.member, "media timeout");
                notifier.send(
                    owner,
                    id.0,
                    leg_event::Kind::MediaTimeout(MediaTimeout {
                        silent_seconds: u32::try_from(silent.as_secs()).unwrap_or(u32::MAX),
                    }),
                );
            }
        }
    }

    /// Sends `kind` to the owner of leg `id`, if it has one.
    fn tell_owner(&self, notifier: &Notifier, id: LegId, kind: leg_event::Kind) {
        if let Some(owner) = self.owner(id) {
            notifier.send(owner, id.0, kind);
        }
    }

    /// The owner of leg `id`, if the leg is known and has one.
    fn owner(&self, id: LegId) -> Option<TaskHandle> {
        self.table().get(&id).and_then(|o| o.owner.clone())
    }

    /// Each leg with an owner, and the owner.
    fn owners(&self) -> Vec<(LegId, TaskHandle)> {
        self.table()
            .iter()
            .filter_map(|(id, o)| Some((*id, o.owner.clone()?)))
            .collect()
    }
}
