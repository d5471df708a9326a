-- Usage events, hourly rollups and credit grants.
--
-- The dedupe invariant: an event is stored exactly when its (tenant_id, event_id) row is
-- inserted; a repeat finds the row (ON CONFLICT DO NOTHING) and changes nothing. One table
-- keyed by the id, not monthly partitions with the ids apart: measured, the claim in a second
-- table cost a quarter of the write path (BENCHMARKS.md), and the ids are then remembered for
-- as long as the events are kept, which makes the rule exact for any age.

-- Event ids compare byte by byte (COLLATE "C"): cheaper in the index than the database's
-- locale, and the same order on every server.
CREATE TABLE usage_events (
    tenant_id   uuid        NOT NULL,
    event_id    text        COLLATE "C" NOT NULL,
    customer_id uuid        NOT NULL,
    meter_id    uuid        NOT NULL,
    occurred_at timestamptz NOT NULL,
    -- COUNT meters store 1; the others the event's value. Never negative.
    value       numeric     NOT NULL CHECK (value >= 0),
    -- The distinct key of a UNIQUE_COUNT meter's event; null for the other aggregations.
    unique_key  text,
    properties  jsonb,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);
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
