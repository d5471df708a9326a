-- The plan catalogue: plans, their features and their prices. Every key leads with tenant_id.

CREATE TABLE plans (
    tenant_id   uuid        NOT NULL REFERENCES tenants (id),
    id          uuid        NOT NULL,
    key         text        NOT NULL CHECK (key ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    name        text        NOT NULL CHECK (char_length(name) <= 256),
    description text        CHECK (description IS NULL OR char_length(description) <= 1000),
    created_at  timestamptz NOT NULL,
    -- Set once, by the first ArchivePlan; archived plans cannot be bought.
    archived_at timestamptz,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, key)
);

-- ListPlans without archived plans (the default) pages through this index alone.
CREATE INDEX plans_active ON plans (tenant_id, id) WHERE archived_at IS NULL;

-- A table rather than a column: the subscriptions issue makes a feature metered (a meter key
-- and a limit per period), and CheckAccess looks features up by (plan, key).
CREATE TABLE plan_features (
    tenant_id uuid     NOT NULL,
    plan_id   uuid     NOT NULL,
    key       text     NOT NULL CHECK (key ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    -- The order the caller gave, kept so a plan reads back as it was created.
    position  smallint NOT NULL CHECK (position BETWEEN 0 AND 49),
    PRIMARY KEY (tenant_id, plan_id, key),
    UNIQUE (tenant_id, plan_id, position),
    FOREIGN KEY (tenant_id, plan_id) REFERENCES plans (tenant_id, id)
);

CREATE TABLE prices (
    tenant_id      uuid        NOT NULL,
    id             uuid        NOT NULL,
    plan_id        uuid        NOT NULL,
    position       smallint    NOT NULL CHECK (position BETWEEN 0 AND 19),
    -- Minor units of currency; never a float.
    amount         bigint      NOT NULL CHECK (amount > 0),
    currency       text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    interval       text        NOT NULL CHECK (interval IN ('month', 'year', 'one_time')),
    interval_count smallint    NOT NULL,
    trial_days     smallint    NOT NULL CHECK (trial_days BETWEEN 0 AND 730),
    created_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, plan_id, position),
    FOREIGN KEY (tenant_id, plan_id) REFERENCES plans (tenant_id, id),
    CHECK (CASE interval
               WHEN 'month' THEN interval_count BETWEEN 1 AND 12
               WHEN 'year' THEN interval_count BETWEEN 1 AND 3
               ELSE interval_count = 0 AND trial_days = 0
           END)
);

-- Prices are immutable once created, as Stripe's are: a new amount is a new price, so what a
-- subscription bought never changes under it. Columns added later (an `active` flag, say) may
-- change; these may not.
CREATE FUNCTION prices_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.tenant_id, NEW.id, NEW.plan_id, NEW.amount, NEW.currency, NEW.interval,
        NEW.interval_count, NEW.trial_days, NEW.created_at)
       IS DISTINCT FROM
       (OLD.tenant_id, OLD.id, OLD.plan_id, OLD.amount, OLD.currency, OLD.interval,
        OLD.interval_count, OLD.trial_days, OLD.created_at) THEN
        RAISE EXCEPTION 'prices are immutable once created' USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER prices_immutable BEFORE UPDATE ON prices
    FOR EACH ROW EXECUTE FUNCTION prices_immutable();
