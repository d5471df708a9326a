-- How a usage range is cut into whole days, hours and minutes and the seconds around them,
-- written once for the reads that use it (GetUsage's figures and its distinct counts), and
-- the distinct keys of UNIQUE_COUNT meters kept per minute and per day as well as per hour, so
-- a distinct count reads like the other aggregations: its cost no longer grows with the
-- events of the partial hours at the ends of its range (decision note 0038).

-- The first instant at or after `t` that begins a UTC `unit` ('minute', 'hour' or 'day').
-- A day is added as 24 hours: `interval '1 day'` is a calendar day in the session's time
-- zone, 23 or 25 hours across a daylight-saving change. Coffer's sessions are UTC (sqlx sets
-- TimeZone when it connects), but the answer should not hang on that. Inlined where called.
CREATE FUNCTION utc_ceil(unit text, t timestamptz) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
RETURN date_trunc(unit, t, 'UTC')
       + CASE WHEN date_trunc(unit, t, 'UTC') = t THEN interval '0'
              WHEN unit = 'day' THEN interval '24 hours'
              WHEN unit = 'hour' THEN interval '1 hour'
              ELSE interval '1 minute' END;

-- The parts of [range_from, range_to), each a (grain, lo, hi) range to read at that grain:
--   'day'    the whole UTC days (none unless whole_days; the caller reads hours instead),
--   'hour'   the whole hours before the first whole day and after the last,
--   'minute' the whole minutes of the partial hour at either end,
--   'second' the instants before the first whole minute of such an end and after its last.
-- Every instant of the range is in exactly one part; empty parts are left out. The hour,
-- minute and second parts come as two plain ranges each, not an OR of ranges, so each one
-- is an index range scan of its own. A range of seconds lies inside one minute, so inside
-- one hour. Inlined into the calling statement (a single SELECT, STABLE, not STRICT), so
-- the planner sees plain expressions of the statement's parameters.
CREATE FUNCTION usage_range_parts(range_from timestamptz, range_to timestamptz,
                                  whole_days boolean)
RETURNS TABLE (grain text, lo timestamptz, hi timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    WITH b AS (
        SELECT utc_ceil('hour', range_from) AS first_hour,
               date_trunc('hour', range_to, 'UTC') AS last_hour,
               utc_ceil('day', range_from) AS first_day,
               date_trunc('day', range_to, 'UTC') AS last_day),
    -- With no whole day to read, the day range is empty and the hour ranges meet.
    d AS (
        SELECT first_hour, last_hour,
               CASE WHEN whole_days AND first_day < last_day THEN first_day
                    ELSE last_hour END AS first_day,
               CASE WHEN whole_days AND first_day < last_day THEN last_day
                    ELSE last_hour END AS last_day
        FROM b),
    -- The partial hours at either end: [from, first whole hour) and [end of the last whole
    -- hour, to). When the range lies inside one hour the first covers it all.
    edges AS (
        SELECT range_from AS lo, least(d.first_hour, range_to) AS hi FROM d
        UNION ALL
        SELECT greatest(d.last_hour, d.first_hour), range_to FROM d),
    cuts AS (
        SELECT e.lo, e.hi, utc_ceil('minute', e.lo) AS first_minute,
               date_trunc('minute', e.hi, 'UTC') AS last_minute
        FROM edges e WHERE e.lo < e.hi)
    SELECT p.grain, p.lo, p.hi FROM (
        SELECT 'day' AS grain, d.first_day AS lo, d.last_day AS hi FROM d
        UNION ALL SELECT 'hour', d.first_hour, d.first_day FROM d
        UNION ALL SELECT 'hour', d.last_day, d.last_hour FROM d
        UNION ALL SELECT 'minute', c.first_minute, c.last_minute FROM cuts c
        UNION ALL SELECT 'second', c.lo, least(c.first_minute, c.hi) FROM cuts c
        UNION ALL SELECT 'second', greatest(c.last_minute, c.first_minute), c.hi FROM cuts c
    ) p
    WHERE p.lo < p.hi
$$;

-- The periods usage is kept by, as `usage_range_parts` names them. COLLATE "C": it is a key
-- column of hot indexes, compared on every descent, and byte order needs no locale.
CREATE DOMAIN usage_grain AS text COLLATE "C" CHECK (VALUE IN ('minute', 'hour', 'day'));

-- The distinct keys of each minute, hour and day: `grain` says which, `period` is when it
-- began (the column was `hour`, and every row so far is an hour's).
ALTER TABLE usage_unique_keys RENAME COLUMN hour TO period;
ALTER TABLE usage_unique_keys ADD COLUMN grain usage_grain NOT NULL DEFAULT 'hour';
ALTER TABLE usage_unique_keys ALTER COLUMN grain DROP DEFAULT;
ALTER TABLE usage_unique_keys DROP CONSTRAINT usage_unique_keys_pkey;
ALTER TABLE usage_unique_keys
    ADD PRIMARY KEY (tenant_id, customer_id, meter_id, grain, period, shard, key);

-- The minutes and days of the keys stored before, from the events, once.
INSERT INTO usage_unique_keys (tenant_id, customer_id, meter_id, grain, period, shard, key)
SELECT DISTINCT e.tenant_id, e.customer_id, e.meter_id, g.grain,
       date_trunc(g.grain, e.occurred_at, 'UTC'), 0, e.unique_key
FROM usage_events e CROSS JOIN (VALUES ('minute'), ('day')) AS g (grain)
WHERE e.unique_key IS NOT NULL;
