-- Renewals and dunning on the sandbox clock. Every period's charge is a payment: on Coffer's
-- side a row of `payments` naming its subscription and the period it pays for (its
-- checkout_session_id stays the session that started the subscription), on the sandbox's a
-- row of `sandbox_payments` likewise. (subscription, period_start) is unique on both sides,
-- so a period is charged once however often the renewal pass runs, and whatever crashes
-- between its steps.

ALTER TABLE payments DROP CONSTRAINT payments_tenant_id_checkout_session_id_key;
ALTER TABLE payments
    ADD COLUMN subscription_id uuid,
    ADD COLUMN period_start    timestamptz,
    ADD CONSTRAINT payments_renewal_names_both
        CHECK ((subscription_id IS NULL) = (period_start IS NULL)),
    ADD CONSTRAINT payments_subscription_fk
        FOREIGN KEY (tenant_id, subscription_id) REFERENCES subscriptions (tenant_id, id);
-- A session's own payment: one per session, as before.
CREATE UNIQUE INDEX payments_session_payment ON payments (tenant_id, checkout_session_id)
    WHERE subscription_id IS NULL;
CREATE UNIQUE INDEX payments_renewal ON payments (tenant_id, subscription_id, period_start)
    WHERE subscription_id IS NOT NULL;

ALTER TABLE sandbox_payments DROP CONSTRAINT sandbox_payments_account_session_id_key;
ALTER TABLE sandbox_payments
    ADD COLUMN subscription_id text,
    ADD COLUMN period_start    timestamptz,
    ADD CONSTRAINT sandbox_payments_renewal_names_both
        CHECK ((subscription_id IS NULL) = (period_start IS NULL));
CREATE UNIQUE INDEX sandbox_payments_session_payment ON sandbox_payments (account, session_id)
    WHERE subscription_id IS NULL;
CREATE UNIQUE INDEX sandbox_payments_renewal
    ON sandbox_payments (account, subscription_id, period_start)
    WHERE subscription_id IS NOT NULL;

-- What a sandbox subscription charges each period (from its session's first line item), and
-- where its dunning is: retries made of the unpaid period's charge and when the next is due.
ALTER TABLE sandbox_subscriptions DROP CONSTRAINT sandbox_subscriptions_status_check;
ALTER TABLE sandbox_subscriptions
    ADD CONSTRAINT sandbox_subscriptions_status_check
        CHECK (status IN ('trialing', 'active', 'past_due', 'unpaid', 'canceled')),
    ADD COLUMN amount         bigint CHECK (amount > 0),
    ADD COLUMN currency       text,
    ADD COLUMN period_months  integer CHECK (period_months > 0),
    ADD COLUMN retries        integer NOT NULL DEFAULT 0,
    ADD COLUMN next_retry_at  timestamptz,
    ADD COLUMN unpaid_payment text;

-- The renewal pass's queue: live subscriptions by when something is next due.
CREATE INDEX sandbox_subscriptions_due ON sandbox_subscriptions
    (account, LEAST(current_period_end, COALESCE(next_retry_at, 'infinity')))
    WHERE status IN ('trialing', 'active', 'past_due');
