//! The ceiling probe: what this machine can do at most, per core, for each primitive the relay
//! and its clients lean on. The relay's measured throughput is later compared with these
//! figures: a relay running close to a ceiling is bound by it.
//!
//! Run with `cargo bench -p dm-server --bench probe`, optionally followed by
//! `-- --dir PATH --postgres URL`. `--dir` is where the fsync and SQLite measurements write
//! (default: a fresh temporary directory under the current directory — for `cargo bench`
//! the crate's directory, i.e. the workspace's disk); a fresh subdirectory is created there
//! and removed afterwards. `--postgres` is an admin URL (default: `DM_TEST_POSTGRES_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres`); the probe creates a database
//! `dm_probe_<random>` there and drops it at the end. Unknown arguments (such as the
//! `--bench` that cargo passes) are ignored.
//!
//! Every measurement runs a short warm-up round, then several rounds, each bounded in
//! operations and in time (a fraction of a second), and reports the median round's rate:
//! "per second" is operations per second on one thread (or, where stated, with several
//! connections), and "per op" is its inverse (for concurrent rows: wall time per row). The
//! fsync rows add latency percentiles over every measured sync.
//!
//! 1. **Ed25519** sign and verify (ed25519-dalek) of a 100-byte message.
//! 2. **HPKE seal** with ciphersuite 0x0003 (DHKEM X25519, HKDF-SHA256, ChaCha20-Poly1305)
//!    through `openmls_rust_crypto::RustCrypto`'s `OpenMlsCrypto::hpke_seal`, the code openmls
//!    runs for every recipient of an update path, of a 32-byte plaintext. The derived row
//!    "(N−1)=999 HPKE seals" is 999 times one seal: the sealing floor of a commit in a group of
//!    N=1000 whose update path encrypts to every other member.
//! 3. **ChaCha20-Poly1305** in-place encryption of 1 KiB (the `chacha20poly1305` 0.10 crate,
//!    the version openmls_rust_crypto uses for MLS messages).
//! 4. **fsync latency**: write 4 KiB into a preallocated 4 MiB file in the data directory
//!    (cycling through it, like a reused WAL) and call `File::sync_all` (or `sync_data`) after
//!    each write; p50 and p99 latency and syncs per second. Every durable commit pays one.
//! 5. **SQLite durable inserts** with the relay's settings (rusqlite like the relay's writer
//!    thread, WAL, `synchronous=FULL`,
//!    `BEGIN IMMEDIATE`): one 1 KiB row per transaction, and 256 rows per transaction (the
//!    relay's writer thread commits up to 256 operations at once). The batched figure is the
//!    "relay SQLite durable ceiling": one relay process on SQLite cannot store more
//!    messages per second than this (a message is at least one row).
//! 6. **PostgreSQL durable inserts** (`synchronous_commit=on`), one 1 KiB row or 256 rows per
//!    transaction, on one connection and with 8 concurrent connections (PostgreSQL flushes
//!    the WAL of concurrent commits together). The 8-connection batched figure is the
//!    "PostgreSQL batched-insert ceiling". Skipped with a notice when the server is
//!    unreachable.
//! 7. **axum request rate**: an axum server with one `GET /` handler answering a short string,
//!    on a current-thread tokio runtime on its own OS thread (one core's worth of server),
//!    driven by 64 keep-alive HTTP/1.1 connections (hyper client) on another single-worker
//!    runtime. On a machine with two cores the client competes for the CPU too, so this is
//!    a lower bound of the server's ceiling. The probe does not pin threads to cores; run
//!    it under `taskset -c 0,1` to confine it to two cores.
//!
//! All statements are run one at a time, as the relay runs them (no multi-row `INSERT`).
//! The table ends the output; the last line, prefixed `PROBE-JSON `, holds the same results
//! as one JSON object for scripts.

