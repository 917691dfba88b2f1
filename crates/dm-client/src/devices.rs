//! Devices: linking, revocation, recovery, device-list refresh, and keeping every
//! conversation in line with its members' device lists.
//!
//! **Reconciliation.** Every account's signed device list is the truth: after each sync
//! and before each send, the client refreshes the device lists of every account it shares
//! a conversation with (its own included, one request), and for each conversation it is
//! an active member of, stages one commit that adds the listed devices missing from the
//! conversation (claiming their key packages), removes the leaves of devices no longer
//! listed (revoked, or of an account re-created under the same handle), and carries out
//! the removals other members proposed (leaving). Any member may do this; the relay's
//! one-commit-per-epoch rule settles races and the loser finds nothing left to do.

use std::time::Duration;

use dm_wire::api::{DeviceListsRequest, ErrorCode, LinkRequestBody, LinkResponseBody, limits};
use dm_wire::cert::DeviceList;
use dm_wire::credential::CredentialIdentity;
use dm_wire::{DeviceId, GroupId, Handle};
use e2ee_core::key_package::validate_claimed;
use e2ee_core::link::{self, LinkCode, LinkRequest, PendingLink};
use e2ee_core::{AccountSecret, Device, RecoveryCode};
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider as _;

use crate::client::{Client, CreateOptions, join_error, now_ms};
use crate::db::{self, ConversationState, Purpose};
use crate::error::Error;
use crate::events::{DeviceInfo, LinkApproval};
use crate::outbox::{load, push_commit};
use crate::store::Store;
use crate::transport::Transport;

/// How often a waiting new device asks the relay for the approval.
const LINK_POLL: Duration = Duration::from_millis(500);

/// A new device waiting to be approved by an existing device of the account
/// ([`PendingDeviceLink::start`], then [`PendingDeviceLink::wait`]).
pub struct PendingDeviceLink {
    pending: PendingLink,
    transport: Transport,
}

impl std::fmt::Debug for PendingDeviceLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingDeviceLink")
            .field("device_id", &self.pending.device_id())
            .finish_non_exhaustive()
    }
}

impl PendingDeviceLink {
    /// Draws the link code and this device's keys, and leaves the link request at the
    /// relay (valid for [`limits::LINK_TTL_SECS`]).
    pub async fn start(server: &str) -> Result<Self, Error> {
        let transport = Transport::new(server)?;
        let crypto = RustCrypto::default();
        let pending = PendingLink::start(&crypto, &mut rand::rngs::OsRng)?;
        let request = pending.request(&crypto)?;
        transport
            .put_link_request(&pending.code().slot(), &LinkRequestBody { request })
            .await?;
        Ok(Self { pending, transport })
    }

    /// The code to show (and type on the approving device).
    pub fn code(&self) -> String {
        self.pending.code().to_string()
    }

    /// The QR payload of the code.
    pub fn qr_payload(&self) -> String {
        self.pending.code().qr_payload()
    }

    /// The fingerprint of this device's key (the approving device shows it too).
    pub fn fingerprint(&self) -> String {
        e2ee_core::safety::fingerprint(&self.pending.device_key())
    }

    /// Waits (up to `timeout`) for the approval, then creates the account store in `home`,
    /// logs in and uploads key packages. The device then takes part in the account's
    /// conversations as soon as any member syncs (see the module documentation).
    pub async fn wait(
        self,
        home: &std::path::Path,
        passphrase: &str,
        timeout: Duration,
    ) -> Result<Client, Error> {
        if Store::exists(home) {
            return Err(Error::AccountExists);
        }
        let slot = self.pending.code().slot();
        let deadline = tokio::time::Instant::now() + timeout;
        let response = loop {
            // A passing outage or rate limit only delays the wait.
            match self.transport.link_slot(&slot).await {
                Ok(state) => {
                    if let Some(response) = state.response {
                        break response;
                    }
                }
                Err(
                    Error::RelayUnreachable { .. }
                    | Error::Relay {
                        code: ErrorCode::RateLimited | ErrorCode::Unavailable,
                        ..
                    },
                ) => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::InvalidInput(
                    "no device approved this link in time; run `dm device link` again".into(),
                ));
            }
            tokio::time::sleep(LINK_POLL).await;
        };
        let linked = self.pending.finish(&RustCrypto::default(), &response)?;
        let home_owned = home.to_path_buf();
        let passphrase = zeroize::Zeroizing::new(passphrase.to_owned());
        let server = self.transport.base().to_owned();
        let device_id = self.pending.device_id();
        let (store, device, list) = tokio::task::spawn_blocking(move || {
            let result = (|| {
                let mut store = Store::create(&home_owned, &passphrase)?;
                let cert = linked
                    .device_list
                    .device(&device_id)
                    .cloned()
                    .ok_or_else(|| Error::Protocol("the device list lacks this device".into()))?;
                let device = store.transaction(|conn, provider| {
                    let device = Device::install(provider, &linked.device_secret, cert)?;
                    db::insert_account(
                        conn,
                        &linked.account.to_bytes(),
                        device.certificate(),
                        &linked.device_list,
                        now_ms(),
                    )?;
                    db::insert_relay(conn, &server)?;
                    Ok::<_, Error>(device)
                })?;
                Ok::<_, Error>((store, device, linked.device_list))
            })();
            if result.is_err() {
                Store::remove_files(&home_owned);
            }
            result
        })
        .await
        .map_err(join_error)??;
        let client = Client::from_parts(store, device, list, self.transport);
        client.replenish_now().await?;
        Ok(client)
    }
}

