//! The PostgreSQL [`Store`]: any number of relay processes share one database and behave as
//! one relay.
//!
//! - **Ordering**: a send locks its group's row (`SELECT … FOR UPDATE`), so exactly one
//!   commit is accepted per (group, epoch) whichever instance receives it; two commits
//!   creating the same group collide on its primary key and the loser is retried.
//! - **Mailboxes**: a send allocates each recipient's next sequence number by updating the
//!   device row, in ascending device id order (no deadlock between two sends), and holds
//!   those row locks until it commits: per device, sequence numbers are unique and gap-free
//!   in commit order.
//! - **Idempotency**: a send first inserts its (device, message id) record; a concurrent
//!   retry through another instance waits on that row and then answers like the original.
//! - **Key packages**: a claim takes a transaction-scoped advisory lock on the requesting
//!   device (its hourly limit) and locks the target account's row (its hourly one-time
//!   limit); one-time packages are taken `FOR UPDATE SKIP LOCKED`.
//! - **Conflicts**: serialization failures, deadlocks and unique-key races roll the
//!   transaction back and run it again, a few times, before surfacing as an error.
//! - **Durability**: every session runs with `synchronous_commit = on`: a write is
//!   acknowledged only after its WAL is flushed. PostgreSQL flushes the WAL of concurrent
//!   commits together (group commit), so concurrent sends share fsyncs.
//! - **Notifications**: a send calls `pg_notify('dm_mailbox', …)` inside its transaction
//!   (delivered to listeners only if it commits); each store runs one `LISTEN` connection
//!   and publishes what it hears to [`Store::subscribe`] — its own sends included — and
//!   [`Wakeup::Resync`] whenever that connection was lost and re-established.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use dm_wire::api::KeyPackageStock;
use dm_wire::api::limits::MAX_KEY_PACKAGES_PER_DEVICE;
use dm_wire::{DeviceId, Handle};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::broadcast;

use super::convert::{device_id, handle, int, key32, retry_after, uint};
use super::{
    Account, Challenge, Claim, Device, MailboxPage, NewAccount, NewKeyPackage, OutgoingMessage,
    Registration, SendOutcome, Store, StoreError, StoreFuture, StoreOptions, StoreStats,
    StoredEnvelope, SweepStats, Wakeup, retention, sequence,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// The notification channel of stored envelopes.
pub const CHANNEL: &str = "dm_mailbox";
/// PostgreSQL refuses notification payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7999;
/// Connections in the pool of each relay process (the listener has one more).
const MAX_CONNECTIONS: u32 = 16;
/// How long an operation waits for a free connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a transaction that lost a conflict.
const MAX_ATTEMPTS: u32 = 6;
/// The first key of the advisory locks taken on requesting devices ("dm_c").
const CLAIM_LOCK_CLASS: i32 = 0x646d_5f63;
/// Longest pause between attempts to re-establish the listener.
const MAX_LISTEN_BACKOFF: Duration = Duration::from_secs(5);

/// The relay's state in a PostgreSQL database shared by every relay instance.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    /// One connection, for `LISTEN`.
    listen_pool: PgPool,
    options: StoreOptions,
    wakeups: broadcast::Sender<Wakeup>,
    listener_task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://…` or `postgresql://…`; the database
    /// must exist), applies pending migrations (instances starting together take turns:
    /// the migrator holds an advisory lock) and starts listening for other instances'
    /// envelopes.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url)?
            .application_name("dm-server")
            .options([("synchronous_commit", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(connect.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(connect)
            .await?;
        // Listening before `connect` returns: nothing committed afterwards is missed.
        let listener = start_listener(&listen_pool).await?;
        let (wakeups, _) = broadcast::channel(super::sqlite::WAKEUP_CAPACITY);
        let task = tokio::spawn(listen(listener, listen_pool.clone(), wakeups.clone()));
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                listen_pool,
                options,
                wakeups,
                listener_task: tokio::sync::Mutex::new(Some(task)),
            }),
        })
    }

    fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool().begin().await
    }
}

