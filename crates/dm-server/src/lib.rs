//! `dm-server`: the blind relay of the dm end-to-end encrypted messenger.
//!
//! It stores and forwards ciphertext only: accounts with their signed device lists, key
//! packages, and per-device mailboxes of opaque MLS messages. It orders each group's
//! commits (exactly one per epoch, read from the cleartext MLS header) and routes Welcomes
//! to the devices whose key packages they consume. It never holds a private key or a
//! plaintext. The HTTP API is specified by [`dm_wire::api`].
//!
//! - [`app`] builds the router over an [`AppState`] (tests drive it without a socket) from
//!   one list of routes, [`routes()`], which `openapi.json` describes;
//! - [`serve`] opens the store, binds, prints `dm-server listening on http://ADDR` and
//!   serves until the shutdown signal, then drains (see [`AppState::shutting_down`]);
//! - [`config`] reads the settings, [`limits`] bounds requests and connections,
//!   [`metrics`] and [`ops`] serve the operator endpoints.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod error;
pub mod extract;
pub mod limits;
pub mod metrics;
pub mod mls;
pub mod ops;
pub mod push;
pub mod routes;
pub mod store;

use std::future::{Future, IntoFuture as _};
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use dm_wire::api::limits::MAX_BODY_BYTES;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower_http::catch_panic::CatchPanicLayer;

pub use crate::config::Config;
use crate::error::ApiError;
use crate::limits::{LimitedListener, PeerAddr, RateLimit, RateLimiter};
use crate::metrics::{Metrics, WebSocketGuard};
use crate::push::Push;
use crate::store::{Store, StoreError};

/// How often expired rows are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// How long closing the database may take after the grace period ran out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for push sockets to close after the server stopped.
const PUSH_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The source of the current time (replaceable in tests).
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// What every request handler shares: the store, the clock, the metrics, the rate limiter
/// and the shutdown signal.
#[derive(Clone)]
pub struct AppState {
    store: Arc<dyn Store>,
    clock: Clock,
    push: Arc<Push>,
    metrics: Metrics,
    limiter: Option<Arc<RateLimiter>>,
    client_ip_header: Option<HeaderName>,
    websockets: Arc<Semaphore>,
    shutdown: Arc<watch::Sender<bool>>,
    sessions: Arc<auth::SessionCache>,
}

/// A WebSocket's place among the `max_websockets` allowed at once; counted in
/// `dm_websockets_open` until dropped.
#[derive(Debug)]
pub struct WebSocketSlot {
    _permit: OwnedSemaphorePermit,
    _open: WebSocketGuard,
}

impl AppState {
    /// State over a store, with the system clock, fresh metrics and no rate limit.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            clock: Arc::new(SystemTime::now),
            metrics: Metrics::default(),
            limiter: None,
            client_ip_header: None,
            websockets: Arc::new(Semaphore::new(Config::default().max_websockets)),
            shutdown: Arc::new(watch::Sender::new(false)),
            push: Arc::new(Push::new()),
            sessions: Arc::new(auth::SessionCache::default()),
        }
    }

    /// Sessions recently found valid.
    pub fn sessions(&self) -> &auth::SessionCache {
        &self.sessions
    }

    /// The open push sockets.
    pub fn push(&self) -> &Arc<Push> {
        &self.push
    }

    /// The store, shared.
    pub fn store_arc(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Allows at most `max` WebSockets open at once (see [`AppState::try_websocket`]).
    pub fn with_max_websockets(mut self, max: usize) -> Self {
        self.websockets = Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS)));
        self
    }

    /// A slot for a new WebSocket, or `None` when `max_websockets` are open (answer 503
    /// `unavailable` then). Keep the slot as long as the socket is open.
    pub fn try_websocket(&self) -> Option<WebSocketSlot> {
        let permit = self.websockets.clone().try_acquire_owned().ok()?;
        Some(WebSocketSlot {
            _permit: permit,
            _open: self.metrics.websocket_guard(),
        })
    }

    /// Replaces the clock (tests use this to move time forward).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Limits every client's request rate (see [`limits`]); a disabled limit removes it.
    pub fn with_rate_limit(mut self, limit: RateLimit) -> Self {
        self.limiter = limit
            .is_enabled()
            .then(|| Arc::new(RateLimiter::new(limit)));
        self
    }

    /// Takes client addresses from this header (set by a trusted reverse proxy) instead of
    /// the TCP peer.
    pub fn with_client_ip_header(mut self, header: Option<HeaderName>) -> Self {
        self.client_ip_header = header;
        self
    }

    /// Replaces the metrics handle.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The store.
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The rate limiter, if requests are limited.
    pub fn rate_limiter(&self) -> Option<&RateLimiter> {
        self.limiter.as_deref()
    }

    /// The header that carries client addresses, if configured.
    pub fn client_ip_header(&self) -> Option<&HeaderName> {
        self.client_ip_header.as_ref()
    }

    /// Starts the shutdown: `/readyz` answers 503 and [`AppState::shutting_down`]
    /// completes. Idempotent.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Whether the shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Completes when the shutdown starts (at once if it has). Long-lived handlers (e.g.
    /// WebSockets) await it to close their connections cleanly: the server waits for
    /// in-flight requests, not for upgraded connections.
    pub fn shutting_down(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.subscribe();
        async move {
            // `Err` only if the sender is gone, which the state itself prevents.
            let _ = rx.wait_for(|down| *down).await;
        }
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

/// Every route of the relay: method, path template and handler. [`app`] builds the router
/// from this list and [`routes()`] lists it, so the OpenAPI document (`openapi.json`) can be
/// checked against it. To add a route, add it here and to `openapi.json`.
fn route_table() -> Vec<(Method, &'static str, MethodRouter<AppState>)> {
    use crate::routes::{accounts, auth, devices, key_packages, mailbox, messages};
    vec![
        (Method::GET, "/healthz", get(ops::healthz)),
        (Method::GET, "/readyz", get(ops::readyz)),
        (Method::GET, "/metrics", get(ops::metrics)),
        (Method::GET, "/openapi.json", get(ops::openapi)),
        (Method::POST, "/v1/accounts", post(accounts::register)),
        (Method::GET, "/v1/accounts/{handle}", get(accounts::show)),
        (
            Method::DELETE,
            "/v1/accounts/{handle}",
            delete(devices::delete_account),
        ),
        (
            Method::POST,
            "/v1/accounts/{handle}/device-list",
            post(devices::publish),
        ),
        (Method::POST, "/v1/device-lists", post(devices::lists)),
        (Method::PUT, "/v1/links/{slot}", put(devices::put_request)),
        (Method::GET, "/v1/links/{slot}", get(devices::get_slot)),
        (
            Method::POST,
            "/v1/links/{slot}/response",
            post(devices::put_response),
        ),
        (
            Method::POST,
            "/v1/accounts/{handle}/key-packages/claim",
            post(key_packages::claim),
        ),
        (Method::POST, "/v1/auth/challenge", post(auth::challenge)),
        (Method::POST, "/v1/auth/session", post(auth::session)),
        (Method::POST, "/v1/key-packages", post(key_packages::upload)),
        (Method::GET, "/v1/key-packages", get(key_packages::stock)),
        (Method::POST, "/v1/messages", post(messages::send)),
        (Method::GET, "/v1/mailbox", get(mailbox::fetch)),
        (Method::POST, "/v1/mailbox/ack", post(mailbox::ack)),
        (Method::GET, "/v1/ws", get(push::socket)),
    ]
}

/// The relay's routes: (method, path template), as the router serves them.
pub fn routes() -> Vec<(Method, &'static str)> {
    route_table()
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect()
}

/// The relay's HTTP API (see [`dm_wire::api`]) over `state`.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in route_table() {
        // Routes on the same path are merged; the same method twice panics at startup.
        router = router.route(path, handler);
    }
    router
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .fallback(|| async { ApiError::not_found() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            limits::rate_limit,
        ))
        .layer(middleware::from_fn(json_errors))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                ApiError::internal("a request handler panicked").into_response()
            },
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe_request,
        ))
        .with_state(state)
}

