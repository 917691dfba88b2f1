//! Persistent state of the relay behind one [`Store`] trait.
//!
//! The trait speaks in domain operations ("register this account", "accept this message"),
//! each of which an implementation performs atomically, so that SQLite
//! ([`sqlite::SqliteStore`], one relay process) and PostgreSQL
//! ([`postgres::PostgresStore`], several relay processes sharing one database) satisfy it
//! alike; [`open`] picks one by the database URL's scheme. The ordering rules of the
//! delivery service live in [`sequence`], shared by every implementation.
//!
//! What is stored: accounts (handle, account key, signed device list), devices (device key,
//! mailbox counters: last sequence number, envelopes held, envelopes dropped), login
//! challenges, hashed session tokens, key packages and who claimed them, a log of the last
//! hour's claims (for the claim limits), per-group epoch and delivery list, per-device
//! mailboxes of opaque MLS messages, and the (device, message id) pairs that make retries
//! idempotent. Never a private key or a plaintext.

mod convert;
pub mod postgres;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use dm_wire::api::KeyPackageStock;
use dm_wire::{DeviceId, Handle, MessageId};

/// The future returned by every [`Store`] operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Why a store operation failed: either a rule of the relay refused it, or the database
/// failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An account with this handle exists.
    #[error("handle taken")]
    HandleTaken,
    /// A device with this id exists (device ids are unique across the relay).
    #[error("device id taken")]
    DeviceTaken,
    /// No account has this handle.
    #[error("unknown handle")]
    UnknownHandle,
    /// Storing the upload would exceed the per-device limit of one-time key packages.
    #[error("too many key packages (max {max})")]
    TooManyKeyPackages {
        /// The limit.
        max: u32,
    },
    /// The sender is not on the group's delivery list (or the group does not exist and the
    /// message cannot create it).
    #[error("not a member")]
    NotMember,
    /// A handshake message for an epoch other than the group's current one.
    #[error("epoch conflict (group at epoch {current})")]
    EpochConflict {
        /// The group's epoch.
        current: u64,
    },
    /// An application message for an epoch the group has not reached.
    #[error("message from a future epoch (group at epoch {current})")]
    FutureEpoch {
        /// The group's epoch.
        current: u64,
    },
    /// A Welcome names a key package reference that the sending device did not claim (or
    /// that the relay never stored).
    #[error("welcome names a key package the sender did not claim")]
    UnclaimedKeyPackageRef,
    /// `removed_devices` names a device that is not on the group's delivery list, or the
    /// sender itself.
    #[error("invalid removal: {0}")]
    InvalidRemoval(&'static str),
    /// The message id was used before by this device for different bytes.
    #[error("message id reused")]
    IdReused,
    /// A published device list is signed by another key than the account's.
    #[error("device list signed by another account key")]
    WrongAccountKey,
    /// A published device list's sequence is not greater than the stored one.
    #[error("stale device list (stored sequence {current})")]
    StaleDeviceList {
        /// The stored list's sequence.
        current: u64,
        /// The stored encoded list (returned to the publisher, who proved possession of
        /// the account key, so that a recovering device can build on it).
        device_list: Vec<u8>,
    },
    /// A published device list gives a registered device another key.
    #[error("a device's key cannot change")]
    DeviceKeyChanged,
    /// A link slot is in use.
    #[error("link slot in use")]
    LinkSlotTaken,
    /// The requesting device made too many key package claims in the last hour.
    #[error("too many key package claims (retry after {retry_after_secs} s)")]
    RateLimited {
        /// Seconds until the oldest claim of the window leaves it.
        retry_after_secs: u64,
    },
    /// The database URL names no engine this build supports.
    #[error("unsupported database URL (expected sqlite://PATH or postgres://...)")]
    UnsupportedDatabaseUrl,
    /// The store was closed (the relay is shutting down).
    #[error("the store is closed")]
    Closed,
    /// The operation succeeded, but the transaction it was batched in (with other
    /// operations, see [`sqlite`]) failed to commit: it did not happen.
    #[error("committing the batch failed: {0}")]
    BatchCommit(Arc<rusqlite::Error>),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database failed, on the SQLite writer thread's own connection (see [`sqlite`]).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema migration failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value is not what the relay wrote.
    #[error("corrupt stored value: {0}")]
    Corrupt(&'static str),
}

/// An account to create, with its first device.
#[derive(Clone, Debug)]
pub struct NewAccount {
    /// The handle.
    pub handle: Handle,
    /// The account key (Ed25519).
    pub account_key: [u8; 32],
    /// The encoded, verified device list.
    pub device_list: Vec<u8>,
    /// The device list's sequence number.
    pub sequence: u64,
    /// The account's first device.
    pub device_id: DeviceId,
    /// That device's signature key (Ed25519).
    pub device_key: [u8; 32],
}

/// A stored account.
#[derive(Clone, Debug)]
pub struct Account {
    /// The handle.
    pub handle: Handle,
    /// The current encoded device list.
    pub device_list: Vec<u8>,
}

/// A new device list for an existing account, already verified by the caller.
#[derive(Clone, Debug)]
pub struct DeviceListUpdate {
    /// The account.
    pub handle: Handle,
    /// The key that signed the list; must be the account's registered key.
    pub account_key: [u8; 32],
    /// The encoded list.
    pub device_list: Vec<u8>,
    /// Its sequence; must exceed the stored list's.
    pub sequence: u64,
    /// Every device of the list with its key.
    pub devices: Vec<(DeviceId, [u8; 32])>,
}

/// What a device list update changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceListChange {
    /// Devices registered by the update.
    pub added: Vec<DeviceId>,
    /// Devices deleted by the update (with their sessions, key packages, mailboxes and
    /// group memberships).
    pub removed: Vec<DeviceId>,
}

