-- Device-link slots: a new device's request (authenticated with the link code, which the
-- relay never sees) and the approving device's sealed response. Deleted after expiry.
CREATE TABLE link_slots (
    slot       BYTEA  PRIMARY KEY,         -- 16 bytes derived from the link code
    request    BYTEA  NOT NULL,
    response   BYTEA,
    expires_at BIGINT NOT NULL
);
CREATE INDEX link_slots_by_expiry ON link_slots (expires_at);
