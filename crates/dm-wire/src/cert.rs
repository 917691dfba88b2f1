//! Account keys, device certificates and signed device lists.
//!
//! An account is a long-term Ed25519 key generated on a device. The account key signs one
//! [`DeviceCertificate`] per device (binding handle, device id and the device's MLS signature
//! key) and a [`DeviceList`]: the complete, versioned set of the account's current devices.
//! Peers pin the account key on first use and accept a device only if it appears in a device
//! list signed by that key.
//!
//! Encodings (big-endian, `<..>` vectors carry a length prefix of the size shown):
//!
//! ```text
//! DeviceCertificateTBS = version(u8 = 1) handle<u8> account_key[32] device_id[16]
//!                        device_key[32] issued_at(u64, unix seconds)
//! DeviceCertificate    = DeviceCertificateTBS signature[64]
//! DeviceListTBS        = version(u8 = 1) handle<u8> account_key[32] sequence(u64)
//!                        issued_at(u64) count(u16) (DeviceCertificate<u16>)[count]
//! DeviceList           = DeviceListTBS signature[64]
//! signature            = Ed25519(account key, label 0x00 TBS)
//! ```
//! with the labels [`DEVICE_CERTIFICATE_LABEL`] and [`DEVICE_LIST_LABEL`].

use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::encoding::{Reader, Writer};
use crate::error::{Error, malformed};
use crate::ids::{DeviceId, Handle};

/// Version byte of [`DeviceCertificate`] and [`DeviceList`].
pub const FORMAT_VERSION: u8 = 1;
/// Signature label of a device certificate.
pub const DEVICE_CERTIFICATE_LABEL: &[u8] = b"dm-e2ee/v1/device-certificate";
/// Signature label of a device list.
pub const DEVICE_LIST_LABEL: &[u8] = b"dm-e2ee/v1/device-list";
/// Most devices one account may have.
pub const MAX_DEVICES: usize = 16;

/// Builds `label || 0x00 || body`, the input of every signature this protocol defines.
pub fn signature_input(label: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(label.len() + 1 + body.len());
    out.extend_from_slice(label);
    out.push(0);
    out.extend_from_slice(body);
    out
}

/// Verifies an Ed25519 signature over `label || 0x00 || body` (strict verification).
pub fn verify_labeled(
    key: &[u8; 32],
    label: &[u8],
    body: &[u8],
    signature: &[u8],
    what: &'static str,
) -> Result<(), Error> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| Error::BadSignature(what))?;
    let sig = Signature::from_slice(signature).map_err(|_| Error::BadSignature(what))?;
    key.verify_strict(&signature_input(label, body), &sig)
        .map_err(|_| Error::BadSignature(what))
}

/// Signs `label || 0x00 || body` with an Ed25519 key.
pub fn sign_labeled(key: &SigningKey, label: &[u8], body: &[u8]) -> [u8; 64] {
    key.sign(&signature_input(label, body)).to_bytes()
}

/// An account's public identity key (Ed25519).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountKey(pub [u8; 32]);

impl AccountKey {
    /// The account's fingerprint: the first 16 bytes of SHA-256 over the key, shown as
    /// eight groups of four hex digits (`1a2b 3c4d …`).
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0);
        digest[..16]
            .chunks(2)
            .map(hex::encode)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountKey({})", hex::encode(self.0))
    }
}

/// The account key's signature over one device: "this device key belongs to this account".
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeviceCertificate {
    /// The account's handle.
    pub handle: Handle,
    /// The account key that signed this certificate.
    pub account_key: AccountKey,
    /// The device.
    pub device_id: DeviceId,
    /// The device's MLS signature key (Ed25519), as in its MLS credentials.
    pub device_key: [u8; 32],
    /// When the certificate was issued (unix seconds).
    pub issued_at: u64,
    /// Ed25519 signature by `account_key` over the TBS encoding.
    pub signature: [u8; 64],
}

impl DeviceCertificate {
    /// Issues a certificate for a device, signed with the account's secret key.
    pub fn issue(
        account: &SigningKey,
        handle: Handle,
        device_id: DeviceId,
        device_key: [u8; 32],
        issued_at: u64,
    ) -> Self {
        let mut cert = Self {
            handle,
            account_key: AccountKey(account.verifying_key().to_bytes()),
            device_id,
            device_key,
            issued_at,
            signature: [0; 64],
        };
        cert.signature = sign_labeled(account, DEVICE_CERTIFICATE_LABEL, &cert.tbs());
        cert
    }

    /// The to-be-signed encoding.
    pub fn tbs(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(FORMAT_VERSION)
            .vec8(self.handle.as_str().as_bytes())
            .bytes(&self.account_key.0)
            .bytes(&self.device_id.0)
            .bytes(&self.device_key)
            .u64(self.issued_at);
        w.0
    }

    /// The full encoding (TBS followed by the signature).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.tbs();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes a certificate and verifies its signature against the key it names.
    /// (Whether that key is the right account key is the caller's decision.)
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "device certificate");
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "device certificate",
                version,
            });
        }
        let handle = parse_handle(r.vec8()?)?;
        let cert = Self {
            handle,
            account_key: AccountKey(r.array()?),
            device_id: DeviceId(r.array()?),
            device_key: r.array()?,
            issued_at: r.u64()?,
            signature: r.array()?,
        };
        r.finish()?;
        verify_labeled(
            &cert.account_key.0,
            DEVICE_CERTIFICATE_LABEL,
            &cert.tbs(),
            &cert.signature,
            "device certificate",
        )?;
        Ok(cert)
    }
}

