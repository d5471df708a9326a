-- The outbox of subscription changes, written in the same transaction as each change and
-- served by WatchSubscriptionEvents and the CheckAccess caches of every replica.
--
-- Order: (xid, seq), where xid is the writing transaction's id. A reader serves only rows
-- whose xid is below its snapshot's xmin (the oldest transaction still running), so every
-- transaction that could still add a row before a served one has ended: a consumer that
-- resumes after the last row it saw never skips a change, however commits interleave.
CREATE TABLE subscription_events (
    tenant_id       uuid        NOT NULL,
    xid             bigint      NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    type            text        NOT NULL CHECK (type IN ('created', 'status_changed',
        'entitlements_changed', 'updated')),
    subscription_id uuid        NOT NULL,
    customer_id     uuid        NOT NULL,
    -- The whole subscriptions row right after the change.
    subscription    jsonb       NOT NULL,
    occurred_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, xid, seq)
);

-- Every replica's change feed reads all tenants in order; the sweeper prunes by age.
CREATE INDEX subscription_events_feed ON subscription_events (xid, seq);
CREATE INDEX subscription_events_age ON subscription_events (occurred_at);

-- Wakes listeners once per writing transaction (identical notifications are folded at
-- commit); they poll as well, so a lost notification only delays.
CREATE FUNCTION subscription_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('coffer_subscription_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER subscription_events_notify AFTER INSERT ON subscription_events
    FOR EACH STATEMENT EXECUTE FUNCTION subscription_events_notify();
