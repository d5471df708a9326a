//! Usage events, rollups and credit grants.
//!
//! One statement stores a batch: it inserts the events whose (tenant, id) is new, and folds
//! those into `usage_rollups` by minute, hour and day (and, for UNIQUE_COUNT meters,
//! `usage_unique_keys`). One statement is one transaction, so an event is
//! never stored without its rollups.

use std::collections::HashMap;

use sqlx::PgConnection;
use sqlx::types::Json;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::StoreError;
use crate::domain::customer::CustomerRef;
use crate::domain::ids::{CustomerId, GrantId, MeterId, TenantId};
use crate::domain::usage::{self, Grant, Properties, UsageWindow};
use crate::store::idempotency::{ClaimArrays, ClaimRow, Completion, RETENTION_SECS, Written};

/// One event ready to store: ids resolved, value read, window checked.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub event_id: String,
    pub customer: Uuid,
    pub meter: Uuid,
    pub occurred_at: OffsetDateTime,
    /// An exact decimal (see `domain::usage::Quantity`).
    pub value: String,
    pub unique_key: Option<String>,
    /// Whether the meter is a LATEST one, whose rollups keep the newest event.
    pub latest: bool,
    /// Stored as a JSON object, or null when empty.
    pub properties: Properties,
}

/// One caller's batch of a tenant's events, with no id twice.
#[derive(Debug)]
pub struct EventBatch {
    pub tenant: TenantId,
    pub rows: Vec<EventRow>,
}

/// Batches are written in tenant order; the events within the statement are sorted by id.
pub fn order_batches(a: &EventBatch, b: &EventBatch) -> std::cmp::Ordering {
    a.tenant.cmp(&b.tenant)
}

