//! Operator features: rate limits, health and readiness, metrics (in-process, through
//! `app(state)` on a real SQLite file); the OpenAPI document (`openapi`); configuration
//! sources (`configuration`); and the real binary's connection bound, JSON logs and
//! graceful shutdown (`serving`).

mod configuration;
mod openapi;
mod process;
mod serving;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, header};
use dm_server::limits::{PeerAddr, RateLimit};
use dm_server::metrics::Metrics;
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
    relay.store().close().await.expect("close");
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
    // The first commit reaches no one (Alice was alone), its Welcome reaches Bob (1),
    // then the message (1).
    assert_eq!(after["dm_envelopes_stored_total"], 2.0);
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
