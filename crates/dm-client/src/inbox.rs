//! Incoming envelopes: fetch, process, acknowledge; and key-package top-ups.
//!
//! Processing one envelope is one transaction: the MLS state changes, the stored message
//! or conversation, the queued event and the mailbox cursor commit together. If anything
//! fails the transaction rolls back (openmls may have written part of its state), then an
//! [`Event::Undecryptable`] is queued and the cursor moves past the envelope in a
//! transaction of its own, so a bad envelope neither blocks the mailbox nor corrupts state.
//! Envelopes are acknowledged to the relay only after their transaction committed. An
//! envelope at or below the cursor (a redelivery) is skipped; a message whose content id
//! is already stored is not reported twice.

use dm_wire::Handle;
use dm_wire::api::{Envelope, KeyPackageStock, UploadKeyPackagesRequest, limits};
use e2ee_core::conversation::{Event as CoreEvent, peek_group_id};
use e2ee_core::key_package;
use e2ee_core::{CredentialError, InvalidInput};
use sha2::{Digest as _, Sha256};

use crate::client::{Client, Inner, now_ms};
use crate::db::{self, ConversationState, NewMessage, StoreDirectory};
use crate::error::Error;
use crate::events::{Event, ReceivedMessage};
use crate::outbox::{load, queue_device_changes, refresh_members};
use crate::store::{MlsProvider, Store};

/// Below this many one-time key packages at the relay, upload more.
const KEY_PACKAGE_LOW_WATER: u32 = 20;
/// How many one-time key packages to keep at the relay.
const KEY_PACKAGE_TARGET: u32 = 100;
/// Most device lists fetched while processing one envelope (a Welcome names every member's
/// account; a device list holds at most 16 devices, a group more accounts).
const MAX_LIST_FETCHES: usize = 64;

/// What became of one envelope.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Processed and committed.
    Processed,
    /// Already processed before (seq at or below the cursor).
    Duplicate,
    /// A credential names an account (or a device of it) our copy of its device list does
    /// not know: fetch the list and retry once.
    NeedAccount(Handle),
    /// Rejected; the reason is safe to show.
    Rejected(String),
}

/// Errors inside an envelope's transaction: e2ee-core's (kept whole, to sort them) or ours.
enum TxError {
    Core(e2ee_core::Error),
    Client(Error),
}

impl From<Error> for TxError {
    fn from(e: Error) -> Self {
        TxError::Client(e)
    }
}

impl Client {
    /// Fetches every page of the mailbox, processes each envelope, acknowledges, and tops up
    /// key packages.
    pub(crate) async fn sync_mailbox(&self) -> Result<(), Error> {
        let stock = loop {
            let cursor = self
                .blocking(|store, _| Ok(db::relay(store.conn())?.cursor))
                .await?;
            let page = authed!(self, |t, token| t.mailbox(
                token,
                cursor,
                limits::DEFAULT_FETCH
            ))
            .await?;
            let dropped = page.dropped;
            self.blocking(move |store, _| {
                store.transaction(|conn, _| db::note_dropped(conn, dropped))
            })
            .await?;
            let progressed = page.envelopes.iter().any(|e| e.seq > cursor);
            for envelope in page.envelopes {
                self.process_envelope(envelope).await?;
            }
            self.acknowledge().await?;
            // A relay claiming more while returning nothing new would loop forever.
            if !page.more || !progressed {
                break page.key_packages;
            }
        };
        self.replenish(stock).await
    }

    /// Processes one envelope, fetching the device list of each account it names that we
    /// do not know yet (at most [`MAX_LIST_FETCHES`] per envelope).
    ///
    /// Only definitive answers reject the envelope (the account does not exist, its key
    /// differs from the pinned one, its device list does not verify or lacks the device).
    /// A transient failure (relay unreachable or failing, rate limit, session trouble)
    /// returns the error and leaves the cursor where it is, so the next sync retries the
    /// envelope: a commit or Welcome must never be dropped because of a passing outage.
    pub(crate) async fn process_envelope(&self, envelope: Envelope) -> Result<(), Error> {
        let envelope = std::sync::Arc::new(envelope);
        let mut fetched: Vec<Handle> = Vec::new();
        let outcome = loop {
            let env = std::sync::Arc::clone(&envelope);
            let outcome = self
                .blocking(move |store, inner| process_envelope(store, inner, &env))
                .await?;
            let Outcome::NeedAccount(handle) = outcome else {
                break outcome;
            };
            if fetched.contains(&handle) || fetched.len() >= MAX_LIST_FETCHES {
                break Outcome::Rejected(format!("{handle} has no verified device that matches"));
            }
            match self.fetch_device_list(&handle).await {
                Ok(()) => fetched.push(handle),
                Err(
                    e @ (Error::UnknownHandle(_)
                    | Error::IdentityKeyChanged(_)
                    | Error::Protocol(_)),
                ) => break Outcome::Rejected(format!("cannot verify {handle}: {e}")),
                Err(e) => return Err(e),
            }
        };
        if let Outcome::Rejected(reason) = outcome {
            tracing::debug!(seq = envelope.seq, %reason, "envelope rejected");
            self.blocking(move |store, _| skip_envelope(store, &envelope, &reason))
                .await?;
        }
        Ok(())
    }

