//! `device-certificate.json`: the account key's signature over one device (PROTOCOL.md §1.2),
//! with the labelled-signature construction of §1.1 spelled out.

use dm_wire::cert::{DEVICE_CERTIFICATE_LABEL, DeviceCertificate, signature_input};
use dm_wire::{DeviceId, Handle};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{array, hexbytes, key, wire};
use crate::craft::{self, Cert};
use crate::{Case, Cases, Category, Rejection, expect_eq, negative, parse, seed, to_value};

pub(super) const CATEGORY: Category = Category {
    name: "device-certificate",
    description: "DeviceCertificate version 1: the account key's Ed25519 signature over \
                  (handle, account key, device id, device key, issued_at). Positive cases give \
                  the account secret and every intermediate value (TBS, the signed input \
                  label || 0x00 || TBS, the signature, the encoding); decoding the encoding \
                  must verify and give back the fields. Negative cases are encodings a \
                  decoder must reject with the code given.",
    spec: "PROTOCOL.md §1.1, §1.2",
    format_version: 1,
    generate,
    verify,
};

#[derive(Serialize, Deserialize)]
struct Positive {
    name: String,
    /// Ed25519 secret key (seed) of the account.
    #[serde(with = "hexbytes")]
    account_secret: Vec<u8>,
    #[serde(with = "hexbytes")]
    account_key: Vec<u8>,
    handle: String,
    #[serde(with = "hexbytes")]
    device_id: Vec<u8>,
    #[serde(with = "hexbytes")]
    device_key: Vec<u8>,
    issued_at: u64,
    #[serde(with = "hexbytes")]
    tbs: Vec<u8>,
    #[serde(with = "hexbytes")]
    signature_input: Vec<u8>,
    #[serde(with = "hexbytes")]
    signature: Vec<u8>,
    #[serde(with = "hexbytes")]
    certificate: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Negative {
    #[serde(with = "hexbytes")]
    certificate: Vec<u8>,
}

fn positive(name: &str, seed_label: &str, handle: &str, issued_at: u64) -> Result<Value, String> {
    let account = key(&format!("{seed_label}/account"));
    let handle_parsed = Handle::from_canonical(handle).map_err(|e| e.to_string())?;
    let device_id = DeviceId(seed::bytes16(&format!("{seed_label}/device-id")));
    let device_key = key(&format!("{seed_label}/device"))
        .verifying_key()
        .to_bytes();
    let cert = DeviceCertificate::issue(&account, handle_parsed, device_id, device_key, issued_at);
    let tbs = cert.tbs();
    to_value(&Positive {
        name: name.into(),
        account_secret: account.to_bytes().to_vec(),
        account_key: account.verifying_key().to_bytes().to_vec(),
        handle: handle.into(),
        device_id: device_id.0.to_vec(),
        device_key: device_key.to_vec(),
        issued_at,
        signature_input: signature_input(DEVICE_CERTIFICATE_LABEL, &tbs),
        tbs,
        signature: cert.signature.to_vec(),
        certificate: cert.encode(),
    })
}

/// The base certificate that negative cases alter.
fn base() -> (SigningKey, Cert) {
    let account = key("device-certificate/negative/account");
    let cert = Cert {
        version: 1,
        handle: b"alice".to_vec(),
        account_key: account.verifying_key().to_bytes(),
        device_id: seed::bytes16("device-certificate/negative/device-id"),
        device_key: key("device-certificate/negative/device")
            .verifying_key()
            .to_bytes(),
        issued_at: 1_700_000_000,
    };
    (account, cert)
}

/// Ed25519's group order L, little-endian.
const ED25519_L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// `S + L` (little-endian): the same signature in a non-canonical, malleable form.
fn add_order(s: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(s[i]) + u16::from(ED25519_L[i]) + carry;
        out[i] = sum as u8;
        carry = sum >> 8;
    }
    out
}