/// What a device-link slot holds (both opaque to the relay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkSlotContent {
    /// The new device's request.
    pub request: Vec<u8>,
    /// The approving device's response, once there is one.
    pub response: Option<Vec<u8>>,
}

/// A registered device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// The device.
    pub device_id: DeviceId,
    /// The account it belongs to.
    pub handle: Handle,
    /// Its signature key (Ed25519), as in its certificate and MLS credentials.
    pub device_key: [u8; 32],
}

/// A login challenge issued to a (handle, device) pair.
#[derive(Clone, Debug)]
pub struct Challenge {
    /// The random challenge bytes.
    pub challenge: Vec<u8>,
    /// The handle it was issued for.
    pub handle: Handle,
    /// The device it was issued for.
    pub device_id: DeviceId,
    /// Unix seconds after which it is refused.
    pub expires_at: u64,
}

/// A validated key package ready to store.
#[derive(Clone, Debug)]
pub struct NewKeyPackage {
    /// Its `KeyPackageRef` (hash reference).
    pub kp_ref: Vec<u8>,
    /// The TLS-encoded `MLSMessage`, exactly as uploaded.
    pub key_package: Vec<u8>,
    /// Unix seconds after which it must not be handed out.
    pub not_after: u64,
}

/// Key packages claimed for an account's devices.
#[derive(Clone, Debug)]
pub struct Claim {
    /// The account's current encoded device list.
    pub device_list: Vec<u8>,
    /// One key package per device that had one, in device order.
    pub key_packages: Vec<(DeviceId, Vec<u8>)>,
}

/// What an MLS message is, as read from its cleartext header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentKind {
    /// Application data.
    Application,
    /// A proposal.
    Proposal,
    /// A commit.
    Commit,
}

