//! Errors, in categories the caller can act on.
//!
//! * [`Error::InvalidInput`]: a peer or the relay sent something malformed, forged, or that
//!   does not fit the local state. The input must be dropped; retrying it cannot help.
//! * [`Error::UnknownAccount`]: the authentication service has no device list for an
//!   account. Fetch it from the relay, verify it against the pinned account key, and retry.
//! * [`Error::Storage`]: the MLS storage (or the caller's directory) failed. openmls may have
//!   written part of an operation: roll the storage back (dm-client runs every mutating call
//!   in one SQLite transaction).
//! * [`Error::Misuse`]: the caller asked for something the state does not allow (for
//!   example a commit while another is pending, or an unknown group).
//! * [`Error::Internal`]: a bug or a failed cryptographic primitive.

use dm_wire::Handle;

use crate::content::ContentError;
use crate::directory::CredentialError;

/// Everything e2ee-core can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Input from a peer or the relay was rejected.
    #[error("invalid input: {0}")]
    InvalidInput(#[from] InvalidInput),
    /// No device list is known for this account: fetch it, verify it, retry.
    #[error("no verified device list is known for {0}")]
    UnknownAccount(Handle),
    /// The storage failed; roll back whatever the call wrote.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The call does not fit the current state.
    #[error("API misuse: {0}")]
    Misuse(String),
    /// A bug, or a cryptographic primitive failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Why input from a peer or the relay was rejected.
#[derive(Debug, thiserror::Error)]
pub enum InvalidInput {
    /// The bytes do not decode as the expected structure.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// What was wrong.
        why: String,
    },
    /// openmls rejected the message (bad signature, wrong epoch, cannot decrypt, ...).
    #[error("MLS rejected the message: {0}")]
    Mls(String),
    /// A credential failed the authentication service's checks.
    #[error("credential rejected: {0}")]
    Credential(#[from] CredentialError),
    /// The decrypted application content is not valid.
    #[error("invalid content: {0}")]
    Content(#[from] ContentError),
    /// The message is valid MLS but not allowed by this protocol.
    #[error("not allowed: {0}")]
    NotAllowed(&'static str),
}

impl Error {
    /// Shorthand for [`InvalidInput::Malformed`].
    pub fn malformed(what: &'static str, why: impl ToString) -> Self {
        Error::InvalidInput(InvalidInput::Malformed {
            what,
            why: why.to_string(),
        })
    }

    /// Shorthand for [`InvalidInput::Mls`].
    pub fn mls(err: impl std::fmt::Display) -> Self {
        Error::InvalidInput(InvalidInput::Mls(err.to_string()))
    }

    /// Shorthand for [`InvalidInput::NotAllowed`].
    pub fn not_allowed(why: &'static str) -> Self {
        Error::InvalidInput(InvalidInput::NotAllowed(why))
    }

    /// Shorthand for [`Error::Storage`].
    pub fn storage(err: impl std::fmt::Display) -> Self {
        Error::Storage(err.to_string())
    }

    /// Shorthand for [`Error::Misuse`].
    pub fn misuse(what: impl ToString) -> Self {
        Error::Misuse(what.to_string())
    }

    /// Shorthand for [`Error::Internal`].
    pub fn internal(err: impl std::fmt::Display) -> Self {
        Error::Internal(err.to_string())
    }

    /// Whether the error was caused by the input (drop the input, do not retry it).
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, Error::InvalidInput(_))
    }
}

impl From<CredentialError> for Error {
    fn from(e: CredentialError) -> Self {
        Error::InvalidInput(InvalidInput::Credential(e))
    }
}

impl From<ContentError> for Error {
    fn from(e: ContentError) -> Self {
        Error::InvalidInput(InvalidInput::Content(e))
    }
}
