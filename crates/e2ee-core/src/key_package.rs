//! Key packages: generating them for upload, validating the ones claimed for a peer.
//!
//! Every key package travels as a TLS-encoded `MLSMessage` of wire format
//! `mls_key_package` (what the relay stores and hands out).

use dm_wire::api::{ClaimedKeyPackage, limits};
use dm_wire::cert::DeviceList;
use dm_wire::credential::CredentialIdentity;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    KeyPackage, KeyPackageBundle, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProtocolVersion,
};
use openmls_traits::OpenMlsProvider;
use openmls_traits::crypto::OpenMlsCrypto;

use crate::config::{CIPHERSUITE, capabilities};
use crate::device::Device;
use crate::directory::{CredentialError, identity_of};
use crate::error::Error;

/// Creates `count` one-time key packages, returned encoded for upload.
///
/// **Mutates storage**: each package's private keys are written to the provider's storage
/// (and deleted by openmls when a Welcome consumes the package).
pub fn generate<P: OpenMlsProvider>(
    provider: &P,
    device: &Device,
    count: usize,
) -> Result<Vec<Vec<u8>>, Error> {
    (0..count).map(|_| build(provider, device, false)).collect()
}

/// Creates the device's last-resort key package (handed out when the one-time packages are
/// exhausted; it stays usable after a join).
///
/// **Mutates storage** like [`generate`].
pub fn generate_last_resort<P: OpenMlsProvider>(
    provider: &P,
    device: &Device,
) -> Result<Vec<u8>, Error> {
    build(provider, device, true)
}

fn build<P: OpenMlsProvider>(
    provider: &P,
    device: &Device,
    last_resort: bool,
) -> Result<Vec<u8>, Error> {
    let mut builder = KeyPackage::builder().leaf_node_capabilities(capabilities());
    if last_resort {
        builder = builder.mark_as_last_resort();
    }
    let bundle: KeyPackageBundle = builder
        .build(
            CIPHERSUITE,
            provider,
            device.signer(),
            device.credential_with_key(),
        )
        .map_err(|e| match e {
            openmls::prelude::KeyPackageNewError::StorageError => Error::storage(e),
            other => Error::internal(other),
        })?;
    MlsMessageOut::from(bundle.key_package().clone())
        .tls_serialize_detached()
        .map_err(Error::internal)
}

/// A claimed key package that passed [`validate_claimed`]: ready for `add_members`.
#[derive(Debug, Clone)]
pub struct ValidatedKeyPackage {
    identity: CredentialIdentity,
    key_package: KeyPackage,
}

impl ValidatedKeyPackage {
    /// The device the package belongs to.
    pub fn identity(&self) -> &CredentialIdentity {
        &self.identity
    }

    /// The validated openmls key package.
    pub fn key_package(&self) -> &KeyPackage {
        &self.key_package
    }

    /// Whether this is the device's last-resort package.
    pub fn is_last_resort(&self) -> bool {
        self.key_package.last_resort()
    }
}

/// Validates the key packages claimed for an account against its verified device list
/// (`device_list` must already be verified against the pinned account key).
///
/// Each package must decode, pass openmls validation (signatures, lifetime, capabilities),
/// use [`CIPHERSUITE`], carry the credential of the device it was claimed for, and that
/// device must be in the list with the package's signature key. At most one package per
/// device. Devices of the list without a package are simply not included. Does not touch
/// storage.
pub fn validate_claimed(
    crypto: &impl OpenMlsCrypto,
    device_list: &DeviceList,
    claimed: &[ClaimedKeyPackage],
) -> Result<Vec<ValidatedKeyPackage>, Error> {
    let mut out: Vec<ValidatedKeyPackage> = Vec::with_capacity(claimed.len());
    for c in claimed {
        let validated = validate_one(crypto, device_list, c)?;
        if out
            .iter()
            .any(|v| v.identity.device_id == validated.identity.device_id)
        {
            return Err(Error::malformed(
                "claimed key packages",
                "two packages for one device",
            ));
        }
        out.push(validated);
    }
    Ok(out)
}

