-- The webhook inbox: every verified provider delivery, stored once per (account, provider
-- event id), waiting for the inbox workers.
--
-- No foreign key to tenants: the tenant comes from a configured account, and a KEY SHARE lock
-- on the tenant row per delivery would serialise a tenant's webhooks (see 0003).
-- The unique key is (account, provider_event_id), not led by tenant_id: account names are
-- unique across tenants (coffer.toml), and de-duplication must hold per account whatever the
-- configuration says about its tenant. The claim index is across tenants too: workers claim
-- whatever is due, for every tenant.
CREATE TABLE webhook_events (
    tenant_id         uuid        NOT NULL,
    id                uuid        NOT NULL,
    account           text        NOT NULL CHECK (account ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    provider          text        NOT NULL
        CHECK (provider IN ('sandbox', 'stripe', 'polar', 'paytabs', 'hmac')),
    provider_event_id text        NOT NULL CHECK (char_length(provider_event_id) BETWEEN 1 AND 255),
    event_type        text        NOT NULL CHECK (char_length(event_type) BETWEEN 1 AND 255),
    status            text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'processed', 'failed', 'dead', 'ignored')),
    attempts          integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    -- When a worker may take it next (pending and failed events).
    next_attempt_at   timestamptz NOT NULL,
    last_error        text,
    -- The raw body, byte for byte as signed: workers parse it, nothing before them does.
    payload           bytea       NOT NULL,
    received_at       timestamptz NOT NULL,
    processed_at      timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (account, provider_event_id)
);

-- The workers' claim: due events by status, oldest due first (FOR UPDATE SKIP LOCKED).
CREATE INDEX webhook_events_claim ON webhook_events (status, next_attempt_at);

-- ListEvents with a status filter (dead events, say) without reading every processed one.
CREATE INDEX webhook_events_tenant_status ON webhook_events (tenant_id, status, id);