/// Stores several batches in one statement; returns how many events of each were new (the
/// rest were duplicates of stored events, or of events earlier in the same statement).
///
/// The rollup rows it writes are its connection's own (`shard` = the backend pid), so
/// concurrent statements never wait on each other's rollup rows.
///
/// Events are sent sorted by (tenant, id), so two statements inserting the same ids lock them
/// in the same order and cannot deadlock. An id inserted by a transaction still in flight
/// waits for it, then counts as a duplicate if it committed: an id is counted once however
/// many callers race.
pub async fn insert_event_batches(
    conn: &mut PgConnection,
    batches: &[EventBatch],
) -> Result<Vec<u32>, StoreError> {
    let total: usize = batches.iter().map(|b| b.rows.len()).sum();
    // Flatten, remembering each event's batch, and keep one event per (tenant, id): a later
    // batch's copy of an id an earlier batch in this statement carries is its duplicate.
    let mut order: Vec<(usize, &EventRow)> = Vec::with_capacity(total);
    for (i, batch) in batches.iter().enumerate() {
        order.extend(batch.rows.iter().map(|r| (i, r)));
    }
    let tenant_of = |i: usize| batches[i].tenant;
    order.sort_by(|(ia, a), (ib, b)| {
        (tenant_of(*ia), &a.event_id, ia).cmp(&(tenant_of(*ib), &b.event_id, ib))
    });
    order.dedup_by(|(ib, b), (ia, a)| tenant_of(*ia) == tenant_of(*ib) && a.event_id == b.event_id);

    let n = order.len();
    let mut tenant = Vec::with_capacity(n);
    let mut event_id = Vec::with_capacity(n);
    let mut customer = Vec::with_capacity(n);
    let mut meter = Vec::with_capacity(n);
    let mut occurred_at = Vec::with_capacity(n);
    let mut value = Vec::with_capacity(n);
    let mut unique_key = Vec::with_capacity(n);
    let mut properties = Vec::with_capacity(n);
    let mut batch_of = Vec::with_capacity(n);
    let mut latest = Vec::with_capacity(n);
    for (i, row) in &order {
        tenant.push(tenant_of(*i).as_uuid());
        event_id.push(row.event_id.as_str());
        customer.push(row.customer);
        meter.push(row.meter);
        occurred_at.push(row.occurred_at);
        value.push(row.value.as_str());
        unique_key.push(row.unique_key.as_deref());
        properties.push((!row.properties.is_empty()).then(|| Json(row.properties.as_map())));
        batch_of.push(*i as i32);
        latest.push(row.latest);
    }
    let stored = sqlx::query!(
        r#"WITH input AS (
               SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::uuid[],
                                    $5::timestamptz[], $6::text[], $7::text[], $8::jsonb[],
                                    $9::int4[], $10::bool[])
                   WITH ORDINALITY
                   AS t(tenant_id, event_id, customer_id, meter_id, occurred_at, value,
                        unique_key, properties, batch, latest, n)),
           stored AS (
               INSERT INTO usage_events (tenant_id, event_id, customer_id, meter_id,
                                         occurred_at, value, unique_key, properties)
               SELECT tenant_id, event_id, customer_id, meter_id, occurred_at,
                      value::numeric, unique_key, properties
               FROM input ORDER BY n
               ON CONFLICT DO NOTHING
               RETURNING tenant_id, event_id, customer_id, meter_id, occurred_at, value,
                         unique_key),
           fresh AS MATERIALIZED (
               SELECT s.*, i.batch, i.latest,
                      date_trunc('minute', s.occurred_at, 'UTC') AS minute
               FROM stored s JOIN input i USING (tenant_id, event_id)),
           -- Per minute, count, sum and max hash-aggregate; only LATEST meters' events are
           -- sorted for their newest.
           by_minute AS MATERIALIZED (
               SELECT g.*, l.occurred_at AS latest_at, l.event_id AS latest_event_id,
                      l.value AS latest_value
               FROM (SELECT tenant_id, customer_id, meter_id, minute, count(*) AS events,
                            sum(value) AS total, max(value) AS max_value
                     FROM fresh GROUP BY tenant_id, customer_id, meter_id, minute) g
               LEFT JOIN (
                     SELECT DISTINCT ON (tenant_id, customer_id, meter_id, minute)
                            tenant_id, customer_id, meter_id, minute, occurred_at, event_id, value
                     FROM fresh WHERE latest
                     ORDER BY tenant_id, customer_id, meter_id, minute,
                              occurred_at DESC, event_id DESC) l
                   USING (tenant_id, customer_id, meter_id, minute)),
           -- Every grain's rows in one upsert with one merge: the minutes as they are, the
           -- hours and days folded from the minutes, not from the events again. Rollup rows
           -- are this connection's own, so no lock order is needed here.
           rolled AS (
               INSERT INTO usage_rollups AS r
                   (tenant_id, customer_id, meter_id, grain, period, shard, events, total,
                    max_value, latest_at, latest_event_id, latest_value)
               SELECT tenant_id, customer_id, meter_id, 'minute', minute, pg_backend_pid(),
                      events, total, max_value, latest_at, latest_event_id, latest_value
               FROM by_minute
               UNION ALL
               SELECT m.tenant_id, m.customer_id, m.meter_id, g.grain,
                      date_trunc(g.grain, m.minute, 'UTC'), pg_backend_pid(), sum(m.events),
                      sum(m.total), max(m.max_value),
                      (array_agg(m.latest_at ORDER BY m.latest_at DESC NULLS LAST,
                                                      m.latest_event_id DESC))[1],
                      (array_agg(m.latest_event_id ORDER BY m.latest_at DESC NULLS LAST,
                                                            m.latest_event_id DESC))[1],
                      (array_agg(m.latest_value ORDER BY m.latest_at DESC NULLS LAST,
                                                         m.latest_event_id DESC))[1]
               FROM by_minute m CROSS JOIN (VALUES ('hour'), ('day')) AS g (grain)
               GROUP BY m.tenant_id, m.customer_id, m.meter_id, g.grain,
                        date_trunc(g.grain, m.minute, 'UTC')
               ON CONFLICT (tenant_id, customer_id, meter_id, grain, period, shard)
               DO UPDATE SET
                   -- The merge (migration 0061): sums add, maxima and newest win.
                   (events, total, max_value, latest_at, latest_event_id, latest_value)
                       = ROW((rollup_merged(r, excluded)).*)),
           keys AS (
               INSERT INTO usage_unique_keys
                   (tenant_id, customer_id, meter_id, grain, period, shard, key)
               SELECT DISTINCT f.tenant_id, f.customer_id, f.meter_id, g.grain,
                      date_trunc(g.grain, f.minute, 'UTC'), pg_backend_pid(), f.unique_key
               FROM fresh f CROSS JOIN (VALUES ('minute'), ('hour'), ('day')) AS g (grain)
               WHERE f.unique_key IS NOT NULL
               ON CONFLICT DO NOTHING)
           -- One row per batch, not per stored event: thousands fewer rows to send and read.
           SELECT batch AS "batch!", count(*)::int4 AS "stored!" FROM fresh GROUP BY batch"#,
        &tenant,
        &event_id as _,
        &customer,
        &meter,
        &occurred_at,
        &value as _,
        &unique_key as _,
        &properties as _,
        &batch_of,
        &latest,
    )
    .fetch_all(conn)
    .instrument(super::statement_span!("INSERT", "usage_events"))
    .await?;
    let mut accepted = vec![0u32; batches.len()];
    for row in stored {
        if let Some(count) = usize::try_from(row.batch)
            .ok()
            .and_then(|b| accepted.get_mut(b))
        {
            *count = u32::try_from(row.stored).unwrap_or(0);
        }
    }
    Ok(accepted)
}

