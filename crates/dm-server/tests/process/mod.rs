//! The real `dm-server` binary on a loopback port, and a minimal HTTP/1.1 client over raw
//! TCP (so tests control exactly when bytes are sent).
#![allow(dead_code)]

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::watch;

/// Generous: the machine is shared and slow.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// A running `dm-server` with JSON logs at info level, on a fresh SQLite file.
pub struct Server {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<Vec<String>>>,
    log_count: watch::Receiver<usize>,
}

impl Server {
    /// Starts the binary with `args` (after `--listen 127.0.0.1:0 --log-format json
    /// --database-url ...`) and `env` (no other `DM_*` variable is passed on).
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_dm-server"));
        command
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .arg("--database-url")
            .arg(format!(
                "sqlite://{}",
                dir.path().join("relay.db").display()
            ))
            .args(args);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("DM_") {
                command.env_remove(name);
            }
        }
        command
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn dm-server");

        let log = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, log_count) = watch::channel(0);
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                let mut lines = sink.lock().expect("log lock");
                lines.push(line);
                count_tx.send_replace(lines.len());
            }
        });

        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let line = tokio::time::timeout(TIMEOUT, stdout.next_line())
            .await
            .expect("listening line in time")
            .expect("read stdout")
            .unwrap_or_else(|| {
                panic!(
                    "dm-server exited before listening; log:\n{}",
                    log.lock().expect("log lock").join("\n")
                )
            });
        let addr = line
            .strip_prefix("dm-server listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Self {
            child,
            addr,
            dir,
            log,
            log_count,
        }
    }

    /// The log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    /// Waits until a log line contains `needle`; returns it.
    pub async fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(line) = self.log().into_iter().find(|l| l.contains(needle)) {
                return line;
            }
            match tokio::time::timeout_at(deadline, self.log_count.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!(
                    "the log ended without {needle:?}:\n{}",
                    self.log().join("\n")
                ),
                Err(_) => panic!("no log line with {needle:?}:\n{}", self.log().join("\n")),
            }
        }
    }

    /// Sends SIGTERM to the process this test started.
    pub async fn sigterm(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(TIMEOUT, self.child.wait())
            .await
            .expect("exits in time")
            .expect("wait")
    }

    /// Polls `/metrics` until `line` (a whole line) appears.
    pub async fn wait_for_metric(&self, line: &str) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let metrics = request(&self.addr, "GET", "/metrics", &[], b"").await;
            if metrics.text().lines().any(|l| l == line) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "metric line {line:?} never appeared:\n{}",
                metrics.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.text()))
    }

    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> T {
        assert!(
            (200..300).contains(&self.status),
            "status {}: {}",
            self.status,
            self.text()
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("unexpected body ({e}): {}", self.text()))
    }

    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.json()["error"]["code"], code, "{}", self.text());
    }
}

/// One HTTP/1.1 connection, kept alive across requests.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: &str) -> Self {
        let stream = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Connects from a chosen local address (e.g. another loopback address).
    pub async fn connect_from(addr: &str, local_ip: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{local_ip}:0").parse().expect("local address"))
            .expect("bind");
        let stream = tokio::time::timeout(TIMEOUT, socket.connect(addr.parse().expect("addr")))
            .await
            .expect("connect in time")
            .expect("connect");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes a request's head (with `Content-Length: content_length`) and `body`, which
    /// may be only the start of the body.
    pub async fn send_head(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        content_length: usize,
        body: &[u8],
    ) {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: relay\r\nContent-Length: {content_length}\r\n"
        );
        if content_length > 0 {
            head.push_str("Content-Type: application/json\r\n");
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        self.stream.write_all(head.as_bytes()).await.expect("write");
        self.stream.write_all(body).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// Writes more bytes (the rest of a body).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// Sends a whole request and reads its response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send_head(method, path, headers, body.len(), body)
            .await;
        self.read_response()
            .await
            .unwrap_or_else(|| panic!("no response to {method} {path}"))
    }

    /// Reads one response; `None` if the connection closed first.
    pub async fn read_response(&mut self) -> Option<Response> {
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).expect("ascii head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line");
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().expect("content length"));
        let body_start = head_end + 4;
        while self.buf.len() < body_start + length {
            assert!(self.fill().await, "connection closed mid-body");
        }
        let body = self.buf[body_start..body_start + length].to_vec();
        self.buf.drain(..body_start + length);
        Some(Response {
            status,
            headers,
            body,
        })
    }

    /// Reads more bytes; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh connection.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut conn = Conn::connect(addr).await;
    tokio::time::timeout(TIMEOUT, conn.request(method, path, headers, body))
        .await
        .expect("response in time")
}

/// A JSON request with an optional session token, on a fresh connection.
pub async fn call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = Vec::new();
    if let Some(auth) = auth.as_deref() {
        headers.push(("Authorization", auth));
    }
    let body = body.map_or_else(Vec::new, |b| serde_json::to_vec(b).expect("json"));
    request(addr, method, path, &headers, &body).await
}
