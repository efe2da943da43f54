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
    rollbacks: Counter,
    source_failures: Family<Labels, Counter>,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let reconciles = Family::<Labels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        let rollbacks = Counter::default();
        let source_failures = Family::<Labels, Counter>::default();
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
                (
                    "voicecluster_config_rollbacks",
                    "Configuration versions a pod refused, after which every pod was sent back to the last known-good one",
                    &rollbacks,
                ),
                (
                    "voicecluster_config_source_failures",
                    "Reconciles that found a user source unusable, by kind (Secret, CSV, LDAP)",
                    &source_failures,
                ),
            ],
        );
        Self {
            reconciles,
            duration,
            rollbacks,
            source_failures,
        }
    }

    /// Counts a rollback of a configuration version.
    pub fn rolled_back(&self) {
        self.rollbacks.inc();
    }

    /// Counts a user source of `kind` found unusable.
    pub fn source_failed(&self, kind: &str) {
        inc(&self.source_failures, &[("kind", kind)]);
    }

    /// Counts one reconcile and its duration.
    pub fn observe_reconcile(&self, took: Duration, ok: bool) {
        let result = if ok { "success" } else { "error" };
        inc(&self.reconciles, &[("result", result)]);
        self.duration.observe(took.as_secs_f64());
    }
}
