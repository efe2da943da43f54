//! What a media pod shows on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use voicecluster_telemetry::metrics::{Labels, inc, register_all};

/// Metrics of a media engine and its CallLegs service.
#[derive(Clone, Default)]
pub struct MediaMetrics {
    pub(crate) legs: Gauge,
    pub(crate) relayed: Counter,
    pub(crate) dropped: Counter,
    pub(crate) draining: Gauge,
    pub(crate) refused: Family<Labels, Counter>,
    pub(crate) leg_events: Family<Labels, Counter>,
    pub(crate) config_version: Gauge,
    pub(crate) config_refused: Counter,
}

impl MediaMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        register_all(
            registry,
            &[
                (
                    "voicecluster_media_legs_active",
                    "Call legs on this media pod",
                    &m.legs,
                ),
                (
                    "voicecluster_media_packets_relayed",
                    "RTP and RTCP packets relayed between bridged legs",
                    &m.relayed,
                ),
                (
                    "voicecluster_media_packets_dropped",
                    "Packets dropped: not RTP/RTCP, from a stranger, or with nowhere to go",
                    &m.dropped,
                ),
                (
                    "voicecluster_media_draining",
                    "1 while the pod drains (accepts no new legs)",
                    &m.draining,
                ),
                (
                    "voicecluster_media_legs_refused",
                    "Leg creations refused, by reason (capacity, ports, draining)",
                    &m.refused,
                ),
                (
                    "voicecluster_media_leg_events",
                    "Leg events sent to their owners, by kind and result",
                    &m.leg_events,
                ),
                // The members' names: one query covers every pod.
                (
                    "voicecluster_config_applied_version",
                    "The live configuration version this pod uses",
                    &m.config_version,
                ),
                (
                    "voicecluster_config_refused",
                    "Configuration versions this pod refused",
                    &m.config_refused,
                ),
            ],
        );
        m
    }

    pub(crate) fn refused(&self, reason: &str) {
        inc(&self.refused, &[("reason", reason)]);
    }

    pub(crate) fn leg_event(&self, kind: &str, result: &str) {
        inc(&self.leg_events, &[("kind", kind), ("result", result)]);
    }
}
