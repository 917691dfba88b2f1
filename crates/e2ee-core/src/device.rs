//! A device: its id, its MLS signature key and the account's certificate over both.
//!
//! The device's private signature key lives in the MLS storage (openmls'
//! `SignatureKeyPair::store`), which dm-client keeps in its encrypted SQLite file. The
//! certificate is public and is stored by the caller; [`Device::load`] finds the key again
//! from the certificate's `device_key`.

use dm_wire::auth::{self, CHALLENGE_LEN, REGISTRATION_LABEL, SESSION_LABEL};
use dm_wire::cert::{DeviceCertificate, signature_input};
use dm_wire::credential::CredentialIdentity;
use dm_wire::{DeviceId, Handle};
use ed25519_dalek::SigningKey;
use openmls::prelude::{BasicCredential, CredentialWithKey};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::OpenMlsProvider;
use openmls_traits::signatures::Signer;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};
use rand_core::CryptoRngCore;

use crate::config::CIPHERSUITE;
use crate::error::Error;
use crate::identity::AccountSecret;

/// One device of an account, able to sign MLS messages and relay proofs.
pub struct Device {
    certificate: DeviceCertificate,
    signer: SignatureKeyPair,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("handle", &self.certificate.handle)
            .field("device_id", &self.certificate.device_id)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Creates a device: a random 16-byte id and a fresh Ed25519 signature key (both from
    /// the caller's RNG), certified by the account key.
    ///
    /// **Mutates storage**: writes the signature key pair into the provider's storage.
    pub fn generate<P: OpenMlsProvider>(
        provider: &P,
        rng: &mut impl CryptoRngCore,
        account: &AccountSecret,
        handle: Handle,
        issued_at: u64,
    ) -> Result<Self, Error> {
        let mut id = [0u8; DeviceId::LEN];
        rng.fill_bytes(&mut id);
        let key = SigningKey::generate(rng);
        let public = key.verifying_key().to_bytes();
        let signer = SignatureKeyPair::from_raw(
            CIPHERSUITE.signature_algorithm(),
            key.to_bytes().to_vec(),
            public.to_vec(),
        );
        signer.store(provider.storage()).map_err(Error::storage)?;
        let certificate = account.issue_certificate(handle, DeviceId(id), public, issued_at);
        Ok(Self {
            certificate,
            signer,
        })
    }

    /// Installs a device whose key was generated elsewhere (a linked device: its key was
    /// drawn while waiting for approval) with its certificate.
    ///
    /// **Mutates storage**: writes the signature key pair into the provider's storage.
    pub fn install<P: OpenMlsProvider>(
        provider: &P,
        secret: &[u8; 32],
        certificate: DeviceCertificate,
    ) -> Result<Self, Error> {
        let key = SigningKey::from_bytes(secret);
        let public = key.verifying_key().to_bytes();
        if public != certificate.device_key {
            return Err(Error::misuse("the certificate is for another device key"));
        }
        let signer = SignatureKeyPair::from_raw(
            CIPHERSUITE.signature_algorithm(),
            key.to_bytes().to_vec(),
            public.to_vec(),
        );
        signer.store(provider.storage()).map_err(Error::storage)?;
        Ok(Self {
            certificate,
            signer,
        })
    }

    /// Loads the device whose certificate is given; its signature key must be in `storage`.
    pub fn load(
        storage: &impl StorageProvider<CURRENT_VERSION>,
        certificate: DeviceCertificate,
    ) -> Result<Self, Error> {
        let signer = SignatureKeyPair::read(
            storage,
            &certificate.device_key,
            CIPHERSUITE.signature_algorithm(),
        )
        .ok_or_else(|| Error::storage("the device's signature key is missing from storage"))?;
        Ok(Self {
            certificate,
            signer,
        })
    }

    /// The device id.
    pub fn id(&self) -> DeviceId {
        self.certificate.device_id
    }

    /// The account's handle.
    pub fn handle(&self) -> &Handle {
        &self.certificate.handle
    }

    /// The account's certificate for this device.
    pub fn certificate(&self) -> &DeviceCertificate {
        &self.certificate
    }

    /// The device's public signature key.
    pub fn device_key(&self) -> [u8; 32] {
        self.certificate.device_key
    }

    /// The identity carried in this device's MLS credential.
    pub fn identity(&self) -> CredentialIdentity {
        CredentialIdentity {
            handle: self.certificate.handle.clone(),
            device_id: self.certificate.device_id,
        }
    }

    /// The MLS signer (pass it to every openmls call that signs).
    pub fn signer(&self) -> &SignatureKeyPair {
        &self.signer
    }

    /// The MLS credential and signature key of this device's leaves.
    pub fn credential_with_key(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.identity().encode()).into(),
            signature_key: self.signer.public().into(),
        }
    }

    /// Signs `REGISTRATION_LABEL 0x00 device_list`: the proof of possession sent with
    /// registration ([`dm_wire::api::RegisterRequest::device_proof`]).
    pub fn registration_proof(&self, encoded_device_list: &[u8]) -> Result<Vec<u8>, Error> {
        self.sign_labeled(
            REGISTRATION_LABEL,
            &auth::registration_body(encoded_device_list),
        )
    }

    /// Signs `SESSION_LABEL 0x00 session_body(handle, device_id, challenge)`: the login
    /// proof ([`dm_wire::api::SessionRequest::signature`]).
    pub fn session_proof(&self, challenge: &[u8; CHALLENGE_LEN]) -> Result<Vec<u8>, Error> {
        let body = auth::session_body(self.handle(), &self.id(), challenge);
        self.sign_labeled(SESSION_LABEL, &body)
    }

    fn sign_labeled(&self, label: &[u8], body: &[u8]) -> Result<Vec<u8>, Error> {
        self.signer
            .sign(&signature_input(label, body))
            .map_err(|e| Error::internal(format!("device signature failed: {e:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::MemoryProvider;
    use dm_wire::cert::verify_labeled;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn proofs_verify_like_the_relay_checks_them() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let provider = MemoryProvider::in_memory();
        let account = AccountSecret::generate(&mut rng);
        let handle = Handle::parse("alice").unwrap();
        let device = Device::generate(&provider, &mut rng, &account, handle.clone(), 1).unwrap();
        let list = account
            .issue_device_list(handle.clone(), 1, 1, vec![device.certificate().clone()])
            .unwrap()
            .encode();

        let proof = device.registration_proof(&list).unwrap();
        verify_labeled(
            &device.device_key(),
            REGISTRATION_LABEL,
            &auth::registration_body(&list),
            &proof,
            "registration proof",
        )
        .unwrap();

        let challenge = [9u8; CHALLENGE_LEN];
        let proof = device.session_proof(&challenge).unwrap();
        let body = auth::session_body(&handle, &device.id(), &challenge);
        verify_labeled(
            &device.device_key(),
            SESSION_LABEL,
            &body,
            &proof,
            "session",
        )
        .unwrap();
        // Another challenge does not verify.
        let other = auth::session_body(&handle, &device.id(), &[8u8; CHALLENGE_LEN]);
        assert!(verify_labeled(&device.device_key(), SESSION_LABEL, &other, &proof, "s").is_err());

        // The certificate verifies and the key reloads from storage.
        DeviceCertificate::decode(&device.certificate().encode()).unwrap();
        let reloaded = Device::load(provider.storage(), device.certificate().clone()).unwrap();
        assert_eq!(reloaded.signer().public(), device.signer().public());
    }
}
