//! The usage push cursors (`usage_push_cursors`): what each subscription's billing period has
//! pushed of its usage to the provider's meter, and the batch in flight.
//!
//! Every statement works on one account's cursors; an account belongs to one tenant, and each
//! names it. Several cursors change in one statement (arrays, `unnest`), never one per event.

use sqlx::PgConnection;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::StoreError;
use crate::domain::ids::TenantId;

/// A cursor as the worker reads it, with what it needs to push: the meter's aggregation and
/// the provider's ids of the customer and the meter (mirrored at checkout).
#[derive(Debug, Clone)]
pub struct CursorRow {
    pub id: Uuid,
    pub customer_id: Uuid,
    pub meter_id: Uuid,
    pub aggregation: String,
    pub period_start: OffsetDateTime,
    pub period_end: OffsetDateTime,
    pub seq: i32,
    /// Decimals as Postgres prints them.
    pub pushed: String,
    pub last_timestamp: Option<OffsetDateTime>,
    pub provider_customer: String,
    pub pending_op: Option<Uuid>,
    pub pending_value: Option<String>,
    pub pending_timestamp: Option<OffsetDateTime>,
    pub pending_since: Option<OffsetDateTime>,
}

/// Opens a cursor for the current period of each of `account`'s subscriptions to a metered
/// price that bills (trialing, active, past due), once: a renewal (a new period start) opens
/// the next. Returns how many it opened.
pub async fn open_cursors(
    conn: &mut PgConnection,
    tenant: TenantId,
    account: &str,
) -> Result<u64, StoreError> {
    let done = sqlx::query!(
        "INSERT INTO usage_push_cursors
             (tenant_id, id, account, subscription_id, customer_id, meter_id, period_start,
              period_end, created_at, updated_at)
         SELECT s.tenant_id, gen_random_uuid(), s.account, s.id, s.customer_id, m.id,
                s.current_period_start, s.current_period_end, now(), now()
         FROM subscriptions s
         JOIN prices p ON p.tenant_id = s.tenant_id AND p.id = s.price_id
         JOIN meters m ON m.tenant_id = p.tenant_id AND m.key = p.meter_key
         WHERE s.tenant_id = $1 AND s.account = $2
           AND s.status IN ('trialing', 'active', 'past_due')
         ON CONFLICT (tenant_id, subscription_id, meter_id, period_start) DO UPDATE
             SET period_end = EXCLUDED.period_end, updated_at = now()
             WHERE usage_push_cursors.period_end <> EXCLUDED.period_end",
        tenant.as_uuid(),
        account,
    )
    .execute(conn)
    .instrument(super::statement_span!("INSERT", "usage_push_cursors"))
    .await?;
    Ok(done.rows_affected())
}

/// Up to `limit` of `account`'s cursors with nothing in flight and not read since
/// `read_before`, least recently read first: periods not ended more than `grace` before
/// `now`, not failed, whose customer and meter are mirrored on the account.
pub async fn open_for_push(
    conn: &mut PgConnection,
    tenant: TenantId,
    account: &str,
    now: OffsetDateTime,
    grace: time::Duration,
    read_before: OffsetDateTime,
    limit: i64,
) -> Result<Vec<CursorRow>, StoreError> {
    Ok(sqlx::query_as!(
        CursorRow,
        r#"SELECT c.id, c.customer_id, c.meter_id, m.aggregation, c.period_start, c.period_end,
                  c.seq, trim_scale(c.pushed)::text AS "pushed!", c.last_timestamp,
                  pc.provider_id AS provider_customer,
                  c.pending_op, trim_scale(c.pending_value)::text AS pending_value,
                  c.pending_timestamp, c.pending_since
           FROM usage_push_cursors c
           JOIN meters m ON m.tenant_id = c.tenant_id AND m.id = c.meter_id
           JOIN provider_objects pc ON pc.tenant_id = c.tenant_id AND pc.account = c.account
                AND pc.kind = 'customer' AND pc.coffer_id = c.customer_id
           JOIN provider_objects pm ON pm.tenant_id = c.tenant_id AND pm.account = c.account
                AND pm.kind = 'meter' AND pm.coffer_id = c.meter_id
           WHERE c.tenant_id = $1 AND c.account = $2 AND c.pending_op IS NULL
             AND c.failure IS NULL AND c.period_end > $3::timestamptz - $4::interval
             AND (c.observed_at IS NULL OR c.observed_at < $5)
           ORDER BY c.observed_at NULLS FIRST
           LIMIT $6"#,
        tenant.as_uuid(),
        account,
        now,
        grace as _,
        read_before,
        limit,
    )
    .fetch_all(conn)
    .await?)
}

