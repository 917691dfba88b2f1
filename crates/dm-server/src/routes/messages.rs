//! `POST /v1/messages`: sequencing and fan-out of MLS messages.

use axum::Json;
use axum::extract::State;
use dm_wire::api::limits::{MAX_MESSAGE_BYTES, MAX_WELCOME_BYTES};
use dm_wire::api::{SendRequest, SendResponse};
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::mls::{parse_private_message, welcome_key_package_refs};
use crate::store::{ContentKind, OutgoingMessage, OutgoingWelcome};

/// Accepts one MLS PrivateMessage for its group (see [`crate::store::sequence`] for the
/// ordering rules) and delivers it to every other device on the group's delivery list; a
/// commit's Welcome goes to the devices whose key packages it names, each of which the
/// sending device must have claimed, and `removed_devices` (current members other than the
/// sender) leave the list. A refused message changes nothing.
pub async fn send(
    State(state): State<AppState>,
    auth: Authenticated,
    ApiJson(req): ApiJson<SendRequest>,
) -> Result<Json<SendResponse>, ApiError> {
    if req.message.len() > MAX_MESSAGE_BYTES {
        return Err(ApiError::payload_too_large(format!(
            "the message exceeds {MAX_MESSAGE_BYTES} bytes"
        )));
    }
    if req
        .welcome
        .as_ref()
        .is_some_and(|w| w.len() > MAX_WELCOME_BYTES)
    {
        return Err(ApiError::payload_too_large(format!(
            "the welcome exceeds {MAX_WELCOME_BYTES} bytes"
        )));
    }
    let header = parse_private_message(&req.message)
        .map_err(|e| ApiError::invalid_message(format!("message: {e}")))?;
    if header.kind != ContentKind::Commit {
        if req.welcome.is_some() {
            return Err(ApiError::invalid_message(
                "a welcome can only accompany a commit",
            ));
        }
        if !req.removed_devices.is_empty() {
            return Err(ApiError::invalid_request(
                "removed_devices can only accompany a commit",
            ));
        }
    }
    let welcome = req
        .welcome
        .map(|message| {
            welcome_key_package_refs(&message)
                .map(|kp_refs| OutgoingWelcome { message, kp_refs })
                .map_err(|e| ApiError::invalid_message(format!("welcome: {e}")))
        })
        .transpose()?;
    let mut removed_devices = req.removed_devices;
    removed_devices.sort_unstable();
    removed_devices.dedup();

    let outcome = state
        .store()
        .send(
            OutgoingMessage {
                sender: auth.device_id,
                id: req.id,
                message_hash: Sha256::digest(&req.message).into(),
                group_id: header.group_id,
                epoch: header.epoch,
                kind: header.kind,
                message: req.message,
                welcome,
                removed_devices,
            },
            state.now_ms(),
        )
        .await?;
    state
        .metrics()
        .envelopes_stored(outcome.delivered.len() as u64);
    Ok(Json(SendResponse {
        epoch: outcome.epoch,
        duplicate: outcome.duplicate,
    }))
}
