//! Cross-instance wakeups: `pg_notify` payloads, the notifier task and the `LISTEN` task.
//!
//! A send does not notify inside its transaction: PostgreSQL serialises the commits of
//! every transaction that notified (a cluster-wide lock held through the commit's WAL
//! flush), which would leave concurrent sends no group commit. After its commit, a send
//! hands what it delivered to the store's notifier task ([`Notifier::notify`], never
//! waiting); the task sends whatever is queued in one statement of as few payloads as the
//! size limit allows, on a connection of its own.

use std::time::Duration;

use dm_wire::DeviceId;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{broadcast, mpsc};

use crate::store::Wakeup;

/// The notification channel of stored envelopes.
pub const CHANNEL: &str = "dm_mailbox";
/// PostgreSQL refuses notification payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7999;
/// Longest pause between attempts to re-establish the listener.
const MAX_LISTEN_BACKOFF: Duration = Duration::from_secs(5);
/// Committed sends waiting for the notifier before further ones skip the notification.
const NOTIFY_QUEUE: usize = 4096;
/// Most committed sends one notification statement covers.
const MAX_NOTIFY_BATCH: usize = 1024;

/// The sending side of the notifier task: what committed sends delivered.
#[derive(Debug)]
pub(super) struct Notifier {
    queue: mpsc::Sender<Vec<(DeviceId, u64)>>,
    wakeups: broadcast::Sender<Wakeup>,
}

impl Notifier {
    /// Starts the notifier task, which sends notifications through `pool` (whose
    /// connections should not wait for their commits' WAL flush: a notification is a hint,
    /// not data) until this `Notifier` is dropped and the queue is drained.
    pub(super) fn start(
        pool: PgPool,
        wakeups: broadcast::Sender<Wakeup>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (queue, queued) = mpsc::channel(NOTIFY_QUEUE);
        let task = tokio::spawn(notify_queued(pool, wakeups.clone(), queued));
        (Self { queue, wakeups }, task)
    }

    /// Queues the envelopes a committed send stored for notification; never waits. If the
    /// queue is full (the database is not keeping up with notifications), they are not
    /// notified: this instance's subscribers are woken directly, and other instances find
    /// the envelopes when their sockets next check.
    pub(super) fn notify(&self, delivered: Vec<(DeviceId, u64)>) {
        if delivered.is_empty() {
            return;
        }
        match self.queue.try_send(delivered) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(delivered)) => {
                tracing::warn!(
                    entries = delivered.len(),
                    "the notification queue is full; other relay instances will not be notified"
                );
                publish_locally(&self.wakeups, delivered);
            }
            // The task is gone only when it panicked: its failure is logged on close.
            Err(mpsc::error::TrySendError::Closed(delivered)) => {
                publish_locally(&self.wakeups, delivered);
            }
        }
    }
}

/// Wakes this instance's subscribers directly, for envelopes that were not notified (the
/// listener will not hear of them).
fn publish_locally(wakeups: &broadcast::Sender<Wakeup>, delivered: Vec<(DeviceId, u64)>) {
    if let Some(wakeup) = Wakeup::mailboxes(delivered) {
        let _ = wakeups.send(wakeup);
    }
}

/// The notifier task: takes every queued send (up to [`MAX_NOTIFY_BATCH`]) and notifies
/// them in one statement, until every sender is dropped and the queue is empty. A failed
/// statement is logged and its envelopes are published locally (nothing is retried: the
/// other instances' sockets find them at their next periodic check).
async fn notify_queued(
    pool: PgPool,
    wakeups: broadcast::Sender<Wakeup>,
    mut queue: mpsc::Receiver<Vec<(DeviceId, u64)>>,
) {
    let mut batch = Vec::with_capacity(MAX_NOTIFY_BATCH);
    while queue.recv_many(&mut batch, MAX_NOTIFY_BATCH).await > 0 {
        let sends = batch.len();
        let delivered: Vec<(DeviceId, u64)> = batch.drain(..).flatten().collect();
        // Per device, the highest sequence number stands for the earlier ones.
        let delivered = match Wakeup::mailboxes(delivered) {
            Some(Wakeup::Mailboxes(devices)) => devices,
            _ => continue,
        };
        let payloads = payloads(&delivered);
        let sent = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .bind(CHANNEL)
            .bind(payloads)
            .execute(&pool)
            .await;
        if let Err(err) = sent {
            tracing::warn!(
                error = %err,
                sends,
                devices = delivered.len(),
                "could not notify the relay instances of stored envelopes; other instances \
                 find them at their sockets' next check"
            );
            let _ = wakeups.send(Wakeup::Mailboxes(delivered));
        }
    }
}

