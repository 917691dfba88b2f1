//! Harness for the end-to-end tests: runs the real `dm-server` and `dm` binaries on
//! 127.0.0.1, each user in a home directory of its own, optionally through a recording TCP
//! proxy that keeps every byte exchanged with the relay.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this test binary
//! (`target/<profile>/`).
#![forbid(unsafe_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Passphrase every test user's store is created with.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// Path of a binary built by cargo for this workspace (`dm` or `dm-server`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary knows its own path");
    // target/<profile>/deps/<test-binary> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build the workspace binaries first (`cargo test --workspace` does, \
         or run `cargo build --workspace --bins`)",
        path.display()
    );
    path
}

/// A running relay (`dm-server`) on an OS-chosen loopback port, with its log captured.
pub struct Relay {
    child: Option<Child>,
    /// Directory holding the database (SQLite) and the log.
    pub dir: PathBuf,
    /// The relay's `--database-url`.
    pub database_url: String,
    /// The PostgreSQL database made for this relay, dropped with it.
    postgres: Option<Arc<PgDatabase>>,
    /// Further command-line arguments (kept across restarts).
    args: Vec<String>,
    /// `host:port` the relay listens on (kept across restarts).
    pub addr: String,
    log_reader: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay with its log in `dir`, on the engine [`Engine::from_env`] chooses:
    /// a SQLite database in `dir`, or a fresh PostgreSQL database.
    pub fn start(dir: &Path) -> Relay {
        Self::start_on(dir, Engine::from_env())
    }

    /// Starts a relay on `engine` (see [`Relay::start`]).
    pub fn start_on(dir: &Path, engine: Engine) -> Relay {
        Self::start_with_args(dir, engine, &[])
    }

    /// Starts a relay on `engine` with further command-line arguments.
    pub fn start_with_args(dir: &Path, engine: Engine, args: &[&str]) -> Relay {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        match engine {
            Engine::Sqlite => {
                let url = format!("sqlite://{}", dir.join("relay.db").display());
                Self::spawn(dir, "127.0.0.1:0", &url, None, args)
            }
            Engine::Postgres => {
                let db = Arc::new(PgDatabase::create());
                let url = db.url.clone();
                Self::spawn(dir, "127.0.0.1:0", &url, Some(db), args)
            }
        }
    }

    /// Starts another relay instance on the same database as `other` (PostgreSQL: several
    /// instances, one relay), with its log in `dir`.
    pub fn start_beside(dir: &Path, other: &Relay) -> Relay {
        Self::spawn(
            dir,
            "127.0.0.1:0",
            &other.database_url.clone(),
            other.postgres.clone(),
            other.args.clone(),
        )
    }

    fn spawn(
        dir: &Path,
        listen: &str,
        database_url: &str,
        postgres: Option<Arc<PgDatabase>>,
        args: Vec<String>,
    ) -> Relay {
        std::fs::create_dir_all(dir).expect("create relay directory");
        let log_path = dir.join("relay.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("create relay log");
        let mut child = Command::new(binary("dm-server"))
            .arg("--listen")
            .arg(listen)
            .arg("--database-url")
            .arg(database_url)
            .args(&args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start dm-server");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let mut log_copy = std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .expect("open relay log");
        // Forward the rest of stdout to the log so nothing the relay prints escapes the scan.
        let reader = std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut sent = false;
            for line in lines.by_ref().map_while(Result::ok) {
                let _ = writeln!(log_copy, "{line}");
                if !sent && let Some(rest) = line.strip_prefix("dm-server listening on http://") {
                    let _ = tx.send(rest.trim().to_owned());
                    sent = true;
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("dm-server did not report its address within 30 s; log:\n{log}")
            });
        Relay {
            child: Some(child),
            dir: dir.to_path_buf(),
            database_url: database_url.to_owned(),
            postgres,
            args,
            addr,
            log_reader: Some(reader),
        }
    }

    /// Base URL of the relay.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the relay (SIGKILL: nothing is flushed on the way out).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(reader) = self.log_reader.take() {
            let _ = reader.join();
        }
    }