use std::error::Error;
use std::fs::OpenOptions;
use std::future::Future;
use std::hint::black_box;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use chacha20poly1305::aead::{AeadInPlace as _, KeyInit as _};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::crypto::OpenMlsCrypto as _;
use openmls_traits::types::Ciphersuite;
use serde_json::{Map, Value, json};
use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Measured rounds per figure (after one shorter warm-up round).
const ROUNDS: usize = 5;
/// The time bound of one round.
const ROUND_TIME: Duration = Duration::from_millis(350);
/// Rows per transaction in the batched database measurements (the relay's writer batch).
const BATCH_ROWS: u64 = 256;
/// Concurrent connections in the concurrent PostgreSQL measurements.
const PG_CONNECTIONS: usize = 8;
/// Keep-alive connections of the HTTP client.
const HTTP_CONNECTIONS: usize = 64;
/// Size of the rows inserted by the database measurements.
const ROW_BYTES: usize = 1024;
/// The file cycled through by the fsync measurement.
const FSYNC_FILE_BYTES: u64 = 4 << 20;
/// One fsync measurement's write.
const FSYNC_WRITE_BYTES: usize = 4096;
/// The N of the derived HPKE row: a commit in a group of N seals to N−1 members.
const GROUP_N: u64 = 1000;

/// Command-line settings.
struct Args {
    dir: Option<PathBuf>,
    postgres: String,
}

impl Args {
    fn parse() -> Self {
        let mut args = Self {
            dir: None,
            postgres: std::env::var("DM_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned()),
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            if let Some(v) = arg.strip_prefix("--dir=") {
                args.dir = Some(PathBuf::from(v));
            } else if let Some(v) = arg.strip_prefix("--postgres=") {
                v.clone_into(&mut args.postgres);
            } else if arg == "--dir" {
                args.dir = it.next().map(PathBuf::from);
            } else if arg == "--postgres"
                && let Some(v) = it.next()
            {
                args.postgres = v;
            }
            // Anything else (cargo's `--bench`, filters) is ignored.
        }
        args
    }
}

/// One row of the final table.
struct Row {
    /// The JSON key.
    key: &'static str,
    label: String,
    /// Operations per second.
    per_sec: f64,
    /// Extra JSON fields.
    extra: Map<String, Value>,
    note: String,
}

/// The rows measured so far, and what was skipped.
#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    skipped: Vec<String>,
}

impl Report {
    fn add(&mut self, key: &'static str, label: impl Into<String>, per_sec: f64) -> &mut Row {
        let row = Row {
            key,
            label: label.into(),
            per_sec,
            extra: Map::new(),
            note: String::new(),
        };
        println!(
            "  {:<52} {:>10}  {:>12}/s",
            row.label,
            per_op(per_sec),
            thousands(per_sec)
        );
        self.rows.push(row);
        self.rows.last_mut().expect("a row was just pushed")
    }

