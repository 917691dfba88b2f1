//! Group conversations: their metadata and who may change their membership.
//!
//! A group conversation carries a [`GroupMeta`] in its MLS group context (extension type
//! [`crate::config::GROUP_META_EXTENSION`]), set by the creator: the administrator's handle
//! and the group's name. Every member reads the same value (the group context is agreed by
//! the key schedule) and the relay never sees it (it travels inside Welcomes and encrypted
//! commits). A 1:1 conversation has no metadata.
//!
//! # Membership policy, checked by every member on every commit
//!
//! * **Add** a device of account X: allowed if X already has a device in the conversation
//!   (a linked or recovered device joins its account's conversations), or if the committer
//!   is the group's administrator. In a 1:1 conversation no new account can be added.
//! * **Remove** a device D of account X: allowed if D is no longer in X's device list
//!   (revoked, or X's account was re-created), or if the committer belongs to X, or if the
//!   removal was proposed by a device of X (X leaves), or if the committer is the group's
//!   administrator.
//! * Every added device, every updated leaf and the committer are checked against their
//!   accounts' signed device lists (see [`crate::directory`]).

use dm_wire::Handle;

use crate::error::Error;

/// Version byte of [`GroupMeta`].
pub const META_VERSION: u8 = 1;
/// Longest group name, in bytes (UTF-8).
pub const MAX_NAME_BYTES: usize = 64;

/// The metadata of a group conversation.
///
/// ```text
/// struct {
///     uint8  version = 1;
///     opaque admin<u8>;   // canonical handle of the administrator
///     opaque name<u8>;    // UTF-8, 1 to 64 bytes, no control characters
/// } GroupMeta;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMeta {
    /// The account that may add and remove members.
    pub admin: Handle,
    /// The group's name, chosen by its creator.
    pub name: String,
}

impl GroupMeta {
    /// Checks a name typed by a person.
    pub fn check_name(name: &str) -> Result<(), Error> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(Error::misuse(format!(
                "a group name has 1 to {MAX_NAME_BYTES} bytes"
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(Error::misuse(
                "a group name cannot contain control characters",
            ));
        }
        Ok(())
    }

    /// The encoding above.
    pub fn encode(&self) -> Vec<u8> {
        let admin = self.admin.as_str().as_bytes();
        let mut out = Vec::with_capacity(3 + admin.len() + self.name.len());
        out.push(META_VERSION);
        out.push(admin.len() as u8);
        out.extend_from_slice(admin);
        out.push(self.name.len() as u8);
        out.extend_from_slice(self.name.as_bytes());
        out
    }

    /// Decodes and checks the metadata.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let bad = |why: &str| Error::malformed("group metadata", why);
        let (&version, rest) = bytes.split_first().ok_or_else(|| bad("empty"))?;
        if version != META_VERSION {
            return Err(bad("unsupported version"));
        }
        let (admin, rest) = vec8(rest).ok_or_else(|| bad("truncated"))?;
        let (name, rest) = vec8(rest).ok_or_else(|| bad("truncated"))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let admin = std::str::from_utf8(admin)
            .ok()
            .and_then(|a| Handle::from_canonical(a).ok())
            .ok_or_else(|| bad("invalid administrator handle"))?;
        let name = String::from_utf8(name.to_vec()).map_err(|_| bad("name is not UTF-8"))?;
        Self::check_name(&name).map_err(|_| bad("invalid name"))?;
        Ok(Self { admin, name })
    }
}

fn vec8(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let len = usize::from(len);
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_rejects_garbage() {
        let meta = GroupMeta {
            admin: Handle::parse("alice").unwrap(),
            name: "climbing 🧗".into(),
        };
        let bytes = meta.encode();
        assert_eq!(bytes[0], 1);
        assert_eq!(GroupMeta::decode(&bytes).unwrap(), meta);
        assert!(GroupMeta::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(GroupMeta::decode(&trailing).is_err());
        assert!(GroupMeta::decode(&[2]).is_err());
        assert!(GroupMeta::check_name("").is_err());
        assert!(GroupMeta::check_name(&"x".repeat(65)).is_err());
        assert!(GroupMeta::check_name("a\nb").is_err());
    }
}
