//! [`Client`]: the public API, and the plumbing every operation shares (the store behind
//! one lock, blocking work off the async executor, relay sessions).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dm_wire::api::{ChallengeRequest, ErrorCode, KeyPackageStock, RegisterRequest, SessionRequest};
use dm_wire::auth::CHALLENGE_LEN;
use dm_wire::cert::DeviceList;
use dm_wire::{DeviceId, Handle};
use e2ee_core::content::MAX_TEXT_BYTES;
use e2ee_core::{AccountSecret, Device, RecoveryCode};
use openmls_sqlite_storage::SqliteStorageProvider;
use rusqlite::Connection;

use crate::db;
use crate::error::Error;
use crate::events::{Event, EventBatch, SentMessage, StoredMessage, WhoAmI};
use crate::store::{JsonCodec, Store};
use crate::transport::Transport;

/// What [`Client::create`] needs.
pub struct CreateOptions {
    /// The account's directory (`store.db` and `store.json` go there).
    pub home: PathBuf,
    /// The relay's base URL, e.g. `http://127.0.0.1:7878`.
    pub server: String,
    /// The handle to register.
    pub handle: Handle,
    /// The passphrase that encrypts the local store.
    pub passphrase: String,
}

impl std::fmt::Debug for CreateOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateOptions")
            .field("home", &self.home)
            .field("server", &self.server)
            .field("handle", &self.handle)
            .field("passphrase", &"<redacted>")
            .finish()
    }
}

/// An account on this device: sends, receives, and keeps the encrypted local store.
///
/// Cheap to clone (all clones share one state); `Send + Sync`. Operations are serialised:
/// each public call that talks to the relay first sends whatever waits in the outbox.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("handle", &self.inner.me)
            .field("device_id", &self.inner.device().id())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) me: Handle,
    /// This device; replaced when it rejoins under a new identity ([`Client::rejoin`]).
    device: std::sync::RwLock<Arc<Device>>,
    pub(crate) own_list: DeviceList,
    pub(crate) store: Mutex<Store>,
    pub(crate) transport: Transport,
    /// Cached session token and its expiry (unix seconds).
    session: tokio::sync::Mutex<Option<(String, u64)>>,
    /// Serialises the public operations within this process.
    pub(crate) op: tokio::sync::Mutex<()>,
    /// When this client last fetched its mailbox and last refreshed device lists before a
    /// send (sends in quick succession do it once, not once each).
    pub(crate) last_prepared:
        std::sync::Mutex<(Option<std::time::Instant>, Option<std::time::Instant>)>,
    /// Locked (advisory, whole file) during each operation: serialises processes.
    lock_path: PathBuf,
}

impl Inner {
    /// This device (as of now).
    pub(crate) fn device(&self) -> Arc<Device> {
        Arc::clone(&self.device.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces this device (after a rejoin).
    pub(crate) fn set_device(&self, device: Device) {
        *self.device.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(device);
    }

    /// Forgets the cached session (it belonged to the replaced device).
    pub(crate) async fn clear_session(&self) {
        *self.session.lock().await = None;
    }
}

/// Held while a public operation runs: the in-process lock and the cross-process file lock
/// (released when the file is closed).
pub(crate) struct OperationGuard<'a> {
    _op: tokio::sync::MutexGuard<'a, ()>,
    _file: std::fs::File,
}

impl Client {
    /// Whether an account exists in `home`.
    pub fn account_exists(home: &Path) -> bool {
        Store::exists(home)
    }

    /// Creates an account: a new account key and device, registered at the relay, with
    /// key packages uploaded. Returns the recovery code, to be shown to the user once.
    ///
    /// Fails with [`Error::AccountExists`] if `home` has an account, and with
    /// [`Error::HandleTaken`] or [`Error::RelayUnreachable`] if registration fails (the
    /// local files are then removed). If only the key-package upload fails, the account is
    /// created and the upload is retried by the next [`Client::sync`].
    pub async fn create(opts: CreateOptions) -> Result<(Client, RecoveryCode), Error> {
        if Store::exists(&opts.home) {
            return Err(Error::AccountExists);
        }
        let transport = Transport::new(&opts.server)?;
        let home = opts.home.clone();
        let handle = opts.handle.clone();
        let server = transport.base().to_owned();
        let passphrase = zeroize::Zeroizing::new(opts.passphrase);
        let created = tokio::task::spawn_blocking(move || {
            let result = create_local(&home, &passphrase, &handle, &server);
            if result.is_err() {
                Store::remove_files(&home);
            }
            result
        })
        .await
        .map_err(join_error)??;
        let Created {
            store,
            device,
            device_list,
            recovery,
        } = created;

        let encoded = device_list.encode();
        let request = RegisterRequest {
            handle: opts.handle.clone(),
            device_proof: device.registration_proof(&encoded)?,
            device_list: encoded,
        };
        if let Err(e) = transport.register(&request).await {
            drop(store);
            Store::remove_files(&opts.home);
            return Err(match e {
                Error::Relay {
                    code: ErrorCode::HandleTaken,
                    ..
                } => Error::HandleTaken(opts.handle),
                other => other,
            });
        }
        let client = Client::from_parts(store, device, device_list, transport);
        let empty = KeyPackageStock {
            one_time: 0,
            last_resort: false,
        };
        if let Err(e) = client.replenish(empty).await {
            tracing::warn!(error = %e, "key package upload failed; the next sync retries");
        }
        Ok((client, recovery))
    }