/// Logs method, route template, status and latency of every request and records them in
/// the metrics. Never the URI (it can hold a handle), headers (tokens) or bodies.
async fn observe_request(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(metrics::UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let in_flight = state.metrics().request_started(&route);
    let start = Instant::now();
    let response = next.run(req).await;
    let latency = start.elapsed();
    drop(in_flight);
    let status = response.status().as_u16();
    state
        .metrics()
        .request_finished(&route, &method, status, latency);
    tracing::info!(
        method = %method,
        route = %route,
        status,
        latency_ms = latency.as_secs_f64() * 1000.0,
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
    #[error("unsupported database URL (expected sqlite://PATH or postgres://USER@HOST/DATABASE)")]
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
/// `shutdown` completes. Then it stops accepting connections, marks itself not ready,
/// signals long-lived handlers ([`AppState::shutting_down`]), lets in-flight requests
/// finish for at most `config.shutdown_grace`, and closes the database.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let store = match store::open(&config.database_url, config.store_options()).await {
        Err(StoreError::UnsupportedDatabaseUrl) => return Err(ServeError::UnsupportedDatabase),
        opened => opened?,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    let state = AppState::new(store.clone())
        .with_rate_limit(config.rate_limit)
        .with_client_ip_header(config.client_ip_header.clone())
        .with_max_websockets(config.max_websockets);
    let signal_state = state.clone();
    let grace = config.shutdown_grace;
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!(
            grace_secs = grace.as_secs(),
            "shutting down: no new connections, finishing requests in flight"
        );
        signal_state.begin_shutdown();
    });
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "dm-server listening on http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(
        %addr,
        max_connections = config.max_connections,
        rate_limit_per_second = config.rate_limit.per_second,
        rate_limit_burst = config.rate_limit.burst,
        "listening"
    );

    let listener = LimitedListener::new(listener, config.max_connections, state.metrics().clone());
    let sweeper = tokio::spawn(sweep_periodically(state.clone()));
    let server = axum::serve(
        listener,
        app(state.clone()).into_make_service_with_connect_info::<PeerAddr>(),
    )
    .with_graceful_shutdown(state.shutting_down())
    .into_future();
    let grace_over = {
        let down = state.shutting_down();
        async move {
            down.await;
            tokio::time::sleep(grace).await;
        }
    };
    let (served, finished) = tokio::select! {
        served = server => (served, true),
        () = grace_over => (Ok(()), false),
    };
    sweeper.abort();
    state.push().closed(PUSH_CLOSE_GRACE).await;
    let close = async {
        if let Err(err) = store.close().await {
            tracing::warn!(error = %err, "closing the store failed");
        }
    };
    if finished {
        close.await;
    } else {
        tracing::warn!("the grace period is over: closing the connections still open");
        if tokio::time::timeout(CLOSE_TIMEOUT, close).await.is_err() {
            tracing::warn!("the database did not close in time");
        }
    }
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
