//! Group conversations, the conversation list, sending to a conversation, and contact
//! verification (safety numbers, group codes).

use std::time::{Duration, Instant};

use dm_wire::{GroupId, Handle};
use e2ee_core::Conversation;
use e2ee_core::key_package::validate_claimed;
use e2ee_core::safety::SafetyNumber;
use openmls_traits::OpenMlsProvider as _;

use crate::client::{Client, now_ms};
use crate::db::{self, ConversationState, Purpose};
use crate::error::Error;
use crate::events::{ConversationInfo, SentMessage, Verification};
use crate::outbox::{load, push_commit};

/// Before a send, the mailbox is fetched at most this often.
const PREPARE_FETCH_EVERY: Duration = Duration::from_secs(2);
/// Before a send, device lists are refreshed at most this often.
const PREPARE_REFRESH_EVERY: Duration = Duration::from_secs(10);

/// Where `dm send` goes: an account (its 1:1 conversation) or a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The 1:1 conversation with an account (started if there is none).
    Handle(Handle),
    /// A conversation, by id.
    Conversation(GroupId),
}

impl Client {
    /// Resolves what a person typed: `@name` is always an account; a conversation id (or
    /// an unambiguous prefix of at least 8 hex digits) or a group's name is a conversation;
    /// anything else is an account. A bare name that is both a group's name and a contact
    /// is refused as ambiguous. Local; no network.
    pub async fn resolve(&self, input: &str) -> Result<Target, Error> {
        let input = input.trim().to_owned();
        if input.starts_with('@') {
            return parse_handle(&input).map(Target::Handle);
        }
        self.blocking(move |store, _| {
            let conn = store.conn();
            let all = db::conversations(conn)?;
            let lower = input.to_ascii_lowercase();
            if lower.len() >= 8 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
                // By id, conversations we left included (sending then says so).
                let hits: Vec<_> = all
                    .iter()
                    .filter(|r| r.group.to_hex().starts_with(&lower))
                    .collect();
                if let [one] = hits.as_slice() {
                    return Ok(Target::Conversation(one.group.clone()));
                }
            }
            let rows: Vec<_> = all
                .into_iter()
                .filter(|r| r.state != ConversationState::Left)
                .collect();
            let named: Vec<_> = rows
                .iter()
                .filter(|r| r.name.as_deref() == Some(input.as_str()))
                .collect();
            let handle = Handle::parse(&input).ok();
            let is_contact = match &handle {
                Some(h) => db::contact(conn, h)?.is_some(),
                None => false,
            };
            match (named.as_slice(), handle) {
                ([one], _) if !is_contact => Ok(Target::Conversation(one.group.clone())),
                ([_], Some(h)) => Err(Error::InvalidInput(format!(
                    "'{input}' is both a group's name and a contact: write {h} for the person or use the group's id"
                ))),
                ([_, _, ..], _) => Err(Error::InvalidInput(format!(
                    "several groups are named '{input}': use the group's id (see `dm conversations`)"
                ))),
                ([], Some(h)) => Ok(Target::Handle(h)),
                _ => Err(Error::InvalidInput(format!(
                    "'{input}' is neither a handle nor a conversation (see `dm conversations`)"
                ))),
            }
        })
        .await
    }

    /// Sends a text to a target ([`Client::resolve`]).
    pub async fn send_to(&self, target: &Target, text: &str) -> Result<SentMessage, Error> {
        match target {
            Target::Handle(h) => self.send(h, text).await,
            Target::Conversation(g) => self.send_to_conversation(g, text).await,
        }
    }

    /// Sends a text to a conversation this account is an active member of. Refused with
    /// [`Error::VerifiedKeyChanged`] while a member's verified key changed.
    pub async fn send_to_conversation(
        &self,
        group: &GroupId,
        text: &str,
    ) -> Result<SentMessage, Error> {
        check_text(text)?;
        let _op = self.operation().await?;
        self.prepare_send().await?;
        let g = group.clone();
        self.blocking(move |store, _| {
            let row = db::conversation(store.conn(), &g)?
                .ok_or_else(|| Error::InvalidInput(format!("no conversation {g}")))?;
            if row.state != ConversationState::Active || row.leaving {
                return Err(Error::InvalidInput(format!(
                    "you are no longer a member of conversation {g}"
                )));
            }
            check_not_blocked(store.conn(), &db::members(store.conn(), &g)?)
        })
        .await?;
        let sent = self.queue_text(group.clone(), text.to_owned()).await?;
        self.flush_outbox().await?;
        Ok(sent)
    }

    /// Before sending: process the mailbox (so the message is encrypted in the newest
    /// epoch every member can read), refresh device lists and bring the conversations in
    /// line with them, and send the resulting commits.
    ///
    /// Offline (relay unreachable) this does nothing more and succeeds: the message is then
    /// queued in the outbox and sent by a later call.
    ///
    /// Sends in quick succession (a chat) fetch the mailbox at most every
    /// [`PREPARE_FETCH_EVERY`] and refresh device lists at most every
    /// [`PREPARE_REFRESH_EVERY`], so that typing does not multiply requests.
    pub(crate) async fn prepare_send(&self) -> Result<(), Error> {
        let (fetch, refresh) = {
            let last = self
                .inner
                .last_prepared
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let due = |at: Option<Instant>, every| at.is_none_or(|t| t.elapsed() >= every);
            (
                due(last.0, PREPARE_FETCH_EVERY),
                due(last.1, PREPARE_REFRESH_EVERY),
            )
        };
        let prepared = async {
            self.flush_outbox().await?;
            if fetch {
                self.sync_mailbox().await?;
                self.note_prepared(true, false);
            }
            if refresh {
                self.refresh_device_lists().await?;
                self.note_prepared(false, true);
            }
            // Local unless there is something to do (pending leave proposals, which
            // would otherwise block encryption, or devices to add or remove).
            self.reconcile().await?;
            self.flush_outbox().await
        }
        .await;
        match prepared {
            Err(Error::RelayUnreachable { .. }) => {
                tracing::debug!("relay unreachable; the message waits in the outbox");
                Ok(())
            }
            other => other,
        }
    }

    fn note_prepared(&self, fetched: bool, refreshed: bool) {
        let mut last = self
            .inner
            .last_prepared
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if fetched {
            last.0 = Some(Instant::now());
        }
        if refreshed {
            last.1 = Some(Instant::now());
        }
    }

    /// Creates a group conversation named `name` with the given accounts (and every
    /// device of theirs and of this account), administered by this account.
    pub async fn create_group(&self, name: &str, members: &[Handle]) -> Result<GroupId, Error> {
        e2ee_core::group::GroupMeta::check_name(name)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        if members.is_empty() {
            return Err(Error::InvalidInput("name at least one member".into()));
        }
        let _op = self.operation().await?;
        self.prepare_send().await?;
        let mut claims = Vec::new();
        for handle in members.iter().chain(std::iter::once(&self.inner.me)) {
            if handle == &self.inner.me && claims.iter().any(|(h, _)| h == handle) {
                continue;
            }
            claims.push((handle.clone(), self.claim(handle).await?));
        }
        let name = name.to_owned();
        let group = self
            .blocking(move |store, inner| {
                store.transaction(|conn, provider| {
                    let mut packages = Vec::new();
                    for (handle, claim) in &claims {
                        let list = if handle == &inner.me {
                            db::own_list(conn)?
                        } else {
                            db::pin_device_list(conn, handle, &claim.device_list, now_ms())?
                        };
                        let valid =
                            validate_claimed(provider.crypto(), &list, &claim.key_packages)?;
                        if valid.is_empty() && handle != &inner.me {
                            return Err(Error::NoDevices(handle.clone()));
                        }
                        packages.extend(valid);
                    }
                    check_not_blocked(
                        conn,
                        &claims.iter().map(|(h, _)| h.clone()).collect::<Vec<_>>(),
                    )?;
                    let mut conversation =
                        Conversation::create_group(provider, &inner.device(), &name)?;
                    let group = conversation.id();
                    let commit =
                        conversation.commit_changes(provider, &inner.device(), &packages, &[])?;
                    db::insert_conversation(
                        conn,
                        &group,
                        None,
                        ConversationState::Pending,
                        now_ms(),
                    )?;
                    db::set_conversation_name(conn, &group, &name)?;
                    push_commit(conn, &group, Purpose::GroupCreate, None, &commit)?;
                    Ok(group)
                })
            })
            .await?;
        self.flush_outbox().await?;
        Ok(group)
    }

    /// Adds accounts (all their devices) to a group this account administers.
    pub async fn add_to_group(&self, group: &GroupId, members: &[Handle]) -> Result<(), Error> {
        let _op = self.operation().await?;
        self.prepare_send().await?;
        self.check_admin(group).await?;
        let mut claims = Vec::new();
        for handle in members {
            claims.push((handle.clone(), self.claim(handle).await?));
        }
        let group = group.clone();
        self.blocking(move |store, inner| {
            store.transaction(|conn, provider| {
                let mut conversation = load(provider, &group)?;
                let present = conversation.members();
                let mut packages = Vec::new();
                for (handle, claim) in &claims {
                    if present.iter().any(|m| &m.handle == handle) {
                        return Err(Error::InvalidInput(format!("{handle} is a member already")));
                    }
                    let list = db::pin_device_list(conn, handle, &claim.device_list, now_ms())?;
                    let valid = validate_claimed(provider.crypto(), &list, &claim.key_packages)?;
                    if valid.is_empty() {
                        return Err(Error::NoDevices(handle.clone()));
                    }
                    packages.extend(valid);
                }
                let commit =
                    conversation.commit_changes(provider, &inner.device(), &packages, &[])?;
                push_commit(conn, &group, Purpose::Members, None, &commit)
            })
        })
        .await?;
        self.flush_outbox().await
    }

    /// Removes an account (all its devices) from a group this account administers.
    pub async fn remove_from_group(&self, group: &GroupId, member: &Handle) -> Result<(), Error> {
        if member == &self.inner.me {
            return Err(Error::InvalidInput(
                "to leave the group, use `dm group leave`".into(),
            ));
        }
        let _op = self.operation().await?;
        self.prepare_send().await?;
        self.check_admin(group).await?;
        let group = group.clone();
        let member = member.clone();
        self.blocking(move |store, inner| {
            store.transaction(|conn, provider| {
                let mut conversation = load(provider, &group)?;
                let remove: Vec<_> = conversation
                    .members()
                    .into_iter()
                    .filter(|m| m.handle == member)
                    .collect();
                if remove.is_empty() {
                    return Err(Error::InvalidInput(format!("{member} is not a member")));
                }
                let commit =
                    conversation.commit_changes(provider, &inner.device(), &[], &remove)?;
                push_commit(conn, &group, Purpose::Members, None, &commit)
            })
        })
        .await?;
        self.flush_outbox().await
    }

    /// Leaves a conversation: proposes removing every device of this account; the next
    /// member to sync commits it. Until then the conversation is shown as leaving.
    pub async fn leave_group(&self, group: &GroupId) -> Result<(), Error> {
        let _op = self.operation().await?;
        self.flush_outbox().await?;
        self.sync_mailbox().await?;
        self.queue_leave(group.clone(), false).await?;
        self.flush_outbox().await
    }

    async fn check_admin(&self, group: &GroupId) -> Result<(), Error> {
        let group = group.clone();
        self.blocking(move |store, inner| {
            let conversation = store.transaction(|_, provider| load(provider, &group))?;
            match conversation.meta()? {
                Some(meta) if meta.admin == inner.me => Ok(()),
                Some(meta) => Err(Error::InvalidInput(format!(
                    "only the group's administrator ({}) can add or remove members",
                    meta.admin
                ))),
                None => Err(Error::InvalidInput(
                    "this is a 1:1 conversation; create a group to talk with more people".into(),
                )),
            }
        })
        .await
    }

    /// Every conversation with its members and their devices. Local; no network.
    pub async fn conversations(&self) -> Result<Vec<ConversationInfo>, Error> {
        self.blocking(|store, _| {
            let rows = db::conversations(store.conn())?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let conversation = store.transaction(|_, provider| {
                    Ok::<_, Error>(Conversation::load(provider.storage(), &row.group)?)
                })?;
                let (members, admin, epoch) = match &conversation {
                    Some(c) if c.is_active() => {
                        let mut members: Vec<(Handle, Vec<dm_wire::DeviceId>)> = Vec::new();
                        for m in c.members() {
                            match members.iter_mut().find(|(h, _)| h == &m.handle) {
                                Some((_, devices)) => devices.push(m.device_id),
                                None => members.push((m.handle, vec![m.device_id])),
                            }
                        }
                        members.sort();
                        (members, c.meta()?.map(|m| m.admin), c.epoch())
                    }
                    Some(c) => (vec![], c.meta()?.map(|m| m.admin), c.epoch()),
                    None => (vec![], None, 0),
                };
                out.push(ConversationInfo {
                    id: row.group,
                    name: row.name,
                    admin,
                    members,
                    state: row.state.as_str().to_owned(),
                    leaving: row.leaving,
                    epoch,
                });
            }
            Ok(out)
        })
        .await
    }

    /// The safety number shared with `handle` and its verification state. Pins the
    /// contact's key first if it is new (fetching its device list).
    pub async fn verification(&self, handle: &Handle) -> Result<Verification, Error> {
        if handle == &self.inner.me {
            return Err(Error::InvalidInput(
                "verify other people, not yourself".into(),
            ));
        }
        let known = {
            let h = handle.clone();
            self.blocking(move |store, _| Ok(db::contact(store.conn(), &h)?.is_some()))
                .await?
        };
        if !known {
            let _op = self.operation().await?;
            self.fetch_device_list(handle).await?;
        }
        let h = handle.clone();
        self.blocking(move |store, inner| {
            let contact =
                db::contact(store.conn(), &h)?.ok_or_else(|| Error::UnknownHandle(h.clone()))?;
            let own = db::own_list(store.conn())?;
            let number =
                SafetyNumber::derive(&inner.me, &own.account_key, &h, &contact.account_key);
            Ok(Verification {
                handle: h,
                safety_number: number.display(),
                qr_payload: number.qr_payload(),
                fingerprint: contact.account_key.fingerprint(),
                verified: contact.verified,
                key_changed: contact.key_changed,
                blocked: contact.blocked,
            })
        })
        .await
    }

    /// Marks the contact's current key as verified (the user compared the safety number).
    /// Clears a key-change warning and lifts the refusal to send.
    pub async fn confirm_verification(&self, handle: &Handle) -> Result<Verification, Error> {
        let v = self.verification(handle).await?;
        let h = handle.clone();
        self.blocking(move |store, _| db::confirm_contact(store.conn(), &h))
            .await?;
        Ok(Verification {
            verified: true,
            key_changed: false,
            blocked: false,
            ..v
        })
    }

    /// The group code of a conversation in this device's current epoch (every member in
    /// the same state shows the same code) and that epoch. Local; no network.
    pub async fn group_code(&self, group: &GroupId) -> Result<(u64, String), Error> {
        let group = group.clone();
        self.blocking(move |store, _| {
            let conversation = store.transaction(|_, provider| {
                Ok::<_, Error>(Conversation::load(provider.storage(), &group)?)
            })?;
            let c = conversation
                .ok_or_else(|| Error::InvalidInput(format!("no conversation {group}")))?;
            Ok((c.epoch(), c.group_code()))
        })
        .await
    }
}

pub(crate) fn check_text(text: &str) -> Result<(), Error> {
    if text.len() > e2ee_core::content::MAX_TEXT_BYTES {
        return Err(Error::InvalidInput(format!(
            "the text is longer than {} bytes",
            e2ee_core::content::MAX_TEXT_BYTES
        )));
    }
    Ok(())
}

/// Refuses when a contact among `handles` changed its key after it was verified.
pub(crate) fn check_not_blocked(
    conn: &rusqlite::Connection,
    handles: &[Handle],
) -> Result<(), Error> {
    for h in handles {
        if db::contact(conn, h)?.is_some_and(|c| c.blocked) {
            return Err(Error::VerifiedKeyChanged(h.clone()));
        }
    }
    Ok(())
}

fn parse_handle(input: &str) -> Result<Handle, Error> {
    Handle::parse(input)
        .map_err(|e| Error::InvalidInput(format!("'{input}' is not a valid handle: {e}")))
}
