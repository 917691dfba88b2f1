//! JSON bodies of the relay's HTTP API (version 1, every path under `/v1`), error codes and
//! limits. Binary fields are standard base64; ids are lower-case hex.
//!
//! | method | path | auth | request | response |
//! |---|---|---|---|---|
//! | POST | `/v1/accounts` | none | [`RegisterRequest`] | 201 [`AccountResponse`] |
//! | GET | `/v1/accounts/{handle}` | session | - | [`AccountResponse`] |
//! | POST | `/v1/auth/challenge` | none | [`ChallengeRequest`] | [`ChallengeResponse`] |
//! | POST | `/v1/auth/session` | none | [`SessionRequest`] | [`SessionResponse`] |
//! | POST | `/v1/key-packages` | session | [`UploadKeyPackagesRequest`] | [`KeyPackageStock`] |
//! | GET | `/v1/key-packages` | session | - | [`KeyPackageStock`] |
//! | POST | `/v1/accounts/{handle}/key-packages/claim` | session | - | [`ClaimResponse`] |
//! | POST | `/v1/messages` | session | [`SendRequest`] | [`SendResponse`] |
//! | GET | `/v1/mailbox?after=SEQ&limit=N` | session | - | [`MailboxResponse`] |
//! | POST | `/v1/mailbox/ack` | session | [`AckRequest`] | 204 |
//! | GET | `/v1/ws?after=SEQ` | session | WebSocket upgrade | [`ServerFrame`]s; sends [`ClientFrame`]s |
//! | GET | `/healthz` | none | - | 200 `ok` |
//! | GET | `/readyz` | none | - | 200 `ok`, or 503 [`ErrorCode::Unavailable`] |
//! | GET | `/metrics` | none | - | Prometheus text format |
//! | GET | `/openapi.json` | none | - | the OpenAPI 3.1 document |
//!
//! "session" means the header `Authorization: Bearer <token>` with a token from
//! `/v1/auth/session`. Every error is an [`ErrorBody`] with a stable [`ErrorCode`].

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, Handle, MessageId};

/// Limits the relay enforces; clients stay within them.
pub mod limits {
    /// Largest request body, in bytes.
    pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
    /// Largest single key package, in bytes (room for post-quantum ciphersuites).
    pub const MAX_KEY_PACKAGE_BYTES: usize = 16 * 1024;
    /// Most key packages in one upload.
    pub const MAX_KEY_PACKAGES_PER_UPLOAD: usize = 100;
    /// Most one-time key packages stored per device.
    pub const MAX_KEY_PACKAGES_PER_DEVICE: u32 = 500;
    /// Largest MLS message (commit or application message) in a [`super::SendRequest`].
    pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
    /// Largest Welcome in a [`super::SendRequest`].
    pub const MAX_WELCOME_BYTES: usize = 1024 * 1024;
    /// Largest encoded device list.
    pub const MAX_DEVICE_LIST_BYTES: usize = 8 * 1024;
    /// Most envelopes returned by one mailbox fetch.
    pub const MAX_FETCH: u32 = 500;
    /// Default number of envelopes per mailbox fetch.
    pub const DEFAULT_FETCH: u32 = 100;
    /// Seconds a relay challenge stays valid.
    pub const CHALLENGE_TTL_SECS: u64 = 60;
    /// Seconds a session token stays valid.
    pub const SESSION_TTL_SECS: u64 = 24 * 3600;
    /// Seconds the relay keeps an unacknowledged mailbox envelope (30 days); older ones are
    /// deleted. Claimed key packages stay known to the relay as long, so that a Welcome
    /// encrypted to them can still be routed.
    pub const MAILBOX_RETENTION_SECS: u64 = 30 * 24 * 3600;
    /// Seconds the relay remembers an accepted `(device, message id)` pair, so that a retry
    /// of a [`super::SendRequest`] is answered like the original (`duplicate: true`) instead
    /// of being sequenced again. As long as [`MAILBOX_RETENTION_SECS`]: a message the relay
    /// accepted is recognised for as long as its envelopes can still be waiting in a
    /// mailbox. A client retrying a send after this long can no longer rely on it.
    pub const IDEMPOTENCY_RETENTION_SECS: u64 = MAILBOX_RETENTION_SECS;
    /// Most envelopes in one [`super::ServerFrame::Envelopes`] frame.
    pub const MAX_PUSH_BATCH: u32 = 100;
    /// Largest frame a client may send on the push socket, in bytes; a larger one closes
    /// the socket (close code 1009).
    pub const MAX_CLIENT_FRAME_BYTES: usize = 4 * 1024;
    /// The relay pings an idle push socket this often (seconds); a socket that has sent
    /// nothing (no frame, no pong) for three intervals is closed.
    pub const PUSH_PING_SECS: u64 = 30;
}