    fn rate(&self, key: &str) -> Option<f64> {
        self.rows.iter().find(|r| r.key == key).map(|r| r.per_sec)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One time per operation at `per_sec`, in a readable unit.
fn per_op(per_sec: f64) -> String {
    if per_sec.is_nan() || per_sec <= 0.0 {
        return "—".to_owned();
    }
    duration(1.0 / per_sec)
}

fn duration(secs: f64) -> String {
    if secs >= 1.0 {
        format!("{secs:.2} s")
    } else if secs >= 1e-3 {
        format!("{:.2} ms", secs * 1e3)
    } else if secs >= 1e-6 {
        format!("{:.2} µs", secs * 1e6)
    } else {
        format!("{:.0} ns", secs * 1e9)
    }
}

/// `value` rounded, with thin thousands separators.
fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "—".to_owned();
    }
    if value < 100.0 {
        return format!("{value:.1}");
    }
    let digits = format!("{value:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Median rate (operations per second) of `op` over the rounds; `op` (given the round, 0
/// being the warm-up) runs `chunk` operations per call, at most `max_ops` per round.
fn measure(max_ops: u64, chunk: u64, mut op: impl FnMut(usize)) -> f64 {
    let mut rates = Vec::with_capacity(ROUNDS);
    for round in 0..=ROUNDS {
        let budget = if round == 0 {
            ROUND_TIME / 4
        } else {
            ROUND_TIME
        };
        let start = Instant::now();
        let mut done = 0;
        while done < max_ops && start.elapsed() < budget {
            for _ in 0..chunk {
                op(round);
            }
            done += chunk;
        }
        if round > 0 {
            rates.push(done as f64 / start.elapsed().as_secs_f64());
        }
    }
    median(rates)
}

/// Median rate of `op` run by `tasks` concurrent tasks over the rounds; each call of `op`
/// (given its task's index) returns how many operations it did; at most `max_ops` per round
/// (all tasks together).
async fn measure_async<F, Fut>(tasks: usize, max_ops: u64, op: F) -> Res<f64>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Res<u64>> + Send + 'static,
{
    let mut rates = Vec::with_capacity(ROUNDS);
    for round in 0..=ROUNDS {
        let budget = if round == 0 {
            ROUND_TIME / 4
        } else {
            ROUND_TIME
        };
        let start = Instant::now();
        let deadline = start + budget;
        let done = Arc::new(AtomicU64::new(0));
        let mut running = tokio::task::JoinSet::new();
        for task in 0..tasks {
            let op = op.clone();
            let done = done.clone();
            running.spawn(async move {
                while Instant::now() < deadline && done.load(Ordering::Relaxed) < max_ops {
                    done.fetch_add(op(task).await?, Ordering::Relaxed);
                }
                Ok::<_, Box<dyn Error + Send + Sync>>(())
            });
        }
        while let Some(ended) = running.join_next().await {
            ended??;
        }
        if round > 0 {
            rates.push(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64());
        }
    }
    Ok(median(rates))
}

fn crypto(report: &mut Report) -> Res<()> {
    println!("crypto (one thread):");
    let message = [0x42u8; 100];
    let key = SigningKey::from_bytes(&rand::random());
    let rate = measure(200_000, 16, |_| {
        black_box(key.sign(black_box(&message)));
    });
    report.add("ed25519_sign", "Ed25519 sign (100-byte message)", rate);
    let signature = key.sign(&message);
    let verifying = key.verifying_key();
    let rate = measure(200_000, 16, |_| {
        black_box(verifying.verify(black_box(&message), &signature)).expect("signature verifies");
    });
    report.add("ed25519_verify", "Ed25519 verify (100-byte message)", rate);

    let provider = RustCrypto::default();
    let suite = Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;
    let ikm: [u8; 32] = rand::random();
    let recipient = provider
        .derive_hpke_keypair(suite.hpke_config(), &ikm)
        .map_err(|e| format!("HPKE key pair: {e:?}"))?;
    let plaintext = [0x17u8; 32];
    let rate = measure(100_000, 4, |_| {
        black_box(
            provider
                .hpke_seal(
                    suite.hpke_config(),
                    &recipient.public,
                    b"probe info",
                    b"",
                    &plaintext,
                )
                .expect("HPKE seal"),
        );
    });
    let seal = report.add(
        "hpke_seal",
        "HPKE seal 0x0003 X25519/SHA256/ChaCha (32 B)",
        rate,
    );
    seal.note = "openmls_rust_crypto hpke_seal".to_owned();

    let cipher = ChaCha20Poly1305::new(&Key::from(rand::random::<[u8; 32]>()));
    let nonce = Nonce::from([7u8; 12]);
    let mut buffer = vec![0x5au8; 1024];
    let rate = measure(1_000_000, 64, |_| {
        let tag = cipher
            .encrypt_in_place_detached(&nonce, b"", black_box(&mut buffer))
            .expect("ChaCha20-Poly1305 encrypts");
        black_box(tag);
    });
    let row = report.add(
        "chacha20poly1305_1k",
        "ChaCha20-Poly1305 encrypt 1 KiB",
        rate,
    );
    row.note = format!("{:.0} MiB/s", rate * 1024.0 / f64::from(1u32 << 20));
    Ok(())
}

/// Writes 4 KiB and syncs it, in a loop; returns (syncs per second, p50, p99 seconds).
fn fsync_probe(dir: &Path, data_only: bool) -> Res<(f64, f64, f64)> {
    let path = dir.join(if data_only {
        "fsync-data.bin"
    } else {
        "fsync-all.bin"
    });
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let len = usize::try_from(FSYNC_FILE_BYTES)?;
    file.write_all_at(&vec![0u8; len], 0)?;
    file.sync_all()?;
    let block = [0xa5u8; FSYNC_WRITE_BYTES];
    let mut offset = 0u64;
    let mut latencies = Vec::new();
    let mut failure = None;
    let rate = measure(5_000, 1, |round| {
        let start = Instant::now();
        let synced = file.write_all_at(&block, offset).and_then(|()| {
            if data_only {
                file.sync_data()
            } else {
                file.sync_all()
            }
        });
        if round > 0 {
            latencies.push(start.elapsed().as_secs_f64());
        }
        if let Err(err) = synced {
            failure.get_or_insert(err);
        }
        offset = (offset + FSYNC_WRITE_BYTES as u64) % FSYNC_FILE_BYTES;
    });
    if let Some(err) = failure {
        return Err(err.into());
    }
    drop(file);
    std::fs::remove_file(&path)?;
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(i).copied().unwrap_or(f64::NAN)
    };
    Ok((rate, at(0.5), at(0.99)))
}

fn fsync(report: &mut Report, dir: &Path) -> Res<()> {
    println!("fsync (4 KiB write + sync, in the data directory):");
    for (data_only, key, label) in [
        (
            false,
            "fsync_sync_all",
            "fsync: 4 KiB write + File::sync_all",
        ),
        (
            true,
            "fsync_sync_data",
            "fsync: 4 KiB write + File::sync_data",
        ),
    ] {
        let (rate, p50, p99) = fsync_probe(dir, data_only)?;
        let row = report.add(key, label, rate);
        row.note = format!("latency p50 {}, p99 {}", duration(p50), duration(p99));
        row.extra.insert("p50_us".to_owned(), json!(p50 * 1e6));
        row.extra.insert("p99_us".to_owned(), json!(p99 * 1e6));
    }
    Ok(())
}

fn sqlite(report: &mut Report, dir: &Path) -> Res<()> {
    println!("SQLite (rusqlite, WAL, synchronous=FULL, 1 KiB rows, one connection):");
    // The relay's settings and library (src/store/sqlite/writer.rs): its writer thread
    // commits on one rusqlite connection with cached prepared statements.
    let conn = rusqlite::Connection::open(dir.join("probe.sqlite3"))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.execute(
        "CREATE TABLE probe (id INTEGER PRIMARY KEY, body BLOB NOT NULL)",
        [],
    )?;
    let body = vec![0x3cu8; ROW_BYTES];
    for (rows, key, label) in [
        (
            1,
            "sqlite_single",
            "SQLite durable insert, 1 row/tx".to_owned(),
        ),
        (
            BATCH_ROWS,
            "sqlite_batched",
            format!("SQLite durable insert, {BATCH_ROWS} rows/tx"),
        ),
    ] {
        let mut failure = None;
        let commits = measure(20_000, 1, |_| {
            let result = (|| -> Result<(), rusqlite::Error> {
                conn.execute_batch("BEGIN IMMEDIATE")?;
                let mut insert = conn.prepare_cached("INSERT INTO probe (body) VALUES (?1)")?;
                for _ in 0..rows {
                    insert.execute([&body[..]])?;
                }
                drop(insert);
                conn.execute_batch("COMMIT")
            })();
            if let Err(err) = result {
                failure.get_or_insert(err);
            }
        });
        if let Some(err) = failure {
            return Err(err.into());
        }
        let rate = commits * rows as f64;
        let row = report.add(key, label, rate);
        row.note = format!("{} commits/s", thousands(commits));
    }
    Ok(())
}

async fn postgres(report: &mut Report, admin_url: &str) -> Res<()> {
    println!("PostgreSQL (synchronous_commit=on, 1 KiB rows):");
    let admin = PgConnectOptions::from_str(admin_url)?;
    let connected = tokio::time::timeout(Duration::from_secs(5), admin.connect()).await;
    let mut admin = match connected {
        Ok(Ok(connection)) => connection,
        failed => {
            let why = match failed {
                Ok(Err(err)) => err.to_string(),
                _ => "timed out".to_owned(),
            };
            let notice = format!("PostgreSQL: unreachable ({why}); pass --postgres URL");
            println!("  SKIPPED {notice}");
            report.skipped.push(notice);
            return Ok(());
        }
    };
    let name = format!("dm_probe_{}", hex::encode(rand::random::<[u8; 6]>()));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let measured = postgres_in(report, PgConnectOptions::from_str(admin_url)?, &name).await;
    let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await;
    measured?;
    dropped?;
    Ok(())
}

async fn postgres_in(report: &mut Report, admin: PgConnectOptions, name: &str) -> Res<()> {
    let options = admin
        .database(name)
        .application_name("dm-probe")
        .options([("synchronous_commit", "on")]);
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(PG_CONNECTIONS)?)
        .connect_with(options)
        .await?;
    let mut settings = Vec::new();
    for setting in [
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
        "commit_delay",
    ] {
        let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {setting}")))
            .fetch_one(&pool)
            .await?;
        settings.push(format!("{setting}={value}"));
    }
    println!("  server settings: {}", settings.join(", "));
    sqlx::query("CREATE TABLE probe (id BIGSERIAL PRIMARY KEY, body BYTEA NOT NULL)")
        .execute(&pool)
        .await?;
    let body = Arc::new(vec![0x3cu8; ROW_BYTES]);
    for (tasks, rows, key) in [
        (1, 1, "postgres_single"),
        (1, BATCH_ROWS, "postgres_batched"),
        (PG_CONNECTIONS, 1, "postgres_single_8conn"),
        (PG_CONNECTIONS, BATCH_ROWS, "postgres_batched_8conn"),
    ] {
        let label = format!(
            "PostgreSQL durable insert, {rows} row{}/tx, {tasks} conn",
            if rows == 1 { "" } else { "s" }
        );
        let (pool2, body) = (pool.clone(), body.clone());
        let rate = measure_async(tasks, 20_000 * rows.min(16), move |_| {
            let (pool, body) = (pool2.clone(), body.clone());
            async move {
                let mut tx = pool.begin().await?;
                for _ in 0..rows {
                    sqlx::query("INSERT INTO probe (body) VALUES ($1)")
                        .bind(&body[..])
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(rows)
            }
        })
        .await?;
        let row = report.add(key, label, rate);
        row.note = format!("{} commits/s", thousands(rate / rows as f64));
    }
    report
        .rows
        .last_mut()
        .expect("rows were added")
        .extra
        .insert("server_settings".to_owned(), json!(settings));
    pool.close().await;
    Ok(())
}

fn http(report: &mut Report) -> Res<()> {
    println!(
        "axum (server: current-thread runtime on its own thread; client: {HTTP_CONNECTIONS} \
         keep-alive HTTP/1.1 connections on another):"
    );
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::Builder::new()
        .name("probe-axum".to_owned())
        .spawn(move || -> std::io::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                addr_tx
                    .send(listener.local_addr()?)
                    .map_err(std::io::Error::other)?;
                let app = Router::new().route("/", get(|| async { "ok" }));
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
            })
        })?;
    let addr = addr_rx.recv()?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let rate = client.block_on(async move {
        let mut senders = Vec::with_capacity(HTTP_CONNECTIONS);
        for _ in 0..HTTP_CONNECTIONS {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(connection);
            senders.push(Arc::new(tokio::sync::Mutex::new(sender)));
        }
        let senders = Arc::new(senders);
        measure_async(HTTP_CONNECTIONS, 200_000, move |task| {
            // Each task sends its requests, one at a time, on its own connection.
            let senders = senders.clone();
            async move {
                let mut sender = senders[task].lock().await;
                sender.ready().await?;
                let request = hyper::Request::get("/")
                    .header(hyper::header::HOST, "127.0.0.1")
                    .body(Empty::<Bytes>::new())?;
                let response = sender.send_request(request).await?;
                let body = response.into_body().collect().await?.to_bytes();
                if body.as_ref() != b"ok" {
                    return Err("unexpected response body".into());
                }
                Ok(1)
            }
        })
        .await
    })?;
    // Closing the client's connections lets the server shut down gracefully.
    drop(client);
    let _ = stop_tx.send(());
    server
        .join()
        .map_err(|_| "the axum server thread panicked")??;
    let row = report.add(
        "axum_requests",
        "axum GET / (64 keep-alive connections)",
        rate,
    );
    row.note = "client on the same machine; no core pinning".to_owned();
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn main() -> Res<()> {
    let started = Instant::now();
    let args = Args::parse();
    let base = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&base)?;
    let scratch = tempfile::Builder::new()
        .prefix(".dm-probe-")
        .tempdir_in(&base)?;
    let dir = scratch.path().canonicalize()?;
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let cpu = cpu_model();
    println!("ceiling probe: {cores} cores ({cpu})");
    println!("data directory (fsync, SQLite): {}", dir.display());
    if Path::new("/usr/bin/taskset").exists() || Path::new("/bin/taskset").exists() {
        println!(
            "threads are not pinned; to confine the probe to two cores run it under \
             `taskset -c 0,1`"
        );
    }
    println!();

    let mut report = Report::default();
    crypto(&mut report)?;
    fsync(&mut report, &dir)?;
    sqlite(&mut report, &dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(postgres(&mut report, &args.postgres))?;
    drop(runtime);
    http(&mut report)?;
    drop(scratch);

    // Derived rows.
    let mut derived = Map::new();
    let mut lines = Vec::new();
    if let Some(seal) = report.rate("hpke_seal") {
        let secs = (GROUP_N - 1) as f64 / seal;
        derived.insert("hpke_seals_n_minus_1".to_owned(), json!(GROUP_N - 1));
        derived.insert("hpke_seals_n_minus_1_ms".to_owned(), json!(secs * 1e3));
        lines.push((
            format!("(N−1)={} HPKE seals (commit at N={GROUP_N})", GROUP_N - 1),
            duration(secs),
            thousands(1.0 / secs),
            "commits/s sealing floor".to_owned(),
        ));
    }
    if let Some(rate) = report.rate("sqlite_batched") {
        derived.insert(
            "relay_sqlite_durable_ceiling_rows_per_s".to_owned(),
            json!(rate),
        );
        lines.push((
            "relay SQLite durable ceiling".to_owned(),
            per_op(rate),
            thousands(rate),
            format!("rows/s, {BATCH_ROWS} rows/tx"),
        ));
    }
    if let Some(rate) = report.rate("postgres_batched_8conn") {
        derived.insert(
            "postgres_batched_insert_ceiling_rows_per_s".to_owned(),
            json!(rate),
        );
        lines.push((
            "PostgreSQL batched-insert ceiling".to_owned(),
            per_op(rate),
            thousands(rate),
            format!("rows/s, {BATCH_ROWS} rows/tx, {PG_CONNECTIONS} conns"),
        ));
    }

    let elapsed = started.elapsed().as_secs_f64();
    println!();
    println!(
        "{:<52} | {:>10} | {:>12} | notes",
        "ceiling", "per op", "per second"
    );
    println!("{:-<52}-+-{:->10}-+-{:->12}-+-{:-<30}", "", "", "", "");
    for row in &report.rows {
        println!(
            "{:<52} | {:>10} | {:>12} | {}",
            row.label,
            per_op(row.per_sec),
            thousands(row.per_sec),
            row.note
        );
    }
    println!("{:-<52}-+-{:->10}-+-{:->12}-+-{:-<30}", "", "", "", "");
    for (label, op, second, note) in &lines {
        println!("{label:<52} | {op:>10} | {second:>12} | {note}");
    }
    for skipped in &report.skipped {
        println!("SKIPPED {skipped}");
    }
    println!(
        "(median of {ROUNDS} rounds of ≤{} ms each; total {elapsed:.1} s)",
        ROUND_TIME.as_millis()
    );

    let mut results = Map::new();
    for row in &report.rows {
        let mut entry = Map::new();
        entry.insert("label".to_owned(), json!(row.label));
        entry.insert("per_s".to_owned(), json!(row.per_sec));
        entry.insert("per_op_us".to_owned(), json!(1e6 / row.per_sec));
        entry.extend(row.extra.clone());
        results.insert(row.key.to_owned(), Value::Object(entry));
    }
    let out = json!({
        "cores": cores,
        "cpu": cpu,
        "data_dir": dir.display().to_string(),
        "rounds": ROUNDS,
        "round_ms": ROUND_TIME.as_millis(),
        "row_bytes": ROW_BYTES,
        "batch_rows": BATCH_ROWS,
        "results": results,
        "derived": derived,
        "skipped": report.skipped,
        "elapsed_s": elapsed,
    });
    println!("PROBE-JSON {out}");
    Ok(())
}
