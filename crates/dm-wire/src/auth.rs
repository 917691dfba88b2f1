//! What a device signs to register an account and to open a session with the relay.
//!
//! ```text
//! RegistrationProof = Ed25519(device key, "dm-e2ee/v1/register-device" 0x00 DeviceList)
//! SessionProof      = Ed25519(device key, "dm-e2ee/v1/session" 0x00
//!                             handle<u8> device_id[16] challenge[32])
//! ```
//! The challenge is 32 random bytes issued by the relay, valid once and for a short time,
//! so a captured session request cannot be replayed.

use crate::encoding::Writer;
use crate::ids::{DeviceId, Handle};

/// Signature label of the registration proof of possession.
pub const REGISTRATION_LABEL: &[u8] = b"dm-e2ee/v1/register-device";
/// Signature label of a session (login) proof.
pub const SESSION_LABEL: &[u8] = b"dm-e2ee/v1/session";
/// Length of a relay challenge, in bytes.
pub const CHALLENGE_LEN: usize = 32;

/// The body signed (after `REGISTRATION_LABEL 0x00`) to prove possession of the device key
/// at registration or when a device is added: the encoded device list.
pub fn registration_body(encoded_device_list: &[u8]) -> Vec<u8> {
    encoded_device_list.to_vec()
}

/// The body signed (after `SESSION_LABEL 0x00`) to obtain a session token.
pub fn session_body(
    handle: &Handle,
    device_id: &DeviceId,
    challenge: &[u8; CHALLENGE_LEN],
) -> Vec<u8> {
    let mut w = Writer::default();
    w.vec8(handle.as_str().as_bytes())
        .bytes(&device_id.0)
        .bytes(challenge);
    w.0
}
