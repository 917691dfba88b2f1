//! The checked-in OpenAPI document against the router and the wire types.

use std::collections::BTreeSet;

use dm_wire::api::ErrorCode;

use crate::support::Relay;

fn document() -> serde_json::Value {
    serde_json::from_str(include_str!("../../openapi.json")).expect("openapi.json is JSON")
}

/// The documented operations: (METHOD, path).
fn documented_routes(doc: &serde_json::Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ]
            .contains(&method.as_str())
            {
                routes.insert((method.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    routes
}

/// Every error code, with a match that stops compiling when a code is added.
fn all_error_codes() -> Vec<ErrorCode> {
    let codes = [
        ErrorCode::InvalidRequest,
        ErrorCode::InvalidHandle,
        ErrorCode::InvalidSignature,
        ErrorCode::HandleTaken,
        ErrorCode::UnknownHandle,
        ErrorCode::Unauthenticated,
        ErrorCode::AuthFailed,
        ErrorCode::InvalidKeyPackage,
        ErrorCode::TooManyKeyPackages,
        ErrorCode::InvalidMessage,
        ErrorCode::NotMember,
        ErrorCode::EpochConflict,
        ErrorCode::IdReused,
        ErrorCode::PayloadTooLarge,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];
    for code in codes {
        // Add a new code to the array above (and to openapi.json).
        match code {
            ErrorCode::InvalidRequest
            | ErrorCode::InvalidHandle
            | ErrorCode::InvalidSignature
            | ErrorCode::HandleTaken
            | ErrorCode::UnknownHandle
            | ErrorCode::Unauthenticated
            | ErrorCode::AuthFailed
            | ErrorCode::InvalidKeyPackage
            | ErrorCode::TooManyKeyPackages
            | ErrorCode::InvalidMessage
            | ErrorCode::NotMember
            | ErrorCode::EpochConflict
            | ErrorCode::IdReused
            | ErrorCode::PayloadTooLarge
            | ErrorCode::NotFound
            | ErrorCode::MethodNotAllowed
            | ErrorCode::RateLimited
            | ErrorCode::Internal
            | ErrorCode::Unavailable => {}
        }
    }
    codes.to_vec()
}

#[tokio::test]
async fn openapi_document_is_served_and_matches_the_router() {
    let relay = Relay::start().await;
    let resp = relay.get("/openapi.json", None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.content_type.as_deref(), Some("application/json"));
    assert_eq!(resp.body, include_bytes!("../../openapi.json"));
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");

    // The same routes in both directions.
    let router: BTreeSet<(String, String)> = dm_server::routes()
        .into_iter()
        .map(|(method, path)| (method.as_str().to_owned(), path.to_owned()))
        .collect();
    let documented = documented_routes(&doc);
    let undocumented: Vec<_> = router.difference(&documented).collect();
    let unrouted: Vec<_> = documented.difference(&router).collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "routes missing from openapi.json: {undocumented:?}; documented but not routed: \
         {unrouted:?}"
    );

    // Probe the router itself: each documented operation is routed, and every other method
    // on a documented path is 405.
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let concrete = path.replace("{handle}", "alice");
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let resp = relay.raw(method, &concrete, None, Vec::new()).await;
            let code = resp
                .content_type
                .as_deref()
                .filter(|t| t.starts_with("application/json"))
                .map(|_| {
                    resp.json()["error"]["code"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned()
                });
            if item.get(method.to_ascii_lowercase()).is_some() {
                assert!(
                    code.as_deref() != Some("not_found")
                        && code.as_deref() != Some("method_not_allowed"),
                    "{method} {path} is documented but not routed ({})",
                    resp.status
                );
            } else {
                assert_eq!(
                    code.as_deref(),
                    Some("method_not_allowed"),
                    "{method} {path} is routed but not documented"
                );
            }
        }
    }
}

#[test]
fn openapi_lists_every_error_code_with_its_status() {
    let doc = document();
    let schema = &doc["components"]["schemas"]["ErrorCode"];
    let listed: BTreeSet<&str> = schema["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .map(|c| c.as_str().expect("string"))
        .collect();
    let codes = all_error_codes();
    let expected: BTreeSet<&str> = codes.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, expected);
    let statuses = schema["x-status"].as_object().expect("x-status");
    assert_eq!(statuses.len(), codes.len());
    for code in codes {
        assert_eq!(
            statuses[code.as_str()].as_u64(),
            Some(u64::from(code.status())),
            "{}",
            code.as_str()
        );
    }
    // Every documented error response of an operation uses a status some code has.
    let used: BTreeSet<u64> = statuses.values().filter_map(|s| s.as_u64()).collect();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            for status in op["responses"].as_object().expect("responses").keys() {
                let status: u64 = status.parse().expect("numeric status");
                assert!(
                    status < 400 || used.contains(&status),
                    "{method} {path}: {status} is no error code's status"
                );
            }
        }
    }
}

