//! A media pod's side of the live configuration. Of a version it uses the
//! settings (`spec.logLevel`, `spec.media.mediaTimeoutSeconds`,
//! `spec.media.legStatsSeconds`); users and rates are the members', and
//! the pod asks for its versions without them (`follow_settings`). Each
//! version is checked whole ([`check`]) before any of it is used, then put
//! in force at once ([`apply`]), and what the pod did goes back to the
//! operator per version, as members do: a version refused here rolls
//! every pod back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use voicecluster_api::grpc::ConfigResult;
use voicecluster_directory_client::config::Offered;
use voicecluster_telemetry::{LogFilter, ParsedFilter};

use crate::metrics::MediaMetrics;
use crate::service::{LegService, LegTiming};

/// A version's settings that passed every check, ready to put in force.
#[derive(Debug)]
pub struct Checked {
    /// The log filter to swap in; None: the one in force stays.
    pub log_filter: Option<ParsedFilter>,
    /// The legs' timing; None: a version without settings (from an
    /// operator that sent none), and the timing in force stays.
    pub timing: Option<LegTiming>,
}

/// Checks the settings of `offered`, its log level against the pod's
/// filter `log`; the first thing wrong is the reason the version fails.
pub fn check(offered: &Offered, log: &LogFilter) -> Result<Checked, String> {
    let Some(s) = &offered.config.settings else {
        return Ok(Checked {
            log_filter: None,
            timing: None,
        });
    };
    if s.media_timeout_seconds == 0 {
        // Every leg would time out at its first report.
        return Err("media timeout 0 s: every leg would time out at once".to_string());
    }
    let log_filter = log.prepare(&s.log_level)?;
    Ok(Checked {
        log_filter,
        timing: Some(LegTiming {
            media_timeout: Duration::from_secs(u64::from(s.media_timeout_seconds)),
            statistics: (s.leg_stats_seconds > 0)
                .then(|| Duration::from_secs(u64::from(s.leg_stats_seconds))),
        }),
    })
}

/// Puts `checked` in force: the log filter first, the one step that can
/// fail, so that a failure leaves all of the version unused; then the
/// legs' timing, on `legs` when the pod offers legs.
pub fn apply(checked: Checked, log: &LogFilter, legs: Option<&LegService>) -> Result<(), String> {
    if let Some(filter) = checked.log_filter {
        log.set(filter).map_err(|e| e.to_string())?;
    }
    if let (Some(timing), Some(legs)) = (checked.timing, legs) {
        legs.set_timing(timing);
    }
    Ok(())
}

/// Applies each version `offered` holds, in turn, for the life of the
/// process, and says in `results` what became of each.
pub async fn follow(
    mut offered: watch::Receiver<Option<Arc<Offered>>>,
    log: LogFilter,
    legs: Option<LegService>,
    results: watch::Sender<Option<ConfigResult>>,
    metrics: MediaMetrics,
) {
    loop {
        let next = offered.borrow_and_update().clone();
        if let Some(o) = next {
            let started = Instant::now();
            let outcome = check(&o, &log).and_then(|c| apply(c, &log, legs.as_ref()));
            match &outcome {
                Ok(()) => {
                    metrics.config_version.set(o.version);
                    tracing::info!(version = o.version, timing = ?legs.as_ref().map(LegService::timing), took = ?started.elapsed(), "configuration applied");
                }
                Err(e) => {
                    metrics.config_refused.inc();
                    tracing::warn!(version = o.version, error = %e, "configuration refused; the settings in use stay");
                }
            }
            results.send_replace(Some(o.result(&outcome)));
        }
        if offered.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use voicecluster_api::config::hash;
    use voicecluster_api::grpc::{ClusterConfig, LiveSettings};

    use super::*;

    fn offered(settings: Option<LiveSettings>) -> Offered {
        let config = ClusterConfig {
            users: Vec::new(),
            billing: None,
            settings,
        };
        Offered {
            version: 7,
            hash: hash(&config),
            effective_unix_ms: 0,
            config: Arc::new(config),
            delta: None,
        }
    }

    fn settings(log_level: &str, media_timeout: u32, stats: u32) -> Option<LiveSettings> {
        Some(LiveSettings {
            log_level: log_level.into(),
            media_timeout_seconds: media_timeout,
            leg_stats_seconds: stats,
        })
    }

    #[test]
    fn the_settings_are_checked_whole_into_the_legs_timing() {
        let log = LogFilter::detached("info");
        let c = check(&offered(settings("info", 45, 0)), &log).unwrap();
        assert!(c.log_filter.is_none());
        assert_eq!(
            c.timing,
            Some(LegTiming {
                media_timeout: Duration::from_secs(45),
                statistics: None,
            })
        );
        let c = check(&offered(settings("debug", 45, 5)), &log).unwrap();
        assert_eq!(c.log_filter.unwrap().directives(), "debug");
        assert_eq!(c.timing.unwrap().statistics, Some(Duration::from_secs(5)));
        // A version without settings changes nothing.
        let c = check(&offered(None), &log).unwrap();
        assert!(c.log_filter.is_none() && c.timing.is_none());
    }

    #[test]
    fn a_checked_version_is_put_in_force_on_the_legs_and_the_log_filter() {
        use crate::engine::MediaEngine;
        use crate::ports::PortPool;
        use crate::relay::Relay;

        // No port is bound: only the timing is looked at.
        let relay = Relay::new(
            PortPool::new(41100, 41101).unwrap(),
            1,
            Duration::from_secs(30),
        );
        let lo = "127.0.0.1".parse().unwrap();
        let legs = LegService::new(MediaEngine::new(relay, lo, lo), 1);
        let log = LogFilter::detached("info");
        let checked = check(&offered(settings("warn", 5, 2)), &log).unwrap();
        apply(checked, &log, Some(&legs)).unwrap();
        assert_eq!(
            legs.timing(),
            LegTiming {
                media_timeout: Duration::from_secs(5),
                statistics: Some(Duration::from_secs(2)),
            }
        );
        assert_eq!(log.directives(), "warn");
        // A version without settings leaves both as they are.
        apply(check(&offered(None), &log).unwrap(), &log, Some(&legs)).unwrap();
        assert_eq!(legs.timing().media_timeout, Duration::from_secs(5));
        assert_eq!(log.directives(), "warn");
    }

    #[test]
    fn a_bad_log_level_or_a_zero_timeout_refuses_the_version_and_names_it() {
        let log = LogFilter::detached("info");
        let why = check(&offered(settings("info,media=loud", 45, 5)), &log).unwrap_err();
        assert!(why.contains("\"info,media=loud\""), "{why}");
        let why = check(&offered(settings("info", 0, 5)), &log).unwrap_err();
        assert!(why.contains("media timeout 0"), "{why}");
        assert_eq!(log.directives(), "info");
        let r = offered(None).result(&Err("why".into()));
        assert!(r.failed && r.reason == "why" && r.version == 7);
    }
}
