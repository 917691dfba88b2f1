//! Device lists and device linking: `POST /v1/accounts/{handle}/device-list`,
//! `DELETE /v1/accounts/{handle}`, `POST /v1/device-lists`, and the link slots
//! `PUT|GET /v1/links/{slot}`, `POST /v1/links/{slot}/response`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use dm_wire::api::limits::{
    LINK_TTL_SECS, MAX_DEVICE_LIST_BYTES, MAX_DEVICE_LIST_HANDLES, MAX_LINK_BYTES,
};
use dm_wire::api::{
    AccountResponse, DeviceListsRequest, DeviceListsResponse, ErrorCode, LinkRequestBody,
    LinkResponseBody, LinkSlot, PublishDeviceListRequest,
};
use dm_wire::cert::DeviceList;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::routes::accounts::parse_handle;
use crate::store::DeviceListUpdate;

/// Publishes a new device list. No session: the list must verify, name the handle, be
/// signed by the account's registered key and have a greater sequence than the stored one.
pub async fn publish(
    State(state): State<AppState>,
    Path(handle): Path<String>,
    ApiJson(req): ApiJson<PublishDeviceListRequest>,
) -> Result<Json<AccountResponse>, ApiError> {
    let handle = parse_handle(&handle)?;
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
    if list.handle != handle {
        return Err(ApiError::invalid_request(
            "the device list is for another handle",
        ));
    }
    let change = state
        .store()
        .update_device_list(
            DeviceListUpdate {
                handle: handle.clone(),
                account_key: list.account_key.0,
                device_list: req.device_list.clone(),
                sequence: list.sequence,
                devices: list
                    .devices
                    .iter()
                    .map(|d| (d.device_id, d.device_key))
                    .collect(),
            },
            state.now_secs(),
        )
        .await?;
    if !change.removed.is_empty() {
        // The removed devices' sessions are gone.
        state.sessions().clear();
    }
    tracing::debug!(
        added = change.added.len(),
        removed = change.removed.len(),
        "device list updated"
    );
    Ok(Json(AccountResponse {
        handle,
        device_list: req.device_list,
    }))
}

/// Deletes the account of the authenticated device (every device of it). The handle can
/// then be registered again, by anyone: peers see a new account key.
pub async fn delete_account(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(handle): Path<String>,
) -> Result<StatusCode, ApiError> {
    let handle = parse_handle(&handle)?;
    if handle != auth.handle {
        return Err(ApiError::new(
            ErrorCode::NotMember,
            "a device can only delete its own account",
        ));
    }
    state.store().delete_account(&handle).await?;
    state.sessions().clear();
    tracing::debug!("account deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The current device lists of several accounts (unknown handles are left out).
pub async fn lists(
    State(state): State<AppState>,
    _auth: Authenticated,
    ApiJson(req): ApiJson<DeviceListsRequest>,
) -> Result<Json<DeviceListsResponse>, ApiError> {
    if req.handles.len() > MAX_DEVICE_LIST_HANDLES {
        return Err(ApiError::invalid_request(format!(
            "at most {MAX_DEVICE_LIST_HANDLES} handles per request"
        )));
    }
    let mut accounts = Vec::with_capacity(req.handles.len());
    for handle in &req.handles {
        if let Some(account) = state.store().account(handle).await? {
            accounts.push(AccountResponse {
                handle: account.handle,
                device_list: account.device_list,
            });
        }
    }
    Ok(Json(DeviceListsResponse { accounts }))
}

fn parse_slot(text: &str) -> Result<[u8; 16], ApiError> {
    let bytes =
        hex::decode(text).map_err(|_| ApiError::invalid_request("a slot is 32 hex digits"))?;
    bytes
        .try_into()
        .map_err(|_| ApiError::invalid_request("a slot is 32 hex digits"))
}

/// A new device leaves its link request (opaque; authenticated by the link code, which the
/// relay never sees). The slot lives [`LINK_TTL_SECS`].
pub async fn put_request(
    State(state): State<AppState>,
    Path(slot): Path<String>,
    ApiJson(req): ApiJson<LinkRequestBody>,
) -> Result<StatusCode, ApiError> {
    let slot = parse_slot(&slot)?;
    if req.request.is_empty() || req.request.len() > MAX_LINK_BYTES {
        return Err(ApiError::payload_too_large(format!(
            "a link request has 1 to {MAX_LINK_BYTES} bytes"
        )));
    }
    let now = state.now_secs();
    state
        .store()
        .put_link_request(slot, req.request, now, now.saturating_add(LINK_TTL_SECS))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Reads a link slot: the request, and the response once there is one.
pub async fn get_slot(
    State(state): State<AppState>,
    Path(slot): Path<String>,
) -> Result<Json<LinkSlot>, ApiError> {
    let slot = parse_slot(&slot)?;
    let slot = state
        .store()
        .link_slot(slot, state.now_secs())
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such link slot (expired?)"))?;
    Ok(Json(LinkSlot {
        request: slot.request,
        response: slot.response,
    }))
}

/// A device of an account answers a link request (opaque, sealed to the new device).
pub async fn put_response(
    State(state): State<AppState>,
    _auth: Authenticated,
    Path(slot): Path<String>,
    ApiJson(req): ApiJson<LinkResponseBody>,
) -> Result<StatusCode, ApiError> {
    let slot = parse_slot(&slot)?;
    if req.response.is_empty() || req.response.len() > MAX_LINK_BYTES {
        return Err(ApiError::payload_too_large(format!(
            "a link response has 1 to {MAX_LINK_BYTES} bytes"
        )));
    }
    if state
        .store()
        .put_link_response(slot, req.response, state.now_secs())
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            "no such link slot, or it was answered already",
        ))
    }
}
