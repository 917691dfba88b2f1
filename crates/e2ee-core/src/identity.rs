//! The account identity: a long-term Ed25519 key, and its recovery code.
//!
//! # Recovery code
//!
//! The recovery code is the account's 32-byte secret key followed by a 2-byte checksum
//! (the first two bytes of SHA-256 over the secret), 34 bytes in all, written in Crockford
//! base32 (alphabet `0123456789ABCDEFGHJKMNPQRSTVWXYZ`, most significant bit first, the last
//! character padded with three zero bits): 55 characters, shown in groups of four separated
//! by `-`:
//!
//! ```text
//! 7ZQ4-0C1M-...-K3A
//! ```
//!
//! [`RecoveryCode::parse`] ignores case, spaces and dashes, reads `O` as `0` and `I`/`L` as
//! `1` (Crockford's rules), and rejects codes whose checksum does not match, so a typo is
//! detected (the chance that a random typo passes is 1 in 65,536).

use std::fmt;

use dm_wire::cert::{AccountKey, DeviceCertificate, DeviceList};
use dm_wire::{DeviceId, Handle};
use ed25519_dalek::SigningKey;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::error::Error;

/// The account's secret identity key (Ed25519). Zeroized on drop; never printed.
pub struct AccountSecret(SigningKey);

impl AccountSecret {
    /// Generates a new account key from the caller's cryptographic RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self(SigningKey::generate(rng))
    }

    /// Rebuilds the key from its 32 secret bytes.
    pub fn from_bytes(secret: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(secret))
    }

    /// The 32 secret bytes (to store them encrypted).
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public account key.
    pub fn account_key(&self) -> AccountKey {
        AccountKey(self.0.verifying_key().to_bytes())
    }

    /// The recovery code of this key.
    pub fn recovery_code(&self) -> RecoveryCode {
        RecoveryCode {
            secret: self.to_bytes(),
        }
    }

    /// The account key encoded in a recovery code.
    pub fn from_recovery_code(code: &RecoveryCode) -> Self {
        Self::from_bytes(&code.secret)
    }

    /// Signs a certificate for one of the account's devices.
    pub fn issue_certificate(
        &self,
        handle: Handle,
        device_id: DeviceId,
        device_key: [u8; 32],
        issued_at: u64,
    ) -> DeviceCertificate {
        DeviceCertificate::issue(&self.0, handle, device_id, device_key, issued_at)
    }

    /// Signs the account's complete device list.
    pub fn issue_device_list(
        &self,
        handle: Handle,
        sequence: u64,
        issued_at: u64,
        devices: Vec<DeviceCertificate>,
    ) -> Result<DeviceList, Error> {
        DeviceList::issue(&self.0, handle, sequence, issued_at, devices)
            .map_err(|e| Error::misuse(format!("cannot issue device list: {e}")))
    }
}

impl fmt::Debug for AccountSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AccountSecret({:?}, secret redacted)",
            self.account_key()
        )
    }
}

/// The human-readable form of an account secret (see the module documentation).
///
/// `Display` prints the code itself; `Debug` does not.
pub struct RecoveryCode {
    secret: Zeroizing<[u8; 32]>,
}

/// Crockford's base32 alphabet.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Secret plus checksum.
const CODE_BYTES: usize = 34;
/// Base32 characters of a code: ceil(34 * 8 / 5).
const CODE_CHARS: usize = 55;

/// Why a recovery code was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryCodeError {
    /// A character outside Crockford's base32 alphabet.
    #[error("invalid character {0:?} in recovery code")]
    InvalidCharacter(char),
    /// Too many or too few characters.
    #[error("a recovery code has {CODE_CHARS} characters, this one has {0}")]
    WrongLength(usize),
    /// The checksum does not match: the code was mistyped.
    #[error("recovery code checksum mismatch (typo?)")]
    BadChecksum,
}

impl RecoveryCodeError {
    /// Stable code of the error, as named by the published test vectors
    /// (`tests/vectors/account-key.json`).
    pub fn code(&self) -> &'static str {
        match self {
            RecoveryCodeError::InvalidCharacter(_) => "invalid_character",
            RecoveryCodeError::WrongLength(_) => "wrong_length",
            RecoveryCodeError::BadChecksum => "bad_checksum",
        }
    }
}

