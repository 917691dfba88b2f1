//! Operator endpoints: `GET /healthz` (liveness), `GET /readyz` (readiness), `GET /metrics`
//! (Prometheus) and `GET /openapi.json` (the API's description). None of them needs a
//! session; the first three are exempt from the rate limit.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use dm_wire::api::ErrorCode;

use crate::AppState;
use crate::error::ApiError;

/// The checked-in OpenAPI 3.1 document of the relay's HTTP API, served as is.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");

/// Liveness: the process answers HTTP. Does not touch the database.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: `200 ok` while the database answers and the relay is not shutting down, else
/// `503 unavailable`.
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_shutting_down() {
        return ApiError::new(ErrorCode::Unavailable, "the relay is shutting down").into_response();
    }
    match state.store().ping().await {
        Ok(()) => "ok".into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check: the database does not answer");
            ApiError::new(ErrorCode::Unavailable, "the database does not answer").into_response()
        }
    }
}

/// The metrics in the Prometheus text exposition format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let body = state
        .metrics()
        .render(state.store(), state.now_secs())
        .await;
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

/// The OpenAPI document.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}