async fn start_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Publishes every notification on [`CHANNEL`] until the listen pool is closed; a lost
/// connection is re-established (with backoff) and announced as [`Wakeup::Resync`].
async fn listen(mut listener: PgListener, pool: PgPool, wakeups: broadcast::Sender<Wakeup>) {
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

/// Publishes the wakeups of one notification payload; a payload that does not parse (which
/// only a writer other than the relay can produce) becomes a [`Wakeup::Resync`].
fn publish(wakeups: &broadcast::Sender<Wakeup>, payload: &str) {
    match parse_payload(payload) {
        Some(delivered) => {
            for (device_id, seq) in delivered {
                let _ = wakeups.send(Wakeup::Mailbox { device_id, seq });
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

/// Whether a failed transaction lost a race and may succeed when run again: a
/// serialization failure, a deadlock, or a unique key another transaction inserted
/// meanwhile (every operation checks for existing rows first, so a rerun sees it and
/// answers accordingly).
fn retryable(err: &StoreError) -> bool {
    let StoreError::Database(sqlx::Error::Database(db)) = err else {
        return false;
    };
    matches!(db.code().as_deref(), Some("40001" | "40P01" | "23505"))
}

/// Runs a transaction, again after a short random pause when it lost a race.
async fn retrying<T, F, Fut>(operation: &'static str, mut run: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match run().await {
            Err(err) if attempt < MAX_ATTEMPTS && retryable(&err) => {
                tracing::debug!(operation, attempt, error = %err, "retrying after a conflict");
                let jitter = rand::random::<u64>() % 10 + 1;
                tokio::time::sleep(Duration::from_millis(jitter * u64::from(attempt))).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

async fn stock(
    conn: &mut PgConnection,
    device: &DeviceId,
    now: u64,
) -> Result<KeyPackageStock, StoreError> {
    let (one_time, last_resort): (i64, bool) = sqlx::query_as(
        "SELECT \
           (SELECT COUNT(*) FROM key_packages WHERE device_id = $1 AND NOT last_resort \
              AND claimed_at IS NULL AND not_after > $2), \
           EXISTS (SELECT 1 FROM key_packages WHERE device_id = $1 AND last_resort \
              AND retired_at IS NULL AND not_after > $2)",
    )
    .bind(device.as_bytes().as_slice())
    .bind(int(now))
    .fetch_one(&mut *conn)
    .await?;
    Ok(KeyPackageStock {
        one_time: u32::try_from(one_time).map_err(|_| StoreError::Corrupt("count"))?,
        last_resort,
    })
}

/// Appends a payload to a device's mailbox under its next sequence number (locking the
/// device row until commit), unless the mailbox holds `quota` envelopes: then counts it as
/// dropped. Returns the sequence number if stored.
async fn deliver(
    conn: &mut PgConnection,
    device: &[u8],
    payload: &[u8],
    now_ms: u64,
    quota: u32,
) -> Result<Option<u64>, StoreError> {
    let seq: Option<i64> = sqlx::query_scalar(
        "UPDATE devices SET mailbox_seq = mailbox_seq + 1, mailbox_count = mailbox_count + 1 \
         WHERE device_id = $1 AND mailbox_count < $2 RETURNING mailbox_seq",
    )
    .bind(device)
    .bind(i64::from(quota))
    .fetch_optional(&mut *conn)
    .await?;
    let Some(seq) = seq else {
        sqlx::query("UPDATE devices SET dropped = dropped + 1 WHERE device_id = $1")
            .bind(device)
            .execute(&mut *conn)
            .await?;
        return Ok(None);
    };
    sqlx::query(
        "INSERT INTO mailbox (device_id, seq, payload, received_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(device)
    .bind(seq)
    .bind(payload)
    .bind(int(now_ms))
    .execute(&mut *conn)
    .await?;
    Ok(Some(uint(seq, "seq")?))
}

/// The second key of the advisory lock on a requesting device's claims.
fn claim_lock_key(device: &DeviceId) -> i32 {
    let b = device.as_bytes();
    i32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl PostgresStore {
    async fn create_account_once(
        &self,
        account: &NewAccount,
        now: u64,
    ) -> Result<Registration, StoreError> {
        let mut tx = self.begin().await?;
        let existing: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT device_list FROM accounts WHERE handle = $1")
                .bind(account.handle.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(existing) = existing {
            // The very list registered before: a retry whose first answer was lost.
            return if existing == account.device_list {
                Ok(Registration::Repeated)
            } else {
                Err(StoreError::HandleTaken)
            };
        }
        let device_taken: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM devices WHERE device_id = $1")
                .bind(account.device_id.as_bytes().as_slice())
                .fetch_optional(&mut *tx)
                .await?;
        if device_taken.is_some() {
            return Err(StoreError::DeviceTaken);
        }
        // A concurrent registration of the same handle or device makes one of these fail
        // with a unique violation: the rerun then answers from the row it finds.
        sqlx::query(
            "INSERT INTO accounts (handle, account_key, device_list, sequence, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(account.handle.as_str())
        .bind(account.account_key.as_slice())
        .bind(account.device_list.as_slice())
        .bind(int(account.sequence))
        .bind(int(now))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO devices (device_id, handle, device_key, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(account.device_id.as_bytes().as_slice())
        .bind(account.handle.as_str())
        .bind(account.device_key.as_slice())
        .bind(int(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Registration::Created)
    }

    async fn add_key_packages_once(
        &self,
        device: &DeviceId,
        one_time: &[NewKeyPackage],
        last_resort: Option<&NewKeyPackage>,
        now: u64,
    ) -> Result<KeyPackageStock, StoreError> {
        let dev = device.as_bytes().as_slice();
        let mut tx = self.begin().await?;
        // Uploads of one device take turns, so the cap holds across instances.
        sqlx::query("SELECT 1 FROM devices WHERE device_id = $1 FOR NO KEY UPDATE")
            .bind(dev)
            .execute(&mut *tx)
            .await?;
        for kp in one_time {
            sqlx::query(
                "INSERT INTO key_packages \
                   (device_id, kp_ref, key_package, last_resort, not_after, uploaded_at) \
                 VALUES ($1, $2, $3, FALSE, $4, $5) ON CONFLICT (kp_ref) DO NOTHING",
            )
            .bind(dev)
            .bind(kp.kp_ref.as_slice())
            .bind(kp.key_package.as_slice())
            .bind(int(kp.not_after))
            .bind(int(now))
            .execute(&mut *tx)
            .await?;
        }
        if let Some(kp) = last_resort {
            sqlx::query(
                "UPDATE key_packages SET retired_at = $1 \
                 WHERE device_id = $2 AND last_resort AND retired_at IS NULL \
                   AND kp_ref <> $3",
            )
            .bind(int(now))
            .bind(dev)
            .bind(kp.kp_ref.as_slice())
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO key_packages \
                   (device_id, kp_ref, key_package, last_resort, not_after, uploaded_at) \
                 VALUES ($1, $2, $3, TRUE, $4, $5) \
                 ON CONFLICT (kp_ref) DO UPDATE SET retired_at = NULL \
                 WHERE key_packages.device_id = EXCLUDED.device_id \
                   AND key_packages.last_resort",
            )
            .bind(dev)
            .bind(kp.kp_ref.as_slice())
            .bind(kp.key_package.as_slice())
            .bind(int(kp.not_after))
            .bind(int(now))
            .execute(&mut *tx)
            .await?;
        }
        let stock = stock(&mut tx, device, now).await?;
        if stock.one_time > MAX_KEY_PACKAGES_PER_DEVICE {
            // Dropping the transaction rolls the whole upload back.
            return Err(StoreError::TooManyKeyPackages {
                max: MAX_KEY_PACKAGES_PER_DEVICE,
            });
        }
        tx.commit().await?;
        Ok(stock)
    }

    async fn claim_once(
        &self,
        target: &Handle,
        claimed_by: &DeviceId,
        now: u64,
    ) -> Result<Claim, StoreError> {
        let options = self.inner.options;
        let window_start = int(now.saturating_sub(retention::CLAIM_WINDOW_SECS));
        let claimer = claimed_by.as_bytes().as_slice();
        let mut tx = self.begin().await?;
        // Lock order: the requester's advisory lock, then the target account's row.
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(CLAIM_LOCK_CLASS)
            .bind(claim_lock_key(claimed_by))
            .execute(&mut *tx)
            .await?;
        let (claims, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(claimed_at) FROM key_package_claim_log \
             WHERE requester = $1 AND claimed_at > $2",
        )
        .bind(claimer)
        .bind(window_start)
        .fetch_one(&mut *tx)
        .await?;
        if claims >= i64::from(options.claims_per_requester_per_hour) {
            return Err(StoreError::RateLimited {
                retry_after_secs: retry_after(oldest, retention::CLAIM_WINDOW_SECS, now),
            });
        }
        let device_list: Vec<u8> =
            sqlx::query_scalar("SELECT device_list FROM accounts WHERE handle = $1 FOR UPDATE")
                .bind(target.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::UnknownHandle)?;
        let handed_out: i64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(one_time), 0)::BIGINT FROM key_package_claim_log \
             WHERE target = $1 AND claimed_at > $2",
        )
        .bind(target.as_str())
        .bind(window_start)
        .fetch_one(&mut *tx)
        .await?;
        let mut budget =
            i64::from(options.one_time_claims_per_target_per_hour).saturating_sub(handed_out);
        let devices: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT device_id FROM devices WHERE handle = $1 AND device_id <> $2 \
             ORDER BY created_at, device_id",
        )
        .bind(target.as_str())
        .bind(claimer)
        .fetch_all(&mut *tx)
        .await?;
        let mut key_packages = Vec::with_capacity(devices.len());
        let mut one_time_claimed: i64 = 0;
        for dev in devices {
            let one_time: Option<(i64, Vec<u8>, Vec<u8>)> = if budget > 0 {
                sqlx::query_as(
                    "SELECT id, kp_ref, key_package FROM key_packages \
                     WHERE device_id = $1 AND NOT last_resort AND claimed_at IS NULL \
                       AND not_after > $2 \
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                )
                .bind(dev.as_slice())
                .bind(int(now))
                .fetch_optional(&mut *tx)
                .await?
            } else {
                None
            };
            let (chosen, last_resort) = match one_time {
                Some(row) => {
                    budget -= 1;
                    one_time_claimed += 1;
                    (Some(row), false)
                }
                None => {
                    let row = sqlx::query_as(
                        "SELECT id, kp_ref, key_package FROM key_packages \
                         WHERE device_id = $1 AND last_resort AND retired_at IS NULL \
                           AND not_after > $2 \
                         ORDER BY id DESC LIMIT 1",
                    )
                    .bind(dev.as_slice())
                    .bind(int(now))
                    .fetch_optional(&mut *tx)
                    .await?;
                    (row, true)
                }
            };
            let Some((id, kp_ref, key_package)) = chosen else {
                continue;
            };
            // As on SQLite: a one-time package is consumed and names its only claimer; a
            // last-resort one stays offered and every claimer is recorded.
            sqlx::query("UPDATE key_packages SET claimed_at = $1, claimed_by = $2 WHERE id = $3")
                .bind(int(now))
                .bind(claimer)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if last_resort {
                sqlx::query(
                    "INSERT INTO key_package_claims (kp_ref, claimed_by, claimed_at) \
                     VALUES ($1, $2, $3) \
                     ON CONFLICT (kp_ref, claimed_by) \
                       DO UPDATE SET claimed_at = EXCLUDED.claimed_at",
                )
                .bind(kp_ref.as_slice())
                .bind(claimer)
                .bind(int(now))
                .execute(&mut *tx)
                .await?;
            }
            key_packages.push((device_id(&dev)?, key_package));
        }
        sqlx::query(
            "INSERT INTO key_package_claim_log (requester, target, one_time, claimed_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(claimer)
        .bind(target.as_str())
        .bind(one_time_claimed)
        .bind(int(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Claim {
            device_list,
            key_packages,
        })
    }

    async fn send_once(
        &self,
        msg: &OutgoingMessage,
        now_ms: u64,
    ) -> Result<SendOutcome, StoreError> {
        let sender = msg.sender.as_bytes().as_slice();
        let group = msg.group_id.as_slice();
        let quota = self.inner.options.mailbox_quota;
        let mut tx = self.begin().await?;

        // Claim the idempotency record first: a concurrent retry of the same message (via
        // any instance) waits here until this transaction ends, then finds the record.
        let claimed = sqlx::query(
            "INSERT INTO sent_messages \
               (sender_device, message_id, message_hash, epoch, sent_at) \
             VALUES ($1, $2, $3, -1, $4) ON CONFLICT DO NOTHING",
        )
        .bind(sender)
        .bind(msg.id.as_bytes().as_slice())
        .bind(msg.message_hash.as_slice())
        .bind(int(now_ms / 1000))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            let (hash, epoch): (Vec<u8>, i64) = sqlx::query_as(
                "SELECT message_hash, epoch FROM sent_messages \
                 WHERE sender_device = $1 AND message_id = $2",
            )
            .bind(sender)
            .bind(msg.id.as_bytes().as_slice())
            .fetch_one(&mut *tx)
            .await?;
            return if hash == msg.message_hash {
                Ok(SendOutcome {
                    epoch: uint(epoch, "epoch")?,
                    duplicate: true,
                    delivered: Vec::new(),
                })
            } else {
                Err(StoreError::IdReused)
            };
        }

        // The group row's lock orders every message of the group across instances.
        let current: Option<i64> =
            sqlx::query_scalar("SELECT epoch FROM groups WHERE group_id = $1 FOR UPDATE")
                .bind(group)
                .fetch_optional(&mut *tx)
                .await?;
        let current = current.map(|e| uint(e, "epoch")).transpose()?;
        let is_member: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM group_members WHERE group_id = $1 AND device_id = $2",
        )
        .bind(group)
        .bind(sender)
        .fetch_optional(&mut *tx)
        .await?;
        let sequenced = sequence(current, is_member.is_some(), msg.kind, msg.epoch)?;
        let new_epoch =
            i64::try_from(sequenced.new_epoch).map_err(|_| StoreError::EpochConflict {
                current: current.unwrap_or_default(),
            })?;

        // A Welcome goes only to devices whose key package the sender itself claimed.
        let mut welcomed: Vec<Vec<u8>> = Vec::new();
        if let Some(welcome) = &msg.welcome {
            for kp_ref in &welcome.kp_refs {
                let dev: Vec<u8> = sqlx::query_scalar(
                    "SELECT kp.device_id FROM key_packages kp WHERE kp.kp_ref = $1 AND ( \
                       (NOT kp.last_resort AND kp.claimed_by = $2) \
                       OR (kp.last_resort AND EXISTS ( \
                         SELECT 1 FROM key_package_claims c \
                         WHERE c.kp_ref = kp.kp_ref AND c.claimed_by = $2)))",
                )
                .bind(kp_ref.as_slice())
                .bind(sender)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::UnclaimedKeyPackageRef)?;
                if !welcomed.contains(&dev) {
                    welcomed.push(dev);
                }
            }
        }

        for dev in &msg.removed_devices {
            if *dev == msg.sender {
                return Err(StoreError::InvalidRemoval(
                    "removed_devices must not name the sending device",
                ));
            }
            let on_list: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM group_members WHERE group_id = $1 AND device_id = $2",
            )
            .bind(group)
            .bind(dev.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await?;
            if on_list.is_none() {
                return Err(StoreError::InvalidRemoval(
                    "every device in removed_devices must be on the group's delivery list",
                ));
            }
        }

        if sequenced.creates_group {
            // Two creations of one group id race here: the loser's insert fails with a
            // unique violation and its rerun finds the group.
            sqlx::query("INSERT INTO groups (group_id, epoch, created_at) VALUES ($1, $2, $3)")
                .bind(group)
                .bind(new_epoch)
                .bind(int(now_ms / 1000))
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO group_members (group_id, device_id) VALUES ($1, $2)")
                .bind(group)
                .bind(sender)
                .execute(&mut *tx)
                .await?;
        } else if Some(sequenced.new_epoch) != current {
            sqlx::query("UPDATE groups SET epoch = $1 WHERE group_id = $2")
                .bind(new_epoch)
                .bind(group)
                .execute(&mut *tx)
                .await?;
        }

        let recipients: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT device_id FROM group_members WHERE group_id = $1 AND device_id <> $2",
        )
        .bind(group)
        .bind(sender)
        .fetch_all(&mut *tx)
        .await?;
        // Device rows are locked in ascending id order, so two sends never deadlock; per
        // device the message comes before the Welcome.
        let mut deliveries: Vec<(&[u8], &[u8])> = recipients
            .iter()
            .map(|dev| (dev.as_slice(), msg.message.as_slice()))
            .collect();
        if let Some(welcome) = &msg.welcome {
            deliveries.extend(
                welcomed
                    .iter()
                    .map(|dev| (dev.as_slice(), welcome.message.as_slice())),
            );
        }
        deliveries.sort_by(|a, b| a.0.cmp(b.0));
        let mut delivered = Vec::with_capacity(deliveries.len());
        for (dev, payload) in deliveries {
            if let Some(seq) = deliver(&mut tx, dev, payload, now_ms, quota).await? {
                delivered.push((device_id(dev)?, seq));
            }
        }
        for dev in &welcomed {
            sqlx::query(
                "INSERT INTO group_members (group_id, device_id) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(group)
            .bind(dev.as_slice())
            .execute(&mut *tx)
            .await?;
        }
        for dev in &msg.removed_devices {
            sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND device_id = $2")
                .bind(group)
                .bind(dev.as_bytes().as_slice())
                .execute(&mut *tx)
                .await?;
        }

        sqlx::query(
            "UPDATE sent_messages SET epoch = $1 WHERE sender_device = $2 AND message_id = $3",
        )
        .bind(new_epoch)
        .bind(sender)
        .bind(msg.id.as_bytes().as_slice())
        .execute(&mut *tx)
        .await?;
        // Delivered to listeners when (and only if) the transaction commits.
        for payload in payloads(&delivered) {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(SendOutcome {
            epoch: sequenced.new_epoch,
            duplicate: false,
            delivered,
        })
    }

    async fn ack_once(&self, device: &DeviceId, up_to: u64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let deleted = sqlx::query("DELETE FROM mailbox WHERE device_id = $1 AND seq <= $2")
            .bind(device.as_bytes().as_slice())
            .bind(int(up_to))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted > 0 {
            sqlx::query(
                "UPDATE devices SET mailbox_count = mailbox_count - $1 WHERE device_id = $2",
            )
            .bind(int(deleted))
            .bind(device.as_bytes().as_slice())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn sweep_once(&self, now: u64) -> Result<SweepStats, StoreError> {
        let now_i = int(now);
        let kp_cutoff = int(now.saturating_sub(retention::CLAIMED_KEY_PACKAGE_SECS));
        let envelope_cutoff_ms = int(now
            .saturating_sub(self.inner.options.envelope_retention_secs)
            .saturating_mul(1000));
        let sent_cutoff = int(now.saturating_sub(retention::SENT_MESSAGE_SECS));
        let claim_cutoff = int(now.saturating_sub(retention::CLAIM_WINDOW_SECS));
        let mut tx = self.begin().await?;
        let challenges = sqlx::query("DELETE FROM challenges WHERE expires_at <= $1")
            .bind(now_i)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let sessions = sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now_i)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let key_packages = sqlx::query(
            "DELETE FROM key_packages WHERE \
               (NOT last_resort AND claimed_at IS NULL AND not_after <= $1) \
               OR (NOT last_resort AND claimed_at <= $2) \
               OR (last_resort AND (retired_at <= $2 OR not_after <= $2))",
        )
        .bind(now_i)
        .bind(kp_cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let key_package_claims =
            sqlx::query("DELETE FROM key_package_claims WHERE claimed_at <= $1")
                .bind(kp_cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        // Lock the affected devices in id order (as sends do), then delete their old
        // envelopes and lower their mailbox counts by what went.
        sqlx::query(
            "SELECT 1 FROM devices WHERE device_id IN \
               (SELECT device_id FROM mailbox WHERE received_at <= $1) \
             ORDER BY device_id FOR NO KEY UPDATE",
        )
        .bind(envelope_cutoff_ms)
        .execute(&mut *tx)
        .await?;
        let envelopes: i64 = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM mailbox WHERE received_at <= $1 RETURNING device_id), \
             counts AS (SELECT device_id, COUNT(*) AS n FROM gone GROUP BY device_id), \
             lowered AS (UPDATE devices d SET mailbox_count = d.mailbox_count - counts.n \
               FROM counts WHERE d.device_id = counts.device_id RETURNING 1) \
             SELECT COALESCE(SUM(n), 0)::BIGINT FROM counts",
        )
        .bind(envelope_cutoff_ms)
        .fetch_one(&mut *tx)
        .await?;
        let sent_messages = sqlx::query("DELETE FROM sent_messages WHERE sent_at < $1")
            .bind(sent_cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let claim_log = sqlx::query("DELETE FROM key_package_claim_log WHERE claimed_at <= $1")
            .bind(claim_cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(SweepStats {
            challenges,
            sessions,
            key_packages,
            key_package_claims,
            envelopes: uint(envelopes, "count")?,
            sent_messages,
            claim_log,
        })
    }
}

impl Store for PostgresStore {
    fn create_account(&self, account: NewAccount, now: u64) -> StoreFuture<'_, Registration> {
        Box::pin(async move {
            retrying("create_account", || self.create_account_once(&account, now)).await
        })
    }

    fn account<'a>(&'a self, handle_: &'a Handle) -> StoreFuture<'a, Option<Account>> {
        Box::pin(async move {
            let row: Option<(String, Vec<u8>)> =
                sqlx::query_as("SELECT handle, device_list FROM accounts WHERE handle = $1")
                    .bind(handle_.as_str())
                    .fetch_optional(self.pool())
                    .await?;
            row.map(|(h, device_list)| {
                Ok(Account {
                    handle: handle(&h)?,
                    device_list,
                })
            })
            .transpose()
        })
    }

    fn device<'a>(&'a self, id: &'a DeviceId) -> StoreFuture<'a, Option<Device>> {
        Box::pin(async move {
            let row: Option<(String, Vec<u8>)> =
                sqlx::query_as("SELECT handle, device_key FROM devices WHERE device_id = $1")
                    .bind(id.as_bytes().as_slice())
                    .fetch_optional(self.pool())
                    .await?;
            row.map(|(h, key)| {
                Ok(Device {
                    device_id: *id,
                    handle: handle(&h)?,
                    device_key: key32(&key)?,
                })
            })
            .transpose()
        })
    }

    fn put_challenge(&self, challenge: Challenge) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO challenges (challenge, handle, device_id, expires_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(challenge.challenge.as_slice())
            .bind(challenge.handle.as_str())
            .bind(challenge.device_id.as_bytes().as_slice())
            .bind(int(challenge.expires_at))
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn take_challenge<'a>(&'a self, challenge: &'a [u8]) -> StoreFuture<'a, Option<Challenge>> {
        Box::pin(async move {
            let row: Option<(String, Vec<u8>, i64)> = sqlx::query_as(
                "DELETE FROM challenges WHERE challenge = $1 \
                 RETURNING handle, device_id, expires_at",
            )
            .bind(challenge)
            .fetch_optional(self.pool())
            .await?;
            row.map(|(h, d, expires_at)| {
                Ok(Challenge {
                    challenge: challenge.to_vec(),
                    handle: handle(&h)?,
                    device_id: device_id(&d)?,
                    expires_at: uint(expires_at, "challenge expiry")?,
                })
            })
            .transpose()
        })
    }

    fn create_session(
        &self,
        token_hash: [u8; 32],
        device: DeviceId,
        expires_at: u64,
    ) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO sessions (token_hash, device_id, expires_at) VALUES ($1, $2, $3)",
            )
            .bind(token_hash.as_slice())
            .bind(device.as_bytes().as_slice())
            .bind(int(expires_at))
            .execute(self.pool())
            .await?;
            Ok(())
        })
    }

    fn session(&self, token_hash: [u8; 32], now: u64) -> StoreFuture<'_, Option<Device>> {
        Box::pin(async move {
            let row: Option<(Vec<u8>, String, Vec<u8>)> = sqlx::query_as(
                "SELECT d.device_id, d.handle, d.device_key FROM sessions s \
                 JOIN devices d ON d.device_id = s.device_id \
                 WHERE s.token_hash = $1 AND s.expires_at > $2",
            )
            .bind(token_hash.as_slice())
            .bind(int(now))
            .fetch_optional(self.pool())
            .await?;
            row.map(|(d, h, key)| {
                Ok(Device {
                    device_id: device_id(&d)?,
                    handle: handle(&h)?,
                    device_key: key32(&key)?,
                })
            })
            .transpose()
        })
    }

    fn add_key_packages(
        &self,
        device: DeviceId,
        one_time: Vec<NewKeyPackage>,
        last_resort: Option<NewKeyPackage>,
        now: u64,
    ) -> StoreFuture<'_, KeyPackageStock> {
        Box::pin(async move {
            retrying("add_key_packages", || {
                self.add_key_packages_once(&device, &one_time, last_resort.as_ref(), now)
            })
            .await
        })
    }

    fn key_package_stock(&self, device: DeviceId, now: u64) -> StoreFuture<'_, KeyPackageStock> {
        Box::pin(async move {
            let mut conn = self.pool().acquire().await?;
            stock(&mut conn, &device, now).await
        })
    }

    fn claim_key_packages<'a>(
        &'a self,
        target: &'a Handle,
        claimed_by: DeviceId,
        now: u64,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            retrying("claim_key_packages", || {
                self.claim_once(target, &claimed_by, now)
            })
            .await
        })
    }

    fn send(&self, msg: OutgoingMessage, now_ms: u64) -> StoreFuture<'_, SendOutcome> {
        Box::pin(async move { retrying("send", || self.send_once(&msg, now_ms)).await })
    }

    fn fetch(&self, device: DeviceId, after: u64, limit: u32) -> StoreFuture<'_, MailboxPage> {
        Box::pin(async move {
            let rows: Vec<(i64, Vec<u8>, i64)> = sqlx::query_as(
                "SELECT seq, payload, received_at FROM mailbox \
                 WHERE device_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(device.as_bytes().as_slice())
            .bind(int(after))
            .bind(i64::from(limit) + 1)
            .fetch_all(self.pool())
            .await?;
            let dropped: Option<i64> =
                sqlx::query_scalar("SELECT dropped FROM devices WHERE device_id = $1")
                    .bind(device.as_bytes().as_slice())
                    .fetch_optional(self.pool())
                    .await?;
            // Checked: a limit that does not fit a usize is no limit.
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let more = rows.len() > limit;
            let envelopes = rows
                .into_iter()
                .take(limit)
                .map(|(seq, payload, received_at)| {
                    Ok(StoredEnvelope {
                        seq: uint(seq, "seq")?,
                        payload,
                        received_at: uint(received_at, "received_at")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(MailboxPage {
                envelopes,
                more,
                dropped: uint(dropped.unwrap_or(0), "dropped")?,
            })
        })
    }

    fn ack(&self, device: DeviceId, up_to: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move { retrying("ack", || self.ack_once(&device, up_to)).await })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(self.pool()).await?;
            Ok(())
        })
    }

    fn stats(&self, now: u64) -> StoreFuture<'_, StoreStats> {
        Box::pin(async move {
            let (accounts, devices, envelopes, one_time, without): (i64, i64, i64, i64, i64) =
                sqlx::query_as(
                    "SELECT \
                       (SELECT COUNT(*) FROM accounts), \
                       (SELECT COUNT(*) FROM devices), \
                       (SELECT COUNT(*) FROM mailbox), \
                       (SELECT COUNT(*) FROM key_packages WHERE NOT last_resort \
                          AND claimed_at IS NULL AND not_after > $1), \
                       (SELECT COUNT(*) FROM devices d WHERE NOT EXISTS ( \
                          SELECT 1 FROM key_packages k WHERE k.device_id = d.device_id \
                            AND NOT k.last_resort AND k.claimed_at IS NULL \
                            AND k.not_after > $1))",
                )
                .bind(int(now))
                .fetch_one(self.pool())
                .await?;
            Ok(StoreStats {
                accounts: uint(accounts, "count")?,
                devices: uint(devices, "count")?,
                envelopes: uint(envelopes, "count")?,
                one_time_key_packages: uint(one_time, "count")?,
                devices_without_one_time_key_packages: uint(without, "count")?,
            })
        })
    }

    fn sweep(&self, now: u64) -> StoreFuture<'_, SweepStats> {
        Box::pin(async move { retrying("sweep", || self.sweep_once(now)).await })
    }

    fn subscribe(&self) -> broadcast::Receiver<Wakeup> {
        self.inner.wakeups.subscribe()
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // Closing the listen pool ends the listener task (its wait is cancelled).
            self.inner.listen_pool.close().await;
            if let Some(task) = self.inner.listener_task.lock().await.take()
                && let Err(err) = task.await
            {
                tracing::error!(error = %err, "the notification listener task failed");
            }
            self.pool().close().await;
            Ok(())
        })
    }
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
        assert!(payloads(&[]).is_empty());
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
            &format!("{device}"),
            &format!("{device}:"),
            &format!("{device}:-1"),
            &format!("{device}:1,"),
            &format!("{}:1", &device[..30]),
        ] {
            assert_eq!(parse_payload(bad), None, "{bad:?}");
        }
    }
}
