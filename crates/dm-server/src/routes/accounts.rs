//! `POST /v1/accounts` (register) and `GET /v1/accounts/{handle}`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use dm_wire::Handle;
use dm_wire::api::limits::MAX_DEVICE_LIST_BYTES;
use dm_wire::api::{AccountResponse, ErrorCode, RegisterRequest};
use dm_wire::auth::{REGISTRATION_LABEL, registration_body};
use dm_wire::cert::{DeviceList, verify_labeled};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::store::{NewAccount, Registration};

/// Registers an account with its first device.
///
/// The device list must verify, name the requested handle, have sequence 1 and exactly one
/// device, and the device must prove possession of its key over the list.
///
/// Idempotent: a retry with the byte-identical device list of the registered account (and
/// a valid proof, checked as above) is answered like the first request; any other device
/// list for a registered handle is `409 handle_taken`.
pub async fn register(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<AccountResponse>), ApiError> {
    if req.device_list.len() > MAX_DEVICE_LIST_BYTES {
        return Err(ApiError::payload_too_large(format!(
            "the device list exceeds {MAX_DEVICE_LIST_BYTES} bytes"
        )));
    }
    let list = DeviceList::decode(&req.device_list).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidSignature,
            format!("the device list does not verify: {e}"),
        )
    })?;
    if list.handle != req.handle {
        return Err(ApiError::invalid_request(
            "the device list is for another handle",
        ));
    }
    if list.sequence != 1 {
        return Err(ApiError::invalid_request(
            "a new account's device list must have sequence 1",
        ));
    }
    let [device] = list.devices.as_slice() else {
        return Err(ApiError::invalid_request(
            "a new account's device list must hold exactly one device",
        ));
    };
    verify_labeled(
        &device.device_key,
        REGISTRATION_LABEL,
        &registration_body(&req.device_list),
        &req.device_proof,
        "registration proof",
    )
    .map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidSignature,
            "the device proof does not verify with the device's key",
        )
    })?;
    let registration = state
        .store()
        .create_account(
            NewAccount {
                handle: req.handle.clone(),
                account_key: list.account_key.0,
                device_list: req.device_list.clone(),
                sequence: list.sequence,
                device_id: device.device_id,
                device_key: device.device_key,
            },
            state.now_secs(),
        )
        .await?;
    match registration {
        Registration::Created => tracing::debug!(device = %device.device_id, "account registered"),
        Registration::Repeated => {
            tracing::debug!(device = %device.device_id, "account registration repeated");
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(AccountResponse {
            handle: req.handle,
            device_list: req.device_list,
        }),
    ))
}

/// Publishes an account's current device list.
pub async fn show(
    State(state): State<AppState>,
    _auth: Authenticated,
    Path(handle): Path<String>,
) -> Result<Json<AccountResponse>, ApiError> {
    let handle = parse_handle(&handle)?;
    let account = state
        .store()
        .account(&handle)
        .await?
        .ok_or_else(|| ApiError::from(crate::store::StoreError::UnknownHandle))?;
    Ok(Json(AccountResponse {
        handle: account.handle,
        device_list: account.device_list,
    }))
}

/// A handle from a URL path (canonical form only).
pub(crate) fn parse_handle(text: &str) -> Result<Handle, ApiError> {
    Handle::from_canonical(text).map_err(|e| ApiError::new(ErrorCode::InvalidHandle, e.to_string()))
}
