//! Command-line syntax.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// End-to-end encrypted direct messages, without phone numbers.
///
/// Your account is a handle plus keys generated on this device. The relay only ever sees
/// ciphertext. The passphrase that protects the local store comes from DM_PASSPHRASE or a
/// hidden prompt.
#[derive(Debug, Parser)]
#[command(name = "dm", version, propagate_version = true)]
pub struct Cli {
    /// Directory holding this device's account (encrypted store). Default: the OS data
    /// directory, e.g. ~/.local/share/dm.
    #[arg(long, env = "DM_HOME", global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account and this device, register the handle at a relay.
    Init {
        /// Relay base URL, e.g. http://127.0.0.1:7878
        #[arg(long, value_name = "URL")]
        server: String,
        /// The handle to register (3-32 of a-z, 0-9, _; starts with a letter).
        #[arg(long, value_name = "NAME")]
        handle: String,
    },
    /// Send a text message, starting the conversation if there is none.
    Send {
        /// Recipient handle, with or without '@'.
        handle: String,
        /// The message text.
        text: String,
    },
    /// Fetch, decrypt and print new messages.
    Inbox {
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Interactive chat: type lines to send; incoming messages appear as they arrive.
    Chat {
        /// The other person's handle.
        handle: String,
    },
    /// Show this device's handle, device id, relay and account fingerprint.
    Whoami,
    /// Rotate this device's keys in the conversation with HANDLE (post-compromise security).
    RotateKeys {
        /// The other person's handle.
        handle: String,
    },
    /// Check or regenerate the protocol's published test vectors (tests/vectors/).
    #[command(subcommand)]
    Vectors(VectorsCommand),
}

/// `dm vectors ...`: the published test vectors (see PROTOCOL.md, "Test vectors").
#[derive(Debug, Subcommand)]
pub enum VectorsCommand {
    /// Check every vector file in DIR; prints "N passed, N failed" and fails if any failed.
    Verify {
        /// Directory of the vector files.
        #[arg(default_value = dm_vectors::DEFAULT_DIR, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Write the vector files into DIR, deterministically. A file with other bytes is
    /// replaced only with --force.
    Generate {
        /// Directory to write the vector files into.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Replace files whose bytes differ from the generated ones.
        #[arg(long)]
        force: bool,
    },
}
