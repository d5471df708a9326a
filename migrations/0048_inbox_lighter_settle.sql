-- The inbox workers' settling update rewrites every index entry of the row (status is indexed,
-- so it is never a HOT update). Two of those entries served nothing:
--
-- - The claim index held every settled event too, for ever: processed and ignored events are
--   never claimed. Partial now, on the statuses the workers claim and the depth gauges count
--   (dead included, so `inbox_depth` keeps reading it), so a settled event leaves it and a
--   settling update writes no entry there. It also stays the size of the backlog.
-- - webhook_events_tenant_status served no query: ListEvents' status filter is
--   `($3 IS NULL OR status = $3)`, which the pool's generic plans read through the primary key
--   (tenant_id, id) in id order, filtering. Every delivery and every settling paid an entry.
--
-- Measured with `coffer bench webhooks` (BENCHMARKS.md, issue 17 item 2).
DROP INDEX webhook_events_claim;
CREATE INDEX webhook_events_claim ON webhook_events (status, next_attempt_at)
    WHERE status IN ('pending', 'failed', 'processing', 'dead');
DROP INDEX webhook_events_tenant_status;