/// The live customers of a tenant among `ids` and `external_ids`: (id, external id) pairs.
pub async fn resolve_customers(
    conn: &mut PgConnection,
    tenant: TenantId,
    ids: &[Uuid],
    external_ids: &[&str],
) -> Result<Vec<(Uuid, Option<String>)>, StoreError> {
    let rows = sqlx::query!(
        "SELECT id, external_id FROM customers
         WHERE tenant_id = $1 AND deleted_at IS NULL
           AND (id = ANY($2) OR external_id = ANY($3))",
        tenant.as_uuid(),
        ids,
        external_ids as _,
    )
    .fetch_all(conn)
    .instrument(super::statement_span!("SELECT", "customers"))
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.external_id)).collect())
}

/// One window's aggregates as Postgres computed them, decimals as text.
#[derive(Debug, Clone)]
pub struct WindowRow {
    /// None for the range's total.
    pub bucket: Option<OffsetDateTime>,
    pub events: i64,
    pub total: String,
    pub max_value: String,
    pub latest_value: String,
}

/// Whose usage [`usage_windows`] reads.
#[derive(Debug, Clone, Copy)]
pub enum WindowsOf<'a> {
    /// A live customer by id or external id, found by the read itself: a caller's reference.
    Live(&'a CustomerRef),
    /// A customer Coffer already holds the id of (a subscription's), live or not.
    Known(CustomerId),
}

/// What [`usage_windows`] read: the customer it found and its rows.
#[derive(Debug, Clone)]
pub struct Windows {
    pub customer: CustomerId,
    pub rows: Vec<WindowRow>,
}

