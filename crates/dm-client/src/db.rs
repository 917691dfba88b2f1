//! Rows of the client's own tables (see [`crate::schema`]). Every function takes the
//! connection (usually a transaction's) and does one small thing.

use dm_wire::cert::{AccountKey, DeviceCertificate, DeviceList};
use dm_wire::{DeviceId, GroupId, Handle, MessageId};
use e2ee_core::Directory;
use e2ee_core::directory::verify_device_list;
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;
use crate::events::{Event, StoredMessage};
use crate::store::store_error;

type Result<T> = std::result::Result<T, Error>;

fn handle(s: String) -> Result<Handle> {
    Handle::from_canonical(&s).map_err(|e| Error::Store(format!("bad handle in store: {e}")))
}

fn corrupt(what: &str) -> Error {
    Error::Store(format!("corrupt {what} in store"))
}

// ---- account ------------------------------------------------------------------------------

/// This device's account, as stored.
pub(crate) struct AccountRow {
    /// The device's certificate.
    pub certificate: DeviceCertificate,
    /// Our current device list.
    pub device_list: DeviceList,
}

pub(crate) fn insert_account(
    conn: &Connection,
    secret: &[u8; 32],
    certificate: &DeviceCertificate,
    device_list: &DeviceList,
    now_ms: u64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO account (id, handle, account_secret, device_certificate, device_list, created_at) \
         VALUES (1, ?, ?, ?, ?, ?)",
        params![
            certificate.handle.as_str(),
            secret.as_slice(),
            certificate.encode(),
            device_list.encode(),
            now_ms as i64
        ],
    )
    .map_err(store_error)?;
    Ok(())
}

