//! The authentication service: which MLS credentials are genuine devices of an account.
//!
//! openmls verifies signatures, never identities. A leaf is accepted only if
//!
//! 1. its credential is a `BasicCredential` whose identity decodes as a
//!    [`CredentialIdentity`] (handle, device id),
//! 2. the [`Directory`] knows a device list for that handle (verified by the caller against
//!    the account key it pinned), and the list contains the device, and
//! 3. the leaf's signature key equals the `device_key` of that device's certificate.
//!
//! If the directory has no list for the handle, the check fails with
//! [`Error::UnknownAccount`] so that the caller can fetch the list from the relay, verify
//! and pin it, and retry.

use std::collections::{BTreeMap, HashMap};

use dm_wire::cert::{AccountKey, DeviceList};
use dm_wire::credential::CredentialIdentity;
use dm_wire::{DeviceId, Handle};
use openmls::prelude::{BasicCredential, Credential};

use crate::error::Error;

/// A caller-provided view of the verified device lists the client knows.
pub trait Directory {
    /// The current verified device list of `handle`, or `None` if the account is unknown.
    /// An `Err` is a storage failure ([`Error::Storage`]).
    fn device_list(&self, handle: &Handle) -> Result<Option<DeviceList>, Error>;
}

impl<D: Directory + ?Sized> Directory for &D {
    fn device_list(&self, handle: &Handle) -> Result<Option<DeviceList>, Error> {
        (**self).device_list(handle)
    }
}

impl Directory for HashMap<Handle, DeviceList> {
    fn device_list(&self, handle: &Handle) -> Result<Option<DeviceList>, Error> {
        Ok(self.get(handle).cloned())
    }
}

impl Directory for BTreeMap<Handle, DeviceList> {
    fn device_list(&self, handle: &Handle) -> Result<Option<DeviceList>, Error> {
        Ok(self.get(handle).cloned())
    }
}

/// Why a credential or device list was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// Not a `BasicCredential`.
    #[error("not a basic credential")]
    NotBasic,
    /// The identity bytes do not decode.
    #[error("malformed credential identity: {0}")]
    MalformedIdentity(dm_wire::Error),
    /// The device is not in the account's current device list.
    #[error("device {device_id} is not in the device list of {handle}")]
    UnknownDevice {
        /// The account.
        handle: Handle,
        /// The device claimed by the credential.
        device_id: DeviceId,
    },
    /// The leaf's signature key is not the certified device key.
    #[error("the signature key of device {device_id} of {handle} does not match its certificate")]
    KeyMismatch {
        /// The account.
        handle: Handle,
        /// The device.
        device_id: DeviceId,
    },
    /// A device list names another handle than expected.
    #[error("expected the device list of {expected}, got one of {found}")]
    WrongAccount {
        /// The handle asked for.
        expected: Handle,
        /// The handle in the list.
        found: Handle,
    },
    /// A device list is signed by another account key than the one pinned.
    #[error("the account key of {0} changed since it was pinned")]
    AccountKeyChanged(Handle),
    /// A device list is malformed or its signatures do not verify.
    #[error("invalid device list: {0}")]
    InvalidDeviceList(dm_wire::Error),
    /// A commit removes a device that its account still lists, and the committer may not
    /// remove it (see [`crate::group`]). The receiver's copy of the list may be stale:
    /// fetch the account's list and retry once.
    #[error(
        "device {device_id} of {handle} is still in its account's device list; only its account or the group's administrator may remove it"
    )]
    StillListed {
        /// The account.
        handle: Handle,
        /// The device.
        device_id: DeviceId,
    },
    /// A member tried to change its identity in an update.
    #[error("a member's update changes its identity")]
    IdentityChanged,
}

/// Decodes the identity of a credential without checking it against a directory.
pub fn identity_of(credential: &Credential) -> Result<CredentialIdentity, CredentialError> {
    let basic =
        BasicCredential::try_from(credential.clone()).map_err(|_| CredentialError::NotBasic)?;
    CredentialIdentity::decode(basic.identity()).map_err(CredentialError::MalformedIdentity)
}

/// Checks a credential whose signature key is not at hand (for example one returned by
/// `StagedCommit::credentials_to_verify`): the device must be in the account's list.
pub fn verify_credential(
    directory: &impl Directory,
    credential: &Credential,
) -> Result<CredentialIdentity, Error> {
    let identity = identity_of(credential)?;
    certified_key(directory, &identity)?;
    Ok(identity)
}

