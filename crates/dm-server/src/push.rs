//! Live push: one authenticated WebSocket per device (`GET /v1/ws?after=SEQ`).
//!
//! A socket sends the device's waiting envelopes after the client's cursor, then every new
//! envelope as soon as it is stored, and takes acknowledgements (see
//! [`dm_wire::api::ServerFrame`] and [`dm_wire::api::ClientFrame`]). Envelopes stay in the
//! mailbox until acknowledged, so a reconnect with the client's cursor resumes with no loss
//! and no duplicate.
//!
//! Wakeups come from the store ([`crate::store::Store::subscribe`]): on SQLite after a
//! send commits, on PostgreSQL through `LISTEN/NOTIFY`, so a message stored through any
//! relay instance wakes the socket wherever it is connected; one wakeup names every device
//! of a committed batch (or of a notification). One dispatcher task per relay turns them
//! into a [`Notify`] per socket: an idle socket costs a table entry, a parked
//! task and small WebSocket buffers (set explicitly), never a
//! broadcast receiver of its own. A wakeup that arrives while a socket is busy is kept
//! (a `Notify` permit), so none is lost between a fetch and the next wait.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use dm_wire::DeviceId;
use dm_wire::api::limits::{MAX_CLIENT_FRAME_BYTES, MAX_PUSH_BATCH, PUSH_PING_SECS};
use dm_wire::api::{ClientFrame, Envelope, ErrorCode, ErrorDetail, PushQuery, ServerFrame};
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

use crate::auth::{Authenticated, bearer_hash};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::store::{Store, Wakeup};
use crate::{AppState, WebSocketSlot};

/// Envelope payload bytes per frame (a frame holds at least one envelope, whatever its
/// size): keeps the socket's write buffer, which keeps its capacity, small.
const FRAME_PAYLOAD_BUDGET: usize = 64 * 1024;
/// A frame the client does not take within this long closes the socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// How often an open socket checks that its session is still valid.
const SESSION_CHECK: Duration = Duration::from_secs(300);
/// Close code: the session expired or was revoked (log in again, then reconnect).
const CLOSE_SESSION: u16 = 4001;
/// Close code: the relay failed (reconnect later, or fetch).
const CLOSE_ERROR: u16 = 1011;
/// Close code: the relay is shutting down.
const CLOSE_GOING_AWAY: u16 = 1001;
/// Frames a client may send per second beyond acks that acknowledge something new (pings,
/// pongs, repeated acks); beyond, the socket is closed. Acks that advance are not counted:
/// there can be no more of them than envelope frames the relay sent, and a busy client
/// acknowledges each one.
const MAX_CLIENT_FRAMES_PER_SEC: u32 = 20;
/// Sockets one device may have open at once.
pub const MAX_SOCKETS_PER_DEVICE: usize = 4;
/// Close code: the client sent something that is not a client frame.
const CLOSE_POLICY: u16 = 1008;

/// Bytes of a socket's read buffer (tungstenite's default is 128 KiB): a client frame is
/// at most this big.
const READ_BUFFER_BYTES: usize = MAX_CLIENT_FRAME_BYTES;

/// One open socket of a device: its id and its wakeup.
type SocketEntry = (u64, Arc<Notify>);

/// The relay's open push sockets, by device.
pub struct Push {
    sockets: Mutex<HashMap<DeviceId, Vec<SocketEntry>>>,
    next_id: AtomicU64,
    open: AtomicUsize,
    dispatcher: OnceLock<()>,
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push")
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

impl Default for Push {
    fn default() -> Self {
        Self::new()
    }
}

impl Push {
    /// No sockets yet.
    pub fn new() -> Self {
        Self {
            sockets: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            dispatcher: OnceLock::new(),
        }
    }

