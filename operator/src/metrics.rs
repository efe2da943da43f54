//! The operator's own metrics, next to the process metrics every binary has.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use voicecluster_telemetry::metrics::{Labels, inc, register_all};

/// Reconcile counters and durations.
#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<Labels, Counter>,
    duration: Histogram,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let reconciles = Family::<Labels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        register_all(
            registry,
            &[
                (
                    "voicecluster_reconciles",
                    "VoiceCluster reconciles by result",
                    &reconciles,
                ),
                (
                    "voicecluster_reconcile_duration_seconds",
                    "Time one VoiceCluster reconcile took",
                    &duration,
                ),
            ],
        );
        Self {
            reconciles,
            duration,
        }
    }

    /// Counts one reconcile and its duration.
    pub fn observe_reconcile(&self, took: Duration, ok: bool) {
        let result = if ok { "success" } else { "error" };
        inc(&self.reconciles, &[("result", result)]);
        self.duration.observe(took.as_secs_f64());
    }
}