pub(crate) fn account(conn: &Connection) -> Result<Option<AccountRow>> {
    let row: Option<(Vec<u8>, Vec<u8>)> = conn
        .query_row(
            "SELECT device_certificate, device_list FROM account WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(store_error)?;
    let Some((cert, list)) = row else {
        return Ok(None);
    };
    Ok(Some(AccountRow {
        certificate: DeviceCertificate::decode(&cert).map_err(|_| corrupt("certificate"))?,
        device_list: DeviceList::decode(&list).map_err(|_| corrupt("device list"))?,
    }))
}

/// The account secret (32 bytes).
pub(crate) fn account_secret(conn: &Connection) -> Result<zeroize::Zeroizing<[u8; 32]>> {
    let bytes: zeroize::Zeroizing<Vec<u8>> = zeroize::Zeroizing::new(
        conn.query_row("SELECT account_secret FROM account WHERE id = 1", [], |r| {
            r.get(0)
        })
        .map_err(store_error)?,
    );
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    if bytes.len() != 32 {
        return Err(corrupt("account secret"));
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// Our current device list.
pub(crate) fn own_list(conn: &Connection) -> Result<DeviceList> {
    Ok(account(conn)?.ok_or(Error::NoAccount)?.device_list)
}

/// Replaces our device list (after linking, revoking, or learning a newer one).
pub(crate) fn set_own_list(conn: &Connection, list: &DeviceList) -> Result<()> {
    conn.execute(
        "UPDATE account SET device_list = ? WHERE id = 1",
        [list.encode()],
    )
    .map_err(store_error)?;
    Ok(())
}

// ---- relay --------------------------------------------------------------------------------

/// Our state at the relay.
pub(crate) struct RelayRow {
    pub url: String,
    pub session_token: Option<String>,
    pub cursor: u64,
    pub acked: u64,
}

pub(crate) fn insert_relay(conn: &Connection, url: &str) -> Result<()> {
    conn.execute("INSERT INTO relay (id, url) VALUES (1, ?)", [url])
        .map_err(store_error)?;
    Ok(())
}

pub(crate) fn relay(conn: &Connection) -> Result<RelayRow> {
    conn.query_row(
        "SELECT url, session_token, mailbox_cursor, acked_cursor FROM relay WHERE id = 1",
        [],
        |r| {
            Ok(RelayRow {
                url: r.get(0)?,
                session_token: r.get(1)?,
                cursor: r.get::<_, i64>(2)? as u64,
                acked: r.get::<_, i64>(3)? as u64,
            })
        },
    )
    .map_err(store_error)
}

pub(crate) fn set_session(conn: &Connection, token: Option<&str>, expires_at: u64) -> Result<()> {
    conn.execute(
        "UPDATE relay SET session_token = ?, session_expires_at = ? WHERE id = 1",
        params![token, expires_at as i64],
    )
    .map_err(store_error)?;
    Ok(())
}

pub(crate) fn set_cursor(conn: &Connection, seq: u64) -> Result<()> {
    let seq = i64::try_from(seq)
        .map_err(|_| Error::Protocol(format!("mailbox sequence number {seq} out of range")))?;
    conn.execute(
        "UPDATE relay SET mailbox_cursor = max(mailbox_cursor, ?) WHERE id = 1",
        [seq],
    )
    .map_err(store_error)?;
    Ok(())
}

/// Notes the relay's `dropped` counter for this device. If it grew, queues
/// [`Event::MessagesDropped`] and marks that the device must rejoin; returns whether it grew.
pub(crate) fn note_dropped(conn: &Connection, dropped: u64) -> Result<bool> {
    let seen: i64 = conn
        .query_row("SELECT dropped_seen FROM relay WHERE id = 1", [], |r| {
            r.get(0)
        })
        .map_err(store_error)?;
    let seen = seen as u64;
    if dropped <= seen {
        return Ok(false);
    }
    queue_event(
        conn,
        &Event::MessagesDropped {
            count: dropped - seen,
        },
    )?;
    conn.execute(
        "UPDATE relay SET dropped_seen = ?, rejoin_needed = 1 WHERE id = 1",
        [i64::try_from(dropped).unwrap_or(i64::MAX)],
    )
    .map_err(store_error)?;
    Ok(true)
}

/// Whether this device must rejoin (see [`note_dropped`]).
pub(crate) fn rejoin_needed(conn: &Connection) -> Result<bool> {
    conn.query_row("SELECT rejoin_needed FROM relay WHERE id = 1", [], |r| {
        r.get(0)
    })
    .map_err(store_error)
}

/// This device was replaced by a new one (a rejoin): its certificate, the account's new
/// device list, and a fresh mailbox at the relay (cursor, acknowledgements, session and
/// `dropped` counter start over). Queued outgoing MLS messages belonged to the old device's
/// group state and are dropped.
pub(crate) fn replace_device(
    conn: &Connection,
    certificate: &DeviceCertificate,
    list: &DeviceList,
) -> Result<()> {
    conn.execute(
        "UPDATE account SET device_certificate = ?, device_list = ? WHERE id = 1",
        params![certificate.encode(), list.encode()],
    )
    .map_err(store_error)?;
    conn.execute(
        "UPDATE relay SET session_token = NULL, session_expires_at = NULL, mailbox_cursor = 0, \
         acked_cursor = 0, dropped_seen = 0, rejoin_needed = 0 WHERE id = 1",
        [],
    )
    .map_err(store_error)?;
    conn.execute("DELETE FROM outbox", [])
        .map_err(store_error)?;
    Ok(())
}

pub(crate) fn set_acked(conn: &Connection, seq: u64) -> Result<()> {
    let seq = i64::try_from(seq)
        .map_err(|_| Error::Protocol(format!("mailbox sequence number {seq} out of range")))?;
    conn.execute(
        "UPDATE relay SET acked_cursor = max(acked_cursor, ?) WHERE id = 1",
        [seq],
    )
    .map_err(store_error)?;
    Ok(())
}

/// How long the hash of a processed envelope is kept (the relay's retention is 30 days).
const SEEN_ENVELOPE_RETENTION_MS: u64 = 31 * 24 * 3600 * 1000;

/// Whether an envelope with this payload was processed or rejected before.
pub(crate) fn envelope_seen(conn: &Connection, payload_hash: &[u8; 32]) -> Result<bool> {
    conn.query_row(
        "SELECT 1 FROM seen_envelopes WHERE payload_hash = ?",
        [&payload_hash[..]],
        |_| Ok(()),
    )
    .optional()
    .map(|row| row.is_some())
    .map_err(store_error)
}

/// Remembers an envelope's payload hash, forgetting those past the retention period.
pub(crate) fn mark_envelope_seen(
    conn: &Connection,
    payload_hash: &[u8; 32],
    now_ms: u64,
) -> Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO seen_envelopes (payload_hash, seen_at) VALUES (?, ?)",
        params![&payload_hash[..], now_ms as i64],
    )
    .map_err(store_error)?;
    conn.execute(
        "DELETE FROM seen_envelopes WHERE seen_at < ?",
        [now_ms.saturating_sub(SEEN_ENVELOPE_RETENTION_MS) as i64],
    )
    .map_err(store_error)?;
    Ok(())
}

// ---- contacts -----------------------------------------------------------------------------

/// Verifies a device list received from the relay for `handle` and stores it: pins the
/// account key on first contact, refuses a different key later
/// ([`Error::IdentityKeyChanged`]), and keeps the stored list if the received one is older.
/// Returns the list now current.
pub(crate) fn pin_device_list(
    conn: &Connection,
    handle: &Handle,
    encoded: &[u8],
    now_ms: u64,
) -> Result<DeviceList> {
    let existing: Option<(Vec<u8>, Vec<u8>)> = conn
        .query_row(
            "SELECT account_key, device_list FROM contacts WHERE handle = ?",
            [handle.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(store_error)?;
    let pinned = existing
        .as_ref()
        .map(|(key, _)| {
            <[u8; 32]>::try_from(key.as_slice())
                .map(AccountKey)
                .map_err(|_| corrupt("pinned key"))
        })
        .transpose()?;
    let list = verify_device_list(encoded, handle, None)?;
    if let Some(pinned) = pinned
        && pinned != list.account_key
    {
        // A new account key under a known handle: the account was re-created (or the relay
        // substitutes keys). Pin the new key, and flag the change: it is shown to the user,
        // and if the old key was verified, sending is refused until the user confirms.
        let verified: bool = conn
            .query_row(
                "SELECT verified FROM contacts WHERE handle = ?",
                [handle.as_str()],
                |r| r.get(0),
            )
            .map_err(store_error)?;
        conn.execute(
            "UPDATE contacts SET account_key = ?, device_list = ?, device_list_sequence = ?, \
             pinned_at = ?, updated_at = ?, key_changed = 1, blocked = (blocked OR verified), \
             verified = 0 WHERE handle = ?",
            params![
                list.account_key.0.as_slice(),
                encoded,
                list.sequence as i64,
                now_ms as i64,
                now_ms as i64,
                handle.as_str()
            ],
        )
        .map_err(store_error)?;
        queue_event(
            conn,
            &Event::IdentityKeyChanged {
                handle: handle.clone(),
                was_verified: verified,
            },
        )?;
        return Ok(list);
    }
    if let Some((_, stored)) = &existing {
        let stored_list = DeviceList::decode(stored).map_err(|_| corrupt("device list"))?;
        if stored_list.sequence > list.sequence {
            // An older list (a replay by the relay): keep ours.
            return Ok(stored_list);
        }
        if stored_list.sequence == list.sequence {
            // The same version must be the same list: two different lists under one
            // sequence number mean the account key signed conflicting lists.
            return if stored.as_slice() == encoded {
                Ok(stored_list)
            } else {
                Err(Error::Protocol(format!(
                    "{handle} published two different device lists with sequence {}",
                    list.sequence
                )))
            };
        }
        conn.execute(
            "UPDATE contacts SET device_list = ?, device_list_sequence = ?, updated_at = ? \
             WHERE handle = ?",
            params![
                encoded,
                list.sequence as i64,
                now_ms as i64,
                handle.as_str()
            ],
        )
        .map_err(store_error)?;
    } else {
        conn.execute(
            "INSERT INTO contacts (handle, account_key, device_list, device_list_sequence, \
             pinned_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
            params![
                handle.as_str(),
                list.account_key.0.as_slice(),
                encoded,
                list.sequence as i64,
                now_ms as i64,
                now_ms as i64
            ],
        )
        .map_err(store_error)?;
    }
    Ok(list)
}

/// What we know about a contact.
pub(crate) struct ContactRow {
    pub account_key: AccountKey,
    pub device_list: DeviceList,
    pub verified: bool,
    pub key_changed: bool,
    pub blocked: bool,
}

pub(crate) fn contact(conn: &Connection, handle: &Handle) -> Result<Option<ContactRow>> {
    type RawContact = (Vec<u8>, Vec<u8>, bool, bool, bool);
    let row: Option<RawContact> = conn
        .query_row(
            "SELECT account_key, device_list, verified, key_changed, blocked FROM contacts \
             WHERE handle = ?",
            [handle.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()
        .map_err(store_error)?;
    row.map(|(key, list, verified, key_changed, blocked)| {
        Ok(ContactRow {
            account_key: AccountKey(
                <[u8; 32]>::try_from(key.as_slice()).map_err(|_| corrupt("pinned key"))?,
            ),
            device_list: DeviceList::decode(&list).map_err(|_| corrupt("device list"))?,
            verified,
            key_changed,
            blocked,
        })
    })
    .transpose()
}

/// The user confirmed the contact's current key: verified, no longer flagged.
pub(crate) fn confirm_contact(conn: &Connection, handle: &Handle) -> Result<()> {
    conn.execute(
        "UPDATE contacts SET verified = 1, key_changed = 0, blocked = 0 WHERE handle = ?",
        [handle.as_str()],
    )
    .map_err(store_error)?;
    Ok(())
}

/// Records that a device was heard from.
pub(crate) fn touch_device(
    conn: &Connection,
    handle: &Handle,
    device: &DeviceId,
    now_ms: u64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO device_activity (device_id, handle, last_seen) VALUES (?, ?, ?) \
         ON CONFLICT (device_id) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
        params![device.as_bytes().as_slice(), handle.as_str(), now_ms as i64],
    )
    .map_err(store_error)?;
    Ok(())
}

/// When a device was last heard from (unix ms).
pub(crate) fn device_last_seen(conn: &Connection, device: &DeviceId) -> Result<Option<u64>> {
    conn.query_row(
        "SELECT last_seen FROM device_activity WHERE device_id = ?",
        [device.as_bytes().as_slice()],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|v| v.map(|t| t as u64))
    .map_err(store_error)
}

/// The authentication service's view: our own device list and the contacts' lists.
pub(crate) struct StoreDirectory<'c> {
    pub conn: &'c Connection,
    pub own: &'c DeviceList,
}

impl Directory for StoreDirectory<'_> {
    fn device_list(
        &self,
        handle: &Handle,
    ) -> std::result::Result<Option<DeviceList>, e2ee_core::Error> {
        if handle == &self.own.handle {
            return Ok(Some(self.own.clone()));
        }
        let bytes: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT device_list FROM contacts WHERE handle = ?",
                [handle.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(e2ee_core::Error::storage)?;
        bytes
            .map(|b| DeviceList::decode(&b).map_err(e2ee_core::Error::storage))
            .transpose()
    }
}

// ---- conversations ------------------------------------------------------------------------

/// Lifecycle of a conversation row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConversationState {
    /// We created it; the creating commit is not yet accepted.
    Pending,
    /// Usable.
    Active,
    /// We were removed.
    Left,
}

impl ConversationState {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => ConversationState::Pending,
            "active" => ConversationState::Active,
            "left" => ConversationState::Left,
            _ => return Err(corrupt("conversation state")),
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ConversationState::Pending => "pending",
            ConversationState::Active => "active",
            ConversationState::Left => "left",
        }
    }
}