/// Up to `limit` of `account`'s cursors whose batch is in flight and was last sent before
/// `sent_before`: sent again, unchanged, by the next pass (a crash, a lost answer, a 429).
pub async fn in_flight(
    conn: &mut PgConnection,
    tenant: TenantId,
    account: &str,
    sent_before: OffsetDateTime,
    limit: i64,
) -> Result<Vec<CursorRow>, StoreError> {
    Ok(sqlx::query_as!(
        CursorRow,
        r#"SELECT c.id, c.customer_id, c.meter_id, m.aggregation, c.period_start, c.period_end,
                  c.seq, trim_scale(c.pushed)::text AS "pushed!", c.last_timestamp,
                  pc.provider_id AS provider_customer,
                  c.pending_op, trim_scale(c.pending_value)::text AS pending_value,
                  c.pending_timestamp, c.pending_since
           FROM usage_push_cursors c
           JOIN meters m ON m.tenant_id = c.tenant_id AND m.id = c.meter_id
           JOIN provider_objects pc ON pc.tenant_id = c.tenant_id AND pc.account = c.account
                AND pc.kind = 'customer' AND pc.coffer_id = c.customer_id
           WHERE c.tenant_id = $1 AND c.account = $2 AND c.pending_op IS NOT NULL
             AND c.pending_sent_at < $3
           ORDER BY c.pending_sent_at
           LIMIT $4"#,
        tenant.as_uuid(),
        account,
        sent_before,
        limit,
    )
    .fetch_all(conn)
    .await?)
}

/// Records what the worker read of each cursor's period (`observed`, whole units where the
/// provider takes only those), and since when it has differed from what was pushed.
pub async fn observe(
    conn: &mut PgConnection,
    tenant: TenantId,
    ids: &[Uuid],
    observed: &[String],
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE usage_push_cursors c
         SET observed = o.observed, observed_at = now(),
             unpushed_since = CASE WHEN o.observed = c.pushed THEN NULL
                                   ELSE coalesce(c.unpushed_since, now()) END,
             updated_at = now()
         FROM unnest($2::uuid[], $3::numeric[]) AS o (id, observed)
         WHERE c.tenant_id = $1 AND c.id = o.id",
        tenant.as_uuid(),
        ids,
        observed as &[String] as _,
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "usage_push_cursors"))
    .await?;
    Ok(())
}

/// The batch `op` takes the cursors `ids` that have nothing in flight, each with the value it
/// sends, the total that brings `pushed` to, and its event timestamp; returns the ids it took
/// (another replica may have taken some first).
pub async fn begin_pushes(
    conn: &mut PgConnection,
    tenant: TenantId,
    op: Uuid,
    ids: &[Uuid],
    values: &[String],
    totals: &[String],
    timestamps: &[OffsetDateTime],
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar!(
        "UPDATE usage_push_cursors c
         SET pending_op = $2, pending_value = p.value, pending_total = p.total,
             pending_timestamp = p.at, pending_since = now(), pending_sent_at = now(),
             updated_at = now()
         FROM unnest($3::uuid[], $4::numeric[], $5::numeric[], $6::timestamptz[])
              AS p (id, value, total, at)
         WHERE c.tenant_id = $1 AND c.id = p.id AND c.pending_op IS NULL
         RETURNING c.id",
        tenant.as_uuid(),
        op,
        ids,
        values as &[String] as _,
        totals as &[String] as _,
        timestamps,
    )
    .fetch_all(conn)
    .instrument(super::statement_span!("UPDATE", "usage_push_cursors"))
    .await?)
}

