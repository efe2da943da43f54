use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

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
}
