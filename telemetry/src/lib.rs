//! What every voicecluster binary does the same way: command-line flags for
//! logging and the admin server, structured logging, the admin HTTP server
//! (`/healthz`, `/readyz`, `/metrics`) and graceful shutdown on SIGTERM.
//!
//! A binary flattens [`CommonArgs`] into its own clap arguments, installs the
//! signal handlers with [`shutdown_signal`], then calls [`Telemetry::start`]
//! and marks itself ready once its real work is running:
//!
//! ```no_run
//! # async fn run(args: voicecluster_telemetry::CommonArgs) -> Result<(), voicecluster_telemetry::TelemetryError> {
//! use voicecluster_telemetry::{BuildInfo, Telemetry, shutdown_signal};
//!
//! let shutdown = shutdown_signal()?;
//! let registry = prometheus_client::registry::Registry::default();
//! let telemetry = Telemetry::start(BuildInfo::new("example", "0.1.0"), &args, registry).await?;
//! telemetry.readiness().set_ready();
//! let signal = shutdown.await;
//! tracing::info!(%signal, "shutting down");
//! telemetry.shutdown().await
//! # }
//! ```
//!
//! The pieces are public on their own too, for binaries that need a
//! different order.

mod admin;
mod args;
mod error;
pub mod instance;
mod logging;
pub mod metrics;
mod readiness;
mod signal;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;

pub use admin::{AdminServer, RunningAdmin, router};
pub use args::CommonArgs;
pub use error::TelemetryError;
pub use instance::{Instance, probe_if_asked};
pub use logging::{LogFilter, LogFormat, ParsedFilter, init_logging};
pub use metrics::{BuildInfo, OPENMETRICS_CONTENT_TYPE, register_process_metrics};
pub use readiness::Readiness;
pub use signal::{ShutdownSignal, shutdown_signal};

/// A binary's running telemetry: logging is set up and the admin server is
/// serving. Readiness starts as "starting" until the binary calls
/// [`Readiness::set_ready`].
#[derive(Debug)]
pub struct Telemetry {
    readiness: Readiness,
    log_filter: LogFilter,
    admin: RunningAdmin,
    instance: Instance,
    slot: u16,
}

/// How long a process waits for the slot of its pod's other container.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl Telemetry {
    /// Initialises logging from `args`, adds the process metrics of `build`
    /// to `registry` (register the binary's own metrics before this call),
    /// and starts the admin server on `args.admin_addr`.
    ///
    /// Must be called once per process, inside a Tokio runtime.
    pub async fn start(
        build: BuildInfo,
        args: &CommonArgs,
        mut registry: Registry,
    ) -> Result<Self, TelemetryError> {
        let log_filter = init_logging(args.log_format, &args.log_level)?;
        register_process_metrics(&mut registry, build);
        let readiness = Readiness::new("starting");
        let bind_error = |source| TelemetryError::AdminBind {
            addr: args.admin_addr,
            source,
        };
        let (listener, slot) = match &args.port_slot_file {
            Some(file) => {
                let slot = instance::slot_of(file, SLOT_WAIT)
                    .await
                    .map_err(bind_error)?;
                let listener = instance::bind_slot(args.admin_addr, slot)
                    .await
                    .map_err(bind_error)?;
                (listener, slot)
            }
            None => instance::bind_first_free(args.admin_addr, args.port_slots)
                .await
                .map_err(bind_error)?,
        };
        let admin = AdminServer::on(listener, Arc::new(registry), readiness.clone())
            .map_err(bind_error)?
            .spawn();
        let instance = Instance::new(args.instance_dir.as_deref(), build.binary);
        instance
            .record("admin", admin.local_addr())
            .and_then(|()| instance.record("slot", slot))
            .map_err(TelemetryError::Instance)?;
        Ok(Self {
            readiness,
            log_filter,
            admin,
            instance,
            slot,
        })
    }

    /// The port slot this process's listeners are in.
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// Where this process records the addresses it listens on.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The log filter in force, which a live configuration may swap.
    pub fn log_filter(&self) -> &LogFilter {
        &self.log_filter
    }

    /// The flag behind `/readyz`.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The address the admin server listens on (the real port when
    /// `--admin-addr` asked for port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// Reports not ready, then stops the admin server once the requests in
    /// flight are answered.
    pub async fn shutdown(self) -> Result<(), TelemetryError> {
        self.readiness.set_not_ready("shutting down");
        self.admin.shutdown().await
    }
}