fn generate() -> Result<Cases, String> {
    let mut cases = Cases::default();
    cases.positive.push(positive(
        "alice",
        "device-certificate/alice",
        "alice",
        1_700_000_000,
    )?);
    cases.positive.push(positive(
        "longest_handle",
        "device-certificate/longest",
        "a_handle_of_32_characters_0_9_xy",
        1_767_225_600,
    )?);
    cases.positive.push(positive(
        "shortest_handle_issued_at_zero",
        "device-certificate/shortest",
        "bob",
        0,
    )?);

    let (account, cert) = base();
    let other = key("device-certificate/negative/other");
    let good = cert.signed(&account);
    let mut add = |name: &str, defect: &str, error: &str, bytes: Vec<u8>| -> Result<(), String> {
        cases.negative.push(negative(
            name,
            defect,
            error,
            &Negative { certificate: bytes },
        )?);
        Ok(())
    };

    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    add(
        "signature_byte_flipped",
        "the last byte of the signature is flipped",
        "bad_signature",
        flipped,
    )?;
    let mut later = cert.clone();
    later.issued_at += 1;
    let mut altered = later.tbs();
    altered.extend_from_slice(&good[good.len() - 64..]);
    add(
        "issued_at_changed_after_signing",
        "issued_at is one more than the value that was signed",
        "bad_signature",
        altered,
    )?;
    add(
        "signed_by_another_key",
        "the signature is by another key than account_key",
        "bad_signature",
        {
            let tbs = cert.tbs();
            let sig = craft::sign(&other, DEVICE_CERTIFICATE_LABEL, &tbs);
            craft::Bytes(tbs).raw(&sig).0
        },
    )?;
    add(
        "signed_under_device_list_label",
        "the signature is over the TBS under the device-list label",
        "bad_signature",
        {
            let tbs = cert.tbs();
            let sig = craft::sign(&account, dm_wire::cert::DEVICE_LIST_LABEL, &tbs);
            craft::Bytes(tbs).raw(&sig).0
        },
    )?;
    add(
        "signature_not_canonical",
        "the signature's scalar S is replaced by S + L (the group order): valid for a lax \
         verifier, rejected by strict verification (S must be < L)",
        "bad_signature",
        {
            let mut b = good.clone();
            let n = b.len();
            let s = add_order(&b[n - 32..]);
            b[n - 32..].copy_from_slice(&s);
            b
        },
    )?;
    add(
        "account_key_of_small_order",
        "account_key is the identity point and the signature is (R = identity, S = 0), which a \
         cofactorless non-strict verifier accepts; strict verification refuses weak keys",
        "bad_signature",
        {
            let mut identity = [0u8; 32];
            identity[0] = 1;
            let mut weak = cert.clone();
            weak.account_key = identity;
            let mut sig = [0u8; 64];
            sig[0] = 1;
            craft::Bytes(weak.tbs()).raw(&sig).0
        },
    )?;
    add(
        "version_2",
        "the version byte is 2 (correctly signed)",
        "unsupported_version",
        Cert {
            version: 2,
            ..cert.clone()
        }
        .signed(&account),
    )?;
    add(
        "truncated",
        "the last byte is missing",
        "malformed",
        good[..good.len() - 1].to_vec(),
    )?;
    add(
        "trailing_byte",
        "one zero byte follows the signature",
        "malformed",
        craft::Bytes(good.clone()).u8(0).0,
    )?;
    add("empty", "no bytes at all", "malformed", Vec::new())?;
    add(
        "handle_length_beyond_end",
        "the handle's length prefix is 255 and the structure ends after 200 bytes",
        "malformed",
        {
            let mut b = good.clone();
            b[1] = 255;
            b.truncate(200);
            b
        },
    )?;
    add(
        "handle_upper_case",
        "the handle is \"Alice\" (not canonical; correctly signed)",
        "invalid_handle",
        Cert {
            handle: b"Alice".to_vec(),
            ..cert.clone()
        }
        .signed(&account),
    )?;
    add(
        "handle_too_short",
        "the handle is \"al\" (2 characters; correctly signed)",
        "invalid_handle",
        Cert {
            handle: b"al".to_vec(),
            ..cert.clone()
        }
        .signed(&account),
    )?;
    add(
        "handle_not_utf8",
        "the handle bytes are ff 61 62 (not UTF-8; correctly signed)",
        "invalid_handle",
        Cert {
            handle: vec![0xff, 0x61, 0x62],
            ..cert.clone()
        }
        .signed(&account),
    )?;
    add(
        "handle_with_at_sign",
        "the handle is \"@alice\" (the @ is display only; correctly signed)",
        "invalid_handle",
        Cert {
            handle: b"@alice".to_vec(),
            ..cert
        }
        .signed(&account),
    )?;
    Ok(cases)
}

fn verify(case: &Case<'_>) -> Result<(), Rejection> {
    match case {
        Case::Negative(_) => {
            let n: Negative = parse(case)?;
            DeviceCertificate::decode(&n.certificate).map_err(wire)?;
            Ok(())
        }
        Case::Positive(_) => {
            let p: Positive = parse(case)?;
            let account = SigningKey::from_bytes(&array("account_secret", &p.account_secret)?);
            expect_eq(
                "account_key",
                &p.account_key,
                &account.verifying_key().to_bytes().to_vec(),
            )?;
            let handle = Handle::from_canonical(&p.handle).map_err(wire)?;
            let cert = DeviceCertificate::issue(
                &account,
                handle,
                DeviceId(array("device_id", &p.device_id)?),
                array("device_key", &p.device_key)?,
                p.issued_at,
            );
            expect_eq("tbs", &p.tbs, &cert.tbs())?;
            expect_eq(
                "signature_input",
                &p.signature_input,
                &signature_input(DEVICE_CERTIFICATE_LABEL, &cert.tbs()),
            )?;
            expect_eq("signature", &p.signature, &cert.signature.to_vec())?;
            expect_eq("certificate", &p.certificate, &cert.encode())?;
            let decoded = DeviceCertificate::decode(&p.certificate).map_err(wire)?;
            expect_eq("certificate (decoded)", &decoded, &cert)
        }
    }
}