impl RecoveryCode {
    /// Parses a code typed by a person.
    pub fn parse(input: &str) -> Result<Self, RecoveryCodeError> {
        let mut values = Zeroizing::new(Vec::with_capacity(CODE_CHARS));
        for c in input.chars() {
            if c == '-' || c.is_whitespace() {
                continue;
            }
            values.push(decode_char(c).ok_or(RecoveryCodeError::InvalidCharacter(c))?);
        }
        if values.len() != CODE_CHARS {
            return Err(RecoveryCodeError::WrongLength(values.len()));
        }
        let mut bytes = Zeroizing::new([0u8; CODE_BYTES]);
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut out = 0usize;
        for &v in values.iter() {
            acc = (acc << 5) | u32::from(v);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                bytes[out] = (acc >> bits) as u8;
                out += 1;
                acc &= (1 << bits) - 1;
            }
        }
        // 55 * 5 = 275 bits: 272 data bits and 3 padding bits, which must be zero.
        let padding_is_zero = acc == 0;
        acc.zeroize();
        if out != CODE_BYTES || bits != 3 {
            return Err(RecoveryCodeError::WrongLength(values.len()));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        secret.copy_from_slice(&bytes[..32]);
        if checksum(&secret) != bytes[32..] || !padding_is_zero {
            return Err(RecoveryCodeError::BadChecksum);
        }
        Ok(Self { secret })
    }

    /// The account key this code restores.
    pub fn account_key(&self) -> AccountKey {
        AccountSecret::from_recovery_code(self).account_key()
    }
}

fn checksum(secret: &[u8; 32]) -> [u8; 2] {
    let digest = Sha256::digest(secret);
    [digest[0], digest[1]]
}

fn decode_char(c: char) -> Option<u8> {
    let c = c.to_ascii_uppercase();
    let c = match c {
        'O' => '0',
        'I' | 'L' => '1',
        other => other,
    };
    ALPHABET
        .iter()
        .position(|&a| char::from(a) == c)
        .map(|p| p as u8)
}

impl fmt::Display for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = Zeroizing::new([0u8; CODE_BYTES]);
        bytes[..32].copy_from_slice(&*self.secret);
        bytes[32..].copy_from_slice(&checksum(&self.secret));
        let mut chars = Zeroizing::new(String::with_capacity(CODE_CHARS + CODE_CHARS / 4));
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut n = 0usize;
        let mut push = |v: u32, chars: &mut String| {
            if n > 0 && n.is_multiple_of(4) {
                chars.push('-');
            }
            chars.push(char::from(ALPHABET[v as usize]));
            n += 1;
        };
        for &b in bytes.iter() {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                push((acc >> bits) & 31, &mut chars);
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            push((acc << (5 - bits)) & 31, &mut chars);
        }
        acc.zeroize();
        f.write_str(&chars)
    }
}

impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryCode(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn recovery_code_round_trips_and_restores_the_key() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let secret = AccountSecret::generate(&mut rng);
        let code = secret.recovery_code().to_string();
        assert_eq!(code.replace('-', "").len(), CODE_CHARS);
        assert_eq!(code.split('-').count(), 14);
        let parsed = RecoveryCode::parse(&code).unwrap();
        assert_eq!(
            AccountSecret::from_recovery_code(&parsed).account_key(),
            secret.account_key()
        );
        // Case, spaces and Crockford look-alikes are accepted.
        let sloppy = code.to_lowercase().replace('-', " ").replace('0', "o");
        assert_eq!(
            RecoveryCode::parse(&sloppy).unwrap().account_key(),
            secret.account_key()
        );
    }

    #[test]
    fn recovery_code_rejects_typos() {
        let secret = AccountSecret::from_bytes(&[42; 32]);
        let code = secret.recovery_code().to_string();
        let chars: Vec<char> = code.chars().collect();
        let mut rejected = 0;
        let mut tried = 0;
        for i in (0..chars.len()).filter(|&i| chars[i] != '-') {
            let mut typo = chars.clone();
            typo[i] = if typo[i] == 'X' { 'Y' } else { 'X' };
            let typo: String = typo.into_iter().collect();
            tried += 1;
            if RecoveryCode::parse(&typo).is_err() {
                rejected += 1;
            }
        }
        assert_eq!(rejected, tried, "every single-character typo is caught");
        assert_eq!(
            RecoveryCode::parse(&code[..code.len() - 1]).unwrap_err(),
            RecoveryCodeError::WrongLength(54)
        );
        assert_eq!(
            RecoveryCode::parse(&format!("{code}U")).unwrap_err(),
            RecoveryCodeError::InvalidCharacter('U')
        );
    }

    #[test]
    fn nothing_secret_in_debug() {
        let secret = AccountSecret::from_bytes(&[7; 32]);
        let code = secret.recovery_code();
        let shown = format!("{secret:?} {code:?}");
        assert!(!shown.contains(&hex::encode([7u8; 32])));
        assert!(!shown.contains(&code.to_string()));
    }
}
