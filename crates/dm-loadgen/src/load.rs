//! Traffic: accounts on the relay, senders posting envelopes over HTTP, recipients
//! receiving them over the push WebSocket, and the measurements of each phase.
//!
//! **Payloads.** Each sender holds a real two-member MLS conversation (made by e2ee-core,
//! as a client would) with one recipient and encrypts one 1 KiB text in it. Every send
//! posts those bytes under a fresh message id with a *stamp* (a counter) written over the
//! last 8 bytes, which belong to the ciphertext's AEAD tag. The relay cannot tell: it never
//! decrypts, and what it parses (the PrivateMessage's cleartext header, its length) is
//! exactly that of a real message. The recipient reads the stamp back from the envelope to
//! match it with its send; no recipient decrypts anything.
//!
//! **Time.** Latencies are measured from the *intended* send time: in a closed loop that
//! is when the request is started, in an open loop the slot the schedule gave it, so a
//! stall (of the relay or of the generator) shows up in the latency instead of silently
//! delaying later sends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use dm_wire::MessageId;
use dm_wire::api::{ClientFrame, SendRequest, ServerFrame};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use crate::raw::RawDevice;

/// The text every message carries: 1 KiB.
pub const TEXT_BYTES: usize = 1024;
/// Bytes at the end of a payload that carry the stamp.
const STAMP_BYTES: usize = 8;
/// Highest latency the histograms hold (longer ones are clamped to it): 60 s in µs.
const MAX_LATENCY_US: u64 = 60_000_000;
/// Devices registered at once while populating.
const SETUP_CONCURRENCY: usize = 16;

/// Nanoseconds since the generator's clock origin.
#[derive(Clone, Copy, Debug)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn start() -> Clock {
        Clock(Instant::now())
    }

    /// Nanoseconds since the origin (never 0, which marks "not sent").
    pub fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The instant `ns` after the origin.
    pub fn instant(&self, ns: u64) -> Instant {
        self.0 + Duration::from_nanos(ns)
    }
}

/// A latency histogram in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant, valid bounds")
}

fn record(hist: &mut Histogram<u64>, ns: u64) {
    let us = (ns / 1000).clamp(1, MAX_LATENCY_US);
    hist.saturating_record(us);
}

/// A sender: its session token and the message its stamped copies are made of.
#[derive(Clone)]
pub struct Sender {
    token: String,
    template: Arc<Vec<u8>>,
}

/// A recipient: its session token, for the push socket.
#[derive(Clone)]
pub struct Recipient {
    token: String,
}

/// The accounts of a run: `senders[i]` talks to `recipients[i % recipients.len()]`.
pub struct Population {
    /// The relay.
    pub base: String,
    /// The senders.
    pub senders: Vec<Sender>,
    /// The recipients.
    pub recipients: Vec<Recipient>,
    /// Size of one posted MLS message in bytes.
    pub message_bytes: usize,
    http: reqwest::Client,
}

/// An HTTP client for many concurrent requests to one relay.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()
        .context("cannot build the HTTP client")
}

/// Registers `recipients` recipients and `senders` senders, each sender with a
/// conversation with one recipient, and encrypts each sender's 1 KiB message.
pub async fn populate(
    base: &str,
    senders: usize,
    recipients: usize,
    run: u32,
) -> anyhow::Result<Population> {
    if senders == 0 || recipients == 0 {
        bail!("at least one sender and one recipient are needed");
    }
    let http = http_client()?;
    let per_recipient = senders.div_ceil(recipients);
    let registered = register_many(base, &http, "r", run, recipients, per_recipient).await?;
    let mut recipient_devices = Vec::with_capacity(recipients);
    let mut handles = Vec::with_capacity(recipients);
    for device in registered {
        handles.push(device.handle.clone());
        recipient_devices.push(Recipient {
            token: device
                .token()
                .context("recipient not logged in")?
                .to_owned(),
        });
    }
    let text = "x".repeat(TEXT_BYTES);
    let sender_devices = register_many(base, &http, "s", run, senders, 1).await?;
    let mut out = Vec::with_capacity(senders);
    let mut message_bytes = 0;
    for (i, mut device) in sender_devices.into_iter().enumerate() {
        let peer = &handles[i % recipients];
        let mut conversation = device
            .start_conversation(peer)
            .await
            .with_context(|| format!("sender {i} cannot start its conversation"))?;
        let request = device
            .message(&mut conversation, &text)
            .context("cannot encrypt the message")?;
        if request.message.len() < STAMP_BYTES + 64 {
            bail!("the encrypted message is implausibly short");
        }
        message_bytes = request.message.len();
        out.push(Sender {
            token: device.token().context("sender not logged in")?.to_owned(),
            template: Arc::new(request.message),
        });
    }
    Ok(Population {
        base: base.to_owned(),
        senders: out,
        recipients: recipient_devices,
        message_bytes,
        http,
    })
}

