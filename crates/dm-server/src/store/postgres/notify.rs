//! Cross-instance wakeups: `pg_notify` payloads and the `LISTEN` task.

use std::time::Duration;

use dm_wire::DeviceId;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::broadcast;

use crate::store::Wakeup;

/// The notification channel of stored envelopes.
pub const CHANNEL: &str = "dm_mailbox";
/// PostgreSQL refuses notification payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7999;
/// Longest pause between attempts to re-establish the listener.
const MAX_LISTEN_BACKOFF: Duration = Duration::from_secs(5);

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
