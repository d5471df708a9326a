-- CreateSubscription: a subscription made through the API for a customer with a card on file
-- from an earlier checkout, or with a trial and none. It names no checkout session, and
-- neither do its payments (each names the subscription and its period instead).

ALTER TABLE subscriptions ALTER COLUMN checkout_session_id DROP NOT NULL;
ALTER TABLE payments ALTER COLUMN checkout_session_id DROP NOT NULL;
ALTER TABLE payments
    ADD CONSTRAINT payments_session_or_subscription
        CHECK (checkout_session_id IS NOT NULL OR subscription_id IS NOT NULL);

-- What a CreateSubscription asked, written before the provider is called (step 1 of the
-- three-step call): whoever applies the provider's subscription first — the call's own answer,
-- its event through the inbox, or the resolver settling an unknown outcome — makes Coffer's
-- row from it. The id is the subscription's own, sent as the provider's client reference.
CREATE TABLE subscription_creations (
    tenant_id   uuid        NOT NULL,
    id          uuid        NOT NULL,
    customer_id uuid        NOT NULL,
    price_id    uuid        NOT NULL,
    quantity    integer     NOT NULL CHECK (quantity > 0),
    account     text        NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id)
);

ALTER TABLE provider_operations DROP CONSTRAINT provider_operations_kind_check;
ALTER TABLE provider_operations ADD CONSTRAINT provider_operations_kind_check
    CHECK (kind IN ('create_customer', 'create_price', 'create_meter', 'push_usage',
                    'create_checkout_session', 'expire_checkout_session', 'refund',
                    'update_subscription', 'create_subscription'));

-- The sandbox's side: a subscription made by the API has no session (it names itself as its
-- session, so (account, session_id) stays unique), may start INCOMPLETE (its first charge of
-- the card on file failed) and may have no card at all (a trial without one), and then ends
-- its trial CANCELED or PAUSED (Stripe's trial_settings.end_behavior.missing_payment_method).
ALTER TABLE sandbox_subscriptions DROP CONSTRAINT sandbox_subscriptions_status_check;
ALTER TABLE sandbox_subscriptions
    ADD CONSTRAINT sandbox_subscriptions_status_check
        CHECK (status IN ('incomplete', 'trialing', 'active', 'past_due', 'unpaid', 'canceled',
                          'paused')),
    ADD COLUMN card_on_file boolean NOT NULL DEFAULT true;

-- The end of the period a subscription's payment pays for (its start is period_start), on
-- both sides; null for a session's own payment and for charges made before it was kept.
ALTER TABLE payments ADD COLUMN period_end timestamptz;
ALTER TABLE sandbox_payments ADD COLUMN period_end timestamptz;