/// Registers a new account with its first device.
///
/// Idempotent: repeating a successful registration (same handle, byte-identical
/// `device_list`, valid `device_proof`) is answered 201 with the same [`AccountResponse`]
/// and changes nothing, so a client whose first response was lost can retry. Any other
/// device list for a registered handle is 409 [`ErrorCode::HandleTaken`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The handle to register (canonical form).
    pub handle: Handle,
    /// The encoded [`crate::cert::DeviceList`] (sequence 1, one device), signed by the
    /// account key: proves possession of the account key.
    #[serde(with = "crate::b64")]
    pub device_list: Vec<u8>,
    /// Ed25519 signature by the device key over
    /// `REGISTRATION_LABEL 0x00 device_list`: proves possession of the device key.
    #[serde(with = "crate::b64")]
    pub device_proof: Vec<u8>,
}

/// An account as the relay publishes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccountResponse {
    /// The handle.
    pub handle: Handle,
    /// The account's current encoded [`crate::cert::DeviceList`]. Clients verify it against
    /// the account key they pinned; the relay cannot forge it.
    #[serde(with = "crate::b64")]
    pub device_list: Vec<u8>,
}

/// Asks for a login challenge for one device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChallengeRequest {
    /// The account.
    pub handle: Handle,
    /// The device that will sign.
    pub device_id: DeviceId,
}

/// A single-use challenge.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChallengeResponse {
    /// 32 random bytes.
    #[serde(with = "crate::b64")]
    pub challenge: Vec<u8>,
    /// Unix seconds after which the challenge is refused.
    pub expires_at: u64,
}

/// Exchanges a signed challenge for a session token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionRequest {
    /// The account.
    pub handle: Handle,
    /// The device.
    pub device_id: DeviceId,
    /// The challenge received from `/v1/auth/challenge`.
    #[serde(with = "crate::b64")]
    pub challenge: Vec<u8>,
    /// Ed25519 signature by the device key over
    /// `SESSION_LABEL 0x00 session_body(handle, device_id, challenge)`.
    #[serde(with = "crate::b64")]
    pub signature: Vec<u8>,
}

/// A bearer token for `Authorization: Bearer …`.
#[derive(Clone, Serialize, Deserialize)]
pub struct SessionResponse {
    /// The token (opaque to clients).
    pub token: String,
    /// Unix seconds after which the token is refused.
    pub expires_at: u64,
}

impl std::fmt::Debug for SessionResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionResponse")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Uploads key packages of the authenticated device.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadKeyPackagesRequest {
    /// One-time key packages (TLS-encoded `MLSMessage` of wire format `mls_key_package`).
    #[serde(with = "crate::b64::vec")]
    pub key_packages: Vec<Vec<u8>>,
    /// The device's last-resort key package (with the `last_resort` extension); replaces
    /// the previous one.
    #[serde(
        default,
        with = "crate::b64::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_resort: Option<Vec<u8>>,
}

/// How many key packages the relay holds for the authenticated device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPackageStock {
    /// Unclaimed one-time key packages.
    pub one_time: u32,
    /// Whether a last-resort key package is stored.
    pub last_resort: bool,
}

/// One claimed key package.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimedKeyPackage {
    /// The device it belongs to.
    pub device_id: DeviceId,
    /// The key package (TLS-encoded `MLSMessage`).
    #[serde(with = "crate::b64")]
    pub key_package: Vec<u8>,
}

/// Key packages claimed for every current device of an account.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClaimResponse {
    /// The account.
    pub handle: Handle,
    /// The account's current encoded device list (to check the key packages against).
    #[serde(with = "crate::b64")]
    pub device_list: Vec<u8>,
    /// One key package per device that has one (one-time first, else last-resort).
    pub key_packages: Vec<ClaimedKeyPackage>,
}

