//! The relay under test: a `dm-server` process pinned to one core, on a fresh SQLite file
//! or a fresh PostgreSQL database, and what the load generator reads of it from `/proc`
//! (resident memory, CPU time).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Which database the relay runs on. Both are durable: SQLite in WAL mode with
/// `synchronous=FULL`, PostgreSQL with `synchronous_commit=on` (the relay's only settings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// An SQLite file in the data directory.
    Sqlite,
    /// A fresh database on a PostgreSQL server.
    Postgres,
}

impl Engine {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }
}

/// How to start relays.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The `dm-server` executable.
    pub binary: PathBuf,
    /// The core the relay is pinned to (`taskset -c`), if any.
    pub core: Option<usize>,
    /// Where SQLite files and relay logs go.
    pub data_dir: PathBuf,
    /// A PostgreSQL URL of a database the load generator may create databases from.
    pub postgres_admin_url: String,
    /// The relay's `RUST_LOG`.
    pub log_filter: String,
}

/// A running relay. Stopped (and its database dropped) by [`Server::stop`]; dropping it
/// kills the process.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    postgres_db: Option<(String, String)>,
    engine: Engine,
}

impl Server {
    /// Starts a relay on a fresh database with every limit that would throttle a load test
    /// opened up (rate limit off, large quotas and connection limits). Waits until it
    /// listens.
    pub async fn start(config: &ServerConfig, engine: Engine) -> anyhow::Result<Server> {
        let suffix: u64 = rand::random();
        let (database_url, postgres_db) = match engine {
            Engine::Sqlite => {
                let path = config.data_dir.join(format!("relay-{suffix:016x}.db"));
                (format!("sqlite://{}", path.display()), None)
            }
            Engine::Postgres => {
                let name = format!("dm_loadgen_{suffix:016x}");
                create_database(&config.postgres_admin_url, &name).await?;
                let url = database_url_for(&config.postgres_admin_url, &name)?;
                (url, Some((config.postgres_admin_url.clone(), name)))
            }
        };
        let log_path = config.data_dir.join(format!("relay-{suffix:016x}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create the relay log {}", log_path.display()))?;
        let mut command = match config.core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(&config.binary);
                c
            }
            None => Command::new(&config.binary),
        };
        command
            .args(["--listen", "127.0.0.1:0", "--database-url", &database_url])
            .args(["--rate-limit-per-second", "0"])
            .args(["--max-connections", "16000"])
            .args(["--max-websockets", "12000"])
            .args(["--database-connections", "64"])
            .args(["--mailbox-quota", "10000000"])
            .args(["--claims-per-requester-per-hour", "100000"])
            .args(["--one-time-claims-per-target-per-hour", "100000"])
            .args(["--shutdown-grace-secs", "2"])
            .env("RUST_LOG", &config.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = command.spawn().with_context(|| {
            format!(
                "cannot start {} (build it with `cargo build --release -p dm-server`; \
                 pinning needs `taskset` from util-linux)",
                config.binary.display()
            )
        })?;
        let stdout = child.stdout.take().context("the relay's stdout")?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("dm-server listening on ")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        });
        let mut server = Server {
            child,
            base: String::new(),
            postgres_db,
            engine,
        };
        match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(base)) => server.base = base,
            _ => {
                server.stop().await;
                bail!(
                    "the relay did not report its address within 60 s; see {}",
                    log_path.display()
                );
            }
        }
        Ok(server)
    }

    /// The relay's database engine.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The relay's resident memory in bytes (`VmRSS`).
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        rss_bytes(self.pid())
    }

    /// CPU time the relay used so far (user + system).
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time(self.pid())
    }

    /// Stops the relay (SIGKILL: nothing of it is kept) and drops its PostgreSQL database.
    pub async fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some((admin, name)) = self.postgres_db.take()
            && let Err(err) = drop_database(&admin, &name).await
        {
            eprintln!("warning: cannot drop the database {name}: {err:#}");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `admin` with its database name replaced by `name`.
fn database_url_for(admin: &str, name: &str) -> anyhow::Result<String> {
    let (without_query, query) = match admin.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (admin, None),
    };
    let scheme_end = without_query
        .find("://")
        .context("the PostgreSQL URL has no scheme")?
        + 3;
    let base = match without_query[scheme_end..].find('/') {
        Some(slash) => &without_query[..scheme_end + slash],
        None => without_query,
    };
    Ok(match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    })
}

async fn admin_connection(admin: &str) -> anyhow::Result<sqlx::PgConnection> {
    use sqlx::Connection as _;
    sqlx::PgConnection::connect(admin)
        .await
        .context("cannot connect to PostgreSQL (pass --postgres-url, or --engine sqlite)")
}

async fn create_database(admin: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = admin_connection(admin).await?;
    // `name` is made of a fixed prefix and hex digits.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .with_context(|| format!("cannot create the database {name}"))?;
    Ok(())
}

async fn drop_database(admin: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = admin_connection(admin).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Resident memory of a process in bytes, from `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .context("cannot read the process status (Linux /proc needed)")?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no VmRSS in the process status")?;
    Ok(kib * 1024)
}

/// CPU time (user + system) a process used, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    cpu_time_at(&PathBuf::from(format!("/proc/{pid}/stat")))
}

/// CPU time (user + system) this process used.
pub fn own_cpu_time() -> anyhow::Result<Duration> {
    cpu_time_at(Path::new("/proc/self/stat"))
}

fn cpu_time_at(path: &Path) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(path).context("cannot read the process stat")?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .context("malformed stat")
    };
    let total = ticks(11)? + ticks(12)?;
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(total * 10))
}

/// Pins this process (every thread it has now and will have) to `core`.
pub fn pin_self(core: usize) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &core.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(Stdio::null())
        .status()
        .context("cannot run taskset (util-linux) to pin the load generator")?;
    if !status.success() {
        bail!("taskset could not pin the load generator to core {core}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_replaces_the_database() {
        assert_eq!(
            database_url_for("postgres://u@h:5432/postgres", "x")
                .ok()
                .as_deref(),
            Some("postgres://u@h:5432/x")
        );
        assert_eq!(
            database_url_for("postgres://u@h:5432", "x").ok().as_deref(),
            Some("postgres://u@h:5432/x")
        );
        assert_eq!(
            database_url_for("postgres://u@h/db?sslmode=disable", "x")
                .ok()
                .as_deref(),
            Some("postgres://u@h/x?sslmode=disable")
        );
    }

    #[test]
    fn reads_own_memory_and_cpu() {
        assert!(rss_bytes(std::process::id()).is_ok_and(|b| b > 0));
        assert!(own_cpu_time().is_ok());
    }
}
