-- The blind relay's schema. Times are unix seconds unless the column name says otherwise.
-- Ids and keys are raw bytes; handles are canonical text.

CREATE TABLE accounts (
    handle      TEXT    PRIMARY KEY NOT NULL,
    account_key BLOB    NOT NULL,
    device_list BLOB    NOT NULL,           -- encoded, signed DeviceList
    sequence    INTEGER NOT NULL,           -- the device list's sequence
    created_at  INTEGER NOT NULL
);

CREATE TABLE devices (
    device_id   BLOB    PRIMARY KEY NOT NULL,
    handle      TEXT    NOT NULL REFERENCES accounts (handle) ON DELETE CASCADE,
    device_key  BLOB    NOT NULL,           -- Ed25519 signature key
    mailbox_seq INTEGER NOT NULL DEFAULT 0, -- last mailbox sequence number allocated
    created_at  INTEGER NOT NULL
);
CREATE INDEX devices_by_handle ON devices (handle);

-- Not tied to existing devices: the relay answers every challenge request alike.
CREATE TABLE challenges (
    challenge  BLOB    PRIMARY KEY NOT NULL,
    handle     TEXT    NOT NULL,
    device_id  BLOB    NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX challenges_by_expiry ON challenges (expires_at);

CREATE TABLE sessions (
    token_hash BLOB    PRIMARY KEY NOT NULL, -- SHA-256 of the bearer token; never the token
    device_id  BLOB    NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
CREATE INDEX sessions_by_device ON sessions (device_id);

CREATE TABLE key_packages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT, -- upload order
    device_id   BLOB    NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    kp_ref      BLOB    NOT NULL UNIQUE,           -- KeyPackageRef, to route Welcomes
    key_package BLOB    NOT NULL,                  -- TLS-encoded MLSMessage
    last_resort INTEGER NOT NULL,                  -- 0 one-time, 1 last-resort
    not_after   INTEGER NOT NULL,
    uploaded_at INTEGER NOT NULL,
    claimed_at  INTEGER,  -- one-time: consumed at; last-resort: latest claim
    claimed_by  BLOB,     -- the claiming device
    retired_at  INTEGER   -- last-resort: replaced by a newer one at
);
CREATE INDEX key_packages_offer ON key_packages (device_id, last_resort, claimed_at, id);

-- Every claim of a last-resort key package (many devices may claim the same one over time).
-- A Welcome is routed to a key package only for a device that claimed it: a one-time
-- package's single claimer is key_packages.claimed_by, a last-resort package's are here.
CREATE TABLE key_package_claims (
    kp_ref     BLOB    NOT NULL REFERENCES key_packages (kp_ref) ON DELETE CASCADE,
    claimed_by BLOB    NOT NULL, -- the claiming device
    claimed_at INTEGER NOT NULL, -- this device's latest claim
    PRIMARY KEY (kp_ref, claimed_by)
) WITHOUT ROWID;
CREATE INDEX key_package_claims_by_age ON key_package_claims (claimed_at);

CREATE TABLE groups (
    group_id   BLOB    PRIMARY KEY NOT NULL,
    epoch      INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

-- The delivery list: devices that receive the group's messages.
CREATE TABLE group_members (
    group_id  BLOB NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
    device_id BLOB NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, device_id)
) WITHOUT ROWID;
CREATE INDEX group_members_by_device ON group_members (device_id);

-- Accepted (sender, message id) pairs: a retry is answered like the original.
CREATE TABLE sent_messages (
    sender_device BLOB    NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    message_id    BLOB    NOT NULL,
    message_hash  BLOB    NOT NULL, -- SHA-256 of the MLS message bytes
    epoch         INTEGER NOT NULL, -- the group's epoch after the message
    sent_at       INTEGER NOT NULL,
    PRIMARY KEY (sender_device, message_id)
) WITHOUT ROWID;
CREATE INDEX sent_messages_by_age ON sent_messages (sent_at);

-- Per-device mailboxes; seq comes from devices.mailbox_seq in the delivering transaction.
CREATE TABLE mailbox (
    device_id   BLOB    NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    payload     BLOB    NOT NULL, -- TLS-encoded MLSMessage, exactly as sent
    received_at INTEGER NOT NULL, -- unix milliseconds
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX mailbox_by_age ON mailbox (received_at);
