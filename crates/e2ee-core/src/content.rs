//! Application content: what an MLS application message carries, versioned and padded.
//!
//! # Format (version 1)
//!
//! ```text
//! Content = version(u8 = 1)
//!           kind(u8)              1 = text
//!           message_id[16]        chosen by the sender, unique: receivers drop duplicates
//!           sent_at(u64, BE)      sender's clock, unix milliseconds (a claim, not verified)
//!           body_len(u32, BE)
//!           body[body_len]        kind 1: UTF-8 text, at most 65,536 bytes
//!           padding               zero bytes up to the next multiple of 256 bytes
//! ```
//!
//! The padding hides the exact length of short messages from anyone who sees ciphertext
//! sizes (the relay). It is the smallest run of zeros (0 to 255 bytes) that makes the total
//! length a multiple of 256. A decoder rejects an unknown version or kind, a truncated
//! structure, a body that is not UTF-8 or too long, a non-zero padding byte, and padding
//! that is not exactly that length.
//!
//! Later kinds (replies, reactions, edits, deletes, receipts, attachments) get new `kind`
//! values, following the IETF MIMI content format.

use dm_wire::MessageId;

/// Version byte of the content format.
pub const CONTENT_VERSION: u8 = 1;
/// Kind byte of a text message.
pub const KIND_TEXT: u8 = 1;
/// Longest text body, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Encoded content is padded to a multiple of this many bytes.
pub const PADDING_BLOCK: usize = 256;
/// Bytes before the body: version, kind, message id, sent_at, body_len.
const HEADER_LEN: usize = 1 + 1 + 16 + 8 + 4;

/// A decoded application message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content {
    /// The sender's id for this message.
    pub message_id: MessageId,
    /// When the sender says it sent the message (unix milliseconds).
    pub sent_at_ms: u64,
    /// What the message says.
    pub body: Body,
}

/// The body of a message, by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Body {
    /// A text message (kind 1).
    Text(String),
}

/// Why content could not be encoded or decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// Unknown format version.
    #[error("unsupported content version {0}")]
    UnsupportedVersion(u8),
    /// Unknown content kind.
    #[error("unknown content kind {0}")]
    UnknownKind(u8),
    /// The content ends early.
    #[error("content is truncated")]
    Truncated,
    /// The text is not UTF-8.
    #[error("text is not valid UTF-8")]
    BadUtf8,
    /// The text exceeds [`MAX_TEXT_BYTES`].
    #[error("text is longer than {MAX_TEXT_BYTES} bytes")]
    TooLong,
    /// A padding byte is not zero.
    #[error("non-zero padding")]
    NonZeroPadding,
    /// The padding does not end the content at the next multiple of 256 bytes.
    #[error("wrong padding length")]
    BadPaddingLength,
}

impl ContentError {
    /// Stable code of the error, as named by the published test vectors
    /// (`tests/vectors/content.json`).
    pub fn code(&self) -> &'static str {
        match self {
            ContentError::UnsupportedVersion(_) => "unsupported_version",
            ContentError::UnknownKind(_) => "unknown_kind",
            ContentError::Truncated => "truncated",
            ContentError::BadUtf8 => "bad_utf8",
            ContentError::TooLong => "too_long",
            ContentError::NonZeroPadding => "non_zero_padding",
            ContentError::BadPaddingLength => "bad_padding_length",
        }
    }
}

impl Content {
    /// A text message.
    pub fn text(message_id: MessageId, sent_at_ms: u64, text: impl Into<String>) -> Self {
        Self {
            message_id,
            sent_at_ms,
            body: Body::Text(text.into()),
        }
    }

    /// The text, if this is a text message.
    pub fn as_text(&self) -> Option<&str> {
        match &self.body {
            Body::Text(t) => Some(t),
        }
    }

    /// Encodes and pads the content. Fails only if the text is too long.
    pub fn encode(&self) -> Result<Vec<u8>, ContentError> {
        let (kind, body) = match &self.body {
            Body::Text(t) => (KIND_TEXT, t.as_bytes()),
        };
        if body.len() > MAX_TEXT_BYTES {
            return Err(ContentError::TooLong);
        }
        let used = HEADER_LEN + body.len();
        let total = used.div_ceil(PADDING_BLOCK) * PADDING_BLOCK;
        let mut out = Vec::with_capacity(total);
        out.push(CONTENT_VERSION);
        out.push(kind);
        out.extend_from_slice(self.message_id.as_bytes());
        out.extend_from_slice(&self.sent_at_ms.to_be_bytes());
        // body.len() <= MAX_TEXT_BYTES, which fits in u32.
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(body);
        out.resize(total, 0);
        Ok(out)
    }

