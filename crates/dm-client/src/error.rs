//! The client's errors. Display messages say what happened; none contains a secret, a
//! token or message content.

use dm_wire::Handle;
use dm_wire::api::ErrorCode;

/// Everything a [`crate::Client`] call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `create` found an account in the home directory already.
    #[error("an account already exists in this home directory")]
    AccountExists,
    /// `open` found no account in the home directory.
    #[error("no account in this home directory")]
    NoAccount,
    /// The passphrase does not decrypt the local store (nothing was changed).
    #[error("wrong passphrase: the local store could not be decrypted")]
    WrongPassphrase,
    /// The relay has no account with this handle.
    #[error("{0} is not registered at this relay")]
    UnknownHandle(Handle),
    /// Registration failed: the handle belongs to someone else.
    #[error("{0} is already taken")]
    HandleTaken(Handle),
    /// The relay could not be reached (connection refused, DNS, timeout). Messages already
    /// queued stay in the outbox and are sent by a later call.
    #[error("the relay at {url} is unreachable")]
    RelayUnreachable {
        /// The relay's base URL.
        url: String,
    },
    /// The relay answered with an error.
    #[error("the relay refused the request ({}): {message}", code.as_str())]
    Relay {
        /// The relay's stable error code.
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
    },
    /// The account key of a contact differs from the one pinned on first contact; nothing
    /// is sent to or accepted from that account until this is resolved.
    #[error("the identity key of {0} changed since it was first seen; verify it before continuing")]
    IdentityKeyChanged(Handle),
    /// The peer has no device able to receive a first message (no key packages).
    #[error("{0} has no device that can receive messages right now")]
    NoDevices(Handle),
    /// No conversation with this account exists yet.
    #[error("no conversation with {0}")]
    NoConversation(Handle),
    /// The conversation changed while an operation was sent (another member's commit won);
    /// the operation was not applied.
    #[error("{0}")]
    Conflict(String),
    /// This device was revoked: it is no longer in its account's device list.
    #[error("this device was revoked from its account")]
    Revoked,
    /// Sending is refused: a contact's account key changed after it was verified.
    #[error(
        "the account key of {0} changed after you verified it; compare the new safety number (`dm verify {0}`) and confirm it before sending"
    )]
    VerifiedKeyChanged(Handle),
    /// The caller's input is not acceptable (for example a text that is too long).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A peer or the relay sent data that failed verification.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The local store failed.
    #[error("local store error: {0}")]
    Store(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<e2ee_core::Error> for Error {
    fn from(e: e2ee_core::Error) -> Self {
        use e2ee_core::directory::CredentialError;
        use e2ee_core::error::InvalidInput;
        match e {
            e2ee_core::Error::InvalidInput(InvalidInput::Credential(
                CredentialError::AccountKeyChanged(handle),
            )) => Error::IdentityKeyChanged(handle),
            e2ee_core::Error::InvalidInput(i) => Error::Protocol(i.to_string()),
            e2ee_core::Error::UnknownAccount(h) => {
                Error::Protocol(format!("no verified device list for {h}"))
            }
            e2ee_core::Error::Storage(s) => Error::Store(s),
            e2ee_core::Error::Misuse(m) => Error::Internal(m),
            e2ee_core::Error::Internal(m) => Error::Internal(m),
        }
    }
}