    /// Opens the account in `home`. Works offline.
    ///
    /// Fails with [`Error::NoAccount`] or [`Error::WrongPassphrase`].
    pub async fn open(home: &Path, passphrase: &str) -> Result<Client, Error> {
        let home = home.to_path_buf();
        let passphrase = zeroize::Zeroizing::new(passphrase.to_owned());
        let (store, device, list, relay) = tokio::task::spawn_blocking(move || {
            let store = Store::open(&home, &passphrase)?;
            let account = db::account(store.conn())?.ok_or(Error::NoAccount)?;
            let storage = SqliteStorageProvider::<JsonCodec, &Connection>::new(store.conn());
            let device = Device::load(&storage, account.certificate)?;
            let relay = db::relay(store.conn())?;
            Ok::<_, Error>((store, device, account.device_list, relay))
        })
        .await
        .map_err(join_error)??;
        let client = Client::from_parts(store, device, list, Transport::new(&relay.url)?);
        if let Some(token) = relay.session_token {
            // The expiry is unknown here; a 401 renews the token.
            *client.inner.session.lock().await = Some((token, u64::MAX));
        }
        Ok(client)
    }

    pub(crate) fn from_parts(
        store: Store,
        device: Device,
        own_list: DeviceList,
        transport: Transport,
    ) -> Self {
        let lock_path = store.home().join(crate::store::LOCK_FILE);
        Client {
            inner: Arc::new(Inner {
                lock_path,
                me: device.handle().clone(),
                device: std::sync::RwLock::new(Arc::new(device)),
                own_list,
                store: Mutex::new(store),
                transport,
                session: tokio::sync::Mutex::new(None),
                op: tokio::sync::Mutex::new(()),
                last_prepared: std::sync::Mutex::new((None, None)),
            }),
        }
    }

    /// Who this client is. Local; no network.
    pub async fn whoami(&self) -> Result<WhoAmI, Error> {
        Ok(WhoAmI {
            handle: self.inner.me.clone(),
            device_id: self.device_id(),
            server: self.inner.transport.base().to_owned(),
            fingerprint: self.inner.own_list.account_key.fingerprint(),
        })
    }

    /// Sends a text to `to`, starting a 1:1 conversation first if there is none (claim the
    /// peer's key packages, validate them against the peer's verified device list, add
    /// them, and wait for the relay to accept the commit). If two conversations with the
    /// peer exist (both sides started one at once), the one with the smallest group id is
    /// used.
    ///
    /// The message is stored in the outbox before it is sent: if the relay is unreachable
    /// the call fails with [`Error::RelayUnreachable`] and a later call sends it.
    pub async fn send(&self, to: &Handle, text: &str) -> Result<SentMessage, Error> {
        if to == &self.inner.me {
            return Err(Error::InvalidInput(
                "you cannot send a message to yourself".into(),
            ));
        }
        if text.len() > MAX_TEXT_BYTES {
            return Err(Error::InvalidInput(format!(
                "the text is longer than {MAX_TEXT_BYTES} bytes"
            )));
        }
        let _op = self.operation().await?;
        self.prepare_send().await?;
        let to_check = to.clone();
        self.blocking(move |store, _| {
            crate::groups::check_not_blocked(store.conn(), std::slice::from_ref(&to_check))
        })
        .await?;
        let to_owned = to.clone();
        let group = match self
            .blocking(move |store, _| db::conversation_with(store.conn(), &to_owned))
            .await?
        {
            Some(group) => group,
            None => {
                let group = self.start_conversation(to).await?;
                self.flush_outbox().await?;
                group
            }
        };
        let sent = self.queue_text(group, text.to_owned()).await?;
        self.flush_outbox().await?;
        Ok(sent)
    }

    /// Sends the outbox, fetches and processes every waiting envelope, acknowledges them,
    /// and tops up key packages. Returns the events since the last call and forgets them.
    ///
    /// An app that must not miss an event if it crashes before showing it uses
    /// [`Client::sync_events`] and [`Client::acknowledge_events`] instead.
    pub async fn sync(&self) -> Result<Vec<Event>, Error> {
        let batch = self.sync_events().await?;
        self.acknowledge_events(&batch).await?;
        Ok(batch.events)
    }

    /// Like [`Client::sync`], but the events stay queued until
    /// [`Client::acknowledge_events`]: delivery to the app is at least once. After a crash
    /// between the two calls, the next call returns the same events again (each message
    /// event carries its message id, to recognise a repeat).
    pub async fn sync_events(&self) -> Result<EventBatch, Error> {
        let _op = self.operation().await?;
        self.flush_outbox().await?;
        self.sync_mailbox().await?;
        if self
            .blocking(|store, _| db::rejoin_needed(store.conn()))
            .await?
        {
            self.rejoin_locked().await?;
        }
        self.follow_device_lists().await?;
        let (events, up_to) = self
            .blocking(|store, _| db::queued_events(store.conn()))
            .await?;
        Ok(EventBatch { events, up_to })
    }

