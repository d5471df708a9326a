-- Usage pushed to provider meters (docs/decisions/0025-usage-push-cursors.md).
--
-- A recurring price may be metered by one of the tenant's meters: a subscription to it on a
-- Stripe or Polar account has its usage pushed to the provider's meter, which is mirrored once
-- per (account, meter) like customers and prices. Set when the price is created, never after.
ALTER TABLE prices ADD COLUMN meter_key text;
ALTER TABLE prices ADD CONSTRAINT prices_meter_fk
    FOREIGN KEY (tenant_id, meter_key) REFERENCES meters (tenant_id, key);
ALTER TABLE prices ADD CONSTRAINT prices_meter_recurring
    CHECK (meter_key IS NULL OR interval <> 'one_time');

CREATE OR REPLACE FUNCTION prices_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.tenant_id, NEW.id, NEW.plan_id, NEW.amount, NEW.currency, NEW.interval,
        NEW.interval_count, NEW.trial_days, NEW.created_at, NEW.meter_key)
       IS DISTINCT FROM
       (OLD.tenant_id, OLD.id, OLD.plan_id, OLD.amount, OLD.currency, OLD.interval,
        OLD.interval_count, OLD.trial_days, OLD.created_at, OLD.meter_key) THEN
        RAISE EXCEPTION 'prices are immutable once created' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;

-- Mirroring a meter, and pushing one batch of usage, are journaled operations like the others.
-- A push's outcome is never settled by the resolver's fetch (a meter event cannot be fetched):
-- the push worker sends the same batch again, with the same identifiers, while the provider
-- still remembers them.
ALTER TABLE provider_operations DROP CONSTRAINT provider_operations_kind_check;
ALTER TABLE provider_operations ADD CONSTRAINT provider_operations_kind_check
    CHECK (kind IN ('create_customer', 'create_price', 'create_meter', 'push_usage',
                    'create_checkout_session', 'expire_checkout_session', 'refund'));

ALTER TABLE provider_objects DROP CONSTRAINT provider_objects_kind_check;
ALTER TABLE provider_objects ADD CONSTRAINT provider_objects_kind_check
    CHECK (kind IN ('customer', 'price', 'meter', 'checkout_session', 'payment', 'refund',
                    'subscription'));

-- One cursor per (subscription, billing period, meter): what Coffer has pushed of that
-- period's usage. `pushed` is the period's total the provider has been told (SUM and COUNT
-- meters push the increment `total - pushed`; MAX, UNIQUE_COUNT and LATEST push the total
-- itself to a `last` meter). A batch is written here (`pending_*`, with the journal's
-- operation) and committed before it is sent, and `pushed`/`seq` advance in the transaction
-- that records its answer, so after a crash the same batch is sent again with the same
-- identifier ("{cursor id}-{seq}"), which the provider de-duplicates for about a day.
CREATE TABLE usage_push_cursors (
    tenant_id         uuid        NOT NULL,
    id                uuid        NOT NULL,
    account           text        NOT NULL,
    subscription_id   uuid        NOT NULL,
    customer_id       uuid        NOT NULL,
    meter_id          uuid        NOT NULL,
    period_start      timestamptz NOT NULL,
    period_end        timestamptz NOT NULL,
    -- Pushes made so far; the next one's identifier ends in seq + 1.
    seq               integer     NOT NULL DEFAULT 0 CHECK (seq >= 0),
    pushed            numeric     NOT NULL DEFAULT 0 CHECK (pushed >= 0),
    -- The event timestamp of the last push: a `last` meter's next total is sent at least a
    -- second later, so the provider can tell which is newer.
    last_timestamp    timestamptz,
    -- The period's total (in what the provider takes: whole units for Stripe) as the worker
    -- last read it, when, and since when it has differed from `pushed`: the backlog and lag
    -- gauges read these, not the events.
    observed          numeric     NOT NULL DEFAULT 0,
    observed_at       timestamptz,
    unpushed_since    timestamptz,
    -- The batch in flight: the journal operation, the value sent, the total it brings
    -- `pushed` to, the event timestamp sent, and when it was first sent.
    pending_op        uuid,
    pending_value     numeric,
    pending_total     numeric,
    pending_timestamp timestamptz,
    pending_since     timestamptz,
    -- When the batch was last sent: another attempt waits `resend_after` from here.
    pending_sent_at   timestamptz,
    -- Set when the provider refused the push for good (or its dedupe window passed with the
    -- outcome unknown): the cursor is no longer pushed; an operator reconciles it.
    failure           text,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, subscription_id, meter_id, period_start),
    CHECK ((pending_op IS NULL) = (pending_value IS NULL)
           AND (pending_op IS NULL) = (pending_total IS NULL)
           AND (pending_op IS NULL) = (pending_timestamp IS NULL)
           AND (pending_op IS NULL) = (pending_since IS NULL)
           AND (pending_op IS NULL) = (pending_sent_at IS NULL))
);

-- The worker's scans, per account (an account belongs to one tenant): batches in flight, and
-- the open cursors to read again, least recently read first.
CREATE INDEX usage_push_cursors_pending ON usage_push_cursors (tenant_id, account, pending_sent_at)
    WHERE pending_op IS NOT NULL;
CREATE INDEX usage_push_cursors_open ON usage_push_cursors (tenant_id, account, observed_at)
    WHERE pending_op IS NULL AND failure IS NULL;
