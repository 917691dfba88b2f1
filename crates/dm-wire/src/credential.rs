//! The identity inside a device's MLS `BasicCredential`.
//!
//! ```text
//! CredentialIdentity = version(u8 = 1) handle<u8> device_id[16]
//! ```
//! The credential's signature key must equal the `device_key` of that device's certificate
//! in the account's current signed device list; members check this on join and on every
//! commit (openmls verifies signatures, never identities).

use crate::cert::parse_handle;
use crate::encoding::{Reader, Writer};
use crate::error::Error;
use crate::ids::{DeviceId, Handle};

/// Version byte of [`CredentialIdentity`].
pub const CREDENTIAL_VERSION: u8 = 1;

/// Which device of which account an MLS leaf belongs to.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct CredentialIdentity {
    /// The account.
    pub handle: Handle,
    /// The device.
    pub device_id: DeviceId,
}

impl CredentialIdentity {
    /// The bytes placed in `BasicCredential.identity`.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(CREDENTIAL_VERSION)
            .vec8(self.handle.as_str().as_bytes())
            .bytes(&self.device_id.0);
        w.0
    }

    /// Parses `BasicCredential.identity`.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let mut r = Reader::new(bytes, "credential identity");
        let version = r.u8()?;
        if version != CREDENTIAL_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "credential identity",
                version,
            });
        }
        let handle = parse_handle(r.vec8()?)?;
        let device_id = DeviceId(r.array()?);
        r.finish()?;
        Ok(Self { handle, device_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_trailing_bytes() {
        let id = CredentialIdentity {
            handle: Handle::parse("bob").unwrap(),
            device_id: DeviceId([9; 16]),
        };
        let mut bytes = id.encode();
        assert_eq!(CredentialIdentity::decode(&bytes).unwrap(), id);
        bytes.push(0);
        assert_eq!(
            CredentialIdentity::decode(&bytes).unwrap_err().code(),
            "malformed"
        );
    }
}
