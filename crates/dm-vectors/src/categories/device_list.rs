//! `device-list.json`: the account's signed list of devices (PROTOCOL.md §1.3).

use dm_wire::cert::{DEVICE_LIST_LABEL, DeviceCertificate, DeviceList, signature_input};
use dm_wire::{DeviceId, Handle};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{array, hexbytes, key, wire};
use crate::craft::{Cert, List};
use crate::{Case, Cases, Category, Rejection, expect_eq, negative, parse, seed, to_value};

pub(super) const CATEGORY: Category = Category {
    name: "device-list",
    description: "DeviceList version 1: the account's complete set of device certificates, \
                  signed by the account key. Positive cases give the account secret, each \
                  device (id, key, certificate), the TBS, the signed input, the signature and \
                  the encoding. A list is valid iff its version is 1, its signature verifies \
                  strictly, it holds 1 to 16 certificates that all verify, all name the list's \
                  handle and account key, and no device id appears twice; trailing bytes are \
                  invalid. Negative cases are encodings with exactly one defect.",
    spec: "PROTOCOL.md §1.3",
    format_version: 1,
    generate,
    verify,
};

#[derive(Serialize, Deserialize)]
struct Device {
    #[serde(with = "hexbytes")]
    device_id: Vec<u8>,
    #[serde(with = "hexbytes")]
    device_key: Vec<u8>,
    issued_at: u64,
    #[serde(with = "hexbytes")]
    certificate: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Positive {
    name: String,
    #[serde(with = "hexbytes")]
    account_secret: Vec<u8>,
    #[serde(with = "hexbytes")]
    account_key: Vec<u8>,
    handle: String,
    sequence: u64,
    issued_at: u64,
    devices: Vec<Device>,
    #[serde(with = "hexbytes")]
    tbs: Vec<u8>,
    #[serde(with = "hexbytes")]
    signature_input: Vec<u8>,
    #[serde(with = "hexbytes")]
    signature: Vec<u8>,
    #[serde(with = "hexbytes")]
    device_list: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Negative {
    #[serde(with = "hexbytes")]
    device_list: Vec<u8>,
}

fn positive(
    name: &str,
    label: &str,
    handle: &str,
    sequence: u64,
    devices: usize,
) -> Result<Value, String> {
    let account = key(&format!("{label}/account"));
    let h = Handle::from_canonical(handle).map_err(|e| e.to_string())?;
    let issued_at = 1_700_000_000 + sequence * 1000;
    let certs: Vec<DeviceCertificate> = (0..devices)
        .map(|i| {
            DeviceCertificate::issue(
                &account,
                h.clone(),
                DeviceId(seed::bytes16(&format!("{label}/device-id/{i}"))),
                key(&format!("{label}/device/{i}"))
                    .verifying_key()
                    .to_bytes(),
                issued_at - 500 + i as u64,
            )
        })
        .collect();
    let list = DeviceList::issue(&account, h, sequence, issued_at, certs.clone())
        .map_err(|e| e.to_string())?;
    to_value(&Positive {
        name: name.into(),
        account_secret: account.to_bytes().to_vec(),
        account_key: account.verifying_key().to_bytes().to_vec(),
        handle: handle.into(),
        sequence,
        issued_at,
        devices: certs
            .iter()
            .map(|c| Device {
                device_id: c.device_id.0.to_vec(),
                device_key: c.device_key.to_vec(),
                issued_at: c.issued_at,
                certificate: c.encode(),
            })
            .collect(),
        signature_input: signature_input(DEVICE_LIST_LABEL, &list.tbs()),
        tbs: list.tbs(),
        signature: list.signature.to_vec(),
        device_list: list.encode(),
    })
}

struct Base {
    account: SigningKey,
    cert: Cert,
    list: List,
}

fn base() -> Base {
    let account = key("device-list/negative/account");
    let cert = Cert {
        version: 1,
        handle: b"alice".to_vec(),
        account_key: account.verifying_key().to_bytes(),
        device_id: seed::bytes16("device-list/negative/device-id/0"),
        device_key: key("device-list/negative/device/0")
            .verifying_key()
            .to_bytes(),
        issued_at: 1_700_000_000,
    };
    let list = List {
        version: 1,
        handle: b"alice".to_vec(),
        account_key: account.verifying_key().to_bytes(),
        sequence: 2,
        issued_at: 1_700_000_100,
        certificates: vec![cert.signed(&account)],
    };
    Base {
        account,
        cert,
        list,
    }
}

fn generate() -> Result<Cases, String> {
    let mut cases = Cases::default();
    cases
        .positive
        .push(positive("one_device", "device-list/one", "alice", 1, 1)?);
    cases.positive.push(positive(
        "three_devices",
        "device-list/three",
        "carol_3",
        7,
        3,
    )?);
    cases.positive.push(positive(
        "sixteen_devices_the_maximum",
        "device-list/sixteen",
        "dave",
        42,
        16,
    )?);

    let Base {
        account,
        cert,
        list,
    } = base();
    let other = key("device-list/negative/other");
    let good = list.signed(&account);
    let mut add = |name: &str, defect: &str, error: &str, bytes: Vec<u8>| -> Result<(), String> {
        cases.negative.push(negative(
            name,
            defect,
            error,
            &Negative { device_list: bytes },
        )?);
        Ok(())
    };
    let second = Cert {
        device_id: seed::bytes16("device-list/negative/device-id/1"),
        device_key: key("device-list/negative/device/1")
            .verifying_key()
            .to_bytes(),
        ..cert.clone()
    };

    let mut flipped = good.clone();
    let n = flipped.len();
    flipped[n - 64] ^= 0x80;
    add(
        "list_signature_byte_flipped",
        "the first byte of the list's signature is changed",
        "bad_signature",
        flipped,
    )?;
    add(
        "signed_by_the_device_key",
        "the list is signed by the device's key instead of the account key",
        "bad_signature",
        list.signed(&key("device-list/negative/device/0")),
    )?;
    add(
        "sequence_changed_after_signing",
        "the sequence is one more than the value that was signed",
        "bad_signature",
        {
            let mut later = list.clone();
            later.sequence += 1;
            let mut b = later.tbs();
            b.extend_from_slice(&good[n - 64..]);
            b
        },
    )?;
    add(
        "certificate_signature_byte_flipped",
        "a byte of the certificate's signature is changed (the list is signed over it)",
        "bad_signature",
        {
            let mut c = cert.signed(&account);
            let m = c.len();
            c[m - 1] ^= 0x01;
            List {
                certificates: vec![c],
                ..list.clone()
            }
            .signed(&account)
        },
    )?;
    add(
        "certificate_of_another_account",
        "the certificate is a valid one of another account key (the list is signed by the \
         list's account key)",
        "inconsistent",
        List {
            certificates: vec![
                Cert {
                    account_key: other.verifying_key().to_bytes(),
                    ..cert.clone()
                }
                .signed(&other),
            ],
            ..list.clone()
        }
        .signed(&account),
    )?;
    add(
        "certificate_for_another_handle",
        "the certificate (signed by the same account key) names the handle \"bob\"",
        "inconsistent",
        List {
            certificates: vec![
                Cert {
                    handle: b"bob".to_vec(),
                    ..cert.clone()
                }
                .signed(&account),
            ],
            ..list.clone()
        }
        .signed(&account),
    )?;
    add(
        "device_listed_twice",
        "two certificates (different device keys) have the same device id",
        "inconsistent",
        List {
            certificates: vec![
                cert.signed(&account),
                Cert {
                    device_id: cert.device_id,
                    ..second.clone()
                }
                .signed(&account),
            ],
            ..list.clone()
        }
        .signed(&account),
    )?;
    add(
        "no_devices",
        "the list holds no certificate",
        "malformed",
        List {
            certificates: vec![],
            ..list.clone()
        }
        .signed(&account),
    )?;
    add(
        "seventeen_devices",
        "the list holds 17 certificates (at most 16 are allowed)",
        "malformed",
        List {
            certificates: (0..17)
                .map(|i| {
                    Cert {
                        device_id: seed::bytes16(&format!("device-list/negative/device-id/{i}")),
                        device_key: key(&format!("device-list/negative/device/{i}"))
                            .verifying_key()
                            .to_bytes(),
                        ..cert.clone()
                    }
                    .signed(&account)
                })
                .collect(),
            ..list.clone()
        }
        .signed(&account),
    )?;
    add(
        "count_larger_than_certificates",
        "the count says 2 but one certificate follows (then the signature)",
        "malformed",
        {
            let mut tbs = list.tbs();
            // version(1) handle<u8>(1 + 5) account_key(32) sequence(8) issued_at(8): count at 55.
            tbs[56] = 2;
            let sig = crate::craft::sign(&account, DEVICE_LIST_LABEL, &tbs);
            crate::craft::Bytes(tbs).raw(&sig).0
        },
    )?;
    add(
        "version_2",
        "the list's version byte is 2 (correctly signed)",
        "unsupported_version",
        List {
            version: 2,
            ..list.clone()
        }
        .signed(&account),
    )?;
    add(
        "certificate_version_2",
        "the certificate's version byte is 2 (certificate and list correctly signed)",
        "unsupported_version",
        List {
            certificates: vec![
                Cert {
                    version: 2,
                    ..cert.clone()
                }
                .signed(&account),
            ],
            ..list.clone()
        }
        .signed(&account),
    )?;
    add(
        "trailing_byte",
        "one zero byte follows the signature",
        "malformed",
        crate::craft::Bytes(good.clone()).u8(0).0,
    )?;
    add(
        "truncated_signature",
        "the last byte of the signature is missing",
        "malformed",
        good[..n - 1].to_vec(),
    )?;
    add(
        "handle_not_canonical",
        "the list's handle is \"ALICE\" (certificate and list correctly signed for it)",
        "invalid_handle",
        List {
            handle: b"ALICE".to_vec(),
            certificates: vec![
                Cert {
                    handle: b"ALICE".to_vec(),
                    ..cert
                }
                .signed(&account),
            ],
            ..list
        }
        .signed(&account),
    )?;
    Ok(cases)
}

fn verify(case: &Case<'_>) -> Result<(), Rejection> {
    match case {
        Case::Negative(_) => {
            let n: Negative = parse(case)?;
            DeviceList::decode(&n.device_list).map_err(wire)?;
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
            let mut certs = Vec::new();
            for (i, d) in p.devices.iter().enumerate() {
                let cert = DeviceCertificate::issue(
                    &account,
                    handle.clone(),
                    DeviceId(array("device_id", &d.device_id)?),
                    array("device_key", &d.device_key)?,
                    d.issued_at,
                );
                expect_eq(
                    &format!("devices[{i}].certificate"),
                    &d.certificate,
                    &cert.encode(),
                )?;
                certs.push(cert);
            }
            let list = DeviceList::issue(&account, handle, p.sequence, p.issued_at, certs)
                .map_err(wire)?;
            expect_eq("tbs", &p.tbs, &list.tbs())?;
            expect_eq(
                "signature_input",
                &p.signature_input,
                &signature_input(DEVICE_LIST_LABEL, &list.tbs()),
            )?;
            expect_eq("signature", &p.signature, &list.signature.to_vec())?;
            expect_eq("device_list", &p.device_list, &list.encode())?;
            let decoded = DeviceList::decode(&p.device_list).map_err(wire)?;
            expect_eq("device_list (decoded)", &decoded, &list)
        }
    }
}
