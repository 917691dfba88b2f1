//! Safety numbers (two accounts compare their identity keys out of band), group codes
//! (members compare their view of a conversation's state), and key fingerprints.
//!
//! All derivations are version 1 and specified byte for byte in PROTOCOL.md ("Verification").
//!
//! # Safety number (version 1)
//!
//! For each of the two accounts, with its canonical handle `h` (UTF-8) and its 32-byte
//! account key `k`:
//!
//! ```text
//! part(h, k) = SHA-512("dm-e2ee/v1/safety-number" || 0x00 || u8(len(h)) || h || k)
//! digits(d)  = for i in 0..6: (big-endian u40 of d[5i..5i+5]) mod 100000, as 5 digits
//! ```
//!
//! The two accounts are ordered by `(h, k)` bytewise ascending; the safety number is
//! `digits(part(first)) || digits(part(second))`: 60 decimal digits, shown as twelve groups
//! of five. Both sides compute the same number; it changes when either account key changes.
//! The QR payload is `dm-safety:1:` followed by the 60 digits; [`SafetyNumber::parse_qr`]
//! reads it back (strictly: no spaces, no other prefix or version).
//!
//! # Group code (version 1)
//!
//! ```text
//! d = SHA-256("dm-e2ee/v1/group-code" || 0x00 || u8(len(group_id)) || group_id
//!             || u64(epoch) || epoch_authenticator)
//! code = for i in 0..4: (big-endian u40 of d[5i..5i+5]) mod 100000, as 5 digits
//! ```
//!
//! Twenty digits, four groups of five. Every member in the same epoch with the same group
//! state computes the same code; a member whose state was forked (for example by a relay
//! that delivered different commits to different members) computes another.

use dm_wire::Handle;
use dm_wire::cert::AccountKey;
use sha2::{Digest, Sha256, Sha512};

/// The version of the safety-number and group-code derivations.
pub const VERSION: u8 = 1;
/// Label of the safety number derivation.
pub const SAFETY_NUMBER_LABEL: &[u8] = b"dm-e2ee/v1/safety-number";
/// Label of the group code derivation.
pub const GROUP_CODE_LABEL: &[u8] = b"dm-e2ee/v1/group-code";
/// Prefix of the safety number's QR payload.
pub const QR_PREFIX: &str = "dm-safety:1:";

/// The safety number of two accounts, identical on both sides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafetyNumber {
    digits: String,
}

impl SafetyNumber {
    /// Derives the safety number of accounts `(a_handle, a_key)` and `(b_handle, b_key)`; the
    /// order of the arguments does not matter.
    pub fn derive(
        a_handle: &Handle,
        a_key: &AccountKey,
        b_handle: &Handle,
        b_key: &AccountKey,
    ) -> Self {
        let a = (a_handle.as_str().as_bytes(), &a_key.0);
        let b = (b_handle.as_str().as_bytes(), &b_key.0);
        let (first, second) = if a <= b { (a, b) } else { (b, a) };
        let mut digits = String::with_capacity(60);
        for (h, k) in [first, second] {
            let mut hasher = Sha512::new();
            hasher.update(SAFETY_NUMBER_LABEL);
            hasher.update([0u8]);
            // Handles are at most 32 bytes: the length fits one byte.
            hasher.update([h.len() as u8]);
            hasher.update(h);
            hasher.update(k);
            digits.push_str(&five_digit_groups(&hasher.finalize(), 6));
        }
        Self { digits }
    }

    /// The 60 digits without separators.
    pub fn digits(&self) -> &str {
        &self.digits
    }

    /// Twelve groups of five digits separated by spaces.
    pub fn display(&self) -> String {
        group_by_five(&self.digits)
    }

    /// The payload to encode in a QR code: `dm-safety:1:` and the 60 digits.
    pub fn qr_payload(&self) -> String {
        format!("{QR_PREFIX}{}", self.digits)
    }