/// Sends one MLS message (application message, proposal or commit) to its group.
///
/// The relay reads the group id, epoch and content type from the message's cleartext
/// header. A commit is accepted only if its epoch is the group's current epoch (exactly one
/// commit per epoch); the relay then routes `welcome` to the devices whose key packages it
/// names and adds them to the group's delivery list. Every `KeyPackageRef` of the Welcome
/// must name a key package that the sending device claimed (within
/// [`limits::MAILBOX_RETENTION_SECS`]), else the request is 400
/// [`ErrorCode::InvalidMessage`] and nothing is delivered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SendRequest {
    /// Chosen by the sender; a retry with the same id is answered like the original (for
    /// [`limits::IDEMPOTENCY_RETENTION_SECS`] after the original was accepted).
    pub id: MessageId,
    /// The TLS-encoded `MLSMessage` (a PrivateMessage).
    #[serde(with = "crate::b64")]
    pub message: Vec<u8>,
    /// With a commit that adds members: the TLS-encoded Welcome `MLSMessage`.
    #[serde(
        default,
        with = "crate::b64::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub welcome: Option<Vec<u8>>,
    /// With a commit that removes members: the devices it removes, to be taken off the
    /// group's delivery list once the commit is accepted. Each must be on the group's
    /// delivery list and must not be the sender, else the request is 400
    /// [`ErrorCode::InvalidRequest`] and nothing is applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_devices: Vec<DeviceId>,
}

/// The relay accepted a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResponse {
    /// The group's epoch after this message (a commit advances it by one).
    pub epoch: u64,
    /// True when this was a retry of a message already accepted.
    pub duplicate: bool,
}

/// One stored envelope in a device's mailbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope {
    /// Position in this device's mailbox: strictly increasing, never reused.
    pub seq: u64,
    /// A TLS-encoded `MLSMessage` (PrivateMessage or Welcome), exactly as sent.
    #[serde(with = "crate::b64")]
    pub payload: Vec<u8>,
    /// When the relay stored it (unix milliseconds).
    pub received_at: u64,
}

/// Envelopes after a cursor.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MailboxResponse {
    /// In increasing `seq` order.
    pub envelopes: Vec<Envelope>,
    /// Whether more envelopes wait after the last one returned.
    pub more: bool,
    /// The device's key package stock, so clients know when to replenish.
    pub key_packages: KeyPackageStock,
    /// Envelopes for this device that the relay did not store because its mailbox was full
    /// (the operator's quota), counted since the device was registered; it only grows.
    /// When it grew since the last fetch, the device missed messages it can never get: a
    /// client reports that to its user and rejoins the affected conversations (or all of
    /// them, as it cannot tell which). Absent (0) from relays that predate it.
    #[serde(default)]
    pub dropped: u64,
}

/// Acknowledges (and so deletes) every envelope up to and including `up_to`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct AckRequest {
    /// The highest sequence number processed.
    pub up_to: u64,
}

/// The query of `GET /v1/ws` (the live push socket).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct PushQuery {
    /// Push envelopes with a greater sequence number: the highest one the client has
    /// processed (default 0: from the start).
    #[serde(default)]
    pub after: u64,
}

/// A text frame the relay sends on the push socket (JSON, tagged by `type`).
///
/// After the upgrade the relay sends every envelope of the device's mailbox with
/// `seq > after` in batches, then each new envelope as soon as it is stored, in `seq`
/// order and each exactly once per socket. Envelopes stay in the mailbox until
/// acknowledged, so a client that reconnects with `after` set to the highest `seq` it
/// processed misses nothing and sees nothing twice.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Envelopes, in increasing `seq` order (at most [`limits::MAX_PUSH_BATCH`]).
    Envelopes {
        /// The envelopes.
        envelopes: Vec<Envelope>,
        /// The device's `dropped` counter, as in [`MailboxResponse::dropped`].
        #[serde(default)]
        dropped: u64,
    },
    /// The relay deleted the envelopes up to `up_to` after a [`ClientFrame::Ack`].
    Acked {
        /// As in the acknowledgement.
        up_to: u64,
    },
    /// The relay cannot go on (e.g. the session expired or the store failed); it closes
    /// the socket after this frame. The client reconnects (after logging in again for
    /// `unauthenticated`) or falls back to fetching.
    Error {
        /// What went wrong.
        error: ErrorDetail,
    },
}

/// A text frame a client sends on the push socket (JSON, tagged by `type`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Deletes every envelope up to and including `up_to`, like `POST /v1/mailbox/ack`;
    /// answered by [`ServerFrame::Acked`].
    Ack {
        /// The highest sequence number processed.
        up_to: u64,
    },
}