/// A message to sequence and deliver.
#[derive(Clone, Debug)]
pub struct OutgoingMessage {
    /// The sending device.
    pub sender: DeviceId,
    /// The sender's message id.
    pub id: MessageId,
    /// SHA-256 of `message`, to recognise retries.
    pub message_hash: [u8; 32],
    /// The MLS group id from the header.
    pub group_id: Vec<u8>,
    /// The epoch from the header.
    pub epoch: u64,
    /// The content type from the header.
    pub kind: ContentKind,
    /// The TLS-encoded `MLSMessage`.
    pub message: Vec<u8>,
    /// With a commit: the Welcome and the key package references it is encrypted to.
    pub welcome: Option<OutgoingWelcome>,
    /// With a commit: devices to take off the delivery list (each must be on it, and not be
    /// the sender).
    pub removed_devices: Vec<DeviceId>,
}

/// A Welcome to route to the devices whose key packages it names (each of which the sending
/// device must have claimed).
#[derive(Clone, Debug)]
pub struct OutgoingWelcome {
    /// The TLS-encoded Welcome `MLSMessage`.
    pub message: Vec<u8>,
    /// The `KeyPackageRef`s of its `secrets` (deduplicated).
    pub kp_refs: Vec<Vec<u8>>,
}

/// The relay's answer to an accepted message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendOutcome {
    /// The group's epoch after the message.
    pub epoch: u64,
    /// Whether this was a retry of an accepted message.
    pub duplicate: bool,
    /// Which mailboxes received an envelope (the message, or a Welcome) under which
    /// sequence number. Empty for a duplicate; a device whose mailbox was full is not
    /// listed (its `dropped` counter counted the envelope instead).
    pub delivered: Vec<(DeviceId, u64)>,
}

/// One envelope read from a mailbox.
#[derive(Clone, Debug)]
pub struct StoredEnvelope {
    /// Position in the mailbox.
    pub seq: u64,
    /// The MLS message.
    pub payload: Vec<u8>,
    /// When it was stored (unix milliseconds).
    pub received_at: u64,
}

/// A row of a mailbox fetch query: `(seq, payload, received_at)`, the payload `None` where
/// the page's byte budget ran out.
pub(crate) type MailboxRow = (i64, Option<Vec<u8>>, i64);

/// A page of a device's mailbox.
#[derive(Clone, Debug, Default)]
pub struct MailboxPage {
    /// Envelopes in increasing `seq` order.
    pub envelopes: Vec<StoredEnvelope>,
    /// Whether more envelopes wait after the last one.
    pub more: bool,
    /// Envelopes for this device that were not stored because its mailbox was full
    /// (monotonic, since the device was registered).
    pub dropped: u64,
}

impl MailboxPage {
    /// A page from the rows of a fetch query: `(seq, payload, received_at)` in `seq` order,
    /// at most `limit + 1` of them, the payload `None` where the byte budget ran out. More
    /// wait if there was a row beyond `limit` or one beyond the budget.
    pub(crate) fn from_rows(
        rows: Vec<MailboxRow>,
        limit: u32,
        dropped: i64,
    ) -> Result<Self, StoreError> {
        let count = |v: i64, what| u64::try_from(v).map_err(|_| StoreError::Corrupt(what));
        // Checked: a limit that does not fit a usize is no limit.
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let mut more = rows.len() > limit;
        let mut envelopes = Vec::with_capacity(rows.len().min(limit));
        for (seq, payload, received_at) in rows.into_iter().take(limit) {
            let Some(payload) = payload else {
                more = true;
                break;
            };
            envelopes.push(StoredEnvelope {
                seq: count(seq, "seq")?,
                payload,
                received_at: count(received_at, "received_at")?,
            });
        }
        Ok(Self {
            envelopes,
            more,
            dropped: count(dropped, "dropped")?,
        })
    }
}

