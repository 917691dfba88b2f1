//! Deterministic inputs: every key and id of the vectors is derived from a fixed label.

use sha2::{Digest, Sha256};

/// `SHA-256("dm-vectors/v1/" || label)`: the 32-byte seed named `label`.
pub(crate) fn bytes32(label: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"dm-vectors/v1/");
    h.update(label.as_bytes());
    h.finalize().into()
}

/// The first 16 bytes of [`bytes32`].
pub(crate) fn bytes16(label: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    out.copy_from_slice(&bytes32(label)[..16]);
    out
}

/// `n` bytes: the concatenation of `bytes32(label/0)`, `bytes32(label/1)`, ...
pub(crate) fn bytes(label: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut i = 0;
    while out.len() < n {
        out.extend_from_slice(&bytes32(&format!("{label}/{i}")));
        i += 1;
    }
    out.truncate(n);
    out
}
