//! What a media pod shows on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Metrics of a media engine and its CallLegs service.
#[derive(Clone, Default)]
pub struct MediaMetrics {
    pub(crate) legs: Gauge,
    pub(crate) relayed: Counter,
    pub(crate) dropped: Counter,
    pub(crate) draining: Gauge,
    pub(crate) refused: Family<Labels, Counter>,
    pub(crate) leg_events: Family<Labels, Counter>,
}

impl MediaMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "voicecluster_media_legs_active",
            "Call legs on this media pod",
            m.legs.clone(),
        );
        registry.register(
            "voicecluster_media_packets_relayed",
            "RTP and RTCP packets relayed between bridged legs",
            m.relayed.clone(),
        );
        registry.register(
            "voicecluster_media_packets_dropped",
            "Packets dropped: not RTP/RTCP, from a stranger, or with nowhere to go",
            m.dropped.clone(),
        );
        registry.register(
            "voicecluster_media_draining",
            "1 while the pod drains (accepts no new legs)",
            m.draining.clone(),
        );
        registry.register(
            "voicecluster_media_legs_refused",
            "Leg creations refused, by reason (capacity, ports, draining)",
            m.refused.clone(),
        );
        registry.register(
            "voicecluster_media_leg_events",
            "Leg events sent to their owners, by kind and result",
            m.leg_events.clone(),
        );
        m
    }

    pub(crate) fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    pub(crate) fn leg_event(&self, kind: &str, result: &str) {
        self.leg_events
            .get_or_create(&vec![
                ("kind".to_string(), kind.to_string()),
                ("result".to_string(), result.to_string()),
            ])
            .inc();
    }
}
