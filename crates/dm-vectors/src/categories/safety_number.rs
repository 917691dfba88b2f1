//! `safety-number.json`: the verification formats (PROTOCOL.md §9): key fingerprints, the
//! safety number of two accounts with its QR payload, and the group code of an epoch.
//!
//! The verifier checks every positive case twice: with e2ee-core's public functions, and
//! independently from the byte-level description of PROTOCOL.md §9 (the labelled inputs
//! are rebuilt here and hashed with SHA-512 / SHA-256), so the file pins the specification
//! and not only the code.

use std::str::FromStr;

use dm_wire::cert::AccountKey;
use dm_wire::{GroupId, Handle};
use e2ee_core::safety::{
    GROUP_CODE_LABEL, QR_PREFIX, SAFETY_NUMBER_LABEL, SafetyNumber, SafetyQrError, fingerprint,
    group_code,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha512};

use super::{array, hexbytes, hexvec, key, wire};
use crate::{Case, Cases, Category, Rejection, expect_eq, negative, parse, seed, to_value};

pub(super) const CATEGORY: Category = Category {
    name: "safety-number",
    description: "Verification, version 1. kind \"safety_number\": two accounts (canonical \
                  handle, 32-byte account key; the keys are the Ed25519 public keys of the \
                  seeds safety-number/<label>). fingerprint(k) = SHA-256(k)[0..16] as eight \
                  space-separated groups of four lower-case hex digits. part(h, k) = \
                  SHA-512(\"dm-e2ee/v1/safety-number\" || 0x00 || uint8(len(h)) || h || k); \
                  `part_inputs` and `part_digests` list the input and the digest of the \
                  account that sorts first by (h, k) bytewise, then of the other. Each digest \
                  gives six groups of five digits: big-endian 40-bit integers of bytes \
                  5i..5i+5 modulo 100000 with leading zeros. `digits` is the 60 digits, \
                  `display` twelve groups of five separated by spaces, `qr_payload` \
                  \"dm-safety:1:\" followed by the 60 digits; the result does not depend on \
                  the order of the two accounts. kind \"group_code\": d = \
                  SHA-256(\"dm-e2ee/v1/group-code\" || 0x00 || uint8(len(group_id)) || \
                  group_id || uint64(epoch) || epoch_authenticator), group id of 1 to 64 \
                  bytes, 32-byte epoch authenticator (ciphersuite 0x0003); `code` is four \
                  groups of five digits from d as above. Negative cases: kind \
                  \"safety_number\" and \"group_code\" inputs that must be refused, kind \
                  \"qr_payload\" scanned payloads that must be refused.",
    spec: "PROTOCOL.md §9",
    format_version: 1,
    generate,
    verify,
};

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Positive {
    SafetyNumber {
        name: String,
        a_handle: String,
        #[serde(with = "hexbytes")]
        a_account_key: Vec<u8>,
        a_fingerprint: String,
        b_handle: String,
        #[serde(with = "hexbytes")]
        b_account_key: Vec<u8>,
        b_fingerprint: String,
        #[serde(with = "hexvec")]
        part_inputs: Vec<Vec<u8>>,
        #[serde(with = "hexvec")]
        part_digests: Vec<Vec<u8>>,
        digits: String,
        display: String,
        qr_payload: String,
    },
    GroupCode {
        name: String,
        group_id: String,
        epoch: u64,
        #[serde(with = "hexbytes")]
        epoch_authenticator: Vec<u8>,
        #[serde(with = "hexbytes")]
        input: Vec<u8>,
        #[serde(with = "hexbytes")]
        digest: Vec<u8>,
        code: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Negative {
    SafetyNumber {
        a_handle: String,
        #[serde(with = "hexbytes")]
        a_account_key: Vec<u8>,
        b_handle: String,
        #[serde(with = "hexbytes")]
        b_account_key: Vec<u8>,
    },
    QrPayload {
        input: String,
    },
    GroupCode {
        group_id: String,
        epoch: u64,
        #[serde(with = "hexbytes")]
        epoch_authenticator: Vec<u8>,
    },
}

/// The Ed25519 account key of the seed `safety-number/<label>`.
fn account_key(label: &str) -> [u8; 32] {
    key(&format!("safety-number/{label}"))
        .verifying_key()
        .to_bytes()
}

// ---- The byte-level description of PROTOCOL.md §9, written apart from e2ee-core. ----

/// `label || 0x00 || uint8(len(h)) || h || k` (handles are at most 32 bytes).
fn spec_part_input(handle: &str, key: &[u8; 32]) -> Vec<u8> {
    let mut input = SPEC_SAFETY_LABEL.to_vec();
    input.push(0);
    input.push(handle.len() as u8);
    input.extend_from_slice(handle.as_bytes());
    input.extend_from_slice(key);
    input
}

/// The label as PROTOCOL.md §9.2 spells it.
const SPEC_SAFETY_LABEL: &[u8] = b"dm-e2ee/v1/safety-number";
/// The label as PROTOCOL.md §9.4 spells it.
const SPEC_GROUP_LABEL: &[u8] = b"dm-e2ee/v1/group-code";

/// `count` five-digit groups: big-endian 40-bit integers of `d[5i..5i+5]` mod 100000.
fn spec_digits(d: &[u8], count: usize) -> String {
    (0..count)
        .map(|i| {
            let v = d[5 * i..5 * i + 5]
                .iter()
                .fold(0u64, |acc, b| acc * 256 + u64::from(*b));
            format!("{:05}", v % 100_000)
        })
        .collect()
}

/// Groups of `n` characters separated by `sep`.
fn spec_groups(s: &str, n: usize, sep: &str) -> String {
    s.chars()
        .collect::<Vec<_>>()
        .chunks(n)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join(sep)
}

/// `SHA-256(key)[0..16]` as eight groups of four lower-case hex digits.
fn spec_fingerprint(key: &[u8; 32]) -> String {
    spec_groups(&hex::encode(&Sha256::digest(key)[..16]), 4, " ")
}

/// The ordered part inputs, their SHA-512 digests, and the 60 digits.
fn spec_safety_number(
    a: (&str, &[u8; 32]),
    b: (&str, &[u8; 32]),
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, String) {
    let (first, second) = if (a.0.as_bytes(), &a.1[..]) <= (b.0.as_bytes(), &b.1[..]) {
        (a, b)
    } else {
        (b, a)
    };
    let inputs: Vec<Vec<u8>> = [first, second]
        .iter()
        .map(|(h, k)| spec_part_input(h, k))
        .collect();
    let digests: Vec<Vec<u8>> = inputs.iter().map(|i| Sha512::digest(i).to_vec()).collect();
    let digits = digests.iter().map(|d| spec_digits(d, 6)).collect();
    (inputs, digests, digits)
}

/// The labelled input of the group code.
fn spec_group_input(group_id: &[u8], epoch: u64, authenticator: &[u8]) -> Vec<u8> {
    let mut input = SPEC_GROUP_LABEL.to_vec();
    input.push(0);
    input.push(group_id.len() as u8);
    input.extend_from_slice(group_id);
    input.extend_from_slice(&epoch.to_be_bytes());
    input.extend_from_slice(authenticator);
    input
}

// ---- Generation. ----

fn safety_positive(name: &str, a: (&str, [u8; 32]), b: (&str, [u8; 32])) -> Result<Value, String> {
    let ha = Handle::from_canonical(a.0).map_err(|e| e.to_string())?;
    let hb = Handle::from_canonical(b.0).map_err(|e| e.to_string())?;
    let n = SafetyNumber::derive(&ha, &AccountKey(a.1), &hb, &AccountKey(b.1));
    let (part_inputs, part_digests, digits) = spec_safety_number((a.0, &a.1), (b.0, &b.1));
    if digits != n.digits() {
        return Err("e2ee-core and the specification disagree".into());
    }
    to_value(&Positive::SafetyNumber {
        name: name.into(),
        a_handle: a.0.into(),
        a_account_key: a.1.to_vec(),
        a_fingerprint: fingerprint(&a.1),
        b_handle: b.0.into(),
        b_account_key: b.1.to_vec(),
        b_fingerprint: fingerprint(&b.1),
        part_inputs,
        part_digests,
        digits,
        display: n.display(),
        qr_payload: n.qr_payload(),
    })
}

fn group_positive(
    name: &str,
    group_id: &[u8],
    epoch: u64,
    authenticator: [u8; 32],
) -> Result<Value, String> {
    let input = spec_group_input(group_id, epoch, &authenticator);
    to_value(&Positive::GroupCode {
        name: name.into(),
        group_id: hex::encode(group_id),
        epoch,
        epoch_authenticator: authenticator.to_vec(),
        digest: Sha256::digest(&input).to_vec(),
        input,
        code: group_code(group_id, epoch, &authenticator),
    })
}

/// A 32-character handle.
const LONG_HANDLE: &str = "long_handle_with_32_characters_0";

fn generate() -> Result<Cases, String> {
    let mut cases = Cases::default();
    let (alice, bob) = (account_key("alice"), account_key("bob"));
    let p = &mut cases.positive;
    p.push(safety_positive(
        "alice_bob",
        ("alice", alice),
        ("bob", bob),
    )?);
    p.push(safety_positive(
        "bob_alice_arguments_swapped",
        ("bob", bob),
        ("alice", alice),
    )?);
    let (carol1, carol2) = (account_key("carol/1"), account_key("carol/2"));
    // Equal handles: the order is decided by the keys.
    let (low, high) = if carol1 <= carol2 {
        (carol1, carol2)
    } else {
        (carol2, carol1)
    };
    p.push(safety_positive(
        "same_handle_different_keys",
        ("carol", high),
        ("carol", low),
    )?);
    p.push(safety_positive(
        "shortest_and_longest_handle",
        (LONG_HANDLE, account_key("long")),
        ("eve", account_key("eve")),
    )?);
    // "ann" sorts before "anna" (a prefix sorts first), whatever the keys.
    p.push(safety_positive(
        "handle_is_prefix_of_the_other",
        ("anna", account_key("anna")),
        ("ann", account_key("ann")),
    )?);
    p.push(safety_positive(
        "alice_with_a_new_key",
        ("alice", account_key("alice/new")),
        ("bob", bob),
    )?);
    p.push(group_positive(
        "group_code_epoch_1",
        &seed::bytes16("safety-number/group/1"),
        1,
        seed::bytes32("safety-number/group/1/epoch-1"),
    )?);
    p.push(group_positive(
        "group_code_next_epoch",
        &seed::bytes16("safety-number/group/1"),
        2,
        seed::bytes32("safety-number/group/1/epoch-2"),
    )?);
    p.push(group_positive(
        "group_code_epoch_0_32_byte_id",
        &seed::bytes32("safety-number/group/2"),
        0,
        seed::bytes32("safety-number/group/2/epoch-0"),
    )?);
    p.push(group_positive(
        "group_code_64_byte_id_large_epoch",
        &seed::bytes("safety-number/group/3", 64),
        u64::MAX - 1,
        seed::bytes32("safety-number/group/3/epoch-max"),
    )?);

    let mut add = |name: &str, defect: &str, error: &str, fields: Negative| {
        cases.negative.push(negative(name, defect, error, &fields)?);
        Ok::<(), String>(())
    };
    let pair = |a_handle: &str, a_key: Vec<u8>, b_handle: &str| Negative::SafetyNumber {
        a_handle: a_handle.into(),
        a_account_key: a_key,
        b_handle: b_handle.into(),
        b_account_key: bob.to_vec(),
    };
    add(
        "handle_upper_case",
        "a_handle is \"Alice\": not canonical (handles are lower case)",
        "invalid_handle",
        pair("Alice", alice.to_vec(), "bob"),
    )?;
    add(
        "handle_with_at_sign",
        "a_handle is \"@alice\": the '@' is not part of the canonical handle",
        "invalid_handle",
        pair("@alice", alice.to_vec(), "bob"),
    )?;
    add(
        "handle_too_short",
        "b_handle is \"bo\" (2 characters, at least 3)",
        "invalid_handle",
        pair("alice", alice.to_vec(), "bo"),
    )?;
    add(
        "handle_too_long",
        "a_handle has 33 characters (at most 32)",
        "invalid_handle",
        pair(&format!("{LONG_HANDLE}1"), alice.to_vec(), "bob"),
    )?;
    add(
        "account_key_31_bytes",
        "a_account_key is 31 bytes (the last byte is missing)",
        "bad_vector",
        pair("alice", alice[..31].to_vec(), "bob"),
    )?;
    add(
        "account_key_33_bytes",
        "a_account_key is 33 bytes (a zero byte appended)",
        "bad_vector",
        pair("alice", [&alice[..], &[0]].concat(), "bob"),
    )?;

    let digits = SafetyNumber::derive(
        &Handle::from_canonical("alice").map_err(|e| e.to_string())?,
        &AccountKey(alice),
        &Handle::from_canonical("bob").map_err(|e| e.to_string())?,
        &AccountKey(bob),
    )
    .digits()
    .to_owned();
    let qr = |input: String| Negative::QrPayload { input };
    add(
        "qr_link_prefix",
        "the prefix is dm-link:1: (a link code's) instead of dm-safety:1:",
        "wrong_prefix",
        qr(format!("dm-link:1:{digits}")),
    )?;
    add(
        "qr_prefix_upper_case",
        "the prefix is DM-SAFETY:1: (the payload is case-sensitive)",
        "wrong_prefix",
        qr(format!("DM-SAFETY:1:{digits}")),
    )?;
    add(
        "qr_version_2",
        "the version field is 2",
        "unsupported_version",
        qr(format!("dm-safety:2:{digits}")),
    )?;
    add(
        "qr_version_missing",
        "the version field and its ':' are missing (dm-safety: then the digits)",
        "unsupported_version",
        qr(format!("dm-safety:{digits}")),
    )?;
    add(
        "qr_59_digits",
        "the last digit is missing (59 digits)",
        "wrong_length",
        qr(format!("{QR_PREFIX}{}", &digits[..59])),
    )?;
    add(
        "qr_61_digits",
        "a 0 is appended (61 digits)",
        "wrong_length",
        qr(format!("{QR_PREFIX}{digits}0")),
    )?;
    add(
        "qr_grouped_digits",
        "the digits are in groups of five separated by spaces (the displayed form)",
        "invalid_character",
        qr(format!("{QR_PREFIX}{}", spec_groups(&digits, 5, " "))),
    )?;
    add(
        "qr_letter",
        "the last digit is replaced by the letter O",
        "invalid_character",
        qr(format!("{QR_PREFIX}{}O", &digits[..59])),
    )?;

    let group = |group_id: Vec<u8>, authenticator: Vec<u8>| Negative::GroupCode {
        group_id: hex::encode(group_id),
        epoch: 1,
        epoch_authenticator: authenticator,
    };
    let authenticator = seed::bytes32("safety-number/group/1/epoch-1");
    add(
        "group_id_65_bytes",
        "the group id is 65 bytes (at most 64)",
        "malformed",
        group(
            seed::bytes("safety-number/group/4", 65),
            authenticator.to_vec(),
        ),
    )?;
    add(
        "group_id_empty",
        "the group id is empty (at least 1 byte)",
        "malformed",
        group(Vec::new(), authenticator.to_vec()),
    )?;
    add(
        "epoch_authenticator_31_bytes",
        "the epoch authenticator is 31 bytes (32 for ciphersuite 0x0003)",
        "bad_vector",
        group(
            seed::bytes16("safety-number/group/1").to_vec(),
            authenticator[..31].to_vec(),
        ),
    )?;
    Ok(cases)
}

// ---- Verification. ----

fn qr_rejected(e: SafetyQrError) -> Rejection {
    Rejection::new(e.code(), e.to_string())
}

/// The two accounts, checked: canonical handles, 32-byte keys.
fn accounts(
    a_handle: &str,
    a_key: &[u8],
    b_handle: &str,
    b_key: &[u8],
) -> Result<(Handle, [u8; 32], Handle, [u8; 32]), Rejection> {
    Ok((
        Handle::from_canonical(a_handle).map_err(wire)?,
        array("a_account_key", a_key)?,
        Handle::from_canonical(b_handle).map_err(wire)?,
        array("b_account_key", b_key)?,
    ))
}

/// The group code's inputs, checked: a dm-wire group id, a 32-byte authenticator.
fn group_inputs(group_id: &str, authenticator: &[u8]) -> Result<(GroupId, [u8; 32]), Rejection> {
    Ok((
        GroupId::from_str(group_id).map_err(wire)?,
        array("epoch_authenticator", authenticator)?,
    ))
}

fn verify(case: &Case<'_>) -> Result<(), Rejection> {
    match case {
        Case::Negative(_) => match parse(case)? {
            Negative::SafetyNumber {
                a_handle,
                a_account_key,
                b_handle,
                b_account_key,
            } => {
                let (ha, ka, hb, kb) =
                    accounts(&a_handle, &a_account_key, &b_handle, &b_account_key)?;
                SafetyNumber::derive(&ha, &AccountKey(ka), &hb, &AccountKey(kb));
                Ok(())
            }
            Negative::QrPayload { input } => {
                SafetyNumber::parse_qr(&input).map_err(qr_rejected)?;
                Ok(())
            }
            Negative::GroupCode {
                group_id,
                epoch,
                epoch_authenticator,
            } => {
                let (id, authenticator) = group_inputs(&group_id, &epoch_authenticator)?;
                group_code(id.as_bytes(), epoch, &authenticator);
                Ok(())
            }
        },
        Case::Positive(_) => match parse(case)? {
            Positive::SafetyNumber {
                name: _,
                a_handle,
                a_account_key,
                a_fingerprint,
                b_handle,
                b_account_key,
                b_fingerprint,
                part_inputs,
                part_digests,
                digits,
                display,
                qr_payload,
            } => {
                let (ha, ka, hb, kb) =
                    accounts(&a_handle, &a_account_key, &b_handle, &b_account_key)?;
                // With e2ee-core, in both argument orders.
                expect_eq("a_fingerprint", &a_fingerprint, &fingerprint(&ka))?;
                expect_eq("b_fingerprint", &b_fingerprint, &fingerprint(&kb))?;
                let n = SafetyNumber::derive(&ha, &AccountKey(ka), &hb, &AccountKey(kb));
                let swapped = SafetyNumber::derive(&hb, &AccountKey(kb), &ha, &AccountKey(ka));
                expect_eq("digits (arguments swapped)", &swapped, &n)?;
                expect_eq("digits", &digits, &n.digits().to_owned())?;
                expect_eq("display", &display, &n.display())?;
                expect_eq("qr_payload", &qr_payload, &n.qr_payload())?;
                let scanned = SafetyNumber::parse_qr(&qr_payload).map_err(qr_rejected)?;
                expect_eq("qr_payload (parsed back)", &scanned, &n)?;
                // From the byte-level description, independently of e2ee-core.
                expect_eq(
                    "a_fingerprint (spec)",
                    &a_fingerprint,
                    &spec_fingerprint(&ka),
                )?;
                expect_eq(
                    "b_fingerprint (spec)",
                    &b_fingerprint,
                    &spec_fingerprint(&kb),
                )?;
                let (inputs, digests, spec_digits) =
                    spec_safety_number((&a_handle, &ka), (&b_handle, &kb));
                expect_eq("part_inputs", &part_inputs, &inputs)?;
                expect_eq("part_digests", &part_digests, &digests)?;
                expect_eq("digits (spec)", &digits, &spec_digits)?;
                expect_eq("display (spec)", &display, &spec_groups(&digits, 5, " "))?;
                expect_eq(
                    "qr_payload (spec)",
                    &qr_payload,
                    &format!("dm-safety:1:{digits}"),
                )?;
                // The labels of e2ee-core are the specification's.
                expect_eq("label", &SAFETY_NUMBER_LABEL, &SPEC_SAFETY_LABEL)?;
                Ok(())
            }
            Positive::GroupCode {
                name: _,
                group_id,
                epoch,
                epoch_authenticator,
                input,
                digest,
                code,
            } => {
                let (id, authenticator) = group_inputs(&group_id, &epoch_authenticator)?;
                expect_eq(
                    "code",
                    &code,
                    &group_code(id.as_bytes(), epoch, &authenticator),
                )?;
                let spec_input = spec_group_input(id.as_bytes(), epoch, &authenticator);
                expect_eq("input", &input, &spec_input)?;
                let d = Sha256::digest(&spec_input).to_vec();
                expect_eq("digest", &digest, &d)?;
                expect_eq(
                    "code (spec)",
                    &code,
                    &spec_groups(&spec_digits(&d, 4), 5, " "),
                )?;
                expect_eq("label", &GROUP_CODE_LABEL, &SPEC_GROUP_LABEL)?;
                Ok(())
            }
        },
    }
}
