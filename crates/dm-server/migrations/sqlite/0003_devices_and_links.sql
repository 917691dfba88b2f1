-- Device-link slots: a new device's request (authenticated with the link code, which the
-- relay never sees) and the approving device's sealed response. Deleted after expiry.
CREATE TABLE link_slots (
    slot       BLOB    PRIMARY KEY NOT NULL, -- 16 bytes derived from the link code
    request    BLOB    NOT NULL,
    response   BLOB,
    expires_at INTEGER NOT NULL
);
CREATE INDEX link_slots_by_expiry ON link_slots (expires_at);
