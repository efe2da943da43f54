//! The management HTTP API of a signal node: bills.
//!
//! - `GET /calls/{call_id}/bill`: the bill of one call, or 404.
//! - `GET /bills?since=<RFC 3339 time>`: bills of calls that ended since then
//!   (all without `since`).

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::billing::SharedBills;

fn error(code: StatusCode, message: String) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn call_bill(State(bills): State<SharedBills>, Path(call_id): Path<String>) -> Response {
    let store = bills
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match store.get(&call_id) {
        Some(b) => Json(b.clone()).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no bill for call {call_id:?}"),
        ),
    }
}

async fn bills_since(
    State(bills): State<SharedBills>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let since = match q.get("since") {
        None => 0,
        Some(s) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => u64::try_from(t.as_millisecond()).unwrap_or(0),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("since={s:?} is not an RFC 3339 time: {e}"),
                );
            }
        },
    };
    let store = bills
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Json(store.since(since)).into_response()
}

/// The API's routes.
pub fn router(bills: SharedBills) -> Router {
    Router::new()
        .route("/calls/{call_id}/bill", get(call_bill))
        .route("/bills", get(bills_since))
        .with_state(bills)
}

/// Serves the API on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, bills: SharedBills) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving the management API");
    axum::serve(listener, router(bills)).await
}
