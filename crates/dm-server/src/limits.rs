//! Bounded resources: the per-client request rate limit and the connection bound.
//!
//! **Rate limit.** Every client has a token bucket (`rate_limit_per_second` tokens per
//! second, at most `rate_limit_burst`); a request takes one token, and a request finding the
//! bucket empty is answered `429 rate_limited` with `Retry-After` (whole seconds until a
//! token is back). A client is the authenticated device when the request carries a valid
//! session token, else its IP address (an IPv6 address counts by its /64 prefix, which one
//! subscriber usually holds whole). `/healthz`, `/readyz` and `/metrics` are exempt. The
//! buckets live in this process's memory: with N relay instances behind a load balancer a
//! client may make up to N times as many requests. Memory is bounded: a bucket that has
//! refilled is forgotten (it would behave exactly like a new one), and when
//! [`MAX_TRACKED_CLIENTS`] are tracked at once, newcomers share one bucket until idle ones
//! are forgotten. (Key package claim limits are separate, and kept in the database so they
//! hold across instances.)
//!
//! **Connection bound.** [`LimitedListener`] accepts a TCP connection only while it holds
//! one of `max_connections` permits; the permit travels with the connection, also when it
//! is upgraded to a WebSocket, and is returned when the connection closes. While all
//! permits are taken the relay does not call `accept`: new connections wait in the kernel's
//! listen backlog (and are refused by the kernel once that is full).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use dm_wire::DeviceId;
use dm_wire::api::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::AppState;
use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::metrics::{ConnectionGuard, Metrics};

/// Most clients whose buckets are tracked at once.
pub const MAX_TRACKED_CLIENTS: usize = 100_000;

/// Paths that are never rate limited (probes and scrapes).
pub const EXEMPT_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// How often refilled buckets are forgotten, at the latest.
const EVICT_INTERVAL: Duration = Duration::from_secs(60);

/// A token bucket's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second; 0 disables the limit.
    pub per_second: f64,
    /// The bucket's size: requests a client may make at once.
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const DISABLED: Self = Self {
        per_second: 0.0,
        burst: 1,
    };

    /// Whether requests are limited at all.
    pub fn is_enabled(&self) -> bool {
        self.per_second > 0.0 && self.per_second.is_finite()
    }
}

/// Who a request is counted against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// The device of a valid session token.
    Device(DeviceId),
    /// An IP address (IPv6 masked to its /64).
    Ip(IpAddr),
    /// A request without a known address (only in-process, without a socket).
    Unknown,
    /// Newcomers while [`MAX_TRACKED_CLIENTS`] are tracked.
    Overflow,
}

impl ClientKey {
    /// The key of an IP address: IPv4 as is, IPv6 by its /64 prefix (an IPv4-mapped IPv6
    /// address counts as the IPv4 address).
    pub fn ip(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(v4) => Self::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::Ip(IpAddr::V4(v4)),
                None => {
                    let masked = u128::from(v6) & !((1u128 << 64) - 1);
                    Self::Ip(IpAddr::V6(Ipv6Addr::from(masked)))
                }
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

struct Buckets {
    map: HashMap<ClientKey, Bucket>,
    last_eviction: Instant,
}

/// Token buckets per client (see the module documentation).
pub struct RateLimiter {
    limit: RateLimit,
    max_clients: usize,
    buckets: Mutex<Buckets>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limit", &self.limit)
            .field("clients", &self.tracked_clients())
            .finish()
    }
}

impl RateLimiter {
    /// A limiter tracking at most [`MAX_TRACKED_CLIENTS`] clients.
    pub fn new(limit: RateLimit) -> Self {
        Self::with_capacity(limit, MAX_TRACKED_CLIENTS)
    }

