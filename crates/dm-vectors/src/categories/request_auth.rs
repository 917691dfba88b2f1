//! `request-auth.json`: what a device signs to register an account and to open a session
//! with the relay (PROTOCOL.md §2.2, §2.3).

use dm_wire::auth::{
    CHALLENGE_LEN, REGISTRATION_LABEL, SESSION_LABEL, registration_body, session_body,
};
use dm_wire::cert::{DeviceCertificate, DeviceList, sign_labeled, signature_input, verify_labeled};
use dm_wire::{DeviceId, Handle};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{array, hexbytes, key, wire};
use crate::{Case, Cases, Category, Rejection, expect_eq, negative, parse, seed, to_value};

pub(super) const CATEGORY: Category = Category {
    name: "request-auth",
    description: "Relay authentication by device key, version 1. kind \"registration\": the \
                  device proves possession of its key by signing, under the label \
                  dm-e2ee/v1/register-device, the encoded DeviceList (sequence 1, one device) \
                  sent in POST /v1/accounts. kind \"session\": the device signs, under the label \
                  dm-e2ee/v1/session, SessionBody = handle<u8> device_id[16] challenge[32] for \
                  POST /v1/auth/session. Ed25519 is deterministic, so the signatures are \
                  reproducible from the secrets given. Negative cases must be refused (the \
                  relay answers them 400 invalid_signature / 400 invalid_request for \
                  registration and 401 auth_failed for sessions).",
    spec: "PROTOCOL.md §1.1, §2.2, §2.3",
    format_version: 1,
    generate,
    verify,
};

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Positive {
    Registration {
        #[serde(with = "hexbytes")]
        account_secret: Vec<u8>,
        #[serde(with = "hexbytes")]
        device_secret: Vec<u8>,
        #[serde(with = "hexbytes")]
        device_key: Vec<u8>,
        handle: String,
        #[serde(with = "hexbytes")]
        device_id: Vec<u8>,
        /// Both the certificate's and the list's `issued_at`.
        issued_at: u64,
        #[serde(with = "hexbytes")]
        device_list: Vec<u8>,
        #[serde(with = "hexbytes")]
        signature_input: Vec<u8>,
        #[serde(with = "hexbytes")]
        device_proof: Vec<u8>,
    },
    Session {
        #[serde(with = "hexbytes")]
        device_secret: Vec<u8>,
        #[serde(with = "hexbytes")]
        device_key: Vec<u8>,
        handle: String,
        #[serde(with = "hexbytes")]
        device_id: Vec<u8>,
        #[serde(with = "hexbytes")]
        challenge: Vec<u8>,
        #[serde(with = "hexbytes")]
        session_body: Vec<u8>,
        #[serde(with = "hexbytes")]
        signature_input: Vec<u8>,
        #[serde(with = "hexbytes")]
        signature: Vec<u8>,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Negative {
    Registration {
        #[serde(with = "hexbytes")]
        device_list: Vec<u8>,
        #[serde(with = "hexbytes")]
        device_proof: Vec<u8>,
    },
    Session {
        handle: String,
        #[serde(with = "hexbytes")]
        device_id: Vec<u8>,
        #[serde(with = "hexbytes")]
        device_key: Vec<u8>,
        #[serde(with = "hexbytes")]
        challenge: Vec<u8>,
        #[serde(with = "hexbytes")]
        signature: Vec<u8>,
    },
}

fn named(name: &str, value: Value) -> Value {
    let mut map = serde_json::Map::new();
    map.insert("name".into(), name.into());
    if let Value::Object(fields) = value {
        map.extend(fields);
    }
    Value::Object(map)
}

/// A new account's device list and the device key.
fn new_account(
    label: &str,
    handle: &str,
    issued_at: u64,
) -> Result<(SigningKey, SigningKey, DeviceId, DeviceList), String> {
    let account = key(&format!("{label}/account"));
    let device = key(&format!("{label}/device"));
    let device_id = DeviceId(seed::bytes16(&format!("{label}/device-id")));
    let h = Handle::from_canonical(handle).map_err(|e| e.to_string())?;
    let cert = DeviceCertificate::issue(
        &account,
        h.clone(),
        device_id,
        device.verifying_key().to_bytes(),
        issued_at,
    );
    let list =
        DeviceList::issue(&account, h, 1, issued_at, vec![cert]).map_err(|e| e.to_string())?;
    Ok((account, device, device_id, list))
}

fn registration(name: &str, label: &str, handle: &str, issued_at: u64) -> Result<Value, String> {
    let (account, device, device_id, list) = new_account(label, handle, issued_at)?;
    let encoded = list.encode();
    let body = registration_body(&encoded);
    Ok(named(
        name,
        to_value(&Positive::Registration {
            account_secret: account.to_bytes().to_vec(),
            device_secret: device.to_bytes().to_vec(),
            device_key: device.verifying_key().to_bytes().to_vec(),
            handle: handle.into(),
            device_id: device_id.0.to_vec(),
            issued_at,
            signature_input: signature_input(REGISTRATION_LABEL, &body),
            device_proof: sign_labeled(&device, REGISTRATION_LABEL, &body).to_vec(),
            device_list: encoded,
        })?,
    ))
}

fn session(name: &str, label: &str, handle: &str) -> Result<Value, String> {
    let device = key(&format!("{label}/device"));
    let device_id = DeviceId(seed::bytes16(&format!("{label}/device-id")));
    let challenge = seed::bytes32(&format!("{label}/challenge"));
    let h = Handle::from_canonical(handle).map_err(|e| e.to_string())?;
    let body = session_body(&h, &device_id, &challenge);
    Ok(named(
        name,
        to_value(&Positive::Session {
            device_secret: device.to_bytes().to_vec(),
            device_key: device.verifying_key().to_bytes().to_vec(),
            handle: handle.into(),
            device_id: device_id.0.to_vec(),
            challenge: challenge.to_vec(),
            signature_input: signature_input(SESSION_LABEL, &body),
            signature: sign_labeled(&device, SESSION_LABEL, &body).to_vec(),
            session_body: body,
        })?,
    ))
}

fn generate() -> Result<Cases, String> {
    let mut cases = Cases::default();
    cases.positive.push(registration(
        "registration_alice",
        "request-auth/registration/alice",
        "alice",
        1_700_000_000,
    )?);
    cases.positive.push(registration(
        "registration_long_handle",
        "request-auth/registration/long",
        "a_handle_of_32_characters_0_9_xy",
        1_767_225_600,
    )?);
    cases.positive.push(session(
        "session_alice",
        "request-auth/session/alice",
        "alice",
    )?);
    cases.positive.push(session(
        "session_bob_42",
        "request-auth/session/bob",
        "bob_42",
    )?);

    // Registration negatives.
    let (account, device, device_id, list) =
        new_account("request-auth/negative/registration", "alice", 1_700_000_000)?;
    let encoded = list.encode();
    let proof = sign_labeled(&device, REGISTRATION_LABEL, &encoded).to_vec();
    let mut reg = |name: &str,
                   defect: &str,
                   error: &str,
                   device_list: Vec<u8>,
                   device_proof: Vec<u8>|
     -> Result<(), String> {
        cases.negative.push(negative(
            name,
            defect,
            error,
            &Negative::Registration {
                device_list,
                device_proof,
            },
        )?);
        Ok(())
    };
    reg(
        "proof_by_the_account_key",
        "the proof is signed by the account key instead of the device key",
        "bad_signature",
        encoded.clone(),
        sign_labeled(&account, REGISTRATION_LABEL, &encoded).to_vec(),
    )?;
    reg(
        "proof_under_session_label",
        "the proof is the device key's signature under the session label",
        "bad_signature",
        encoded.clone(),
        sign_labeled(&device, SESSION_LABEL, &encoded).to_vec(),
    )?;
    reg(
        "proof_over_another_list",
        "the proof signs another valid list (issued one second later) than the one sent",
        "bad_signature",
        encoded.clone(),
        {
            let h = list.handle.clone();
            let cert = list.devices[0].clone();
            let other = DeviceList::issue(&account, h, 1, list.issued_at + 1, vec![cert])
                .map_err(|e| e.to_string())?;
            sign_labeled(&device, REGISTRATION_LABEL, &other.encode()).to_vec()
        },
    )?;
    reg(
        "proof_63_bytes",
        "the proof's last byte is missing",
        "bad_signature",
        encoded.clone(),
        proof[..63].to_vec(),
    )?;
    reg(
        "list_signature_byte_flipped",
        "a byte of the device list's signature is changed (the proof signs the changed list)",
        "bad_signature",
        {
            let mut b = encoded.clone();
            let n = b.len();
            b[n - 1] ^= 0x01;
            b
        },
        {
            let mut b = encoded.clone();
            let n = b.len();
            b[n - 1] ^= 0x01;
            sign_labeled(&device, REGISTRATION_LABEL, &b).to_vec()
        },
    )?;
    reg(
        "sequence_2",
        "the device list (correctly signed) has sequence 2: a new account's list has sequence 1",
        "invalid_request",
        {
            let l = DeviceList::issue(
                &account,
                list.handle.clone(),
                2,
                list.issued_at,
                list.devices.clone(),
            )
            .map_err(|e| e.to_string())?;
            l.encode()
        },
        {
            let l = DeviceList::issue(
                &account,
                list.handle.clone(),
                2,
                list.issued_at,
                list.devices.clone(),
            )
            .map_err(|e| e.to_string())?;
            sign_labeled(&device, REGISTRATION_LABEL, &l.encode()).to_vec()
        },
    )?;
    reg(
        "two_devices",
        "the device list (correctly signed) holds two devices: a new account has one",
        "invalid_request",
        {
            let l = two_device_list(&account, &list)?;
            l.encode()
        },
        {
            let l = two_device_list(&account, &list)?;
            sign_labeled(&device, REGISTRATION_LABEL, &l.encode()).to_vec()
        },
    )?;

    // Session negatives.
    let handle = "alice";
    let h = Handle::from_canonical(handle).map_err(|e| e.to_string())?;
    let challenge = seed::bytes32("request-auth/negative/session/challenge");
    let body = session_body(&h, &device_id, &challenge);
    let good_sig = sign_labeled(&device, SESSION_LABEL, &body).to_vec();
    let mut ses = |name: &str,
                   defect: &str,
                   error: &str,
                   handle: &str,
                   challenge: Vec<u8>,
                   signature: Vec<u8>|
     -> Result<(), String> {
        cases.negative.push(negative(
            name,
            defect,
            error,
            &Negative::Session {
                handle: handle.into(),
                device_id: device_id.0.to_vec(),
                device_key: device.verifying_key().to_bytes().to_vec(),
                challenge,
                signature,
            },
        )?);
        Ok(())
    };
    ses(
        "signature_over_another_challenge",
        "the signature is over another challenge than the one sent",
        "bad_signature",
        handle,
        challenge.to_vec(),
        {
            let other = seed::bytes32("request-auth/negative/session/other-challenge");
            sign_labeled(
                &device,
                SESSION_LABEL,
                &session_body(&h, &device_id, &other),
            )
            .to_vec()
        },
    )?;
    ses(
        "signature_by_another_key",
        "the signature is by the account key, not the device key",
        "bad_signature",
        handle,
        challenge.to_vec(),
        sign_labeled(&account, SESSION_LABEL, &body).to_vec(),
    )?;
    ses(
        "signature_under_registration_label",
        "the session body is signed under the registration label",
        "bad_signature",
        handle,
        challenge.to_vec(),
        sign_labeled(&device, REGISTRATION_LABEL, &body).to_vec(),
    )?;
    ses(
        "signature_without_label",
        "the signature is over the bare session body (no label, no 0x00)",
        "bad_signature",
        handle,
        challenge.to_vec(),
        {
            use ed25519_dalek::Signer as _;
            device.sign(&body).to_bytes().to_vec()
        },
    )?;
    ses(
        "signature_for_another_handle",
        "the signature names the handle \"alicf\" in the session body; the request says alice",
        "bad_signature",
        handle,
        challenge.to_vec(),
        {
            let other = Handle::from_canonical("alicf").map_err(|e| e.to_string())?;
            sign_labeled(
                &device,
                SESSION_LABEL,
                &session_body(&other, &device_id, &challenge),
            )
            .to_vec()
        },
    )?;
    ses(
        "challenge_31_bytes",
        "the challenge is 31 bytes (the signature signs those 31 bytes)",
        "malformed",
        handle,
        challenge[..31].to_vec(),
        {
            let mut short = vec![5u8];
            short.extend_from_slice(b"alice");
            short.extend_from_slice(&device_id.0);
            short.extend_from_slice(&challenge[..31]);
            sign_labeled(&device, SESSION_LABEL, &short).to_vec()
        },
    )?;
    ses(
        "handle_not_canonical",
        "the handle is \"Alice\" (the session body is signed with it)",
        "invalid_handle",
        "Alice",
        challenge.to_vec(),
        {
            let mut b = vec![5u8];
            b.extend_from_slice(b"Alice");
            b.extend_from_slice(&device_id.0);
            b.extend_from_slice(&challenge);
            sign_labeled(&device, SESSION_LABEL, &b).to_vec()
        },
    )?;
    ses(
        "signature_byte_flipped",
        "the first byte of a valid signature is changed",
        "bad_signature",
        handle,
        challenge.to_vec(),
        {
            let mut s = good_sig;
            s[0] ^= 0x01;
            s
        },
    )?;
    Ok(cases)
}

fn two_device_list(account: &SigningKey, list: &DeviceList) -> Result<DeviceList, String> {
    let mut devices = list.devices.clone();
    devices.push(DeviceCertificate::issue(
        account,
        list.handle.clone(),
        DeviceId(seed::bytes16(
            "request-auth/negative/registration/device-id/2",
        )),
        key("request-auth/negative/registration/device/2")
            .verifying_key()
            .to_bytes(),
        list.issued_at,
    ));
    DeviceList::issue(account, list.handle.clone(), 1, list.issued_at, devices)
        .map_err(|e| e.to_string())
}

/// The relay's registration checks, in its order: the list decodes and verifies, has
/// sequence 1 and exactly one device, and the proof verifies with that device's key.
fn check_registration(device_list: &[u8], proof: &[u8]) -> Result<DeviceList, Rejection> {
    let list = DeviceList::decode(device_list).map_err(wire)?;
    if list.sequence != 1 {
        return Err(Rejection::new(
            "invalid_request",
            "a new account's device list must have sequence 1",
        ));
    }
    let [device] = list.devices.as_slice() else {
        return Err(Rejection::new(
            "invalid_request",
            "a new account's device list must hold exactly one device",
        ));
    };
    verify_labeled(
        &device.device_key,
        REGISTRATION_LABEL,
        &registration_body(device_list),
        proof,
        "registration proof",
    )
    .map_err(wire)?;
    Ok(list)
}

/// The relay's session check: canonical handle, a 32-byte challenge, and the device key's
/// signature over the session body.
fn check_session(
    handle: &str,
    device_id: &[u8],
    device_key: &[u8],
    challenge: &[u8],
    signature: &[u8],
) -> Result<Vec<u8>, Rejection> {
    let handle = Handle::from_canonical(handle).map_err(wire)?;
    let device_id = DeviceId(array("device_id", device_id)?);
    let device_key: [u8; 32] = array("device_key", device_key)?;
    let challenge: [u8; CHALLENGE_LEN] = challenge
        .try_into()
        .map_err(|_| Rejection::new("malformed", "the challenge must be 32 bytes"))?;
    let body = session_body(&handle, &device_id, &challenge);
    verify_labeled(
        &device_key,
        SESSION_LABEL,
        &body,
        signature,
        "session proof",
    )
    .map_err(wire)?;
    Ok(body)
}

fn verify(case: &Case<'_>) -> Result<(), Rejection> {
    match case {
        Case::Negative(_) => match parse::<Negative>(case)? {
            Negative::Registration {
                device_list,
                device_proof,
            } => check_registration(&device_list, &device_proof).map(|_| ()),
            Negative::Session {
                handle,
                device_id,
                device_key,
                challenge,
                signature,
            } => {
                check_session(&handle, &device_id, &device_key, &challenge, &signature).map(|_| ())
            }
        },
        Case::Positive(_) => match parse::<Positive>(case)? {
            Positive::Registration {
                account_secret,
                device_secret,
                device_key,
                handle,
                device_id,
                issued_at,
                device_list,
                signature_input: input,
                device_proof,
            } => {
                let account = SigningKey::from_bytes(&array("account_secret", &account_secret)?);
                let device = SigningKey::from_bytes(&array("device_secret", &device_secret)?);
                expect_eq(
                    "device_key",
                    &device_key,
                    &device.verifying_key().to_bytes().to_vec(),
                )?;
                let h = Handle::from_canonical(&handle).map_err(wire)?;
                let cert = DeviceCertificate::issue(
                    &account,
                    h.clone(),
                    DeviceId(array("device_id", &device_id)?),
                    device.verifying_key().to_bytes(),
                    issued_at,
                );
                let list =
                    DeviceList::issue(&account, h, 1, issued_at, vec![cert]).map_err(wire)?;
                expect_eq("device_list", &device_list, &list.encode())?;
                let body = registration_body(&device_list);
                expect_eq(
                    "signature_input",
                    &input,
                    &signature_input(REGISTRATION_LABEL, &body),
                )?;
                expect_eq(
                    "device_proof",
                    &device_proof,
                    &sign_labeled(&device, REGISTRATION_LABEL, &body).to_vec(),
                )?;
                let decoded = check_registration(&device_list, &device_proof)?;
                expect_eq("device_list (decoded)", &decoded, &list)
            }
            Positive::Session {
                device_secret,
                device_key,
                handle,
                device_id,
                challenge,
                session_body: body,
                signature_input: input,
                signature,
            } => {
                let device = SigningKey::from_bytes(&array("device_secret", &device_secret)?);
                expect_eq(
                    "device_key",
                    &device_key,
                    &device.verifying_key().to_bytes().to_vec(),
                )?;
                let checked =
                    check_session(&handle, &device_id, &device_key, &challenge, &signature)?;
                expect_eq("session_body", &body, &checked)?;
                expect_eq(
                    "signature_input",
                    &input,
                    &signature_input(SESSION_LABEL, &checked),
                )?;
                expect_eq(
                    "signature",
                    &signature,
                    &sign_labeled(&device, SESSION_LABEL, &checked).to_vec(),
                )
            }
        },
    }
}
