use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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

/// Installs the process-wide `tracing` subscriber, writing to stderr (stdout
/// stays free for command output).
///
/// `filter` uses `EnvFilter` syntax, e.g. `info` or `info,signal_node=debug`.
/// Fails if the filter does not parse or a subscriber is already installed.
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), TelemetryError> {
    let env_filter = EnvFilter::try_new(filter).map_err(|source| TelemetryError::LogFilter {
        filter: filter.to_owned(),
        source,
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .try_init(),
    };
    installed.map_err(TelemetryError::LoggingInit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_an_invalid_filter_before_installing_anything() {
        let err = init_logging(LogFormat::Text, "info,foo=notalevel").unwrap_err();
        assert!(matches!(err, TelemetryError::LogFilter { .. }), "{err}");
        assert!(err.to_string().contains("foo=notalevel"), "{err}");
    }
}