    /// Fetches, verifies and pins (or updates) an account's device list.
    pub(crate) async fn fetch_device_list(&self, handle: &Handle) -> Result<(), Error> {
        let account = match authed!(self, |t, token| t.account(token, handle)).await {
            Err(Error::Relay {
                code: dm_wire::api::ErrorCode::UnknownHandle,
                ..
            }) => return Err(Error::UnknownHandle(handle.clone())),
            other => other?,
        };
        let handle = handle.clone();
        self.blocking(move |store, _| {
            store.transaction(|conn, _| {
                db::pin_device_list(conn, &handle, &account.device_list, now_ms()).map(|_| ())
            })
        })
        .await
    }

    /// Acknowledges everything processed so far.
    async fn acknowledge(&self) -> Result<(), Error> {
        let relay = self.blocking(|store, _| db::relay(store.conn())).await?;
        if relay.cursor <= relay.acked {
            return Ok(());
        }
        let up_to = relay.cursor;
        authed!(self, |t, token| t.ack(token, up_to)).await?;
        self.blocking(move |store, _| db::set_acked(store.conn(), up_to))
            .await
    }

    /// Uploads key packages if the relay's stock is low or has no last-resort package.
    pub(crate) async fn replenish(&self, stock: KeyPackageStock) -> Result<(), Error> {
        let one_time = if stock.one_time < KEY_PACKAGE_LOW_WATER {
            (KEY_PACKAGE_TARGET - stock.one_time) as usize
        } else {
            0
        }
        .min(limits::MAX_KEY_PACKAGES_PER_UPLOAD);
        let last_resort = !stock.last_resort;
        if one_time == 0 && !last_resort {
            return Ok(());
        }
        let request = self
            .blocking(move |store, inner| {
                store.transaction(|_, provider| {
                    let key_packages = key_package::generate(provider, &inner.device(), one_time)?;
                    let last_resort = last_resort
                        .then(|| key_package::generate_last_resort(provider, &inner.device()))
                        .transpose()?;
                    Ok::<_, Error>(UploadKeyPackagesRequest {
                        key_packages,
                        last_resort,
                    })
                })
            })
            .await?;
        authed!(self, |t, token| t.upload_key_packages(token, &request)).await?;
        Ok(())
    }
}

/// Processes one envelope in one transaction (see the module documentation).
pub(crate) fn process_envelope(
    store: &mut Store,
    inner: &Inner,
    envelope: &Envelope,
) -> Result<Outcome, Error> {
    if envelope.seq <= db::relay(store.conn())?.cursor {
        return Ok(Outcome::Duplicate);
    }
    let payload_hash: [u8; 32] = Sha256::digest(&envelope.payload).into();
    if db::envelope_seen(store.conn(), &payload_hash)? {
        // The same bytes under a new sequence number: a copy, not a new message.
        store.transaction(|conn, _| db::set_cursor(conn, envelope.seq))?;
        return Ok(Outcome::Duplicate);
    }
    let result = store.transaction(|conn, provider| {
        let own = db::own_list(conn)?;
        let directory = StoreDirectory { conn, own: &own };
        // A panic inside the MLS library on hostile input must not wedge the mailbox: it
        // rejects this envelope like any other invalid one (the transaction rolls back).
        let event = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            e2ee_core::process_incoming(provider, &directory, &envelope.payload)
        }))
        .map_err(|_| {
            TxError::Core(e2ee_core::Error::Internal(
                "the MLS library failed on this envelope".into(),
            ))
        })?
        .map_err(TxError::Core)?;
        record(conn, provider, &inner.me, &event, envelope)?;
        db::mark_envelope_seen(conn, &payload_hash, now_ms())?;
        db::set_cursor(conn, envelope.seq)?;
        Ok::<_, TxError>(())
    });
    match result {
        Ok(()) => Ok(Outcome::Processed),
        Err(TxError::Core(e2ee_core::Error::UnknownAccount(h))) => Ok(Outcome::NeedAccount(h)),
        // The device may be newer than our copy of the account's device list: refetch once.
        Err(TxError::Core(e2ee_core::Error::InvalidInput(InvalidInput::Credential(
            CredentialError::UnknownDevice { handle, .. }
            | CredentialError::StillListed { handle, .. },
        )))) => Ok(Outcome::NeedAccount(handle)),
        Err(TxError::Core(e2ee_core::Error::Storage(s))) => Err(Error::Store(s)),
        Err(TxError::Core(e)) => Ok(Outcome::Rejected(e.to_string())),
        Err(TxError::Client(e)) => Err(e),
    }
}

