-- The provider layer (the operations journal and the map of provider objects), the sandbox
-- provider's own objects, and checkout sessions. Every key leads with tenant_id, except the
-- per-account uniqueness of provider ids, which must hold whatever the tenant.

-- Each tenant's sandbox account under `serve --dev` / `--sandbox`, made the first time the
-- tenant needs it (so tenants created after the start get one too), with a signing secret of
-- its own that survives restarts. `[tenant.X] sandbox_webhook_secret_env` overrides the secret.
CREATE TABLE sandbox_accounts (
    tenant_id      uuid        PRIMARY KEY REFERENCES tenants (id),
    account        text        NOT NULL UNIQUE CHECK (account ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    webhook_secret text        NOT NULL,
    created_at     timestamptz NOT NULL
);

-- The operations journal: every outbound provider call, written (pending) and committed before
-- the call, its outcome recorded after. One row per (account, kind, Coffer object); a retry after
-- a definitive failure bumps `generation`, and the provider idempotency key is
-- "{id}-{generation}", so the provider never answers a new attempt with an old stored error.
-- `unknown` (a timeout, a 5xx) is resolved by the resolver, which fetches the object by
-- Coffer's id (sent as the client reference); it never calls again blindly.
CREATE TABLE provider_operations (
    tenant_id          uuid        NOT NULL,
    id                 uuid        NOT NULL,
    account            text        NOT NULL,
    kind               text        NOT NULL CHECK (kind IN ('create_customer',
        'create_checkout_session', 'expire_checkout_session', 'refund')),
    coffer_id          uuid        NOT NULL,
    generation         integer     NOT NULL CHECK (generation >= 1),
    status             text        NOT NULL
        CHECK (status IN ('pending', 'succeeded', 'failed', 'unknown')),
    -- The provider's id of the object the operation made or acted on, once known.
    provider_id        text,
    -- Why it failed (a provider code, never a secret or card data).
    failure            text,
    -- The idempotency key (method, key) of the call that started it, so a retry under the
    -- same key finds this operation and its object instead of starting another.
    idempotency_method text,
    idempotency_key    text,
    -- Resolver attempts and when the next is due (unknown outcomes only).
    resolve_attempts   integer     NOT NULL DEFAULT 0,
    next_resolve_at    timestamptz,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, account, kind, coffer_id),
    CHECK (status <> 'succeeded' OR provider_id IS NOT NULL)
);

CREATE UNIQUE INDEX provider_operations_idempotency
    ON provider_operations (tenant_id, idempotency_method, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The resolver's queue, across tenants.
CREATE INDEX provider_operations_unresolved
    ON provider_operations (next_resolve_at) WHERE status IN ('unknown', 'pending');

-- Which provider object is which Coffer object, per account. A provider id is unique per
-- account, so a webhook racing the call that created the object finds one row, never two.
-- Provider-side customers are created lazily and remembered here.
CREATE TABLE provider_objects (
    tenant_id   uuid        NOT NULL,
    account     text        NOT NULL,
    kind        text        NOT NULL
        CHECK (kind IN ('customer', 'checkout_session', 'payment', 'refund', 'subscription')),
    coffer_id   uuid        NOT NULL,
    provider_id text        NOT NULL CHECK (char_length(provider_id) BETWEEN 1 AND 255),
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, account, kind, coffer_id),
    UNIQUE (account, provider_id)
);

-- The sandbox provider's own objects: what a real provider would hold on its side. Found by
-- Coffer's id (client_reference) as real providers' objects are; `version` grows with every
-- change, so a late event never overwrites newer state.
CREATE TABLE sandbox_customers (
    account          text        NOT NULL,
    id               text        NOT NULL,
    client_reference uuid        NOT NULL,
    version          bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (account, id),
    UNIQUE (account, client_reference)
);

CREATE TABLE sandbox_checkout_sessions (
    account          text        NOT NULL,
    id               text        NOT NULL,
    client_reference uuid        NOT NULL,
    customer         text        NOT NULL,
    mode             text        NOT NULL CHECK (mode IN ('payment', 'subscription')),
    status           text        NOT NULL CHECK (status IN ('open', 'complete', 'expired')),
    payment_status   text        NOT NULL
        CHECK (payment_status IN ('unpaid', 'paid', 'no_payment_required')),
    -- The items as sent (name, unit amount, quantity), for the hosted page to show.
    line_items       jsonb       NOT NULL,
    amount_total     bigint      NOT NULL CHECK (amount_total >= 0),
    currency         text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    trial_days       smallint    NOT NULL,
    success_url      text        NOT NULL,
    cancel_url       text        NOT NULL,
    url              text        NOT NULL,
    expires_at       timestamptz NOT NULL,
    version          bigint      NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (account, id),
    UNIQUE (account, client_reference)
);

-- Checkout sessions, Coffer's side. A row is written with the journal's pending operation
-- (so its id is stable across attempts) and becomes visible once the provider made the session
-- (provider_session_id set).
CREATE TABLE checkout_sessions (
    tenant_id           uuid        NOT NULL,
    id                  uuid        NOT NULL,
    customer_id         uuid        NOT NULL,
    account             text        NOT NULL,
    mode                text        NOT NULL CHECK (mode IN ('payment', 'subscription')),
    status              text        NOT NULL CHECK (status IN ('open', 'complete', 'expired')),
    payment_status      text        NOT NULL
        CHECK (payment_status IN ('unpaid', 'paid', 'no_payment_required')),
    -- [{price_id?, name, amount, quantity, amount_total, interval?, interval_count,
    --   trial_days}] in the caller's order; amounts in minor units.
    line_items          jsonb       NOT NULL,
    amount_total        bigint      NOT NULL CHECK (amount_total >= 0),
    currency            text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    trial_days          smallint    NOT NULL CHECK (trial_days BETWEEN 0 AND 730),
    success_url         text        NOT NULL,
    cancel_url          text        NOT NULL,
    metadata            jsonb       NOT NULL,
    expires_at          timestamptz NOT NULL,
    url                 text,
    provider_session_id text,
    -- The provider object's version last applied; older states are ignored.
    provider_version    bigint      NOT NULL DEFAULT 0,
    subscription_id     uuid,
    payment_id          uuid,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id),
    CHECK ((provider_session_id IS NULL) = (url IS NULL))
);

CREATE INDEX checkout_sessions_customer ON checkout_sessions (tenant_id, customer_id, id);
CREATE INDEX checkout_sessions_status ON checkout_sessions (tenant_id, status, id);