/// The aggregates of a customer's meter over `[from, to)`, per window and in total: whole UTC
/// days from the day rollups (unless the windows are hours), the whole hours around them from
/// the hour rollups, the whole minutes of the partial hours at either end from the minute
/// rollups, and only the seconds around those minutes from the events. A 30-day read is about
/// 30 day rows, at most 23 hour and 59 minute rows an end and two minutes' events, however
/// many events the range holds (times the writing connections until the sweeper folds them).
///
/// The customer is found in the same statement (one round trip per GetUsage, not two); `None`
/// when there is no such customer (for [`WindowsOf::Live`], no live one).
pub async fn usage_windows(
    conn: &mut PgConnection,
    tenant: TenantId,
    customer: WindowsOf<'_>,
    meter: MeterId,
    from: OffsetDateTime,
    to: OffsetDateTime,
    window: UsageWindow,
) -> Result<Option<Windows>, StoreError> {
    let (id, external, any_state) = match customer {
        WindowsOf::Live(CustomerRef::Id(id)) => (Some(id.as_uuid()), None, false),
        WindowsOf::Live(CustomerRef::External(x)) => (None, Some(x.as_str()), false),
        WindowsOf::Known(id) => (Some(id.as_uuid()), None, true),
    };
    let rows = sqlx::query!(
        r#"WITH who AS (
               -- Two plain lookups, by id and by external id (the other one's parameter is
               -- NULL and finds nothing), each on its own unique index.
               SELECT c.id AS customer FROM customers c
               WHERE c.tenant_id = $1 AND c.id = $2 AND ($8::bool OR c.deleted_at IS NULL)
               UNION ALL
               SELECT c.id FROM customers c
               WHERE c.tenant_id = $1 AND c.external_id = $7 AND c.deleted_at IS NULL
               LIMIT 1),
           -- The range's parts: whole days (unless the windows are hours), whole hours,
           -- whole minutes and the seconds around them (migration 0059).
           cut AS (SELECT * FROM usage_range_parts($4, $5, $6::text <> 'hour')),
           parts AS (
               -- LATERAL: the bounds drive each index scan, whatever a generic plan
               -- guesses about the rows on either side. OFFSET 0 keeps each subquery a
               -- subquery: flattened into a join, the planner may scan the rollups whole
               -- and filter them by the bounds, which it did once the tables' statistics
               -- said one customer held every row (86 ms instead of 0.4). `hour` is each
               -- row's hour, or its day for the day rows (only day and total windows read
               -- them).
               SELECT r.* FROM who w CROSS JOIN cut p CROSS JOIN LATERAL (
                   SELECT date_trunc('hour', r.period, 'UTC') AS hour, r.events, r.total,
                          r.max_value, r.latest_at, r.latest_event_id, r.latest_value
                   FROM usage_rollups r
                   WHERE r.tenant_id = $1 AND r.customer_id = w.customer AND r.meter_id = $3
                     AND r.grain = p.grain AND r.period >= p.lo AND r.period < p.hi
                   OFFSET 0) r
               WHERE p.grain <> 'second'
               UNION ALL
               -- A range of seconds is summed as one part, with no grouping (or sort) per
               -- event; its newest event is one more probe of the index, read backwards,
               -- instead of ordered aggregates that sort every event of the range.
               SELECT x.* FROM who w CROSS JOIN cut p CROSS JOIN LATERAL (
                   SELECT date_trunc('hour', p.lo, 'UTC') AS hour, a.events, a.total,
                          a.max_value, l.occurred_at AS latest_at, l.event_id AS latest_event_id,
                          l.value AS latest_value
                   FROM (SELECT count(*) AS events, sum(e.value) AS total,
                                max(e.value) AS max_value
                         FROM usage_events e
                         WHERE e.tenant_id = $1 AND e.customer_id = w.customer
                           AND e.meter_id = $3
                           AND e.occurred_at >= p.lo AND e.occurred_at < p.hi) a
                   CROSS JOIN LATERAL (
                       SELECT e.occurred_at, e.event_id, e.value
                       FROM usage_events e
                       WHERE e.tenant_id = $1 AND e.customer_id = w.customer
                         AND e.meter_id = $3
                         AND e.occurred_at >= p.lo AND e.occurred_at < p.hi
                       ORDER BY e.occurred_at DESC, e.event_id DESC
                       LIMIT 1) l
                   OFFSET 0) x
               WHERE p.grain = 'second'),
           windowed AS (
               SELECT CASE $6::text WHEN 'hour' THEN hour
                                    WHEN 'day' THEN date_trunc('day', hour, 'UTC') END AS bucket,
                      * FROM parts)
           -- The empty grouping set gives the total row even with no parts, so the answer
           -- always says whom it found.
           SELECT (SELECT customer FROM who) AS customer,
                  bucket, grouping(bucket) = 1 AS "is_total!",
                  coalesce(sum(events), 0)::int8 AS "events!",
                  trim_scale(coalesce(sum(total), 0))::text AS "total!",
                  trim_scale(coalesce(max(max_value), 0))::text AS "max_value!",
                  trim_scale(coalesce((array_agg(latest_value
                      ORDER BY latest_at DESC NULLS LAST, latest_event_id DESC))[1], 0))::text
                      AS "latest_value!"
           FROM windowed
           GROUP BY GROUPING SETS ((bucket), ())
           ORDER BY 2 DESC, 1"#,
        tenant.as_uuid(),
        id,
        meter.as_uuid(),
        from,
        to,
        window.as_str(),
        external,
        any_state,
    )
    .fetch_all(conn)
    .instrument(super::statement_span!("SELECT", "usage_rollups"))
    .await?;
    let Some(customer) = rows.iter().find_map(|r| r.customer) else {
        return Ok(None);
    };
    Ok(Some(Windows {
        customer: CustomerId::from_uuid(customer),
        rows: rows
            .into_iter()
            .filter(|r| r.is_total || r.bucket.is_some())
            .map(|r| WindowRow {
                bucket: if r.is_total { None } else { r.bucket },
                events: r.events,
                total: r.total,
                max_value: r.max_value,
                latest_value: r.latest_value,
            })
            .collect(),
    }))
}