pub(crate) fn insert_conversation(
    conn: &Connection,
    group: &GroupId,
    peer: Option<&Handle>,
    state: ConversationState,
    now_ms: u64,
) -> Result<()> {
    conn.execute(
        "INSERT INTO conversations (group_id, peer_handle, state, created_at) VALUES (?, ?, ?, ?) \
         ON CONFLICT (group_id) DO UPDATE SET state = excluded.state",
        params![
            group.as_bytes(),
            peer.map(Handle::as_str),
            state.as_str(),
            now_ms as i64
        ],
    )
    .map_err(store_error)?;
    Ok(())
}

/// A conversation as listed to the user.
pub(crate) struct ConversationRow {
    pub group: GroupId,
    pub name: Option<String>,
    pub state: ConversationState,
    pub leaving: bool,
}

type RawConversation = (Vec<u8>, Option<String>, String, bool);

fn conversation_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawConversation> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn conversation_row(
    (group, name, state, leaving): (Vec<u8>, Option<String>, String, bool),
) -> Result<ConversationRow> {
    Ok(ConversationRow {
        group: GroupId(group),
        name,
        state: ConversationState::parse(&state)?,
        leaving,
    })
}

/// Every conversation, oldest first.
pub(crate) fn conversations(conn: &Connection) -> Result<Vec<ConversationRow>> {
    let mut stmt = conn
        .prepare(
            "SELECT group_id, name, state, leaving FROM conversations ORDER BY created_at, group_id",
        )
        .map_err(store_error)?;
    let rows = stmt
        .query_map([], conversation_from_row)
        .map_err(store_error)?;
    rows.map(|r| conversation_row(r.map_err(store_error)?))
        .collect()
}

