-- The blind relay's schema on PostgreSQL: the same tables as on SQLite (see
-- migrations/sqlite), shared by every relay instance. Times are unix seconds unless the
-- column name says otherwise. Ids and keys are raw bytes; handles are canonical text.

CREATE TABLE accounts (
    handle      TEXT   PRIMARY KEY,
    account_key BYTEA  NOT NULL,
    device_list BYTEA  NOT NULL,           -- encoded, signed DeviceList
    sequence    BIGINT NOT NULL,           -- the device list's sequence
    created_at  BIGINT NOT NULL
);

CREATE TABLE devices (
    device_id     BYTEA  PRIMARY KEY,
    handle        TEXT   NOT NULL REFERENCES accounts (handle) ON DELETE CASCADE,
    device_key    BYTEA  NOT NULL,           -- Ed25519 signature key
    mailbox_seq   BIGINT NOT NULL DEFAULT 0, -- last mailbox sequence number allocated
    mailbox_count BIGINT NOT NULL DEFAULT 0, -- envelopes in the mailbox (for the quota)
    dropped       BIGINT NOT NULL DEFAULT 0, -- envelopes refused because it was full
    created_at    BIGINT NOT NULL
);
CREATE INDEX devices_by_handle ON devices (handle);

-- Not tied to existing devices: the relay answers every challenge request alike.
CREATE TABLE challenges (
    challenge  BYTEA  PRIMARY KEY,
    handle     TEXT   NOT NULL,
    device_id  BYTEA  NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX challenges_by_expiry ON challenges (expires_at);

CREATE TABLE sessions (
    token_hash BYTEA  PRIMARY KEY, -- SHA-256 of the bearer token; never the token
    device_id  BYTEA  NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
CREATE INDEX sessions_by_device ON sessions (device_id);

CREATE TABLE key_packages (
    id          BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY, -- upload order
    device_id   BYTEA   NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    kp_ref      BYTEA   NOT NULL UNIQUE,  -- KeyPackageRef, to route Welcomes
    key_package BYTEA   NOT NULL,         -- TLS-encoded MLSMessage
    last_resort BOOLEAN NOT NULL,
    not_after   BIGINT  NOT NULL,
    uploaded_at BIGINT  NOT NULL,
    claimed_at  BIGINT,  -- one-time: consumed at; last-resort: latest claim
    claimed_by  BYTEA,   -- the claiming device
    retired_at  BIGINT   -- last-resort: replaced by a newer one at
);
CREATE INDEX key_packages_offer ON key_packages (device_id, last_resort, claimed_at, id);

-- Every claim of a last-resort key package (see migrations/sqlite/0001_initial.sql).
CREATE TABLE key_package_claims (
    kp_ref     BYTEA  NOT NULL REFERENCES key_packages (kp_ref) ON DELETE CASCADE,
    claimed_by BYTEA  NOT NULL, -- the claiming device
    claimed_at BIGINT NOT NULL, -- this device's latest claim
    PRIMARY KEY (kp_ref, claimed_by)
);
CREATE INDEX key_package_claims_by_age ON key_package_claims (claimed_at);

-- One row per key package claim, for the claim limits (per requesting device, per target
-- account, over the last hour); swept once older than the window.
CREATE TABLE key_package_claim_log (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    requester  BYTEA  NOT NULL, -- the claiming device
    target     TEXT   NOT NULL, -- the handle whose packages were claimed
    one_time   BIGINT NOT NULL, -- one-time packages handed out by this claim
    claimed_at BIGINT NOT NULL
);
CREATE INDEX key_package_claim_log_by_requester ON key_package_claim_log (requester, claimed_at);
CREATE INDEX key_package_claim_log_by_target ON key_package_claim_log (target, claimed_at);
CREATE INDEX key_package_claim_log_by_age ON key_package_claim_log (claimed_at);

CREATE TABLE groups (
    group_id   BYTEA  PRIMARY KEY,
    epoch      BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- The delivery list: devices that receive the group's messages.
CREATE TABLE group_members (
    group_id  BYTEA NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
    device_id BYTEA NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, device_id)
);
CREATE INDEX group_members_by_device ON group_members (device_id);

-- Accepted (sender, message id) pairs: a retry is answered like the original.
CREATE TABLE sent_messages (
    sender_device BYTEA  NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    message_id    BYTEA  NOT NULL,
    message_hash  BYTEA  NOT NULL, -- SHA-256 of the MLS message bytes
    epoch         BIGINT NOT NULL, -- the group's epoch after the message
    sent_at       BIGINT NOT NULL,
    PRIMARY KEY (sender_device, message_id)
);
CREATE INDEX sent_messages_by_age ON sent_messages (sent_at);

-- Per-device mailboxes; seq comes from devices.mailbox_seq in the delivering transaction,
-- which holds the device row's lock until it commits.
CREATE TABLE mailbox (
    device_id   BYTEA  NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    payload     BYTEA  NOT NULL, -- TLS-encoded MLSMessage, exactly as sent
    received_at BIGINT NOT NULL, -- unix milliseconds
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX mailbox_by_age ON mailbox (received_at);