/// The distinct keys of a UNIQUE_COUNT meter over `[from, to)`, per window and in total
/// (None), read as [`usage_windows`] reads its figures: the keys of whole days (unless the
/// windows are hours), whole hours and whole minutes from `usage_unique_keys`, and only the
/// seconds around those minutes from the events. The rows it reads grow with the distinct keys
/// (an exact count needs them), not with the events.
pub async fn unique_counts(
    conn: &mut PgConnection,
    tenant: TenantId,
    customer: CustomerId,
    meter: MeterId,
    from: OffsetDateTime,
    to: OffsetDateTime,
    window: UsageWindow,
) -> Result<HashMap<Option<OffsetDateTime>, i64>, StoreError> {
    let rows = sqlx::query!(
        r#"WITH cut AS (SELECT * FROM usage_range_parts($4, $5, $6::text <> 'hour')),
           -- `hour` is each key's hour, or its day for the day rows (which only day and
           -- total windows read). LATERAL and OFFSET 0 as in `usage_windows`.
           keys AS (
               SELECT k.* FROM cut p CROSS JOIN LATERAL (
                   SELECT date_trunc('hour', k.period, 'UTC') AS hour, k.key
                   FROM usage_unique_keys k
                   WHERE k.tenant_id = $1 AND k.customer_id = $2 AND k.meter_id = $3
                     AND k.grain = p.grain AND k.period >= p.lo AND k.period < p.hi
                   OFFSET 0) k
               WHERE p.grain <> 'second'
               UNION ALL
               SELECT x.* FROM cut p CROSS JOIN LATERAL (
                   SELECT date_trunc('hour', p.lo, 'UTC') AS hour, e.unique_key AS key
                   FROM usage_events e
                   WHERE e.tenant_id = $1 AND e.customer_id = $2 AND e.meter_id = $3
                     AND e.occurred_at >= p.lo AND e.occurred_at < p.hi
                     AND e.unique_key IS NOT NULL OFFSET 0) x
               WHERE p.grain = 'second'),
           windowed AS (
               SELECT CASE $6::text WHEN 'hour' THEN hour
                                    WHEN 'day' THEN date_trunc('day', hour, 'UTC') END AS bucket,
                      key FROM keys)
           -- DISTINCT in a subquery hashes the keys; count(DISTINCT) would sort them (1.3-2x
           -- the time for a total, measured with pgbench on 1 M events).
           SELECT NULL::timestamptz AS bucket, true AS "is_total!", count(*) AS "distinct!"
           FROM (SELECT DISTINCT key FROM windowed) t
           UNION ALL
           SELECT bucket, false, count(*)
           FROM (SELECT DISTINCT bucket, key FROM windowed WHERE bucket IS NOT NULL) b
           GROUP BY bucket"#,
        tenant.as_uuid(),
        customer.as_uuid(),
        meter.as_uuid(),
        from,
        to,
        window.as_str(),
    )
    .fetch_all(conn)
    .instrument(super::statement_span!("SELECT", "usage_unique_keys"))
    .await?;
    Ok(rows
        .into_iter()
        .filter(|r| r.is_total || r.bucket.is_some())
        .map(|r| (if r.is_total { None } else { r.bucket }, r.distinct))
        .collect())
}

