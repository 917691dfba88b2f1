//! Wire formats shared by the `dm` clients and the blind relay.
//!
//! Everything that crosses the network or is signed lives here, so that the relay
//! (`dm-server`), the client core (`e2ee-core`) and independent implementations agree on
//! every byte. PROTOCOL.md in the repository root is the normative description; this crate
//! is its reference implementation. It performs no I/O.
//!
//! - [`ids`]: handles, device ids, group ids, message ids.
//! - [`cert`]: account keys, device certificates and signed device lists.
//! - [`auth`]: the byte strings a device signs to register and to open a session.
//! - [`credential`]: the identity carried in a device's MLS `BasicCredential`.
//! - [`api`]: the JSON bodies of the relay's HTTP API, error codes and limits.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod b64;
pub mod cert;
pub mod credential;
mod encoding;
pub mod error;
pub mod ids;

pub use error::Error;
pub use ids::{DeviceId, GroupId, Handle, MessageId};
