//! The admin HTTP server: `/healthz`, `/readyz` and `/metrics`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use voicecluster_api::{HEALTHZ_PATH, METRICS_PATH, READYZ_PATH};

use crate::{OPENMETRICS_CONTENT_TYPE, Readiness, TelemetryError};

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// The admin routes, for serving on a listener of the caller's own:
///
/// - `GET /healthz`: 200 `ok` while the process can answer at all;
/// - `GET /readyz`: 200 `ok` when `readiness` is set, else 503
///   `not ready: <reason>`;
/// - `GET /metrics`: `registry` in the OpenMetrics text format.
pub fn router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route(HEALTHZ_PATH, get(healthz))
        .route(READYZ_PATH, get(readyz))
        .route(METRICS_PATH, get(metrics))
        .with_state(AdminState {
            registry,
            readiness,
        })
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AdminState>) -> Response {
    match state.readiness.check() {
        Ok(()) => "ok".into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => ([(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics").into_response()
        }
    }
}

/// An admin server bound to its address but not serving yet. Binding first
/// lets the caller learn the real port (when asked for port 0) and fail
/// start-up on a busy port before it reports anything as started.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
}

impl AdminServer {
    /// Listens on `addr` for the routes of [`router`].
    pub async fn bind(
        addr: SocketAddr,
        registry: Arc<Registry>,
        readiness: Readiness,
    ) -> Result<Self, TelemetryError> {
        let bind_error = |source| TelemetryError::AdminBind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            listener,
            local_addr,
            router: router(registry, readiness),
        })
    }

    /// Serves the routes of [`router`] on a listener already bound.
    pub fn on(
        listener: TcpListener,
        registry: Arc<Registry>,
        readiness: Readiness,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            router: router(registry, readiness),
        })
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then finishes the requests in
    /// flight and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), TelemetryError> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(TelemetryError::AdminServe)
    }

    /// Serves on a task of its own until [`RunningAdmin::shutdown`] is
    /// called or the returned handle is dropped.
    pub fn spawn(self) -> RunningAdmin {
        let local_addr = self.local_addr;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(async move {
            // Either a stop message or a dropped handle ends the server.
            let _ = stopped.await;
        }));
        RunningAdmin {
            local_addr,
            stop,
            task,
        }
    }
}

/// Handle to an admin server serving on its own task.
#[derive(Debug)]
pub struct RunningAdmin {
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), TelemetryError>>,
}

impl RunningAdmin {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections, waits for the requests in flight, and
    /// returns the server's result.
    pub async fn shutdown(self) -> Result<(), TelemetryError> {
        // An error means the server already ended; its task has the reason.
        let _ = self.stop.send(());
        self.task.await.map_err(TelemetryError::AdminTask)?
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;
    use crate::testing::http_get;
    use crate::{BuildInfo, register_process_metrics};

    async fn start(readiness: &Readiness) -> (RunningAdmin, Counter) {
        let mut registry = Registry::default();
        let calls = Counter::default();
        registry.register("test_calls", "Calls seen by the test", calls.clone());
        register_process_metrics(&mut registry, BuildInfo::new("test-bin", "9.8.7"));
        let server = AdminServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(registry),
            readiness.clone(),
        )
        .await
        .unwrap();
        (server.spawn(), calls)
    }

    #[tokio::test]
    async fn healthz_answers_ok() {
        let readiness = Readiness::new("starting");
        let (admin, _) = start(&readiness).await;
        let response = http_get(admin.local_addr(), "/healthz").await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "ok");
        admin.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn readyz_flips_from_503_to_200_and_back() {
        let readiness = Readiness::new("starting");
        let (admin, _) = start(&readiness).await;
        let addr = admin.local_addr();

        let before = http_get(addr, "/readyz").await.unwrap();
        assert_eq!(before.status, 503);
        assert_eq!(before.body, "not ready: starting");

        readiness.set_ready();
        let ready = http_get(addr, "/readyz").await.unwrap();
        assert_eq!(ready.status, 200);
        assert_eq!(ready.body, "ok");

        readiness.set_not_ready("shutting down");
        let after = http_get(addr, "/readyz").await.unwrap();
        assert_eq!(after.status, 503);
        assert_eq!(after.body, "not ready: shutting down");

        admin.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn metrics_serves_the_registry_as_openmetrics() {
        let readiness = Readiness::new("starting");
        let (admin, calls) = start(&readiness).await;
        calls.inc_by(3);

        let response = http_get(admin.local_addr(), "/metrics").await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-type"),
            Some(OPENMETRICS_CONTENT_TYPE)
        );
        let body = &response.body;
        assert!(body.contains("test_calls_total 3\n"), "{body}");
        assert!(body.contains("process_start_time_seconds "), "{body}");
        assert!(
            body.contains(r#"voicecluster_build_info{binary="test-bin",version="9.8.7"} 1"#),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        admin.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn unknown_path_is_404() {
        let readiness = Readiness::new("starting");
        let (admin, _) = start(&readiness).await;
        let response = http_get(admin.local_addr(), "/nope").await.unwrap();
        assert_eq!(response.status, 404);
        admin.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_connections() {
        let readiness = Readiness::new("starting");
        let (admin, _) = start(&readiness).await;
        let addr = admin.local_addr();
        admin.shutdown().await.unwrap();
        assert!(http_get(addr, "/healthz").await.is_err());
    }

    #[tokio::test]
    async fn bind_reports_a_busy_port() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = AdminServer::bind(addr, Arc::new(Registry::default()), Readiness::new("x"))
            .await
            .unwrap_err();
        assert!(matches!(err, TelemetryError::AdminBind { .. }), "{err}");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
