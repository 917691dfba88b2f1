//! Operator features: rate limits, health and readiness, metrics, the OpenAPI document
//! (in-process, through `app(state)` on a real SQLite file), and the real binary's
//! connection bound, JSON logs, configuration and graceful shutdown (in `serving`).

mod process;
mod serving;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, header};
use dm_server::limits::{PeerAddr, RateLimit};
use dm_server::metrics::Metrics;
use dm_wire::api::ErrorCode;
use support::{Device, Relay, Resp};

/// A request from `peer`, optionally with a session token.
async fn from_peer(
    relay: &Relay,
    peer: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> Resp {
    let peer: SocketAddr = peer.parse().expect("peer address");
    let mut req = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = if body.is_null() {
        Body::empty()
    } else {
        Body::from(serde_json::to_vec(body).expect("json"))
    };
    let mut req = req.body(body).expect("request");
    req.extensions_mut().insert(ConnectInfo(PeerAddr(peer)));
    relay.request(req).await
}

fn retry_after(resp: &Resp) -> u64 {
    resp.headers
        .get(header::RETRY_AFTER)
        .expect("Retry-After")
        .to_str()
        .expect("ascii")
        .parse()
        .expect("whole seconds")
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_per_client() {
    // 10 requests at once, then one per 100 s: no refill during the test.
    let relay = Relay::start_with(Arc::new(|state| {
        state.with_rate_limit(RateLimit {
            per_second: 0.01,
            burst: 10,
        })
    }))
    .await;
    // Devices join without a peer address (in-process): those requests share one bucket.
    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;

    // Anonymous clients are counted by IP address.
    let challenge = serde_json::json!({"handle": "alice", "device_id": alice.device_id});
    for _ in 0..10 {
        from_peer(
            &relay,
            "192.0.2.1:1000",
            "POST",
            "/v1/auth/challenge",
            None,
            &challenge,
        )
        .await
        .assert_ok();
    }
    let limited = from_peer(
        &relay,
        "192.0.2.1:2000",
        "POST",
        "/v1/auth/challenge",
        None,
        &challenge,
    )
    .await;
    limited.assert_error(429, "rate_limited");
    let wait = retry_after(&limited);
    assert!((90..=100).contains(&wait), "Retry-After {wait}");
    // Another address is unaffected; so are probes and scrapes from the limited one.
    from_peer(
        &relay,
        "192.0.2.2:1000",
        "POST",
        "/v1/auth/challenge",
        None,
        &challenge,
    )
    .await
    .assert_ok();
    for path in ["/healthz", "/readyz", "/metrics"] {
        from_peer(
            &relay,
            "192.0.2.1:1000",
            "GET",
            path,
            None,
            &serde_json::Value::Null,
        )
        .await
        .assert_ok();
    }
    // An IPv6 client counts by its /64.
    for i in 0..10 {
        from_peer(
            &relay,
            &format!("[2001:db8::{i}]:443"),
            "GET",
            "/healthz-not",
            None,
            &serde_json::Value::Null,
        )
        .await
        .assert_error(404, "not_found");
    }
    from_peer(
        &relay,
        "[2001:db8::ffff]:443",
        "GET",
        "/v1/nothing",
        None,
        &serde_json::Value::Null,
    )
    .await
    .assert_error(429, "rate_limited");

    // Authenticated requests are counted by device, whatever their address.
    for i in 0..10 {
        from_peer(
            &relay,
            &format!("198.51.100.{i}:1000"),
            "GET",
            "/v1/key-packages",
            Some(alice.token()),
            &serde_json::Value::Null,
        )
        .await
        .assert_ok();
    }
    from_peer(
        &relay,
        "198.51.100.200:1000",
        "GET",
        "/v1/mailbox",
        Some(alice.token()),
        &serde_json::Value::Null,
    )
    .await
    .assert_error(429, "rate_limited");
    // Bob, from the same address, is not affected by Alice's limit.
    from_peer(
        &relay,
        "198.51.100.1:1000",
        "GET",
        "/v1/key-packages",
        Some(bob.token()),
        &serde_json::Value::Null,
    )
    .await
    .assert_ok();

    // Tokens that are not valid sessions count against the address: inventing tokens does
    // not buy new buckets.
    for i in 0..10u8 {
        let token = {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([i; 32])
        };
        from_peer(
            &relay,
            "203.0.113.9:1000",
            "GET",
            "/v1/mailbox",
            Some(&token),
            &serde_json::Value::Null,
        )
        .await
        .assert_error(401, "unauthenticated");
    }
    from_peer(
        &relay,
        "203.0.113.9:1000",
        "GET",
        "/v1/mailbox",
        Some(&"Z".repeat(43)),
        &serde_json::Value::Null,
    )
    .await
    .assert_error(429, "rate_limited");

    let metrics = scrape(&relay).await;
    assert_eq!(metrics["dm_rate_limited_total"], 4.0);
    assert_eq!(
        metrics[r#"dm_http_requests_total{route="/v1/mailbox",method="GET",status="429"}"#],
        2.0
    );
}

#[tokio::test]
async fn client_ip_header_names_the_client_behind_a_proxy() {
    let relay = Relay::start_with(Arc::new(|state| {
        state
            .with_rate_limit(RateLimit {
                per_second: 0.01,
                burst: 2,
            })
            .with_client_ip_header(Some(header::HeaderName::from_static("x-forwarded-for")))
    }))
    .await;
    let get = |forwarded: &'static str| {
        let relay = &relay;
        async move {
            let mut req = Request::builder().uri("/v1/nothing");
            if !forwarded.is_empty() {
                req = req.header("x-forwarded-for", forwarded);
            }
            let mut req = req.body(Body::empty()).expect("request");
            let proxy: SocketAddr = "10.0.0.1:5000".parse().expect("addr");
            req.extensions_mut().insert(ConnectInfo(PeerAddr(proxy)));
            relay.request(req).await.status
        }
    };
    // The last entry is the address the trusted proxy saw.
    assert_eq!(get("203.0.113.50, 192.0.2.7").await, 404);
    assert_eq!(get("192.0.2.7").await, 404);
    assert_eq!(get("198.51.100.1, 192.0.2.7").await, 429);
    assert_eq!(get("192.0.2.8").await, 404);
    // Without (or with a garbled) header: the proxy's own address.
    assert_eq!(get("").await, 404);
    assert_eq!(get("garbage").await, 404);
    assert_eq!(get("").await, 429);
}

#[tokio::test]
async fn websocket_slots_are_bounded_and_counted() {
    let relay = Relay::start_with(Arc::new(|state| {
        state
            .with_max_websockets(2)
            .with_metrics(Metrics::new(Duration::ZERO))
    }))
    .await;
    let state = relay.state();
    let first = state.try_websocket().expect("slot");
    let second = state.try_websocket().expect("slot");
    assert!(state.try_websocket().is_none());
    assert_eq!(scrape(&relay).await["dm_websockets_open"], 2.0);
    drop(first);
    let third = state.try_websocket().expect("slot freed");
    drop((second, third));
    assert_eq!(scrape(&relay).await["dm_websockets_open"], 0.0);
}

#[tokio::test]
async fn health_and_readiness() {
    let relay = Relay::start().await;
    let resp = relay.get("/healthz", None).await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok"[..]));
    let resp = relay.get("/readyz", None).await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok"[..]));

    // Shutting down: not ready, still alive, and long-lived handlers are told.
    let state = relay.state().clone();
    let waiter = tokio::spawn(state.shutting_down());
    assert!(!waiter.is_finished());
    state.begin_shutdown();
    tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("shutting_down completes")
        .expect("task");
    // Completes at once for latecomers too.
    tokio::time::timeout(Duration::from_secs(60), state.shutting_down())
        .await
        .expect("completes at once");
    relay
        .get("/readyz", None)
        .await
        .assert_error(503, "unavailable");
    relay.get("/healthz", None).await.assert_ok();

    // A relay whose database is gone is not ready, but alive.
    let relay = Relay::start().await;
    relay.store().close().await;
    let resp = relay.get("/readyz", None).await;
    resp.assert_error(503, "unavailable");
    assert!(
        resp.json()["error"]["message"]
            .as_str()
            .expect("message")
            .contains("database"),
        "{:?}",
        resp.json()
    );
    relay.get("/healthz", None).await.assert_ok();
}

/// `/metrics` as a map from series (name and labels) to value.
async fn scrape(relay: &Relay) -> BTreeMap<String, f64> {
    let resp = relay.get("/metrics", None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.content_type.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    parse_metrics(&String::from_utf8(resp.body).expect("utf-8"))
}

fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut series = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, value) = line.rsplit_once(' ').expect("series and value");
        let value: f64 = value.parse().expect("number");
        assert!(
            series.insert(name.to_owned(), value).is_none(),
            "duplicate series {name}"
        );
    }
    series
}

