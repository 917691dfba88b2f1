//! What the relay reads from MLS messages: the cleartext header of a PrivateMessage, the
//! key package references of a Welcome, and the validity of uploaded key packages.
//!
//! The relay never decrypts anything; it only parses (with openmls) what RFC 9420 leaves in
//! the clear. Parsing uses the bounded `std::io::Read` decoders of `tls_codec`.

use dm_wire::GroupId;
use openmls::prelude::tls_codec::Deserialize as _;
use openmls::prelude::{
    BasicCredential, Ciphersuite, ContentType, KeyPackage, MlsMessageBodyIn, MlsMessageIn,
    ProtocolMessage, ProtocolVersion,
};
use openmls_rust_crypto::RustCrypto;

use crate::store::ContentKind;

/// The only ciphersuite the relay accepts key packages for (0x0003).
pub const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;

/// Why an MLS structure was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MlsError {
    /// The bytes are not a well-formed `MLSMessage`.
    #[error("not a well-formed MLS message")]
    Malformed,
    /// A well-formed `MLSMessage` of another kind than expected.
    #[error("expected an MLS {expected}")]
    WrongKind {
        /// What was expected.
        expected: &'static str,
    },
    /// The group id is empty or longer than [`GroupId::MAX_LEN`].
    #[error("the group id must be 1 to {} bytes", GroupId::MAX_LEN)]
    BadGroupId,
    /// A Welcome without any `secrets`.
    #[error("the welcome has no recipients")]
    EmptyWelcome,
    /// The key package's signatures, lifetime or extensions are invalid.
    #[error("invalid key package: {0}")]
    InvalidKeyPackage(String),
    /// The key package is for another ciphersuite.
    #[error("the key package must use ciphersuite 0x0003")]
    WrongCiphersuite,
    /// The leaf credential is not the uploading device's.
    #[error("the key package's credential is not this device's")]
    ForeignCredential,
    /// The leaf's signature key is not the device's registered key.
    #[error("the key package's signature key is not this device's")]
    ForeignKey,
    /// The `last_resort` extension is where it must not be, or missing where it must be.
    #[error("{0}")]
    LastResortMismatch(&'static str),
}

/// The cleartext header of a PrivateMessage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageHeader {
    /// The group id (1 to 64 bytes).
    pub group_id: Vec<u8>,
    /// The epoch.
    pub epoch: u64,
    /// The content type.
    pub kind: ContentKind,
}

/// Parses a TLS-encoded `MLSMessage` that must be a PrivateMessage and reads its header.
pub fn parse_private_message(bytes: &[u8]) -> Result<MessageHeader, MlsError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| MlsError::Malformed)?;
    let MlsMessageBodyIn::PrivateMessage(private) = message.extract() else {
        return Err(MlsError::WrongKind {
            expected: "PrivateMessage",
        });
    };
    let protocol = ProtocolMessage::from(private);
    let group_id = protocol.group_id().as_slice().to_vec();
    if group_id.is_empty() || group_id.len() > GroupId::MAX_LEN {
        return Err(MlsError::BadGroupId);
    }
    let kind = match protocol.content_type() {
        ContentType::Application => ContentKind::Application,
        ContentType::Proposal => ContentKind::Proposal,
        ContentType::Commit => ContentKind::Commit,
    };
    Ok(MessageHeader {
        group_id,
        epoch: protocol.epoch().as_u64(),
        kind,
    })
}

/// Parses a TLS-encoded Welcome `MLSMessage` and returns the distinct `KeyPackageRef`s it is
/// encrypted to, in order.
pub fn welcome_key_package_refs(bytes: &[u8]) -> Result<Vec<Vec<u8>>, MlsError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| MlsError::Malformed)?;
    let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
        return Err(MlsError::WrongKind {
            expected: "Welcome",
        });
    };
    let mut refs: Vec<Vec<u8>> = Vec::with_capacity(welcome.secrets().len());
    for secret in welcome.secrets() {
        let kp_ref = secret.new_member().as_slice().to_vec();
        if !refs.contains(&kp_ref) {
            refs.push(kp_ref);
        }
    }
    if refs.is_empty() {
        return Err(MlsError::EmptyWelcome);
    }
    Ok(refs)
}

/// Whether a key package must be a one-time or a last-resort package.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyPackageUse {
    /// Consumed by the first claim: must not carry the `last_resort` extension.
    OneTime,
    /// Handed out when no one-time package is left: must carry the extension.
    LastResort,
}

/// The device a key package must belong to.
#[derive(Clone, Copy, Debug)]
pub struct ExpectedOwner<'a> {
    /// `CredentialIdentity::encode()` of the device.
    pub identity: &'a [u8],
    /// The device's registered signature key.
    pub device_key: &'a [u8; 32],
}

/// A key package that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidKeyPackage {
    /// Its `KeyPackageRef`.
    pub kp_ref: Vec<u8>,
    /// Its lifetime's `not_after` (unix seconds).
    pub not_after: u64,
}

/// Validates an uploaded TLS-encoded `MLSMessage` carrying a KeyPackage: well-formed, valid
/// signatures and lifetime (openmls), ciphersuite 0x0003, a Basic credential naming the
/// uploading device, that device's signature key, and the `last_resort` extension exactly
/// when `usage` asks for it.
pub fn validate_key_package(
    bytes: &[u8],
    owner: ExpectedOwner<'_>,
    usage: KeyPackageUse,
) -> Result<ValidKeyPackage, MlsError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| MlsError::Malformed)?;
    let MlsMessageBodyIn::KeyPackage(kp_in) = message.extract() else {
        return Err(MlsError::WrongKind {
            expected: "KeyPackage",
        });
    };
    let crypto = RustCrypto::default();
    let kp: KeyPackage = kp_in
        .validate(&crypto, ProtocolVersion::Mls10)
        .map_err(|e| MlsError::InvalidKeyPackage(e.to_string()))?;
    if kp.ciphersuite() != CIPHERSUITE {
        return Err(MlsError::WrongCiphersuite);
    }
    let leaf = kp.leaf_node();
    let credential = BasicCredential::try_from(leaf.credential().clone())
        .map_err(|_| MlsError::ForeignCredential)?;
    if credential.identity() != owner.identity {
        return Err(MlsError::ForeignCredential);
    }
    if leaf.signature_key().as_slice() != owner.device_key.as_slice() {
        return Err(MlsError::ForeignKey);
    }
    match (usage, kp.last_resort()) {
        (KeyPackageUse::OneTime, true) => {
            return Err(MlsError::LastResortMismatch(
                "a one-time key package must not carry the last_resort extension",
            ));
        }
        (KeyPackageUse::LastResort, false) => {
            return Err(MlsError::LastResortMismatch(
                "the last-resort key package must carry the last_resort extension",
            ));
        }
        _ => {}
    }
    let kp_ref = kp
        .hash_ref(&crypto)
        .map_err(|e| MlsError::InvalidKeyPackage(e.to_string()))?;
    Ok(ValidKeyPackage {
        kp_ref: kp_ref.as_slice().to_vec(),
        // `validate` refuses key packages without a lifetime, so this cannot panic.
        not_after: kp.life_time().not_after(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bytes in [&[][..], &[0, 1], &[0, 1, 0, 2, 0xff, 0xff, 0xff, 0xff]] {
            assert_eq!(parse_private_message(bytes), Err(MlsError::Malformed));
            assert_eq!(welcome_key_package_refs(bytes), Err(MlsError::Malformed));
        }
    }
}
