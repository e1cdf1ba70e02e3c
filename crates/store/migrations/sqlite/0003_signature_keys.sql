-- Enrolled Ed25519 public keys for signed requests (SPEC §3).
CREATE TABLE signature_keys (
    user_id         INTEGER NOT NULL REFERENCES users (id),
    key_id          INTEGER NOT NULL,
    public_key      BLOB    NOT NULL,              -- 32 bytes, Ed25519
    description     TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    valid_until_ms  INTEGER NOT NULL DEFAULT 0,    -- 0 = never expires
    valid_sources   TEXT    NOT NULL DEFAULT '[]',
    last_used_at_ms INTEGER NOT NULL DEFAULT 0,
    last_used_ip    TEXT,
    deleted         INTEGER NOT NULL DEFAULT 0,    -- kept so key ids are never reused
    PRIMARY KEY (user_id, key_id)
);
