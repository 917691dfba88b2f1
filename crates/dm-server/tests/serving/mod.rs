//! The real `dm-server` binary over TCP: JSON logs without secrets, graceful shutdown,
//! the connection bound, the rate limit over real sockets, and configuration sources.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use dm_wire::api::{ChallengeResponse, ClaimResponse, MailboxResponse, SessionResponse};

use crate::process::{Conn, Server, TIMEOUT, call, request};
use crate::support::{self, Device};

/// Strings that must never appear in the relay's log.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn text(&mut self, what: &str, text: &str) {
        self.0.push((what.to_owned(), text.to_owned()));
    }

    /// The bytes in every encoding a log could show them in, whole and their start.
    fn bytes(&mut self, what: &str, bytes: &[u8]) {
        for encoded in [
            STANDARD.encode(bytes),
            URL_SAFE_NO_PAD.encode(bytes),
            hex::encode(bytes),
        ] {
            if encoded.len() > 24 {
                self.text(what, &encoded[..24]);
            }
            self.text(what, &encoded);
        }
    }
}

/// Registers and logs in over HTTP, recording every secret sent or received.
async fn join(addr: &str, device: &mut Device, secrets: &mut Secrets) {
    let req = device.register_request();
    secrets.text("handle", device.handle.as_str());
    secrets.bytes("device list", &req.device_list);
    secrets.bytes("device proof", &req.device_proof);
    secrets.bytes("device key", &device.device_key());
    secrets.bytes("account key", device.account.verifying_key().as_bytes());
    let body = serde_json::to_value(&req).expect("json");
    let resp = call(addr, "POST", "/v1/accounts", None, Some(&body)).await;
    assert_eq!(resp.status, 201, "{}", resp.text());

    let body = serde_json::json!({"handle": device.handle, "device_id": device.device_id});
    let challenge: ChallengeResponse = call(addr, "POST", "/v1/auth/challenge", None, Some(&body))
        .await
        .parse();
    secrets.bytes("challenge", &challenge.challenge);
    let session_req =
        device.session_request(challenge.challenge.try_into().expect("32-byte challenge"));
    secrets.bytes("session signature", &session_req.signature);
    let body = serde_json::to_value(&session_req).expect("json");
    let session: SessionResponse = call(addr, "POST", "/v1/auth/session", None, Some(&body))
        .await
        .parse();
    secrets.text("token", &session.token);
    device.token = Some(session.token);
}

