//! Session tokens and the [`Authenticated`] extractor.
//!
//! A token is 32 random bytes, sent as unpadded base64url in `Authorization: Bearer …`. The
//! relay stores only its SHA-256, so a copy of the database does not yield usable tokens;
//! lookups go by that hash, so comparing tokens never depends on their secret bytes.
//! Tokens are never logged.
//!
//! A session found valid is remembered for [`SESSION_CACHE_SECS`] (by its hash, in memory),
//! so that a busy client's requests do not each read the database. A relay forgets every
//! remembered session when it revokes a device or deletes an account; another relay
//! instance sharing the database may accept a revoked device's token for at most that long.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dm_wire::{DeviceId, Handle};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::AppState;
use crate::error::ApiError;

/// Length of a session token, in bytes (before encoding).
pub const TOKEN_LEN: usize = 32;

/// A fresh session token: the string handed to the client and the hash to store.
pub struct NewToken {
    /// Unpadded base64url of 32 random bytes.
    pub token: String,
    /// SHA-256 of the raw token bytes.
    pub hash: [u8; 32],
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewToken(<redacted>)")
    }
}

/// Generates a session token from the OS random number generator.
pub fn new_token() -> NewToken {
    let mut raw = [0u8; TOKEN_LEN];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    NewToken {
        token: URL_SAFE_NO_PAD.encode(raw),
        hash: Sha256::digest(raw).into(),
    }
}

/// 32 random bytes for a login challenge.
pub fn new_challenge() -> [u8; dm_wire::auth::CHALLENGE_LEN] {
    let mut challenge = [0u8; dm_wire::auth::CHALLENGE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut challenge);
    challenge
}

/// The stored hash of a presented token, or `None` if it cannot be one of ours.
pub fn token_hash(token: &str) -> Option<[u8; 32]> {
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    if raw.len() != TOKEN_LEN {
        return None;
    }
    Some(Sha256::digest(&raw).into())
}

/// The stored hash of the token in an `Authorization: Bearer TOKEN` header, if any.
pub fn bearer_hash(headers: &HeaderMap) -> Option<[u8; 32]> {
    bearer_token(headers).and_then(token_hash)
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The device that opened the request's session. Extracting it answers
/// `401 unauthenticated` if the token is missing, unknown or expired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    /// The device.
    pub device_id: DeviceId,
    /// Its account.
    pub handle: Handle,
    /// Its signature key.
    pub device_key: [u8; 32],
}

/// Seconds a session found valid is remembered (see the module documentation).
pub const SESSION_CACHE_SECS: u64 = 2;
/// Most sessions remembered at once; when full, all are forgotten.
const SESSION_CACHE_ENTRIES: usize = 65_536;

/// Sessions recently found valid, by token hash.
#[derive(Default)]
pub struct SessionCache {
    /// With the relay clock's second when it was found valid.
    entries: Mutex<HashMap<[u8; 32], (u64, Authenticated)>>,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCache(..)")
    }
}

impl SessionCache {
    fn get(&self, hash: &[u8; 32], now: u64) -> Option<Authenticated> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (at, found) = entries.get(hash)?;
        (now >= *at && now - at < SESSION_CACHE_SECS).then(|| found.clone())
    }

    fn put(&self, hash: [u8; 32], now: u64, found: &Authenticated) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= SESSION_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(hash, (now, found.clone()));
    }

    /// Forgets every session (after sessions were deleted: revocation, account deletion).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

impl Authenticated {
    /// The device of the session whose token `headers` carry, if it is valid and unexpired
    /// (or was so less than [`SESSION_CACHE_SECS`] ago).
    async fn lookup(state: &AppState, headers: &HeaderMap) -> Result<Self, ApiError> {
        let hash = bearer_hash(headers).ok_or_else(ApiError::unauthenticated)?;
        let now = state.now_secs();
        if let Some(found) = state.sessions().get(&hash, now) {
            return Ok(found);
        }
        let device = state
            .store()
            .session(hash, now)
            .await?
            .ok_or_else(ApiError::unauthenticated)?;
        let found = Self {
            device_id: device.device_id,
            handle: device.handle,
            device_key: device.device_key,
        };
        state.sessions().put(hash, now, &found);
        Ok(found)
    }

    /// Like the extractor, but `None` on any failure (middleware uses it to tell clients
    /// apart; the handler's extractor then answers the error, if any).
    pub async fn from_session(state: &AppState, headers: &HeaderMap) -> Option<Self> {
        bearer_token(headers)?;
        Self::lookup(state, headers).await.ok()
    }
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Found by the rate-limit middleware already (only the relay inserts it).
        if let Some(found) = parts.extensions.get::<Authenticated>() {
            return Ok(found.clone());
        }
        Self::lookup(state, &parts.headers).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_to_their_hash() {
        let t = new_token();
        assert_eq!(t.token.len(), 43);
        assert_eq!(token_hash(&t.token), Some(t.hash));
        assert_ne!(new_token().hash, t.hash);
        assert_eq!(token_hash("garbage!"), None);
        assert_eq!(token_hash(&URL_SAFE_NO_PAD.encode([1u8; 31])), None);
        assert!(!format!("{t:?}").contains(&t.token));
    }
}
