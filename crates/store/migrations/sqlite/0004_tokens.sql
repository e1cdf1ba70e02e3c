-- Gateway tokens (SPEC §4). Only a keyed hash of each token is stored; `name` is a public
-- handle derived from that hash.
CREATE TABLE tokens (
    name          TEXT    PRIMARY KEY,
    token_hash    BLOB    NOT NULL UNIQUE,
    owner_id      INTEGER NOT NULL REFERENCES users (id),
    domain        TEXT    NOT NULL,
    tenant        TEXT,
    level         TEXT    NOT NULL,            -- DEFAULT or ADMINISTRATIVE
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    custom_source TEXT
);
CREATE INDEX tokens_owner ON tokens (owner_id);
CREATE INDEX tokens_tenant ON tokens (tenant);
