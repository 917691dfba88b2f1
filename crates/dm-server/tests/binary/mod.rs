//! The real `dm-server` binary over TCP.

use crate::support::Device;

/// One HTTP/1.1 request over a fresh TCP connection; returns the whole response.
async fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
}

/// The real binary: prints its bound address, serves over TCP, logs no handles, stops on
/// SIGTERM.
#[tokio::test]
async fn binary_listens_serves_and_stops() {
    use std::process::Stdio;
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};

    let dir = tempfile::TempDir::new().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dm-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--database-url",
        ])
        .arg(format!("sqlite://{}", dir.path().join("x.db").display()))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut log = String::new();
        stderr.read_to_string(&mut log).await.unwrap();
        log
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("listening line in time")
        .unwrap()
        .expect("a line");
    let addr = line
        .strip_prefix("dm-server listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    assert!(!addr.ends_with(":0"), "{addr}");
    assert!(dir.path().join("x.db").exists());

    let response = http(addr, "GET", "/healthz", b"").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\nok"), "{response}");
    let canary = Device::new("zebra_canary");
    let body = serde_json::to_vec(&canary.register_request()).unwrap();
    let response = http(addr, "POST", "/v1/accounts", &body).await;
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let response = http(addr, "GET", "/v1/accounts/zebra_canary", b"").await;
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(
        response.contains(r#""code":"unauthenticated""#),
        "{response}"
    );

    // SIGTERM stops it gracefully (exit status 0), by the pid this test started.
    let pid = child.id().expect("running").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await;
    if killed.is_ok_and(|s| s.success()) {
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("stops in time")
            .unwrap();
        assert!(status.success(), "{status:?}");
    } else {
        child.kill().await.unwrap();
    }
    // Nothing else on stdout; the log has the routes but not the handle.
    assert_eq!(lines.next_line().await.unwrap(), None);
    let log = log.await.unwrap();
    assert!(log.contains("/v1/accounts/{handle}"), "{log}");
    assert!(!log.contains("zebra_canary"), "{log}");
}

/// Starts the binary on `database_url` and returns it with its bound address.
async fn start_binary(database_url: &str) -> (tokio::process::Child, String) {
    use std::process::Stdio;
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt as _, BufReader};

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dm-server"))
        .args(["--listen", "127.0.0.1:0", "--database-url", database_url])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn dm-server");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("listening line in time")
        .expect("read stdout")
        .expect("a line");
    let addr = line
        .strip_prefix("dm-server listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, addr)
}

/// Two relay processes on one PostgreSQL database are one relay: a handle registered
/// through one is taken for the other.
#[tokio::test]
async fn two_binaries_share_one_postgres_database() {
    let Some(db) = crate::support::db::TestDb::postgres("two_binaries").await else {
        return;
    };
    let (_first, first) = start_binary(db.url()).await;
    let (_second, second) = start_binary(db.url()).await;
    let alice = Device::new("alice");
    let body = serde_json::to_vec(&alice.register_request()).unwrap();
    let response = http(&first, "POST", "/v1/accounts", &body).await;
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let other = Device::new("alice");
    let body = serde_json::to_vec(&other.register_request()).unwrap();
    let response = http(&second, "POST", "/v1/accounts", &body).await;
    assert!(response.starts_with("HTTP/1.1 409"), "{response}");
    assert!(response.contains(r#""code":"handle_taken""#), "{response}");
}

/// A database URL of an unsupported engine is refused at start with a clear message.
#[tokio::test]
async fn an_unsupported_database_url_is_refused() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dm-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            "mysql://root@127.0.0.1/dm",
        ])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unsupported database URL (expected sqlite://PATH or postgres://"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
}
