-- Housekeeping deletes expired tokens and (with audit.retention) old audit records in batches,
-- oldest first: both look-ups by time.
CREATE INDEX tokens_expiry ON tokens (expires_at_ms);
CREATE INDEX audit_time ON audit (at_ms);
