//! `message-framing.json`: how MLS messages travel in the relay's JSON bodies
//! (PROTOCOL.md §2.1): no framing of their own, the exact TLS-encoded `MLSMessage` bytes in
//! standard padded base64, ids in lower-case hex.

use dm_wire::api::{Envelope, SendRequest};
use dm_wire::{DeviceId, MessageId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{array, hexbytes, hexvec};
use crate::{Case, Cases, Category, Rejection, expect_eq, negative, parse, seed, to_value};

pub(super) const CATEGORY: Category = Category {
    name: "message-framing",
    description: "MLS messages are carried without any framing of this protocol: the exact \
                  TLS-encoded MLSMessage bytes (RFC 9420 §6), standard base64 with padding \
                  (RFC 4648 §4) in a JSON string. body \"send_request\" is the body of POST \
                  /v1/messages ({id, message, welcome?, removed_devices?}); body \"envelope\" \
                  is one entry of a mailbox fetch ({seq, payload, received_at}). Positive \
                  cases give the JSON exactly as the reference implementation writes it \
                  (compact, this key order) and the decoded fields; the bytes are opaque here \
                  (the relay's MLS checks are in PROTOCOL.md §2.5). Negative cases are bodies \
                  the relay answers with 400 and the code given.",
    spec: "PROTOCOL.md §2.1, §2.5, §2.6",
    format_version: 1,
    generate,
    verify,
};

#[derive(Serialize, Deserialize)]
#[serde(tag = "body", rename_all = "snake_case")]
enum Positive {
    SendRequest {
        name: String,
        json: String,
        #[serde(with = "hexbytes")]
        id: Vec<u8>,
        #[serde(with = "hexbytes")]
        message: Vec<u8>,
        /// Hex, or null when absent.
        welcome: Option<String>,
        #[serde(with = "hexvec")]
        removed_devices: Vec<Vec<u8>>,
    },
    Envelope {
        name: String,
        json: String,
        seq: u64,
        #[serde(with = "hexbytes")]
        payload: Vec<u8>,
        received_at: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct Negative {
    body: String,
    json: String,
}

fn send_request(
    name: &str,
    message_len: usize,
    welcome_len: Option<usize>,
    removed: usize,
) -> Result<Value, String> {
    let req = SendRequest {
        id: MessageId(seed::bytes16(&format!("message-framing/{name}/id"))),
        message: seed::bytes(&format!("message-framing/{name}/message"), message_len),
        welcome: welcome_len.map(|n| seed::bytes(&format!("message-framing/{name}/welcome"), n)),
        removed_devices: (0..removed)
            .map(|i| {
                DeviceId(seed::bytes16(&format!(
                    "message-framing/{name}/removed/{i}"
                )))
            })
            .collect(),
    };
    to_value(&Positive::SendRequest {
        name: name.into(),
        json: serde_json::to_string(&req).map_err(|e| e.to_string())?,
        id: req.id.0.to_vec(),
        message: req.message.clone(),
        welcome: req.welcome.as_ref().map(hex::encode),
        removed_devices: req.removed_devices.iter().map(|d| d.0.to_vec()).collect(),
    })
}

fn envelope(name: &str, seq: u64, len: usize, received_at: u64) -> Result<Value, String> {
    let env = Envelope {
        seq,
        payload: seed::bytes(&format!("message-framing/{name}/payload"), len),
        received_at,
    };
    to_value(&Positive::Envelope {
        name: name.into(),
        json: serde_json::to_string(&env).map_err(|e| e.to_string())?,
        seq,
        payload: env.payload.clone(),
        received_at,
    })
}

fn generate() -> Result<Cases, String> {
    let mut cases = Cases::default();
    cases
        .positive
        .push(send_request("application_message", 300, None, 0)?);
    cases
        .positive
        .push(send_request("commit_with_welcome", 1000, Some(701), 0)?);
    cases
        .positive
        .push(send_request("commit_removing_two_devices", 257, None, 2)?);
    cases
        .positive
        .push(send_request("base64_with_one_padding_char", 2, None, 0)?);
    cases
        .positive
        .push(envelope("envelope", 42, 512, 1_700_000_000_123)?);
    cases
        .positive
        .push(envelope("envelope_first_seq", 1, 1, 0)?);

    let id = "00112233445566778899aabbccddeeff";
    let mut add = |name: &str, defect: &str, json: String| -> Result<(), String> {
        cases.negative.push(negative(
            name,
            defect,
            "invalid_request",
            &Negative {
                body: "send_request".into(),
                json,
            },
        )?);
        Ok(())
    };
    add(
        "base64_without_padding",
        "message is \"AQI\" (the padding '=' is missing)",
        format!(r#"{{"id":"{id}","message":"AQI"}}"#),
    )?;
    add(
        "base64_url_alphabet",
        "message uses the URL-safe alphabet (\"-_8=\")",
        format!(r#"{{"id":"{id}","message":"-_8="}}"#),
    )?;
    add(
        "base64_non_zero_trailing_bits",
        "message is \"AQJ=\": the unused low bits of the last character are not zero",
        format!(r#"{{"id":"{id}","message":"AQJ="}}"#),
    )?;
    add(
        "base64_with_line_break",
        "message contains a line break",
        format!(r#"{{"id":"{id}","message":"AQID\nBA=="}}"#),
    )?;
    add(
        "id_15_bytes",
        "the id is 15 bytes (30 hex digits)",
        format!(r#"{{"id":"{}","message":"AQID"}}"#, &id[..30]),
    )?;
    add(
        "id_not_hex",
        "the id contains 'g'",
        format!(r#"{{"id":"g{}","message":"AQID"}}"#, &id[1..]),
    )?;
    add(
        "message_missing",
        "the body has no message",
        format!(r#"{{"id":"{id}"}}"#),
    )?;
    add(
        "message_as_array",
        "message is a JSON array of numbers instead of a base64 string",
        format!(r#"{{"id":"{id}","message":[1,2,3]}}"#),
    )?;
    add(
        "removed_device_not_hex",
        "a removed device id is not hex",
        format!(r#"{{"id":"{id}","message":"AQID","removed_devices":["xyz"]}}"#),
    )?;
    add(
        "not_json",
        "the body is not JSON",
        "id=1&message=AQID".into(),
    )?;
    Ok(cases)
}

fn invalid_request(e: serde_json::Error) -> Rejection {
    Rejection::new("invalid_request", e.to_string())
}

fn verify(case: &Case<'_>) -> Result<(), Rejection> {
    match case {
        Case::Negative(_) => {
            let n: Negative = parse(case)?;
            match n.body.as_str() {
                "send_request" => serde_json::from_str::<SendRequest>(&n.json)
                    .map(|_| ())
                    .map_err(invalid_request),
                "envelope" => serde_json::from_str::<Envelope>(&n.json)
                    .map(|_| ())
                    .map_err(invalid_request),
                other => Err(Rejection::bad_vector(format!("unknown body {other:?}"))),
            }
        }
        Case::Positive(_) => match parse::<Positive>(case)? {
            Positive::SendRequest {
                json,
                id,
                message,
                welcome,
                removed_devices,
                ..
            } => {
                let welcome = welcome
                    .map(hex::decode)
                    .transpose()
                    .map_err(Rejection::bad_vector)?;
                let expected = SendRequest {
                    id: MessageId(array("id", &id)?),
                    message,
                    welcome,
                    removed_devices: removed_devices
                        .iter()
                        .map(|d| array("removed_devices[]", d).map(DeviceId))
                        .collect::<Result<_, _>>()?,
                };
                let parsed: SendRequest = serde_json::from_str(&json).map_err(invalid_request)?;
                expect_eq("id", &parsed.id, &expected.id)?;
                expect_eq("message", &parsed.message, &expected.message)?;
                expect_eq("welcome", &parsed.welcome, &expected.welcome)?;
                expect_eq(
                    "removed_devices",
                    &parsed.removed_devices,
                    &expected.removed_devices,
                )?;
                let written = serde_json::to_string(&expected).map_err(Rejection::bad_vector)?;
                expect_eq("json", &json, &written)
            }
            Positive::Envelope {
                json,
                seq,
                payload,
                received_at,
                ..
            } => {
                let parsed: Envelope = serde_json::from_str(&json).map_err(invalid_request)?;
                expect_eq("seq", &parsed.seq, &seq)?;
                expect_eq("payload", &parsed.payload, &payload)?;
                expect_eq("received_at", &parsed.received_at, &received_at)?;
                let written = serde_json::to_string(&Envelope {
                    seq,
                    payload,
                    received_at,
                })
                .map_err(Rejection::bad_vector)?;
                expect_eq("json", &json, &written)
            }
        },
    }
}