    /// Decodes padded content, rejecting anything not produced by [`Content::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ContentError> {
        let version = *bytes.first().ok_or(ContentError::Truncated)?;
        if version != CONTENT_VERSION {
            return Err(ContentError::UnsupportedVersion(version));
        }
        let kind = *bytes.get(1).ok_or(ContentError::Truncated)?;
        if kind != KIND_TEXT {
            return Err(ContentError::UnknownKind(kind));
        }
        if bytes.len() < HEADER_LEN {
            return Err(ContentError::Truncated);
        }
        let message_id =
            MessageId::from_slice(&bytes[2..18]).map_err(|_| ContentError::Truncated)?;
        let mut sent_at = [0u8; 8];
        sent_at.copy_from_slice(&bytes[18..26]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&bytes[26..30]);
        let body_len = u32::from_be_bytes(len) as usize;
        if body_len > MAX_TEXT_BYTES {
            return Err(ContentError::TooLong);
        }
        let body_end = HEADER_LEN + body_len;
        let body = bytes
            .get(HEADER_LEN..body_end)
            .ok_or(ContentError::Truncated)?;
        let padding = &bytes[body_end..];
        if padding.iter().any(|&b| b != 0) {
            return Err(ContentError::NonZeroPadding);
        }
        if bytes.len() != body_end.div_ceil(PADDING_BLOCK) * PADDING_BLOCK {
            return Err(ContentError::BadPaddingLength);
        }
        let text = std::str::from_utf8(body).map_err(|_| ContentError::BadUtf8)?;
        Ok(Self {
            message_id,
            sent_at_ms: u64::from_be_bytes(sent_at),
            body: Body::Text(text.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str) -> Content {
        Content::text(MessageId([0xab; 16]), 1_700_000_000_123, text)
    }

    #[test]
    fn round_trips_and_pads_to_256() {
        for len in [0, 1, 225, 226, 227, 1000, MAX_TEXT_BYTES] {
            let c = sample(&"x".repeat(len));
            let bytes = c.encode().unwrap();
            assert_eq!(bytes.len() % PADDING_BLOCK, 0, "len {len}");
            assert!(bytes.len() - (HEADER_LEN + len) < PADDING_BLOCK);
            assert_eq!(Content::decode(&bytes).unwrap(), c);
        }
        // 226 bytes of text fill exactly one block: no padding at all.
        assert_eq!(sample(&"x".repeat(226)).encode().unwrap().len(), 256);
        assert_eq!(sample(&"x".repeat(227)).encode().unwrap().len(), 512);
        let unicode = sample("héllo 👋");
        assert_eq!(
            Content::decode(&unicode.encode().unwrap()).unwrap(),
            unicode
        );
    }

    #[test]
    fn exact_layout() {
        let bytes = sample("hi").encode().unwrap();
        assert_eq!(bytes[0], 1);
        assert_eq!(bytes[1], 1);
        assert_eq!(&bytes[2..18], &[0xab; 16]);
        assert_eq!(&bytes[18..26], &1_700_000_000_123u64.to_be_bytes());
        assert_eq!(&bytes[26..30], &[0, 0, 0, 2]);
        assert_eq!(&bytes[30..32], b"hi");
        assert!(bytes[32..].iter().all(|&b| b == 0));
    }

    #[test]
    fn rejects_every_malformation() {
        let good = sample("hello").encode().unwrap();
        let decode = |b: &[u8]| Content::decode(b).unwrap_err();

        assert_eq!(decode(&[]), ContentError::Truncated);
        let mut b = good.clone();
        b[0] = 2;
        assert_eq!(decode(&b), ContentError::UnsupportedVersion(2));
        let mut b = good.clone();
        b[1] = 9;
        assert_eq!(decode(&b), ContentError::UnknownKind(9));
        assert_eq!(decode(&good[..20]), ContentError::Truncated);
        // Body length beyond the end.
        let mut b = good.clone();
        b[26..30].copy_from_slice(&300u32.to_be_bytes());
        assert_eq!(decode(&b), ContentError::Truncated);
        // Body length above the limit.
        let mut b = good.clone();
        b[26..30].copy_from_slice(&(MAX_TEXT_BYTES as u32 + 1).to_be_bytes());
        assert_eq!(decode(&b), ContentError::TooLong);
        // Bad UTF-8.
        let mut b = good.clone();
        b[30] = 0xff;
        assert_eq!(decode(&b), ContentError::BadUtf8);
        // Non-zero padding.
        let mut b = good.clone();
        *b.last_mut().unwrap() = 1;
        assert_eq!(decode(&b), ContentError::NonZeroPadding);
        // Padding too short, too long, or missing.
        assert_eq!(
            decode(&good[..good.len() - 1]),
            ContentError::BadPaddingLength
        );
        let mut b = good.clone();
        b.extend_from_slice(&[0; 256]);
        assert_eq!(decode(&b), ContentError::BadPaddingLength);
        assert_eq!(decode(&good[..35]), ContentError::BadPaddingLength);
        // Encoding refuses an over-long text.
        assert_eq!(
            sample(&"x".repeat(MAX_TEXT_BYTES + 1))
                .encode()
                .unwrap_err(),
            ContentError::TooLong
        );
    }
}
