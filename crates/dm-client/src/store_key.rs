//! The local store's key: `store.json` (the public key-derivation parameters) and the
//! Argon2id derivation of the SQLCipher key from the passphrase (PROTOCOL.md §6).
//!
//! ```text
//! store.json = {"format": 1, "kdf": {"algorithm": "argon2id", "version": 19,
//!               "memory_kib": 65536, "iterations": 3, "parallelism": 1,
//!               "salt": "<16 bytes, lower-case hex>"}}
//! key        = Argon2id(password = UTF-8 passphrase, salt, m = memory_kib, t = iterations,
//!                       p = parallelism, version 0x13, no secret, no associated data,
//!                       tag length 32)
//! SQLCipher  : PRAGMA key = "x'<key, 64 lower-case hex digits>'";   (raw key, no SQLCipher KDF)
//! ```
//!
//! Readers reject any other `format`, `algorithm` or `version`, a salt that is not 16
//! bytes, and parameters outside the bounds below (so that a tampered `store.json` cannot
//! make the client allocate unbounded memory). The published test vectors
//! (`tests/vectors/local-store-key.json`) exercise exactly these functions.

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Version of `store.json`.
pub const META_FORMAT: u32 = 1;
/// The only key-derivation algorithm.
pub const KDF_ALGORITHM: &str = "argon2id";
/// Argon2 version 1.3 (`0x13`).
pub const KDF_VERSION: u32 = 0x13;
/// Argon2id memory cost of new stores, in KiB (64 MiB).
pub const KDF_MEMORY_KIB: u32 = 64 * 1024;
/// Argon2id passes of new stores.
pub const KDF_ITERATIONS: u32 = 3;
/// Argon2id lanes of new stores.
pub const KDF_PARALLELISM: u32 = 1;
/// Salt length, bytes.
pub const SALT_LEN: usize = 16;
/// Length of the derived SQLCipher key, bytes.
pub const KEY_LEN: usize = 32;
/// Largest memory cost a reader accepts, in KiB (4 GiB).
pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// Most passes a reader accepts.
pub const MAX_ITERATIONS: u32 = 64;
/// Most lanes a reader accepts.
pub const MAX_PARALLELISM: u32 = 16;

/// Why `store.json` or its parameters were refused. [`MetaError::code`] is the code the
/// test vectors name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    /// Not JSON of the expected shape (missing field, wrong type, salt not hex, ...).
    #[error("store.json is malformed: {0}")]
    Malformed(String),
    /// A `format`, `algorithm` or `version` this client does not know.
    #[error("store.json has an unsupported {what} ({found})")]
    UnsupportedFormat {
        /// Which field.
        what: &'static str,
        /// What it says.
        found: String,
    },
    /// Parameters out of bounds or refused by Argon2.
    #[error("bad key-derivation parameters: {0}")]
    BadParams(String),
}

impl MetaError {
    /// Stable code: `malformed_meta`, `unsupported_format` or `bad_kdf_params`.
    pub fn code(&self) -> &'static str {
        match self {
            MetaError::Malformed(_) => "malformed_meta",
            MetaError::UnsupportedFormat { .. } => "unsupported_format",
            MetaError::BadParams(_) => "bad_kdf_params",
        }
    }
}

/// The contents of `store.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreMeta {
    /// [`META_FORMAT`].
    pub format: u32,
    /// The key-derivation parameters.
    pub kdf: KdfParams,
}

/// Argon2id parameters and salt (public: they protect nothing on their own).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    /// [`KDF_ALGORITHM`].
    pub algorithm: String,
    /// [`KDF_VERSION`] (19).
    pub version: u32,
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Number of lanes.
    pub parallelism: u32,
    /// Random salt, [`SALT_LEN`] bytes, lower-case hex in JSON.
    #[serde(with = "hex::serde")]
    pub salt: Vec<u8>,
}

impl StoreMeta {
    /// The metadata of a new store: the product parameters with this salt.
    pub fn new(salt: [u8; SALT_LEN]) -> Self {
        Self {
            format: META_FORMAT,
            kdf: KdfParams {
                algorithm: KDF_ALGORITHM.into(),
                version: KDF_VERSION,
                memory_kib: KDF_MEMORY_KIB,
                iterations: KDF_ITERATIONS,
                parallelism: KDF_PARALLELISM,
                salt: salt.to_vec(),
            },
        }
    }