/// The batch `op` takes over cursors whose batch (`(id, previous op)`) is in flight, to send
/// it again unchanged; returns the ids it took.
pub async fn retake_pushes(
    conn: &mut PgConnection,
    tenant: TenantId,
    op: Uuid,
    ids: &[Uuid],
    previous: &[Uuid],
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar!(
        "UPDATE usage_push_cursors c
         SET pending_op = $2, pending_sent_at = now(), updated_at = now()
         FROM unnest($3::uuid[], $4::uuid[]) AS p (id, op)
         WHERE c.tenant_id = $1 AND c.id = p.id AND c.pending_op = p.op
         RETURNING c.id",
        tenant.as_uuid(),
        op,
        ids,
        previous,
    )
    .fetch_all(conn)
    .instrument(super::statement_span!("UPDATE", "usage_push_cursors"))
    .await?)
}

/// The provider took the batch `op`'s pushes to the cursors `ids`: their `pushed` and `seq`
/// advance, and nothing is in flight. Only cursors still in `op`'s batch change.
pub async fn complete_pushes(
    conn: &mut PgConnection,
    tenant: TenantId,
    op: Uuid,
    ids: &[Uuid],
) -> Result<u64, StoreError> {
    let done = sqlx::query!(
        "UPDATE usage_push_cursors
         SET pushed = pending_total, seq = seq + 1, last_timestamp = pending_timestamp,
             unpushed_since = CASE WHEN observed = pending_total THEN NULL
                                   ELSE unpushed_since END,
             pending_op = NULL, pending_value = NULL, pending_total = NULL,
             pending_timestamp = NULL, pending_since = NULL, pending_sent_at = NULL,
             updated_at = now()
         WHERE tenant_id = $1 AND pending_op = $2 AND id = ANY($3)",
        tenant.as_uuid(),
        op,
        ids,
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "usage_push_cursors"))
    .await?;
    Ok(done.rows_affected())
}

/// The cursors `ids` are pushed no more: the provider refused their push for good, or its
/// outcome stayed unknown past the provider's de-duplication window (`failure` says which).
pub async fn fail_pushes(
    conn: &mut PgConnection,
    tenant: TenantId,
    ids: &[Uuid],
    failures: &[String],
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE usage_push_cursors c
         SET failure = f.failure, pending_op = NULL, pending_value = NULL,
             pending_total = NULL, pending_timestamp = NULL, pending_since = NULL,
             pending_sent_at = NULL, updated_at = now()
         FROM unnest($2::uuid[], $3::text[]) AS f (id, failure)
         WHERE c.tenant_id = $1 AND c.id = f.id",
        tenant.as_uuid(),
        ids,
        failures,
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "usage_push_cursors"))
    .await?;
    Ok(())
}

/// What the gauges show, across tenants: cursors behind, their units not yet pushed, the age
/// in seconds of the oldest unpushed usage, and cursors that stopped on a failure.
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    pub cursors: i64,
    pub units: String,
    pub lag_seconds: f64,
    pub failed: i64,
}

pub async fn backlog(conn: &mut PgConnection) -> Result<Backlog, StoreError> {
    let row = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE unpushed_since IS NOT NULL AND failure IS NULL)
                      AS "cursors!",
                  trim_scale(coalesce(sum(abs(observed - pushed))
                      FILTER (WHERE failure IS NULL), 0))::text AS "units!",
                  coalesce(extract(epoch from now() - min(unpushed_since)
                      FILTER (WHERE failure IS NULL)), 0)::float8 AS "lag!",
                  count(*) FILTER (WHERE failure IS NOT NULL) AS "failed!"
           FROM usage_push_cursors
           WHERE unpushed_since IS NOT NULL OR failure IS NOT NULL"#,
    )
    .fetch_one(conn)
    .await?;
    Ok(Backlog {
        cursors: row.cursors,
        units: row.units,
        lag_seconds: row.lag,
        failed: row.failed,
    })
}
