-- Plan changes (ChangeSubscriptionPlan). A change made now rewrites the subscription's price
-- and quantity (and, on the sandbox, what each period charges); its proration, when charged,
-- is a payment naming the subscription and the proration time as its period_start. A change
-- at the period's end waits here, one per subscription (a later one replaces it), until the
-- renewal that starts the next period applies it: on the sandbox's side before it charges, on
-- Coffer's when the renewed subscription is applied.

CREATE TABLE sandbox_scheduled_changes (
    account         text        NOT NULL,
    subscription_id text        NOT NULL,
    amount          bigint      NOT NULL CHECK (amount > 0),
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (account, subscription_id),
    FOREIGN KEY (account, subscription_id) REFERENCES sandbox_subscriptions (account, id)
);

CREATE TABLE subscription_scheduled_changes (
    tenant_id       uuid        NOT NULL,
    subscription_id uuid        NOT NULL,
    price_id        uuid        NOT NULL,
    quantity        integer     NOT NULL CHECK (quantity > 0),
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, subscription_id),
    FOREIGN KEY (tenant_id, subscription_id) REFERENCES subscriptions (tenant_id, id)
);
