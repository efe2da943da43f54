use std::io::IsTerminal;
use std::sync::{Arc, Mutex, PoisonError};

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::TelemetryError;

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event; coloured only on a terminal.
    #[default]
    Text,
    /// One JSON object per line, event fields at the top level, for log
    /// collectors.
    Json,
}

/// A log filter that parsed, ready to put in force with [`LogFilter::set`].
/// Parsing and swapping are apart so that a pod can check a whole live
/// configuration version before it changes anything of it.
#[derive(Debug)]
pub struct ParsedFilter {
    directives: String,
    filter: EnvFilter,
}

impl ParsedFilter {
    /// `directives` in `EnvFilter` syntax, e.g. `info` or
    /// `info,voicecluster_signal_node=debug`; the error names them.
    pub fn parse(directives: &str) -> Result<Self, TelemetryError> {
        let filter =
            EnvFilter::try_new(directives).map_err(|source| TelemetryError::LogFilter {
                filter: directives.to_owned(),
                source,
            })?;
        Ok(Self {
            directives: directives.to_owned(),
            filter,
        })
    }

    /// The directives as given.
    pub fn directives(&self) -> &str {
        &self.directives
    }
}

/// The process's log filter, which a running process can swap (a live
/// configuration version that changes `spec.logLevel`). Cloning shares it.
#[derive(Clone, Debug)]
pub struct LogFilter {
    /// None when this process installed no subscriber (tests, or a
    /// process that logs through another one): swaps are only recorded.
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    /// The directives the process started with (its `--log-level`).
    initial: Arc<str>,
    in_force: Arc<Mutex<String>>,
}

impl LogFilter {
    /// A filter that changes no subscriber, starting at `initial`: for
    /// code that takes a [`LogFilter`] where no logging was installed.
    pub fn detached(initial: &str) -> Self {
        Self {
            handle: None,
            initial: Arc::from(initial),
            in_force: Arc::new(Mutex::new(initial.to_owned())),
        }
    }

    /// The directives in force now.
    pub fn directives(&self) -> String {
        self.in_force
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The directives the process started with.
    pub fn initial(&self) -> &str {
        &self.initial
    }

    /// What putting `directives` in force takes, checked: a live
    /// configuration's log level, where empty means the process's own
    /// `--log-level`. None when they are in force already (nothing to
    /// swap). The error is the reason a pod gives for refusing the version:
    /// it names the directives and says what the parser found.
    pub fn prepare(&self, directives: &str) -> Result<Option<ParsedFilter>, String> {
        let wanted = if directives.is_empty() {
            self.initial()
        } else {
            directives
        };
        if wanted == self.directives() {
            return Ok(None);
        }
        match ParsedFilter::parse(wanted) {
            Ok(p) => Ok(Some(p)),
            Err(e) => {
                let why =
                    std::error::Error::source(&e).map_or_else(String::new, |s| format!(": {s}"));
                Err(format!("log level {wanted:?} does not parse{why}"))
            }
        }
    }

    /// Puts `filter` in force for every event from now on.
    pub fn set(&self, filter: ParsedFilter) -> Result<(), TelemetryError> {
        let mut in_force = self.in_force.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(handle) = &self.handle {
            handle
                .reload(filter.filter)
                .map_err(|e| TelemetryError::LogReload(e.to_string()))?;
        }
        in_force.clone_from(&filter.directives);
        drop(in_force);
        tracing::info!(directives = %filter.directives, "log filter swapped");
        Ok(())
    }
}

/// Installs the process-wide `tracing` subscriber, writing to stderr (stdout
/// stays free for command output), and returns the handle that swaps its
/// filter.
///
/// `filter` uses `EnvFilter` syntax, e.g. `info` or `info,signal_node=debug`.
/// Fails if the filter does not parse or a subscriber is already installed.
pub fn init_logging(format: LogFormat, filter: &str) -> Result<LogFilter, TelemetryError> {
    let parsed = ParsedFilter::parse(filter)?;
    // The filter sits in a reload layer under the formatter: swapping it
    // later changes what is logged without touching how.
    let (filter_layer, handle) = reload::Layer::new(parsed.filter);
    let registry = tracing_subscriber::registry().with(filter_layer);
    let layer = fmt::layer().with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => registry
            .with(layer.with_ansi(std::io::stderr().is_terminal()))
            .try_init(),
        LogFormat::Json => registry
            .with(layer.with_ansi(false).json().flatten_event(true))
            .try_init(),
    };
    installed.map_err(|e| TelemetryError::LoggingInit(Box::new(e)))?;
    Ok(LogFilter {
        handle: Some(handle),
        initial: Arc::from(filter),
        in_force: Arc::new(Mutex::new(parsed.directives)),
    })
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn rejects_an_invalid_filter_before_installing_anything() {
        let err = init_logging(LogFormat::Text, "info,foo=notalevel").unwrap_err();
        assert!(matches!(err, TelemetryError::LogFilter { .. }), "{err}");
        assert!(err.to_string().contains("foo=notalevel"), "{err}");
    }

    /// The only test here that installs the subscriber: once per process.
    #[test]
    fn the_installed_filter_is_swapped_while_the_process_runs() {
        let filter = init_logging(LogFormat::Text, "warn").unwrap();
        assert!(!tracing::enabled!(target: "live", Level::INFO));
        assert!(tracing::enabled!(target: "live", Level::WARN));

        filter
            .set(ParsedFilter::parse("warn,live=debug").unwrap())
            .unwrap();
        assert!(tracing::enabled!(target: "live", Level::DEBUG));
        assert!(!tracing::enabled!(target: "other", Level::INFO));
        assert_eq!(filter.directives(), "warn,live=debug");
        assert_eq!(filter.initial(), "warn");

        // A filter that does not parse changes nothing: it never gets to
        // `set`.
        let err = ParsedFilter::parse("live=loud").unwrap_err();
        assert!(err.to_string().contains("live=loud"), "{err}");
        assert!(tracing::enabled!(target: "live", Level::DEBUG));
    }

    #[test]
    fn a_live_log_level_is_checked_before_it_is_swapped_in() {
        let filter = LogFilter::detached("info");
        // In force already, or empty (the process's own flag): no swap.
        assert!(filter.prepare("info").unwrap().is_none());
        assert!(filter.prepare("").unwrap().is_none());
        let debug = filter.prepare("info,voicecluster_signal_node=debug");
        let debug = debug.unwrap().unwrap();
        assert_eq!(debug.directives(), "info,voicecluster_signal_node=debug");
        filter.set(debug).unwrap();
        // Back to the flag's when the spec no longer says.
        assert_eq!(filter.prepare("").unwrap().unwrap().directives(), "info");
        // A directive that does not parse is refused with the reason, and
        // the filter in force stays.
        let why = filter.prepare("info,sip=chatty").unwrap_err();
        assert!(why.contains("\"info,sip=chatty\" does not parse:"), "{why}");
        assert!(why.len() > "log level \"info,sip=chatty\" does not parse: ".len());
        assert_eq!(filter.directives(), "info,voicecluster_signal_node=debug");
    }

    #[test]
    fn a_detached_filter_only_records() {
        let filter = LogFilter::detached("info");
        filter.set(ParsedFilter::parse("debug").unwrap()).unwrap();
        assert_eq!(filter.directives(), "debug");
        assert_eq!(filter.initial(), "info");
    }
}
