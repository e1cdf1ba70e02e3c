-- API keys (SPEC §2) and server-side secrets (the API key hash pepper).
CREATE TABLE api_keys (
    user_id          INTEGER NOT NULL REFERENCES users (id),
    key_id           INTEGER NOT NULL,
    secret_hash      BLOB    NOT NULL,              -- HMAC-SHA-256(pepper, secret)
    description      TEXT    NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    created_by_id    INTEGER NOT NULL,
    created_by_name  TEXT    NOT NULL,
    valid_until_ms   INTEGER NOT NULL DEFAULT 0,    -- 0 = never expires
    valid_sources    TEXT    NOT NULL DEFAULT '[]', -- JSON array of CIDRs
    functions        TEXT,                          -- JSON array, NULL = the user's functions
    customers        TEXT    NOT NULL DEFAULT '[]', -- JSON array of customer ids
    read_only        INTEGER NOT NULL DEFAULT 0,
    last_used_at_ms  INTEGER NOT NULL DEFAULT 0,
    last_used_ip     TEXT,
    revoked          INTEGER NOT NULL DEFAULT 0,    -- kept so key ids are never reused
    PRIMARY KEY (user_id, key_id)
);

CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