    /// Forgets the events of a batch (and any earlier ones): the app has shown or stored them.
    pub async fn acknowledge_events(&self, batch: &EventBatch) -> Result<(), Error> {
        let up_to = batch.up_to;
        self.blocking(move |store, _| db::delete_events_up_to(store.conn(), up_to))
            .await
    }

    /// Renews this device's keys in the conversation with `peer` (a self-update commit:
    /// post-compromise security).
    pub async fn rotate_keys(&self, peer: &Handle) -> Result<(), Error> {
        let _op = self.operation().await?;
        self.flush_outbox().await?;
        let peer_owned = peer.clone();
        let group = self
            .blocking(move |store, _| db::conversation_with(store.conn(), &peer_owned))
            .await?
            .ok_or_else(|| Error::NoConversation(peer.clone()))?;
        self.queue_self_update(group).await?;
        self.flush_outbox().await
    }

    /// The last `limit` messages exchanged with `peer`, oldest first. Local; no network.
    pub async fn history(&self, peer: &Handle, limit: usize) -> Result<Vec<StoredMessage>, Error> {
        let peer = peer.clone();
        self.blocking(move |store, _| db::history(store.conn(), &peer, limit))
            .await
    }

    pub(crate) fn device_id(&self) -> DeviceId {
        self.inner.device().id()
    }

    /// Starts a public operation: waits for other operations of this client, then for
    /// other processes using the same account.
    pub(crate) async fn operation(&self) -> Result<OperationGuard<'_>, Error> {
        let op = self.inner.op.lock().await;
        let path = self.inner.lock_path.clone();
        let file = tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            file.lock()?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(join_error)?
        .map_err(|e| Error::Store(format!("cannot lock the account for this operation: {e}")))?;
        Ok(OperationGuard {
            _op: op,
            _file: file,
        })
    }

    /// Runs store (and MLS) work on the blocking pool, holding the store lock.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Store, &Inner) -> Result<T, Error> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves no partial state behind: the open
            // transaction rolled back when it was dropped.
            let mut store = inner.store.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut store, &inner)
        })
        .await
        .map_err(join_error)?
    }

    pub(crate) async fn session_token(&self) -> Result<String, Error> {
        if let Some((token, expires_at)) = self.inner.session.lock().await.as_ref()
            && *expires_at > now_secs().saturating_add(30)
        {
            return Ok(token.clone());
        }
        self.login().await
    }

    /// Challenge, sign, session: a new token, cached in memory and in the store.
    pub(crate) async fn login(&self) -> Result<String, Error> {
        let t = &self.inner.transport;
        let challenge = t
            .challenge(&ChallengeRequest {
                handle: self.inner.me.clone(),
                device_id: self.device_id(),
            })
            .await?;
        let bytes: [u8; CHALLENGE_LEN] =
            challenge.challenge.as_slice().try_into().map_err(|_| {
                Error::Protocol("the relay's challenge has the wrong length".into())
            })?;
        let signature = self.inner.device().session_proof(&bytes)?;
        let session = t
            .session(&SessionRequest {
                handle: self.inner.me.clone(),
                device_id: self.device_id(),
                challenge: bytes.to_vec(),
                signature,
            })
            .await?;
        *self.inner.session.lock().await = Some((session.token.clone(), session.expires_at));
        let token = session.token.clone();
        let expires_at = session.expires_at;
        self.blocking(move |store, _| db::set_session(store.conn(), Some(&token), expires_at))
            .await?;
        Ok(session.token)
    }
}

pub(crate) struct Created {
    pub(crate) store: Store,
    pub(crate) device: Device,
    pub(crate) device_list: DeviceList,
    pub(crate) recovery: RecoveryCode,
}

/// Creates the store, the account key, the device and its signed device list.
pub(crate) fn create_local(
    home: &Path,
    passphrase: &str,
    handle: &Handle,
    server: &str,
) -> Result<Created, Error> {
    let mut store = Store::create(home, passphrase)?;
    let now = now_ms();
    let (device, device_list, recovery) = store.transaction(|conn, provider| {
        let mut rng = rand::rngs::OsRng;
        let account = AccountSecret::generate(&mut rng);
        let device = Device::generate(provider, &mut rng, &account, handle.clone(), now / 1000)?;
        let list = account.issue_device_list(
            handle.clone(),
            1,
            now / 1000,
            vec![device.certificate().clone()],
        )?;
        db::insert_account(conn, &account.to_bytes(), device.certificate(), &list, now)?;
        db::insert_relay(conn, server)?;
        Ok::<_, Error>((device, list, account.recovery_code()))
    })?;
    Ok(Created {
        store,
        device,
        device_list,
        recovery,
    })
}

pub(crate) fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Internal(format!("background task failed: {e}"))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_secs() -> u64 {
    now_ms() / 1000
}
