//! HTTP handlers, one module per resource of [`dm_wire::api`].

pub mod accounts;
pub mod auth;
pub mod devices;
pub mod key_packages;
pub mod mailbox;
pub mod messages;
