//! `GET /v1/mailbox` (fetch after a cursor) and `POST /v1/mailbox/ack`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use dm_wire::api::limits::{DEFAULT_FETCH, MAX_FETCH};
use dm_wire::api::{AckRequest, Envelope, MailboxResponse};
use serde::Deserialize;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};

/// The query of `GET /v1/mailbox`.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct FetchQuery {
    /// Return envelopes with a greater sequence number (default 0: from the start).
    #[serde(default)]
    pub after: u64,
    /// At most this many (default [`DEFAULT_FETCH`], capped at [`MAX_FETCH`]).
    pub limit: Option<u32>,
}

/// The authenticated device's envelopes after a cursor, its key package stock and its
/// `dropped` counter.
pub async fn fetch(
    State(state): State<AppState>,
    auth: Authenticated,
    ApiQuery(query): ApiQuery<FetchQuery>,
) -> Result<Json<MailboxResponse>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_FETCH).min(MAX_FETCH);
    let page = state
        .store()
        .fetch(auth.device_id, query.after, limit)
        .await?;
    let key_packages = state
        .store()
        .key_package_stock(auth.device_id, state.now_secs())
        .await?;
    state
        .metrics()
        .envelopes_delivered(page.envelopes.len() as u64);
    Ok(Json(MailboxResponse {
        envelopes: page
            .envelopes
            .into_iter()
            .map(|e| Envelope {
                seq: e.seq,
                payload: e.payload,
                received_at: e.received_at,
            })
            .collect(),
        more: page.more,
        key_packages,
        dropped: page.dropped,
    }))
}

/// Deletes the authenticated device's envelopes up to and including `up_to`.
pub async fn ack(
    State(state): State<AppState>,
    auth: Authenticated,
    ApiJson(req): ApiJson<AckRequest>,
) -> Result<StatusCode, ApiError> {
    state.store().ack(auth.device_id, req.up_to).await?;
    Ok(StatusCode::NO_CONTENT)
}
