//! `credential-identity.json`: the identity inside each device's MLS `BasicCredential`
//! (PROTOCOL.md §1.4).

use dm_wire::credential::CredentialIdentity;
use dm_wire::{DeviceId, Handle};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{array, hexbytes, wire};
use crate::craft::Bytes;
use crate::{Case, Cases, Category, Rejection, expect_eq, negative, parse, seed, to_value};

pub(super) const CATEGORY: Category = Category {
    name: "credential-identity",
    description: "CredentialIdentity version 1, the bytes of BasicCredential.identity in every \
                  MLS leaf: version(u8 = 1) handle<u8> device_id[16]. Positive cases give the \
                  handle and device id and the encoding; negative cases are identities a \
                  member must refuse (before even looking the device up in the device list).",
    spec: "PROTOCOL.md §1.4",
    format_version: 1,
    generate,
    verify,
};

#[derive(Serialize, Deserialize)]
struct Positive {
    name: String,
    handle: String,
    #[serde(with = "hexbytes")]
    device_id: Vec<u8>,
    #[serde(with = "hexbytes")]
    identity: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Negative {
    #[serde(with = "hexbytes")]
    identity: Vec<u8>,
}

fn positive(name: &str, handle: &str) -> Result<Value, String> {
    let id = CredentialIdentity {
        handle: Handle::from_canonical(handle).map_err(|e| e.to_string())?,
        device_id: DeviceId(seed::bytes16(&format!("credential-identity/{name}"))),
    };
    to_value(&Positive {
        name: name.into(),
        handle: handle.into(),
        device_id: id.device_id.0.to_vec(),
        identity: id.encode(),
    })
}

fn generate() -> Result<Cases, String> {
    let mut cases = Cases::default();
    cases.positive.push(positive("alice", "alice")?);
    cases
        .positive
        .push(positive("digits_and_underscore", "bob_1984")?);
    cases.positive.push(positive(
        "longest_handle",
        "z2345678901234567890123456789012",
    )?);

    let device = seed::bytes16("credential-identity/negative");
    let good = |handle: &[u8]| Bytes::default().u8(1).vec8(handle).raw(&device).0;
    let mut add =
        |name: &str, defect: &str, error: &str, identity: Vec<u8>| -> Result<(), String> {
            cases
                .negative
                .push(negative(name, defect, error, &Negative { identity })?);
            Ok(())
        };
    add(
        "version_2",
        "the version byte is 2",
        "unsupported_version",
        Bytes::default().u8(2).vec8(b"alice").raw(&device).0,
    )?;
    add(
        "version_0",
        "the version byte is 0",
        "unsupported_version",
        Bytes::default().u8(0).vec8(b"alice").raw(&device).0,
    )?;
    add(
        "trailing_byte",
        "one zero byte follows the device id",
        "malformed",
        Bytes(good(b"alice")).u8(0).0,
    )?;
    add(
        "device_id_15_bytes",
        "the device id is one byte short",
        "malformed",
        {
            let mut b = good(b"alice");
            b.pop();
            b
        },
    )?;
    add("empty", "no bytes at all", "malformed", Vec::new())?;
    add(
        "handle_upper_case",
        "the handle is \"Alice\"",
        "invalid_handle",
        good(b"Alice"),
    )?;
    add(
        "handle_33_characters",
        "the handle has 33 characters",
        "invalid_handle",
        good(b"a23456789012345678901234567890123"),
    )?;
    add(
        "handle_starts_with_digit",
        "the handle is \"1alice\"",
        "invalid_handle",
        good(b"1alice"),
    )?;
    add(
        "handle_with_hyphen",
        "the handle is \"al-ice\"",
        "invalid_handle",
        good(b"al-ice"),
    )?;
    Ok(cases)
}

fn verify(case: &Case<'_>) -> Result<(), Rejection> {
    match case {
        Case::Negative(_) => {
            let n: Negative = parse(case)?;
            CredentialIdentity::decode(&n.identity).map_err(wire)?;
            Ok(())
        }
        Case::Positive(_) => {
            let p: Positive = parse(case)?;
            let id = CredentialIdentity {
                handle: Handle::from_canonical(&p.handle).map_err(wire)?,
                device_id: DeviceId(array("device_id", &p.device_id)?),
            };
            expect_eq("identity", &p.identity, &id.encode())?;
            let decoded = CredentialIdentity::decode(&p.identity).map_err(wire)?;
            expect_eq("identity (decoded)", &decoded, &id)
        }
    }
}
