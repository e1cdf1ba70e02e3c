-- Requests per API key and UTC hour (`…/usage`): what every replica counted in memory, added
-- to the hour's row in batches (an upsert that adds, so replicas and flushes sum). Kept for
-- usage.retention; housekeeping deletes older hours.
CREATE TABLE api_key_usage (
    user_id       INTEGER NOT NULL,
    key_id        INTEGER NOT NULL,
    hour_ms       INTEGER NOT NULL,              -- start of the UTC hour, ms since the epoch
    accepted      INTEGER NOT NULL DEFAULT 0,
    refused       INTEGER NOT NULL DEFAULT 0,
    rate_limited  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, key_id, hour_ms)
);
CREATE INDEX api_key_usage_hour ON api_key_usage (hour_ms);
