-- The audit table (each record written in the transaction of the change it describes) and
-- per-user key id counters: the next id is taken with one UPDATE that locks the user's row,
-- which is race-free under PostgreSQL's READ COMMITTED as under SQLite's single writer.
CREATE TABLE audit (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms  INTEGER NOT NULL,
    record TEXT    NOT NULL            -- the JSON object `keyward audit tail` prints
);

ALTER TABLE users ADD COLUMN next_api_key_id INTEGER NOT NULL DEFAULT 1;
ALTER TABLE users ADD COLUMN next_signature_key_id INTEGER NOT NULL DEFAULT 1;
UPDATE users SET
    next_api_key_id = 1 + COALESCE(
        (SELECT MAX(key_id) FROM api_keys WHERE api_keys.user_id = users.id), 0),
    next_signature_key_id = 1 + COALESCE(
        (SELECT MAX(key_id) FROM signature_keys WHERE signature_keys.user_id = users.id), 0);