    /// Starts the relay again on the same address and database.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "relay still running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may be in TIME_WAIT for a moment.
            if TcpListener::bind(&self.addr).is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let again = Self::spawn(
            &self.dir.clone(),
            &self.addr.clone(),
            &self.database_url.clone(),
            self.postgres.clone(),
            self.args.clone(),
        );
        assert_eq!(again.addr, self.addr);
        *self = again;
    }

    /// Kills and restarts the relay on the same address and database.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// How many lines of the relay's log contain every one of `parts`.
    pub fn log_lines_with(&self, parts: &[&str]) -> usize {
        std::fs::read_to_string(self.dir.join("relay.log"))
            .unwrap_or_default()
            .lines()
            .filter(|line| parts.iter().all(|p| line.contains(p)))
            .count()
    }

    /// Paths of the relay's files: its log and, on SQLite, its database files (main file,
    /// WAL, shared memory). On PostgreSQL, the database's content is dumped as text into
    /// `database-dump.txt` (every row of every table, bytes as hex) and that file is listed.
    pub fn files(&self) -> Vec<PathBuf> {
        if self.postgres.is_some() {
            self.dump_postgres();
        }
        files_under(&self.dir)
    }

    /// Whether the relay runs on PostgreSQL.
    pub fn on_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// Runs SQL statements against the relay's PostgreSQL database (as a hostile operator
    /// would); each statement gets the binds given with it.
    pub fn postgres_execute(&self, statements: Vec<(String, Vec<Vec<u8>>)>) {
        let url = self.database_url.clone();
        block_on_thread(async move {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            for (sql, binds) in statements {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
                for bind in binds {
                    query = query.bind(bind);
                }
                query.execute(&mut conn).await.expect("statement");
            }
        });
    }

    /// One column of one row from the relay's PostgreSQL database.
    pub fn postgres_bytes(&self, sql: &str, bind: Vec<u8>) -> Vec<u8> {
        let url = self.database_url.clone();
        let sql = sql.to_owned();
        block_on_thread(async move {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            let mut query = sqlx::query_scalar::<_, Vec<u8>>(sqlx::AssertSqlSafe(sql));
            if !bind.is_empty() {
                query = query.bind(bind);
            }
            query.fetch_one(&mut conn).await.expect("row")
        })
    }

    fn dump_postgres(&self) {
        let url = self.database_url.clone();
        let dump = block_on_thread(async move {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
            let tables: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' ORDER BY table_name",
            )
            .fetch_all(&mut conn)
            .await
            .expect("tables");
            let mut out = String::new();
            for table in tables {
                let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT t::text FROM \"{table}\" t"
                )))
                .fetch_all(&mut conn)
                .await
                .expect("rows");
                out.push_str(&format!("-- {table}: {} rows\n", rows.len()));
                for row in rows {
                    out.push_str(&row);
                    out.push('\n');
                }
            }
            out
        });
        std::fs::write(self.dir.join("database-dump.txt"), dump).expect("write dump");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The database engine of a relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// A SQLite file in the relay's directory.
    Sqlite,
    /// A fresh PostgreSQL database (see [`PgDatabase`]).
    Postgres,
}

impl Engine {
    /// `DM_TEST_RELAY_DB=postgres` runs the end-to-end relays on PostgreSQL; anything else
    /// (or nothing) on SQLite.
    pub fn from_env() -> Engine {
        match std::env::var("DM_TEST_RELAY_DB").as_deref() {
            Ok("postgres") => Engine::Postgres,
            _ => Engine::Sqlite,
        }
    }
}

/// A PostgreSQL database created for one test (`dm_e2e_<random>`) and dropped after it.
/// The server is `DM_TEST_POSTGRES_URL` (an admin connection URL), by default
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

