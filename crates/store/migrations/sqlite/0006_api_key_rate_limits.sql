-- A key's own rate limit (`rateLimit` on create and renew), used instead of
-- rate_limits.per_credential: the rate in requests per 1000 s (so to 0.001 per second, as an
-- integer) and the burst. Both NULL: the configured quota applies.
ALTER TABLE api_keys ADD COLUMN rate_limit_per_ks INTEGER;
ALTER TABLE api_keys ADD COLUMN rate_limit_burst INTEGER;