fn validate_one(
    crypto: &impl OpenMlsCrypto,
    list: &DeviceList,
    claimed: &ClaimedKeyPackage,
) -> Result<ValidatedKeyPackage, Error> {
    if claimed.key_package.len() > limits::MAX_KEY_PACKAGE_BYTES {
        return Err(Error::malformed("key package", "too large"));
    }
    let message = MlsMessageIn::tls_deserialize_exact(claimed.key_package.as_slice())
        .map_err(|e| Error::malformed("key package", e))?;
    let MlsMessageBodyIn::KeyPackage(package) = message.extract() else {
        return Err(Error::malformed("key package", "not a key package message"));
    };
    let key_package = package
        .validate(crypto, ProtocolVersion::Mls10)
        .map_err(Error::mls)?;
    if key_package.ciphersuite() != CIPHERSUITE {
        return Err(Error::not_allowed("key package of another ciphersuite"));
    }
    let leaf = key_package.leaf_node();
    let identity = identity_of(leaf.credential())?;
    if identity.handle != list.handle {
        return Err(CredentialError::WrongAccount {
            expected: list.handle.clone(),
            found: identity.handle,
        }
        .into());
    }
    if identity.device_id != claimed.device_id {
        return Err(Error::malformed(
            "claimed key package",
            "credential names another device than the claim",
        ));
    }
    let cert = list
        .device(&identity.device_id)
        .ok_or_else(|| CredentialError::UnknownDevice {
            handle: identity.handle.clone(),
            device_id: identity.device_id,
        })?;
    if leaf.signature_key().as_slice() != cert.device_key.as_slice() {
        return Err(CredentialError::KeyMismatch {
            handle: identity.handle,
            device_id: identity.device_id,
        }
        .into());
    }
    Ok(ValidatedKeyPackage {
        identity,
        key_package,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::Party;

    fn claim(party: &Party, bytes: Vec<u8>) -> ClaimedKeyPackage {
        ClaimedKeyPackage {
            device_id: party.device.id(),
            key_package: bytes,
        }
    }

    #[test]
    fn generated_packages_validate_and_last_resort_is_marked() {
        let bob = Party::new("bob", 2);
        let one_time = generate(&bob.provider, &bob.device, 3).unwrap();
        assert_eq!(one_time.len(), 3);
        let last = generate_last_resort(&bob.provider, &bob.device).unwrap();
        let crypto = openmls_rust_crypto::RustCrypto::default();
        let v = validate_claimed(
            &crypto,
            &bob.device_list,
            &[claim(&bob, one_time[0].clone())],
        )
        .unwrap();
        assert!(!v[0].is_last_resort());
        assert_eq!(v[0].identity(), &bob.device.identity());
        let v = validate_claimed(&crypto, &bob.device_list, &[claim(&bob, last)]).unwrap();
        assert!(v[0].is_last_resort());
    }

    #[test]
    fn rejects_foreign_duplicate_and_garbage_packages() {
        let bob = Party::new("bob", 2);
        let mallory = Party::new("bob", 3); // same handle, not in Bob's list
        let crypto = openmls_rust_crypto::RustCrypto::default();
        let theirs = generate(&mallory.provider, &mallory.device, 1).unwrap();
        let err = validate_claimed(
            &crypto,
            &bob.device_list,
            &[claim(&mallory, theirs[0].clone())],
        )
        .unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
        // Claimed under Bob's device id but carrying Mallory's credential.
        let err = validate_claimed(&crypto, &bob.device_list, &[claim(&bob, theirs[0].clone())])
            .unwrap_err();
        assert!(err.is_invalid_input(), "{err}");
        let mine = generate(&bob.provider, &bob.device, 2).unwrap();
        let err = validate_claimed(
            &crypto,
            &bob.device_list,
            &[claim(&bob, mine[0].clone()), claim(&bob, mine[1].clone())],
        )
        .unwrap_err();
        assert!(err.is_invalid_input());
        for garbage in [
            vec![],
            vec![0, 1, 0, 5],
            mine[0][..mine[0].len() - 1].to_vec(),
        ] {
            let err =
                validate_claimed(&crypto, &bob.device_list, &[claim(&bob, garbage)]).unwrap_err();
            assert!(err.is_invalid_input());
        }
        let mut flipped = mine[0].clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 1;
        assert!(validate_claimed(&crypto, &bob.device_list, &[claim(&bob, flipped)]).is_err());
    }
}
