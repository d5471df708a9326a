-- The sandbox expires an INCOMPLETE subscription (made by CreateSubscription, its first charge
-- declined) 23 hours after it was made on its account's clock, as Stripe does when the first
-- invoice stays unpaid: its status becomes 'incomplete_expired', which is final.
--
-- When it expires is kept in next_retry_at (the time its pending first charge runs out), so
-- the renewal pass finds it through the due index it already reads, which now holds the
-- incomplete ones too.
ALTER TABLE sandbox_subscriptions DROP CONSTRAINT sandbox_subscriptions_status_check;
ALTER TABLE sandbox_subscriptions
    ADD CONSTRAINT sandbox_subscriptions_status_check
        CHECK (status IN ('incomplete', 'incomplete_expired', 'trialing', 'active', 'past_due',
                          'unpaid', 'canceled', 'paused'));

-- Incomplete subscriptions made before this migration expire 23 hours after they were made,
-- as the new ones do.
UPDATE sandbox_subscriptions SET next_retry_at = created_at + interval '23 hours'
WHERE status = 'incomplete' AND next_retry_at IS NULL;

DROP INDEX sandbox_subscriptions_due;
CREATE INDEX sandbox_subscriptions_due ON sandbox_subscriptions
    (account, LEAST(current_period_end, COALESCE(next_retry_at, 'infinity')))
    WHERE status IN ('incomplete', 'trialing', 'active', 'past_due');