impl Client {
    /// Restores an account from its recovery code on a new device: the account key signs a
    /// certificate for this device and a new device list (the current devices plus this
    /// one), published at the relay. The other devices stay until revoked
    /// ([`Client::revoke_device`]). Members of the account's conversations add this device
    /// when they next sync; it receives what is sent after that.
    pub async fn recover(opts: CreateOptions, code: &RecoveryCode) -> Result<Client, Error> {
        if Store::exists(&opts.home) {
            return Err(Error::AccountExists);
        }
        let transport = Transport::new(&opts.server)?;
        let account = AccountSecret::from_recovery_code(code);
        let home = opts.home.clone();
        let handle = opts.handle.clone();
        let server = transport.base().to_owned();
        let passphrase = zeroize::Zeroizing::new(opts.passphrase);
        let secret = account.to_bytes();
        let (mut store, device) = tokio::task::spawn_blocking(move || {
            let result = (|| {
                let mut store = Store::create(&home, &passphrase)?;
                let account = AccountSecret::from_bytes(&secret);
                let device = store.transaction(|_, provider| {
                    Device::generate(
                        provider,
                        &mut rand::rngs::OsRng,
                        &account,
                        handle,
                        now_ms() / 1000,
                    )
                    .map_err(Error::from)
                })?;
                Ok::<_, Error>((store, device))
            })();
            if result.is_err() {
                Store::remove_files(&home);
            }
            result
        })
        .await
        .map_err(join_error)??;
        let published = async {
            // A one-device list with sequence 1 is always stale for an existing account:
            // the answer carries the current list (we proved we hold the account key).
            let probe = account.issue_device_list(
                opts.handle.clone(),
                1,
                now_ms() / 1000,
                vec![device.certificate().clone()],
            )?;
            let current = match transport.publish_device_list(&opts.handle, &probe).await {
                Ok(Err(current)) => current,
                Err(Error::Relay {
                    code: ErrorCode::UnknownHandle,
                    ..
                }) => return Err(Error::UnknownHandle(opts.handle.clone())),
                Err(Error::Relay {
                    code: ErrorCode::InvalidSignature,
                    ..
                }) => {
                    return Err(Error::InvalidInput(format!(
                        "this recovery code is not the account key of {}",
                        opts.handle
                    )));
                }
                Err(e) => return Err(e),
                Ok(Ok(())) => return Ok(probe),
            };
            let current = DeviceList::decode(&current)
                .map_err(|e| Error::Protocol(format!("the relay's device list is invalid: {e}")))?;
            if current.account_key != account.account_key() || current.handle != opts.handle {
                return Err(Error::Protocol(
                    "the relay answered with another account's device list".into(),
                ));
            }
            let mut devices = current.devices.clone();
            devices.push(device.certificate().clone());
            let list = account.issue_device_list(
                opts.handle.clone(),
                current.sequence + 1,
                now_ms() / 1000,
                devices,
            )?;
            published_or_stale(transport.publish_device_list(&opts.handle, &list).await?)?;
            Ok(list)
        }
        .await;
        let list = match published {
            Ok(list) => list,
            Err(e) => {
                drop(store);
                Store::remove_files(&opts.home);
                return Err(e);
            }
        };
        let list_for_db = list.clone();
        let cert = device.certificate().clone();
        store.transaction(|conn, _| {
            db::insert_account(conn, &account.to_bytes(), &cert, &list_for_db, now_ms())?;
            db::insert_relay(conn, &server)
        })?;
        let client = Client::from_parts(store, device, list, transport);
        client.replenish_now().await?;
        Ok(client)
    }