/// How many rows a sweep deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Expired challenges.
    pub challenges: u64,
    /// Expired sessions.
    pub sessions: u64,
    /// Expired or long-claimed key packages.
    pub key_packages: u64,
    /// Records of last-resort key package claims older than their retention.
    pub key_package_claims: u64,
    /// Envelopes older than the retention limit.
    pub envelopes: u64,
    /// Idempotency records older than their retention.
    pub sent_messages: u64,
    /// Expired device-link slots.
    pub link_slots: u64,
    /// Records of key package claims that left the rate limits' one-hour window.
    pub claim_log: u64,
}

/// How long the relay keeps things, in seconds. Apart from the claim limits' window, all of
/// them are the one published [`dm_wire::api::limits::MAILBOX_RETENTION_SECS`]: whatever a
/// client may still retry or route (a send, a Welcome to a claimed key package) stays known
/// as long as the envelopes it produced can wait in a mailbox (by default).
pub mod retention {
    use dm_wire::api::limits::{IDEMPOTENCY_RETENTION_SECS, MAILBOX_RETENTION_SECS};

    /// A claimed one-time key package (or a replaced last-resort one), and the record of
    /// each claim of a last-resort one, stay this long, so a Welcome encrypted to it can
    /// still be routed by its reference.
    pub const CLAIMED_KEY_PACKAGE_SECS: u64 = MAILBOX_RETENTION_SECS;
    /// An unacknowledged envelope is deleted after this long, unless the operator sets
    /// another [`super::StoreOptions::envelope_retention_secs`].
    pub const ENVELOPE_SECS: u64 = MAILBOX_RETENTION_SECS;
    /// The window of the key package claim limits
    /// ([`super::StoreOptions::claims_per_requester_per_hour`] and
    /// [`super::StoreOptions::one_time_claims_per_target_per_hour`]); a claim record is
    /// swept once it left the window.
    pub const CLAIM_WINDOW_SECS: u64 = 3600;
    /// A (device, message id) record that makes retries idempotent is kept this long: as
    /// long as the envelopes of the accepted message.
    pub const SENT_MESSAGE_SECS: u64 = IDEMPOTENCY_RETENTION_SECS;
}

/// Most payload bytes one [`Store::fetch`] returns (always at least one envelope, whatever
/// its size): bounds the memory a mailbox page or a push batch costs the relay.
pub const FETCH_BYTE_BUDGET: usize = 4 * 1024 * 1024;

/// Limits a store enforces, set by the operator (see the relay's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Envelopes a device's mailbox may hold. Further envelopes for a full mailbox are not
    /// stored; the device's `dropped` counter counts them, so it learns what it missed.
    pub mailbox_quota: u32,
    /// An unacknowledged envelope is deleted after this many seconds.
    pub envelope_retention_secs: u64,
    /// Key package claims one device may make per hour, over all targets (beyond: refused,
    /// rate limited).
    pub claims_per_requester_per_hour: u32,
    /// One-time key packages handed out per target account per hour; beyond this, claims
    /// get the target devices' last-resort packages, so a conversation can still start but
    /// the one-time stock cannot be drained.
    pub one_time_claims_per_target_per_hour: u32,
    /// PostgreSQL: connections in the pool (the listener and the notifier have one more
    /// each). SQLite ignores it.
    pub database_connections: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            mailbox_quota: 10_000,
            envelope_retention_secs: retention::ENVELOPE_SECS,
            claims_per_requester_per_hour: 120,
            one_time_claims_per_target_per_hour: 30,
            database_connections: 16,
        }
    }
}

/// Wakeups a [`Store::subscribe`] receiver may fall behind by before it is told it lagged.
pub(crate) const WAKEUP_CAPACITY: usize = 4096;

/// A signal that new envelopes wait, published to every relay instance sharing the store.
///
/// Cheap to clone: the devices of a batch are shared, not copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// These devices' mailboxes hold new envelopes: each device once, with the highest
    /// sequence number stored for it (earlier ones of the same batch are implied). One
    /// wakeup covers a whole batch: a SQLite group commit, or one PostgreSQL notification.
    Mailboxes(Arc<[(DeviceId, u64)]>),
    /// Signals may have been lost (a listener reconnected or lagged): every subscriber
    /// should check its mailbox.
    Resync,
}

