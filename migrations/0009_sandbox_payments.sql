-- The sandbox provider's payments, refunds and subscriptions, its clock, and its outbound event
-- queue: what a real provider holds on its side. Every object carries `version`, which grows
-- with every change and is sent with every event, so Coffer never lets a late event overwrite
-- newer state.

-- The sandbox's clock, per account: AdvanceClock moves it forward (never back). Sandbox time is
-- now() + clock_offset; session expiry and (later) renewals follow it.
ALTER TABLE sandbox_accounts ADD COLUMN clock_offset interval NOT NULL DEFAULT '0';

-- One payment per checkout session that needs one, made by the first card attempt on the hosted
-- page. A declined attempt leaves it `failed` with its code and the session open, as Stripe's
-- payment intents do; a later attempt with another card may still succeed. Only the card's
-- brand and last four digits are kept, never the number or the CVC.
CREATE TABLE sandbox_payments (
    account          text        NOT NULL,
    id               text        NOT NULL,
    session_id       text        NOT NULL,
    -- Coffer's checkout session id (the session's client reference).
    client_reference uuid        NOT NULL,
    amount           bigint      NOT NULL CHECK (amount > 0),
    currency         text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status           text        NOT NULL
        CHECK (status IN ('requires_action', 'succeeded', 'failed')),
    -- card_declined | insufficient_funds | authentication_failed, when failed.
    failure_code     text,
    card_brand       text,
    card_last4       text        CHECK (card_last4 ~ '^[0-9]{4}$'),
    -- 4000 0000 0000 0341: paid now, fails on renewal (the subscriptions issue uses it).
    fails_on_renewal boolean     NOT NULL DEFAULT false,
    amount_refunded  bigint      NOT NULL DEFAULT 0,
    version          bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (account, id),
    UNIQUE (account, session_id),
    CHECK (amount_refunded BETWEEN 0 AND amount),
    CHECK ((status = 'failed') = (failure_code IS NOT NULL))
);

CREATE TABLE sandbox_refunds (
    account          text        NOT NULL,
    id               text        NOT NULL,
    payment_id       text        NOT NULL,
    -- Coffer's refund id.
    client_reference uuid        NOT NULL,
    amount           bigint      NOT NULL CHECK (amount > 0),
    status           text        NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    version          bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (account, id),
    UNIQUE (account, client_reference),
    FOREIGN KEY (account, payment_id) REFERENCES sandbox_payments (account, id)
);

CREATE TABLE sandbox_subscriptions (
    account              text        NOT NULL,
    id                   text        NOT NULL,
    session_id           text        NOT NULL,
    client_reference     uuid        NOT NULL,
    customer             text        NOT NULL,
    status               text        NOT NULL CHECK (status IN ('trialing', 'active')),
    current_period_start timestamptz NOT NULL,
    current_period_end   timestamptz NOT NULL,
    trial_end            timestamptz,
    fails_on_renewal     boolean     NOT NULL DEFAULT false,
    version              bigint      NOT NULL,
    created_at           timestamptz NOT NULL,
    PRIMARY KEY (account, id),
    UNIQUE (account, session_id)
);

-- The sandbox's outbound event queue: each event is written in the same transaction as the
-- change it reports, then delivered over HTTP to Coffer's own /webhooks/{account}, signed with
-- Standard Webhooks at send time, at least once, retried with backoff and jitter until a 2xx,
-- surviving restarts. `webhook_id` is the Standard Webhooks message id: the same on every
-- redelivery, so the inbox stores it once.
CREATE TABLE sandbox_outbox (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account         text        NOT NULL,
    webhook_id      text        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    -- The event body, byte for byte as it will be signed and sent.
    body            bytea       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    created_at      timestamptz NOT NULL,
    delivered_at    timestamptz
);

CREATE INDEX sandbox_outbox_due ON sandbox_outbox (next_attempt_at) WHERE status = 'pending';
