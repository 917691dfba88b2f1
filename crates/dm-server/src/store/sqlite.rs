//! The SQLite [`Store`]: one file in WAL mode with `synchronous=FULL`, so an acknowledged
//! message survives power loss. Every write transaction starts with `BEGIN IMMEDIATE`, which
//! takes the write lock up front: deferred transactions that read and then write would fail
//! with `SQLITE_BUSY` under concurrency instead of waiting for the busy timeout.

use std::str::FromStr;
use std::time::Duration;

use dm_wire::api::KeyPackageStock;
use dm_wire::api::limits::MAX_KEY_PACKAGES_PER_DEVICE;
use dm_wire::{DeviceId, Handle};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, SqliteConnection, Transaction};

use super::{
    Account, Challenge, Claim, Device, NewAccount, NewKeyPackage, OutgoingMessage, Registration,
    SendOutcome, Store, StoreError, StoreFuture, StoreStats, StoredEnvelope, SweepStats, Wakeup,
    retention, sequence,
};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Wakeups buffered per subscriber before it lags (and resynchronises).
const WAKEUP_CAPACITY: usize = 4096;
/// How long a connection waits for another writer before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections in the pool (SQLite has one writer at a time; readers run in parallel).
const MAX_CONNECTIONS: u32 = 8;

/// The relay's state in one SQLite database file.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    wakeups: tokio::sync::broadcast::Sender<Wakeup>,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `url` (`sqlite://path`) and applies
    /// pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            wakeups: tokio::sync::broadcast::Sender::new(WAKEUP_CAPACITY),
        })
    }

    /// Closes every connection (checkpointing the WAL); later operations fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }
}

/// Unix times, mailbox cursors and counters are `u64` in the API and `INTEGER` (i64) in
/// SQLite. Values above `i64::MAX` (centuries away as times; unreachable as counters)
/// saturate: the conversion is checked and order-preserving, so a comparison with a stored
/// value (`seq > after`, `seq <= up_to`, `not_after > now`) means the same for every `u64`
/// (nothing is after `u64::MAX`, everything is up to it). It never wraps to a negative.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn uint(v: i64, what: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(what))
}

fn handle(s: &str) -> Result<Handle, StoreError> {
    Handle::from_canonical(s).map_err(|_| StoreError::Corrupt("handle"))
}

fn device_id(b: &[u8]) -> Result<DeviceId, StoreError> {
    DeviceId::from_slice(b).map_err(|_| StoreError::Corrupt("device id"))
}