/// One conversation.
pub(crate) fn conversation(conn: &Connection, group: &GroupId) -> Result<Option<ConversationRow>> {
    conn.query_row(
        "SELECT group_id, name, state, leaving FROM conversations WHERE group_id = ?",
        [group.as_bytes()],
        conversation_from_row,
    )
    .optional()
    .map_err(store_error)?
    .map(conversation_row)
    .transpose()
}

pub(crate) fn set_conversation_name(conn: &Connection, group: &GroupId, name: &str) -> Result<()> {
    conn.execute(
        "UPDATE conversations SET name = ? WHERE group_id = ?",
        params![name, group.as_bytes()],
    )
    .map_err(store_error)?;
    Ok(())
}

pub(crate) fn set_leaving(conn: &Connection, group: &GroupId) -> Result<()> {
    conn.execute(
        "UPDATE conversations SET leaving = 1 WHERE group_id = ?",
        [group.as_bytes()],
    )
    .map_err(store_error)?;
    Ok(())
}

/// The post-compromise-security schedule of a conversation: when this device last renewed
/// its leaf (unix ms; the creation time if never) and how many messages it sent since.
pub(crate) fn update_schedule(conn: &Connection, group: &GroupId) -> Result<(u64, u64)> {
    conn.query_row(
        "SELECT coalesce(updated_at, created_at), sent_since_update FROM conversations \
         WHERE group_id = ?",
        [group.as_bytes()],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
    )
    .map_err(store_error)
}

