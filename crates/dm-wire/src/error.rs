//! Errors raised while decoding or verifying wire formats.

/// A wire format could not be decoded or verified.
///
/// Each variant maps to a stable, machine-readable [`Error::code`], which the relay returns
/// in its JSON errors and the test vectors name as the expected error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A handle does not follow the handle syntax.
    #[error("invalid handle: {0}")]
    InvalidHandle(&'static str),
    /// A structure ended early, had trailing bytes or a field out of range.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// What was wrong with it.
        why: &'static str,
    },
    /// A structure carries a version this implementation does not know.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// Which structure.
        what: &'static str,
        /// The version found.
        version: u8,
    },
    /// A signature did not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// Fields that must agree do not (for example a certificate of another account).
    #[error("inconsistent {0}")]
    Inconsistent(&'static str),
}

impl Error {
    /// The stable error code of this error (used by the relay's JSON errors and by the
    /// negative test vectors).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidHandle(_) => "invalid_handle",
            Error::Malformed { .. } => "malformed",
            Error::UnsupportedVersion { .. } => "unsupported_version",
            Error::BadSignature(_) => "bad_signature",
            Error::Inconsistent(_) => "inconsistent",
        }
    }
}

pub(crate) fn malformed(what: &'static str, why: &'static str) -> Error {
    Error::Malformed { what, why }
}
