//! Databases for the store conformance suite: a SQLite file in a temporary directory, or a
//! fresh PostgreSQL database (`dm_test_<random>`) created through the admin URL in
//! `DM_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) and
//! dropped when the last handle to it goes.
//!
//! When PostgreSQL cannot be reached, the PostgreSQL variants of the tests fail if `CI=true`
//! and otherwise print a notice and pass without running.

use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use dm_server::store::{self, Store, StoreOptions};
use sqlx::ConnectOptions as _;
use sqlx::postgres::PgConnectOptions;
use tempfile::TempDir;

use super::Relay;

/// The admin URL of the test PostgreSQL server.
pub fn postgres_admin_url() -> String {
    std::env::var("DM_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// One database for one test, on either engine.
#[derive(Clone)]
pub struct TestDb {
    dir: Arc<TempDir>,
    url: String,
    postgres: Option<Arc<PostgresDatabase>>,
}

impl TestDb {
    /// A SQLite file in a fresh temporary directory.
    pub fn sqlite() -> Self {
        let dir = TempDir::new().expect("temp dir");
        let url = Relay::database_url(&dir);
        Self {
            dir: Arc::new(dir),
            url,
            postgres: None,
        }
    }

    /// A fresh PostgreSQL database, or `None` (after a notice) when PostgreSQL cannot be
    /// reached outside CI. Panics in CI.
    pub async fn postgres(test: &str) -> Option<Self> {
        let admin_url = postgres_admin_url();
        let name = format!("dm_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        let created = async {
            let mut admin = PgConnectOptions::from_str(&admin_url)?.connect().await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await?;
            Ok::<_, sqlx::Error>(())
        };
        let created = tokio::time::timeout(Duration::from_secs(60), created).await;
        match created {
            Ok(Ok(())) => {}
            failed => {
                let why = match failed {
                    Ok(Err(err)) => err.to_string(),
                    _ => "timed out".to_owned(),
                };
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!(
                        "PostgreSQL is unreachable at DM_TEST_POSTGRES_URL (default \
                         postgres://postgres@127.0.0.1:5432/postgres): {why}. CI runs the \
                         store conformance suite on PostgreSQL: start a server with trust \
                         authentication there, or point DM_TEST_POSTGRES_URL at one."
                    );
                }
                eprintln!(
                    "SKIPPED {test} on PostgreSQL: the server is unreachable ({why}); set \
                     DM_TEST_POSTGRES_URL or start PostgreSQL on 127.0.0.1:5432 to run it"
                );
                return None;
            }
        }
        let url = database_url(&admin_url, &name);
        Some(Self {
            dir: Arc::new(TempDir::new().expect("temp dir")),
            url,
            postgres: Some(Arc::new(PostgresDatabase { admin_url, name })),
        })
    }

    /// The database URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this is the PostgreSQL variant.
    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }

    /// A new store instance on this database (on PostgreSQL: like another relay process).
    pub async fn store(&self, options: StoreOptions) -> Arc<dyn Store> {
        store::open(&self.url, options).await.expect("open store")
    }

    /// A relay with default store options over this database.
    pub async fn relay(&self) -> Relay {
        self.relay_with(StoreOptions::default()).await
    }

    /// A relay with these store options over this database.
    pub async fn relay_with(&self, options: StoreOptions) -> Relay {
        Relay::on(self.clone(), options).await
    }

    /// The temporary directory of the SQLite file (empty for PostgreSQL).
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }
}

/// `admin_url` with its database replaced by `name` (query parameters kept).
fn database_url(admin_url: &str, name: &str) -> String {
    let (scheme, rest) = admin_url.split_once("://").expect("a URL with a scheme");
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, format!("?{query}")),
        None => (rest, String::new()),
    };
    let authority = rest.split('/').next().expect("an authority");
    format!("{scheme}://{authority}/{name}{query}")
}

/// A database dropped (best effort, connections forced out) when dropped.
struct PostgresDatabase {
    admin_url: String,
    name: String,
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside the test's runtime: use a thread with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut admin = PgConnectOptions::from_str(&admin_url)?.connect().await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await?;
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
        if let Ok(Err(err)) = dropped {
            eprintln!("could not drop the test database: {err}");
        }
    }
}

/// Store conformance tests: each `async fn name(db: TestDb) { … }` becomes
/// `sqlite::name` and `postgres::name`, run on a fresh database of each engine.
#[macro_export]
macro_rules! conformance {
    ($($(#[$meta:meta])* async fn $name:ident($db:ident: TestDb) $body:block)*) => {
        mod sqlite {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let $db = $crate::support::db::TestDb::sqlite();
                    $body
                }
            )*
        }
        mod postgres {
            #[allow(unused_imports)]
            use super::*;
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some($db) =
                        $crate::support::db::TestDb::postgres(stringify!($name)).await
                    else {
                        return;
                    };
                    $body
                }
            )*
        }
    };
}

#[test]
fn database_urls_keep_authority_and_query() {
    assert_eq!(
        database_url("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        database_url("postgresql://u@h?sslmode=disable", "x"),
        "postgresql://u@h/x?sslmode=disable"
    );
}
