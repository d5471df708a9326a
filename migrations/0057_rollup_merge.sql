-- The rollup merge, written once. The three rollup levels (usage_rollups by hour,
-- usage_rollups_minute, usage_rollups_day) have the same columns but their period's, and were
-- merged by the same SQL written six times: three upserts in the ingestion statement and three
-- folds in the sweeper's.

-- Whether a rollup's newest event (at, event id) is newer than another rollup's: the rule
-- LATEST meters keep the newest value by, at ingestion and when shards are folded. A single
-- SQL expression, IMMUTABLE and not STRICT, so the planner inlines it into each statement:
-- the hot ingestion statement pays no function call.
CREATE FUNCTION rollup_newer(at timestamptz, event_id text, than_at timestamptz,
                             than_event_id text)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (at, event_id) > (than_at, than_event_id) OR than_at IS NULL
$$;

-- Folds the per-connection shards of one rollup level whose period began before `before` into
-- shard 0: up to `max_groups` (tenant, customer, meter, period) groups, rows another
-- transaction holds skipped (they fold on a later pass). Returns the groups written. Across
-- tenants by design: it is the sweeper's maintenance, and each row keeps its own tenant (the
-- merge joins on tenant_id). `level` names the table and its period column; the SQL is
-- built from that fixed list only, never from input.
CREATE FUNCTION fold_rollup_level(level text, before timestamptz, max_groups bigint)
RETURNS bigint LANGUAGE plpgsql AS $fold$
DECLARE
    tbl text;
    period text;
    folded bigint;
BEGIN
    CASE level
        WHEN 'hour' THEN tbl := 'usage_rollups'; period := 'hour';
        WHEN 'minute' THEN tbl := 'usage_rollups_minute'; period := 'minute';
        WHEN 'day' THEN tbl := 'usage_rollups_day'; period := 'day';
    END CASE;  -- anything else raises CASE_NOT_FOUND
    EXECUTE format($sql$
        WITH groups AS (
            SELECT DISTINCT tenant_id, customer_id, meter_id, %2$I
            FROM %1$I
            WHERE %2$I < $1 AND shard <> 0
            LIMIT $2),
        locked AS (
            SELECT r.ctid AS row FROM %1$I r
            JOIN groups g USING (tenant_id, customer_id, meter_id, %2$I)
            FOR UPDATE OF r SKIP LOCKED),
        moved AS (
            DELETE FROM %1$I r USING locked l WHERE r.ctid = l.row
            RETURNING r.*),
        merged AS (
            INSERT INTO %1$I AS r
                (tenant_id, customer_id, meter_id, %2$I, shard, events, total, max_value,
                 latest_at, latest_event_id, latest_value)
            SELECT tenant_id, customer_id, meter_id, %2$I, 0, sum(events), sum(total),
                   max(max_value),
                   (array_agg(latest_at ORDER BY latest_at DESC NULLS LAST,
                                                 latest_event_id DESC))[1],
                   (array_agg(latest_event_id ORDER BY latest_at DESC NULLS LAST,
                                                       latest_event_id DESC))[1],
                   (array_agg(latest_value ORDER BY latest_at DESC NULLS LAST,
                                                    latest_event_id DESC))[1]
            FROM moved
            GROUP BY tenant_id, customer_id, meter_id, %2$I
            ON CONFLICT (tenant_id, customer_id, meter_id, %2$I, shard) DO UPDATE SET
                events = r.events + excluded.events,
                total = r.total + excluded.total,
                max_value = greatest(r.max_value, excluded.max_value),
                latest_at = CASE WHEN rollup_newer(excluded.latest_at, excluded.latest_event_id,
                                                   r.latest_at, r.latest_event_id)
                                 THEN excluded.latest_at ELSE r.latest_at END,
                latest_value = CASE WHEN rollup_newer(excluded.latest_at,
                                                      excluded.latest_event_id,
                                                      r.latest_at, r.latest_event_id)
                                    THEN excluded.latest_value ELSE r.latest_value END,
                latest_event_id = CASE WHEN rollup_newer(excluded.latest_at,
                                                         excluded.latest_event_id,
                                                         r.latest_at, r.latest_event_id)
                                       THEN excluded.latest_event_id
                                       ELSE r.latest_event_id END
            RETURNING 1)
        SELECT count(*) FROM merged
    $sql$, tbl, period)
    INTO folded
    USING before, max_groups;
    RETURN folded;
END
$fold$;
