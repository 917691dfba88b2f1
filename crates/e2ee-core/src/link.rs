//! Linking a new device to an account through a one-time code (version 1, PROTOCOL.md
//! "Linking a device").
//!
//! 1. The **new device** draws a 16-byte link secret and shows it as a [`LinkCode`]. It
//!    generates its device id, its Ed25519 device key and an ephemeral X25519 HPKE key pair,
//!    and leaves a [`LinkRequest`] at the relay under the code's [`LinkCode::slot`],
//!    authenticated with an HMAC keyed from the secret (the relay does not know the secret,
//!    so it can neither read the code from the slot nor forge a request).
//! 2. An **existing device**, given the code by its user, fetches the request, checks the
//!    HMAC, shows the new device's key fingerprint and, once the user confirms, signs the
//!    new device's certificate and a new device list with the account key, publishes the
//!    list, and leaves a link response (see [`seal_response`]) at the slot: the account secret and the new device
//!    list, sealed with HPKE to the new device's ephemeral key (the slot is the AAD).
//! 3. The new device opens the response, checks that the list contains it and is signed by
//!    the account secret it received, and from then on is a device like any other.

use dm_wire::cert::DeviceList;
use dm_wire::{DeviceId, Handle};
use ed25519_dalek::SigningKey;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::types::{HashType, HpkeCiphertext};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::CIPHERSUITE;
use crate::error::Error;
use crate::identity::AccountSecret;

/// Version byte of link requests and responses.
pub const VERSION: u8 = 1;
/// Length of the link secret.
pub const SECRET_LEN: usize = 16;
/// Length of a slot id.
pub const SLOT_LEN: usize = 16;
/// Label deriving the slot id from the secret.
pub const SLOT_LABEL: &[u8] = b"dm-e2ee/v1/link-slot";
/// Label deriving the request's HMAC key from the secret.
pub const MAC_LABEL: &[u8] = b"dm-e2ee/v1/link-mac";
/// HPKE `info` of the response.
pub const RESPONSE_INFO: &[u8] = b"dm-e2ee/v1/link-response";
/// Prefix of the QR payload of a link code.
pub const QR_PREFIX: &str = "dm-link:1:";
/// Largest encoded request or response (a device list is at most 8 KiB).
pub const MAX_MESSAGE_BYTES: usize = 12 * 1024;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Secret plus a two-byte checksum, in base32: ceil(18 * 8 / 5) characters.
const CODE_CHARS: usize = 29;

/// The one-time link code: a 16-byte secret shown to people (Crockford base32 of the
/// secret and the first two bytes of its SHA-256, 29 characters in groups of four).
pub struct LinkCode {
    secret: Zeroizing<[u8; SECRET_LEN]>,
}

impl std::fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkCode(<redacted>)")
    }
}

impl LinkCode {
    /// A fresh random code.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        rng.fill_bytes(secret.as_mut());
        Self { secret }
    }

    /// Parses a code typed by a person (case, spaces and dashes ignored; `O` read as `0`,
    /// `I`/`L` as `1`; a `dm-link:1:` prefix is accepted).
    pub fn parse(input: &str) -> Result<Self, Error> {
        let input = input.trim();
        let input = input.strip_prefix(QR_PREFIX).unwrap_or(input);
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut bytes = Zeroizing::new(Vec::with_capacity(SECRET_LEN + 2));
        let mut chars = 0usize;
        for c in input.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            let c = match c.to_ascii_uppercase() {
                'O' => '0',
                'I' | 'L' => '1',
                other => other,
            };
            let v = ALPHABET
                .iter()
                .position(|&a| char::from(a) == c)
                .ok_or_else(|| {
                    Error::misuse(format!("invalid character {c:?} in the link code"))
                })?;
            chars += 1;
            acc = (acc << 5) | v as u32;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                bytes.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        if chars != CODE_CHARS || bytes.len() != SECRET_LEN + 2 || acc != 0 {
            return Err(Error::misuse(format!(
                "a link code has {CODE_CHARS} characters; check what you typed"
            )));
        }
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        secret.copy_from_slice(&bytes[..SECRET_LEN]);
        if bytes[SECRET_LEN..] != checksum(&secret) {
            return Err(Error::misuse(
                "the link code's checksum does not match (typo?)",
            ));
        }
        Ok(Self { secret })
    }

    /// The slot at the relay: `SHA-256(SLOT_LABEL || 0x00 || secret)[..16]`.
    pub fn slot(&self) -> [u8; SLOT_LEN] {
        let d = labeled_hash(SLOT_LABEL, self.secret.as_ref());
        let mut slot = [0u8; SLOT_LEN];
        slot.copy_from_slice(&d[..SLOT_LEN]);
        slot
    }

    fn mac_key(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(labeled_hash(MAC_LABEL, self.secret.as_ref()))
    }

    /// The QR payload: `dm-link:1:` followed by the code.
    pub fn qr_payload(&self) -> String {
        format!("{QR_PREFIX}{self}")
    }
}