pub(crate) fn count_sent(conn: &Connection, group: &GroupId) -> Result<()> {
    conn.execute(
        "UPDATE conversations SET sent_since_update = sent_since_update + 1 WHERE group_id = ?",
        [group.as_bytes()],
    )
    .map_err(store_error)?;
    Ok(())
}

pub(crate) fn mark_updated(conn: &Connection, group: &GroupId, now_ms: u64) -> Result<()> {
    conn.execute(
        "UPDATE conversations SET updated_at = ?, sent_since_update = 0 WHERE group_id = ?",
        params![now_ms as i64, group.as_bytes()],
    )
    .map_err(store_error)?;
    Ok(())
}

pub(crate) fn set_conversation_state(
    conn: &Connection,
    group: &GroupId,
    state: ConversationState,
) -> Result<()> {
    conn.execute(
        "UPDATE conversations SET state = ? WHERE group_id = ?",
        params![state.as_str(), group.as_bytes()],
    )
    .map_err(store_error)?;
    Ok(())
}

pub(crate) fn delete_conversation(conn: &Connection, group: &GroupId) -> Result<()> {
    conn.execute(
        "DELETE FROM conversations WHERE group_id = ?",
        [group.as_bytes()],
    )
    .map_err(store_error)?;
    Ok(())
}