/// The relay's info-level JSON log, after registration, login, key package upload, claim,
/// send and fetch over HTTP: every line is a JSON object, and no handle, token, key or
/// payload (in base64 or hex, whole or its start) appears.
#[tokio::test]
async fn json_logs_hold_no_secrets() {
    let mut server = Server::start(&[], &[]).await;
    let addr = server.addr.clone();
    let mut secrets = Secrets::default();
    let mut alice = Device::new("zebracanary");
    let mut bob = Device::new("yakcanary");
    join(&addr, &mut alice, &mut secrets).await;
    join(&addr, &mut bob, &mut secrets).await;

    let one_time = bob.key_package(false);
    let last_resort = bob.key_package(true);
    secrets.bytes("key package", &one_time);
    secrets.bytes("last-resort key package", &last_resort);
    let body = serde_json::to_value(dm_wire::api::UploadKeyPackagesRequest {
        key_packages: vec![one_time],
        last_resort: Some(last_resort),
    })
    .expect("json");
    call(
        &addr,
        "POST",
        "/v1/key-packages",
        bob.token.as_deref(),
        Some(&body),
    )
    .await
    .parse::<serde_json::Value>();

    let claim: ClaimResponse = call(
        &addr,
        "POST",
        "/v1/accounts/yakcanary/key-packages/claim",
        alice.token.as_deref(),
        Some(&serde_json::json!({})),
    )
    .await
    .parse();
    let kp = support::claimed_key_package(&claim.key_packages[0].key_package, &alice.provider);
    let mut group = alice.create_group();
    secrets.bytes("group id", group.group_id().as_slice());
    let (commit, welcome, _) = group
        .add_members(&alice.provider, &alice.signer, &[kp])
        .expect("add");
    group.merge_pending_commit(&alice.provider).expect("merge");
    let (commit, welcome) = (support::encode(commit), support::encode(welcome));
    secrets.bytes("commit", &commit);
    secrets.bytes("welcome", &welcome);
    let body = serde_json::to_value(support::send_request(commit, Some(welcome))).expect("json");
    call(
        &addr,
        "POST",
        "/v1/messages",
        alice.token.as_deref(),
        Some(&body),
    )
    .await
    .parse::<serde_json::Value>();

    let mailbox: MailboxResponse = call(&addr, "GET", "/v1/mailbox", bob.token.as_deref(), None)
        .await
        .parse();
    let welcome = mailbox.envelopes.last().expect("welcome");
    let mut bob_group = bob.join_group(&welcome.payload);
    let ack = serde_json::json!({"up_to": welcome.seq});
    let resp = call(
        &addr,
        "POST",
        "/v1/mailbox/ack",
        bob.token.as_deref(),
        Some(&ack),
    )
    .await;
    assert_eq!(resp.status, 204);

    let text = "the walrus sings at midnight";
    secrets.text("plaintext", text);
    let message = alice.message(&mut group, text.as_bytes());
    secrets.bytes("application message", &message);
    let body = serde_json::to_value(support::send_request(message, None)).expect("json");
    call(
        &addr,
        "POST",
        "/v1/messages",
        alice.token.as_deref(),
        Some(&body),
    )
    .await
    .parse::<serde_json::Value>();
    let mailbox: MailboxResponse = call(
        &addr,
        "GET",
        "/v1/mailbox?after=0&limit=10",
        bob.token.as_deref(),
        None,
    )
    .await
    .parse();
    let envelope = mailbox.envelopes.last().expect("message");
    assert_eq!(
        bob.process(&mut bob_group, &envelope.payload).as_deref(),
        Some(text.as_bytes())
    );
    call(
        &addr,
        "GET",
        "/v1/accounts/zebracanary",
        bob.token.as_deref(),
        None,
    )
    .await
    .parse::<serde_json::Value>();
    // Failures are logged too, and still without what the request carried.
    let resp = call(
        &addr,
        "GET",
        "/v1/accounts/zebracanary",
        Some("not-a-token"),
        None,
    )
    .await;
    resp.assert_error(401, "unauthenticated");

    server.sigterm().await;
    assert!(server.wait().await.success());
    let log = server.log();
    assert!(log.len() > 10, "{log:?}");
    for line in &log {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(event.is_object(), "{line}");
        assert!(
            ["INFO", "WARN", "ERROR"].contains(&event["level"].as_str().unwrap_or("")),
            "{line}"
        );
        for (what, secret) in &secrets.0 {
            assert!(
                !line.contains(secret.as_str()),
                "the log shows the {what}: {line}"
            );
        }
    }
    let all = log.join("\n");
    for route in [
        "/v1/accounts",
        "/v1/auth/session",
        "/v1/key-packages",
        "/v1/accounts/{handle}/key-packages/claim",
        "/v1/messages",
        "/v1/mailbox",
        "/v1/accounts/{handle}",
    ] {
        assert!(
            all.contains(&format!("\"route\":\"{route}\"")),
            "no request line for {route}:\n{all}"
        );
    }
}

const CHALLENGE_BODY: &str = r#"{"handle":"alice","device_id":"000102030405060708090a0b0c0d0e0f"}"#;