impl Wakeup {
    /// The wakeup of stored envelopes `(device, seq)`, each device once with its highest
    /// sequence number (in device order); `None` when nothing was stored.
    pub fn mailboxes(delivered: impl IntoIterator<Item = (DeviceId, u64)>) -> Option<Self> {
        let mut devices: Vec<(DeviceId, u64)> = delivered.into_iter().collect();
        if devices.is_empty() {
            return None;
        }
        // Highest sequence number first within a device, then keep the first of each.
        devices.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        devices.dedup_by_key(|entry| entry.0);
        Some(Self::Mailboxes(devices.into()))
    }
}

/// Counts for the relay's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Registered accounts.
    pub accounts: u64,
    /// Registered devices.
    pub devices: u64,
    /// Envelopes waiting in all mailboxes.
    pub envelopes: u64,
    /// Unclaimed, unexpired one-time key packages of all devices.
    pub one_time_key_packages: u64,
    /// Devices without an unclaimed, unexpired one-time key package.
    pub devices_without_one_time_key_packages: u64,
}

/// What [`Store::create_account`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// The account was created.
    Created,
    /// The account existed with this very device list: a retried registration, answered
    /// like the original without changing anything.
    Repeated,
}

/// The relay's persistent state. Every operation is atomic.
///
/// Times are passed in (unix seconds unless stated), so callers decide what "now" is.
pub trait Store: Send + Sync + 'static {
    /// Creates an account and its first device. If the handle is registered already with
    /// a byte-identical device list, changes nothing and answers
    /// [`Registration::Repeated`]. Fails with [`StoreError::HandleTaken`] (another device
    /// list) or [`StoreError::DeviceTaken`].
    fn create_account(&self, account: NewAccount, now: u64) -> StoreFuture<'_, Registration>;

    /// The account with this handle.
    fn account<'a>(&'a self, handle: &'a Handle) -> StoreFuture<'a, Option<Account>>;

    /// A registered device.
    fn device<'a>(&'a self, device_id: &'a DeviceId) -> StoreFuture<'a, Option<Device>>;

    /// Stores a login challenge.
    fn put_challenge(&self, challenge: Challenge) -> StoreFuture<'_, ()>;

    /// Deletes and returns a challenge (whether or not it has expired): each is usable once.
    fn take_challenge<'a>(&'a self, challenge: &'a [u8]) -> StoreFuture<'a, Option<Challenge>>;

    /// Stores a session: the SHA-256 of its token, the device and the expiry.
    fn create_session(
        &self,
        token_hash: [u8; 32],
        device_id: DeviceId,
        expires_at: u64,
    ) -> StoreFuture<'_, ()>;

    /// The device of an unexpired session.
    fn session(&self, token_hash: [u8; 32], now: u64) -> StoreFuture<'_, Option<Device>>;

    /// Stores validated key packages of a device (duplicates of stored ones are ignored) and
    /// replaces its last-resort key package if one is given. Nothing is stored if the
    /// one-time packages would exceed [`dm_wire::api::limits::MAX_KEY_PACKAGES_PER_DEVICE`].
    fn add_key_packages(
        &self,
        device_id: DeviceId,
        one_time: Vec<NewKeyPackage>,
        last_resort: Option<NewKeyPackage>,
        now: u64,
    ) -> StoreFuture<'_, KeyPackageStock>;

    /// The device's stock of unclaimed, unexpired key packages.
    fn key_package_stock(&self, device_id: DeviceId, now: u64) -> StoreFuture<'_, KeyPackageStock>;

    /// Claims one key package for every current device of an account: the oldest unclaimed
    /// unexpired one-time package, else the last-resort one (which stays). Records that
    /// `claimed_by` claimed each of them, so that only `claimed_by` can route a Welcome to
    /// them. Fails with [`StoreError::UnknownHandle`].
    ///
    /// Limits, enforced in the database (so they hold across relay instances), over the
    /// last [`retention::CLAIM_WINDOW_SECS`]: a requesting device may claim at most
    /// [`StoreOptions::claims_per_requester_per_hour`] times (beyond:
    /// [`StoreError::RateLimited`], nothing claimed or recorded); at most
    /// [`StoreOptions::one_time_claims_per_target_per_hour`] one-time packages of one
    /// account are handed out (beyond: its devices' last-resort packages).
    fn claim_key_packages<'a>(
        &'a self,
        handle: &'a Handle,
        claimed_by: DeviceId,
        now: u64,
    ) -> StoreFuture<'a, Claim>;

    /// Sequences a message in its group and delivers it (and its Welcome) to mailboxes,
    /// following [`sequence`], all in one transaction. `now_ms` is unix milliseconds.
    ///
    /// In order: a retry of an accepted message is answered like the original
    /// ([`StoreError::IdReused`] for other bytes); then [`sequence`] decides; then every
    /// Welcome reference must name a key package the sender claimed
    /// ([`StoreError::UnclaimedKeyPackageRef`]) and every removed device must be on the
    /// delivery list and not be the sender ([`StoreError::InvalidRemoval`]). A refused
    /// message changes nothing.
    ///
    /// A recipient whose mailbox holds [`StoreOptions::mailbox_quota`] envelopes gets
    /// nothing; its `dropped` counter counts the envelope and the send goes on for the
    /// others. Every stored envelope is published to [`Store::subscribe`] once committed.
    fn send(&self, message: OutgoingMessage, now_ms: u64) -> StoreFuture<'_, SendOutcome>;

    /// Envelopes of a device's mailbox with `seq > after`, ascending, at most `limit` and
    /// at most [`FETCH_BYTE_BUDGET`] payload bytes (but at least one envelope), whether
    /// more wait, and the device's `dropped` counter.
    fn fetch(&self, device_id: DeviceId, after: u64, limit: u32) -> StoreFuture<'_, MailboxPage>;

    /// Deletes a device's envelopes with `seq <= up_to`.
    fn ack(&self, device_id: DeviceId, up_to: u64) -> StoreFuture<'_, ()>;

    /// Replaces an account's device list (see [`DeviceListUpdate`]) in one transaction:
    /// registers the devices new in the list and deletes the devices absent from it.
    /// Fails with [`StoreError::UnknownHandle`], [`StoreError::WrongAccountKey`],
    /// [`StoreError::StaleDeviceList`], [`StoreError::DeviceTaken`] (a new device's id
    /// belongs to another account) or [`StoreError::DeviceKeyChanged`].
    fn update_device_list(
        &self,
        update: DeviceListUpdate,
        now: u64,
    ) -> StoreFuture<'_, DeviceListChange>;

    /// Deletes an account with all its devices (and their sessions, key packages,
    /// mailboxes and group memberships). The handle becomes free. Fails with
    /// [`StoreError::UnknownHandle`].
    fn delete_account<'a>(&'a self, handle: &'a Handle) -> StoreFuture<'a, ()>;

    /// Stores a link request in a free (or expired) slot until `expires_at` (unix
    /// seconds). Fails with [`StoreError::LinkSlotTaken`].
    fn put_link_request(
        &self,
        slot: [u8; 16],
        request: Vec<u8>,
        now: u64,
        expires_at: u64,
    ) -> StoreFuture<'_, ()>;

    /// The request and response (if any) of an unexpired slot.
    fn link_slot(&self, slot: [u8; 16], now: u64) -> StoreFuture<'_, Option<LinkSlotContent>>;

    /// Stores the response of an unexpired slot that has none yet; returns false if there
    /// is no such slot.
    fn put_link_response(
        &self,
        slot: [u8; 16],
        response: Vec<u8>,
        now: u64,
    ) -> StoreFuture<'_, bool>;

    /// Succeeds when the database answers (readiness).
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// Counts for the metrics.
    fn stats(&self, now: u64) -> StoreFuture<'_, StoreStats>;

    /// Deletes expired challenges, sessions, key packages and link slots, old claimed key packages and
    /// claim records, envelopes older than [`StoreOptions::envelope_retention_secs`] and
    /// idempotency records past their [`retention`].
    fn sweep(&self, now: u64) -> StoreFuture<'_, SweepStats>;

    /// Signals that envelopes were stored, from this relay instance and (PostgreSQL) every
    /// other instance sharing the database. A receiver that lags behind by more than the
    /// channel's capacity gets [`tokio::sync::broadcast::error::RecvError::Lagged`]: treat
    /// it like [`Wakeup::Resync`].
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Wakeup>;

    /// Finishes queued writes and closes the database connections; later operations fail
    /// (with [`StoreError::Closed`] or a database error).
    fn close(&self) -> StoreFuture<'_, ()>;
}