/// The account's complete, signed list of current devices. A device missing from the
/// newest list is revoked. `sequence` only grows, so an old list cannot be replayed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DeviceList {
    /// The account's handle.
    pub handle: Handle,
    /// The account key that signed the list.
    pub account_key: AccountKey,
    /// Version of the list; each new list has a strictly greater sequence.
    pub sequence: u64,
    /// When the list was issued (unix seconds).
    pub issued_at: u64,
    /// The devices, each with its certificate (same handle and account key as the list).
    pub devices: Vec<DeviceCertificate>,
    /// Ed25519 signature by `account_key` over the TBS encoding.
    pub signature: [u8; 64],
}

impl DeviceList {
    /// Issues and signs a list.
    pub fn issue(
        account: &SigningKey,
        handle: Handle,
        sequence: u64,
        issued_at: u64,
        devices: Vec<DeviceCertificate>,
    ) -> Result<Self, Error> {
        let mut list = Self {
            handle,
            account_key: AccountKey(account.verifying_key().to_bytes()),
            sequence,
            issued_at,
            devices,
            signature: [0; 64],
        };
        list.check_consistency()?;
        list.signature = sign_labeled(account, DEVICE_LIST_LABEL, &list.tbs());
        Ok(list)
    }

    /// The to-be-signed encoding.
    pub fn tbs(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(FORMAT_VERSION)
            .vec8(self.handle.as_str().as_bytes())
            .bytes(&self.account_key.0)
            .u64(self.sequence)
            .u64(self.issued_at)
            .u16(self.devices.len() as u16);
        for d in &self.devices {
            w.vec16(&d.encode());
        }
        w.0
    }

    /// The full encoding (TBS followed by the signature).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.tbs();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes a list, verifies its signature, every certificate in it, and that all of them
    /// name the list's handle and account key.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "device list");
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "device list",
                version,
            });
        }
        let handle = parse_handle(r.vec8()?)?;
        let account_key = AccountKey(r.array()?);
        let sequence = r.u64()?;
        let issued_at = r.u64()?;
        let count = r.u16()? as usize;
        if count > MAX_DEVICES {
            return Err(malformed("device list", "too many devices"));
        }
        let mut devices = Vec::with_capacity(count);
        for _ in 0..count {
            devices.push(DeviceCertificate::decode(r.vec16()?)?);
        }
        let signature = r.array()?;
        r.finish()?;
        let list = Self {
            handle,
            account_key,
            sequence,
            issued_at,
            devices,
            signature,
        };
        verify_labeled(
            &list.account_key.0,
            DEVICE_LIST_LABEL,
            &list.tbs(),
            &list.signature,
            "device list",
        )?;
        list.check_consistency()?;
        Ok(list)
    }

    /// The certificate of a device, if the device is in the list.
    pub fn device(&self, device_id: &DeviceId) -> Option<&DeviceCertificate> {
        self.devices.iter().find(|d| &d.device_id == device_id)
    }

    fn check_consistency(&self) -> Result<(), Error> {
        if self.devices.is_empty() {
            return Err(malformed("device list", "no devices"));
        }
        if self.devices.len() > MAX_DEVICES {
            return Err(malformed("device list", "too many devices"));
        }
        for (i, d) in self.devices.iter().enumerate() {
            if d.handle != self.handle || d.account_key != self.account_key {
                return Err(Error::Inconsistent(
                    "device certificate of another account in device list",
                ));
            }
            if self.devices[..i].iter().any(|e| e.device_id == d.device_id) {
                return Err(Error::Inconsistent("device listed twice"));
            }
        }
        Ok(())
    }
}

pub(crate) fn parse_handle(bytes: &[u8]) -> Result<Handle, Error> {
    let s = std::str::from_utf8(bytes).map_err(|_| Error::InvalidHandle("not UTF-8"))?;
    Handle::from_canonical(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn alice_list() -> DeviceList {
        let handle = Handle::parse("alice").unwrap();
        let cert =
            DeviceCertificate::issue(&key(1), handle.clone(), DeviceId([2; 16]), [3; 32], 10);
        DeviceList::issue(&key(1), handle, 1, 11, vec![cert]).unwrap()
    }

    #[test]
    fn device_list_round_trips_and_verifies() {
        let list = alice_list();
        let decoded = DeviceList::decode(&list.encode()).unwrap();
        assert_eq!(decoded, list);
        assert!(decoded.device(&DeviceId([2; 16])).is_some());
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let bytes = alice_list().encode();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 1;
            assert!(DeviceList::decode(&b).is_err(), "flip at {i} accepted");
        }
        assert!(DeviceList::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn foreign_certificate_is_inconsistent() {
        let handle = Handle::parse("alice").unwrap();
        let foreign =
            DeviceCertificate::issue(&key(9), handle.clone(), DeviceId([2; 16]), [3; 32], 10);
        assert_eq!(
            DeviceList::issue(&key(1), handle, 1, 11, vec![foreign])
                .unwrap_err()
                .code(),
            "inconsistent"
        );
    }
}
