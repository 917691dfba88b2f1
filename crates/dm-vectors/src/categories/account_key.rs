//! `account-key.json`: the account key's fingerprint and recovery code (PROTOCOL.md §1, §5).

use e2ee_core::{AccountSecret, RecoveryCode, RecoveryCodeError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{array, hexbytes};
use crate::{Case, Cases, Category, Rejection, expect_eq, negative, parse, seed, to_value};

pub(super) const CATEGORY: Category = Category {
    name: "account-key",
    description: "The account key (Ed25519) shown to people. fingerprint: the first 16 bytes \
                  of SHA-256(account_key) as eight space-separated groups of four lower-case \
                  hex digits. Recovery code, version 1: the 32-byte secret followed by \
                  SHA-256(secret)[0..2], in Crockford base32 (alphabet \
                  0123456789ABCDEFGHJKMNPQRSTVWXYZ, most significant bit first, the last \
                  character padded with three zero bits), 55 characters in groups of four \
                  joined by '-'. Readers ignore case, spaces and '-', read O as 0 and I/L as \
                  1. Positive cases list further accepted spellings in `also_accepted`; \
                  negative cases are inputs a reader must refuse.",
    spec: "PROTOCOL.md §1, §5",
    format_version: 1,
    generate,
    verify,
};

#[derive(Serialize, Deserialize)]
struct Positive {
    name: String,
    #[serde(with = "hexbytes")]
    account_secret: Vec<u8>,
    #[serde(with = "hexbytes")]
    account_key: Vec<u8>,
    fingerprint: String,
    #[serde(with = "hexbytes")]
    checksum: Vec<u8>,
    recovery_code: String,
    also_accepted: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct Negative {
    input: String,
}

fn positive(name: &str, secret: [u8; 32]) -> Result<Value, String> {
    let account = AccountSecret::from_bytes(&secret);
    let code = account.recovery_code().to_string();
    let bare = code.replace('-', "");
    let spaced: Vec<String> = bare
        .as_bytes()
        .chunks(5)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let also_accepted = vec![
        code.to_lowercase(),
        bare.clone(),
        spaced.join(" "),
        code.replace('0', "O").replace('1', "l"),
    ];
    to_value(&Positive {
        name: name.into(),
        account_secret: secret.to_vec(),
        account_key: account.account_key().0.to_vec(),
        fingerprint: account.account_key().fingerprint(),
        checksum: Sha256::digest(secret)[..2].to_vec(),
        recovery_code: code,
        also_accepted,
    })
}

fn generate() -> Result<Cases, String> {
    let mut cases = Cases::default();
    cases
        .positive
        .push(positive("seeded", seed::bytes32("account-key/seeded"))?);
    cases.positive.push(positive("all_zero_secret", [0; 32])?);
    cases.positive.push(positive("all_ff_secret", [0xff; 32])?);
    cases.positive.push(positive(
        "another_seed",
        seed::bytes32("account-key/another"),
    )?);

    let code = AccountSecret::from_bytes(&seed::bytes32("account-key/negative"))
        .recovery_code()
        .to_string();
    let chars: Vec<char> = code.chars().collect();
    let with = |i: usize, c: char| {
        let mut v = chars.clone();
        v[i] = c;
        v.into_iter().collect::<String>()
    };
    let mut add = |name: &str, defect: &str, error: &str, input: String| -> Result<(), String> {
        cases
            .negative
            .push(negative(name, defect, error, &Negative { input })?);
        Ok(())
    };
    let first = if chars[0] == 'X' { 'Y' } else { 'X' };
    add(
        "first_character_changed",
        "the first character is changed (the checksum no longer matches)",
        "bad_checksum",
        with(0, first),
    )?;
    // The last character carries 2 data bits and 3 padding bits (which must be zero).
    let last = chars.len() - 1;
    let value = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
        .find(chars[last])
        .ok_or("recovery code character outside the alphabet")?;
    add(
        "padding_bits_set",
        "the last character's three padding bits are 001 instead of 000",
        "bad_checksum",
        with(
            last,
            char::from(b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"[(value & !7) | 1]),
        ),
    )?;
    add(
        "checksum_character_changed",
        "the 53rd character (inside the checksum) is changed",
        "bad_checksum",
        {
            let i = chars
                .iter()
                .enumerate()
                .filter(|(_, c)| **c != '-')
                .nth(52)
                .map(|(i, _)| i)
                .ok_or("short code")?;
            with(i, if chars[i] == 'Z' { 'Y' } else { 'Z' })
        },
    )?;
    add(
        "one_character_missing",
        "the last character is missing (54 characters)",
        "wrong_length",
        code[..code.len() - 1].to_owned(),
    )?;
    add(
        "one_character_extra",
        "a 0 is appended (56 characters)",
        "wrong_length",
        format!("{code}0"),
    )?;
    add(
        "letter_u",
        "a U (not in Crockford's alphabet) replaces the first character",
        "invalid_character",
        with(0, 'U'),
    )?;
    add(
        "underscore_separator",
        "'_' separates the groups instead of '-'",
        "invalid_character",
        code.replace('-', "_"),
    )?;
    add("empty", "an empty string", "wrong_length", String::new())?;
    Ok(cases)
}

fn rejected(e: RecoveryCodeError) -> Rejection {
    Rejection::new(e.code(), e.to_string())
}

fn verify(case: &Case<'_>) -> Result<(), Rejection> {
    match case {
        Case::Negative(_) => {
            let n: Negative = parse(case)?;
            RecoveryCode::parse(&n.input).map_err(rejected)?;
            Ok(())
        }
        Case::Positive(_) => {
            let p: Positive = parse(case)?;
            let secret: [u8; 32] = array("account_secret", &p.account_secret)?;
            let account = AccountSecret::from_bytes(&secret);
            let key = account.account_key();
            expect_eq("account_key", &p.account_key, &key.0.to_vec())?;
            expect_eq("fingerprint", &p.fingerprint, &key.fingerprint())?;
            expect_eq(
                "checksum",
                &p.checksum,
                &Sha256::digest(secret)[..2].to_vec(),
            )?;
            expect_eq(
                "recovery_code",
                &p.recovery_code,
                &account.recovery_code().to_string(),
            )?;
            for (i, input) in std::iter::once(&p.recovery_code)
                .chain(&p.also_accepted)
                .enumerate()
            {
                let parsed = RecoveryCode::parse(input).map_err(rejected)?;
                expect_eq(
                    &format!("also_accepted[{i}] (restored key)"),
                    &parsed.account_key(),
                    &key,
                )?;
            }
            Ok(())
        }
    }
}