/// Starts a POST /v1/auth/challenge whose body is only half sent, and waits until the relay
/// is handling it.
async fn start_slow_request(server: &Server) -> Conn {
    let mut conn = Conn::connect(&server.addr).await;
    let body = CHALLENGE_BODY.as_bytes();
    conn.send_head(
        "POST",
        "/v1/auth/challenge",
        &[],
        body.len(),
        &body[..body.len() / 2],
    )
    .await;
    server
        .wait_for_metric(r#"dm_http_requests_in_flight{route="/v1/auth/challenge"} 1"#)
        .await;
    conn
}

/// SIGTERM: the relay stops accepting connections, lets the request in flight finish
/// (its body arrives after the signal) and exits 0.
#[tokio::test]
async fn sigterm_lets_requests_in_flight_finish() {
    let mut server = Server::start(&["--shutdown-grace-secs", "600"], &[]).await;
    let mut conn = start_slow_request(&server).await;
    server.sigterm().await;
    server.wait_for_log("shutting down").await;

    // New connections are refused once the listener is closed.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(&server.addr).await.is_err() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let body = CHALLENGE_BODY.as_bytes();
    conn.send_raw(&body[body.len() / 2..]).await;
    let resp = tokio::time::timeout(TIMEOUT, conn.read_response())
        .await
        .expect("response in time")
        .expect("a response");
    let challenge: ChallengeResponse = resp.parse();
    assert_eq!(challenge.challenge.len(), 32);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(server.wait().await.success());
    server.wait_for_log("\"stopped\"").await;
}

/// A request that never completes does not hold the shutdown beyond the grace period.
#[tokio::test]
async fn shutdown_is_bounded_by_the_grace_period() {
    let mut server = Server::start(&["--shutdown-grace-secs", "1"], &[]).await;
    let mut conn = start_slow_request(&server).await;
    server.sigterm().await;
    assert!(server.wait().await.success());
    assert!(
        conn.read_response().await.is_none(),
        "the unfinished request got an answer"
    );
    server.wait_for_log("grace period is over").await;
}

/// At most `--max-connections` connections are served; the next one waits until one
/// closes.
#[tokio::test]
async fn connections_are_bounded() {
    let server = Server::start(&["--max-connections", "2"], &[]).await;
    let mut first = Conn::connect(&server.addr).await;
    assert_eq!(first.request("GET", "/healthz", &[], b"").await.status, 200);
    let mut second = Conn::connect(&server.addr).await;
    assert_eq!(
        second.request("GET", "/healthz", &[], b"").await.status,
        200
    );
    let metrics = second.request("GET", "/metrics", &[], b"").await;
    assert!(
        metrics.text().lines().any(|l| l == "dm_connections_open 2"),
        "{}",
        metrics.text()
    );

    // The third connection is not accepted: its request gets no answer...
    let mut third = Conn::connect(&server.addr).await;
    third.send_head("GET", "/healthz", &[], 0, b"").await;
    assert!(
        tokio::time::timeout(Duration::from_secs(1), third.read_response())
            .await
            .is_err(),
        "a third connection was served"
    );
    // ...until another one closes.
    drop(first);
    let resp = tokio::time::timeout(TIMEOUT, third.read_response())
        .await
        .expect("served once a connection closed")
        .expect("a response");
    assert_eq!(resp.status, 200);
    let metrics = second.request("GET", "/metrics", &[], b"").await;
    assert!(
        metrics.text().lines().any(|l| l == "dm_connections_open 2"),
        "{}",
        metrics.text()
    );
}

/// Over real sockets: clients are told apart by their address (or the proxy header), and
/// a limited client gets 429 with Retry-After.
#[tokio::test]
async fn rate_limit_over_tcp() {
    let server = Server::start(
        &[
            "--rate-limit-per-second",
            "0.01",
            "--rate-limit-burst",
            "2",
            "--client-ip-header",
            "X-Forwarded-For",
        ],
        &[],
    )
    .await;
    let addr = server.addr.as_str();
    for _ in 0..2 {
        assert_eq!(request(addr, "GET", "/v1/none", &[], b"").await.status, 404);
    }
    let limited = request(addr, "GET", "/v1/none", &[], b"").await;
    limited.assert_error(429, "rate_limited");
    let wait: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=100).contains(&wait), "{wait}");
    // Probes are exempt.
    assert_eq!(request(addr, "GET", "/healthz", &[], b"").await.status, 200);
    assert_eq!(request(addr, "GET", "/readyz", &[], b"").await.status, 200);
    // Another peer address (127.0.0.2 is loopback too) has its own bucket.
    let mut other = Conn::connect_from(addr, "127.0.0.2").await;
    assert_eq!(other.request("GET", "/v1/none", &[], b"").await.status, 404);
    // So does a client named by the proxy header.
    let xff = [("X-Forwarded-For", "192.0.2.1")];
    assert_eq!(
        request(addr, "GET", "/v1/none", &xff, b"").await.status,
        404
    );
    assert_eq!(
        request(addr, "GET", "/v1/none", &xff, b"").await.status,
        404
    );
    request(addr, "GET", "/v1/none", &xff, b"")
        .await
        .assert_error(429, "rate_limited");
    server.wait_for_metric("dm_rate_limited_total 2").await;
}

/// `--print-config` shows what the binary resolved: flag over environment over file over
/// default; a bad file stops it with exit code 2 and names the key.
#[tokio::test]
async fn configuration_sources_in_the_binary() {
    let dir = tempfile::TempDir::new().expect("dir");
    let file = dir.path().join("relay.toml");
    std::fs::write(
        &file,
        "max_connections = 7\nmailbox_quota = 8\nrate_limit_burst = 9\n",
    )
    .expect("write");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dm-server"))
        .args(["--print-config", "--rate-limit-burst", "900"])
        .env("DM_CONFIG", &file)
        .env("DM_MAILBOX_QUOTA", "80")
        .env("DM_RATE_LIMIT_BURST", "90")
        .env_remove("DM_MAX_CONNECTIONS")
        .env_remove("DM_LISTEN")
        .output()
        .await
        .expect("run");
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8(output.stdout).expect("utf-8");
    for line in [
        "max_connections = 7",
        "mailbox_quota = 80",
        "rate_limit_burst = 900",
        "listen = \"127.0.0.1:7878\"",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line} in\n{printed}");
    }

    std::fs::write(&file, "max_conections = 7\n").expect("write");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dm-server"))
        .arg("--config")
        .arg(&file)
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown setting `max_conections`"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dm-server"))
        .env("DM_MAX_CONNECTIONS", "lots")
        .output()
        .await
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid max_connections from the environment variable DM_MAX_CONNECTIONS"),
        "{stderr}"
    );
}