impl std::fmt::Display for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut data = Zeroizing::new(self.secret.to_vec());
        data.extend_from_slice(&checksum(&self.secret));
        let mut out = Zeroizing::new(String::new());
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut n = 0usize;
        let mut push = |v: u32, out: &mut String| {
            if n > 0 && n.is_multiple_of(4) {
                out.push('-');
            }
            out.push(char::from(ALPHABET[v as usize]));
            n += 1;
        };
        for &b in data.iter() {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                push((acc >> bits) & 31, &mut out);
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            push((acc << (5 - bits)) & 31, &mut out);
        }
        f.write_str(&out)
    }
}

fn checksum(secret: &[u8; SECRET_LEN]) -> [u8; 2] {
    let d = Sha256::digest(secret);
    [d[0], d[1]]
}

fn labeled_hash(label: &[u8], data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label);
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// What the new device leaves at the slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkRequest {
    /// The new device's id.
    pub device_id: DeviceId,
    /// The new device's Ed25519 signature key.
    pub device_key: [u8; 32],
    /// The new device's ephemeral X25519 HPKE public key.
    pub hpke_public_key: Vec<u8>,
}

impl LinkRequest {
    fn tbs(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 16 + 32 + 1 + self.hpke_public_key.len());
        out.push(VERSION);
        out.extend_from_slice(self.device_id.as_bytes());
        out.extend_from_slice(&self.device_key);
        out.push(self.hpke_public_key.len() as u8);
        out.extend_from_slice(&self.hpke_public_key);
        out
    }

    /// `tbs || HMAC-SHA256(mac_key, tbs)`.
    pub fn encode(&self, crypto: &impl OpenMlsCrypto, code: &LinkCode) -> Result<Vec<u8>, Error> {
        let mut out = self.tbs();
        let mac = mac(crypto, code, &out)?;
        out.extend_from_slice(&mac);
        Ok(out)
    }

    /// Decodes a request and checks its HMAC with the code.
    pub fn decode(
        crypto: &impl OpenMlsCrypto,
        code: &LinkCode,
        bytes: &[u8],
    ) -> Result<Self, Error> {
        const FIXED: usize = 1 + 16 + 32 + 1;
        if bytes.len() < FIXED + 32 {
            return Err(Error::malformed("link request", "too short"));
        }
        let (tbs, tag) = bytes.split_at(bytes.len() - 32);
        let expected = mac(crypto, code, tbs)?;
        // Constant-time comparison.
        let diff = expected
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff != 0 {
            return Err(Error::malformed(
                "link request",
                "its authentication code does not match this link code",
            ));
        }
        if tbs[0] != VERSION {
            return Err(Error::malformed("link request", "unsupported version"));
        }
        let device_id =
            DeviceId::from_slice(&tbs[1..17]).map_err(|e| Error::malformed("link request", e))?;
        let mut device_key = [0u8; 32];
        device_key.copy_from_slice(&tbs[17..49]);
        let len = usize::from(tbs[49]);
        if tbs.len() != FIXED + len || len != 32 {
            return Err(Error::malformed("link request", "bad HPKE key length"));
        }
        Ok(Self {
            device_id,
            device_key,
            hpke_public_key: tbs[FIXED..].to_vec(),
        })
    }
}

fn mac(crypto: &impl OpenMlsCrypto, code: &LinkCode, data: &[u8]) -> Result<Vec<u8>, Error> {
    // HKDF-Extract(salt = key, ikm = data) is HMAC-SHA256(key, data).
    let key = code.mac_key();
    crypto
        .hkdf_extract(HashType::Sha2_256, key.as_ref(), data)
        .map(|s| s.as_slice().to_vec())
        .map_err(|e| Error::internal(format!("HMAC failed: {e:?}")))
}

/// The new device's side of a link, kept in memory while it waits.
pub struct PendingLink {
    code: LinkCode,
    device_id: DeviceId,
    signing_key: SigningKey,
    hpke_private: Zeroizing<Vec<u8>>,
    hpke_public: Vec<u8>,
}

impl std::fmt::Debug for PendingLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingLink")
            .field("device_id", &self.device_id)
            .finish_non_exhaustive()
    }
}