/// Checks a leaf: credential as in [`verify_credential`], and its signature key equals the
/// certified device key.
pub fn verify_leaf(
    directory: &impl Directory,
    credential: &Credential,
    signature_key: &[u8],
) -> Result<CredentialIdentity, Error> {
    let identity = identity_of(credential)?;
    let certified = certified_key(directory, &identity)?;
    if certified.as_slice() != signature_key {
        return Err(CredentialError::KeyMismatch {
            handle: identity.handle,
            device_id: identity.device_id,
        }
        .into());
    }
    Ok(identity)
}

fn certified_key(directory: &impl Directory, id: &CredentialIdentity) -> Result<[u8; 32], Error> {
    let list = directory
        .device_list(&id.handle)?
        .ok_or_else(|| Error::UnknownAccount(id.handle.clone()))?;
    if list.handle != id.handle {
        return Err(CredentialError::WrongAccount {
            expected: id.handle.clone(),
            found: list.handle,
        }
        .into());
    }
    let cert = list
        .device(&id.device_id)
        .ok_or_else(|| CredentialError::UnknownDevice {
            handle: id.handle.clone(),
            device_id: id.device_id,
        })?;
    Ok(cert.device_key)
}

/// Verifies a device list received from the relay for `handle`: signatures (list and every
/// certificate), the handle, and, if an account key is pinned, that the list is signed by it.
/// (Pinning a first-seen key and refusing older sequences is the caller's job.)
pub fn verify_device_list(
    encoded: &[u8],
    handle: &Handle,
    pinned: Option<&AccountKey>,
) -> Result<DeviceList, Error> {
    let list = DeviceList::decode(encoded).map_err(CredentialError::InvalidDeviceList)?;
    if &list.handle != handle {
        return Err(CredentialError::WrongAccount {
            expected: handle.clone(),
            found: list.handle,
        }
        .into());
    }
    if pinned.is_some_and(|pinned| &list.account_key != pinned) {
        return Err(CredentialError::AccountKeyChanged(handle.clone()).into());
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InvalidInput;
    use crate::identity::AccountSecret;
    use crate::test_support::Party;

    fn credential_error(e: Error) -> CredentialError {
        match e {
            Error::InvalidInput(InvalidInput::Credential(c)) => c,
            other => panic!("expected a credential error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_listed_device_with_its_key() {
        let alice = Party::new("alice", 1);
        let cwk = alice.device.credential_with_key();
        let id = verify_leaf(
            &alice.directory(),
            &cwk.credential,
            cwk.signature_key.as_slice(),
        )
        .unwrap();
        assert_eq!(id, alice.device.identity());
    }

    #[test]
    fn rejects_unlisted_device_wrong_key_and_unknown_account() {
        let alice = Party::new("alice", 1);
        let mallory_device = Party::new("alice", 2); // same handle, another account key
        let cwk = mallory_device.device.credential_with_key();
        // Device not in Alice's list.
        let err = verify_leaf(
            &alice.directory(),
            &cwk.credential,
            cwk.signature_key.as_slice(),
        )
        .unwrap_err();
        assert!(matches!(
            credential_error(err),
            CredentialError::UnknownDevice { .. }
        ));
        // Alice's device id with another key.
        let own = alice.device.credential_with_key();
        let err = verify_leaf(&alice.directory(), &own.credential, &[0u8; 32]).unwrap_err();
        assert!(matches!(
            credential_error(err),
            CredentialError::KeyMismatch { .. }
        ));
        // Unknown account.
        let err = verify_leaf(
            &HashMap::new(),
            &own.credential,
            own.signature_key.as_slice(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::UnknownAccount(h) if h.as_str() == "alice"));
        // Garbage identity.
        let garbage: Credential = BasicCredential::new(vec![1, 2, 3]).into();
        let err = verify_credential(&alice.directory(), &garbage).unwrap_err();
        assert!(matches!(
            credential_error(err),
            CredentialError::MalformedIdentity(_)
        ));
    }

    #[test]
    fn device_lists_are_checked_against_the_pin() {
        let alice = Party::new("alice", 1);
        let encoded = alice.device_list.encode();
        let handle = alice.device.handle().clone();
        let key = alice.account.account_key();
        verify_device_list(&encoded, &handle, Some(&key)).unwrap();
        let other = AccountSecret::from_bytes(&[3; 32]).account_key();
        let err = verify_device_list(&encoded, &handle, Some(&other)).unwrap_err();
        assert_eq!(
            credential_error(err),
            CredentialError::AccountKeyChanged(handle.clone())
        );
        let bob = Handle::parse("bob").unwrap();
        assert!(matches!(
            credential_error(verify_device_list(&encoded, &bob, None).unwrap_err()),
            CredentialError::WrongAccount { .. }
        ));
        let mut forged = encoded.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(matches!(
            credential_error(verify_device_list(&forged, &handle, None).unwrap_err()),
            CredentialError::InvalidDeviceList(_)
        ));
    }
}