/// The active 1:1 conversation with `peer` with the smallest group id (two may exist when
/// both sides started one at the same time).
pub(crate) fn conversation_with(conn: &Connection, peer: &Handle) -> Result<Option<GroupId>> {
    let id: Option<Vec<u8>> = conn
        .query_row(
            "SELECT group_id FROM conversations WHERE peer_handle = ? AND state = 'active' \
             ORDER BY group_id LIMIT 1",
            [peer.as_str()],
            |r| r.get(0),
        )
        .optional()
        .map_err(store_error)?;
    Ok(id.map(GroupId))
}

/// The peer of a 1:1 conversation (`None` for groups).
pub(crate) fn peer_of(conn: &Connection, group: &GroupId) -> Result<Option<Handle>> {
    let peer: Option<Option<String>> = conn
        .query_row(
            "SELECT peer_handle FROM conversations WHERE group_id = ?",
            [group.as_bytes()],
            |r| r.get(0),
        )
        .optional()
        .map_err(store_error)?;
    peer.flatten()
        .map(|h| Handle::from_canonical(&h).map_err(|_| corrupt("peer handle")))
        .transpose()
}

/// Turns a 1:1 conversation into a group conversation (it gained or lost members).
pub(crate) fn clear_peer(conn: &Connection, group: &GroupId) -> Result<()> {
    conn.execute(
        "UPDATE conversations SET peer_handle = NULL WHERE group_id = ?",
        [group.as_bytes()],
    )
    .map_err(store_error)?;
    Ok(())
}

pub(crate) fn members(conn: &Connection, group: &GroupId) -> Result<Vec<Handle>> {
    let mut stmt = conn
        .prepare("SELECT handle FROM conversation_members WHERE group_id = ? ORDER BY handle")
        .map_err(store_error)?;
    let rows = stmt
        .query_map([group.as_bytes()], |r| r.get::<_, String>(0))
        .map_err(store_error)?;
    rows.map(|r| handle(r.map_err(store_error)?)).collect()
}

pub(crate) fn set_members(conn: &Connection, group: &GroupId, handles: &[Handle]) -> Result<()> {
    conn.execute(
        "DELETE FROM conversation_members WHERE group_id = ?",
        [group.as_bytes()],
    )
    .map_err(store_error)?;
    for h in handles {
        conn.execute(
            "INSERT OR IGNORE INTO conversation_members (group_id, handle) VALUES (?, ?)",
            params![group.as_bytes(), h.as_str()],
        )
        .map_err(store_error)?;
    }
    Ok(())
}

// ---- messages -----------------------------------------------------------------------------

/// A message to store.
pub(crate) struct NewMessage<'a> {
    pub id: MessageId,
    pub group: &'a GroupId,
    pub sender: &'a Handle,
    pub sender_device: DeviceId,
    pub sent_at: u64,
    pub received_at: Option<u64>,
    pub body: &'a str,
    pub outgoing: bool,
}

/// Stores a message; returns false if a message with this id is already stored.
pub(crate) fn insert_message(conn: &Connection, m: &NewMessage<'_>) -> Result<bool> {
    let n = conn
        .execute(
            "INSERT OR IGNORE INTO messages (message_id, group_id, sender_handle, sender_device, \
             sent_at, received_at, body, outgoing) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            params![
                m.id.as_bytes().as_slice(),
                m.group.as_bytes(),
                m.sender.as_str(),
                m.sender_device.as_bytes().as_slice(),
                m.sent_at as i64,
                m.received_at.map(|t| t as i64),
                m.body,
                m.outgoing
            ],
        )
        .map_err(store_error)?;
    Ok(n == 1)
}

