-- The sandbox's expiry pass looks for open sessions whose expires_at has passed on their
-- account's clock; bounded by the largest clock offset, it is a range scan of this index
-- rather than a scan of every session ever made.
CREATE INDEX sandbox_checkout_sessions_expiry ON sandbox_checkout_sessions (expires_at)
    WHERE status = 'open';
