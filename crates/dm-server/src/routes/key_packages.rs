//! `POST /v1/key-packages` (upload), `GET /v1/key-packages` (stock) and
//! `POST /v1/accounts/{handle}/key-packages/claim`.

use axum::Json;
use axum::extract::{Path, State};
use dm_wire::api::limits::{MAX_KEY_PACKAGE_BYTES, MAX_KEY_PACKAGES_PER_UPLOAD};
use dm_wire::api::{
    ClaimResponse, ClaimedKeyPackage, ErrorCode, KeyPackageStock, UploadKeyPackagesRequest,
};
use dm_wire::credential::CredentialIdentity;

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::mls::{ExpectedOwner, KeyPackageUse, validate_key_package};
use crate::routes::accounts::parse_handle;
use crate::store::NewKeyPackage;

/// Stores the authenticated device's key packages after validating every one of them; one
/// invalid package refuses the whole upload.
pub async fn upload(
    State(state): State<AppState>,
    auth: Authenticated,
    ApiJson(req): ApiJson<UploadKeyPackagesRequest>,
) -> Result<Json<KeyPackageStock>, ApiError> {
    if req.key_packages.len() > MAX_KEY_PACKAGES_PER_UPLOAD {
        return Err(ApiError::invalid_request(format!(
            "at most {MAX_KEY_PACKAGES_PER_UPLOAD} key packages per upload"
        )));
    }
    if req
        .key_packages
        .iter()
        .chain(req.last_resort.iter())
        .any(|kp| kp.len() > MAX_KEY_PACKAGE_BYTES)
    {
        return Err(ApiError::payload_too_large(format!(
            "a key package exceeds {MAX_KEY_PACKAGE_BYTES} bytes"
        )));
    }
    let identity = CredentialIdentity {
        handle: auth.handle.clone(),
        device_id: auth.device_id,
    }
    .encode();
    let device_key = auth.device_key;
    // Signature verification is CPU work: keep it off the async workers.
    let (one_time, last_resort) =
        tokio::task::spawn_blocking(move || validate_upload(req, &identity, &device_key))
            .await
            .map_err(ApiError::internal)??;
    let stock = state
        .store()
        .add_key_packages(auth.device_id, one_time, last_resort, state.now_secs())
        .await?;
    Ok(Json(stock))
}

type ValidatedUpload = (Vec<NewKeyPackage>, Option<NewKeyPackage>);

fn validate_upload(
    req: UploadKeyPackagesRequest,
    identity: &[u8],
    device_key: &[u8; 32],
) -> Result<ValidatedUpload, ApiError> {
    let owner = ExpectedOwner {
        identity,
        device_key,
    };
    let check = |bytes: Vec<u8>, usage: KeyPackageUse, what: String| {
        validate_key_package(&bytes, owner, usage)
            .map(|valid| NewKeyPackage {
                kp_ref: valid.kp_ref,
                key_package: bytes,
                not_after: valid.not_after,
            })
            .map_err(|e| ApiError::new(ErrorCode::InvalidKeyPackage, format!("{what}: {e}")))
    };
    let mut one_time: Vec<NewKeyPackage> = Vec::with_capacity(req.key_packages.len());
    for (i, bytes) in req.key_packages.into_iter().enumerate() {
        let kp = check(bytes, KeyPackageUse::OneTime, format!("key package {i}"))?;
        if !one_time.iter().any(|k| k.kp_ref == kp.kp_ref) {
            one_time.push(kp);
        }
    }
    let last_resort = req
        .last_resort
        .map(|bytes| {
            check(
                bytes,
                KeyPackageUse::LastResort,
                "last-resort key package".into(),
            )
        })
        .transpose()?;
    Ok((one_time, last_resort))
}

/// The authenticated device's key package stock.
pub async fn stock(
    State(state): State<AppState>,
    auth: Authenticated,
) -> Result<Json<KeyPackageStock>, ApiError> {
    let stock = state
        .store()
        .key_package_stock(auth.device_id, state.now_secs())
        .await?;
    Ok(Json(stock))
}

/// Claims one key package for every current device of an account (except the claiming
/// device itself): one-time packages are consumed, last-resort ones are shared.
pub async fn claim(
    State(state): State<AppState>,
    auth: Authenticated,
    Path(handle): Path<String>,
) -> Result<Json<ClaimResponse>, ApiError> {
    let handle = parse_handle(&handle)?;
    let claim = state
        .store()
        .claim_key_packages(&handle, auth.device_id, state.now_secs())
        .await?;
    Ok(Json(ClaimResponse {
        handle,
        device_list: claim.device_list,
        key_packages: claim
            .key_packages
            .into_iter()
            .map(|(device_id, key_package)| ClaimedKeyPackage {
                device_id,
                key_package,
            })
            .collect(),
    }))
}
