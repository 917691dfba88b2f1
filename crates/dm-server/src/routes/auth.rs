//! `POST /v1/auth/challenge` and `POST /v1/auth/session`: a device proves possession of its
//! key by signing a fresh, single-use challenge and receives a session token.

use axum::Json;
use axum::extract::State;
use dm_wire::api::limits::{CHALLENGE_TTL_SECS, SESSION_TTL_SECS};
use dm_wire::api::{ChallengeRequest, ChallengeResponse, SessionRequest, SessionResponse};
use dm_wire::auth::{CHALLENGE_LEN, SESSION_LABEL, session_body};
use dm_wire::cert::verify_labeled;

use crate::AppState;
use crate::auth::{new_challenge, new_token};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::store::Challenge;

/// Issues a challenge. The answer is the same whether or not the handle and device exist,
/// so it reveals neither.
pub async fn challenge(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ChallengeRequest>,
) -> Result<Json<ChallengeResponse>, ApiError> {
    let challenge = new_challenge();
    let expires_at = state.now_secs().saturating_add(CHALLENGE_TTL_SECS);
    state
        .store()
        .put_challenge(Challenge {
            challenge: challenge.to_vec(),
            handle: req.handle,
            device_id: req.device_id,
            expires_at,
        })
        .await?;
    Ok(Json(ChallengeResponse {
        challenge: challenge.to_vec(),
        expires_at,
    }))
}

/// Exchanges a signed challenge for a session token. The challenge is consumed by the first
/// attempt, successful or not.
pub async fn session(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<SessionRequest>,
) -> Result<Json<SessionResponse>, ApiError> {
    let challenge: [u8; CHALLENGE_LEN] = req
        .challenge
        .as_slice()
        .try_into()
        .map_err(|_| ApiError::auth_failed())?;
    let now = state.now_secs();
    let issued = state
        .store()
        .take_challenge(&challenge)
        .await?
        .ok_or_else(ApiError::auth_failed)?;
    if issued.handle != req.handle || issued.device_id != req.device_id || issued.expires_at <= now
    {
        return Err(ApiError::auth_failed());
    }
    let device = state
        .store()
        .device(&req.device_id)
        .await?
        .filter(|d| d.handle == req.handle)
        .ok_or_else(ApiError::auth_failed)?;
    verify_labeled(
        &device.device_key,
        SESSION_LABEL,
        &session_body(&req.handle, &req.device_id, &challenge),
        &req.signature,
        "session proof",
    )
    .map_err(|_| ApiError::auth_failed())?;
    let token = new_token();
    let expires_at = now.saturating_add(SESSION_TTL_SECS);
    state
        .store()
        .create_session(token.hash, device.device_id, expires_at)
        .await?;
    tracing::debug!(device = %device.device_id, "session opened");
    Ok(Json(SessionResponse {
        token: token.token,
        expires_at,
    }))
}
