-- The customer portal (Customers.CreatePortalSession).
--
-- Coffer's side: each portal session it opened, for whom, and by which API key, so what the
-- customer does in a sandbox portal is made as that key's change (journaled and audited like
-- the lifecycle RPCs). The URL is not kept: on the sandbox it holds the session's token.
CREATE TABLE portal_sessions (
    tenant_id           uuid        NOT NULL REFERENCES tenants (id),
    id                  uuid        NOT NULL,
    customer_id         uuid        NOT NULL,
    key_id              uuid        NOT NULL,
    account             text        NOT NULL,
    return_url          text        NOT NULL,
    expires_at          timestamptz NOT NULL,
    created_at          timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id)
);

-- The sandbox's side: its portal sessions. The token in the URL is 256 random bits; only its
-- SHA-256 is stored, so a read of this table opens no portal. `csrf` is the token every form
-- of the page posts back (a synchronizer token). Coffer's id is the client reference.
CREATE TABLE sandbox_portal_sessions (
    account          text        NOT NULL,
    id               text        NOT NULL,
    token_sha256     bytea       NOT NULL UNIQUE CHECK (octet_length(token_sha256) = 32),
    client_reference uuid        NOT NULL,
    customer         text        NOT NULL,
    csrf             text        NOT NULL,
    return_url       text        NOT NULL,
    expires_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (account, id),
    UNIQUE (account, client_reference)
);

-- The sandbox customer's card on file, as the portal changes it: brand and last four only,
-- never the number. Renewals use the subscription's `fails_on_renewal`, which a change of
-- card rewrites on the customer's live subscriptions.
ALTER TABLE sandbox_customers
    ADD COLUMN card_brand       text,
    ADD COLUMN card_last4       text CHECK (card_last4 ~ '^[0-9]{4}$'),
    ADD COLUMN card_updated_at  timestamptz;