/// Folds the per-connection rollup rows of past periods into one row each (shard 0): up to
/// `limit` (tenant, customer, meter, hour) groups of hour rows whose hour began before
/// `hours_before`, and as many groups of minute rows whose minute began before
/// `minutes_before` and of day rows whose day began before `days_before`, so a range reads one
/// row per day, hour and minute. Returns how many groups it folded. A writer adding to a shard
/// row meanwhile waits for the fold and then inserts its delta as a new row, which a later
/// fold takes in: nothing is counted twice or lost. The fold never waits on a writer: it
/// leaves the rows a writer holds (`SKIP LOCKED`) to a later pass, and merges into a group's
/// folded row if it left that one. Waiting could deadlock, since a writer's one statement holds
/// the minute, hour and day rows of its batch in an order of its own (seen with the fold every
/// 10 s while a month of events was loaded).
pub async fn fold_rollups(
    conn: &mut PgConnection,
    hours_before: OffsetDateTime,
    minutes_before: OffsetDateTime,
    days_before: OffsetDateTime,
    limit: i64,
) -> Result<u64, StoreError> {
    // Each grain's groups are found on `usage_rollups_unfolded`; the merge is the ingestion
    // upsert's (a group's folded row may exist already: a late writer's delta was folded
    // after it).
    let folded = sqlx::query_scalar!(
        r#"WITH groups AS (
               SELECT g.* FROM (VALUES ('minute', $1::timestamptz), ('hour', $2),
                                       ('day', $3)) AS l (grain, before)
               CROSS JOIN LATERAL (
                   SELECT DISTINCT tenant_id, customer_id, meter_id, grain, period
                   FROM usage_rollups
                   WHERE grain = l.grain AND period < l.before AND shard <> 0
                   LIMIT $4) g),
           locked AS (
               SELECT r.ctid AS row FROM usage_rollups r
               JOIN groups g USING (tenant_id, customer_id, meter_id, grain, period)
               WHERE r.shard <> 0
               FOR UPDATE OF r SKIP LOCKED),
           moved AS (
               DELETE FROM usage_rollups r USING locked l WHERE r.ctid = l.row
               RETURNING r.*),
           merged AS (
               INSERT INTO usage_rollups AS r
                   (tenant_id, customer_id, meter_id, grain, period, shard, events, total,
                    max_value, latest_at, latest_event_id, latest_value)
               SELECT tenant_id, customer_id, meter_id, grain, period, 0, sum(events),
                      sum(total), max(max_value),
                      (array_agg(latest_at ORDER BY latest_at DESC NULLS LAST,
                                                    latest_event_id DESC))[1],
                      (array_agg(latest_event_id ORDER BY latest_at DESC NULLS LAST,
                                                          latest_event_id DESC))[1],
                      (array_agg(latest_value ORDER BY latest_at DESC NULLS LAST,
                                                       latest_event_id DESC))[1]
               FROM moved
               GROUP BY tenant_id, customer_id, meter_id, grain, period
               ON CONFLICT (tenant_id, customer_id, meter_id, grain, period, shard)
               DO UPDATE SET
                   -- The merge (migration 0061): sums add, maxima and newest win.
                   (events, total, max_value, latest_at, latest_event_id, latest_value)
                       = ROW((rollup_merged(r, excluded)).*)
               RETURNING 1)
           SELECT count(*) AS "folded!" FROM merged"#,
        minutes_before,
        hours_before,
        days_before,
        limit,
    )
    .fetch_one(conn)
    .instrument(super::statement_span!("UPDATE", "usage_rollups"))
    .await?;
    Ok(u64::try_from(folded).unwrap_or(0))
}

