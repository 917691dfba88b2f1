//! `content.json`: the plaintext of every application message, with its padding
//! (PROTOCOL.md §4).

use dm_wire::MessageId;
use e2ee_core::content::{CONTENT_VERSION, KIND_TEXT, MAX_TEXT_BYTES, PADDING_BLOCK};
use e2ee_core::{Content, ContentError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{array, hexbytes};
use crate::craft::Bytes;
use crate::{Case, Cases, Category, Rejection, expect_eq, negative, parse, seed, to_value};

pub(super) const CATEGORY: Category = Category {
    name: "content",
    description: "Application content version 1: version(u8 = 1) kind(u8; 1 = text) \
                  message_id[16] sent_at(u64, unix ms) body_len(u32) body[body_len] then zero \
                  padding, the fewest zero bytes (0 to 255) that make the whole a multiple of \
                  256 bytes. This is the MLS application_data of every application message. \
                  Positive cases give the fields and the exact encoding (text as a JSON string \
                  and as UTF-8 hex); negative cases are plaintexts a receiver must reject.",
    spec: "PROTOCOL.md §4",
    format_version: CONTENT_VERSION as u32,
    generate,
    verify,
};

#[derive(Serialize, Deserialize)]
struct Positive {
    name: String,
    kind: u8,
    #[serde(with = "hexbytes")]
    message_id: Vec<u8>,
    sent_at_ms: u64,
    text: String,
    #[serde(with = "hexbytes")]
    text_utf8: Vec<u8>,
    body_len: u32,
    padding_len: u32,
    #[serde(with = "hexbytes")]
    content: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Negative {
    #[serde(with = "hexbytes")]
    content: Vec<u8>,
}

/// Bytes before the body.
const HEADER_LEN: usize = 30;

fn positive(name: &str, sent_at_ms: u64, text: String) -> Result<Value, String> {
    let message_id = MessageId(seed::bytes16(&format!("content/{name}")));
    let content = Content::text(message_id, sent_at_ms, text.clone())
        .encode()
        .map_err(|e| e.to_string())?;
    let body_len = text.len();
    to_value(&Positive {
        name: name.into(),
        kind: KIND_TEXT,
        message_id: message_id.0.to_vec(),
        sent_at_ms,
        text_utf8: text.as_bytes().to_vec(),
        text,
        body_len: body_len as u32,
        padding_len: (content.len() - HEADER_LEN - body_len) as u32,
        content,
    })
}

fn generate() -> Result<Cases, String> {
    let mut cases = Cases::default();
    let t = 1_700_000_000_123;
    cases
        .positive
        .push(positive("empty_text", t, String::new())?);
    cases.positive.push(positive("hi", t + 1, "hi".into())?);
    cases
        .positive
        .push(positive("unicode", t + 2, "héllo wörld 👋 — 你好".into())?);
    cases.positive.push(positive(
        "fills_one_block_exactly",
        t + 3,
        "x".repeat(PADDING_BLOCK - HEADER_LEN),
    )?);
    cases.positive.push(positive(
        "one_byte_into_the_second_block",
        t + 4,
        "y".repeat(PADDING_BLOCK - HEADER_LEN + 1),
    )?);
    cases.positive.push(positive(
        "line_breaks_and_controls",
        0,
        "line 1\nline 2\r\n\ttabbed\u{0}nul".into(),
    )?);
    cases.positive.push(positive(
        "longest_text",
        u64::from(u32::MAX),
        "z".repeat(MAX_TEXT_BYTES),
    )?);

    let id = seed::bytes16("content/negative");
    let header = |version: u8, kind: u8, body_len: u32| {
        Bytes::default()
            .u8(version)
            .u8(kind)
            .raw(&id)
            .u64(t)
            .raw(&body_len.to_be_bytes())
    };
    let padded = |b: Bytes| {
        let mut v = b.0;
        let total = v.len().div_ceil(PADDING_BLOCK) * PADDING_BLOCK;
        v.resize(total, 0);
        v
    };
    let good = padded(header(1, 1, 5).raw(b"hello"));
    let mut add = |name: &str, defect: &str, error: &str, content: Vec<u8>| -> Result<(), String> {
        cases
            .negative
            .push(negative(name, defect, error, &Negative { content })?);
        Ok(())
    };
    add(
        "version_2",
        "the version byte is 2",
        "unsupported_version",
        padded(header(2, 1, 5).raw(b"hello")),
    )?;
    add(
        "version_0",
        "the version byte is 0",
        "unsupported_version",
        padded(header(0, 1, 5).raw(b"hello")),
    )?;
    add(
        "kind_2",
        "the kind byte is 2 (not defined in version 1)",
        "unknown_kind",
        padded(header(1, 2, 5).raw(b"hello")),
    )?;
    add("empty", "no bytes at all", "truncated", Vec::new())?;
    add(
        "header_cut",
        "the content ends after 20 bytes, inside the header",
        "truncated",
        good[..20].to_vec(),
    )?;
    add(
        "body_len_beyond_end",
        "body_len is 300 in a 256-byte content",
        "truncated",
        padded(header(1, 1, 300).raw(b"hello")),
    )?;
    add(
        "body_len_over_limit",
        "body_len is 65,537 (one more than the maximum)",
        "too_long",
        padded(header(1, 1, (MAX_TEXT_BYTES + 1) as u32).raw(&vec![b'a'; MAX_TEXT_BYTES + 1])),
    )?;
    add(
        "body_not_utf8",
        "the body's first byte is 0xff",
        "bad_utf8",
        padded(header(1, 1, 5).raw(b"\xffello")),
    )?;
    add(
        "body_truncated_utf8",
        "the body ends inside a multi-byte UTF-8 sequence (e2 82 of the euro sign)",
        "bad_utf8",
        padded(header(1, 1, 2).raw(&[0xe2, 0x82])),
    )?;
    add(
        "non_zero_padding_byte",
        "the last padding byte is 0x01",
        "non_zero_padding",
        {
            let mut b = good.clone();
            let n = b.len();
            b[n - 1] = 1;
            b
        },
    )?;
    add(
        "padding_one_byte_short",
        "the last padding byte is missing (255 bytes in all)",
        "bad_padding_length",
        good[..good.len() - 1].to_vec(),
    )?;
    add(
        "padding_one_block_too_long",
        "256 more zero bytes follow the correct padding",
        "bad_padding_length",
        {
            let mut b = good.clone();
            b.extend_from_slice(&[0; PADDING_BLOCK]);
            b
        },
    )?;
    add(
        "no_padding",
        "the content ends right after the body",
        "bad_padding_length",
        header(1, 1, 5).raw(b"hello").0,
    )?;
    Ok(cases)
}

fn rejected(e: ContentError) -> Rejection {
    Rejection::new(e.code(), e.to_string())
}

fn verify(case: &Case<'_>) -> Result<(), Rejection> {
    match case {
        Case::Negative(_) => {
            let n: Negative = parse(case)?;
            Content::decode(&n.content).map_err(rejected)?;
            Ok(())
        }
        Case::Positive(_) => {
            let p: Positive = parse(case)?;
            expect_eq("kind", &p.kind, &KIND_TEXT)?;
            expect_eq("text_utf8", &p.text_utf8, &p.text.as_bytes().to_vec())?;
            expect_eq("body_len", &(p.body_len as usize), &p.text.len())?;
            let expected = Content::text(
                MessageId(array("message_id", &p.message_id)?),
                p.sent_at_ms,
                p.text.clone(),
            );
            let encoded = expected.encode().map_err(rejected)?;
            expect_eq("content", &p.content, &encoded)?;
            expect_eq(
                "padding_len",
                &(p.padding_len as usize),
                &(encoded.len() - HEADER_LEN - p.text.len()),
            )?;
            let decoded = Content::decode(&p.content).map_err(rejected)?;
            expect_eq("content (decoded)", &decoded, &expected)
        }
    }
}
