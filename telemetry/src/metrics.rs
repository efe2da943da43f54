//! Metrics every binary shares: the process metrics each one exposes, and
//! the label type and counter helper their own metric families use.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry, Unit};

/// The `Content-Type` of `/metrics`: `prometheus-client` writes the
/// OpenMetrics text format, which Prometheus negotiates by this type.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which binary this is, for the `voicecluster_build_info` metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// Executable name, e.g. `signal-node`.
    pub binary: &'static str,
    /// Crate version, usually `env!("CARGO_PKG_VERSION")`.
    pub version: &'static str,
}

impl BuildInfo {
    /// Build information for `binary` at `version`.
    pub const fn new(binary: &'static str, version: &'static str) -> Self {
        Self { binary, version }
    }
}

/// Registers the metrics every binary exposes:
///
/// - `process_start_time_seconds`: when the process started (taken at this
///   call, which binaries make during start-up), in seconds since the Unix
///   epoch, so restarts show up as jumps;
/// - `voicecluster_build_info{binary, version}`: always 1, to tell which
///   version each pod runs.
pub fn register_process_metrics(registry: &mut Registry, build: BuildInfo) {
    // A clock before 1970 is not worth failing start-up for; 0 says "unknown".
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    registry.register_with_unit(
        "process_start_time",
        "Start time of the process since the Unix epoch",
        Unit::Seconds,
        ConstGauge::new(started),
    );
    registry.register(
        "voicecluster_build",
        "Build information of this binary",
        Info::new(vec![("binary", build.binary), ("version", build.version)]),
    );
}

/// The labels of a metric family: names and values, in the order given.
/// Owned strings, so a family can take values only known at run time (a
/// status code, a method).
pub type Labels = Vec<(String, String)>;

/// Adds one to the counter of `family` for `labels`, creating it at 0
/// first when these labels were never seen.
pub fn inc(family: &Family<Labels, Counter>, labels: &[(&str, &str)]) {
    let labels: Labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    family.get_or_create(&labels).inc();
}

/// Registers each metric of `metrics`, a table of name, help text and
/// metric, in `registry`. A binary's metrics read as one table this way,
/// whatever their kinds, rather than as a run of `register` calls.
pub fn register_all(registry: &mut Registry, metrics: &[(&str, &str, &dyn SharedMetric)]) {
    for (name, help, metric) in metrics {
        registry.register(*name, *help, Boxed(metric.share()));
    }
}

/// A metric whose clones share its value, as every `prometheus-client`
/// metric's do: the registry gets a clone, its owner keeps counting.
pub trait SharedMetric {
    /// A clone of the metric, for the registry.
    fn share(&self) -> Box<dyn Metric>;
}

impl<M: Metric + Clone> SharedMetric for M {
    fn share(&self) -> Box<dyn Metric> {
        Box::new(self.clone())
    }
}

/// A boxed metric of any kind, encoded as the metric inside.
#[derive(Debug)]
struct Boxed(Box<dyn Metric>);

impl EncodeMetric for Boxed {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn encodes_start_time_and_build_info() {
        let mut registry = Registry::default();
        register_process_metrics(&mut registry, BuildInfo::new("media-node", "1.2.3"));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("# TYPE process_start_time_seconds gauge"),
            "{text}"
        );
        assert!(
            text.contains(r#"voicecluster_build_info{binary="media-node",version="1.2.3"} 1"#),
            "{text}"
        );
        let start: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("process_start_time_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(start > 1.7e9, "{start}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn inc_counts_per_label_set() {
        let family = Family::<Labels, Counter>::default();
        inc(&family, &[("kind", "a"), ("result", "ok")]);
        inc(&family, &[("kind", "a"), ("result", "ok")]);
        inc(&family, &[("kind", "b"), ("result", "ok")]);
        let count = |kind: &str| {
            family
                .get_or_create(&vec![
                    ("kind".to_string(), kind.to_string()),
                    ("result".to_string(), "ok".to_string()),
                ])
                .get()
        };
        assert_eq!((count("a"), count("b"), count("c")), (2, 1, 0));
    }

    #[test]
    fn a_table_of_metrics_encodes_as_registered_one_by_one() {
        use prometheus_client::metrics::gauge::Gauge;
        let (counter, gauge, family) = (
            Counter::<u64>::default(),
            Gauge::<i64>::default(),
            Family::<Labels, Counter>::default(),
        );
        gauge.set(3);
        inc(&family, &[("reason", "full")]);
        let mut one_by_one = Registry::default();
        one_by_one.register("c", "A counter", counter.clone());
        one_by_one.register("g", "A gauge", gauge.clone());
        one_by_one.register("f", "A family", family.clone());
        // Counted after registering: the registry shares the value.
        counter.inc();
        let mut table = Registry::default();
        register_all(
            &mut table,
            &[
                ("c", "A counter", &counter),
                ("g", "A gauge", &gauge),
                ("f", "A family", &family),
            ],
        );
        let (mut expected, mut got) = (String::new(), String::new());
        encode(&mut expected, &one_by_one).unwrap();
        encode(&mut got, &table).unwrap();
        assert!(got.contains("# TYPE c counter\nc_total 1\n"), "{got}");
        assert!(got.contains(r#"f_total{reason="full"} 1"#), "{got}");
        assert_eq!(got, expected);
    }
}