/// A credit grant as stored.
#[derive(Debug, Clone)]
pub struct GrantRow {
    pub id: GrantId,
    pub amount: String,
    pub granted_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

/// A grant to insert and, under an idempotency key, what completes the key in the same
/// statement.
#[derive(Debug, Clone)]
pub struct GrantInsert {
    pub tenant: TenantId,
    pub grant: Grant,
    pub completion: Option<Completion>,
}

/// The order a batch inserts grants in. Nothing about a grant can conflict (its id is new, and
/// its customer and meter were found before; their foreign keys take shared locks), so this
/// only makes batches deterministic.
pub fn order_grants(a: &GrantInsert, b: &GrantInsert) -> std::cmp::Ordering {
    (a.tenant.as_uuid(), a.grant.id.as_uuid()).cmp(&(b.tenant.as_uuid(), b.grant.id.as_uuid()))
}

/// A batch of grants with the claims of their idempotency keys, in one statement: it claims
/// each key *completed* with its response (a grant's response is known before it runs), and
/// inserts the grants of the rows whose key it claimed and of the rows without one. A grant
/// has no refusal the statement could find (its customer and meter were looked up before, and
/// neither is ever removed), so unlike customers' there is no second form: run in autocommit,
/// the statement is the whole transaction; in a transaction, the caller commits. `claims` as
/// for [`super::customers::claim_and_insert_customers`]; one result per row, in the rows'
/// order: `None` for a row whose key was held.
pub async fn claim_and_insert_grants(
    conn: &mut PgConnection,
    rows: &[GrantInsert],
    claims: &[ClaimRow],
) -> Result<Vec<Option<Written>>, StoreError> {
    let n = rows.len();
    let mut tenant = Vec::with_capacity(n);
    let mut id = Vec::with_capacity(n);
    let mut customer = Vec::with_capacity(n);
    let mut meter = Vec::with_capacity(n);
    let mut amount = Vec::with_capacity(n);
    let mut granted_at = Vec::with_capacity(n);
    let mut expires_at = Vec::with_capacity(n);
    let mut reason = Vec::with_capacity(n);
    let mut lease = Vec::with_capacity(n);
    for row in rows {
        let g = &row.grant;
        tenant.push(row.tenant.as_uuid());
        id.push(g.id.as_uuid());
        customer.push(g.customer.as_uuid());
        meter.push(g.meter.as_uuid());
        amount.push(g.amount.as_str());
        granted_at.push(g.granted_at);
        expires_at.push(g.expires_at);
        reason.push(g.reason.as_deref());
        lease.push(row.completion.as_ref().map(|k| k.lease));
    }
    let k = ClaimArrays::of(rows.iter().map(|r| r.completion.as_ref()), claims)?;
    let written = sqlx::query!(
        r#"WITH claimed AS (
               INSERT INTO idempotency_keys
                   (tenant_id, method, key, fingerprint, state, lease_id, locked_until, response)
               SELECT tenant_id, method, key, fingerprint, 'completed', lease_id, now(), response
               FROM UNNEST($10::uuid[], $11::text[], $12::text[], $13::bytea[], $14::uuid[],
                           $15::bytea[])
                   WITH ORDINALITY
                   AS t(tenant_id, method, key, fingerprint, lease_id, response, ord)
               -- The order keys are locked in, as in every batch.
               ORDER BY ord
               ON CONFLICT (tenant_id, method, key) DO UPDATE
               SET fingerprint = EXCLUDED.fingerprint, state = 'completed',
                   lease_id = EXCLUDED.lease_id, locked_until = EXCLUDED.locked_until,
                   response = EXCLUDED.response, status = NULL, created_at = now()
               WHERE idempotency_key_open(idempotency_keys.state, idempotency_keys.locked_until,
                                          idempotency_keys.created_at, $16)
               RETURNING lease_id),
           input AS (
               SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                                    $6::timestamptz[], $7::timestamptz[], $8::text[], $9::uuid[])
                   WITH ORDINALITY
                   AS t(tenant_id, id, customer_id, meter_id, amount, granted_at, expires_at,
                        reason, lease_id, n)),
           go AS (
               SELECT i.*, i.lease_id IS NULL OR i.lease_id IN (SELECT lease_id FROM claimed)
                          AS go
               FROM input i),
           g AS (
               INSERT INTO credit_grants
                   (tenant_id, id, customer_id, meter_id, amount, granted_at, expires_at, reason)
               SELECT tenant_id, id, customer_id, meter_id, amount::numeric, granted_at,
                      expires_at, reason
               FROM go
               WHERE go
               ORDER BY n
               RETURNING id)
           SELECT go.go AS "go!", g.id IS NOT NULL AS "applied!"
           FROM go LEFT JOIN g ON g.id = go.id
           ORDER BY go.n"#,
        &tenant,
        &id,
        &customer,
        &meter,
        &amount as _,
        &granted_at,
        &expires_at as _,
        &reason as _,
        &lease as _,
        &k.tenant,
        &k.method as _,
        &k.key as _,
        &k.fingerprint as _,
        &k.lease,
        &k.response as _,
        RETENTION_SECS as f64,
    )
    .fetch_all(&mut *conn)
    .instrument(super::statement_span!("INSERT", "credit_grants"))
    .await?;
    if written.len() != rows.len() {
        return Err(super::corrupt("batch result", "wrong number of rows"));
    }
    Ok(written
        .into_iter()
        .map(|w| {
            w.go.then_some(Written {
                applied: w.applied,
                completed: true,
            })
        })
        .collect())
}