    /// A limiter tracking at most `max_clients` clients (at least one).
    pub fn with_capacity(limit: RateLimit, max_clients: usize) -> Self {
        Self {
            limit,
            max_clients: max_clients.max(1),
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                last_eviction: Instant::now(),
            }),
        }
    }

    /// The limit.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token from `key`'s bucket at `now`. `Err` holds how long until a token is
    /// back.
    pub fn check(&self, key: ClientKey, now: Instant) -> Result<(), Duration> {
        if !self.limit.is_enabled() {
            return Ok(());
        }
        let burst = f64::from(self.limit.burst.max(1));
        let rate = self.limit.per_second;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.saturating_duration_since(buckets.last_eviction) >= EVICT_INTERVAL {
            buckets.evict_refilled(now, rate, burst);
        }
        let mut key = key;
        if !buckets.map.contains_key(&key) && buckets.map.len() >= self.max_clients {
            buckets.evict_refilled(now, rate, burst);
            if buckets.map.len() >= self.max_clients {
                key = ClientKey::Overflow;
            }
        }
        let bucket = buckets.map.entry(key).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now.max(bucket.updated);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            // Saturates (a vanishing rate means a very long wait), never panics.
            Err(Duration::try_from_secs_f64((1.0 - bucket.tokens) / rate).unwrap_or(Duration::MAX))
        }
    }

    /// How many clients have a bucket now.
    pub fn tracked_clients(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .map
            .len()
    }
}

impl Buckets {
    /// Forgets buckets that are full again: they behave exactly like new ones.
    fn evict_refilled(&mut self, now: Instant, rate: f64, burst: f64) {
        self.map.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
            b.tokens + elapsed * rate < burst
        });
        self.last_eviction = now;
    }
}

/// Whole seconds for `Retry-After`: rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    secs.max(1)
}

/// The rate-limit middleware (see the module documentation). A valid session found here
/// is handed to the handler's [`Authenticated`] extractor, so it is looked up once.
pub async fn rate_limit(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let Some(limiter) = state.rate_limiter() else {
        return next.run(req).await;
    };
    if EXEMPT_PATHS.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let key = match Authenticated::from_session(&state, req.headers()).await {
        Some(device) => {
            let key = ClientKey::Device(device.device_id);
            req.extensions_mut().insert(device);
            key
        }
        None => client_ip(&state, &req).map_or(ClientKey::Unknown, ClientKey::ip),
    };
    match limiter.check(key, Instant::now()) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            state.metrics().rate_limited();
            let secs = retry_after_secs(wait);
            tracing::debug!(retry_after = secs, "rate limited");
            rate_limited_response(secs)
        }
    }
}