impl PgDatabase {
    /// The admin URL tests use.
    pub fn admin_url() -> String {
        std::env::var("DM_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// Whether the PostgreSQL server answers.
    pub fn available() -> bool {
        let admin = Self::admin_url();
        block_on_thread(async move {
            use sqlx::Connection as _;
            sqlx::PgConnection::connect(&admin).await.is_ok()
        })
    }

    /// Creates a fresh database; panics (with what to do) if PostgreSQL is unreachable.
    pub fn create() -> PgDatabase {
        let admin_url = Self::admin_url();
        let name = format!("dm_e2e_{:016x}", rand_u64());
        let admin = admin_url.clone();
        let create = format!("CREATE DATABASE {name}");
        let result = block_on_thread(async move {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(sqlx::AssertSqlSafe(create))
                .execute(&mut conn)
                .await?;
            conn.close().await
        });
        if let Err(e) = result {
            panic!(
                "cannot create a PostgreSQL database at {admin_url}: {e} (set \
                 DM_TEST_POSTGRES_URL to an admin URL of a running server)"
            );
        }
        let url = match admin_url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("DM_TEST_POSTGRES_URL has no database path: {admin_url}"),
        };
        PgDatabase {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = block_on_thread(async move {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(&mut conn)
                .await?;
            conn.close().await
        });
    }
}

/// Runs a future to completion on a runtime of its own, on a thread of its own (callable
/// from synchronous code, and from inside another runtime).
fn block_on_thread<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
    })
    .join()
    .expect("database thread")
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// Whether the PostgreSQL tests can run. Without a reachable server they are skipped with
/// a printed notice, except under `CI` (set), where this fails the test.
pub fn postgres_or_skip() -> bool {
    if PgDatabase::available() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "PostgreSQL is not reachable at {} and CI is set: the PostgreSQL tests must run",
        PgDatabase::admin_url()
    );
    eprintln!(
        "skipped: PostgreSQL is not reachable at {} (set DM_TEST_POSTGRES_URL)",
        PgDatabase::admin_url()
    );
    false
}

/// Users with the given handles, each with its home below `base`, registered at `url`.
pub fn users(base: &Path, url: &str, handles: &[&str]) -> Vec<User> {
    handles
        .iter()
        .map(|handle| {
            let user = User::new(base, handle);
            user.init(url);
            user
        })
        .collect()
}

