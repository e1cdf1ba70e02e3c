-- Users (SPEC §1) and the change feed every mutation appends to.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    domain        TEXT,
    customer      TEXT,
    functions     TEXT    NOT NULL DEFAULT '[]',  -- JSON array of function names
    external      INTEGER NOT NULL DEFAULT 0,
    password_hash TEXT    NOT NULL,               -- argon2id PHC string
    totp_secret   TEXT,
    locked        INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE changes (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT    NOT NULL,
    user_id INTEGER NOT NULL,
    at_ms   INTEGER NOT NULL
);
CREATE INDEX changes_at_ms ON changes (at_ms);
