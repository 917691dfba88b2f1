//! The sans-IO core of the `dm` end-to-end encrypted messenger.
//!
//! This crate performs no I/O: no sockets, no files, no clock. Randomness comes from the
//! caller (an RNG argument) or from the openmls [`provider::Provider`] the caller builds,
//! and time is passed in as numbers. It takes user intents and bytes from the relay, and
//! returns bytes to send and [`conversation::Event`]s.
//!
//! - [`identity`]: the account key and its recovery code.
//! - [`device`]: a device's MLS signature key and certificate, relay login proofs.
//! - [`key_package`]: key packages to upload, validation of claimed ones.
//! - [`directory`]: the authentication service (credentials against signed device lists).
//! - [`conversation`]: conversations on MLS groups: create, invite, commit, encrypt, process.
//! - [`group`]: group metadata and the membership policy.
//! - [`link`]: linking a new device with a one-time code.
//! - [`safety`]: safety numbers, group codes and key fingerprints.
//! - [`content`]: the versioned, padded application content format.
//! - [`config`]: the MLS parameters.
//!
//! Functions whose documentation says **mutates storage** write to the MLS storage through
//! the provider and may leave partial writes behind when they fail: run each inside a
//! storage transaction and roll it back on error.
#![forbid(unsafe_code)]

pub mod config;
pub mod content;
pub mod conversation;
pub mod device;
pub mod directory;
pub mod error;
pub mod group;
pub mod identity;
pub mod key_package;
pub mod link;
mod mls_errors;
pub mod provider;
pub mod safety;
#[cfg(test)]
mod test_support;

pub use content::{Body, Content, ContentError};
pub use conversation::{Conversation, Event, OutgoingCommit, process_incoming};
pub use device::Device;
pub use directory::{CredentialError, Directory};
pub use error::{Error, InvalidInput};
pub use identity::{AccountSecret, RecoveryCode, RecoveryCodeError};
pub use provider::{MemoryProvider, Provider};

/// Re-exported so that callers name the same types.
pub use dm_wire;
