-- A stored idempotent answer may lapse (decision 0033).
--
-- Some answers are credentials that stop working: CreatePortalSession's is a portal link whose
-- token lets its bearer into the customer's portal for an hour (the sandbox), about five
-- minutes (Stripe) or until Polar's expires_at, while a stored answer was kept for the key's
-- 24 hours. Such an answer is now stored with `expires_at` (on the database's clock) and,
-- beside it, the refusal that replaces it then (`status`). Until then a replay answers the
-- response, byte for byte; from then on the refusal, and the sweeper scrubs the response
-- (`response = NULL, expires_at = NULL`), leaving an ordinary stored refusal.
ALTER TABLE idempotency_keys
    ADD COLUMN expires_at timestamptz,
    DROP CONSTRAINT idempotency_keys_outcome,
    ADD CONSTRAINT idempotency_keys_outcome CHECK (
        state = 'in_flight'
        OR (expires_at IS NULL AND (response IS NULL) <> (status IS NULL))
        OR (expires_at IS NOT NULL AND response IS NOT NULL AND status IS NOT NULL));

-- The sweeper's scrub reads only rows still holding a lapsing answer: a handful (portal links
-- of the last hour), so the index stays tiny, and a completion that stores no expiry leaves
-- the column NULL and its update HOT.
CREATE INDEX idempotency_keys_lapsing ON idempotency_keys (expires_at)
    WHERE expires_at IS NOT NULL;