/// `429 rate_limited` with `Retry-After: secs`.
pub fn rate_limited_response(secs: u64) -> Response {
    let mut response = ApiError::new(
        ErrorCode::RateLimited,
        format!("too many requests: retry in {secs} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

/// The client's address: the configured proxy header's last entry if present and valid,
/// else the TCP peer.
fn client_ip(state: &AppState, req: &Request) -> Option<IpAddr> {
    let from_header = state.client_ip_header().and_then(|name| {
        let value = req.headers().get_all(name).iter().next_back()?;
        let last = value.to_str().ok()?.rsplit(',').next()?.trim();
        last.parse::<IpAddr>()
            .ok()
            .or_else(|| last.parse::<SocketAddr>().ok().map(|a| a.ip()))
    });
    from_header.or_else(|| {
        req.extensions()
            .get::<ConnectInfo<PeerAddr>>()
            .map(|ConnectInfo(PeerAddr(addr))| addr.ip())
    })
}

/// The TCP peer of a connection accepted by [`LimitedListener`] (in request extensions as
/// `ConnectInfo<PeerAddr>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, LimitedListener>> for PeerAddr {
    fn connect_info(stream: IncomingStream<'_, LimitedListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// A TCP listener that serves at most a fixed number of connections at once (see the
/// module documentation).
pub struct LimitedListener {
    listener: TcpListener,
    permits: Arc<Semaphore>,
    metrics: Metrics,
}

impl std::fmt::Debug for LimitedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedListener")
            .field("local_addr", &self.listener.local_addr().ok())
            .field("available", &self.permits.available_permits())
            .finish()
    }
}

impl LimitedListener {
    /// Serves at most `max_connections` (at least one) connections of `listener` at once;
    /// counts open connections in `metrics`.
    pub fn new(listener: TcpListener, max_connections: usize, metrics: Metrics) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(
                max_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            metrics,
        }
    }
}

impl Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (LimitedStream, SocketAddr) {
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            // The semaphore is never closed.
            return std::future::pending().await;
        };
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    // Small responses go out at once (latency over packet count).
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
                    }
                    let stream = LimitedStream {
                        stream,
                        _permit: permit,
                        _open: self.metrics.connection_opened(),
                    };
                    return (stream, addr);
                }
                Err(err) => {
                    if !matches!(
                        err.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) {
                        // E.g. out of file descriptors: wait for some to close.
                        tracing::error!(error = %err, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An accepted connection holding its permit (returned on drop).
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    _open: ConnectionGuard,
}

impl std::fmt::Debug for LimitedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedStream")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: RateLimit = RateLimit {
        per_second: 2.0,
        burst: 3,
    };

    #[test]
    fn buckets_allow_a_burst_then_the_rate() {
        let limiter = RateLimiter::new(LIMIT);
        let a = ClientKey::ip("192.0.2.1".parse().expect("ip"));
        let b = ClientKey::ip("192.0.2.2".parse().expect("ip"));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check(a, t0), Ok(()));
        }
        let wait = limiter.check(a, t0).expect_err("empty");
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after_secs(wait), 1);
        // Another client is unaffected.
        assert_eq!(limiter.check(b, t0), Ok(()));
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(limiter.check(a, t1), Ok(()));
        assert!(limiter.check(a, t1).is_err());
        // A bucket never holds more than the burst.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(limiter.check(a, t2), Ok(()));
        }
        assert!(limiter.check(a, t2).is_err());
    }

    #[test]
    fn slow_rates_give_long_retry_after() {
        let limiter = RateLimiter::new(RateLimit {
            per_second: 0.1,
            burst: 1,
        });
        let t0 = Instant::now();
        assert!(limiter.check(ClientKey::Unknown, t0).is_ok());
        let wait = limiter.check(ClientKey::Unknown, t0).expect_err("empty");
        assert_eq!(retry_after_secs(wait), 10);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
        // A vanishing rate waits "forever", without panicking.
        let limiter = RateLimiter::new(RateLimit {
            per_second: 1e-300,
            burst: 1,
        });
        assert!(limiter.check(ClientKey::Unknown, t0).is_ok());
        let wait = limiter.check(ClientKey::Unknown, t0).expect_err("empty");
        assert_eq!(retry_after_secs(wait), u64::MAX);
    }

    #[test]
    fn disabled_limits_nothing() {
        let limiter = RateLimiter::new(RateLimit::DISABLED);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert!(limiter.check(ClientKey::Unknown, t0).is_ok());
        }
        assert_eq!(limiter.tracked_clients(), 0);
    }

    #[test]
    fn memory_is_bounded() {
        let limiter = RateLimiter::with_capacity(LIMIT, 4);
        let t0 = Instant::now();
        let ip = |n: u8| ClientKey::ip(IpAddr::from([10, 0, 0, n]));
        for n in 0..4 {
            assert!(limiter.check(ip(n), t0).is_ok());
        }
        // Full: newcomers share the overflow bucket.
        for n in 4..7 {
            assert!(limiter.check(ip(n), t0).is_ok());
        }
        assert!(limiter.check(ip(7), t0).is_err());
        assert_eq!(limiter.tracked_clients(), 5);
        // Once the early buckets have refilled they are forgotten and room is made.
        let later = t0 + Duration::from_secs(2);
        assert!(limiter.check(ip(8), later).is_ok());
        assert_eq!(limiter.tracked_clients(), 1);
        // The periodic eviction forgets refilled buckets too.
        let much_later = later + EVICT_INTERVAL;
        assert!(limiter.check(ip(9), much_later).is_ok());
        assert_eq!(limiter.tracked_clients(), 1);
    }

    #[test]
    fn ipv6_counts_by_its_64_prefix() {
        let a = ClientKey::ip("2001:db8:1:2:aaaa::1".parse().expect("ip"));
        let b = ClientKey::ip("2001:db8:1:2:bbbb::2".parse().expect("ip"));
        let c = ClientKey::ip("2001:db8:1:3::1".parse().expect("ip"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            ClientKey::ip("::ffff:192.0.2.1".parse().expect("ip")),
            ClientKey::ip("192.0.2.1".parse().expect("ip"))
        );
    }
}
