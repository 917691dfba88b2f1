//! Request extractors whose rejections are [`ApiError`]s, so no framework-generated plain
//! text ever reaches a client.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use dm_wire::Handle;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Malformed JSON or a wrong shape is `400 invalid_request`, except that an
/// invalid `handle` field is `400 invalid_handle`; a body over the limit is `413`. The
/// `Content-Type` header is not required.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(format!(
                    "the request body exceeds {} bytes",
                    dm_wire::api::limits::MAX_BODY_BYTES
                ))
            } else {
                ApiError::invalid_request("the request body could not be read")
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON body, classifying failures as described on [`ApiJson`].
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let err = match serde_json::from_slice::<T>(bytes) {
        Ok(value) => return Ok(value),
        Err(err) => err,
    };
    if has_invalid_handle(bytes) {
        return Err(ApiError::new(
            dm_wire::api::ErrorCode::InvalidHandle,
            "the handle must be 3 to 32 characters from a-z, 0-9 and '_', starting with a letter",
        ));
    }
    let message = if err.is_data() {
        // serde's own words name the field ("missing field `x`", "invalid length …"), but
        // "invalid type/value" messages can quote the input: keep only the location then.
        let text = err.to_string();
        if text.starts_with("missing field") || text.starts_with("unknown field") {
            format!("the request body does not have the expected shape: {text}")
        } else {
            format!(
                "the request body does not have the expected shape (line {}, column {})",
                err.line(),
                err.column()
            )
        }
    } else {
        format!(
            "the request body is not valid JSON (line {}, column {})",
            err.line(),
            err.column()
        )
    };
    Err(ApiError::invalid_request(message))
}

/// Whether the body is a JSON object whose `handle` field is present but not a canonical
/// handle.
fn has_invalid_handle(bytes: &[u8]) -> bool {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(bytes)
    else {
        return false;
    };
    match map.get("handle") {
        None => false,
        Some(serde_json::Value::String(s)) => Handle::from_canonical(s).is_err(),
        Some(_) => true,
    }
}

/// A query string; anything it cannot be parsed into is `400 invalid_request`.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|_| ApiError::invalid_request("the query string is not valid"))
    }
}

#[cfg(test)]
mod tests {
    use dm_wire::api::{ChallengeRequest, ErrorCode};

    use super::*;

    #[test]
    fn json_failures_are_classified() {
        let ok = br#"{"handle":"alice","device_id":"00000000000000000000000000000000"}"#;
        assert!(parse_json::<ChallengeRequest>(ok).is_ok());
        let bad_handle = br#"{"handle":"A!","device_id":"00000000000000000000000000000000"}"#;
        assert_eq!(
            parse_json::<ChallengeRequest>(bad_handle)
                .unwrap_err()
                .code(),
            ErrorCode::InvalidHandle
        );
        for body in [&b"{"[..], b"[]", br#"{"handle":"alice"}"#, b""] {
            assert_eq!(
                parse_json::<ChallengeRequest>(body).unwrap_err().code(),
                ErrorCode::InvalidRequest
            );
        }
        let missing = parse_json::<ChallengeRequest>(br#"{"handle":"alice"}"#).unwrap_err();
        assert!(missing.message().contains("device_id"), "{missing:?}");
    }
}
