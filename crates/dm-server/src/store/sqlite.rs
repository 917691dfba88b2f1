//! The SQLite [`Store`]: one file in WAL mode with `synchronous=FULL`, so an acknowledged
//! message survives power loss. Every write transaction starts with `BEGIN IMMEDIATE`, which
//! takes the write lock up front: deferred transactions that read and then write would fail
//! with `SQLITE_BUSY` under concurrency instead of waiting for the busy timeout.
//!
//! Group commit: [`Store::send`] and [`Store::ack`] do not commit one by one. They are queued
//! to one writer thread that runs every queued operation (up to 256) in one transaction
//! with a savepoint per operation, and commits once: one fsync per batch instead of one per
//! message. One wakeup for the batch's envelopes is published after the commit. The writer
//! thread has its own connection to the file (rusqlite, prepared statements cached, no
//! channel hop per statement). Mailbox fetches, which push sockets run after every
//! wakeup, read on a few rusqlite connections in blocking threads (one thread hop per
//! page). The sqlx pool runs the migrations and serves every other read and write. This engine serves one relay process; several processes need
//! PostgreSQL.

mod send;
mod writer;

use send::send_in;

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dm_wire::api::KeyPackageStock;
use dm_wire::api::limits::MAX_KEY_PACKAGES_PER_DEVICE;
use dm_wire::{DeviceId, Handle};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, SqliteConnection, Transaction};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::convert::{device_id, handle, int, key32, retry_after, uint};
use super::{
    Account, Challenge, Claim, Device, DeviceListChange, DeviceListUpdate, LinkSlotContent,
    MailboxPage, MailboxRow, NewAccount, NewKeyPackage, OutgoingMessage, Registration, SendOutcome,
    Store, StoreError, StoreFuture, StoreOptions, StoreStats, SweepStats, Wakeup, retention,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for another writer before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the pool (SQLite has one writer at a time; readers run in parallel).
const MAX_CONNECTIONS: u32 = 8;
/// Operations waiting for the writer thread before senders wait for room.
const WRITER_QUEUE: usize = 4096;

/// The relay's state in one SQLite database file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: SqlitePool,
    options: StoreOptions,
    wakeups: broadcast::Sender<Wakeup>,
    /// The writer thread's queue; `None` once closed.
    writer: Mutex<Option<mpsc::Sender<writer::Op>>>,
    /// The writer thread, joined on close.
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The database file, for the reader connections.
    path: std::path::PathBuf,
    /// Idle rusqlite connections for mailbox fetches.
    readers: Mutex<Vec<rusqlite::Connection>>,
}

/// Most idle reader connections kept.
const MAX_IDLE_READERS: usize = 8;

impl SqliteStore {
    /// Opens (creating it if missing) the database at `url` (`sqlite://path`), applies
    /// pending migrations and starts the writer thread.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(connect.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        // The writer's own connection, opened once the pool has created and migrated the file.
        let path = connect.get_filename().to_owned();
        let writer_path = path.clone();
        let conn = tokio::task::spawn_blocking(move || writer::open(&writer_path, BUSY_TIMEOUT))
            .await
            .map_err(|err| sqlx::Error::Io(std::io::Error::other(err)))??;
        let (wakeups, _) = broadcast::channel(super::WAKEUP_CAPACITY);
        let (queue, ops) = mpsc::channel(WRITER_QUEUE);
        let quota = options.mailbox_quota;
        let thread_wakeups = wakeups.clone();
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer::run(conn, quota, thread_wakeups, ops))
            .map_err(sqlx::Error::Io)?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                options,
                wakeups,
                writer: Mutex::new(Some(queue)),
                writer_thread: Mutex::new(Some(thread)),
                path,
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    async fn write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool().begin_with("BEGIN IMMEDIATE").await
    }

    /// Queues an operation for the writer thread and waits for its answer.
    async fn submit<T>(
        &self,
        work: writer::Work,
        answer: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> writer::Reply,
    ) -> Result<T, StoreError> {
        let queue = self
            .inner
            .writer
            .lock()
            .ok()
            .and_then(|q| q.clone())
            .ok_or(StoreError::Closed)?;
        let (reply, answered) = oneshot::channel();
        queue
            .send(writer::Op::new(work, answer(reply)))
            .await
            .map_err(|_| StoreError::Closed)?;
        answered.await.map_err(|_| StoreError::Closed)?
    }
}