pub(super) async fn start_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Publishes every notification on [`CHANNEL`] until the listen pool is closed; a lost
/// connection is re-established (with backoff) and announced as [`Wakeup::Resync`].
pub(super) async fn listen(
    mut listener: PgListener,
    pool: PgPool,
    wakeups: broadcast::Sender<Wakeup>,
) {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => publish(&wakeups, notification.payload()),
            // The connection was lost and is back (eager reconnect, channels re-listened):
            // whatever was notified meanwhile is lost.
            Ok(None) => {
                tracing::warn!("the notification listener reconnected");
                let _ = wakeups.send(Wakeup::Resync);
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "the notification listener failed; reconnecting");
                drop(listener);
                let mut backoff = Duration::from_millis(100);
                listener = loop {
                    if pool.is_closed() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    match start_listener(&pool).await {
                        Ok(listener) => break listener,
                        Err(sqlx::Error::PoolClosed) => return,
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot re-establish the listener");
                            backoff = (backoff * 2).min(MAX_LISTEN_BACKOFF);
                        }
                    }
                };
                let _ = wakeups.send(Wakeup::Resync);
            }
        }
    }
}

/// Publishes one wakeup for a whole notification payload; a payload that does not parse (which
/// only a writer other than the relay can produce) becomes a [`Wakeup::Resync`].
fn publish(wakeups: &broadcast::Sender<Wakeup>, payload: &str) {
    match parse_payload(payload) {
        Some(delivered) => {
            if let Some(wakeup) = Wakeup::mailboxes(delivered) {
                let _ = wakeups.send(wakeup);
            }
        }
        None => {
            tracing::warn!(
                bytes = payload.len(),
                "ignored a malformed notification payload"
            );
            let _ = wakeups.send(Wakeup::Resync);
        }
    }
}

/// Notification payloads for stored envelopes: `HEXDEVICE:SEQ` entries joined by `,`, as
/// few payloads as the size limit allows.
pub fn payloads(delivered: &[(DeviceId, u64)]) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut current = String::new();
    for (device, seq) in delivered {
        let entry = format!("{}:{seq}", device.to_hex());
        if !current.is_empty() && current.len() + 1 + entry.len() > MAX_PAYLOAD {
            payloads.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&entry);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

/// The entries of a payload built by [`payloads`]; `None` if any entry is malformed.
pub fn parse_payload(payload: &str) -> Option<Vec<(DeviceId, u64)>> {
    payload
        .split(',')
        .map(|entry| {
            let (device, seq) = entry.split_once(':')?;
            let bytes = hex::decode(device).ok()?;
            Some((DeviceId::from_slice(&bytes).ok()?, seq.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_respect_the_size_limit() {
        let delivered: Vec<(DeviceId, u64)> = (0..1000u64)
            .map(|i| (DeviceId(rand::random()), u64::MAX - i))
            .collect();
        let payloads = payloads(&delivered);
        assert!(payloads.len() > 1);
        let mut parsed = Vec::new();
        for payload in &payloads {
            assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
            parsed.extend(parse_payload(payload).expect("parses"));
        }
        assert_eq!(parsed, delivered);
        // Each payload but the last is full: one more entry would not have fitted.
        let entry = 32 + 1 + 20 + 1;
        for payload in &payloads[..payloads.len() - 1] {
            assert!(payload.len() + entry > MAX_PAYLOAD);
        }
        assert!(super::payloads(&[]).is_empty());
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let device = DeviceId([7; 16]).to_hex();
        assert_eq!(
            parse_payload(&format!("{device}:5")),
            Some(vec![(DeviceId([7; 16]), 5)])
        );
        for bad in [
            "",
            "zz:1",
            &device,
            &format!("{device}:"),
            &format!("{device}:-1"),
            &format!("{device}:1,"),
            &format!("{}:1", &device[..30]),
        ] {
            assert_eq!(parse_payload(bad), None, "{bad:?}");
        }
    }
}
