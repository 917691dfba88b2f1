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
//! - **Notifications**: after a send committed, it hands what it stored to the store's
//!   notifier task, which sends `pg_notify('dm_mailbox', …)` for everything queued in one
//!   statement on a connection of its own (not inside the send's transaction: PostgreSQL
//!   serialises the commits of notifying transactions, WAL flush included, which would
//!   leave concurrent sends no group commit). Each store runs one `LISTEN` connection and
//!   publishes one [`Wakeup::Mailboxes`] per notification to [`Store::subscribe`] — its own
//!   sends included — and [`Wakeup::Resync`] whenever that connection was lost and
//!   re-established. A notification can be lost: when the process dies between a send's
//!   commit and its notification, or the notification fails (logged; this instance then
//!   wakes its own subscribers directly). The envelope is stored all the same, and every
//!   push socket checks its mailbox at each ping (`PUSH_PING_SECS`, 30 s): a lost
//!   notification delays delivery on other instances by at most that long.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use dm_wire::api::KeyPackageStock;
use dm_wire::api::limits::MAX_KEY_PACKAGES_PER_DEVICE;
use dm_wire::{DeviceId, Handle};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::broadcast;

use super::convert::{device_id, handle, int, key32, retry_after, uint};
use super::{
    Account, Challenge, Claim, Device, DeviceListChange, DeviceListUpdate, LinkSlotContent,
    MailboxPage, MailboxRow, NewAccount, NewKeyPackage, OutgoingMessage, Registration, SendOutcome,
    Store, StoreError, StoreFuture, StoreOptions, StoreStats, SweepStats, Wakeup, retention,
};

mod notify;
mod send;

