-- Requests per API key and UTC hour (`…/usage`): what every replica counted in memory, added
-- to the hour's row in batches (an upsert that adds, so replicas and flushes sum). Kept for
-- usage.retention; housekeeping deletes older hours.
CREATE TABLE api_key_usage (
    user_id       BIGINT NOT NULL,
    key_id        BIGINT NOT NULL,
    hour_ms       BIGINT NOT NULL,               -- start of the UTC hour, ms since the epoch
    accepted      BIGINT NOT NULL DEFAULT 0,
    refused       BIGINT NOT NULL DEFAULT 0,
    rate_limited  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, key_id, hour_ms)
);
CREATE INDEX api_key_usage_hour ON api_key_usage (hour_ms);
