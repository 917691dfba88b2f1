//! [`Live`]: events as they happen, over the relay's push socket (`GET /v1/ws`), falling
//! back to fetching the mailbox when the socket cannot be used.
//!
//! Pushed envelopes go through the same path as fetched ones (one transaction each, the
//! cursor moves with it) and are acknowledged over the socket once processed. The socket
//! is opened with the stored cursor as `after`, so a reconnect resumes exactly where
//! processing stopped: nothing is lost, nothing is processed twice.

use std::time::Duration;

use dm_wire::api::{ClientFrame, ErrorCode, ServerFrame};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::Client;
use crate::db;
use crate::error::Error;
use crate::events::EventBatch;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Without a socket, the mailbox is fetched this often.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// First wait before trying the socket again after it failed; doubles up to the maximum.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait before trying the socket again.
const RETRY_MAX: Duration = Duration::from_secs(60);
/// The key package stock is checked at most this often while envelopes arrive (a Welcome
/// consumes one).
const STOCK_CHECK: Duration = Duration::from_secs(60);
/// Largest frame accepted from the relay (a batch of envelopes, base64 in JSON: the relay
/// sends at most one envelope, of at most 1 MiB, above 64 KiB of payloads).
const MAX_SERVER_FRAME: usize = 8 * 1024 * 1024;
/// A socket silent this long (the relay pings every `PUSH_PING_SECS`) is taken as dead.
const SILENCE_LIMIT: Duration = Duration::from_secs(3 * dm_wire::api::limits::PUSH_PING_SECS + 10);

/// How events reach a [`Live`] feed right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveMode {
    /// Pushed over the relay's socket.
    Push,
    /// Fetched periodically (the socket is unavailable; it is retried with backoff).
    Polling,
}

/// A live feed of events for one account, from [`Client::live`].
pub struct Live {
    client: Client,
    socket: Option<Socket>,
    retry_at: Instant,
    retry_delay: Duration,
    poll: tokio::time::Interval,
    stock_checked: Option<Instant>,
    /// Set while a frame's envelopes are being processed: if the future is dropped then
    /// (e.g. by a `select!`), the rest of the frame is lost with it, so the next call
    /// reconnects from the stored cursor and the relay pushes them again.
    mid_frame: bool,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A live feed of this account's events: pushed by the relay as they happen, or
    /// fetched every second while the relay's socket is unavailable.
    pub fn live(&self) -> Live {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Live {
            client: self.clone(),
            socket: None,
            retry_at: Instant::now(),
            retry_delay: RETRY_FIRST,
            poll,
            stock_checked: None,
            mid_frame: false,
        }
    }
}

impl Live {
    /// Whether events are pushed now, or fetched.
    pub fn mode(&self) -> LiveMode {
        if self.socket.is_some() {
            LiveMode::Push
        } else {
            LiveMode::Polling
        }
    }

    /// Waits for events and returns them. Like [`Client::sync_events`], they stay queued
    /// until [`Client::acknowledge_events`]. Cancel-safe between envelopes: dropping the
    /// future loses nothing (an envelope not yet processed is pushed again on reconnect).
    pub async fn next_events(&mut self) -> Result<EventBatch, Error> {
        loop {
            let queued = self.queued().await?;
            if !queued.events.is_empty() {
                return Ok(queued);
            }
            if self.socket.is_none() && Instant::now() >= self.retry_at {
                self.connect().await;
            }
            if self.socket.is_some() {
                self.on_socket().await?;
            } else {
                self.poll.tick().await;
                let batch = self.client.sync_events().await?;
                if !batch.events.is_empty() {
                    return Ok(batch);
                }
            }
        }
    }

    async fn queued(&self) -> Result<EventBatch, Error> {
        let (events, up_to) = self
            .client
            .blocking(|store, _| db::queued_events(store.conn()))
            .await?;
        Ok(EventBatch { events, up_to })
    }