/// What the new device learns when the link is approved.
pub struct Linked {
    /// The account secret (the new device can approve and revoke devices too).
    pub account: AccountSecret,
    /// The account's new device list, containing this device.
    pub device_list: DeviceList,
    /// This device's secret signature key (32 bytes), to install in the MLS storage.
    pub device_secret: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Linked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linked")
            .field("handle", &self.device_list.handle)
            .finish_non_exhaustive()
    }
}

impl PendingLink {
    /// Starts a link: a fresh code, device id, device key and HPKE key pair.
    pub fn start(crypto: &impl OpenMlsCrypto, rng: &mut impl CryptoRngCore) -> Result<Self, Error> {
        let code = LinkCode::generate(rng);
        let mut id = [0u8; DeviceId::LEN];
        rng.fill_bytes(&mut id);
        let signing_key = SigningKey::generate(rng);
        let mut ikm = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(ikm.as_mut());
        let pair = crypto
            .derive_hpke_keypair(CIPHERSUITE.hpke_config(), ikm.as_ref())
            .map_err(|e| Error::internal(format!("HPKE key generation failed: {e:?}")))?;
        Ok(Self {
            code,
            device_id: DeviceId(id),
            signing_key,
            hpke_private: Zeroizing::new(pair.private.to_vec()),
            hpke_public: pair.public,
        })
    }

    /// The code to show.
    pub fn code(&self) -> &LinkCode {
        &self.code
    }

    /// The new device's id.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// The new device's public signature key.
    pub fn device_key(&self) -> [u8; 32] {
        self.signing_key.verifying_key().to_bytes()
    }

    /// The encoded request to leave at the slot.
    pub fn request(&self, crypto: &impl OpenMlsCrypto) -> Result<Vec<u8>, Error> {
        LinkRequest {
            device_id: self.device_id,
            device_key: self.device_key(),
            hpke_public_key: self.hpke_public.clone(),
        }
        .encode(crypto, &self.code)
    }

    /// Opens the approving device's response and checks it: the device list must verify,
    /// be signed by the received account secret, and certify this device's key.
    pub fn finish(&self, crypto: &impl OpenMlsCrypto, response: &[u8]) -> Result<Linked, Error> {
        let ciphertext = decode_ciphertext(response)?;
        let plaintext = Zeroizing::new(
            crypto
                .hpke_open(
                    CIPHERSUITE.hpke_config(),
                    &ciphertext,
                    &self.hpke_private,
                    RESPONSE_INFO,
                    &self.code.slot(),
                )
                .map_err(|_| Error::malformed("link response", "does not decrypt"))?,
        );
        if plaintext.len() < 1 + 32 + 2 || plaintext[0] != VERSION {
            return Err(Error::malformed("link response", "bad version or length"));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&plaintext[1..33]);
        let len = usize::from(u16::from_be_bytes([plaintext[33], plaintext[34]]));
        if plaintext.len() != 35 + len {
            return Err(Error::malformed("link response", "bad device list length"));
        }
        let list = DeviceList::decode(&plaintext[35..])
            .map_err(|e| Error::malformed("link response", e))?;
        let account = AccountSecret::from_bytes(&secret);
        if account.account_key() != list.account_key {
            return Err(Error::malformed(
                "link response",
                "the device list is not signed by the account key sent",
            ));
        }
        let cert = list.device(&self.device_id).ok_or_else(|| {
            Error::malformed("link response", "the device list lacks this device")
        })?;
        if cert.device_key != self.device_key() {
            return Err(Error::malformed(
                "link response",
                "the device list certifies another key for this device",
            ));
        }
        Ok(Linked {
            account,
            device_list: list,
            device_secret: Zeroizing::new(self.signing_key.to_bytes()),
        })
    }
}

/// The approving device's response: the account secret and the new device list, sealed to
/// the new device's HPKE key.
pub fn seal_response(
    crypto: &impl OpenMlsCrypto,
    code: &LinkCode,
    request: &LinkRequest,
    account: &AccountSecret,
    new_list: &DeviceList,
) -> Result<Vec<u8>, Error> {
    let encoded = new_list.encode();
    let len = u16::try_from(encoded.len()).map_err(|_| Error::misuse("device list too large"))?;
    let mut plaintext = Zeroizing::new(Vec::with_capacity(35 + encoded.len()));
    plaintext.push(VERSION);
    plaintext.extend_from_slice(account.to_bytes().as_ref());
    plaintext.extend_from_slice(&len.to_be_bytes());
    plaintext.extend_from_slice(&encoded);
    let ct = crypto
        .hpke_seal(
            CIPHERSUITE.hpke_config(),
            &request.hpke_public_key,
            RESPONSE_INFO,
            &code.slot(),
            &plaintext,
        )
        .map_err(|e| Error::internal(format!("HPKE seal failed: {e:?}")))?;
    let kem = ct.kem_output.as_slice();
    let body = ct.ciphertext.as_slice();
    let mut out = Vec::with_capacity(3 + kem.len() + body.len());
    out.push(u8::try_from(kem.len()).map_err(|_| Error::internal("KEM output too long"))?);
    out.extend_from_slice(kem);
    out.extend_from_slice(
        &u16::try_from(body.len())
            .map_err(|_| Error::internal("too long"))?
            .to_be_bytes(),
    );
    out.extend_from_slice(body);
    Ok(out)
}