/// Every grant of a customer's meter that a balance at `now` depends on (the live ones, and
/// the expired ones that overlapped them), and the meter's usage since the oldest of them per
/// UTC day, or per hour within the days where a grant begins or ends: what a balance is worked
/// out from (`domain::usage::balance`).
pub async fn balance_inputs(
    conn: &mut PgConnection,
    tenant: TenantId,
    customer: CustomerId,
    meter: MeterId,
    now: OffsetDateTime,
) -> Result<(Vec<GrantRow>, Vec<(OffsetDateTime, String)>), StoreError> {
    let grants = sqlx::query!(
        r#"WITH g AS (
               SELECT id, amount, granted_at, expires_at FROM credit_grants
               WHERE tenant_id = $1 AND customer_id = $2 AND meter_id = $3),
           live AS (
               SELECT min(granted_at) AS since FROM g
               WHERE expires_at IS NULL OR expires_at > $4)
           SELECT id, amount::text AS "amount!", granted_at, expires_at
           FROM g, live
           WHERE live.since IS NOT NULL
             AND (expires_at IS NULL OR expires_at > live.since - interval '1 hour')
           ORDER BY granted_at, id"#,
        tenant.as_uuid(),
        customer.as_uuid(),
        meter.as_uuid(),
        now,
    )
    .fetch_all(&mut *conn)
    .instrument(super::statement_span!("SELECT", "credit_grants"))
    .await?;
    let grants: Vec<GrantRow> = grants
        .into_iter()
        .map(|g| GrantRow {
            id: GrantId::from_uuid(g.id),
            amount: g.amount,
            granted_at: g.granted_at,
            expires_at: g.expires_at,
        })
        .collect();
    let Some(since) = grants.iter().map(|g| g.granted_at).min() else {
        return Ok((grants, Vec::new()));
    };
    // Whole days where every hour draws on the same grants, hours only within the days where
    // a grant begins or ends (see `domain::usage::days_with_grant_changes`).
    let changes =
        usage::days_with_grant_changes(grants.iter().map(|g| (g.granted_at, g.expires_at)));
    let hours = sqlx::query!(
        r#"SELECT d.period AS "hour!", sum(d.total)::text AS "total!"
           FROM usage_rollups d
           WHERE d.tenant_id = $1 AND d.customer_id = $2 AND d.meter_id = $3
             AND d.grain = 'day' AND d.period >= date_trunc('day', $4::timestamptz, 'UTC')
             AND d.period <> ALL($5)
           GROUP BY d.period
           UNION ALL
           SELECT r.period, sum(r.total)::text
           FROM unnest($5::timestamptz[]) AS c(day) CROSS JOIN LATERAL (
               SELECT r.period, r.total FROM usage_rollups r
               WHERE r.tenant_id = $1 AND r.customer_id = $2 AND r.meter_id = $3
                 AND r.grain = 'hour'
                 AND r.period >= greatest(c.day, date_trunc('hour', $4::timestamptz, 'UTC'))
                 -- 24 hours, not '1 day': a UTC day in any session time zone.
                 AND r.period < c.day + interval '24 hours' OFFSET 0) r
           GROUP BY r.period
           ORDER BY 1"#,
        tenant.as_uuid(),
        customer.as_uuid(),
        meter.as_uuid(),
        since,
        &changes,
    )
    .fetch_all(conn)
    .instrument(super::statement_span!("SELECT", "usage_rollups"))
    .await?;
    Ok((
        grants,
        hours.into_iter().map(|h| (h.hour, h.total)).collect(),
    ))
}
