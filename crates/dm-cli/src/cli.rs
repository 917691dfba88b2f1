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
        /// Restore an existing account on this new device from its recovery code (read
        /// from DM_RECOVERY_CODE or the terminal).
        #[arg(long)]
        recover: bool,
    },
    /// Send a text message: to @handle (1:1, started if needed), or to a group by id or name.
    Send {
        /// Recipient: @handle, a group's id, or a group's name.
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
    /// Link, approve, list and revoke this account's devices.
    Device {
        /// What to do.
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Show the safety number shared with HANDLE (compare it in person), or a group's code.
    Verify {
        /// The contact's handle.
        #[arg(required_unless_present = "group")]
        handle: Option<String>,
        /// Mark the contact's key as verified (after comparing the safety number).
        #[arg(long, requires = "handle")]
        confirm: bool,
        /// Show the code of a group conversation instead (all members compare it).
        #[arg(long, value_name = "ID", conflicts_with = "handle")]
        group: Option<String>,
    },
    /// Create and manage group conversations.
    Group {
        /// What to do.
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// List conversations with their members.
    Conversations {
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Rejoin every conversation under a new device identity (when this device is out of
    /// sync; happens by itself after the relay refused messages for a full mailbox).
    Rejoin,
    /// Delete this account at the relay (all its devices); the handle becomes free.
    DeleteAccount {
        /// Confirm without asking.
        #[arg(long)]
        yes: bool,
    },
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

/// `dm device …`
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// On a NEW device: print a one-time link code and wait for an existing device to
    /// approve it.
    Link {
        /// Relay base URL, e.g. http://127.0.0.1:7878
        #[arg(long, value_name = "URL")]
        server: String,
        /// Seconds to wait for the approval.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// On an existing device: approve the new device showing CODE.
    Approve {
        /// The code the new device shows.
        code: String,
        /// Approve without asking (after comparing the fingerprint).
        #[arg(long)]
        yes: bool,
        /// Seconds to wait for the new device to come online and join the conversations.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// List this account's devices with fingerprints and last activity.
    List,
    /// Revoke a device: it leaves every conversation and can no longer log in.
    Revoke {
        /// The device id (see `dm device list`).
        id: String,
    },
}

/// `dm group …`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group you administer.
    Create {
        /// The group's name.
        name: String,
        /// The members' handles.
        #[arg(required = true)]
        handles: Vec<String>,
    },
    /// Add people to a group you administer.
    Add {
        /// The group's id or name.
        id: String,
        /// The handles to add.
        #[arg(required = true)]
        handles: Vec<String>,
    },
    /// Remove someone from a group you administer.
    Remove {
        /// The group's id or name.
        id: String,
        /// The handle to remove.
        handle: String,
    },
    /// Leave a group.
    Leave {
        /// The group's id or name.
        id: String,
    },
}