fn decode_ciphertext(bytes: &[u8]) -> Result<HpkeCiphertext, Error> {
    let bad = || Error::malformed("link response", "truncated");
    let (&kem_len, rest) = bytes.split_first().ok_or_else(bad)?;
    let kem_len = usize::from(kem_len);
    if rest.len() < kem_len + 2 {
        return Err(bad());
    }
    let (kem, rest) = rest.split_at(kem_len);
    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
    let body = &rest[2..];
    if body.len() != len {
        return Err(bad());
    }
    Ok(HpkeCiphertext {
        kem_output: kem.to_vec().into(),
        ciphertext: body.to_vec().into(),
    })
}

/// The new device list after approving `request`: the current devices plus the new one,
/// with the next sequence number.
pub fn approve(
    account: &AccountSecret,
    current: &DeviceList,
    request: &LinkRequest,
    now_secs: u64,
) -> Result<DeviceList, Error> {
    if current.device(&request.device_id).is_some() {
        return Err(Error::misuse("this device is already linked"));
    }
    let handle: Handle = current.handle.clone();
    let cert = account.issue_certificate(
        handle.clone(),
        request.device_id,
        request.device_key,
        now_secs,
    );
    let mut devices = current.devices.clone();
    devices.push(cert);
    account.issue_device_list(handle, current.sequence + 1, now_secs, devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmls_rust_crypto::RustCrypto;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn link_code_round_trips_and_catches_typos() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let code = LinkCode::generate(&mut rng);
        let text = code.to_string();
        assert_eq!(text.replace('-', "").len(), CODE_CHARS);
        let parsed = LinkCode::parse(&text.to_lowercase()).unwrap();
        assert_eq!(parsed.slot(), code.slot());
        assert_eq!(
            LinkCode::parse(&code.qr_payload()).unwrap().slot(),
            code.slot()
        );
        let mut typo: Vec<char> = text.chars().collect();
        typo[0] = if typo[0] == 'X' { 'Y' } else { 'X' };
        assert!(LinkCode::parse(&typo.into_iter().collect::<String>()).is_err());
        assert!(LinkCode::parse(&text[..text.len() - 2]).is_err());
    }

    #[test]
    fn a_full_link_exchange() {
        let crypto = RustCrypto::default();
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let account = AccountSecret::generate(&mut rng);
        let handle = Handle::parse("alice").unwrap();
        let first = account.issue_certificate(handle.clone(), DeviceId([1; 16]), [2; 32], 1);
        let list = account
            .issue_device_list(handle, 1, 1, vec![first])
            .unwrap();

        let pending = PendingLink::start(&crypto, &mut rng).unwrap();
        let request_bytes = pending.request(&crypto).unwrap();
        // The approving device parses the code typed by its user.
        let code = LinkCode::parse(&pending.code().to_string()).unwrap();
        let request = LinkRequest::decode(&crypto, &code, &request_bytes).unwrap();
        assert_eq!(request.device_id, pending.device_id());
        // Another code does not authenticate the request.
        let other = LinkCode::generate(&mut rng);
        assert!(LinkRequest::decode(&crypto, &other, &request_bytes).is_err());
        let mut forged = request_bytes.clone();
        forged[20] ^= 1;
        assert!(LinkRequest::decode(&crypto, &code, &forged).is_err());

        let new_list = approve(&account, &list, &request, 2).unwrap();
        assert_eq!(new_list.sequence, 2);
        assert_eq!(new_list.devices.len(), 2);
        let response = seal_response(&crypto, &code, &request, &account, &new_list).unwrap();
        let linked = pending.finish(&crypto, &response).unwrap();
        assert_eq!(linked.account.account_key(), account.account_key());
        assert_eq!(linked.device_list, new_list);
        // A tampered response is refused.
        let mut bad = response.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(pending.finish(&crypto, &bad).is_err());
        assert!(approve(&account, &new_list, &request, 3).is_err());
    }
}
