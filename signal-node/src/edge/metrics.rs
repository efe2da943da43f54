//! What the edge shows on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use voicecluster_telemetry::metrics::{Labels, inc, register_all};

use super::heartbeat::Health;

/// Metrics of the edge role.
#[derive(Clone, Default)]
pub struct EdgeMetrics {
    forwarded: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
    backends: Gauge,
    backend_changes: Family<Labels, Counter>,
    failovers: Counter,
}

impl EdgeMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        register_all(
            registry,
            &[
                (
                    "voicecluster_edge_forwarded",
                    "SIP messages forwarded, by direction (to_backend, to_client) and kind",
                    &m.forwarded,
                ),
                (
                    "voicecluster_edge_refused",
                    "Requests the edge answered itself, by status code",
                    &m.refused,
                ),
                (
                    "voicecluster_edge_dropped",
                    "Messages the edge dropped, by reason",
                    &m.dropped,
                ),
                (
                    "voicecluster_edge_backends",
                    "Backends that answer the edge's heartbeats and take new calls",
                    &m.backends,
                ),
                (
                    "voicecluster_edge_backend_changes",
                    "Backend health changes the heartbeats saw, by new health (up, draining, down)",
                    &m.backend_changes,
                ),
                (
                    "voicecluster_edge_failovers",
                    "In-dialog requests sent to the buddy of a backend that is down",
                    &m.failovers,
                ),
            ],
        );
        m
    }

    /// A message went on: `direction` is `to_backend` or `to_client`,
    /// `kind` is `request` or `response`.
    pub(super) fn forwarded(&self, direction: &str, kind: &str) {
        inc(&self.forwarded, &[("direction", direction), ("kind", kind)]);
    }

    /// The edge answered a request itself with `code`.
    pub(super) fn refused(&self, code: u16) {
        inc(&self.refused, &[("code", &code.to_string())]);
    }

    /// A message went nowhere, for `reason`.
    pub(super) fn dropped(&self, reason: &str) {
        inc(&self.dropped, &[("reason", reason)]);
    }

    /// `up` backends answer the heartbeats and take new calls.
    pub(super) fn backends_up(&self, up: usize) {
        self.backends.set(i64::try_from(up).unwrap_or(i64::MAX));
    }

    /// A backend's heartbeats say it is `health` now.
    pub(super) fn backend_changed(&self, health: Health) {
        inc(&self.backend_changes, &[("health", health_label(health))]);
    }

    /// An in-dialog request went to the buddy of a backend that is down.
    pub(super) fn failover(&self) {
        self.failovers.inc();
    }

    /// The failovers counted so far.
    #[cfg(test)]
    pub(super) fn failovers(&self) -> u64 {
        self.failovers.get()
    }
}

/// The label value of `health` in `voicecluster_edge_backend_changes`.
pub(super) fn health_label(health: Health) -> &'static str {
    match health {
        Health::Up => "up",
        Health::Draining => "draining",
        Health::Down => "down",
    }
}
