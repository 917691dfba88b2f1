//! Outgoing MLS messages and the commit protocol.
//!
//! Every outgoing MLS message is written to the outbox in the same transaction as the MLS
//! state change that produced it, then sent. [`Client::flush_outbox`] sends the entries in
//! order, each with its request id and bytes unchanged, until the relay answers
//! definitively:
//!
//! * accepted → for a commit, `merge_pending_commit` (and the conversation's members are
//!   updated) in the same transaction that deletes the entry;
//! * `epoch_conflict` on a commit → `clear_pending_commit` and delete the entry, fetch and
//!   process the mailbox (which brings the winning commit), then redo the operation (re-add
//!   the peer, or a new self-update), which queues a new commit;
//! * another definitive refusal → the entry is dropped (a commit is cleared; a conversation
//!   whose creating commit was refused is deleted) and the error returned;
//! * relay unreachable, rate limited or failing → the entry stays for a later call.

use dm_wire::api::{ErrorCode, SendRequest};
use dm_wire::credential::CredentialIdentity;
use dm_wire::{DeviceId, GroupId, Handle, MessageId};
use e2ee_core::key_package::validate_claimed;
use e2ee_core::{Content, Conversation};
use openmls_traits::OpenMlsProvider as _;
use rand::RngCore as _;
use rusqlite::Connection;

use crate::client::{Client, Inner, now_ms};
use crate::db::{self, ConversationState, NewMessage, NewOutbox, OutboxEntry, OutboxKind, Purpose};
use crate::error::Error;
use crate::events::{Event, SentMessage};
use crate::store::{MlsProvider, Store};

/// How many commit conflicts one flush resolves before giving up.
const MAX_CONFLICTS: usize = 5;
/// A device renews its leaf in a conversation after sending this many messages there...
pub(crate) const SELF_UPDATE_EVERY_MESSAGES: u64 = 50;
/// ...or when its last renewal there is this old (unix ms), whichever comes first.
pub(crate) const SELF_UPDATE_EVERY_MS: u64 = 7 * 24 * 3600 * 1000;