fn key32(b: &[u8]) -> Result<[u8; 32], StoreError> {
    b.try_into().map_err(|_| StoreError::Corrupt("32-byte key"))
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

/// Appends a payload to a device's mailbox under the next sequence number of that device.
async fn deliver(
    conn: &mut SqliteConnection,
    device: &[u8],
    payload: &[u8],
    now_ms: u64,
) -> Result<u64, StoreError> {
    let seq: i64 = sqlx::query_scalar(
        "UPDATE devices SET mailbox_seq = mailbox_seq + 1 WHERE device_id = ? \
         RETURNING mailbox_seq",
    )
    .bind(device)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO mailbox (device_id, seq, payload, received_at) VALUES (?, ?, ?, ?)")
        .bind(device)
        .bind(seq)
        .bind(payload)
        .bind(int(now_ms))
        .execute(&mut *conn)
        .await?;
    uint(seq, "seq")
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
                    .fetch_optional(&self.pool)
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
                    .fetch_optional(&self.pool)
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
            .fetch_optional(&self.pool)
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
            let mut conn = self.pool.acquire().await?;
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
            let mut tx = self.write().await?;
            let device_list: Vec<u8> =
                sqlx::query_scalar("SELECT device_list FROM accounts WHERE handle = ?")
                    .bind(handle_.as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::UnknownHandle)?;
            let devices: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT device_id FROM devices WHERE handle = ? AND device_id <> ? \
                 ORDER BY created_at, device_id",
            )
            .bind(handle_.as_str())
            .bind(claimed_by.as_bytes().as_slice())
            .fetch_all(&mut *tx)
            .await?;
            let mut key_packages = Vec::with_capacity(devices.len());
            for dev in devices {
                let one_time: Option<(i64, Vec<u8>, Vec<u8>, bool)> = sqlx::query_as(
                    "SELECT id, kp_ref, key_package, last_resort FROM key_packages \
                     WHERE device_id = ? AND last_resort = 0 AND claimed_at IS NULL \
                       AND not_after > ? \
                     ORDER BY id LIMIT 1",
                )
                .bind(dev.as_slice())
                .bind(int(now))
                .fetch_optional(&mut *tx)
                .await?;
                let chosen = match one_time {
                    Some(row) => Some(row),
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
            tx.commit().await?;
            Ok(Claim {
                device_list,
                key_packages,
            })
        })
    }

    fn send(&self, msg: OutgoingMessage, now_ms: u64) -> StoreFuture<'_, SendOutcome> {
        Box::pin(async move {
            let sender = msg.sender.as_bytes().as_slice();
            let group = msg.group_id.as_slice();
            let mut tx = self.write().await?;

            // A retry is answered like the original, before any ordering rule applies.
            let previous: Option<(Vec<u8>, i64)> = sqlx::query_as(
                "SELECT message_hash, epoch FROM sent_messages \
                 WHERE sender_device = ? AND message_id = ?",
            )
            .bind(sender)
            .bind(msg.id.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((hash, epoch)) = previous {
                return if hash == msg.message_hash {
                    Ok(SendOutcome {
                        epoch: uint(epoch, "epoch")?,
                        duplicate: true,
                    })
                } else {
                    Err(StoreError::IdReused)
                };
            }

            let current: Option<i64> =
                sqlx::query_scalar("SELECT epoch FROM groups WHERE group_id = ?")
                    .bind(group)
                    .fetch_optional(&mut *tx)
                    .await?;
            let current = current.map(|e| uint(e, "epoch")).transpose()?;
            let is_member: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM group_members WHERE group_id = ? AND device_id = ?",
            )
            .bind(group)
            .bind(sender)
            .fetch_optional(&mut *tx)
            .await?;
            let sequenced = sequence(current, is_member.is_some(), msg.kind, msg.epoch)?;

            // The relay's epoch column is an i64: a commit that would pass it cannot be
            // sequenced (like one that would pass u64::MAX in `sequence`).
            let new_epoch =
                i64::try_from(sequenced.new_epoch).map_err(|_| StoreError::EpochConflict {
                    current: current.unwrap_or_default(),
                })?;

            // A Welcome goes only to devices whose key package the sender itself claimed:
            // otherwise any member could put any device on the delivery list.
            let mut welcomed: Vec<Vec<u8>> = Vec::new();
            if let Some(welcome) = &msg.welcome {
                for kp_ref in &welcome.kp_refs {
                    let dev: Vec<u8> = sqlx::query_scalar(
                        "SELECT kp.device_id FROM key_packages kp WHERE kp.kp_ref = ?1 AND ( \
                           (kp.last_resort = 0 AND kp.claimed_by = ?2) \
                           OR (kp.last_resort = 1 AND EXISTS ( \
                             SELECT 1 FROM key_package_claims c \
                             WHERE c.kp_ref = kp.kp_ref AND c.claimed_by = ?2)))",
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

            // Only current members other than the sender can be taken off the list.
            for dev in &msg.removed_devices {
                if *dev == msg.sender {
                    return Err(StoreError::InvalidRemoval(
                        "removed_devices must not name the sending device",
                    ));
                }
                let on_list: Option<i64> = sqlx::query_scalar(
                    "SELECT 1 FROM group_members WHERE group_id = ? AND device_id = ?",
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
                sqlx::query("INSERT INTO groups (group_id, epoch, created_at) VALUES (?, ?, ?)")
                    .bind(group)
                    .bind(new_epoch)
                    .bind(int(now_ms / 1000))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO group_members (group_id, device_id) VALUES (?, ?)")
                    .bind(group)
                    .bind(sender)
                    .execute(&mut *tx)
                    .await?;
            } else if Some(sequenced.new_epoch) != current {
                sqlx::query("UPDATE groups SET epoch = ? WHERE group_id = ?")
                    .bind(new_epoch)
                    .bind(group)
                    .execute(&mut *tx)
                    .await?;
            }

            let recipients: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT device_id FROM group_members WHERE group_id = ? AND device_id <> ? \
                 ORDER BY device_id",
            )
            .bind(group)
            .bind(sender)
            .fetch_all(&mut *tx)
            .await?;
            let mut delivered: Vec<(Vec<u8>, u64)> = Vec::new();
            for dev in &recipients {
                let seq = deliver(&mut tx, dev, &msg.message, now_ms).await?;
                delivered.push((dev.clone(), seq));
            }
            if let Some(welcome) = &msg.welcome {
                for dev in &welcomed {
                    let seq = deliver(&mut tx, dev, &welcome.message, now_ms).await?;
                    delivered.push((dev.clone(), seq));
                    sqlx::query(
                        "INSERT INTO group_members (group_id, device_id) VALUES (?, ?) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(group)
                    .bind(dev.as_slice())
                    .execute(&mut *tx)
                    .await?;
                }
            }
            for dev in &msg.removed_devices {
                sqlx::query("DELETE FROM group_members WHERE group_id = ? AND device_id = ?")
                    .bind(group)
                    .bind(dev.as_bytes().as_slice())
                    .execute(&mut *tx)
                    .await?;
            }

            sqlx::query(
                "INSERT INTO sent_messages (sender_device, message_id, message_hash, epoch, sent_at) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(sender)
            .bind(msg.id.as_bytes().as_slice())
            .bind(msg.message_hash.as_slice())
            .bind(new_epoch)
            .bind(int(now_ms / 1000))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            for (dev, seq) in delivered {
                // No subscriber is not an error.
                let _ = self.wakeups.send(Wakeup::Mailbox {
                    device_id: device_id(&dev)?,
                    seq,
                });
            }
            Ok(SendOutcome {
                epoch: sequenced.new_epoch,
                duplicate: false,
            })
        })
    }

    fn fetch(
        &self,
        device: DeviceId,
        after: u64,
        limit: u32,
    ) -> StoreFuture<'_, (Vec<StoredEnvelope>, bool)> {
        Box::pin(async move {
            let rows: Vec<(i64, Vec<u8>, i64)> = sqlx::query_as(
                "SELECT seq, payload, received_at FROM mailbox \
                 WHERE device_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            )
            .bind(device.as_bytes().as_slice())
            .bind(int(after))
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.pool)
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
            Ok((envelopes, more))
        })
    }

    fn ack(&self, device: DeviceId, up_to: u64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut tx = self.write().await?;
            sqlx::query("DELETE FROM mailbox WHERE device_id = ? AND seq <= ?")
                .bind(device.as_bytes().as_slice())
                .bind(int(up_to))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Wakeup> {
        self.wakeups.subscribe()
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
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
                .fetch_one(&self.pool)
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
                .saturating_sub(retention::ENVELOPE_SECS)
                .saturating_mul(1000));
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
            tx.commit().await?;
            Ok(SweepStats {
                challenges,
                sessions,
                key_packages,
                key_package_claims,
                envelopes,
                sent_messages,
            })
        })
    }
}