    /// Reads a scanned QR payload ([`SafetyNumber::qr_payload`]): exactly `dm-safety:1:`
    /// followed by 60 ASCII digits, nothing else (the payload is written by a program, so no
    /// spaces, case changes or surrounding text are accepted). Compare the result with the
    /// locally derived number.
    ///
    /// Errors, checked in this order: [`SafetyQrError::WrongPrefix`] if the payload does not
    /// start with `dm-safety:`, [`SafetyQrError::UnsupportedVersion`] if the version field
    /// (up to the next `:`) is not `1`, [`SafetyQrError::InvalidCharacter`] for the first
    /// character after `dm-safety:1:` that is not an ASCII digit, and
    /// [`SafetyQrError::WrongLength`] if there are not 60 digits.
    pub fn parse_qr(payload: &str) -> Result<Self, SafetyQrError> {
        let rest = payload
            .strip_prefix(QR_SCHEME)
            .ok_or(SafetyQrError::WrongPrefix)?;
        let (version, digits) = rest
            .split_once(':')
            .ok_or(SafetyQrError::UnsupportedVersion)?;
        if version != "1" {
            return Err(SafetyQrError::UnsupportedVersion);
        }
        if let Some(c) = digits.chars().find(|c| !c.is_ascii_digit()) {
            return Err(SafetyQrError::InvalidCharacter(c));
        }
        if digits.len() != SAFETY_NUMBER_DIGITS {
            return Err(SafetyQrError::WrongLength(digits.len()));
        }
        Ok(Self {
            digits: digits.to_owned(),
        })
    }
}

/// Digits of a safety number.
const SAFETY_NUMBER_DIGITS: usize = 60;
/// The QR payload's prefix before the version field.
const QR_SCHEME: &str = "dm-safety:";

/// Why a safety number's QR payload was rejected ([`SafetyNumber::parse_qr`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SafetyQrError {
    /// The payload does not start with `dm-safety:` (not a safety number).
    #[error("not a safety number QR code (it does not start with \"dm-safety:\")")]
    WrongPrefix,
    /// The version field is not `1` (or is missing).
    #[error("unsupported safety number version (this client reads version 1)")]
    UnsupportedVersion,
    /// A character other than an ASCII digit after the prefix.
    #[error("invalid character {0:?} in the safety number")]
    InvalidCharacter(char),
    /// Too many or too few digits.
    #[error("a safety number has {SAFETY_NUMBER_DIGITS} digits, this one has {0}")]
    WrongLength(usize),
}

impl SafetyQrError {
    /// Stable code of the error, as named by the published test vectors
    /// (`tests/vectors/safety-number.json`).
    pub fn code(&self) -> &'static str {
        match self {
            SafetyQrError::WrongPrefix => "wrong_prefix",
            SafetyQrError::UnsupportedVersion => "unsupported_version",
            SafetyQrError::InvalidCharacter(_) => "invalid_character",
            SafetyQrError::WrongLength(_) => "wrong_length",
        }
    }
}

/// The group code of a conversation in one epoch (see the module documentation): twenty
/// digits in four groups of five.
pub fn group_code(group_id: &[u8], epoch: u64, epoch_authenticator: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(GROUP_CODE_LABEL);
    hasher.update([0u8]);
    // Group ids are at most 64 bytes (dm_wire::GroupId::MAX_LEN).
    hasher.update([group_id.len().min(255) as u8]);
    hasher.update(group_id);
    hasher.update(epoch.to_be_bytes());
    hasher.update(epoch_authenticator);
    group_by_five(&five_digit_groups(&hasher.finalize(), 4))
}

/// The fingerprint of a public key (an account key or a device key): the first 16 bytes
/// of SHA-256 over the key, as eight groups of four lower-case hex digits. For account keys
/// this equals [`AccountKey::fingerprint`].
pub fn fingerprint(key: &[u8; 32]) -> String {
    AccountKey(*key).fingerprint()
}

/// `count` groups of five decimal digits from the first `5 * count` bytes of `digest`.
fn five_digit_groups(digest: &[u8], count: usize) -> String {
    let mut out = String::with_capacity(count * 5);
    for chunk in digest.chunks_exact(5).take(count) {
        let value = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        out.push_str(&format!("{:05}", value % 100_000));
    }
    out
}

