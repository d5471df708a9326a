-- Day rollups: what GetUsage reads for the whole UTC days of a long range (total and per day),
-- and what CheckAccess's metered limits sum since the period's start.
--
-- Measured (BENCHMARKS.md, decision 0035): a 30-day GetUsage read one hour rollup row per hour
-- and writing connection, 1 450-2 900 rows, and sorting and aggregating them was most of its
-- Postgres time. Now whole days come from here (about 30 rows), the whole hours at either end
-- from usage_rollups (at most 23 an end), the whole minutes from usage_rollups_minute (at most
-- 59 an end) and only the seconds around those from the events. The same statement that
-- inserts the events writes all three levels, so they always agree. Sharded per writing
-- connection and folded by the sweeper, like the other two.
CREATE TABLE usage_rollups_day (
    tenant_id       uuid        NOT NULL,
    customer_id     uuid        NOT NULL,
    meter_id        uuid        NOT NULL,
    day             timestamptz NOT NULL,
    shard           integer     NOT NULL,
    events          bigint      NOT NULL,
    total           numeric     NOT NULL,
    max_value       numeric     NOT NULL,
    latest_at       timestamptz,
    latest_event_id text        COLLATE "C",
    latest_value    numeric,
    PRIMARY KEY (tenant_id, customer_id, meter_id, day, shard)
);
CREATE INDEX usage_rollups_day_unfolded ON usage_rollups_day (day) WHERE shard <> 0;

-- The hours stored before this table existed, rolled up once into their days.
INSERT INTO usage_rollups_day
    (tenant_id, customer_id, meter_id, day, shard, events, total, max_value,
     latest_at, latest_event_id, latest_value)
SELECT tenant_id, customer_id, meter_id, date_trunc('day', hour, 'UTC'), 0, sum(events),
       sum(total), max(max_value),
       (array_agg(latest_at ORDER BY latest_at DESC NULLS LAST, latest_event_id DESC))[1],
       (array_agg(latest_event_id ORDER BY latest_at DESC NULLS LAST, latest_event_id DESC))[1],
       (array_agg(latest_value ORDER BY latest_at DESC NULLS LAST, latest_event_id DESC))[1]
FROM usage_rollups
GROUP BY tenant_id, customer_id, meter_id, date_trunc('day', hour, 'UTC');