pub use notify::{CHANNEL, parse_payload, payloads};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long an operation waits for a free connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of a transaction that lost a conflict.
const MAX_ATTEMPTS: u32 = 6;
/// The first key of the advisory locks taken on requesting devices ("dm_c").
const CLAIM_LOCK_CLASS: i32 = 0x646d_5f63;

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
    /// One connection, for the notifier's `pg_notify` (with `synchronous_commit = off`).
    notify_pool: PgPool,
    options: StoreOptions,
    wakeups: broadcast::Sender<Wakeup>,
    listener_task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Takes committed sends' deliveries to the notifier task; `None` once closed.
    notifier: std::sync::Mutex<Option<notify::Notifier>>,
    /// The notifier task, awaited on close.
    notifier_task: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://…` or `postgresql://…`; the database
    /// must exist), applies pending migrations (instances starting together take turns:
    /// the migrator holds an advisory lock), starts listening for other instances'
    /// envelopes and starts the notifier task that announces this instance's.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let base = PgConnectOptions::from_str(url)?.application_name("dm-server");
        let connect = base.clone().options([("synchronous_commit", "on")]);
        let pool = PgPoolOptions::new()
            .max_connections(options.database_connections.max(1))
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
        // A notification is a hint, not data (its loss costs a delay until the sockets'
        // next check): its commit need not wait for the WAL flush.
        let notify_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(base.options([("synchronous_commit", "off")]))
            .await?;
        // Listening before `connect` returns: nothing committed afterwards is missed.
        let listener = notify::start_listener(&listen_pool).await?;
        let (wakeups, _) = broadcast::channel(super::WAKEUP_CAPACITY);
        let task = tokio::spawn(notify::listen(
            listener,
            listen_pool.clone(),
            wakeups.clone(),
        ));
        let (notifier, notifier_task) =
            notify::Notifier::start(notify_pool.clone(), wakeups.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                listen_pool,
                notify_pool,
                options,
                wakeups,
                listener_task: tokio::sync::Mutex::new(Some(task)),
                notifier: std::sync::Mutex::new(Some(notifier)),
                notifier_task: tokio::sync::Mutex::new(Some(notifier_task)),
            }),
        })
    }

    /// Hands the envelopes a committed send stored to the notifier task (never waits).
    fn notify(&self, delivered: Vec<(DeviceId, u64)>) {
        let notifier = self
            .inner
            .notifier
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(notifier) = notifier.as_ref() {
            notifier.notify(delivered);
        }
    }

    fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool().begin().await
    }
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

    async fn ack_once(&self, device: &DeviceId, up_to: u64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        // The device row first, like sends and the sweep: one lock order, no deadlock.
        sqlx::query("SELECT 1 FROM devices WHERE device_id = $1 FOR UPDATE")
            .bind(device.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await?;
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
        let link_slots = sqlx::query("DELETE FROM link_slots WHERE expires_at <= $1")
            .bind(now_i)
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
            link_slots,
        })
    }

    async fn update_device_list_once(
        &self,
        update: &DeviceListUpdate,
        now: u64,
    ) -> Result<DeviceListChange, StoreError> {
        let mut tx = self.begin().await?;
        // The account row lock serialises publishes of one account.
        let row: Option<(Vec<u8>, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT account_key, sequence, device_list FROM accounts WHERE handle = $1 \
             FOR UPDATE",
        )
        .bind(update.handle.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let (key, sequence, stored) = row.ok_or(StoreError::UnknownHandle)?;
        if key.as_slice() != update.account_key.as_slice() {
            return Err(StoreError::WrongAccountKey);
        }
        let current = uint(sequence, "sequence")?;
        if update.sequence <= current {
            return Err(StoreError::StaleDeviceList {
                current,
                device_list: stored,
            });
        }
        let existing: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "SELECT device_id, device_key FROM devices WHERE handle = $1 ORDER BY device_id",
        )
        .bind(update.handle.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut change = DeviceListChange::default();
        for (id, key) in &update.devices {
            match existing.iter().find(|(e, _)| e.as_slice() == id.as_bytes()) {
                Some((_, stored)) if stored.as_slice() != key.as_slice() => {
                    return Err(StoreError::DeviceKeyChanged);
                }
                Some(_) => {}
                None => {
                    let inserted = sqlx::query(
                        "INSERT INTO devices (device_id, handle, device_key, created_at) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (device_id) DO NOTHING",
                    )
                    .bind(id.as_bytes().as_slice())
                    .bind(update.handle.as_str())
                    .bind(key.as_slice())
                    .bind(int(now))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if inserted == 0 {
                        return Err(StoreError::DeviceTaken);
                    }
                    change.added.push(*id);
                }
            }
        }
        for (id, _) in &existing {
            if !update
                .devices
                .iter()
                .any(|(d, _)| d.as_bytes() == id.as_slice())
            {
                // Cascades to sessions, key packages, mailbox, delivery lists.
                sqlx::query("DELETE FROM devices WHERE device_id = $1")
                    .bind(id.as_slice())
                    .execute(&mut *tx)
                    .await?;
                change.removed.push(device_id(id)?);
            }
        }
        sqlx::query("UPDATE accounts SET device_list = $1, sequence = $2 WHERE handle = $3")
            .bind(update.device_list.as_slice())
            .bind(int(update.sequence))
            .bind(update.handle.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(change)
    }

    async fn delete_account_once(&self, handle_: &Handle) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM devices WHERE handle = $1")
            .bind(handle_.as_str())
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM accounts WHERE handle = $1")
            .bind(handle_.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted == 0 {
            return Err(StoreError::UnknownHandle);
        }
        tx.commit().await?;
        Ok(())
    }

    async fn put_link_request_once(
        &self,
        slot: &[u8; 16],
        request: &[u8],
        now: u64,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM link_slots WHERE slot = $1 AND expires_at <= $2")
            .bind(slot.as_slice())
            .bind(int(now))
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "INSERT INTO link_slots (slot, request, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (slot) DO NOTHING",
        )
        .bind(slot.as_slice())
        .bind(request)
        .bind(int(expires_at))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(StoreError::LinkSlotTaken);
        }
        tx.commit().await?;
        Ok(())
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
            // Payloads only while the page stays within FETCH_BYTE_BUDGET (the first one
            // always): lengths come from the rows, payloads are read for the page only.
            let rows: Vec<MailboxRow> = sqlx::query_as(
                "WITH page AS ( \
                   SELECT seq, SUM(len) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - len \
                     AS before \
                   FROM (SELECT seq, octet_length(payload)::BIGINT AS len FROM mailbox \
                         WHERE device_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) AS l) \
                 SELECT m.seq, CASE WHEN page.before < $4 THEN m.payload END, m.received_at \
                 FROM page JOIN mailbox m ON m.device_id = $1 AND m.seq = page.seq \
                 ORDER BY m.seq",
            )
            .bind(device.as_bytes().as_slice())
            .bind(int(after))
            .bind(i64::from(limit) + 1)
            .bind(int(super::FETCH_BYTE_BUDGET as u64))
            .fetch_all(self.pool())
            .await?;
            let dropped: Option<i64> =
                sqlx::query_scalar("SELECT dropped FROM devices WHERE device_id = $1")
                    .bind(device.as_bytes().as_slice())
                    .fetch_optional(self.pool())
                    .await?;
            MailboxPage::from_rows(rows, limit, dropped.unwrap_or(0))
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

    fn update_device_list(
        &self,
        update: DeviceListUpdate,
        now: u64,
    ) -> StoreFuture<'_, DeviceListChange> {
        Box::pin(async move {
            retrying("update_device_list", || {
                self.update_device_list_once(&update, now)
            })
            .await
        })
    }

    fn delete_account<'a>(&'a self, handle_: &'a Handle) -> StoreFuture<'a, ()> {
        Box::pin(
            async move { retrying("delete_account", || self.delete_account_once(handle_)).await },
        )
    }

    fn put_link_request(
        &self,
        slot: [u8; 16],
        request: Vec<u8>,
        now: u64,
        expires_at: u64,
    ) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            retrying("put_link_request", || {
                self.put_link_request_once(&slot, &request, now, expires_at)
            })
            .await
        })
    }

    fn link_slot(&self, slot: [u8; 16], now: u64) -> StoreFuture<'_, Option<LinkSlotContent>> {
        Box::pin(async move {
            let row: Option<(Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
                "SELECT request, response FROM link_slots WHERE slot = $1 AND expires_at > $2",
            )
            .bind(slot.as_slice())
            .bind(int(now))
            .fetch_optional(self.pool())
            .await?;
            Ok(row.map(|(request, response)| LinkSlotContent { request, response }))
        })
    }

    fn put_link_response(
        &self,
        slot: [u8; 16],
        response: Vec<u8>,
        now: u64,
    ) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let updated = sqlx::query(
                "UPDATE link_slots SET response = $1 \
                 WHERE slot = $2 AND expires_at > $3 AND response IS NULL",
            )
            .bind(response.as_slice())
            .bind(slot.as_slice())
            .bind(int(now))
            .execute(self.pool())
            .await?
            .rows_affected();
            Ok(updated == 1)
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Wakeup> {
        self.inner.wakeups.subscribe()
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // Dropping the notifier lets its task notify what is queued and stop.
            drop(
                self.inner
                    .notifier
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(),
            );
            if let Some(task) = self.inner.notifier_task.lock().await.take()
                && let Err(err) = task.await
            {
                tracing::error!(error = %err, "the notifier task failed");
            }
            self.inner.notify_pool.close().await;
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