impl Client {
    /// Sends every outbox entry (see the module documentation).
    pub(crate) async fn flush_outbox(&self) -> Result<(), Error> {
        let mut conflicts = 0;
        loop {
            let Some(entry) = self
                .blocking(|store, _| db::outbox_first(store.conn()))
                .await?
            else {
                return Ok(());
            };
            let request = SendRequest {
                id: entry.request_id,
                message: entry.message.clone(),
                welcome: entry.welcome.clone(),
                removed_devices: entry.removed_devices.clone(),
            };
            match authed!(self, |t, token| t.send(token, &request)).await {
                Ok(_) => {
                    self.blocking(move |store, inner| accepted(store, inner, &entry))
                        .await?
                }
                Err(Error::Relay {
                    code: ErrorCode::EpochConflict,
                    ..
                }) if entry.kind != OutboxKind::Application && conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    tracing::debug!(group = %entry.group, "commit lost the epoch; retrying");
                    let lost = entry.clone();
                    self.blocking(move |store, _| lost_race(store, &lost))
                        .await?;
                    self.sync_mailbox().await?;
                    self.redo(&entry).await?;
                }
                Err(Error::Relay { code, message }) if is_definitive(code) => {
                    tracing::warn!(code = code.as_str(), "the relay refused a queued message");
                    self.blocking(move |store, _| refused(store, &entry))
                        .await?;
                    return Err(Error::Relay { code, message });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Claims the peer's key packages and queues a new conversation's creating commit.
    pub(crate) async fn start_conversation(&self, peer: &Handle) -> Result<GroupId, Error> {
        let claim = self.claim(peer).await?;
        let peer = peer.clone();
        self.blocking(move |store, inner| {
            store.transaction(|conn, provider| {
                let list = db::pin_device_list(conn, &peer, &claim.device_list, now_ms())?;
                let packages = validate_claimed(provider.crypto(), &list, &claim.key_packages)?;
                if packages.is_empty() {
                    return Err(Error::NoDevices(peer.clone()));
                }
                let mut conversation = Conversation::create(provider, &inner.device())?;
                let group = conversation.id();
                let commit = conversation.invite(provider, &inner.device(), &packages)?;
                db::insert_conversation(
                    conn,
                    &group,
                    Some(&peer),
                    ConversationState::Pending,
                    now_ms(),
                )?;
                push_commit(conn, &group, Purpose::Create, Some(&peer), &commit)?;
                Ok(group)
            })
        })
        .await
    }

    /// Encrypts a text into the outbox (and the history).
    pub(crate) async fn queue_text(
        &self,
        group: GroupId,
        text: String,
    ) -> Result<SentMessage, Error> {
        self.blocking(move |store, inner| {
            store.transaction(|conn, provider| {
                let mut conversation = load(provider, &group)?;
                let id = MessageId(random_16());
                let sent_at = now_ms();
                let content = Content::text(id, sent_at, text.clone());
                let bytes = conversation.encrypt(provider, &inner.device(), &content)?;
                db::insert_message(
                    conn,
                    &NewMessage {
                        id,
                        group: &group,
                        sender: &inner.me,
                        sender_device: inner.device().id(),
                        sent_at,
                        received_at: None,
                        body: &text,
                        outgoing: true,
                    },
                )?;
                db::outbox_push(
                    conn,
                    &NewOutbox {
                        request_id: MessageId(random_16()),
                        group: &group,
                        purpose: Purpose::Message,
                        peer: None,
                        content_message_id: Some(id),
                        message: &bytes,
                        welcome: None,
                        removed_devices: &[],
                    },
                    sent_at,
                )?;
                // Post-compromise security: renew this device's leaf after enough time or
                // enough messages (the commit follows the message in the outbox).
                db::count_sent(conn, &group)?;
                let (updated_at, sent) = db::update_schedule(conn, &group)?;
                let due = sent >= SELF_UPDATE_EVERY_MESSAGES
                    || sent_at.saturating_sub(updated_at) >= SELF_UPDATE_EVERY_MS;
                // One commit at a time: with one pending (the relay unreachable), the
                // renewal waits for a later message.
                if due && !conversation.has_pending_commit() {
                    let commit = conversation.self_update(provider, &inner.device())?;
                    push_commit(conn, &group, Purpose::SelfUpdate, None, &commit)?;
                }
                Ok(SentMessage {
                    id,
                    conversation: group.clone(),
                    sent_at,
                })
            })
        })
        .await
    }

    /// Queues a self-update commit.
    pub(crate) async fn queue_self_update(&self, group: GroupId) -> Result<(), Error> {
        self.blocking(move |store, inner| {
            store.transaction(|conn, provider| {
                let mut conversation = load(provider, &group)?;
                if !conversation.is_active() || conversation.has_pending_commit() {
                    return Ok(());
                }
                let commit = conversation.self_update(provider, &inner.device())?;
                push_commit(conn, &group, Purpose::SelfUpdate, None, &commit)
            })
        })
        .await
    }

    /// Re-runs the operation whose commit (or proposal) lost the epoch.
    async fn redo(&self, entry: &OutboxEntry) -> Result<(), Error> {
        match (entry.purpose, &entry.peer) {
            (Purpose::SelfUpdate, _) => self.queue_self_update(entry.group.clone()).await,
            (Purpose::Create | Purpose::Invite, Some(peer)) => {
                self.queue_invite(entry.group.clone(), peer, entry.purpose)
                    .await
            }
            (Purpose::Leave, _) => self.queue_leave(entry.group.clone(), true).await,
            (Purpose::Members, _) => Err(Error::Conflict(
                "the conversation changed while your change was sent; check `dm conversations` and try again"
                    .into(),
            )),
            // Device reconciliation runs again at the next sync or send.
            _ => Ok(()),
        }
    }

    /// Proposes removing all of our devices from a conversation (leaving). With `again`,
    /// only if we are still leaving and still a member (a commit dropped the proposals).
    pub(crate) async fn queue_leave(&self, group: GroupId, again: bool) -> Result<(), Error> {
        self.blocking(move |store, inner| {
            store.transaction(|conn, provider| {
                let row = db::conversation(conn, &group)?
                    .ok_or_else(|| Error::InvalidInput(format!("no conversation {group}")))?;
                if again && !row.leaving {
                    return Ok(());
                }
                let mut conversation = load(provider, &group)?;
                if !conversation.is_active() {
                    return Ok(());
                }
                if conversation.has_pending_commit() {
                    conversation.clear_pending_commit(provider)?;
                }
                for proposal in conversation.propose_leave(provider, &inner.device())? {
                    db::outbox_push(
                        conn,
                        &NewOutbox {
                            request_id: MessageId(random_16()),
                            group: &group,
                            purpose: Purpose::Leave,
                            peer: None,
                            content_message_id: None,
                            message: &proposal,
                            welcome: None,
                            removed_devices: &[],
                        },
                        now_ms(),
                    )?;
                }
                db::set_leaving(conn, &group)
            })
        })
        .await
    }

    /// Claims the peer's key packages again and queues a commit adding the devices not yet
    /// in the conversation.
    async fn queue_invite(
        &self,
        group: GroupId,
        peer: &Handle,
        purpose: Purpose,
    ) -> Result<(), Error> {
        let claim = self.claim(peer).await?;
        let peer = peer.clone();
        self.blocking(move |store, inner| {
            store.transaction(|conn, provider| {
                let mut conversation = load(provider, &group)?;
                if !conversation.is_active() || conversation.has_pending_commit() {
                    return Ok(());
                }
                let list = db::pin_device_list(conn, &peer, &claim.device_list, now_ms())?;
                let members = conversation.members();
                let packages: Vec<_> =
                    validate_claimed(provider.crypto(), &list, &claim.key_packages)?
                        .into_iter()
                        .filter(|p| !members.contains(p.identity()))
                        .collect();
                if packages.is_empty() {
                    return Ok(());
                }
                let commit = conversation.invite(provider, &inner.device(), &packages)?;
                push_commit(conn, &group, purpose, Some(&peer), &commit)
            })
        })
        .await
    }

    pub(crate) async fn claim(&self, peer: &Handle) -> Result<dm_wire::api::ClaimResponse, Error> {
        match authed!(self, |t, token| t.claim(token, peer)).await {
            Err(Error::Relay {
                code: ErrorCode::UnknownHandle,
                ..
            }) => Err(Error::UnknownHandle(peer.clone())),
            other => other,
        }
    }
}

/// The relay accepted an entry: apply a commit, drop the entry.
fn accepted(store: &mut Store, inner: &Inner, entry: &OutboxEntry) -> Result<(), Error> {
    store.transaction(|conn, provider| {
        if entry.kind == OutboxKind::Commit
            && let Some(mut conversation) = Conversation::load(provider.storage(), &entry.group)?
        {
            let before = db::members(conn, &entry.group)?;
            let merged = conversation.merge_pending_commit(provider)?;
            if matches!(entry.purpose, Purpose::Create | Purpose::GroupCreate) {
                db::set_conversation_state(conn, &entry.group, ConversationState::Active)?;
            }
            // Every commit renews the committer's leaf (it carries an update path).
            db::mark_updated(conn, &entry.group, now_ms())?;
            let emit = entry.purpose == Purpose::Sync;
            refresh_members(conn, provider, &inner.me, &entry.group, emit)?;
            if emit && let Some(e2ee_core::Event::CommitApplied { added, removed, .. }) = merged {
                queue_device_changes(
                    conn,
                    provider,
                    &inner.me,
                    &entry.group,
                    &before,
                    &added,
                    &removed,
                )?;
            }
        }
        db::outbox_delete(conn, entry.id)
    })
}

/// Another commit won the epoch: forget ours.
fn lost_race(store: &mut Store, entry: &OutboxEntry) -> Result<(), Error> {
    store.transaction(|conn, provider| {
        if let Some(mut conversation) = Conversation::load(provider.storage(), &entry.group)? {
            conversation.clear_pending_commit(provider)?;
        }
        db::outbox_delete(conn, entry.id)
    })
}

/// The relay refused an entry for good: undo what it would have done.
fn refused(store: &mut Store, entry: &OutboxEntry) -> Result<(), Error> {
    store.transaction(|conn, provider| {
        if entry.kind == OutboxKind::Commit {
            if let Some(mut conversation) = Conversation::load(provider.storage(), &entry.group)? {
                conversation.clear_pending_commit(provider)?;
                if entry.purpose == Purpose::Create {
                    conversation.delete(provider.storage())?;
                    db::delete_conversation(conn, &entry.group)?;
                }
            }
        } else {
            conn.execute(
                "DELETE FROM messages WHERE message_id = \
                 (SELECT content_message_id FROM outbox WHERE id = ?)",
                [entry.id],
            )
            .map_err(crate::store::store_error)?;
        }
        db::outbox_delete(conn, entry.id)
    })
}

/// Whether the relay's refusal is final for this message (as opposed to "try later").
fn is_definitive(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::InvalidRequest
            | ErrorCode::InvalidMessage
            | ErrorCode::NotMember
            | ErrorCode::EpochConflict
            | ErrorCode::IdReused
            | ErrorCode::PayloadTooLarge
    )
}

pub(crate) fn push_commit(
    conn: &Connection,
    group: &GroupId,
    purpose: Purpose,
    peer: Option<&Handle>,
    commit: &e2ee_core::OutgoingCommit,
) -> Result<(), Error> {
    let removed: Vec<DeviceId> = commit.removed.iter().map(|r| r.device_id).collect();
    db::outbox_push(
        conn,
        &NewOutbox {
            request_id: MessageId(random_16()),
            group,
            purpose,
            peer,
            content_message_id: None,
            message: &commit.commit,
            welcome: commit.welcome.as_deref(),
            removed_devices: &removed,
        },
        now_ms(),
    )
}

/// Loads a conversation that must exist.
pub(crate) fn load(provider: &MlsProvider<'_>, group: &GroupId) -> Result<Conversation, Error> {
    Conversation::load(provider.storage(), group)?
        .ok_or_else(|| Error::Internal(format!("conversation {group} is missing from the store")))
}

/// Queues a [`Event::DevicesChanged`] for every account that was in the conversation
/// before a commit (`before`, other accounts; ours always counts) and still is, and whose
/// devices the commit added or removed.
pub(crate) fn queue_device_changes(
    conn: &Connection,
    provider: &MlsProvider<'_>,
    me: &Handle,
    group: &GroupId,
    before: &[Handle],
    added: &[CredentialIdentity],
    removed: &[CredentialIdentity],
) -> Result<(), Error> {
    let conversation = load(provider, group)?;
    if !conversation.is_active() {
        return Ok(());
    }
    let after: Vec<Handle> = conversation
        .members()
        .into_iter()
        .map(|m| m.handle)
        .collect();
    let mut handles: Vec<&Handle> = added.iter().chain(removed).map(|i| &i.handle).collect();
    handles.sort();
    handles.dedup();
    for handle in handles {
        let stayed = (handle == me || before.contains(handle)) && after.contains(handle);
        if !stayed {
            continue;
        }
        let pick = |ids: &[CredentialIdentity]| -> Vec<DeviceId> {
            ids.iter()
                .filter(|i| &i.handle == handle)
                .map(|i| i.device_id)
                .collect()
        };
        db::queue_event(
            conn,
            &Event::DevicesChanged {
                conversation: group.clone(),
                handle: handle.clone(),
                added: pick(added),
                removed: pick(removed),
            },
        )?;
    }
    Ok(())
}

/// Brings the stored member list of a conversation up to date with its MLS group; returns
/// (and, if `emit`, queues) the change as a [`Event::MembersChanged`].
pub(crate) fn refresh_members(
    conn: &Connection,
    provider: &MlsProvider<'_>,
    me: &Handle,
    group: &GroupId,
    emit: bool,
) -> Result<(), Error> {
    let before = db::members(conn, group)?;
    let conversation = load(provider, group)?;
    let (after, left) = if conversation.is_active() {
        (conversation.peers(me), false)
    } else {
        db::set_conversation_state(conn, group, ConversationState::Left)?;
        (vec![], true)
    };
    db::set_members(conn, group, &after)?;
    // A 1:1 conversation stays 1:1: once a third account is in the group, messages for the
    // peer no longer go there (the next send to the peer starts a new 1:1 conversation).
    if let Some(peer) = db::peer_of(conn, group)?
        && after.iter().any(|h| h != &peer)
    {
        db::clear_peer(conn, group)?;
    }
    let added: Vec<Handle> = after
        .iter()
        .filter(|h| !before.contains(h))
        .cloned()
        .collect();
    // When we are removed, the others did not leave: only we did.
    let removed: Vec<Handle> = if left {
        vec![me.clone()]
    } else {
        before
            .iter()
            .filter(|h| !after.contains(h))
            .cloned()
            .collect()
    };
    if emit && (!added.is_empty() || !removed.is_empty()) {
        db::queue_event(
            conn,
            &Event::MembersChanged {
                conversation: group.clone(),
                added,
                removed,
            },
        )?;
    }
    Ok(())
}

fn random_16() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes
}
