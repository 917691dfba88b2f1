//! The async SDK of the `dm` end-to-end encrypted messenger: what an app or the CLI embeds.
//!
//! A [`Client`] is one account on this device. It keeps everything in one SQLCipher-encrypted
//! SQLite file (`HOME/store.db`: SQLCipher with a raw 32-byte key from
//! Argon2id(passphrase, m=64 MiB, t=3, p=1); the salt and parameters, nothing secret, are in
//! `HOME/store.json`), talks to the relay over HTTP (`dm_wire::api`), and runs the
//! MLS work of `e2ee_core` on the blocking thread pool. Only MLS ciphertext leaves the
//! client; nothing on disk is readable without the passphrase.
//!
//! ```no_run
//! # async fn demo() -> Result<(), dm_client::Error> {
//! use dm_client::{Client, CreateOptions, Handle};
//! let (alice, recovery_code) = Client::create(CreateOptions {
//!     home: "/tmp/alice".into(),
//!     server: "http://127.0.0.1:7878".into(),
//!     handle: Handle::parse("alice").expect("valid handle"),
//!     passphrase: "correct horse battery staple".into(),
//! })
//! .await?;
//! println!("write this down: {recovery_code}");
//! alice.send(&Handle::parse("bob").expect("valid handle"), "hi bob").await?;
//! for event in alice.sync().await? {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

#[macro_use]
mod macros;

mod client;
mod db;
mod devices;
pub mod error;
pub mod events;
mod groups;
mod inbox;
mod outbox;
mod push;
mod schema;
mod store;
pub mod store_key;
mod transport;

#[cfg(test)]
mod tests;

pub use client::{Client, CreateOptions};
pub use devices::PendingDeviceLink;
pub use dm_wire::api::ErrorCode;
pub use dm_wire::{DeviceId, GroupId, Handle, MessageId};
pub use e2ee_core::RecoveryCode;
pub use error::Error;
pub use events::{
    ConversationInfo, DeviceInfo, Event, EventBatch, LinkApproval, ReceivedMessage, SentMessage,
    StoredMessage, Verification, WhoAmI,
};
pub use groups::Target;
pub use push::{Live, LiveMode};
