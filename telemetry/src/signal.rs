use std::fmt;
use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

use crate::TelemetryError;

/// The signal that asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// SIGTERM: what Kubernetes sends when it stops a pod.
    Terminate,
    /// SIGINT: Ctrl-C.
    Interrupt,
}

impl fmt::Display for ShutdownSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Terminate => "SIGTERM",
            Self::Interrupt => "SIGINT",
        })
    }
}

/// Installs SIGTERM and SIGINT handlers now and returns a future that
/// resolves on the first of them.
///
/// The handlers are installed by this call, not when the future is first
/// polled, so call it early: a SIGTERM that arrives during start-up is then
/// kept for the future instead of killing the process. It also matters in a
/// container, where the binary is PID 1 and the kernel ignores a SIGTERM that
/// has no handler. Must be called inside a Tokio runtime.
pub fn shutdown_signal()
-> Result<impl Future<Output = ShutdownSignal> + Send + 'static, TelemetryError> {
    let mut terminate = signal(SignalKind::terminate()).map_err(TelemetryError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(TelemetryError::Signal)?;
    Ok(async move {
        // `recv` yields `None` only when the runtime shuts down, which is a
        // reason to stop as well.
        tokio::select! {
            _ = terminate.recv() => ShutdownSignal::Terminate,
            _ = interrupt.recv() => ShutdownSignal::Interrupt,
        }
    })
}
