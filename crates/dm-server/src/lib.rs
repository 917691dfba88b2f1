//! `dm-server`: the blind relay of the dm end-to-end encrypted messenger.
//!
//! It stores and forwards ciphertext only: accounts with their signed device lists, key
//! packages, and per-device mailboxes of opaque MLS messages. It orders each group's
//! commits (exactly one per epoch, read from the cleartext MLS header) and routes Welcomes
//! to the devices whose key packages they consume. It never holds a private key or a
//! plaintext. The HTTP API is specified by [`dm_wire::api`].
//!
//! - [`app`] builds the router over an [`AppState`] (tests drive it without a socket);
//! - [`serve`] opens the store, binds, prints `dm-server listening on http://ADDR` and
//!   serves until the shutdown signal.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod mls;
pub mod push;
pub mod routes;
pub mod store;

use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dm_wire::api::limits::MAX_BODY_BYTES;
use tower_http::catch_panic::CatchPanicLayer;

pub use crate::config::Config;
use crate::error::ApiError;
use crate::push::{Push, SocketLimits};
use crate::store::Store;
use crate::store::sqlite::SqliteStore;

/// How often expired rows are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// How long shutdown waits for push sockets to close.
const PUSH_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The source of the current time (replaceable in tests).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// What every request handler shares: the store and the clock.
#[derive(Clone)]
pub struct AppState {
    store: Arc<dyn Store>,
    clock: Clock,
    push: Arc<Push>,
}

impl AppState {
    /// State over a store, with the system clock.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            clock: Arc::new(SystemTime::now),
            push: Arc::new(Push::new(SocketLimits::default())),
        }
    }

    /// Replaces the push sockets' limits (before any socket opens).
    pub fn with_socket_limits(mut self, limits: SocketLimits) -> Self {
        self.push = Arc::new(Push::new(limits));
        self
    }

    /// The open push sockets.
    pub fn push(&self) -> &Arc<Push> {
        &self.push
    }

    /// The store, shared.
    pub fn store_arc(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Replaces the clock (tests use this to move time forward).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Now, in unix seconds.
    pub fn now_secs(&self) -> u64 {
        self.since_epoch().as_secs()
    }

    /// Now, in unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.since_epoch().as_millis()).unwrap_or(u64::MAX)
    }

    fn since_epoch(&self) -> Duration {
        (self.clock)()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
    }
}

/// The relay's HTTP API (see [`dm_wire::api`]) over `state`.
pub fn app(state: AppState) -> Router {
    use crate::routes::{accounts, auth, key_packages, mailbox, messages};
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/accounts", post(accounts::register))
        .route("/v1/accounts/{handle}", get(accounts::show))
        .route(
            "/v1/accounts/{handle}/key-packages/claim",
            post(key_packages::claim),
        )
        .route("/v1/auth/challenge", post(auth::challenge))
        .route("/v1/auth/session", post(auth::session))
        .route(
            "/v1/key-packages",
            post(key_packages::upload).get(key_packages::stock),
        )
        .route("/v1/messages", post(messages::send))
        .route("/v1/mailbox", get(mailbox::fetch))
        .route("/v1/mailbox/ack", post(mailbox::ack))
        .route("/v1/ws", get(push::socket))
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .fallback(|| async { ApiError::not_found() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(json_errors))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                ApiError::internal("a request handler panicked").into_response()
            },
        ))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Logs method, route template, status and latency of every request. Never the URI (it can
/// hold a handle), headers (tokens) or bodies.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "<unmatched>".to_owned(), |p| p.as_str().to_owned());
    let start = Instant::now();
    let response = next.run(req).await;
    tracing::info!(
        method = %method,
        route = %route,
        status = response.status().as_u16(),
        latency_ms = start.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// Safety net: turns any error response that is not JSON (one the framework produced
/// itself) into the [`dm_wire::api::ErrorBody`] for its status.
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow: Option<HeaderValue> = response.headers().get(header::ALLOW).cloned();
    let mut replaced = ApiError::for_status(status).into_response();
    if let Some(allow) = allow {
        replaced.headers_mut().insert(header::ALLOW, allow);
    }
    replaced
}

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database URL names an engine this build does not support.
    #[error("unsupported database URL (expected sqlite://PATH)")]
    UnsupportedDatabase,
    /// The database could not be opened or migrated.
    #[error("cannot open the database: {0}")]
    Store(#[from] store::StoreError),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another I/O failure (reading the bound address, writing stdout, serving).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the relay: opens the database, binds `config.listen`, prints
/// `dm-server listening on http://ADDR` (the bound address) to stdout, and serves until
/// `shutdown` completes, then finishes in-flight requests and closes the database.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    if !config.database_url.starts_with("sqlite:") {
        return Err(ServeError::UnsupportedDatabase);
    }
    let store = Arc::new(SqliteStore::connect(&config.database_url).await?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "dm-server listening on http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(%addr, "listening");

    let state = AppState::new(store.clone());
    let sweeper = tokio::spawn(sweep_periodically(state.clone()));
    let push = Arc::clone(state.push());
    let stop_push = Arc::clone(&push);
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Upgraded sockets are not connections the server waits for: close them.
            stop_push.begin_shutdown();
        })
        .await;
    push.closed(PUSH_CLOSE_GRACE).await;
    sweeper.abort();
    store.close().await;
    tracing::info!("stopped");
    Ok(served?)
}

/// Deletes expired rows every [`SWEEP_INTERVAL`].
async fn sweep_periodically(state: AppState) {
    let mut interval = tokio::time::interval(SWEEP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        match state.store().sweep(state.now_secs()).await {
            Ok(stats) => tracing::debug!(?stats, "swept expired rows"),
            Err(err) => tracing::warn!(error = %err, "sweep failed"),
        }
    }
}
