-- The subscription lifecycle: cancelling (now or at the period's end, and undoing a scheduled
-- cancel) and pausing collection, asked of the provider through the operations journal
-- ('update_subscription', one operation per change, its coffer_id the change's own id) and
-- applied from the provider's answer and events like every other provider state.

ALTER TABLE subscriptions
    ADD COLUMN cancel_at_period_end boolean     NOT NULL DEFAULT false,
    ADD COLUMN collection_paused    boolean     NOT NULL DEFAULT false,
    ADD COLUMN canceled_at          timestamptz,
    -- The caller's reason for a cancel, as the provider keeps it (Stripe's
    -- cancellation_details.comment); empty when none was given.
    ADD COLUMN cancel_reason        text        NOT NULL DEFAULT ''
        CHECK (char_length(cancel_reason) <= 500),
    ADD CONSTRAINT subscriptions_canceled_at
        CHECK ((status = 'canceled') = (canceled_at IS NOT NULL));

-- DeleteCustomer asks whether a customer holds a live subscription.
CREATE INDEX subscriptions_live ON subscriptions (tenant_id, customer_id)
    WHERE status NOT IN ('canceled', 'incomplete_expired');

ALTER TABLE provider_operations DROP CONSTRAINT provider_operations_kind_check;
ALTER TABLE provider_operations ADD CONSTRAINT provider_operations_kind_check
    CHECK (kind IN ('create_customer', 'create_price', 'create_checkout_session',
                    'expire_checkout_session', 'refund', 'update_subscription'));

-- The sandbox's side: the same fields on its subscriptions, and the changes it applied, by
-- Coffer's change id (the client reference), so a repeated change is answered, not redone,
-- and an unknown outcome is settled by finding the change.
ALTER TABLE sandbox_subscriptions DROP CONSTRAINT sandbox_subscriptions_status_check;
ALTER TABLE sandbox_subscriptions
    ADD CONSTRAINT sandbox_subscriptions_status_check
        CHECK (status IN ('trialing', 'active', 'canceled')),
    ADD COLUMN cancel_at_period_end boolean     NOT NULL DEFAULT false,
    ADD COLUMN collection_paused    boolean     NOT NULL DEFAULT false,
    ADD COLUMN canceled_at          timestamptz,
    ADD COLUMN cancel_reason        text        NOT NULL DEFAULT '';

CREATE TABLE sandbox_subscription_changes (
    account          text        NOT NULL,
    client_reference uuid        NOT NULL,
    subscription_id  text        NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (account, client_reference),
    FOREIGN KEY (account, subscription_id) REFERENCES sandbox_subscriptions (account, id)
);
