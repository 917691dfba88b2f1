//! Prometheus metrics, rendered by hand in the text exposition format 0.0.4 at `/metrics`.
//!
//! [`Metrics`] is a cheap handle (an `Arc`) kept in [`crate::AppState`]; routes and
//! middleware call its methods. HTTP metrics are labelled by route template (never the raw
//! URI, which can hold a handle), so their label sets stay small. Counts that come from the
//! database ([`crate::store::Store::stats`]) are cached and refreshed at most every
//! [`STATS_MAX_AGE`], so a scrape costs at most one stats query per interval however often
//! it is scraped.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Method;

use crate::store::{Store, StoreStats};

/// How old the cached database counts may be when scraped.
pub const STATS_MAX_AGE: Duration = Duration::from_secs(5);

/// Upper bounds (seconds) of the request latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The content type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The route label of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

#[derive(Default)]
struct Histogram {
    /// Non-cumulative counts per bucket of [`LATENCY_BUCKETS`], then `+Inf`.
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Http {
    /// (route, method, status) → count.
    requests: BTreeMap<(String, &'static str, u16), u64>,
    /// route → latency.
    latency: BTreeMap<String, Histogram>,
    /// route → requests being handled.
    in_flight: BTreeMap<String, i64>,
}

struct CachedStats {
    at: Option<Instant>,
    stats: StoreStats,
}

struct Inner {
    http: Mutex<Http>,
    envelopes_stored: AtomicU64,
    envelopes_delivered: AtomicU64,
    rate_limited: AtomicU64,
    websockets_open: AtomicI64,
    connections_open: AtomicI64,
    stats_max_age: Duration,
    stats: tokio::sync::Mutex<CachedStats>,
}

/// The relay's metrics (a handle: clones share the same values).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(STATS_MAX_AGE)
    }
}

/// Decrements the open-connections gauge when dropped.
#[derive(Debug)]
pub struct ConnectionGuard(Metrics);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0
            .inner
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Decrements the in-flight gauge of a route when dropped (also when the request is
/// cancelled).
#[derive(Debug)]
pub struct InFlightGuard {
    metrics: Metrics,
    route: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut http = self.metrics.http();
        if let Some(n) = http.in_flight.get_mut(&self.route) {
            *n -= 1;
        }
    }
}

/// Decrements `dm_websockets_open` when dropped.
#[derive(Debug)]
pub struct WebSocketGuard(Metrics);

impl Drop for WebSocketGuard {
    fn drop(&mut self) {
        self.0.websocket_closed();
    }
}

/// The method label: the standard methods by name, anything else as `OTHER` (so clients
/// cannot grow the label set).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}