    /// Sockets open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Waits until every socket has closed, at most `grace`.
    pub async fn closed(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.open() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sockets `device` has open.
    pub fn sockets_of(&self, device: &DeviceId) -> usize {
        let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        sockets.get(device).map_or(0, Vec::len)
    }

    /// Wakes every socket of each device of a [`Wakeup::Mailboxes`] batch, taking the
    /// socket table's lock once for the batch.
    fn wake_devices(&self, devices: &[(DeviceId, u64)]) {
        let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        for (device, _) in devices {
            if let Some(list) = sockets.get(device) {
                for (_, notify) in list {
                    notify.notify_one();
                }
            }
        }
    }

    /// Wakes every socket (signals may have been lost).
    pub fn wake_all(&self) {
        let sockets = self.sockets.lock().unwrap_or_else(|p| p.into_inner());
        for list in sockets.values() {
            for (_, notify) in list {
                notify.notify_one();
            }
        }
    }

    /// Starts the task that turns the store's wakeups into socket wakeups (once).
    fn ensure_dispatcher(self: &Arc<Self>, store: &Arc<dyn Store>) {
        self.dispatcher.get_or_init(|| {
            let mut wakeups = store.subscribe();
            let push = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    let wakeup = wakeups.recv().await;
                    let Some(push) = push.upgrade() else { return };
                    match wakeup {
                        Ok(Wakeup::Mailboxes(devices)) => push.wake_devices(&devices),
                        Ok(Wakeup::Resync) => push.wake_all(),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::debug!(missed, "push dispatcher lagged; waking every socket");
                            push.wake_all();
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        });
    }

    fn register(self: &Arc<Self>, device: DeviceId) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.sockets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(device)
            .or_default()
            .push((id, Arc::clone(&notify)));
        self.open.fetch_add(1, Ordering::Relaxed);
        Registration {
            push: Arc::clone(self),
            device,
            id,
            notify,
        }
    }
}

/// A socket's entry in [`Push`]; removed when dropped.
struct Registration {
    push: Arc<Push>,
    device: DeviceId,
    id: u64,
    notify: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut sockets = self.push.sockets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = sockets.get_mut(&self.device) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                sockets.remove(&self.device);
            }
        }
        self.push.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /v1/ws?after=SEQ`: upgrades to the device's push socket.
pub async fn socket(
    State(state): State<AppState>,
    auth: Authenticated,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<PushQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the relay is shutting down; reconnect to another instance or later",
        ));
    }
    if state.push().sockets_of(&auth.device_id) >= MAX_SOCKETS_PER_DEVICE {
        return Err(ApiError::rate_limited(
            format!("a device may have at most {MAX_SOCKETS_PER_DEVICE} push sockets open"),
            30,
        ));
    }
    let slot = state.try_websocket().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "too many open push sockets; fetch the mailbox instead",
        )
    })?;
    let token_hash = bearer_hash(&headers).ok_or_else(ApiError::unauthenticated)?;
    state.push().ensure_dispatcher(state.store_arc());
    Ok(upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(MAX_CLIENT_FRAME_BYTES)
        .max_frame_size(MAX_CLIENT_FRAME_BYTES)
        .on_upgrade(move |ws| async move {
            let conn = Connection {
                state,
                device: auth.device_id,
                token_hash,
                sent_up_to: query.after,
                acked_up_to: 0,
                ws,
                _slot: slot,
            };
            conn.run().await;
        }))
}

/// Why a socket's loop ends.
enum Stop {
    /// The peer went away or the socket failed: nothing more to send.
    Gone,
    /// Close with this code and reason (after an optional error frame).
    Close(u16, &'static str, Option<ErrorDetail>),
}

struct Connection {
    state: AppState,
    device: DeviceId,
    token_hash: [u8; 32],
    /// The highest `seq` sent on this socket (or the client's cursor).
    sent_up_to: u64,
    /// The highest `seq` acknowledged on this socket.
    acked_up_to: u64,
    ws: WebSocket,
    _slot: WebSocketSlot,
}

impl Connection {
    async fn run(mut self) {
        let push = Arc::clone(self.state.push());
        let registration = push.register(self.device);
        let shutdown = self.state.shutting_down();
        let stop = self.serve(&registration, shutdown).await;
        // The registration stays until the close frame is out: shutdown waits for it.
        if let Stop::Close(code, reason, error) = stop {
            if let Some(error) = error {
                let _ = self.send_frame(&ServerFrame::Error { error }).await;
            }
            let close = Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }));
            let _ = tokio::time::timeout(SEND_TIMEOUT, self.ws.send(close)).await;
        }
        drop(registration);
    }

    async fn serve(
        &mut self,
        registration: &Registration,
        shutdown: impl Future<Output = ()>,
    ) -> Stop {
        let mut shutdown = std::pin::pin!(shutdown);
        let ping_every = Duration::from_secs(PUSH_PING_SECS);
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        let mut session_checked = Instant::now();
        // Fetch only when something may have arrived: at the start, on a wakeup, and on
        // each ping tick (a safety net for a lost wakeup); never per client frame.
        let mut dirty = true;
        let mut window = (Instant::now(), 0u32);
        loop {
            if dirty {
                dirty = false;
                if let Err(stop) = self.push_pending().await {
                    return stop;
                }
            }
            tokio::select! {
                () = registration.notify.notified() => dirty = true,
                message = self.ws.recv() => {
                    last_heard = Instant::now();
                    let counted = match message {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Stop::Gone,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => true,
                        Some(Ok(Message::Text(text))) => {
                            match self.client_frame(text.as_str()).await {
                                Ok(advanced) => !advanced,
                                Err(stop) => return stop,
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            return Stop::Close(
                                CLOSE_POLICY,
                                "binary frames are not part of the protocol",
                                None,
                            );
                        }
                    };
                    if counted {
                        if window.0.elapsed() >= Duration::from_secs(1) {
                            window = (Instant::now(), 0);
                        }
                        window.1 += 1;
                        if window.1 > MAX_CLIENT_FRAMES_PER_SEC {
                            return Stop::Close(CLOSE_POLICY, "too many frames", None);
                        }
                    }
                }
                _ = ping.tick() => {
                    dirty = true;
                    if last_heard.elapsed() >= ping_every * 3 {
                        return Stop::Close(CLOSE_POLICY, "no answer to pings", None);
                    }
                    if session_checked.elapsed() >= SESSION_CHECK {
                        session_checked = Instant::now();
                        if let Err(stop) = self.check_session().await {
                            return stop;
                        }
                    }
                    if self.send(Message::Ping(Default::default())).await.is_err() {
                        return Stop::Gone;
                    }
                }
                () = &mut shutdown => {
                    return Stop::Close(CLOSE_GOING_AWAY, "relay shutting down", None);
                }
            }
        }
    }

    /// Sends every stored envelope after `sent_up_to`.
    async fn push_pending(&mut self) -> Result<(), Stop> {
        loop {
            let page = self
                .state
                .store()
                .fetch(self.device, self.sent_up_to, MAX_PUSH_BATCH)
                .await
                .map_err(|err| store_failure(&err))?;
            let (envelopes, more, dropped) = (page.envelopes, page.more, page.dropped);
            let Some(last) = envelopes.last() else {
                return Ok(());
            };
            let last_seq = last.seq;
            let mut batch: Vec<Envelope> = Vec::new();
            let mut bytes = 0usize;
            for e in envelopes {
                if !batch.is_empty() && bytes + e.payload.len() > FRAME_PAYLOAD_BUDGET {
                    self.send_envelopes(std::mem::take(&mut batch), dropped)
                        .await?;
                    bytes = 0;
                }
                bytes += e.payload.len();
                batch.push(Envelope {
                    seq: e.seq,
                    payload: e.payload,
                    received_at: e.received_at,
                });
            }
            self.send_envelopes(batch, dropped).await?;
            self.sent_up_to = last_seq;
            if !more {
                return Ok(());
            }
        }
    }

    async fn send_envelopes(&mut self, envelopes: Vec<Envelope>, dropped: u64) -> Result<(), Stop> {
        let count = envelopes.len() as u64;
        self.send_frame(&ServerFrame::Envelopes { envelopes, dropped })
            .await
            .map_err(|()| Stop::Gone)?;
        self.state.metrics().envelopes_delivered(count);
        Ok(())
    }

    /// Handles a text frame; `Ok(true)` when it acknowledged envelopes not acknowledged
    /// before.
    async fn client_frame(&mut self, text: &str) -> Result<bool, Stop> {
        let Ok(frame) = serde_json::from_str::<ClientFrame>(text) else {
            return Err(Stop::Close(
                CLOSE_POLICY,
                "not a client frame",
                Some(ErrorDetail {
                    device_list: None,
                    code: ErrorCode::InvalidRequest,
                    message: "the frame is not a JSON client frame".to_owned(),
                    epoch: None,
                }),
            ));
        };
        match frame {
            ClientFrame::Ack { up_to } => {
                // Never beyond what this socket sent (or the client's own cursor), and
                // never the same work twice.
                let up_to = up_to.min(self.sent_up_to);
                let advanced = up_to > self.acked_up_to;
                if advanced {
                    self.state
                        .store()
                        .ack(self.device, up_to)
                        .await
                        .map_err(|err| store_failure(&err))?;
                    self.acked_up_to = up_to;
                }
                self.send_frame(&ServerFrame::Acked { up_to })
                    .await
                    .map_err(|()| Stop::Gone)?;
                Ok(advanced)
            }
        }
    }

    async fn check_session(&mut self) -> Result<(), Stop> {
        let now = self.state.now_secs();
        match self.state.store().session(self.token_hash, now).await {
            Ok(Some(device)) if device.device_id == self.device => Ok(()),
            Ok(_) => Err(Stop::Close(
                CLOSE_SESSION,
                "session expired",
                Some(ErrorDetail {
                    device_list: None,
                    code: ErrorCode::Unauthenticated,
                    message: "the session expired or was revoked; log in again".to_owned(),
                    epoch: None,
                }),
            )),
            Err(err) => Err(store_failure(&err)),
        }
    }

    async fn send_frame(&mut self, frame: &ServerFrame) -> Result<(), ()> {
        let text = serde_json::to_string(frame).map_err(|_| ())?;
        self.send(Message::Text(text.into())).await
    }

    async fn send(&mut self, message: Message) -> Result<(), ()> {
        match tokio::time::timeout(SEND_TIMEOUT, self.ws.send(message)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }
}

fn store_failure(err: &crate::store::StoreError) -> Stop {
    tracing::error!(error = %err, "push socket: store failed");
    Stop::Close(
        CLOSE_ERROR,
        "relay error",
        Some(ErrorDetail {
            device_list: None,
            code: ErrorCode::Internal,
            message: "internal error".to_owned(),
            epoch: None,
        }),
    )
}