    /// Uploads a full stock of key packages now.
    pub(crate) async fn replenish_now(&self) -> Result<(), Error> {
        self.replenish(dm_wire::api::KeyPackageStock {
            one_time: 0,
            last_resort: false,
        })
        .await
    }

    /// This account's devices, with fingerprints and last activity. Local; no network.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, Error> {
        let me = self.device_id();
        self.blocking(move |store, _| {
            let list = db::own_list(store.conn())?;
            list.devices
                .iter()
                .map(|d| {
                    Ok(DeviceInfo {
                        id: d.device_id,
                        fingerprint: e2ee_core::safety::fingerprint(&d.device_key),
                        added_at: d.issued_at,
                        last_seen: if d.device_id == me {
                            Some(now_ms())
                        } else {
                            db::device_last_seen(store.conn(), &d.device_id)?
                        },
                        this_device: d.device_id == me,
                    })
                })
                .collect()
        })
        .await
    }

    /// Fetches the link request of a code typed by the user and checks it; returns the new
    /// device's fingerprint to show before [`Client::approve_link`].
    pub async fn inspect_link(&self, code: &str) -> Result<LinkApproval, Error> {
        let code = LinkCode::parse(code).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let request = self.link_request(&code).await?;
        Ok(LinkApproval {
            device_id: request.device_id,
            fingerprint: e2ee_core::safety::fingerprint(&request.device_key),
        })
    }

    async fn link_request(&self, code: &LinkCode) -> Result<LinkRequest, Error> {
        let slot = match self.inner.transport.link_slot(&code.slot()).await {
            Err(Error::Relay {
                code: ErrorCode::NotFound,
                ..
            }) => {
                return Err(Error::InvalidInput(
                    "no device waits with this code (mistyped, or expired after 10 minutes)".into(),
                ));
            }
            other => other?,
        };
        if slot.response.is_some() {
            return Err(Error::InvalidInput("this code was used already".into()));
        }
        LinkRequest::decode(&RustCrypto::default(), code, &slot.request)
            .map_err(|e| Error::Protocol(format!("the link request does not verify: {e}")))
    }

    /// Approves the device waiting with `code`: signs its certificate and a new device
    /// list with the account key, publishes the list, and hands the new device the account
    /// secret (sealed to it). Then waits up to `timeout` for the new device to be ready and
    /// adds it to every conversation. Returns the new device's id.
    pub async fn approve_link(&self, code: &str, timeout: Duration) -> Result<DeviceId, Error> {
        let code = LinkCode::parse(code).map_err(|e| Error::InvalidInput(e.to_string()))?;
        let request = self.link_request(&code).await?;
        {
            let _op = self.operation().await?;
            self.refresh_device_lists().await?;
            let req = request.clone();
            let (list, account_secret) = self
                .blocking(move |store, _| {
                    let secret = db::account_secret(store.conn())?;
                    let account = AccountSecret::from_bytes(&secret);
                    let current = db::own_list(store.conn())?;
                    let list = link::approve(&account, &current, &req, now_ms() / 1000)?;
                    Ok((list, secret))
                })
                .await?;
            let account = AccountSecret::from_bytes(&account_secret);
            published_or_stale(
                self.inner
                    .transport
                    .publish_device_list(&self.inner.me, &list)
                    .await?,
            )?;
            let stored = list.clone();
            self.blocking(move |store, _| db::set_own_list(store.conn(), &stored))
                .await?;
            let response =
                link::seal_response(&RustCrypto::default(), &code, &request, &account, &list)?;
            authed!(self, |t, token| t.put_link_response(
                token,
                &code.slot(),
                &LinkResponseBody {
                    response: response.clone()
                }
            ))
            .await?;
        }
        // The new device logs in and uploads key packages; add it everywhere once it can be.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let _op = self.operation().await?;
                self.flush_outbox().await?;
                self.sync_mailbox().await?;
                self.reconcile().await?;
            }
            let id = request.device_id;
            let missing = self
                .blocking(move |store, _| {
                    let mut missing = false;
                    for row in db::conversations(store.conn())? {
                        if row.state != ConversationState::Active {
                            continue;
                        }
                        let conversation =
                            store.transaction(|_, provider| load(provider, &row.group))?;
                        if conversation.is_active()
                            && !conversation.members().iter().any(|m| m.device_id == id)
                        {
                            missing = true;
                        }
                    }
                    Ok(missing)
                })
                .await?;
            if !missing {
                return Ok(request.device_id);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::InvalidInput(
                    "the device is linked, but not yet in every conversation: it is added at the next sync once it is online".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Revokes a device of this account: publishes a device list without it (the relay
    /// deletes the device, its sessions and mailbox) and removes it from every conversation
    /// this device is in; the groups' keys rotate with those commits. Members remove it
    /// from the other conversations when they next sync.
    pub async fn revoke_device(&self, device: DeviceId) -> Result<(), Error> {
        if device == self.device_id() {
            return Err(Error::InvalidInput(
                "this is the device you are using: revoke it from another device".into(),
            ));
        }
        let _op = self.operation().await?;
        self.flush_outbox().await?;
        self.refresh_device_lists().await?;
        let list = self
            .blocking(move |store, _| {
                let secret = db::account_secret(store.conn())?;
                let account = AccountSecret::from_bytes(&secret);
                let current = db::own_list(store.conn())?;
                if current.device(&device).is_none() {
                    return Err(Error::InvalidInput(format!(
                        "device {device} is not a device of this account (see `dm device list`)"
                    )));
                }
                let devices = current
                    .devices
                    .iter()
                    .filter(|d| d.device_id != device)
                    .cloned()
                    .collect();
                Ok(account.issue_device_list(
                    current.handle.clone(),
                    current.sequence + 1,
                    now_ms() / 1000,
                    devices,
                )?)
            })
            .await?;
        published_or_stale(
            self.inner
                .transport
                .publish_device_list(&self.inner.me, &list)
                .await?,
        )?;
        self.blocking(move |store, _| db::set_own_list(store.conn(), &list))
            .await?;
        self.sync_mailbox().await?;
        self.reconcile().await?;
        self.flush_outbox().await
    }

    /// Fetches the current device lists of every account this one shares a conversation
    /// with, and its own; pins or updates them (a changed account key is flagged and
    /// reported, see [`crate::Event::IdentityKeyChanged`]). Fails with [`Error::Revoked`]
    /// if this device is no longer in its own account's list.
    pub(crate) async fn refresh_device_lists(&self) -> Result<(), Error> {
        let me = self.inner.me.clone();
        let mut handles = self
            .blocking(|store, _| {
                let mut handles = Vec::new();
                for row in db::conversations(store.conn())? {
                    if row.state == ConversationState::Active {
                        handles.extend(db::members(store.conn(), &row.group)?);
                    }
                }
                Ok(handles)
            })
            .await?;
        handles.push(me.clone());
        handles.sort();
        handles.dedup();
        handles.truncate(limits::MAX_DEVICE_LIST_HANDLES);
        let request = DeviceListsRequest { handles };
        let response = authed!(self, |t, token| t.device_lists(token, &request)).await?;
        let own_id = self.device_id();
        self.blocking(move |store, _| {
            store.transaction(|conn, _| {
                for account in &response.accounts {
                    if account.handle == me {
                        let own = db::own_list(conn)?;
                        let list = DeviceList::decode(&account.device_list).map_err(|e| {
                            Error::Protocol(format!("our own device list does not verify: {e}"))
                        })?;
                        if list.account_key != own.account_key {
                            return Err(Error::Protocol(
                                "the relay serves our handle with another account key".into(),
                            ));
                        }
                        if list.sequence > own.sequence {
                            db::set_own_list(conn, &list)?;
                            if list.device(&own_id).is_none() {
                                return Err(Error::Revoked);
                            }
                        }
                    } else {
                        match db::pin_device_list(
                            conn,
                            &account.handle,
                            &account.device_list,
                            now_ms(),
                        ) {
                            Ok(_) => {}
                            Err(Error::Protocol(reason)) => {
                                tracing::warn!(%reason, "a contact's device list was refused");
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Refreshes device lists, brings the conversations in line with them and sends the
    /// commits. A refusal by the relay (rate limit, a list that does not verify) or an
    /// outage leaves this for the next sync instead of failing the caller, whose events
    /// must still reach the app.
    pub(crate) async fn follow_device_lists(&self) -> Result<(), Error> {
        let result = async {
            self.refresh_device_lists().await?;
            self.reconcile().await?;
            self.flush_outbox().await
        }
        .await;
        match result {
            Err(
                e @ (Error::Relay { .. } | Error::RelayUnreachable { .. } | Error::Protocol(_)),
            ) => {
                tracing::debug!(error = %e, "device lists left for the next sync");
                Ok(())
            }
            other => other,
        }
    }

    /// Brings every conversation in line with its members' device lists (see the module
    /// documentation); queues the commits. The caller flushes the outbox.
    pub(crate) async fn reconcile(&self) -> Result<(), Error> {
        let me = self.inner.me.clone();
        let plans = self
            .blocking(move |store, _| {
                store.transaction(|conn, provider| {
                    let own = db::own_list(conn)?;
                    let mut plans = Vec::new();
                    for row in db::conversations(conn)? {
                        if row.state != ConversationState::Active || row.leaving {
                            continue;
                        }
                        let conversation = load(provider, &row.group)?;
                        if !conversation.is_active() || conversation.has_pending_commit() {
                            continue;
                        }
                        let members = conversation.members();
                        let mut accounts: Vec<Handle> =
                            members.iter().map(|m| m.handle.clone()).collect();
                        // A 1:1 conversation keeps its peer even when none of the peer's
                        // devices is left in it (the account was re-created).
                        if let Some(peer) = db::peer_of(conn, &row.group)? {
                            accounts.push(peer);
                        }
                        accounts.sort();
                        accounts.dedup();
                        let mut remove = Vec::new();
                        let mut claim = Vec::new();
                        for account in accounts {
                            let (list, may_add) = if account == me {
                                (Some(own.clone()), true)
                            } else {
                                match db::contact(conn, &account)? {
                                    Some(c) => (Some(c.device_list), !c.blocked),
                                    None => (None, false),
                                }
                            };
                            let Some(list) = list else { continue };
                            for m in members.iter().filter(|m| m.handle == account) {
                                if list.device(&m.device_id).is_none() {
                                    remove.push(m.clone());
                                }
                            }
                            let missing = list.devices.iter().any(|d| {
                                !members
                                    .iter()
                                    .any(|m| m.handle == account && m.device_id == d.device_id)
                            });
                            if missing && may_add {
                                claim.push(account);
                            }
                        }
                        if !remove.is_empty()
                            || !claim.is_empty()
                            || conversation.has_pending_proposals()
                        {
                            plans.push((row.group, remove, claim));
                        }
                    }
                    Ok::<_, Error>(plans)
                })
            })
            .await?;
        for (group, remove, claim_for) in plans {
            let mut claims = Vec::new();
            for handle in &claim_for {
                match self.claim(handle).await {
                    Ok(c) => claims.push(c),
                    // Refused (rate limited, gone): the devices are added at a later sync;
                    // the removals go ahead.
                    Err(e @ (Error::UnknownHandle(_) | Error::Relay { .. })) => {
                        tracing::debug!(error = %e, "cannot claim key packages now");
                    }
                    Err(e) => return Err(e),
                }
            }
            match self.queue_sync_commit(group, remove, claims).await {
                // Bad data from the relay (a key package or device list that does not
                // verify) must not stop the sync: this conversation waits for a later one.
                Err(e @ (Error::Protocol(_) | Error::IdentityKeyChanged(_))) => {
                    tracing::warn!(error = %e, "a conversation's devices cannot be brought up to date now");
                }
                other => other?,
            }
        }
        Ok(())
    }

    async fn queue_sync_commit(
        &self,
        group: GroupId,
        remove: Vec<CredentialIdentity>,
        claims: Vec<dm_wire::api::ClaimResponse>,
    ) -> Result<(), Error> {
        let me = self.inner.me.clone();
        self.blocking(move |store, inner| {
            store.transaction(|conn, provider| {
                let mut conversation = load(provider, &group)?;
                if !conversation.is_active() || conversation.has_pending_commit() {
                    return Ok(());
                }
                let members = conversation.members();
                let mut add = Vec::new();
                for claim in &claims {
                    let list = if claim.handle == me {
                        let own = db::own_list(conn)?;
                        let received = DeviceList::decode(&claim.device_list).map_err(|e| {
                            Error::Protocol(format!("our own device list does not verify: {e}"))
                        })?;
                        if received.account_key != own.account_key
                            || received.sequence < own.sequence
                        {
                            continue;
                        }
                        received
                    } else {
                        db::pin_device_list(conn, &claim.handle, &claim.device_list, now_ms())?
                    };
                    let packages = validate_claimed(provider.crypto(), &list, &claim.key_packages)?;
                    add.extend(
                        packages
                            .into_iter()
                            .filter(|p| !members.contains(p.identity())),
                    );
                }
                if add.is_empty() && remove.is_empty() && !conversation.has_pending_proposals() {
                    return Ok(());
                }
                let commit =
                    conversation.commit_changes(provider, &inner.device(), &add, &remove)?;
                push_commit(conn, &group, Purpose::Sync, None, &commit)
            })
        })
        .await
    }

    /// Rejoins every conversation under a new device identity: for a device that missed
    /// more than it can catch up (the relay refused envelopes for it, see
    /// [`crate::Event::MessagesDropped`]; this happens automatically then) or whose
    /// conversations are out of sync. The account key certifies a new device key and id
    /// that replace this device's in the account's device list; the local group state is
    /// dropped (the message history stays); the members remove the old identity and add
    /// the new one when they next sync, and this device then joins again
    /// ([`crate::Event::Rejoined`]). Returns the new device id.
    pub async fn rejoin(&self) -> Result<DeviceId, Error> {
        let _op = self.operation().await?;
        self.rejoin_locked().await
    }

    pub(crate) async fn rejoin_locked(&self) -> Result<DeviceId, Error> {
        // Best effort: the publish below is refused if our list is stale.
        if let Err(Error::Revoked) = self.refresh_device_lists().await {
            return Err(Error::Revoked);
        }
        let old = self.device_id();
        let me = self.inner.me.clone();
        let (device, list) = self
            .blocking(move |store, _| {
                store.transaction(|conn, provider| {
                    let secret = db::account_secret(conn)?;
                    let account = AccountSecret::from_bytes(&secret);
                    let current = db::own_list(conn)?;
                    let device = Device::generate(
                        provider,
                        &mut rand::rngs::OsRng,
                        &account,
                        me.clone(),
                        now_ms() / 1000,
                    )?;
                    let mut devices: Vec<_> = current
                        .devices
                        .iter()
                        .filter(|d| d.device_id != old)
                        .cloned()
                        .collect();
                    devices.push(device.certificate().clone());
                    let list = account.issue_device_list(
                        me.clone(),
                        current.sequence + 1,
                        now_ms() / 1000,
                        devices,
                    )?;
                    Ok::<_, Error>((device, list))
                })
            })
            .await?;
        published_or_stale(
            self.inner
                .transport
                .publish_device_list(&self.inner.me, &list)
                .await?,
        )?;
        let new_id = device.id();
        let cert = device.certificate().clone();
        self.blocking(move |store, _| {
            store.transaction(|conn, provider| {
                db::replace_device(conn, &cert, &list)?;
                for row in db::conversations(conn)? {
                    if let Some(conversation) = e2ee_core::Conversation::load(
                        openmls_traits::OpenMlsProvider::storage(provider),
                        &row.group,
                    )? {
                        conversation.delete(openmls_traits::OpenMlsProvider::storage(provider))?;
                    }
                    db::set_conversation_state(conn, &row.group, ConversationState::Left)?;
                }
                db::queue_event(
                    conn,
                    &crate::Event::Rejoining {
                        previous_device: old,
                        device: new_id,
                    },
                )
            })
        })
        .await?;
        self.inner.set_device(device);
        self.inner.clear_session().await;
        self.replenish_now().await?;
        tracing::debug!("rejoined under a new device identity");
        Ok(new_id)
    }

    /// Deletes this account at the relay (every device of it); the handle becomes free.
    /// The local store is left as it is.
    pub async fn delete_account(&self) -> Result<(), Error> {
        let _op = self.operation().await?;
        let me = self.inner.me.clone();
        authed!(self, |t, token| t.delete_account(token, &me)).await
    }
}

/// A publish answered "stale": another device changed the list at the same moment.
fn published_or_stale(result: Result<(), Vec<u8>>) -> Result<(), Error> {
    result.map_err(|_| {
        Error::Conflict(
            "another device changed this account's device list at the same time; try again".into(),
        )
    })
}