/// Stable, machine-readable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON of the expected shape, or a field is out of range (400).
    InvalidRequest,
    /// The handle does not follow the handle syntax (400).
    InvalidHandle,
    /// A certificate, device list or proof is malformed or its signature does not verify (400).
    InvalidSignature,
    /// The handle is registered already, with another device list (409).
    HandleTaken,
    /// No account has this handle (404).
    UnknownHandle,
    /// Missing, invalid or expired session token (401).
    Unauthenticated,
    /// The challenge is unknown, expired or used, or the signature is wrong (401).
    AuthFailed,
    /// A key package is malformed, expired, of another ciphersuite, or not this device's (400).
    InvalidKeyPackage,
    /// The device already stores the maximum number of key packages (409).
    TooManyKeyPackages,
    /// The MLS message or Welcome is malformed or of the wrong kind (400).
    InvalidMessage,
    /// The sending device is not on the group's delivery list (403).
    NotMember,
    /// Another commit was accepted for this epoch first (409). Fetch, process, retry.
    /// [`ErrorDetail::epoch`] carries the group's current epoch.
    EpochConflict,
    /// The message id was used before for a different message (409).
    IdReused,
    /// The body exceeds a size limit (413).
    PayloadTooLarge,
    /// The route does not exist (404).
    NotFound,
    /// The method is not allowed on this route (405).
    MethodNotAllowed,
    /// Too many requests; retry after the `Retry-After` header (429).
    RateLimited,
    /// The relay failed; details are in its log, not here (500).
    Internal,
    /// The relay cannot serve now (503).
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status the relay answers this code with.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::InvalidHandle
            | ErrorCode::InvalidSignature
            | ErrorCode::InvalidKeyPackage
            | ErrorCode::InvalidMessage => 400,
            ErrorCode::Unauthenticated | ErrorCode::AuthFailed => 401,
            ErrorCode::NotMember => 403,
            ErrorCode::UnknownHandle | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::HandleTaken
            | ErrorCode::TooManyKeyPackages
            | ErrorCode::EpochConflict
            | ErrorCode::IdReused => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
        }
    }

    /// The code as it appears in JSON (`"epoch_conflict"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::InvalidHandle => "invalid_handle",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::HandleTaken => "handle_taken",
            ErrorCode::UnknownHandle => "unknown_handle",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::AuthFailed => "auth_failed",
            ErrorCode::InvalidKeyPackage => "invalid_key_package",
            ErrorCode::TooManyKeyPackages => "too_many_key_packages",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::NotMember => "not_member",
            ErrorCode::EpochConflict => "epoch_conflict",
            ErrorCode::IdReused => "id_reused",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// The body of every error response: `{"error": {"code": "...", "message": "..."}}`
/// (plus `"epoch"` with `epoch_conflict`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and human-readable message of an error.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code to branch on.
    pub code: ErrorCode,
    /// Explanation for people; never contains secrets or message content.
    pub message: String,
    /// With `epoch_conflict`: the group's current epoch at the relay. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_serialise_as_their_names() {
        for code in [
            ErrorCode::EpochConflict,
            ErrorCode::InvalidKeyPackage,
            ErrorCode::Internal,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn mailbox_and_idempotency_retention_are_thirty_days() {
        assert_eq!(limits::MAILBOX_RETENTION_SECS, 30 * 24 * 3600);
        assert_eq!(
            limits::IDEMPOTENCY_RETENTION_SECS,
            limits::MAILBOX_RETENTION_SECS
        );
    }

    #[test]
    fn error_detail_epoch_is_optional() {
        let conflict = ErrorBody {
            error: ErrorDetail {
                code: ErrorCode::EpochConflict,
                message: "later".into(),
                epoch: Some(7),
            },
        };
        let json = serde_json::to_value(&conflict).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": {"code": "epoch_conflict", "message": "later", "epoch": 7}})
        );
        let other = ErrorDetail {
            code: ErrorCode::Internal,
            message: "x".into(),
            epoch: None,
        };
        let json = serde_json::to_value(&other).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"code": "internal", "message": "x"})
        );
        // Bodies without the field (every other error, older relays) still parse.
        let back: ErrorBody =
            serde_json::from_str(r#"{"error":{"code":"epoch_conflict","message":"m"}}"#).unwrap();
        assert_eq!(back.error.epoch, None);
        let back: ErrorBody = serde_json::from_str(
            r#"{"error":{"code":"epoch_conflict","message":"m","epoch":18446744073709551615}}"#,
        )
        .unwrap();
        assert_eq!(back.error.epoch, Some(u64::MAX));
    }

    #[test]
    fn send_request_omits_empty_optionals() {
        let req = SendRequest {
            id: MessageId([1; 16]),
            message: vec![1, 2, 3],
            welcome: None,
            removed_devices: vec![],
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "01".repeat(16), "message": "AQID"})
        );
        let back: SendRequest = serde_json::from_value(json).unwrap();
        assert!(back.welcome.is_none());
    }
}
