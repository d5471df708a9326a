-- Coffer's side of the money: payments, their refunds, and subscriptions made by checkout.
-- Every key leads with tenant_id. Provider state is applied only when its `version` is newer
-- than `provider_version`, so duplicated and out-of-order events end in the newest state.

-- One charge. A checkout session that collects money makes its payment (CREATED) in the
-- transaction that writes the session, so the session names its payment from the start.
CREATE TABLE payments (
    tenant_id              uuid        NOT NULL,
    id                     uuid        NOT NULL,
    customer_id            uuid        NOT NULL,
    checkout_session_id    uuid        NOT NULL,
    account                text        NOT NULL,
    amount                 bigint      NOT NULL CHECK (amount > 0),
    currency               text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status                 text        NOT NULL CHECK (status IN ('created', 'provider_pending',
        'succeeded', 'failed', 'expired', 'canceled', 'disputed')),
    -- The provider's code of the last declined attempt (card_declined, insufficient_funds,
    -- authentication_failed); only while FAILED.
    failure_code           text,
    -- The card's brand and last four digits only: never the number or the CVC.
    card_brand             text,
    card_last4             text        CHECK (card_last4 ~ '^[0-9]{4}$'),
    -- Refunds that succeeded, and refunds asked for whose outcome is not known yet: together
    -- they never pass the amount, so concurrent refunds cannot over-refund.
    amount_refunded        bigint      NOT NULL DEFAULT 0,
    amount_refund_pending  bigint      NOT NULL DEFAULT 0,
    provider_payment_id    text,
    provider_version       bigint      NOT NULL DEFAULT 0,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, checkout_session_id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id),
    FOREIGN KEY (tenant_id, checkout_session_id) REFERENCES checkout_sessions (tenant_id, id),
    CHECK (amount_refunded BETWEEN 0 AND amount),
    CHECK (amount_refund_pending >= 0),
    CHECK (amount_refunded + amount_refund_pending <= amount),
    CHECK ((status = 'failed') = (failure_code IS NOT NULL))
);

CREATE INDEX payments_customer ON payments (tenant_id, customer_id, id);
CREATE INDEX payments_status ON payments (tenant_id, status, id);
-- The sweeper's expiry: unpaid payments of sessions that may have run out.
CREATE INDEX payments_unpaid ON payments (tenant_id, checkout_session_id)
    WHERE status IN ('created', 'failed');

CREATE TABLE refunds (
    tenant_id          uuid        NOT NULL,
    id                 uuid        NOT NULL,
    payment_id         uuid        NOT NULL,
    account            text        NOT NULL,
    amount             bigint      NOT NULL CHECK (amount > 0),
    currency           text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- requested_by_customer | duplicate | fraudulent, or empty.
    reason             text        NOT NULL,
    status             text        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    failure_code       text,
    provider_refund_id text,
    provider_version   bigint      NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, payment_id) REFERENCES payments (tenant_id, id)
);

CREATE INDEX refunds_payment ON refunds (tenant_id, payment_id, id);

-- A subscription, simplest form: made by a completed SUBSCRIPTION checkout, with its first
-- line item's price and quantity. Status follows Stripe's list; only trialing and active are
-- reachable until the lifecycle issue.
CREATE TABLE subscriptions (
    tenant_id                uuid        NOT NULL,
    id                       uuid        NOT NULL,
    customer_id              uuid        NOT NULL,
    plan_id                  uuid,
    price_id                 uuid,
    quantity                 integer     NOT NULL CHECK (quantity > 0),
    status                   text        NOT NULL CHECK (status IN ('incomplete',
        'incomplete_expired', 'trialing', 'active', 'past_due', 'canceled', 'unpaid',
        'paused')),
    current_period_start     timestamptz NOT NULL,
    current_period_end       timestamptz NOT NULL,
    trial_end                timestamptz,
    account                  text        NOT NULL,
    provider_subscription_id text        NOT NULL,
    checkout_session_id      uuid        NOT NULL,
    provider_version         bigint      NOT NULL DEFAULT 0,
    created_at               timestamptz NOT NULL,
    updated_at               timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, checkout_session_id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id),
    FOREIGN KEY (tenant_id, checkout_session_id) REFERENCES checkout_sessions (tenant_id, id),
    CHECK (current_period_end > current_period_start)
);

CREATE INDEX subscriptions_customer ON subscriptions (tenant_id, customer_id, id);
CREATE INDEX subscriptions_status ON subscriptions (tenant_id, status, id);
-- The sweeper's expiry of open sessions past expires_at.
CREATE INDEX checkout_sessions_open_expiry ON checkout_sessions (expires_at)
    WHERE status = 'open';
