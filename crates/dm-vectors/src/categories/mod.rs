//! The categories of vectors, one module each: a generator and a verifier.
//!
//! | file | PROTOCOL.md | what |
//! |---|---|---|
//! | `device-certificate.json` | §1.1, §1.2 | labelled signatures, `DeviceCertificate` |
//! | `device-list.json` | §1.3 | `DeviceList` and its validity rules |
//! | `credential-identity.json` | §1.4 | the MLS `BasicCredential` identity |
//! | `request-auth.json` | §2.2, §2.3 | registration proof and session (login) proof |
//! | `content.json` | §4 | application content and its padding |
//! | `account-key.json` | §1, §5 | fingerprint and recovery code |
//! | `local-store-key.json` | §6 | `store.json`, Argon2id, the SQLCipher key statement |
//! | `message-framing.json` | §2.1 | how MLS messages travel in the relay's JSON bodies |
//! | `safety-number.json` | §9 | fingerprint, safety number and its QR payload, group code |

mod account_key;
mod content;
mod credential_identity;
mod device_certificate;
mod device_list;
mod local_store_key;
mod message_framing;
mod request_auth;
mod safety_number;

use ed25519_dalek::SigningKey;

use crate::{Category, Rejection};

/// Every category, in the order the files are generated and reported.
pub fn categories() -> &'static [Category] {
    static ALL: [Category; 9] = [
        device_certificate::CATEGORY,
        device_list::CATEGORY,
        credential_identity::CATEGORY,
        request_auth::CATEGORY,
        content::CATEGORY,
        account_key::CATEGORY,
        local_store_key::CATEGORY,
        message_framing::CATEGORY,
        safety_number::CATEGORY,
    ];
    &ALL
}

/// The Ed25519 key whose secret is the seed `label`.
pub(crate) fn key(label: &str) -> SigningKey {
    SigningKey::from_bytes(&crate::seed::bytes32(label))
}

/// A fixed-length field.
pub(crate) fn array<const N: usize>(field: &str, bytes: &[u8]) -> Result<[u8; N], Rejection> {
    bytes
        .try_into()
        .map_err(|_| Rejection::bad_vector(format!("`{field}` must be {N} bytes")))
}

/// A dm-wire error as a rejection with its code.
pub(crate) fn wire(e: dm_wire::Error) -> Rejection {
    Rejection::new(e.code(), e.to_string())
}

/// Hex serde for `Vec<u8>` fields.
pub(crate) mod hexbytes {
    pub(crate) use hex::serde::{deserialize, serialize};
}

/// Hex serde for `Vec<Vec<u8>>` fields.
pub(crate) mod hexvec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(hex::encode))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .collect()
    }
}