/// Opens the store a database URL names: `sqlite://PATH` (the file is created if missing)
/// or `postgres://…` / `postgresql://…` (the database must exist). Applies pending
/// migrations. Fails with [`StoreError::UnsupportedDatabaseUrl`] for any other scheme.
pub async fn open(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    match Engine::of_url(url) {
        Some(Engine::Sqlite) => Ok(Arc::new(sqlite::SqliteStore::connect(url, options).await?)),
        Some(Engine::Postgres) => Ok(Arc::new(
            postgres::PostgresStore::connect(url, options).await?,
        )),
        None => Err(StoreError::UnsupportedDatabaseUrl),
    }
}

/// A storage engine the relay supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// One SQLite file (one relay process).
    Sqlite,
    /// A PostgreSQL database (any number of relay processes).
    Postgres,
}

impl Engine {
    /// The engine a database URL names by its scheme (`sqlite:`, `postgres:`,
    /// `postgresql:`).
    pub fn of_url(url: &str) -> Option<Self> {
        let scheme = url.split_once(':')?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Self::Sqlite),
            "postgres" | "postgresql" => Some(Self::Postgres),
            _ => None,
        }
    }
}

/// What accepting a message does to its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequenced {
    /// The group does not exist yet and this commit creates it.
    pub creates_group: bool,
    /// The group's epoch after the message.
    pub new_epoch: u64,
}

