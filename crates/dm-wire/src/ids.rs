//! Identifiers: handles, device ids, group ids and message ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;

/// An account's handle, such as `alice` (shown to people as `@alice`).
///
/// Syntax: 3 to 32 characters from `a-z`, `0-9` and `_`, starting with a letter. Parsing
/// accepts a leading `@` and upper-case letters, and normalises to the lower-case form
/// without `@`, which is the form stored, signed and sent on the wire.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(String);

impl Handle {
    /// Shortest allowed handle, in characters.
    pub const MIN_LEN: usize = 3;
    /// Longest allowed handle, in characters.
    pub const MAX_LEN: usize = 32;

    /// Parses and normalises a handle typed by a person (`@Alice` becomes `alice`).
    pub fn parse(input: &str) -> Result<Self, Error> {
        let trimmed = input.trim();
        let bare = trimmed.strip_prefix('@').unwrap_or(trimmed);
        Self::from_canonical(&bare.to_ascii_lowercase())
    }

    /// Accepts only the canonical form (lower case, no `@`), as found on the wire.
    pub fn from_canonical(s: &str) -> Result<Self, Error> {
        if s.len() < Self::MIN_LEN {
            return Err(Error::InvalidHandle("shorter than 3 characters"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(Error::InvalidHandle("longer than 32 characters"));
        }
        if !s.bytes().next().is_some_and(|b| b.is_ascii_lowercase()) {
            return Err(Error::InvalidHandle("must start with a letter"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::InvalidHandle(
                "only letters a-z, digits and '_' are allowed",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The canonical form (lower case, without `@`).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Handle {
    /// Displays the handle as people write it, with `@`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "@{}", self.0)
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Handle(@{})", self.0)
    }
}

impl FromStr for Handle {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

impl Serialize for Handle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_canonical(&s).map_err(serde::de::Error::custom)
    }
}

macro_rules! fixed_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// Wraps raw bytes.
            pub fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// Parses a byte slice of exactly the right length.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
                let arr: [u8; $len] = bytes
                    .try_into()
                    .map_err(|_| crate::error::malformed(stringify!($name), "wrong length"))?;
                Ok(Self(arr))
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lower-case hex, as used in JSON and URLs.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                let bytes = hex::decode(s)
                    .map_err(|_| crate::error::malformed(stringify!($name), "not hex"))?;
                Self::from_slice(&bytes)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

fixed_id!(
    /// A device's identifier: 16 random bytes chosen by the device, hex in JSON and URLs.
    DeviceId,
    16
);

fixed_id!(
    /// A message id chosen by the sender: 16 random bytes. The relay uses it (with the
    /// sending device) to make retries idempotent; clients use the id inside the encrypted
    /// content to recognise duplicates.
    MessageId,
    16
);

/// An MLS group id (random, chosen by the group's creator); hex in JSON and URLs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub Vec<u8>);

impl GroupId {
    /// Longest group id accepted, in bytes.
    pub const MAX_LEN: usize = 64;

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({})", self.to_hex())
    }
}

impl FromStr for GroupId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bytes = hex::decode(s).map_err(|_| crate::error::malformed("GroupId", "not hex"))?;
        if bytes.is_empty() || bytes.len() > Self::MAX_LEN {
            return Err(crate::error::malformed("GroupId", "wrong length"));
        }
        Ok(Self(bytes))
    }
}

impl Serialize for GroupId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for GroupId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_normalised_and_checked() {
        assert_eq!(Handle::parse("@Alice").unwrap().as_str(), "alice");
        assert_eq!(Handle::parse("bob_42").unwrap().to_string(), "@bob_42");
        for bad in [
            "",
            "ab",
            "1abc",
            "_abc",
            "al ice",
            "al-ice",
            "ålice",
            &"a".repeat(33),
        ] {
            assert!(Handle::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Handle::from_canonical("Alice").is_err());
        assert!(Handle::from_canonical("@alice").is_err());
    }

    #[test]
    fn ids_round_trip_through_hex_and_json() {
        let id = DeviceId([7; 16]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", "07".repeat(16)));
        assert_eq!(serde_json::from_str::<DeviceId>(&json).unwrap(), id);
        assert!("0707".parse::<DeviceId>().is_err());
        assert!("zz".repeat(16).parse::<DeviceId>().is_err());
        let g: GroupId = "00ff".parse().unwrap();
        assert_eq!(g.as_bytes(), &[0, 255]);
        assert!("".parse::<GroupId>().is_err());
    }
}
