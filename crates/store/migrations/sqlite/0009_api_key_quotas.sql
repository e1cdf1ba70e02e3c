-- A key's quota (`quota` on create, renew and roll): requests per UTC day or month, counted
-- fleet-wide. Both NULL: no quota.
ALTER TABLE api_keys ADD COLUMN quota_requests INTEGER;
ALTER TABLE api_keys ADD COLUMN quota_period TEXT;