async fn stock(
    conn: &mut SqliteConnection,
    device: &DeviceId,
    now: u64,
) -> Result<KeyPackageStock, StoreError> {
    let (one_time, last_resort): (i64, i64) = sqlx::query_as(
        "SELECT \
           (SELECT COUNT(*) FROM key_packages WHERE device_id = ?1 AND last_resort = 0 \
              AND claimed_at IS NULL AND not_after > ?2), \
           EXISTS (SELECT 1 FROM key_packages WHERE device_id = ?1 AND last_resort = 1 \
              AND retired_at IS NULL AND not_after > ?2)",
    )
    .bind(device.as_bytes().as_slice())
    .bind(int(now))
    .fetch_one(&mut *conn)
    .await?;
    Ok(KeyPackageStock {
        one_time: u32::try_from(one_time).map_err(|_| StoreError::Corrupt("count"))?,
        last_resort: last_resort != 0,
    })
}

impl Store for SqliteStore {
    fn create_account(&self, account: NewAccount, now: u64) -> StoreFuture<'_, Registration> {
        Box::pin(async move {
            let mut tx = self.write().await?;
            let existing: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT device_list FROM accounts WHERE handle = ?")
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
            let device_taken: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM devices WHERE device_id = ?")
                    .bind(account.device_id.as_bytes().as_slice())
                    .fetch_optional(&mut *tx)
                    .await?;
            if device_taken.is_some() {
                return Err(StoreError::DeviceTaken);
            }
            sqlx::query(
                "INSERT INTO accounts (handle, account_key, device_list, sequence, created_at) \
                 VALUES (?, ?, ?, ?, ?)",
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
                 VALUES (?, ?, ?, ?)",
            )
            .bind(account.device_id.as_bytes().as_slice())
            .bind(account.handle.as_str())
            .bind(account.device_key.as_slice())
            .bind(int(now))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Registration::Created)
        })
    }

    fn account<'a>(&'a self, handle_: &'a Handle) -> StoreFuture<'a, Option<Account>> {
        Box::pin(async move {
            let row: Option<(String, Vec<u8>)> =
                sqlx::query_as("SELECT handle, device_list FROM accounts WHERE handle = ?")
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
                sqlx::query_as("SELECT handle, device_key FROM devices WHERE device_id = ?")
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
            let mut tx = self.write().await?;
            sqlx::query(
                "INSERT INTO challenges (challenge, handle, device_id, expires_at) \
                 VALUES (?, ?, ?, ?)",
            )
            .bind(challenge.challenge.as_slice())
            .bind(challenge.handle.as_str())
            .bind(challenge.device_id.as_bytes().as_slice())
            .bind(int(challenge.expires_at))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn take_challenge<'a>(&'a self, challenge: &'a [u8]) -> StoreFuture<'a, Option<Challenge>> {
        Box::pin(async move {
            let mut tx = self.write().await?;
            let row: Option<(String, Vec<u8>, i64)> = sqlx::query_as(
                "DELETE FROM challenges WHERE challenge = ? \
                 RETURNING handle, device_id, expires_at",
            )
            .bind(challenge)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
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
            let mut tx = self.write().await?;
            sqlx::query(
                "INSERT INTO sessions (token_hash, device_id, expires_at) VALUES (?, ?, ?)",
            )
            .bind(token_hash.as_slice())
            .bind(device.as_bytes().as_slice())
            .bind(int(expires_at))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn session(&self, token_hash: [u8; 32], now: u64) -> StoreFuture<'_, Option<Device>> {
        Box::pin(async move {
            let row: Option<(Vec<u8>, String, Vec<u8>)> = sqlx::query_as(
                "SELECT d.device_id, d.handle, d.device_key FROM sessions s \
                 JOIN devices d ON d.device_id = s.device_id \
                 WHERE s.token_hash = ? AND s.expires_at > ?",
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
            let dev = device.as_bytes().as_slice();
            let mut tx = self.write().await?;
            for kp in &one_time {
                sqlx::query(
                    "INSERT INTO key_packages \
                       (device_id, kp_ref, key_package, last_resort, not_after, uploaded_at) \
                     VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT (kp_ref) DO NOTHING",
                )
                .bind(dev)
                .bind(kp.kp_ref.as_slice())
                .bind(kp.key_package.as_slice())
                .bind(int(kp.not_after))
                .bind(int(now))
                .execute(&mut *tx)
                .await?;
            }
            if let Some(kp) = &last_resort {
                sqlx::query(
                    "UPDATE key_packages SET retired_at = ? \
                     WHERE device_id = ? AND last_resort = 1 AND retired_at IS NULL \
                       AND kp_ref <> ?",
                )
                .bind(int(now))
                .bind(dev)
                .bind(kp.kp_ref.as_slice())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO key_packages \
                       (device_id, kp_ref, key_package, last_resort, not_after, uploaded_at) \
                     VALUES (?, ?, ?, 1, ?, ?) \
                     ON CONFLICT (kp_ref) DO UPDATE SET retired_at = NULL \
                     WHERE key_packages.device_id = excluded.device_id \
                       AND key_packages.last_resort = 1",
                )
                .bind(dev)
                .bind(kp.kp_ref.as_slice())
                .bind(kp.key_package.as_slice())
                .bind(int(kp.not_after))
                .bind(int(now))
                .execute(&mut *tx)
                .await?;
            }
            let stock = stock(&mut tx, &device, now).await?;
            if stock.one_time > MAX_KEY_PACKAGES_PER_DEVICE {
                // Dropping the transaction rolls the whole upload back.
                return Err(StoreError::TooManyKeyPackages {
                    max: MAX_KEY_PACKAGES_PER_DEVICE,
                });
            }
            tx.commit().await?;
            Ok(stock)
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
        handle_: &'a Handle,
        claimed_by: DeviceId,
        now: u64,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let options = self.inner.options;
            let window_start = int(now.saturating_sub(retention::CLAIM_WINDOW_SECS));
            let mut tx = self.write().await?;
            let (claims, oldest): (i64, Option<i64>) = sqlx::query_as(
                "SELECT COUNT(*), MIN(claimed_at) FROM key_package_claim_log \
                 WHERE requester = ? AND claimed_at > ?",
            )
            .bind(claimed_by.as_bytes().as_slice())
            .bind(window_start)
            .fetch_one(&mut *tx)
            .await?;
            if claims >= i64::from(options.claims_per_requester_per_hour) {
                return Err(StoreError::RateLimited {
                    retry_after_secs: retry_after(oldest, retention::CLAIM_WINDOW_SECS, now),
                });
            }
            let device_list: Vec<u8> =
                sqlx::query_scalar("SELECT device_list FROM accounts WHERE handle = ?")
                    .bind(handle_.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::UnknownHandle)?;
            let handed_out: i64 = sqlx::query_scalar(
                "SELECT COALESCE(SUM(one_time), 0) FROM key_package_claim_log \
                 WHERE target = ? AND claimed_at > ?",
            )
            .bind(handle_.as_str())
            .bind(window_start)
            .fetch_one(&mut *tx)
            .await?;
            let mut one_time_budget =
                i64::from(options.one_time_claims_per_target_per_hour).saturating_sub(handed_out);
            let devices: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT device_id FROM devices WHERE handle = ? AND device_id <> ? \
                 ORDER BY created_at, device_id",
            )
            .bind(handle_.as_str())
            .bind(claimed_by.as_bytes().as_slice())
            .fetch_all(&mut *tx)
            .await?;
            let mut key_packages = Vec::with_capacity(devices.len());
            let mut one_time_claimed: i64 = 0;
            for dev in devices {
                let one_time: Option<(i64, Vec<u8>, Vec<u8>, bool)> = if one_time_budget > 0 {
                    sqlx::query_as(
                        "SELECT id, kp_ref, key_package, last_resort FROM key_packages \
                         WHERE device_id = ? AND last_resort = 0 AND claimed_at IS NULL \
                           AND not_after > ? \
                         ORDER BY id LIMIT 1",
                    )
                    .bind(dev.as_slice())
                    .bind(int(now))
                    .fetch_optional(&mut *tx)
                    .await?
                } else {
                    None
                };
                let chosen = match one_time {
                    Some(row) => {
                        one_time_budget -= 1;
                        one_time_claimed += 1;
                        Some(row)
                    }
                    None => {
                        sqlx::query_as(
                            "SELECT id, kp_ref, key_package, last_resort FROM key_packages \
                             WHERE device_id = ? AND last_resort = 1 AND retired_at IS NULL \
                               AND not_after > ? \
                             ORDER BY id DESC LIMIT 1",
                        )
                        .bind(dev.as_slice())
                        .bind(int(now))
                        .fetch_optional(&mut *tx)
                        .await?
                    }
                };
                let Some((id, kp_ref, key_package, last_resort)) = chosen else {
                    continue;
                };
                // For a one-time package this consumes it and names its only claimer; a
                // last-resort package stays offered (its claim time only records the latest
                // use) and every claimer is recorded in key_package_claims.
                sqlx::query("UPDATE key_packages SET claimed_at = ?, claimed_by = ? WHERE id = ?")
                    .bind(int(now))
                    .bind(claimed_by.as_bytes().as_slice())
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                if last_resort {
                    sqlx::query(
                        "INSERT INTO key_package_claims (kp_ref, claimed_by, claimed_at) \
                         VALUES (?, ?, ?) \
                         ON CONFLICT (kp_ref, claimed_by) \
                           DO UPDATE SET claimed_at = excluded.claimed_at",
                    )
                    .bind(kp_ref.as_slice())
                    .bind(claimed_by.as_bytes().as_slice())
                    .bind(int(now))
                    .execute(&mut *tx)
                    .await?;
                }
                key_packages.push((device_id(&dev)?, key_package));
            }
            sqlx::query(
                "INSERT INTO key_package_claim_log (requester, target, one_time, claimed_at) \
                 VALUES (?, ?, ?, ?)",
            )
            .bind(claimed_by.as_bytes().as_slice())
            .bind(handle_.as_str())
            .bind(one_time_claimed)
            .bind(int(now))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Claim {
                device_list,
                key_packages,
            })
        })
    }

    fn send(&self, msg: OutgoingMessage, now_ms: u64) -> StoreFuture<'_, SendOutcome> {
        Box::pin(self.submit(
            writer::Work::Send {
                message: Box::new(msg),
                now_ms,
            },
            writer::Reply::Send,
        ))
    }

    fn fetch(&self, device: DeviceId, after: u64, limit: u32) -> StoreFuture<'_, MailboxPage> {
        // On a rusqlite connection in a blocking thread: one thread hop for the whole page
        // (through sqlx every query and every row is one), as push sockets fetch often.
        Box::pin(async move {
            let inner = Arc::clone(&self.inner);
            let (rows, dropped) = tokio::task::spawn_blocking(move || {
                let conn = match inner.readers.lock().ok().and_then(|mut r| r.pop()) {
                    Some(conn) => conn,
                    None => writer::open(&inner.path, BUSY_TIMEOUT)?,
                };
                let result = fetch_page(&conn, device, after, limit);
                if let Ok(mut idle) = inner.readers.lock()
                    && idle.len() < MAX_IDLE_READERS
                {
                    idle.push(conn);
                }
                result
            })
            .await
            .map_err(|_| StoreError::Corrupt("a mailbox fetch was cancelled"))??;
            MailboxPage::from_rows(rows, limit, dropped)
        })
    }

    fn ack(&self, device: DeviceId, up_to: u64) -> StoreFuture<'_, ()> {
        Box::pin(self.submit(writer::Work::Ack { device, up_to }, writer::Reply::Ack))
    }

    fn update_device_list(
        &self,
        update: DeviceListUpdate,
        now: u64,
    ) -> StoreFuture<'_, DeviceListChange> {
        Box::pin(async move {
            let mut tx = self.write().await?;
            let row: Option<(Vec<u8>, i64, Vec<u8>)> = sqlx::query_as(
                "SELECT account_key, sequence, device_list FROM accounts WHERE handle = ?",
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
            let existing: Vec<(Vec<u8>, Vec<u8>)> =
                sqlx::query_as("SELECT device_id, device_key FROM devices WHERE handle = ?")
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
                        let taken: Option<i64> =
                            sqlx::query_scalar("SELECT 1 FROM devices WHERE device_id = ?")
                                .bind(id.as_bytes().as_slice())
                                .fetch_optional(&mut *tx)
                                .await?;
                        if taken.is_some() {
                            return Err(StoreError::DeviceTaken);
                        }
                        sqlx::query(
                            "INSERT INTO devices (device_id, handle, device_key, created_at)                              VALUES (?, ?, ?, ?)",
                        )
                        .bind(id.as_bytes().as_slice())
                        .bind(update.handle.as_str())
                        .bind(key.as_slice())
                        .bind(int(now))
                        .execute(&mut *tx)
                        .await?;
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
                    sqlx::query("DELETE FROM devices WHERE device_id = ?")
                        .bind(id.as_slice())
                        .execute(&mut *tx)
                        .await?;
                    change.removed.push(device_id(id)?);
                }
            }
            sqlx::query("UPDATE accounts SET device_list = ?, sequence = ? WHERE handle = ?")
                .bind(update.device_list.as_slice())
                .bind(int(update.sequence))
                .bind(update.handle.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(change)
        })
    }

    fn delete_account<'a>(&'a self, handle_: &'a Handle) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut tx = self.write().await?;
            // Devices first (their cascades), then the account.
            sqlx::query("DELETE FROM devices WHERE handle = ?")
                .bind(handle_.as_str())
                .execute(&mut *tx)
                .await?;
            let deleted = sqlx::query("DELETE FROM accounts WHERE handle = ?")
                .bind(handle_.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted == 0 {
                return Err(StoreError::UnknownHandle);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn put_link_request(
        &self,
        slot: [u8; 16],
        request: Vec<u8>,
        now: u64,
        expires_at: u64,
    ) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.write().await?;
            sqlx::query("DELETE FROM link_slots WHERE slot = ? AND expires_at <= ?")
                .bind(slot.as_slice())
                .bind(int(now))
                .execute(&mut *tx)
                .await?;
            let inserted = sqlx::query(
                "INSERT INTO link_slots (slot, request, expires_at) VALUES (?, ?, ?)                  ON CONFLICT (slot) DO NOTHING",
            )
            .bind(slot.as_slice())
            .bind(request.as_slice())
            .bind(int(expires_at))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                return Err(StoreError::LinkSlotTaken);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn link_slot(&self, slot: [u8; 16], now: u64) -> StoreFuture<'_, Option<LinkSlotContent>> {
        Box::pin(async move {
            let row: Option<(Vec<u8>, Option<Vec<u8>>)> = sqlx::query_as(
                "SELECT request, response FROM link_slots WHERE slot = ? AND expires_at > ?",
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
            let mut tx = self.write().await?;
            let updated = sqlx::query(
                "UPDATE link_slots SET response = ?                  WHERE slot = ? AND expires_at > ? AND response IS NULL",
            )
            .bind(response.as_slice())
            .bind(slot.as_slice())
            .bind(int(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(updated == 1)
        })
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
                       (SELECT COUNT(*) FROM key_packages WHERE last_resort = 0 \
                          AND claimed_at IS NULL AND not_after > ?1), \
                       (SELECT COUNT(*) FROM devices d WHERE NOT EXISTS ( \
                          SELECT 1 FROM key_packages k WHERE k.device_id = d.device_id \
                            AND k.last_resort = 0 AND k.claimed_at IS NULL \
                            AND k.not_after > ?1))",
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
        Box::pin(async move {
            let now_i = int(now);
            let kp_cutoff = int(now.saturating_sub(retention::CLAIMED_KEY_PACKAGE_SECS));
            let envelope_cutoff_ms = int(now
                .saturating_sub(self.inner.options.envelope_retention_secs)
                .saturating_mul(1000));
            let claim_cutoff = int(now.saturating_sub(retention::CLAIM_WINDOW_SECS));
            let sent_cutoff = int(now.saturating_sub(retention::SENT_MESSAGE_SECS));
            let mut tx = self.write().await?;
            let challenges = sqlx::query("DELETE FROM challenges WHERE expires_at <= ?")
                .bind(now_i)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let sessions = sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
                .bind(now_i)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            // One-time: unclaimed and expired, or claimed long enough ago that no Welcome
            // for it can still be on its way. Last-resort: replaced, or expired, long ago.
            let key_packages = sqlx::query(
                "DELETE FROM key_packages WHERE \
                   (last_resort = 0 AND claimed_at IS NULL AND not_after <= ?1) \
                   OR (last_resort = 0 AND claimed_at <= ?2) \
                   OR (last_resort = 1 AND (retired_at <= ?2 OR not_after <= ?2))",
            )
            .bind(now_i)
            .bind(kp_cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let key_package_claims =
                sqlx::query("DELETE FROM key_package_claims WHERE claimed_at <= ?")
                    .bind(kp_cutoff)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            sqlx::query(
                "UPDATE devices SET mailbox_count = mailbox_count - ( \
                   SELECT COUNT(*) FROM mailbox m \
                   WHERE m.device_id = devices.device_id AND m.received_at <= ?1) \
                 WHERE device_id IN (SELECT device_id FROM mailbox WHERE received_at <= ?1)",
            )
            .bind(envelope_cutoff_ms)
            .execute(&mut *tx)
            .await?;
            let envelopes = sqlx::query("DELETE FROM mailbox WHERE received_at <= ?")
                .bind(envelope_cutoff_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            // Strictly older: `sent_at` is in seconds, rounded down, so `<=` could drop the
            // record up to a second before the envelopes of the same message.
            let sent_messages = sqlx::query("DELETE FROM sent_messages WHERE sent_at < ?")
                .bind(sent_cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let link_slots = sqlx::query("DELETE FROM link_slots WHERE expires_at <= ?")
                .bind(now_i)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let claim_log = sqlx::query("DELETE FROM key_package_claim_log WHERE claimed_at <= ?")
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
                envelopes,
                sent_messages,
                link_slots,
                claim_log,
            })
        })
    }

    fn subscribe(&self) -> broadcast::Receiver<Wakeup> {
        self.inner.wakeups.subscribe()
    }

    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // Dropping the queue lets the writer finish what is queued and stop.
            drop(self.inner.writer.lock().ok().and_then(|mut q| q.take()));
            let thread = self
                .inner
                .writer_thread
                .lock()
                .ok()
                .and_then(|mut t| t.take());
            if let Some(thread) = thread {
                match tokio::task::spawn_blocking(move || thread.join()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => tracing::error!("the SQLite writer thread panicked"),
                    Err(err) => tracing::error!(error = %err, "joining the SQLite writer failed"),
                }
            }
            self.pool().close().await;
            Ok(())
        })
    }
}

/// Publishes one wakeup for the envelopes a committed batch stored (nobody listening is
/// fine): one broadcast entry per batch, not per envelope, so a subscriber does not lag
/// behind a busy writer.
fn deliver_wakeups(wakeups: &broadcast::Sender<Wakeup>, delivered: Vec<(DeviceId, u64)>) {
    if let Some(wakeup) = Wakeup::mailboxes(delivered) {
        let _ = wakeups.send(wakeup);
    }
}

/// A mailbox page's rows (see [`MailboxPage::from_rows`]) and the device's `dropped`.
/// Payloads only while the page stays within FETCH_BYTE_BUDGET (the first one always):
/// lengths come from the rows, payloads are read for the page only. One read transaction.
fn fetch_page(
    conn: &rusqlite::Connection,
    device: DeviceId,
    after: u64,
    limit: u32,
) -> Result<(Vec<MailboxRow>, i64), StoreError> {
    let tx = conn.unchecked_transaction()?;
    let rows = {
        let mut statement = tx.prepare_cached(
            "WITH page AS ( \
               SELECT seq, SUM(len) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) - len \
                 AS before \
               FROM (SELECT seq, length(payload) AS len FROM mailbox \
                     WHERE device_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3)) \
             SELECT m.seq, CASE WHEN page.before < ?4 THEN m.payload END, m.received_at \
             FROM page JOIN mailbox m ON m.device_id = ?1 AND m.seq = page.seq \
             ORDER BY m.seq",
        )?;
        statement
            .query_map(
                rusqlite::params![
                    device.as_bytes().as_slice(),
                    int(after),
                    i64::from(limit) + 1,
                    int(super::FETCH_BYTE_BUDGET as u64),
                ],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )?
            .collect::<Result<Vec<_>, _>>()?
    };
    let dropped: Option<i64> = {
        use rusqlite::OptionalExtension as _;
        tx.prepare_cached("SELECT dropped FROM devices WHERE device_id = ?1")?
            .query_row([device.as_bytes().as_slice()], |row| row.get(0))
            .optional()?
    };
    tx.finish()?;
    Ok((rows, dropped.unwrap_or(0)))
}