/// The strings, sorted.
pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Every regular file below `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// A running `dm chat` (its stdin, and its stdout line by line).
pub struct Chat {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Chat {
    /// Types a line.
    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("chat still open");
        writeln!(stdin, "{line}").expect("chat stdin");
        stdin.flush().expect("chat stdin");
    }

    /// Waits until the chat prints a line containing `needle`; false if it did not within
    /// `within`.
    pub fn wait_for(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// Types `/quit`, closes stdin and waits for the chat to end.
    pub fn quit(mut self) -> std::process::ExitStatus {
        self.say("/quit");
        drop(self.stdin.take());
        self.child.wait().expect("chat exits")
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `dm` user: one home directory (one device).
pub struct User {
    /// The handle, without `@`.
    pub handle: String,
    /// The home directory (`--home`).
    pub home: PathBuf,
}

impl User {
    /// Starts `dm chat PEER` for this user.
    pub fn chat(&self, peer: &str) -> Chat {
        let mut child = Command::new(binary("dm"))
            .arg("--home")
            .arg(&self.home)
            .args(["chat", peer])
            .env("DM_PASSPHRASE", PASSPHRASE)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dm chat");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Chat {
            child,
            stdin,
            lines,
        }
    }

    /// A user whose home is `base/handle` (not yet initialised).
    pub fn new(base: &Path, handle: &str) -> User {
        User {
            handle: handle.to_owned(),
            home: base.join(handle),
        }
    }

    /// Runs `dm --home HOME args…` with the test passphrase.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_passphrase(args, PASSPHRASE)
    }

    /// Runs `dm` with a given passphrase.
    pub fn run_with_passphrase(&self, args: &[&str], passphrase: &str) -> Output {
        Command::new(binary("dm"))
            .arg("--home")
            .arg(&self.home)
            .args(args)
            .env("DM_PASSPHRASE", passphrase)
            .env_remove("DM_HOME")
            .stdin(Stdio::null())
            .output()
            .expect("run dm")
    }

    /// Runs `dm` and asserts that it succeeded; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "`dm {}` for {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            self.handle,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `dm init` against a relay URL.
    pub fn init(&self, url: &str) -> String {
        self.ok(&["init", "--server", url, "--handle", &self.handle])
    }

    /// `dm inbox --json`, parsed: every line is one JSON object.
    pub fn inbox(&self) -> Vec<serde_json::Value> {
        self.ok(&["inbox", "--json"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Only the `"type": "message"` objects of `dm inbox --json`.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        self.inbox()
            .into_iter()
            .filter(|e| e["type"] == "message")
            .collect()
    }
}

impl User {
    /// Runs `dm` with extra environment variables; returns the output.
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(binary("dm"));
        cmd.arg("--home")
            .arg(&self.home)
            .args(args)
            .env("DM_PASSPHRASE", PASSPHRASE)
            .env_remove("DM_HOME")
            .env_remove("DM_RECOVERY_CODE")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run dm")
    }

    /// Runs `dm` and asserts that it failed; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "`dm {}` for {} succeeded but should fail:\nstdout:\n{}",
            args.join(" "),
            self.handle,
            String::from_utf8_lossy(&out.stdout),
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts `dm` in the background with stdout piped (for commands that wait).
    pub fn spawn(&self, args: &[&str]) -> Child {
        Command::new(binary("dm"))
            .arg("--home")
            .arg(&self.home)
            .args(args)
            .env("DM_PASSPHRASE", PASSPHRASE)
            .env_remove("DM_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start dm")
    }

    /// `dm init` printing the recovery code; returns the code.
    pub fn init_with_recovery_code(&self, url: &str) -> String {
        let out = self.init(url);
        out.lines()
            .map(str::trim)
            .find(|l| l.len() == 68 && l.split('-').count() == 14)
            .unwrap_or_else(|| panic!("no recovery code in:\n{out}"))
            .to_owned()
    }

    /// `dm whoami`'s device id.
    pub fn device_id(&self) -> String {
        let out = self.ok(&["whoami"]);
        out.lines()
            .find_map(|l| l.strip_prefix("device:"))
            .map(|d| d.trim().to_owned())
            .unwrap_or_else(|| panic!("no device in whoami:\n{out}"))
    }

    /// `dm conversations --json`, parsed.
    pub fn conversations(&self) -> Vec<serde_json::Value> {
        self.ok(&["conversations", "--json"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Links this (uninitialised) user's home as a new device of `existing`'s account:
    /// runs `dm device link` here and `dm device approve CODE --yes` there.
    pub fn link_to(&self, existing: &User, url: &str) {
        let mut child = self.spawn(&["device", "link", "--server", url, "--timeout", "300"]);
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let code = loop {
            let line = lines
                .next()
                .and_then(Result::ok)
                .unwrap_or_else(|| panic!("`dm device link` ended before printing a code"));
            if let Some(code) = line.strip_prefix("Link code: ") {
                break code.trim().to_owned();
            }
        };
        existing.ok(&["device", "approve", &code, "--yes", "--timeout", "300"]);
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let status = child.wait().expect("wait for dm device link");
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        assert!(
            status.success(),
            "`dm device link` failed: {}\n{err}",
            rest.join("\n")
        );
        assert!(rest.iter().any(|l| l.starts_with("Linked:")), "{rest:?}");
    }
}

/// The texts of `dm inbox --json` message events.
pub fn texts(messages: &[serde_json::Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["type"] == "message")
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The texts of the messages from `from` (a handle without `@`) among `dm inbox --json`
/// messages.
pub fn texts_from(messages: &[serde_json::Value], from: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["from"] == from)
        .map(|m| m["text"].as_str().expect("text is a string").to_owned())
        .collect()
}

/// A TCP proxy on loopback that forwards to a target and records every byte in both
/// directions.
pub struct RecordingProxy {
    /// `host:port` clients connect to.
    pub addr: String,
    captured: Arc<Mutex<Vec<u8>>>,
}

impl RecordingProxy {
    /// Starts forwarding from a new loopback port to `target` (`host:port`).
    pub fn start(target: String) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address").to_string();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let cap = captured.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(upstream) = TcpStream::connect(&target) else {
                    continue;
                };
                pipe(
                    client.try_clone().ok(),
                    upstream.try_clone().ok(),
                    cap.clone(),
                );
                pipe(Some(upstream), Some(client), cap.clone());
            }
        });
        RecordingProxy { addr, captured }
    }

    /// Base URL to give clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything forwarded so far, both directions concatenated per chunk.
    pub fn captured(&self) -> Vec<u8> {
        self.captured.lock().expect("capture lock").clone()
    }
}

fn pipe(from: Option<TcpStream>, to: Option<TcpStream>, cap: Arc<Mutex<Vec<u8>>>) {
    let (Some(mut from), Some(mut to)) = (from, to) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    cap.lock()
                        .expect("capture lock")
                        .extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The byte patterns under which a secret could appear: raw, hex, and base64 at each of
/// the three alignments (so a base64-encoded leak inside JSON is found too).
pub fn leak_patterns(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64_lite::encode;
    let mut out = vec![secret.to_vec(), hex_lower(secret).into_bytes()];
    for skip in 0..3 {
        let mut padded = vec![0u8; skip];
        padded.extend_from_slice(secret);
        let enc = encode(&padded);
        // Drop the characters influenced by the padding prefix and by the tail.
        let start = (skip * 4).div_ceil(3) + 1;
        let end = enc.len().saturating_sub(4);
        if end > start + 8 {
            out.push(enc.as_bytes()[start..end].to_vec());
        }
    }
    out
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Scans files for every pattern of a secret; returns the hits as `file: pattern`.
pub fn scan_files(files: &[PathBuf], secret: &[u8]) -> Vec<String> {
    let patterns = leak_patterns(secret);
    let mut hits = Vec::new();
    for f in files {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        for p in &patterns {
            if contains(&bytes, p) {
                hits.push(format!("{}: {}", f.display(), String::from_utf8_lossy(p)));
            }
        }
    }
    hits
}

mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Standard base64 with padding.
    pub fn encode(input: &[u8]) -> String {
        let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leak_patterns_find_base64_embedded_secrets() {
        let secret = b"canary-0123456789-abcdef";
        for prefix in [&b""[..], b"x", b"xy", b"xyz"] {
            let mut data = prefix.to_vec();
            data.extend_from_slice(secret);
            data.extend_from_slice(b"tail");
            let encoded = base64_lite::encode(&data);
            assert!(
                leak_patterns(secret)
                    .iter()
                    .any(|p| contains(encoded.as_bytes(), p)),
                "missed base64 leak with prefix {prefix:?}"
            );
        }
        assert!(
            !leak_patterns(secret)
                .iter()
                .any(|p| contains(b"unrelated bytes here", p))
        );
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64_lite::encode(b""), "");
        assert_eq!(base64_lite::encode(b"f"), "Zg==");
        assert_eq!(base64_lite::encode(b"foob"), "Zm9vYg==");
        assert_eq!(base64_lite::encode(b"foobar"), "Zm9vYmFy");
    }
}
