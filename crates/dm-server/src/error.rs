//! The one error type of the HTTP layer: every failure becomes a JSON [`ErrorBody`].
//!
//! Errors caused by the client carry a stable [`ErrorCode`] and a short explanation.
//! Failures of the relay itself (database, bugs) become a bare `internal` 500: their detail
//! is written to the log, never to the response.

use std::borrow::Cow;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dm_wire::api::{ErrorBody, ErrorCode, ErrorDetail};

use crate::store::StoreError;

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    code: ErrorCode,
    message: Cow<'static, str>,
    /// The group's current epoch, answered with `epoch_conflict` only.
    epoch: Option<u64>,
    /// The stored device list, answered with `stale_device_list` only.
    device_list: Option<Vec<u8>>,
    /// Seconds for the `Retry-After` header of `rate_limited` (60 when unset).
    retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error with a code and an explanation for people (never secrets or content).
    pub fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
            epoch: None,
            device_list: None,
            retry_after_secs: None,
        }
    }

    /// `429 rate_limited`, with a `Retry-After` header of `retry_after_secs`.
    pub fn rate_limited(message: impl Into<Cow<'static, str>>, retry_after_secs: u64) -> Self {
        Self {
            retry_after_secs: Some(retry_after_secs),
            ..Self::new(ErrorCode::RateLimited, message)
        }
    }

    /// `409 epoch_conflict`, telling the client the group's current epoch (in
    /// [`ErrorDetail::epoch`] as well as in the message).
    pub fn epoch_conflict(current: u64) -> Self {
        Self {
            code: ErrorCode::EpochConflict,
            message: format!(
                "the group is at epoch {current}: fetch your mailbox, process it and retry"
            )
            .into(),
            epoch: Some(current),
            device_list: None,
            retry_after_secs: None,
        }
    }

    /// A failure of the relay: logs `detail` and answers a bare `internal` error.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }

    /// `400 invalid_request`.
    pub fn invalid_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// `401 unauthenticated`.
    pub fn unauthenticated() -> Self {
        Self::new(
            ErrorCode::Unauthenticated,
            "missing, invalid or expired session token",
        )
    }

    /// `401 auth_failed`.
    pub fn auth_failed() -> Self {
        Self::new(
            ErrorCode::AuthFailed,
            "the challenge is unknown, expired or used, or the signature is wrong",
        )
    }

    /// `404 not_found`.
    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, "no such route")
    }

    /// `405 method_not_allowed`.
    pub fn method_not_allowed() -> Self {
        Self::new(
            ErrorCode::MethodNotAllowed,
            "the method is not allowed on this route",
        )
    }

    /// `413 payload_too_large`.
    pub fn payload_too_large(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::PayloadTooLarge, message)
    }

    /// `400 invalid_message`.
    pub fn invalid_message(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorCode::InvalidMessage, message)
    }

    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The explanation.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The group's current epoch, set with `epoch_conflict` only.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// The error a relay-generated response of this status stands for (used to turn the
    /// framework's own plain responses into JSON ones).
    pub fn for_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::not_found(),
            StatusCode::METHOD_NOT_ALLOWED => Self::method_not_allowed(),
            StatusCode::PAYLOAD_TOO_LARGE => {
                Self::payload_too_large("the request body is too large")
            }
            StatusCode::UNAUTHORIZED => Self::unauthenticated(),
            StatusCode::TOO_MANY_REQUESTS => Self::new(ErrorCode::RateLimited, "too many requests"),
            StatusCode::SERVICE_UNAVAILABLE => {
                Self::new(ErrorCode::Unavailable, "the relay cannot serve now")
            }
            s if s.is_client_error() => Self::invalid_request("the request is not valid"),
            _ => Self::new(ErrorCode::Internal, "internal error"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message.into_owned(),
                epoch: self.epoch,
                device_list: self.device_list,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if self.code == ErrorCode::RateLimited {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(self.retry_after_secs.unwrap_or(60)),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::HandleTaken => {
                Self::new(ErrorCode::HandleTaken, "the handle is registered already")
            }
            StoreError::DeviceTaken => {
                Self::invalid_request("the device id is registered already; choose another")
            }
            StoreError::UnknownHandle => {
                Self::new(ErrorCode::UnknownHandle, "no account has this handle")
            }
            StoreError::TooManyKeyPackages { max } => Self::new(
                ErrorCode::TooManyKeyPackages,
                format!("a device may store at most {max} one-time key packages"),
            ),
            StoreError::NotMember => Self::new(
                ErrorCode::NotMember,
                "the sending device is not on the group's delivery list",
            ),
            StoreError::EpochConflict { current } => Self::epoch_conflict(current),
            StoreError::FutureEpoch { current } => Self::invalid_message(format!(
                "the message is for an epoch after the group's current epoch {current}"
            )),
            StoreError::UnclaimedKeyPackageRef => Self::invalid_message(
                "the welcome names a key package that the sending device did not claim",
            ),
            StoreError::InvalidRemoval(why) => Self::invalid_request(why),
            StoreError::IdReused => Self::new(
                ErrorCode::IdReused,
                "the message id was used before for a different message",
            ),
            StoreError::WrongAccountKey => Self::new(
                ErrorCode::InvalidSignature,
                "the device list is not signed by the account's key",
            ),
            StoreError::StaleDeviceList {
                current,
                device_list,
            } => Self {
                device_list: Some(device_list),
                ..Self::new(
                    ErrorCode::StaleDeviceList,
                    format!(
                        "the account's device list has sequence {current} already; publish a later one"
                    ),
                )
            },
            StoreError::DeviceKeyChanged => {
                Self::invalid_request("a registered device's key cannot change")
            }
            StoreError::LinkSlotTaken => Self::invalid_request("this link slot is in use"),
            StoreError::RateLimited { retry_after_secs } => Self::rate_limited(
                format!(
                    "too many key package claims from this device: retry after \
                     {retry_after_secs} s"
                ),
                retry_after_secs,
            ),
            StoreError::Closed => Self::new(ErrorCode::Unavailable, "the relay is shutting down"),
            err @ (StoreError::Database(_)
            | StoreError::Sqlite(_)
            | StoreError::Migrate(_)
            | StoreError::Corrupt(_)
            | StoreError::UnsupportedDatabaseUrl
            | StoreError::BatchCommit(_)) => Self::internal(err),
        }
    }
}