/// Registers `count` accounts named `{prefix}{run}x{i}`, each with one device that holds
/// `key_packages` one-time key packages and is logged in.
pub async fn register_many(
    base: &str,
    http: &reqwest::Client,
    prefix: &str,
    run: u32,
    count: usize,
    key_packages: usize,
) -> anyhow::Result<Vec<RawDevice>> {
    let mut devices: Vec<(usize, RawDevice)> = futures_util::stream::iter(0..count)
        .map(|i| {
            let http = http.clone();
            async move {
                let mut device = RawDevice::with_client(&format!("{prefix}{run}x{i}"), base, http)?;
                device.register(key_packages).await?;
                anyhow::Ok((i, device))
            }
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .context("cannot register the load generator's accounts")?;
    devices.sort_by_key(|(i, _)| *i);
    Ok(devices.into_iter().map(|(_, d)| d).collect())
}

/// Writes `stamp` over the last bytes of a copy of `template`.
pub fn stamped(template: &[u8], stamp: u64) -> Vec<u8> {
    let mut bytes = template.to_vec();
    let at = bytes.len().saturating_sub(STAMP_BYTES);
    let n = bytes.len() - at;
    bytes[at..].copy_from_slice(&stamp.to_le_bytes()[..n]);
    bytes
}

/// The stamp of a payload made by [`stamped`].
pub fn stamp_of(payload: &[u8]) -> Option<u64> {
    let at = payload.len().checked_sub(STAMP_BYTES)?;
    let bytes: [u8; STAMP_BYTES] = payload[at..].try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// One measured phase: the intended send time of each stamp and what arrived.
pub struct Phase {
    first_stamp: u64,
    intended: Vec<AtomicU64>,
    next: AtomicU64,
    delivered: AtomicU64,
    delivery: Mutex<Histogram<u64>>,
    ack: Mutex<Histogram<u64>>,
    lag: Mutex<Histogram<u64>>,
    acked: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Phase {
    fn new(first_stamp: u64, capacity: usize) -> Phase {
        Phase {
            first_stamp,
            intended: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            delivery: Mutex::new(histogram()),
            ack: Mutex::new(histogram()),
            lag: Mutex::new(histogram()),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
        }
    }

    /// Envelopes of this phase received by recipients.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Sends the relay acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Sends that failed.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// The first failure, if any.
    pub fn first_error(&self) -> Option<String> {
        self.first_error.lock().ok().and_then(|e| e.clone())
    }

    /// Latency from intended send to the relay's answer (µs).
    pub fn ack_latency(&self) -> Histogram<u64> {
        self.ack
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| histogram())
    }

    /// Latency from intended send to the recipient's socket (µs).
    pub fn delivery_latency(&self) -> Histogram<u64> {
        self.delivery
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| histogram())
    }

    /// How late the generator started sends after their intended time (µs).
    pub fn generator_lag(&self) -> Histogram<u64> {
        self.lag
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| histogram())
    }

    fn claim(&self) -> Option<u64> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        (index < self.intended.len() as u64).then_some(index)
    }

    fn deliver(&self, stamp: u64, now: u64) -> bool {
        let Some(index) = stamp.checked_sub(self.first_stamp) else {
            return false;
        };
        let Some(slot) = usize::try_from(index)
            .ok()
            .and_then(|i| self.intended.get(i))
        else {
            return false;
        };
        let intended = slot.load(Ordering::Relaxed);
        if intended == 0 {
            return false;
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut hist) = self.delivery.lock() {
            record(&mut hist, now.saturating_sub(intended));
        }
        true
    }

    fn fail(&self, error: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_error.lock()
            && first.is_none()
        {
            *first = Some(error);
        }
    }
}

/// The traffic of a run: phases one after another, recipients on push sockets.
pub struct Traffic {
    population: Arc<Population>,
    clock: Clock,
    phase: Arc<RwLock<Option<Arc<Phase>>>>,
    next_stamp: u64,
    receivers: Vec<JoinHandle<()>>,
    stale: Arc<AtomicU64>,
}