fn group_by_five(digits: &str) -> String {
    digits
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Handle {
        Handle::parse(s).unwrap()
    }

    #[test]
    fn same_on_both_sides_and_changes_with_either_key() {
        let (alice, bob) = (h("alice"), h("bob"));
        let (ka, kb, kb2) = (
            AccountKey([1; 32]),
            AccountKey([2; 32]),
            AccountKey([3; 32]),
        );
        let ab = SafetyNumber::derive(&alice, &ka, &bob, &kb);
        let ba = SafetyNumber::derive(&bob, &kb, &alice, &ka);
        assert_eq!(ab, ba);
        assert_eq!(ab.digits().len(), 60);
        assert!(ab.digits().bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(ab.display().split(' ').count(), 12);
        assert_eq!(ab.qr_payload(), format!("dm-safety:1:{}", ab.digits()));
        assert_ne!(ab, SafetyNumber::derive(&alice, &ka, &bob, &kb2));
        assert_ne!(ab, SafetyNumber::derive(&alice, &kb2, &bob, &kb));
        // The same keys under other handles give another number.
        assert_ne!(ab, SafetyNumber::derive(&h("carol"), &ka, &bob, &kb));
    }

    #[test]
    fn derivation_is_pinned() {
        // Recomputed here from the PROTOCOL.md description, independently of the code above.
        let (alice, bob) = (h("alice"), h("bob"));
        let (ka, kb) = (AccountKey([1; 32]), AccountKey([2; 32]));
        let part = |name: &str, key: [u8; 32]| {
            let mut input = b"dm-e2ee/v1/safety-number\0".to_vec();
            input.push(name.len() as u8);
            input.extend_from_slice(name.as_bytes());
            input.extend_from_slice(&key);
            let d = Sha512::digest(&input);
            (0..6)
                .map(|i| {
                    let mut v = 0u64;
                    for b in &d[5 * i..5 * i + 5] {
                        v = v * 256 + u64::from(*b);
                    }
                    format!("{:05}", v % 100_000)
                })
                .collect::<String>()
        };
        let expected = format!("{}{}", part("alice", [1; 32]), part("bob", [2; 32]));
        assert_eq!(
            SafetyNumber::derive(&bob, &kb, &alice, &ka).digits(),
            expected
        );
    }

    #[test]
    fn qr_payload_round_trips_and_bad_payloads_are_refused() {
        let n = SafetyNumber::derive(
            &h("alice"),
            &AccountKey([1; 32]),
            &h("bob"),
            &AccountKey([2; 32]),
        );
        assert_eq!(SafetyNumber::parse_qr(&n.qr_payload()), Ok(n.clone()));
        let digits = n.digits();
        let code = |p: &str| SafetyNumber::parse_qr(p).unwrap_err().code();
        assert_eq!(code(&format!("dm-link:1:{digits}")), "wrong_prefix");
        assert_eq!(code(&format!("DM-SAFETY:1:{digits}")), "wrong_prefix");
        assert_eq!(code(&format!(" dm-safety:1:{digits}")), "wrong_prefix");
        assert_eq!(code(""), "wrong_prefix");
        assert_eq!(
            code(&format!("dm-safety:2:{digits}")),
            "unsupported_version"
        );
        assert_eq!(code(&format!("dm-safety:{digits}")), "unsupported_version");
        assert_eq!(
            code(&format!("dm-safety:1:{}", &digits[..59])),
            "wrong_length"
        );
        assert_eq!(code(&format!("dm-safety:1:{digits}0")), "wrong_length");
        assert_eq!(code("dm-safety:1:"), "wrong_length");
        assert_eq!(
            code(&format!("dm-safety:1:{}", n.display())),
            "invalid_character"
        );
        assert_eq!(
            SafetyNumber::parse_qr(&format!("dm-safety:1:{}a", &digits[..59])),
            Err(SafetyQrError::InvalidCharacter('a'))
        );
        // Not ASCII digits, though Unicode calls them digits.
        assert_eq!(
            code(&format!("dm-safety:1:{}\u{0663}", &digits[..59])),
            "invalid_character"
        );
    }

    #[test]
    fn group_code_depends_on_every_input() {
        let code = group_code(&[7; 16], 3, &[9; 32]);
        assert_eq!(code.len(), 23);
        assert_eq!(code.split(' ').count(), 4);
        assert_ne!(code, group_code(&[7; 16], 4, &[9; 32]));
        assert_ne!(code, group_code(&[8; 16], 3, &[9; 32]));
        assert_ne!(code, group_code(&[7; 16], 3, &[8; 32]));
    }
}
