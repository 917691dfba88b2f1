//! The client's own tables (the MLS tables belong to `openmls_sqlite_storage`).
//!
//! Versioned with `PRAGMA user_version`; each entry of [`MIGRATIONS`] runs once, in order,
//! in one transaction.

use rusqlite::Connection;

use crate::error::Error;
use crate::store::store_error;

/// Schema migrations; index `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
-- This device's account. One row.
CREATE TABLE account (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    handle             TEXT NOT NULL,
    account_secret     BLOB NOT NULL,          -- Ed25519 secret (32 bytes); the file is encrypted
    device_certificate BLOB NOT NULL,          -- dm_wire DeviceCertificate encoding
    device_list        BLOB NOT NULL,          -- our current signed DeviceList encoding
    created_at         INTEGER NOT NULL        -- unix ms
);

-- The relay and our state there. One row.
CREATE TABLE relay (
    id                 INTEGER PRIMARY KEY CHECK (id = 1),
    url                TEXT NOT NULL,
    session_token      TEXT,
    session_expires_at INTEGER,                -- unix seconds
    mailbox_cursor     INTEGER NOT NULL DEFAULT 0,   -- highest envelope seq processed
    acked_cursor       INTEGER NOT NULL DEFAULT 0    -- highest seq acknowledged to the relay
);

-- Accounts we talk to: the pinned account key and the newest verified device list.
CREATE TABLE contacts (
    handle               TEXT PRIMARY KEY,
    account_key          BLOB NOT NULL,        -- pinned on first use; a change is refused
    device_list          BLOB NOT NULL,
    device_list_sequence INTEGER NOT NULL,
    pinned_at            INTEGER NOT NULL,     -- unix ms
    updated_at           INTEGER NOT NULL      -- unix ms
);

-- Conversations (one MLS group each).
CREATE TABLE conversations (
    group_id    BLOB PRIMARY KEY,
    peer_handle TEXT,                          -- the other account of a 1:1 conversation
    state       TEXT NOT NULL CHECK (state IN ('pending', 'active', 'left')),
    created_at  INTEGER NOT NULL               -- unix ms
);
CREATE INDEX conversations_by_peer ON conversations (peer_handle, state, group_id);

-- The other accounts in each conversation.
CREATE TABLE conversation_members (
    group_id BLOB NOT NULL REFERENCES conversations (group_id) ON DELETE CASCADE,
    handle   TEXT NOT NULL,
    PRIMARY KEY (group_id, handle)
);

-- Messages sent and received (plaintext; the file is encrypted).
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    BLOB NOT NULL UNIQUE,        -- content message id: duplicates are dropped
    group_id      BLOB NOT NULL,
    sender_handle TEXT NOT NULL,
    sender_device BLOB NOT NULL,
    sent_at       INTEGER NOT NULL,            -- unix ms, the sender's claim
    received_at   INTEGER,                     -- unix ms, the relay's time; NULL if outgoing
    body          TEXT NOT NULL,
    outgoing      INTEGER NOT NULL
);
CREATE INDEX messages_by_group ON messages (group_id, id);

-- MLS messages waiting for the relay's definitive answer; a retry resends the same bytes
-- under the same request id.
CREATE TABLE outbox (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id         BLOB NOT NULL UNIQUE,   -- SendRequest.id
    group_id           BLOB NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('application', 'commit')),
    purpose            TEXT NOT NULL CHECK (purpose IN ('message', 'create', 'invite', 'self_update')),
    peer_handle        TEXT,                   -- whom a create/invite commit adds
    content_message_id BLOB,                   -- for application messages
    message            BLOB NOT NULL,
    welcome            BLOB,
    created_at         INTEGER NOT NULL
);

-- SHA-256 of every envelope payload processed or rejected: the relay may deliver the same
-- bytes again under a new sequence number; such a copy is recognised and ignored.
CREATE TABLE seen_envelopes (
    payload_hash BLOB PRIMARY KEY,
    seen_at      INTEGER NOT NULL              -- unix ms
) WITHOUT ROWID;
CREATE INDEX seen_envelopes_by_age ON seen_envelopes (seen_at);

-- Events not yet returned by Client::sync (JSON), so none is lost between processes.
CREATE TABLE event_queue (
    id    INTEGER PRIMARY KEY AUTOINCREMENT,
    event TEXT NOT NULL
);
"#,
    r#"
-- Version 2: devices, verification, groups.

-- Verification state of each contact: `verified` once the user confirmed the safety number
-- of the pinned key; `key_changed` when the account key changed since it was pinned or
-- confirmed (shown until confirmed); `blocked` when it changed while verified (sending is
-- refused until the user confirms the new key).
ALTER TABLE contacts ADD COLUMN verified    INTEGER NOT NULL DEFAULT 0;
ALTER TABLE contacts ADD COLUMN key_changed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE contacts ADD COLUMN blocked     INTEGER NOT NULL DEFAULT 0;

-- Group conversations: name (from the group metadata), whether we asked to leave, and the
-- post-compromise-security schedule (last self-update, messages sent since).
ALTER TABLE conversations ADD COLUMN name              TEXT;
ALTER TABLE conversations ADD COLUMN leaving           INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN updated_at        INTEGER;
ALTER TABLE conversations ADD COLUMN sent_since_update INTEGER NOT NULL DEFAULT 0;

-- The relay's `dropped` counter for this device as last seen (envelopes a full mailbox
-- refused), and whether this device must rejoin its conversations because of it.
ALTER TABLE relay ADD COLUMN dropped_seen  INTEGER NOT NULL DEFAULT 0;
ALTER TABLE relay ADD COLUMN rejoin_needed INTEGER NOT NULL DEFAULT 0;

-- When each device (ours and our contacts') was last heard from (unix ms).
CREATE TABLE device_activity (
    device_id BLOB PRIMARY KEY,
    handle    TEXT NOT NULL,
    last_seen INTEGER NOT NULL
);

-- The outbox gains proposals, more purposes and the devices a commit removes.
CREATE TABLE outbox_v2 (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id         BLOB NOT NULL UNIQUE,
    group_id           BLOB NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('application', 'commit', 'proposal')),
    purpose            TEXT NOT NULL,
    peer_handle        TEXT,
    content_message_id BLOB,
    message            BLOB NOT NULL,
    welcome            BLOB,
    removed_devices    BLOB,                   -- concatenated 16-byte device ids
    created_at         INTEGER NOT NULL
);
INSERT INTO outbox_v2 (id, request_id, group_id, kind, purpose, peer_handle, content_message_id,
                       message, welcome, created_at)
    SELECT id, request_id, group_id, kind, purpose, peer_handle, content_message_id, message,
           welcome, created_at FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v2 RENAME TO outbox;
"#,
];

/// Brings the schema to the newest version.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(store_error)?;
    let current =
        usize::try_from(current).map_err(|_| Error::Store("negative schema version".into()))?;
    if current > MIGRATIONS.len() {
        return Err(Error::Store(format!(
            "the store was written by a newer version (schema {current})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction().map_err(store_error)?;
        tx.execute_batch(sql).map_err(store_error)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(store_error)?;
        tx.commit().map_err(store_error)?;
    }
    Ok(())
}
