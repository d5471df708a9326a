-- Disputes (chargebacks): the customer's bank contests a succeeded payment. A provider reports
-- each dispute as its own object (Stripe's `dp_…`); Coffer keeps one row per (account,
-- provider dispute id), with the provider's latest state, and derives the payment's from them:
-- DISPUTED while any is open or lost, SUCCEEDED again once every one was won, and the sum of
-- the lost ones in the payment's `amount_lost`.
CREATE TABLE disputes (
    tenant_id           uuid        NOT NULL,
    id                  uuid        NOT NULL,
    payment_id          uuid        NOT NULL,
    account             text        NOT NULL,
    provider_dispute_id text        NOT NULL CHECK (char_length(provider_dispute_id) BETWEEN 1 AND 255),
    amount              bigint      NOT NULL CHECK (amount > 0),
    currency            text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status              text        NOT NULL CHECK (status IN ('open', 'won', 'lost')),
    -- The provider's reason code (fraudulent, product_not_received, ...); never free text.
    reason              text        CHECK (char_length(reason) <= 64),
    provider_version    bigint      NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (account, provider_dispute_id),
    FOREIGN KEY (tenant_id, payment_id) REFERENCES payments (tenant_id, id)
);

CREATE INDEX disputes_payment ON disputes (tenant_id, payment_id);

ALTER TABLE payments
    ADD COLUMN amount_lost bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT payments_amount_lost CHECK (amount_lost BETWEEN 0 AND amount);
