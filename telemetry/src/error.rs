use std::io;
use std::net::SocketAddr;

/// Why setting up or running telemetry failed.
///
/// The messages do not repeat the underlying error: it is the `source`, and
/// `anyhow` (or any error reporter) prints the chain.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter (`--log-level`) is not valid `EnvFilter` syntax.
    #[error("invalid log filter {filter:?}")]
    LogFilter {
        /// The filter as given.
        filter: String,
        /// What the parser said.
        source: tracing_subscriber::filter::ParseError,
    },
    /// The log filter could not be swapped (the subscriber is gone).
    #[error("cannot swap the log filter: {0}")]
    LogReload(String),
    /// A global logger was already installed in this process.
    #[error("cannot initialise logging")]
    LoggingInit(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// The admin server could not listen on its address.
    #[error("cannot listen on admin address {addr}")]
    AdminBind {
        /// The address from `--admin-addr`.
        addr: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// The admin server stopped with an I/O error.
    #[error("admin server failed")]
    AdminServe(#[source] io::Error),
    /// The admin server's task panicked or was cancelled.
    #[error("admin server task ended abnormally")]
    AdminTask(#[source] tokio::task::JoinError),
    /// The instance file could not be written.
    #[error("cannot write the instance file")]
    Instance(#[source] io::Error),
    /// A SIGTERM/SIGINT handler could not be installed.
    #[error("cannot install SIGTERM/SIGINT handler")]
    Signal(#[source] io::Error),
}
