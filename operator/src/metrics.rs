//! The operator's own metrics, next to the process metrics every binary has.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Reconcile counters and durations.
#[derive(Clone)]
pub struct Metrics {
    reconciles: Family<Vec<(String, String)>, Counter>,
    duration: Histogram,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let reconciles = Family::<Vec<(String, String)>, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "voicecluster_reconciles",
            "VoiceCluster reconciles by result",
            reconciles.clone(),
        );
        registry.register(
            "voicecluster_reconcile_duration_seconds",
            "Time one VoiceCluster reconcile took",
            duration.clone(),
        );
        Self {
            reconciles,
            duration,
        }
    }

    /// Counts one reconcile and its duration.
    pub fn observe_reconcile(&self, took: Duration, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.reconciles
            .get_or_create(&vec![("result".to_string(), result.to_string())])
            .inc();
        self.duration.observe(took.as_secs_f64());
    }
}