/// Field names of a schema: (all properties, required ones).
fn schema_fields(doc: &serde_json::Value, name: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let schema = &doc["components"]["schemas"][name];
    assert_eq!(schema["type"], "object", "{name}");
    let properties = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has properties"))
        .keys()
        .cloned()
        .collect();
    let required = schema["required"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} has required"))
        .iter()
        .map(|k| k.as_str().expect("string").to_owned())
        .collect();
    (properties, required)
}

fn keys(value: impl serde::Serialize) -> BTreeSet<String> {
    serde_json::to_value(value)
        .expect("serialise")
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect()
}

/// Each body schema has exactly the fields the Rust type serialises: all of them when every
/// optional field is set, the required ones when none is.
#[test]
fn openapi_schemas_match_the_wire_types() {
    use dm_wire::api::*;
    use dm_wire::{DeviceId, Handle, MessageId};

    let doc = document();
    let handle = Handle::parse("alice").expect("handle");
    let stock = KeyPackageStock {
        one_time: 1,
        last_resort: true,
    };
    let cases: Vec<(&str, BTreeSet<String>, BTreeSet<String>)> = vec![
        {
            let v = RegisterRequest {
                handle: handle.clone(),
                device_list: vec![1],
                device_proof: vec![2],
            };
            ("RegisterRequest", keys(&v), keys(&v))
        },
        {
            let v = AccountResponse {
                handle: handle.clone(),
                device_list: vec![1],
            };
            ("AccountResponse", keys(&v), keys(&v))
        },
        {
            let v = ChallengeRequest {
                handle: handle.clone(),
                device_id: DeviceId([1; 16]),
            };
            ("ChallengeRequest", keys(&v), keys(&v))
        },
        {
            let v = ChallengeResponse {
                challenge: vec![1],
                expires_at: 2,
            };
            ("ChallengeResponse", keys(&v), keys(&v))
        },
        {
            let v = SessionRequest {
                handle: handle.clone(),
                device_id: DeviceId([1; 16]),
                challenge: vec![1],
                signature: vec![2],
            };
            ("SessionRequest", keys(&v), keys(&v))
        },
        {
            let v = SessionResponse {
                token: "t".into(),
                expires_at: 1,
            };
            ("SessionResponse", keys(&v), keys(&v))
        },
        (
            "UploadKeyPackagesRequest",
            keys(UploadKeyPackagesRequest {
                key_packages: vec![vec![1]],
                last_resort: Some(vec![2]),
            }),
            keys(UploadKeyPackagesRequest {
                key_packages: vec![],
                last_resort: None,
            }),
        ),
        ("KeyPackageStock", keys(stock), keys(stock)),
        {
            let v = ClaimedKeyPackage {
                device_id: DeviceId([1; 16]),
                key_package: vec![1],
            };
            ("ClaimedKeyPackage", keys(&v), keys(&v))
        },
        {
            let v = ClaimResponse {
                handle: handle.clone(),
                device_list: vec![1],
                key_packages: vec![],
            };
            ("ClaimResponse", keys(&v), keys(&v))
        },
        (
            "SendRequest",
            keys(SendRequest {
                id: MessageId([1; 16]),
                message: vec![1],
                welcome: Some(vec![2]),
                removed_devices: vec![DeviceId([3; 16])],
            }),
            keys(SendRequest {
                id: MessageId([1; 16]),
                message: vec![1],
                welcome: None,
                removed_devices: vec![],
            }),
        ),
        {
            let v = SendResponse {
                epoch: 1,
                duplicate: false,
            };
            ("SendResponse", keys(&v), keys(&v))
        },
        {
            let v = Envelope {
                seq: 1,
                payload: vec![1],
                received_at: 2,
            };
            ("Envelope", keys(&v), keys(&v))
        },
        {
            let v = MailboxResponse {
                envelopes: vec![],
                more: false,
                key_packages: stock,
                dropped: 0,
            };
            ("MailboxResponse", keys(&v), keys(&v))
        },
        {
            let v = AckRequest { up_to: 1 };
            ("AckRequest", keys(v), keys(v))
        },
        (
            "ErrorDetail",
            keys(ErrorDetail {
                code: ErrorCode::EpochConflict,
                message: "m".into(),
                epoch: Some(1),
            }),
            keys(ErrorDetail {
                code: ErrorCode::Internal,
                message: "m".into(),
                epoch: None,
            }),
        ),
        {
            let v = ErrorBody {
                error: ErrorDetail {
                    code: ErrorCode::Internal,
                    message: "m".into(),
                    epoch: None,
                },
            };
            ("ErrorBody", keys(&v), keys(&v))
        },
    ];
    for (name, all, required) in cases {
        let (properties, documented_required) = schema_fields(&doc, name);
        assert_eq!(properties, all, "properties of {name}");
        assert_eq!(documented_required, required, "required fields of {name}");
    }

    // Every reference resolves.
    fn refs<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if k == "$ref" {
                        out.push(v.as_str().expect("string ref"));
                    }
                    refs(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for reference in found {
        let pointer = reference.strip_prefix('#').expect("local reference");
        assert!(doc.pointer(pointer).is_some(), "dangling {reference}");
    }
}