/// Records a rejected envelope and moves the cursor past it.
pub(crate) fn skip_envelope(
    store: &mut Store,
    envelope: &Envelope,
    reason: &str,
) -> Result<(), Error> {
    store.transaction(|conn, _| {
        db::queue_event(
            conn,
            &Event::Undecryptable {
                conversation: peek_group_id(&envelope.payload),
                seq: envelope.seq,
                received_at: envelope.received_at,
                reason: reason.to_owned(),
            },
        )?;
        db::mark_envelope_seen(conn, &Sha256::digest(&envelope.payload).into(), now_ms())?;
        db::set_cursor(conn, envelope.seq)
    })
}

/// Stores what a processed envelope changed and queues the matching event.
fn record(
    conn: &rusqlite::Connection,
    provider: &MlsProvider<'_>,
    me: &Handle,
    event: &CoreEvent,
    envelope: &Envelope,
) -> Result<(), Error> {
    match event {
        CoreEvent::Joined {
            group,
            members,
            inviter,
        } => {
            let mut with: Vec<Handle> = members
                .iter()
                .map(|m| m.handle.clone())
                .filter(|h| h != me)
                .collect();
            with.sort();
            with.dedup();
            let meta = load(provider, group)?.meta()?;
            let peer = (meta.is_none() && with.len() == 1).then(|| &with[0]);
            // A conversation we knew before: this device rejoined it.
            let rejoined = db::conversation(conn, group)?.is_some();
            db::insert_conversation(conn, group, peer, ConversationState::Active, now_ms())?;
            db::set_members(conn, group, &with)?;
            db::touch_device(
                conn,
                &inviter.handle,
                &inviter.device_id,
                envelope.received_at,
            )?;
            let name = meta.map(|m| m.name);
            if let Some(name) = &name {
                db::set_conversation_name(conn, group, name)?;
            }
            if rejoined {
                return db::queue_event(
                    conn,
                    &Event::Rejoined {
                        conversation: group.clone(),
                    },
                );
            }
            db::queue_event(
                conn,
                &Event::ConversationStarted {
                    conversation: group.clone(),
                    with,
                    name,
                },
            )
        }
        CoreEvent::Message {
            group,
            sender,
            content,
        } => {
            db::touch_device(
                conn,
                &sender.handle,
                &sender.device_id,
                envelope.received_at,
            )?;
            let Some(text) = content.as_text() else {
                return Ok(());
            };
            let stored = db::insert_message(
                conn,
                &NewMessage {
                    id: content.message_id,
                    group,
                    sender: &sender.handle,
                    sender_device: sender.device_id,
                    sent_at: content.sent_at_ms,
                    received_at: Some(envelope.received_at),
                    body: text,
                    outgoing: &sender.handle == me,
                },
            )?;
            if !stored {
                return Ok(());
            }
            db::queue_event(
                conn,
                &Event::Message(ReceivedMessage {
                    id: content.message_id,
                    conversation: group.clone(),
                    from: sender.handle.clone(),
                    from_device: sender.device_id,
                    text: text.to_owned(),
                    sent_at: content.sent_at_ms,
                    received_at: envelope.received_at,
                }),
            )
        }
        CoreEvent::CommitApplied {
            group,
            committer,
            added,
            removed,
            ..
        } => {
            db::touch_device(
                conn,
                &committer.handle,
                &committer.device_id,
                envelope.received_at,
            )?;
            let before = db::members(conn, group)?;
            refresh_members(conn, provider, me, group, true)?;
            queue_device_changes(conn, provider, me, group, &before, added, removed)
        }
        CoreEvent::RemovalProposed { proposer, .. } => {
            // Carried out by this device's next commit in the conversation (see
            // `Client::reconcile`).
            db::touch_device(
                conn,
                &proposer.handle,
                &proposer.device_id,
                envelope.received_at,
            )
        }
        CoreEvent::OwnMessage { .. } | CoreEvent::Ignored { .. } => Ok(()),
    }
}