    /// The bytes written to `store.json` (pretty-printed JSON).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain integers, strings and a byte vector cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses and checks `store.json`.
    pub fn parse(bytes: &[u8]) -> Result<Self, MetaError> {
        let meta: Self =
            serde_json::from_slice(bytes).map_err(|e| MetaError::Malformed(e.to_string()))?;
        if meta.format != META_FORMAT {
            return Err(MetaError::UnsupportedFormat {
                what: "format",
                found: meta.format.to_string(),
            });
        }
        meta.kdf.check()?;
        Ok(meta)
    }
}

impl KdfParams {
    /// Checks algorithm, version, salt length and bounds.
    pub fn check(&self) -> Result<(), MetaError> {
        if self.algorithm != KDF_ALGORITHM {
            return Err(MetaError::UnsupportedFormat {
                what: "algorithm",
                found: self.algorithm.clone(),
            });
        }
        if self.version != KDF_VERSION {
            return Err(MetaError::UnsupportedFormat {
                what: "Argon2 version",
                found: self.version.to_string(),
            });
        }
        if self.salt.len() != SALT_LEN {
            return Err(MetaError::BadParams(format!(
                "the salt must be {SALT_LEN} bytes"
            )));
        }
        if !(1..=MAX_PARALLELISM).contains(&self.parallelism) {
            return Err(MetaError::BadParams(format!(
                "parallelism must be 1 to {MAX_PARALLELISM}"
            )));
        }
        if !(1..=MAX_ITERATIONS).contains(&self.iterations) {
            return Err(MetaError::BadParams(format!(
                "iterations must be 1 to {MAX_ITERATIONS}"
            )));
        }
        let min_memory = 8 * self.parallelism;
        if !(min_memory..=MAX_MEMORY_KIB).contains(&self.memory_kib) {
            return Err(MetaError::BadParams(format!(
                "memory_kib must be {min_memory} to {MAX_MEMORY_KIB}"
            )));
        }
        Ok(())
    }
}

/// Derives the SQLCipher key: Argon2id(passphrase, salt) with the given parameters.
pub fn derive_key(
    passphrase: &str,
    kdf: &KdfParams,
) -> Result<Zeroizing<[u8; KEY_LEN]>, MetaError> {
    kdf.check()?;
    let params = Params::new(
        kdf.memory_kib,
        kdf.iterations,
        kdf.parallelism,
        Some(KEY_LEN),
    )
    .map_err(|e| MetaError::BadParams(e.to_string()))?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), &kdf.salt, key.as_mut())
        .map_err(|e| MetaError::BadParams(e.to_string()))?;
    Ok(key)
}

/// The statement that gives SQLCipher the raw key: `PRAGMA key = "x'<64 hex>'";`.
pub fn key_pragma(key: &[u8; KEY_LEN]) -> Zeroizing<String> {
    let hex_key = Zeroizing::new(hex::encode(key));
    Zeroizing::new(format!("PRAGMA key = \"x'{}'\";", hex_key.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_meta_round_trips_and_bounds_hold() {
        let meta = StoreMeta::new([7; SALT_LEN]);
        assert_eq!(StoreMeta::parse(&meta.to_json()).unwrap(), meta);
        let mut bad = meta.clone();
        bad.kdf.memory_kib = MAX_MEMORY_KIB + 1;
        assert_eq!(
            StoreMeta::parse(&bad.to_json()).unwrap_err().code(),
            "bad_kdf_params"
        );
        let mut bad = meta;
        bad.kdf.version = 0x10;
        assert_eq!(
            StoreMeta::parse(&bad.to_json()).unwrap_err().code(),
            "unsupported_format"
        );
        assert_eq!(
            StoreMeta::parse(b"{}").unwrap_err().code(),
            "malformed_meta"
        );
    }

    #[test]
    fn pragma_is_the_raw_key_in_hex() {
        let pragma = key_pragma(&[0xab; KEY_LEN]);
        assert_eq!(
            pragma.as_str(),
            format!("PRAGMA key = \"x'{}'\";", "ab".repeat(32))
        );
    }
}
