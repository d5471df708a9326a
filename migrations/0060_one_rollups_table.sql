-- The three rollup levels in one table, their grain a column (decision note 0038).
--
-- usage_rollups (by hour), usage_rollups_minute and usage_rollups_day had the same columns but
-- their period's, so the ingestion statement upserted each with the same merge written three
-- times, and the fold ran one dynamic statement per table (migration 0057). With the grain a
-- column the ingestion statement is one upsert with one merge, the fold one static statement,
-- and a read takes each part of its range (`usage_range_parts`) from the same index, as the
-- distinct keys already are (migration 0059).
ALTER TABLE usage_rollups RENAME COLUMN hour TO period;
ALTER TABLE usage_rollups ADD COLUMN grain usage_grain NOT NULL DEFAULT 'hour';
ALTER TABLE usage_rollups ALTER COLUMN grain DROP DEFAULT;
ALTER TABLE usage_rollups DROP CONSTRAINT usage_rollups_pkey;
ALTER TABLE usage_rollups ADD PRIMARY KEY (tenant_id, customer_id, meter_id, grain, period, shard);
-- The sweeper's fold finds the unfolded rows of past periods of each grain with this.
DROP INDEX usage_rollups_unfolded;
CREATE INDEX usage_rollups_unfolded ON usage_rollups (grain, period) WHERE shard <> 0;

INSERT INTO usage_rollups
    (tenant_id, customer_id, meter_id, grain, period, shard, events, total, max_value,
     latest_at, latest_event_id, latest_value)
SELECT tenant_id, customer_id, meter_id, 'minute', minute, shard, events, total, max_value,
       latest_at, latest_event_id, latest_value
FROM usage_rollups_minute
UNION ALL
SELECT tenant_id, customer_id, meter_id, 'day', day, shard, events, total, max_value,
       latest_at, latest_event_id, latest_value
FROM usage_rollups_day;

DROP TABLE usage_rollups_minute, usage_rollups_day;
DROP FUNCTION fold_rollup_level(text, timestamptz, bigint);