impl Traffic {
    /// Traffic over `population`; recipients are offline until [`Traffic::connect`].
    pub fn new(population: Population, clock: Clock) -> Traffic {
        Traffic {
            population: Arc::new(population),
            clock,
            phase: Arc::new(RwLock::new(None)),
            next_stamp: 1,
            receivers: Vec::new(),
            stale: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The population.
    pub fn population(&self) -> &Population {
        &self.population
    }

    /// Envelopes received that belonged to no current phase (late ones of an earlier
    /// phase, or pushed again after a reconnect).
    pub fn stale(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }

    /// Opens every recipient's push socket (each acknowledges what it receives). Returns
    /// once all are open.
    pub async fn connect(&mut self) -> anyhow::Result<()> {
        let mut sockets = Vec::new();
        for recipient in &self.population.recipients {
            sockets.push(open_socket(&self.population.base, &recipient.token).await?);
        }
        for socket in sockets {
            let phase = Arc::clone(&self.phase);
            let stale = Arc::clone(&self.stale);
            let clock = self.clock;
            self.receivers.push(tokio::spawn(async move {
                if let Err(err) = receive(socket, clock, phase, stale).await {
                    eprintln!("warning: a recipient's push socket failed: {err:#}");
                }
            }));
        }
        Ok(())
    }

    /// Closes every recipient's push socket.
    pub async fn disconnect(&mut self) {
        for receiver in self.receivers.drain(..) {
            receiver.abort();
            let _ = receiver.await;
        }
    }

    fn begin(&mut self, capacity: usize) -> Arc<Phase> {
        let phase = Arc::new(Phase::new(self.next_stamp, capacity));
        self.next_stamp += capacity as u64;
        if let Ok(mut current) = self.phase.write() {
            *current = Some(Arc::clone(&phase));
        }
        phase
    }

    /// Closed loop: `concurrency` workers each send, wait for the answer and send again,
    /// for `duration` or `max_sends` sends, whichever ends first. Returns the phase and
    /// the time the sends took.
    pub async fn closed_loop(
        &mut self,
        concurrency: usize,
        duration: Duration,
        max_sends: usize,
    ) -> (Arc<Phase>, Duration) {
        let phase = self.begin(max_sends);
        let start = Instant::now();
        let deadline = start + duration;
        let mut workers = Vec::with_capacity(concurrency);
        for worker in 0..concurrency {
            let population = Arc::clone(&self.population);
            let phase = Arc::clone(&phase);
            let clock = self.clock;
            workers.push(tokio::spawn(async move {
                let sender = &population.senders[worker % population.senders.len()];
                while Instant::now() < deadline {
                    let Some(index) = phase.claim() else { break };
                    let now = clock.now();
                    phase.intended[index as usize].store(now, Ordering::Relaxed);
                    send(
                        &population,
                        sender,
                        &phase,
                        phase.first_stamp + index,
                        now,
                        clock,
                    )
                    .await;
                }
            }));
        }
        for worker in workers {
            let _ = worker.await;
        }
        (phase, start.elapsed())
    }

    /// Open loop: `rate` sends per second for `duration`, each started at its scheduled
    /// time whether or not earlier ones were answered (at most `max_in_flight` at once:
    /// beyond, sends wait, and that wait counts in their latency).
    pub async fn open_loop(
        &mut self,
        rate: f64,
        duration: Duration,
        max_in_flight: usize,
    ) -> Arc<Phase> {
        let count = (rate * duration.as_secs_f64()).round().max(1.0) as usize;
        let phase = self.begin(count);
        let interval_ns = 1e9 / rate;
        let origin = self.clock.now();
        let permits = Arc::new(Semaphore::new(max_in_flight));
        let mut tasks = Vec::with_capacity(count);
        for index in 0..count {
            let intended = origin + (index as f64 * interval_ns) as u64;
            wait_until(self.clock, intended).await;
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            if phase.claim().is_none() {
                break;
            }
            phase.intended[index].store(intended, Ordering::Relaxed);
            if let Ok(mut lag) = phase.lag.lock() {
                record(&mut lag, self.clock.now().saturating_sub(intended));
            }
            let population = Arc::clone(&self.population);
            let phase = Arc::clone(&phase);
            let clock = self.clock;
            tasks.push(tokio::spawn(async move {
                let sender = &population.senders[index % population.senders.len()];
                let stamp = phase.first_stamp + index as u64;
                send(&population, sender, &phase, stamp, intended, clock).await;
                drop(permit);
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
        phase
    }

    /// Waits until every acknowledged send of `phase` was delivered, or `timeout`.
    /// Returns whether all were.
    pub async fn settle(&self, phase: &Phase, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while phase.delivered() < phase.acked() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

/// Sleeps until `intended` (ns on `clock`); the last millisecond is spent yielding, as
/// the timer only has millisecond resolution.
async fn wait_until(clock: Clock, intended: u64) {
    loop {
        let now = clock.now();
        if now >= intended {
            return;
        }
        let left = intended - now;
        if left > 1_500_000 {
            tokio::time::sleep_until(clock.instant(intended - 1_000_000).into()).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

async fn send(
    population: &Population,
    sender: &Sender,
    phase: &Phase,
    stamp: u64,
    intended: u64,
    clock: Clock,
) {
    let request = SendRequest {
        id: MessageId(rand::random()),
        message: stamped(&sender.template, stamp),
        welcome: None,
        removed_devices: Vec::new(),
    };
    let result = async {
        let body = serde_json::to_vec(&request)?;
        let response = population
            .http
            .post(format!("{}/v1/messages", population.base))
            .bearer_auth(&sender.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let text = response.bytes().await?;
        if !status.is_success() {
            bail!(
                "the relay answered {status}: {}",
                String::from_utf8_lossy(&text)
            );
        }
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            phase.acked.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut ack) = phase.ack.lock() {
                record(&mut ack, clock.now().saturating_sub(intended));
            }
        }
        Err(err) => phase.fail(format!("{err:#}")),
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a push socket for the device with session `token` (from the start of its
/// mailbox).
pub async fn open_socket(base: &str, token: &str) -> anyhow::Result<Socket> {
    let rest = base
        .strip_prefix("http://")
        .context("the relay URL must be http://")?;
    let mut request = format!("ws://{rest}/v1/ws?after=0").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(request),
    )
    .await
    .context("the push socket did not open within 30 s")?
    .context("cannot open a push socket")?;
    Ok(socket)
}

async fn receive(
    mut socket: Socket,
    clock: Clock,
    phase: Arc<RwLock<Option<Arc<Phase>>>>,
    stale: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    while let Some(message) = socket.next().await {
        let text = match message? {
            Message::Text(text) => text,
            Message::Close(_) => return Ok(()),
            _ => continue,
        };
        let now = clock.now();
        match serde_json::from_str::<ServerFrame>(text.as_str())? {
            ServerFrame::Envelopes { envelopes, .. } => {
                let current = phase.read().ok().and_then(|p| p.clone());
                let mut last = 0;
                for envelope in &envelopes {
                    last = envelope.seq;
                    let counted = match (&current, stamp_of(&envelope.payload)) {
                        (Some(phase), Some(stamp)) => phase.deliver(stamp, now),
                        _ => false,
                    };
                    if !counted {
                        stale.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if last > 0 {
                    let ack = serde_json::to_string(&ClientFrame::Ack { up_to: last })?;
                    socket.send(Message::text(ack)).await?;
                }
            }
            ServerFrame::Acked { .. } => {}
            ServerFrame::Error { error } => bail!("the relay closed the socket: {error:?}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let template = vec![7u8; 100];
        let bytes = stamped(&template, 0x0102_0304_0506_0708);
        assert_eq!(bytes.len(), 100);
        assert_eq!(&bytes[..92], &template[..92]);
        assert_eq!(stamp_of(&bytes), Some(0x0102_0304_0506_0708));
        assert_eq!(stamp_of(&[1, 2, 3]), None);
    }

    #[test]
    fn a_phase_counts_only_its_own_sent_stamps() {
        let phase = Phase::new(10, 4);
        phase.intended[1].store(5, Ordering::Relaxed);
        assert!(phase.deliver(11, 1_000_005));
        assert!(!phase.deliver(10, 1), "not sent");
        assert!(!phase.deliver(9, 1), "before the phase");
        assert!(!phase.deliver(14, 1), "after the phase");
        assert_eq!(phase.delivered(), 1);
        assert_eq!(phase.delivery_latency().value_at_quantile(0.5), 1000);
    }
}