/// The delivery service's ordering rule (RFC 9750): given the group's current epoch (if it
/// exists) and whether the sender is on its delivery list, decides whether a message of
/// `kind` for `epoch` is accepted and what the group's epoch becomes.
///
/// - An unknown group can only be created by a commit for epoch 0.
/// - A commit is accepted only for the current epoch and advances it by one: exactly one
///   commit per epoch.
/// - A proposal must be for the current epoch.
/// - An application message may be for the current or an earlier epoch.
pub fn sequence(
    current: Option<u64>,
    sender_is_member: bool,
    kind: ContentKind,
    epoch: u64,
) -> Result<Sequenced, StoreError> {
    let Some(current) = current else {
        return if kind == ContentKind::Commit && epoch == 0 {
            Ok(Sequenced {
                creates_group: true,
                new_epoch: 1,
            })
        } else {
            Err(StoreError::NotMember)
        };
    };
    if !sender_is_member {
        return Err(StoreError::NotMember);
    }
    match kind {
        ContentKind::Commit if epoch == current => {
            let new_epoch = current
                .checked_add(1)
                .ok_or(StoreError::EpochConflict { current })?;
            Ok(Sequenced {
                creates_group: false,
                new_epoch,
            })
        }
        ContentKind::Proposal if epoch == current => Ok(Sequenced {
            creates_group: false,
            new_epoch: current,
        }),
        ContentKind::Commit | ContentKind::Proposal => Err(StoreError::EpochConflict { current }),
        ContentKind::Application if epoch <= current => Ok(Sequenced {
            creates_group: false,
            new_epoch: current,
        }),
        ContentKind::Application => Err(StoreError::FutureEpoch { current }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_wakeups_name_each_device_once_with_its_highest_seq() {
        let (a, b, c) = (DeviceId([1; 16]), DeviceId([2; 16]), DeviceId([3; 16]));
        assert_eq!(Wakeup::mailboxes([]), None);
        let wakeup = Wakeup::mailboxes([(b, 4), (a, 7), (b, 9), (c, 1), (b, 5), (a, 2)]);
        assert_eq!(
            wakeup,
            Some(Wakeup::Mailboxes(vec![(a, 7), (b, 9), (c, 1)].into()))
        );
    }

    #[test]
    fn engines_by_scheme() {
        assert_eq!(Engine::of_url("sqlite://x.db"), Some(Engine::Sqlite));
        assert_eq!(Engine::of_url("sqlite::memory:"), Some(Engine::Sqlite));
        assert_eq!(Engine::of_url("postgres://u@h/db"), Some(Engine::Postgres));
        assert_eq!(
            Engine::of_url("PostgreSQL://u@h/db"),
            Some(Engine::Postgres)
        );
        for url in ["mysql://h/db", "dm-server.db", "", "sqlite", "http://x"] {
            assert_eq!(Engine::of_url(url), None, "{url}");
        }
    }

    fn ok(r: Result<Sequenced, StoreError>) -> Sequenced {
        r.expect("accepted")
    }

    #[test]
    fn only_an_epoch_zero_commit_creates_a_group() {
        assert_eq!(
            ok(sequence(None, false, ContentKind::Commit, 0)),
            Sequenced {
                creates_group: true,
                new_epoch: 1
            }
        );
        for (kind, epoch) in [
            (ContentKind::Commit, 1),
            (ContentKind::Proposal, 0),
            (ContentKind::Application, 0),
        ] {
            assert!(matches!(
                sequence(None, true, kind, epoch),
                Err(StoreError::NotMember)
            ));
        }
    }

    #[test]
    fn one_commit_per_epoch() {
        assert_eq!(
            ok(sequence(Some(3), true, ContentKind::Commit, 3)).new_epoch,
            4
        );
        for epoch in [2, 4] {
            assert!(matches!(
                sequence(Some(3), true, ContentKind::Commit, epoch),
                Err(StoreError::EpochConflict { current: 3 })
            ));
        }
        assert!(matches!(
            sequence(Some(u64::MAX), true, ContentKind::Commit, u64::MAX),
            Err(StoreError::EpochConflict { .. })
        ));
    }

    #[test]
    fn proposals_and_application_messages() {
        assert_eq!(
            ok(sequence(Some(3), true, ContentKind::Proposal, 3)).new_epoch,
            3
        );
        assert!(matches!(
            sequence(Some(3), true, ContentKind::Proposal, 2),
            Err(StoreError::EpochConflict { current: 3 })
        ));
        assert_eq!(
            ok(sequence(Some(3), true, ContentKind::Application, 1)).new_epoch,
            3
        );
        assert_eq!(
            ok(sequence(Some(3), true, ContentKind::Application, 3)).new_epoch,
            3
        );
        assert!(matches!(
            sequence(Some(3), true, ContentKind::Application, 4),
            Err(StoreError::FutureEpoch { current: 3 })
        ));
    }

    #[test]
    fn non_members_are_refused_everything() {
        for kind in [
            ContentKind::Commit,
            ContentKind::Proposal,
            ContentKind::Application,
        ] {
            assert!(matches!(
                sequence(Some(3), false, kind, 3),
                Err(StoreError::NotMember)
            ));
        }
    }
}
