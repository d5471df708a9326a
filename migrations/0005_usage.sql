-- Usage events, their dedupe ids, hourly rollups and credit grants.
--
-- The dedupe invariant: an event is stored exactly when its (tenant_id, event_id) row in
-- usage_event_ids is inserted, by the same statement. Ingestion refuses events older than 35
-- days or more than 5 minutes ahead, and ids are kept until their event is 40 days old, so
-- every id that could still be accepted is remembered.

-- Event ids compare byte by byte (COLLATE "C"): cheaper in the index than the database's
-- locale, and the same order on every server.
CREATE TABLE usage_event_ids (
    tenant_id   uuid        NOT NULL,
    event_id    text        COLLATE "C" NOT NULL,
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);
-- Ids arrive roughly in time order, so a BRIN index finds the expired ones for almost nothing.
CREATE INDEX usage_event_ids_occurred ON usage_event_ids USING brin (occurred_at);

-- The events themselves, in monthly partitions (usage_events_YYYYMM, made ahead of time by
-- usage_ensure_partitions). A unique key here would have to include occurred_at, which is why
-- the ids live in usage_event_ids.
CREATE TABLE usage_events (
    tenant_id   uuid        NOT NULL,
    customer_id uuid        NOT NULL,
    meter_id    uuid        NOT NULL,
    occurred_at timestamptz NOT NULL,
    event_id    text        COLLATE "C" NOT NULL,
    -- COUNT meters store 1; the others the event's value. Never negative.
    value       numeric     NOT NULL CHECK (value >= 0),
    -- The distinct key of a UNIQUE_COUNT meter's event; null for the other aggregations.
    unique_key  text,
    properties  jsonb,
    recorded_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (occurred_at);
-- What GetUsage reads for the partial hours at the ends of a range.
CREATE INDEX usage_events_customer ON usage_events (tenant_id, customer_id, meter_id, occurred_at);

-- Per customer, meter and UTC hour, kept in step with usage_events by the statement that
-- inserts the events: GetUsage reads full hours here, so its cost follows the hours in the
-- range, not the events. Each writing connection keeps its own row of an hour (`shard`, its
-- backend pid): every aggregate here merges (sum, max, newest), and concurrent batches for the
-- same customer never wait on each other's row locks. Once an hour is past, the sweeper folds
-- its rows into one (shard 0).
CREATE TABLE usage_rollups (
    tenant_id       uuid        NOT NULL,
    customer_id     uuid        NOT NULL,
    meter_id        uuid        NOT NULL,
    hour            timestamptz NOT NULL,
    shard           integer     NOT NULL,
    events          bigint      NOT NULL,
    total           numeric     NOT NULL,
    max_value       numeric     NOT NULL,
    -- The newest event of the hour (ties broken by the greater event_id); kept for LATEST
    -- meters only, null for the others.
    latest_at       timestamptz,
    latest_event_id text        COLLATE "C",
    latest_value    numeric,
    PRIMARY KEY (tenant_id, customer_id, meter_id, hour, shard)
);
-- The sweeper folds the shard rows of past hours into one row each (shard 0); this finds them.
CREATE INDEX usage_rollups_unfolded ON usage_rollups (hour) WHERE shard <> 0;

-- The distinct keys each hour of a UNIQUE_COUNT meter saw: distinct counts do not add up, so
-- a range counts the distinct keys of its hours' sets. Sharded like usage_rollups.
CREATE TABLE usage_unique_keys (
    tenant_id   uuid        NOT NULL,
    customer_id uuid        NOT NULL,
    meter_id    uuid        NOT NULL,
    hour        timestamptz NOT NULL,
    shard       integer     NOT NULL,
    key         text        NOT NULL,
    PRIMARY KEY (tenant_id, customer_id, meter_id, hour, shard, key)
);

CREATE TABLE credit_grants (
    tenant_id   uuid        NOT NULL REFERENCES tenants (id),
    id          uuid        NOT NULL,
    customer_id uuid        NOT NULL,
    meter_id    uuid        NOT NULL,
    amount      numeric     NOT NULL CHECK (amount > 0),
    granted_at  timestamptz NOT NULL,
    expires_at  timestamptz CHECK (expires_at IS NULL OR expires_at > granted_at),
    reason      text        CHECK (reason IS NULL OR char_length(reason) <= 500),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers (tenant_id, id),
    FOREIGN KEY (tenant_id, meter_id) REFERENCES meters (tenant_id, id)
);
CREATE INDEX credit_grants_customer ON credit_grants (tenant_id, customer_id, meter_id, granted_at);

-- Creates the monthly partitions of usage_events from the month 40 days ago through the month
-- of `through`, skipping those that exist; returns how many it made. Replicas may call it at
-- once: the advisory lock makes them take turns.
CREATE FUNCTION usage_ensure_partitions(through timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month   date := date_trunc('month', (now() - interval '40 days') AT TIME ZONE 'UTC')::date;
    last    date := date_trunc('month', through AT TIME ZONE 'UTC')::date;
    name    text;
    made    integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('usage_ensure_partitions'));
    WHILE month <= last LOOP
        name := 'usage_events_' || to_char(month, 'YYYYMM');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF usage_events FOR VALUES FROM (%L) TO (%L)',
                name,
                month::timestamp AT TIME ZONE 'UTC',
                (month + interval '1 month')::timestamp AT TIME ZONE 'UTC');
            made := made + 1;
        END IF;
        month := (month + interval '1 month')::date;
    END LOOP;
    RETURN made;
END
$$;

SELECT usage_ensure_partitions(now() + interval '2 months');
