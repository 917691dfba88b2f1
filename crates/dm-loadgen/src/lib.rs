//! Load generator for the dm relay, and the raw HTTP client it is built on.
//!
//! `dm-loadgen` starts a real `dm-server` (pinned to one core, on a fresh SQLite file or
//! PostgreSQL database, durable in both), pins itself to another core, and drives the
//! relay's real HTTP and WebSocket API over loopback: senders post 1 KiB MLS messages,
//! recipients receive them on their push sockets and acknowledge them. See BENCHMARKS.md
//! for the command and the figures, and [`load`] for how payloads and latencies are made.
#![forbid(unsafe_code)]

pub mod load;
pub mod raw;
pub mod server;
pub mod sockets;