impl Metrics {
    /// Metrics whose database counts are refreshed when older than `stats_max_age` at a
    /// scrape.
    pub fn new(stats_max_age: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                http: Mutex::new(Http::default()),
                envelopes_stored: AtomicU64::new(0),
                envelopes_delivered: AtomicU64::new(0),
                rate_limited: AtomicU64::new(0),
                websockets_open: AtomicI64::new(0),
                connections_open: AtomicI64::new(0),
                stats_max_age,
                stats: tokio::sync::Mutex::new(CachedStats {
                    at: None,
                    stats: StoreStats::default(),
                }),
            }),
        }
    }

    fn http(&self) -> std::sync::MutexGuard<'_, Http> {
        self.inner
            .http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a request to `route` as in flight until the guard is dropped.
    pub fn request_started(&self, route: &str) -> InFlightGuard {
        *self.http().in_flight.entry(route.to_owned()).or_default() += 1;
        InFlightGuard {
            metrics: self.clone(),
            route: route.to_owned(),
        }
    }

    /// Records an answered request: `route` is the route template (or
    /// [`UNMATCHED_ROUTE`]).
    pub fn request_finished(&self, route: &str, method: &Method, status: u16, latency: Duration) {
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        let mut http = self.http();
        *http
            .requests
            .entry((route.to_owned(), method_label(method), status))
            .or_default() += 1;
        let histogram = http.latency.entry(route.to_owned()).or_default();
        histogram.buckets[bucket] += 1;
        histogram.sum += secs;
        histogram.count += 1;
    }

    /// Counts envelopes stored in mailboxes.
    pub fn envelopes_stored(&self, n: u64) {
        self.inner.envelopes_stored.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts envelopes handed to devices (fetch responses, WebSocket pushes).
    pub fn envelopes_delivered(&self, n: u64) {
        self.inner
            .envelopes_delivered
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a request refused by the rate limit.
    pub fn rate_limited(&self) {
        self.inner.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    /// A WebSocket opened (pair with [`Metrics::websocket_closed`], or use
    /// [`Metrics::websocket_guard`]).
    pub fn websocket_opened(&self) {
        self.inner.websockets_open.fetch_add(1, Ordering::Relaxed);
    }

    /// A WebSocket closed.
    pub fn websocket_closed(&self) {
        self.inner.websockets_open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a WebSocket as open until the guard is dropped.
    pub fn websocket_guard(&self) -> WebSocketGuard {
        self.websocket_opened();
        WebSocketGuard(self.clone())
    }

    /// WebSockets open now.
    pub fn websockets_open(&self) -> i64 {
        self.inner.websockets_open.load(Ordering::Relaxed)
    }

    /// Counts a TCP connection as open until the guard is dropped.
    pub fn connection_opened(&self) -> ConnectionGuard {
        self.inner.connections_open.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }

    /// The database counts, refreshed first if older than the maximum age. Concurrent
    /// scrapes share one refresh; if it fails the previous counts are kept (and the failure
    /// logged).
    pub async fn store_stats(&self, store: &dyn Store, now_secs: u64) -> StoreStats {
        let mut cached = self.inner.stats.lock().await;
        let fresh = cached
            .at
            .is_some_and(|at| at.elapsed() < self.inner.stats_max_age);
        if !fresh {
            match store.stats(now_secs).await {
                Ok(stats) => {
                    cached.stats = stats;
                    cached.at = Some(Instant::now());
                }
                Err(err) => tracing::warn!(error = %err, "cannot read counts for the metrics"),
            }
        }
        cached.stats
    }

    /// Renders every metric in the text exposition format 0.0.4.
    pub async fn render(&self, store: &dyn Store, now_secs: u64) -> String {
        let stats = self.store_stats(store, now_secs).await;
        let mut out = String::with_capacity(4096);
        self.render_http(&mut out);
        let counters = [
            (
                "dm_envelopes_stored_total",
                "Envelopes stored in device mailboxes.",
                self.inner.envelopes_stored.load(Ordering::Relaxed),
            ),
            (
                "dm_envelopes_delivered_total",
                "Envelopes handed to devices (mailbox fetches and live pushes).",
                self.inner.envelopes_delivered.load(Ordering::Relaxed),
            ),
            (
                "dm_rate_limited_total",
                "Requests refused with 429 by the per-client rate limit.",
                self.inner.rate_limited.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            metric_header(&mut out, name, help, "counter");
            let _ = writeln!(out, "{name} {value}");
        }
        let gauges = [
            (
                "dm_websockets_open",
                "WebSocket connections open now.",
                self.inner.websockets_open.load(Ordering::Relaxed),
            ),
            (
                "dm_connections_open",
                "TCP connections open now (WebSockets included).",
                self.inner.connections_open.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            metric_header(&mut out, name, help, "gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        let store_gauges = [
            ("dm_accounts", "Registered accounts.", stats.accounts),
            ("dm_devices", "Registered devices.", stats.devices),
            (
                "dm_mailbox_envelopes",
                "Envelopes waiting in all mailboxes.",
                stats.envelopes,
            ),
            (
                "dm_key_packages_one_time",
                "Unclaimed, unexpired one-time key packages of all devices.",
                stats.one_time_key_packages,
            ),
            (
                "dm_devices_without_key_packages",
                "Devices without an unclaimed, unexpired one-time key package.",
                stats.devices_without_one_time_key_packages,
            ),
        ];
        for (name, help, value) in store_gauges {
            metric_header(&mut out, name, help, "gauge");
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }

    fn render_http(&self, out: &mut String) {
        let http = self.http();
        metric_header(
            out,
            "dm_http_requests_total",
            "HTTP requests answered, by route template, method and status.",
            "counter",
        );
        for ((route, method, status), count) in &http.requests {
            let _ = writeln!(
                out,
                "dm_http_requests_total{{route=\"{}\",method=\"{method}\",status=\"{status}\"}} {count}",
                escape(route)
            );
        }
        metric_header(
            out,
            "dm_http_request_duration_seconds",
            "Time to answer HTTP requests, by route template.",
            "histogram",
        );
        for (route, histogram) in &http.latency {
            let route = escape(route);
            let mut cumulative = 0;
            for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += histogram.buckets[i];
                let _ = writeln!(
                    out,
                    "dm_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "dm_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(
                out,
                "dm_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                histogram.sum
            );
            let _ = writeln!(
                out,
                "dm_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                histogram.count
            );
        }
        metric_header(
            out,
            "dm_http_requests_in_flight",
            "HTTP requests being handled now, by route template.",
            "gauge",
        );
        for (route, n) in &http.in_flight {
            let _ = writeln!(
                out,
                "dm_http_requests_in_flight{{route=\"{}\"}} {n}",
                escape(route)
            );
        }
    }
}

fn metric_header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_metrics_render_in_the_exposition_format() {
        let metrics = Metrics::default();
        {
            let _a = metrics.request_started("/v1/accounts/{handle}");
            let b = metrics.request_started("/v1/accounts/{handle}");
            drop(b);
            let mut out = String::new();
            metrics.render_http(&mut out);
            assert!(
                out.contains("dm_http_requests_in_flight{route=\"/v1/accounts/{handle}\"} 1\n"),
                "{out}"
            );
        }
        metrics.request_finished(
            "/v1/accounts/{handle}",
            &Method::GET,
            200,
            Duration::from_millis(3),
        );
        metrics.request_finished(
            "/v1/accounts/{handle}",
            &Method::GET,
            200,
            Duration::from_secs(60),
        );
        let odd = Method::from_bytes(b"BREW").expect("method");
        metrics.request_finished(UNMATCHED_ROUTE, &odd, 404, Duration::ZERO);
        let mut out = String::new();
        metrics.render_http(&mut out);
        for line in [
            "# TYPE dm_http_requests_total counter",
            "dm_http_requests_total{route=\"/v1/accounts/{handle}\",method=\"GET\",status=\"200\"} 2",
            "dm_http_requests_total{route=\"unmatched\",method=\"OTHER\",status=\"404\"} 1",
            "# TYPE dm_http_request_duration_seconds histogram",
            "dm_http_request_duration_seconds_bucket{route=\"/v1/accounts/{handle}\",le=\"0.0025\"} 0",
            "dm_http_request_duration_seconds_bucket{route=\"/v1/accounts/{handle}\",le=\"0.005\"} 1",
            "dm_http_request_duration_seconds_bucket{route=\"/v1/accounts/{handle}\",le=\"10\"} 1",
            "dm_http_request_duration_seconds_bucket{route=\"/v1/accounts/{handle}\",le=\"+Inf\"} 2",
            "dm_http_request_duration_seconds_count{route=\"/v1/accounts/{handle}\"} 2",
            "dm_http_requests_in_flight{route=\"/v1/accounts/{handle}\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line:?} in\n{out}");
        }
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn gauges_follow_their_guards() {
        let metrics = Metrics::default();
        let ws = metrics.websocket_guard();
        metrics.websocket_opened();
        assert_eq!(metrics.websockets_open(), 2);
        drop(ws);
        metrics.websocket_closed();
        assert_eq!(metrics.websockets_open(), 0);
        let c = metrics.connection_opened();
        assert_eq!(metrics.inner.connections_open.load(Ordering::Relaxed), 1);
        drop(c);
        assert_eq!(metrics.inner.connections_open.load(Ordering::Relaxed), 0);
    }
}