/// The last `limit` messages exchanged with `peer` (in all 1:1 conversations with them),
/// oldest first.
pub(crate) fn history(
    conn: &Connection,
    peer: &Handle,
    limit: usize,
) -> Result<Vec<StoredMessage>> {
    let mut stmt = conn
        .prepare(
            "SELECT m.message_id, m.group_id, m.sender_handle, m.sender_device, m.body, m.sent_at, \
                    m.received_at, m.outgoing, \
                    EXISTS (SELECT 1 FROM outbox o WHERE o.content_message_id = m.message_id) \
             FROM messages m JOIN conversations c ON c.group_id = m.group_id \
             WHERE c.peer_handle = ? ORDER BY m.id DESC LIMIT ?",
        )
        .map_err(store_error)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt
        .query_map(params![peer.as_str(), limit], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, bool>(7)?,
                r.get::<_, bool>(8)?,
            ))
        })
        .map_err(store_error)?;
    let mut out = Vec::new();
    for row in rows {
        let (id, group, from, device, text, sent_at, received_at, outgoing, pending) =
            row.map_err(store_error)?;
        out.push(StoredMessage {
            id: MessageId::from_slice(&id).map_err(|_| corrupt("message id"))?,
            conversation: GroupId(group),
            from: handle(from)?,
            from_device: DeviceId::from_slice(&device).map_err(|_| corrupt("device id"))?,
            text,
            sent_at: sent_at as u64,
            received_at: received_at.map(|t| t as u64),
            outgoing,
            pending,
        });
    }
    out.reverse();
    Ok(out)
}

// ---- outbox -------------------------------------------------------------------------------

/// What kind of MLS message an outbox entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OutboxKind {
    Application,
    Commit,
    Proposal,
}

/// Which operation produced an outbox entry (what to redo after a commit conflict).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// An application message.
    Message,
    /// The commit adding the peer to a conversation we just created.
    Create,
    /// A commit adding the peer's devices to an existing conversation.
    Invite,
    /// A self-update commit.
    SelfUpdate,
    /// The commit adding the first members to a group conversation we created.
    GroupCreate,
    /// A commit adding or removing accounts (the group's administrator).
    Members,
    /// A commit bringing the conversation in line with its members' device lists (adds
    /// linked or recovered devices, removes revoked ones, carries out leave proposals).
    Sync,
    /// A proposal removing our account's devices (leaving).
    Leave,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Message => "message",
            Purpose::Create => "create",
            Purpose::Invite => "invite",
            Purpose::SelfUpdate => "self_update",
            Purpose::GroupCreate => "group_create",
            Purpose::Members => "members",
            Purpose::Sync => "sync",
            Purpose::Leave => "leave",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "message" => Purpose::Message,
            "create" => Purpose::Create,
            "invite" => Purpose::Invite,
            "self_update" => Purpose::SelfUpdate,
            "group_create" => Purpose::GroupCreate,
            "members" => Purpose::Members,
            "sync" => Purpose::Sync,
            "leave" => Purpose::Leave,
            _ => return Err(corrupt("outbox purpose")),
        })
    }
}

/// One pending send.
#[derive(Clone, Debug)]
pub(crate) struct OutboxEntry {
    pub id: i64,
    pub request_id: MessageId,
    pub group: GroupId,
    pub kind: OutboxKind,
    pub purpose: Purpose,
    pub peer: Option<Handle>,
    pub message: Vec<u8>,
    pub welcome: Option<Vec<u8>>,
    pub removed_devices: Vec<DeviceId>,
}

/// A new outbox entry.
pub(crate) struct NewOutbox<'a> {
    pub request_id: MessageId,
    pub group: &'a GroupId,
    pub purpose: Purpose,
    pub peer: Option<&'a Handle>,
    pub content_message_id: Option<MessageId>,
    pub message: &'a [u8],
    pub welcome: Option<&'a [u8]>,
    pub removed_devices: &'a [DeviceId],
}