#[tokio::test]
async fn metrics_change_after_traffic() {
    let relay = Relay::start_with(Arc::new(|state| {
        state.with_metrics(Metrics::new(Duration::ZERO))
    }))
    .await;
    let before = scrape(&relay).await;
    for name in [
        "dm_accounts",
        "dm_devices",
        "dm_mailbox_envelopes",
        "dm_key_packages_one_time",
        "dm_devices_without_key_packages",
        "dm_envelopes_stored_total",
        "dm_envelopes_delivered_total",
        "dm_rate_limited_total",
        "dm_websockets_open",
        "dm_connections_open",
    ] {
        assert_eq!(before.get(name), Some(&0.0), "{name} in {before:?}");
    }

    let alice = Device::join("alice", &relay).await;
    let bob = Device::join("bob", &relay).await;
    let joined = scrape(&relay).await;
    assert_eq!(joined["dm_accounts"], 2.0);
    assert_eq!(joined["dm_devices"], 2.0);
    assert_eq!(joined["dm_devices_without_key_packages"], 2.0);
    bob.upload(
        &relay,
        vec![bob.key_package(false), bob.key_package(false)],
        None,
    )
    .await
    .assert_ok();
    let uploaded = scrape(&relay).await;
    assert_eq!(uploaded["dm_key_packages_one_time"], 2.0);
    assert_eq!(uploaded["dm_devices_without_key_packages"], 1.0);

    // Alice adds Bob (claim, commit + welcome); Bob fetches the welcome and acknowledges.
    let (mut group, mut bob_group) = support::pair(&relay, &alice, &bob).await;
    let text = b"metrics see no content";
    let message = alice.message(&mut group, text);
    relay
        .send(&alice, &support::send_request(message, None))
        .await
        .assert_ok();
    let waiting = scrape(&relay).await;
    assert_eq!(waiting["dm_mailbox_envelopes"], 1.0);
    // `pair` uploaded one more and Alice claimed one.
    assert_eq!(waiting["dm_key_packages_one_time"], 2.0);
    let mailbox = relay.mailbox(&bob, 0).await;
    let envelope = mailbox.envelopes.last().expect("message");
    assert_eq!(
        bob.process(&mut bob_group, &envelope.payload).as_deref(),
        Some(&text[..])
    );
    relay
        .get("/v1/accounts/alice", Some(bob.token()))
        .await
        .assert_ok();

    let after = scrape(&relay).await;
    // `pair` fetched the welcome (1), then Bob fetched the message (1).
    assert_eq!(after["dm_envelopes_delivered_total"], 2.0);
    let count = |route: &str, method: &str, status: u16| {
        after
            .get(&format!(
                r#"dm_http_requests_total{{route="{route}",method="{method}",status="{status}"}}"#
            ))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(count("/v1/accounts", "POST", 201), 2.0);
    assert_eq!(count("/v1/auth/session", "POST", 200), 2.0);
    assert_eq!(count("/v1/messages", "POST", 200), 2.0);
    assert_eq!(count("/v1/accounts/{handle}", "GET", 200), 1.0);
    assert_eq!(
        count("/v1/accounts/{handle}/key-packages/claim", "POST", 200),
        1.0
    );
    assert_eq!(
        after[r#"dm_http_request_duration_seconds_count{route="/v1/messages"}"#],
        2.0
    );
    assert_eq!(
        after[r#"dm_http_request_duration_seconds_bucket{route="/v1/messages",le="+Inf"}"#],
        2.0
    );
    assert!(after[r#"dm_http_request_duration_seconds_sum{route="/v1/messages"}"#] > 0.0);
    // The scrape in progress is the only request in flight.
    assert_eq!(
        after[r#"dm_http_requests_in_flight{route="/metrics"}"#],
        1.0
    );
    assert_eq!(
        after[r#"dm_http_requests_in_flight{route="/v1/messages"}"#],
        0.0
    );
    // Labels are route templates: no handle appears.
    let text = String::from_utf8(relay.get("/metrics", None).await.body).expect("utf-8");
    assert!(!text.contains("alice") && !text.contains("bob"), "{text}");
    // Unknown routes and odd methods do not grow the label set.
    relay.raw("BREW", "/coffee", None, Vec::new()).await;
    let after = scrape(&relay).await;
    assert_eq!(
        after[r#"dm_http_requests_total{route="unmatched",method="OTHER",status="404"}"#],
        1.0
    );
}

// ---------------------------------------------------------------------------------------
// OpenAPI

fn document() -> serde_json::Value {
    serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is JSON")
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
    assert_eq!(resp.body, include_bytes!("../openapi.json"));
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
