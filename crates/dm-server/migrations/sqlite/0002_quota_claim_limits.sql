-- Mailbox quota: the number of envelopes each mailbox holds, kept with every insert and
-- delete, and the number of envelopes refused because the mailbox was full.
ALTER TABLE devices ADD COLUMN mailbox_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN dropped INTEGER NOT NULL DEFAULT 0;
UPDATE devices SET mailbox_count =
    (SELECT COUNT(*) FROM mailbox WHERE mailbox.device_id = devices.device_id);

-- One row per key package claim, for the claim limits (per requesting device, per target
-- account, over the last hour); swept once older than the window.
CREATE TABLE key_package_claim_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    requester  BLOB    NOT NULL, -- the claiming device
    target     TEXT    NOT NULL, -- the handle whose packages were claimed
    one_time   INTEGER NOT NULL, -- one-time packages handed out by this claim
    claimed_at INTEGER NOT NULL
);
CREATE INDEX key_package_claim_log_by_requester ON key_package_claim_log (requester, claimed_at);
CREATE INDEX key_package_claim_log_by_target ON key_package_claim_log (target, claimed_at);
CREATE INDEX key_package_claim_log_by_age ON key_package_claim_log (claimed_at);