    /// Opens the socket after the stored cursor (sending the outbox first); on failure,
    /// schedules the next attempt and leaves the feed polling.
    async fn connect(&mut self) {
        match self.open_socket().await {
            Ok(socket) => {
                tracing::debug!("push socket open");
                self.socket = Some(socket);
                self.retry_delay = RETRY_FIRST;
            }
            Err(e) => {
                tracing::debug!(error = %e, "push socket unavailable; fetching instead");
                self.back_off();
            }
        }
    }

    fn back_off(&mut self) {
        self.socket = None;
        self.retry_at = Instant::now() + self.retry_delay;
        self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
    }

    async fn open_socket(&self) -> Result<Socket, Error> {
        {
            let _op = self.client.operation().await?;
            self.client.flush_outbox().await?;
        }
        let cursor = self
            .client
            .blocking(|store, _| Ok(db::relay(store.conn())?.cursor))
            .await?;
        let token = self.client.session_token().await?;
        match self.handshake(&token, cursor).await {
            Err(Error::Relay {
                code: ErrorCode::Unauthenticated,
                ..
            }) => {
                let token = self.client.login().await?;
                self.handshake(&token, cursor).await
            }
            other => other,
        }
    }

    async fn handshake(&self, token: &str, after: u64) -> Result<Socket, Error> {
        let base = self.client.inner.transport.base();
        let url = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/v1/ws?after={after}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}/v1/ws?after={after}")
        } else {
            return Err(Error::InvalidInput(format!(
                "the relay URL {base} is not http:// or https://"
            )));
        };
        let mut request = url
            .into_client_request()
            .map_err(|e| Error::InvalidInput(format!("push socket URL: {e}")))?;
        let authorization = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::Protocol("the session token is not a valid header".into()))?;
        request.headers_mut().insert("authorization", authorization);
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_SERVER_FRAME))
            .max_frame_size(Some(MAX_SERVER_FRAME));
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), false);
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Err(_) => Err(Error::RelayUnreachable {
                url: base.to_owned(),
            }),
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
                let status = response.status().as_u16();
                let code = match status {
                    401 => ErrorCode::Unauthenticated,
                    404 => ErrorCode::NotFound,
                    429 => ErrorCode::RateLimited,
                    503 => ErrorCode::Unavailable,
                    _ if status >= 500 => ErrorCode::Internal,
                    _ => ErrorCode::InvalidRequest,
                };
                Err(Error::Relay {
                    code,
                    message: format!("the relay refused the push socket (HTTP {status})"),
                })
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "push socket handshake failed");
                Err(Error::RelayUnreachable {
                    url: base.to_owned(),
                })
            }
        }
    }

    /// Handles one frame from the socket (or its end).
    async fn on_socket(&mut self) -> Result<(), Error> {
        if self.mid_frame {
            // A previous call was dropped halfway through a frame.
            self.mid_frame = false;
            self.socket = None;
            self.retry_at = Instant::now();
            return Ok(());
        }
        let Some(socket) = self.socket.as_mut() else {
            return Ok(());
        };
        let Ok(next) = tokio::time::timeout(SILENCE_LIMIT, socket.next()).await else {
            tracing::debug!("push socket silent for too long; reconnecting");
            self.back_off();
            return Ok(());
        };
        let frame = match next {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(close))) => {
                let session_ended = close.is_some_and(|c| u16::from(c.code) == 4001);
                tracing::debug!(session_ended, "push socket closed by the relay");
                if session_ended {
                    self.client.login().await?;
                    self.socket = None;
                    self.retry_at = Instant::now();
                } else {
                    self.back_off();
                }
                return Ok(());
            }
            Some(Ok(_)) => return Ok(()),
            None | Some(Err(_)) => {
                self.back_off();
                return Ok(());
            }
        };
        let frame = match serde_json::from_str::<ServerFrame>(frame.as_str()) {
            Ok(frame) => frame,
            Err(_) => {
                tracing::debug!("push socket: unknown frame; reconnecting");
                self.back_off();
                return Ok(());
            }
        };
        match frame {
            ServerFrame::Envelopes { envelopes, dropped } => {
                self.mid_frame = true;
                self.client
                    .blocking(move |store, _| {
                        store.transaction(|conn, _| db::note_dropped(conn, dropped))
                    })
                    .await?;
                let processed = {
                    let _op = self.client.operation().await?;
                    let mut result = Ok(());
                    for envelope in envelopes {
                        result = self.client.process_envelope(envelope).await;
                        if result.is_err() {
                            break;
                        }
                    }
                    result
                };
                self.mid_frame = false;
                if let Err(e) = processed {
                    // Transient (the envelope stays unprocessed): the relay pushed past it,
                    // so reconnect from the cursor to get it again.
                    tracing::debug!(error = %e, "push socket: envelope kept for later");
                    self.back_off();
                    return match e {
                        Error::Store(_) | Error::Internal(_) => Err(e),
                        _ => Ok(()),
                    };
                }
                self.acknowledge().await;
                self.check_stock().await;
                self.follow_device_lists().await?;
            }
            ServerFrame::Acked { up_to } => {
                // Never beyond what was processed: a bogus value must not stop later acks.
                self.client
                    .blocking(move |store, _| {
                        let cursor = db::relay(store.conn())?.cursor;
                        db::set_acked(store.conn(), up_to.min(cursor))
                    })
                    .await?;
            }
            ServerFrame::Error { error } => {
                tracing::debug!(code = ?error.code, "push socket: relay error");
                if error.code == ErrorCode::Unauthenticated {
                    self.client.login().await?;
                    self.socket = None;
                    self.retry_at = Instant::now();
                } else {
                    self.back_off();
                }
            }
        }
        Ok(())
    }

    /// After pushed envelopes: rejoin if the relay refused envelopes for this device, and
    /// bring the conversations in line with their members' device lists (commit pending
    /// leave proposals, add linked devices, remove revoked ones), as a sync does. A relay
    /// that cannot be reached now is left for the next batch.
    async fn follow_device_lists(&mut self) -> Result<(), Error> {
        let _op = self.client.operation().await?;
        let result = async {
            if self
                .client
                .blocking(|store, _| db::rejoin_needed(store.conn()))
                .await?
            {
                self.client.rejoin_locked().await?;
                // The socket belongs to the replaced device's mailbox.
                self.socket = None;
                self.retry_at = Instant::now();
            }
            self.client.follow_device_lists().await
        }
        .await;
        match result {
            Err(Error::RelayUnreachable { .. } | Error::Relay { .. }) => {
                tracing::debug!("push socket: device lists left for the next batch");
                Ok(())
            }
            other => other,
        }
    }

    /// Acknowledges over the socket everything processed (the relay answers `acked`).
    async fn acknowledge(&mut self) {
        let Ok(relay) = self
            .client
            .blocking(|store, _| db::relay(store.conn()))
            .await
        else {
            return;
        };
        if relay.cursor <= relay.acked {
            return;
        }
        let Ok(frame) = serde_json::to_string(&ClientFrame::Ack {
            up_to: relay.cursor,
        }) else {
            return;
        };
        if let Some(socket) = self.socket.as_mut()
            && socket.send(Message::text(frame)).await.is_err()
        {
            self.back_off();
        }
    }

    /// Tops up key packages now and then while envelopes arrive.
    async fn check_stock(&mut self) {
        if self
            .stock_checked
            .is_some_and(|at| at.elapsed() < STOCK_CHECK)
        {
            return;
        }
        self.stock_checked = Some(Instant::now());
        let client = &self.client;
        let result = async {
            let _op = client.operation().await?;
            let stock = authed!(client, |t, token| t.key_package_stock(token)).await?;
            client.replenish(stock).await
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "key package top-up failed; retried later");
            self.stock_checked = None;
        }
    }
}
