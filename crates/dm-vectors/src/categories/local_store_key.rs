//! `local-store-key.json`: how the client derives the key of its SQLCipher store from the
//! passphrase (PROTOCOL.md §6), exercising `dm_client::store_key` itself.

use dm_client::store_key::{
    KDF_ALGORITHM, KDF_VERSION, KdfParams, META_FORMAT, MetaError, StoreMeta, derive_key,
    key_pragma,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{array, hexbytes};
use crate::{Case, Cases, Category, Rejection, expect_eq, negative, parse, seed, to_value};

pub(super) const CATEGORY: Category = Category {
    name: "local-store-key",
    description: "The key of the client's local store, store.json format 1. store.json holds \
                  only the Argon2id parameters and the salt; key = Argon2id(password = the \
                  passphrase's UTF-8 bytes, salt, m = memory_kib, t = iterations, p = \
                  parallelism, version 0x13, no secret, no associated data, 32-byte tag), given \
                  to SQLCipher 4 as a raw key by the statement in key_pragma (SQLCipher's own \
                  PBKDF2 is bypassed; page encryption is SQLCipher's, see PROTOCOL.md §6). \
                  Positive cases give store.json exactly as the client writes it, its fields, \
                  the key and the statement; negative cases are store.json files a client must \
                  refuse before deriving anything.",
    spec: "PROTOCOL.md §6",
    format_version: META_FORMAT,
    generate,
    verify,
};

#[derive(Serialize, Deserialize)]
struct Positive {
    name: String,
    passphrase: String,
    #[serde(with = "hexbytes")]
    passphrase_utf8: Vec<u8>,
    store_json: String,
    algorithm: String,
    argon2_version: u32,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    #[serde(with = "hexbytes")]
    salt: Vec<u8>,
    #[serde(with = "hexbytes")]
    key: Vec<u8>,
    key_pragma: String,
}

#[derive(Serialize, Deserialize)]
struct Negative {
    passphrase: String,
    store_json: String,
}

fn positive(name: &str, passphrase: &str, meta: StoreMeta) -> Result<Value, String> {
    let key = derive_key(passphrase, &meta.kdf).map_err(|e| e.to_string())?;
    let store_json = String::from_utf8(meta.to_json()).map_err(|e| e.to_string())?;
    to_value(&Positive {
        name: name.into(),
        passphrase: passphrase.into(),
        passphrase_utf8: passphrase.as_bytes().to_vec(),
        store_json,
        algorithm: meta.kdf.algorithm.clone(),
        argon2_version: meta.kdf.version,
        memory_kib: meta.kdf.memory_kib,
        iterations: meta.kdf.iterations,
        parallelism: meta.kdf.parallelism,
        salt: meta.kdf.salt.clone(),
        key: key.to_vec(),
        key_pragma: key_pragma(&key).to_string(),
    })
}

fn salt(label: &str) -> Result<[u8; 16], String> {
    seed::bytes(label, 16)
        .try_into()
        .map_err(|_| "salt length".to_owned())
}

fn generate() -> Result<Cases, String> {
    let mut cases = Cases::default();
    cases.positive.push(positive(
        "product_parameters",
        "correct horse battery staple",
        StoreMeta::new(salt("local-store-key/salt/1")?),
    )?);
    cases.positive.push(positive(
        "unicode_passphrase",
        "pässwörd 🔑 日本",
        StoreMeta::new(salt("local-store-key/salt/2")?),
    )?);
    cases.positive.push(positive(
        "empty_passphrase",
        "",
        StoreMeta::new(salt("local-store-key/salt/3")?),
    )?);
    let mut light = StoreMeta::new(salt("local-store-key/salt/4")?);
    light.kdf.memory_kib = 8192;
    light.kdf.iterations = 1;
    light.kdf.parallelism = 2;
    cases.positive.push(positive(
        "other_parameters_read_from_store_json",
        "correct horse battery staple",
        light,
    )?);

    let base = StoreMeta::new(salt("local-store-key/salt/negative")?);
    let base_json: Value = serde_json::from_slice(&base.to_json()).map_err(|e| e.to_string())?;
    let altered = |path: &[&str], value: Value| -> Result<String, String> {
        let mut v = base_json.clone();
        let mut slot = &mut v;
        for p in path {
            slot = slot.get_mut(*p).ok_or("no such field")?;
        }
        *slot = value;
        serde_json::to_string_pretty(&v).map_err(|e| e.to_string())
    };
    let mut add =
        |name: &str, defect: &str, error: &str, store_json: String| -> Result<(), String> {
            cases.negative.push(negative(
                name,
                defect,
                error,
                &Negative {
                    passphrase: "correct horse battery staple".into(),
                    store_json,
                },
            )?);
            Ok(())
        };
    add(
        "format_2",
        "format is 2",
        "unsupported_format",
        altered(&["format"], json!(2))?,
    )?;
    add(
        "algorithm_argon2i",
        "the algorithm is argon2i",
        "unsupported_format",
        altered(&["kdf", "algorithm"], json!("argon2i"))?,
    )?;
    add(
        "argon2_version_16",
        "the Argon2 version is 16 (0x10)",
        "unsupported_format",
        altered(&["kdf", "version"], json!(16))?,
    )?;
    add(
        "salt_8_bytes",
        "the salt is 8 bytes",
        "bad_kdf_params",
        altered(&["kdf", "salt"], json!("0001020304050607"))?,
    )?;
    add(
        "memory_below_minimum",
        "memory_kib is 7 (Argon2 needs at least 8 KiB per lane)",
        "bad_kdf_params",
        altered(&["kdf", "memory_kib"], json!(7))?,
    )?;
    add(
        "memory_above_maximum",
        "memory_kib is 4 GiB + 1 KiB (readers refuse more than 4 GiB)",
        "bad_kdf_params",
        altered(&["kdf", "memory_kib"], json!(4 * 1024 * 1024 + 1))?,
    )?;
    add(
        "zero_iterations",
        "iterations is 0",
        "bad_kdf_params",
        altered(&["kdf", "iterations"], json!(0))?,
    )?;
    add(
        "sixty_five_iterations",
        "iterations is 65 (readers refuse more than 64)",
        "bad_kdf_params",
        altered(&["kdf", "iterations"], json!(65))?,
    )?;
    add(
        "zero_parallelism",
        "parallelism is 0",
        "bad_kdf_params",
        altered(&["kdf", "parallelism"], json!(0))?,
    )?;
    add(
        "salt_not_hex",
        "the salt is not hex",
        "malformed_meta",
        altered(&["kdf", "salt"], json!("zz0102030405060708090a0b0c0d0e0f"))?,
    )?;
    add(
        "salt_missing",
        "the kdf object has no salt",
        "malformed_meta",
        {
            let mut v = base_json.clone();
            if let Some(kdf) = v.get_mut("kdf").and_then(Value::as_object_mut) {
                kdf.remove("salt");
            }
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        },
    )?;
    add(
        "unknown_field",
        "store.json has an extra field \"cipher\"",
        "malformed_meta",
        {
            let mut v = base_json.clone();
            if let Some(map) = v.as_object_mut() {
                map.insert("cipher".into(), json!("aes-256-cbc"));
            }
            serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?
        },
    )?;
    add(
        "not_json",
        "store.json is cut in the middle",
        "malformed_meta",
        {
            let s = String::from_utf8(base.to_json()).map_err(|e| e.to_string())?;
            s[..s.len() / 2].to_owned()
        },
    )?;
    Ok(cases)
}

fn rejected(e: MetaError) -> Rejection {
    Rejection::new(e.code(), e.to_string())
}

fn verify(case: &Case<'_>) -> Result<(), Rejection> {
    match case {
        Case::Negative(_) => {
            let n: Negative = parse(case)?;
            let meta = StoreMeta::parse(n.store_json.as_bytes()).map_err(rejected)?;
            derive_key(&n.passphrase, &meta.kdf).map_err(rejected)?;
            Ok(())
        }
        Case::Positive(_) => {
            // Cheap checks first: the Argon2id derivation runs last.
            let p: Positive = parse(case)?;
            expect_eq(
                "passphrase_utf8",
                &p.passphrase_utf8,
                &p.passphrase.as_bytes().to_vec(),
            )?;
            let meta = StoreMeta::parse(p.store_json.as_bytes()).map_err(rejected)?;
            expect_eq(
                "store_json",
                &p.store_json.as_bytes().to_vec(),
                &meta.to_json(),
            )?;
            let fields = KdfParams {
                algorithm: p.algorithm.clone(),
                version: p.argon2_version,
                memory_kib: p.memory_kib,
                iterations: p.iterations,
                parallelism: p.parallelism,
                salt: p.salt.clone(),
            };
            expect_eq("kdf fields", &fields, &meta.kdf)?;
            expect_eq("algorithm", &p.algorithm.as_str(), &KDF_ALGORITHM)?;
            expect_eq("argon2_version", &p.argon2_version, &KDF_VERSION)?;
            let key: [u8; 32] = array("key", &p.key)?;
            expect_eq(
                "key_pragma",
                &p.key_pragma.as_str(),
                &key_pragma(&key).as_str(),
            )?;
            let derived = derive_key(&p.passphrase, &meta.kdf).map_err(rejected)?;
            expect_eq("key", &p.key, &derived.to_vec())
        }
    }
}