pub(crate) fn outbox_push(conn: &Connection, e: &NewOutbox<'_>, now_ms: u64) -> Result<()> {
    let kind = match e.purpose {
        Purpose::Message => "application",
        Purpose::Leave => "proposal",
        _ => "commit",
    };
    let removed: Vec<u8> = e
        .removed_devices
        .iter()
        .flat_map(|d| d.as_bytes().iter().copied())
        .collect();
    conn.execute(
        "INSERT INTO outbox (request_id, group_id, kind, purpose, peer_handle, content_message_id, \
         message, welcome, removed_devices, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        params![
            e.request_id.as_bytes().as_slice(),
            e.group.as_bytes(),
            kind,
            e.purpose.as_str(),
            e.peer.map(Handle::as_str),
            e.content_message_id.map(|m| m.0.to_vec()),
            e.message,
            e.welcome,
            (!removed.is_empty()).then_some(removed),
            now_ms as i64
        ],
    )
    .map_err(store_error)?;
    Ok(())
}

/// The oldest pending send.
pub(crate) fn outbox_first(conn: &Connection) -> Result<Option<OutboxEntry>> {
    let row = conn
        .query_row(
            "SELECT id, request_id, group_id, kind, purpose, peer_handle, message, welcome, \
             removed_devices FROM outbox ORDER BY id LIMIT 1",
            [],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                    r.get::<_, Vec<u8>>(6)?,
                    r.get::<_, Option<Vec<u8>>>(7)?,
                    r.get::<_, Option<Vec<u8>>>(8)?,
                ))
            },
        )
        .optional()
        .map_err(store_error)?;
    let Some((id, request_id, group, kind, purpose, peer, message, welcome, removed)) = row else {
        return Ok(None);
    };
    Ok(Some(OutboxEntry {
        id,
        request_id: MessageId::from_slice(&request_id).map_err(|_| corrupt("outbox id"))?,
        group: GroupId(group),
        kind: match kind.as_str() {
            "application" => OutboxKind::Application,
            "commit" => OutboxKind::Commit,
            "proposal" => OutboxKind::Proposal,
            _ => return Err(corrupt("outbox kind")),
        },
        purpose: Purpose::parse(&purpose)?,
        peer: peer.map(handle).transpose()?,
        message,
        welcome,
        removed_devices: removed
            .unwrap_or_default()
            .chunks(DeviceId::LEN)
            .map(|c| DeviceId::from_slice(c).map_err(|_| corrupt("outbox removed devices")))
            .collect::<Result<_>>()?,
    }))
}

pub(crate) fn outbox_delete(conn: &Connection, id: i64) -> Result<()> {
    conn.execute("DELETE FROM outbox WHERE id = ?", [id])
        .map_err(store_error)?;
    Ok(())
}

#[cfg(test)]
pub(crate) fn outbox_len(conn: &Connection) -> Result<usize> {
    let n: i64 = conn
        .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .map_err(store_error)?;
    Ok(n as usize)
}

// ---- event queue --------------------------------------------------------------------------

pub(crate) fn queue_event(conn: &Connection, event: &Event) -> Result<()> {
    let json = serde_json::to_string(event).map_err(|e| Error::Internal(e.to_string()))?;
    conn.execute("INSERT INTO event_queue (event) VALUES (?)", [json])
        .map_err(store_error)?;
    Ok(())
}

/// Every queued event, oldest first, with the queue position of the last one (0 if none).
pub(crate) fn queued_events(conn: &Connection) -> Result<(Vec<Event>, i64)> {
    let mut stmt = conn
        .prepare("SELECT id, event FROM event_queue ORDER BY id")
        .map_err(store_error)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .map_err(store_error)?;
    let mut events = Vec::new();
    let mut last = 0;
    for row in rows {
        let (id, json) = row.map_err(store_error)?;
        events.push(serde_json::from_str(&json).map_err(|_| corrupt("queued event"))?);
        last = id;
    }
    Ok((events, last))
}

/// Forgets the queued events up to and including position `up_to`.
pub(crate) fn delete_events_up_to(conn: &Connection, up_to: i64) -> Result<()> {
    conn.execute("DELETE FROM event_queue WHERE id <= ?", [up_to])
        .map_err(store_error)?;
    Ok(())
}

/// Removes and returns every queued event, oldest first.
#[cfg(test)]
pub(crate) fn drain_events(conn: &Connection) -> Result<Vec<Event>> {
    let (events, last) = queued_events(conn)?;
    delete_events_up_to(conn, last)?;
    Ok(events)
}
