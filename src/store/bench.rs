//! The benchmarks' Postgres baselines: scratch copies of the customers, usage_events and
//! webhook_events tables (same columns, indexes and checks) written to directly.

use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;

/// Creates the scratch table `bench_baseline_customers` afresh.
pub async fn create_baseline_table(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_baseline_customers;
         CREATE TABLE bench_baseline_customers (LIKE customers INCLUDING ALL);",
    )
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn insert_baseline_row(
    pool: &PgPool,
    tenant: Uuid,
    external_id: &str,
    email: &str,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO bench_baseline_customers
             (tenant_id, id, external_id, email, name, metadata, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, '{}', now(), now())",
    )
    .bind(tenant)
    .bind(Uuid::now_v7())
    .bind(external_id)
    .bind(email)
    .bind(name)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn drop_baseline_table(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::raw_sql("DROP TABLE IF EXISTS bench_baseline_customers")
        .execute(pool)
        .await?;
    Ok(())
}

/// Creates `bench_baseline_usage`, a copy of `usage_events` with its keys, index and checks.
pub async fn create_usage_baseline_table(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_baseline_usage;
         CREATE TABLE bench_baseline_usage (LIKE usage_events INCLUDING ALL);",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// COPYs `batch` usage rows in one statement (its own transaction).
#[allow(clippy::too_many_arguments)]
pub async fn copy_usage_baseline(
    pool: &PgPool,
    tenant: Uuid,
    meter: Uuid,
    customers: &[Uuid],
    run: &str,
    worker: usize,
    seq: u64,
    batch: usize,
) -> Result<(), sqlx::Error> {
    use std::fmt::Write;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    let mut rows = String::with_capacity(batch * 160);
    for i in 0..batch {
        let customer = customers[i % customers.len()];
        let _ = writeln!(
            rows,
            "{tenant}\t{customer}\t{meter}\t{now}\t{run}-{worker}-{seq}-{i}\t1"
        );
    }
    let mut conn = pool.acquire().await?;
    let mut copy = conn
        .copy_in_raw(
            "COPY bench_baseline_usage
                 (tenant_id, customer_id, meter_id, occurred_at, event_id, value)
             FROM STDIN",
        )
        .await?;
    copy.send(rows.into_bytes()).await?;
    copy.finish().await?;
    Ok(())
}

pub async fn drop_usage_baseline_table(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::raw_sql("DROP TABLE IF EXISTS bench_baseline_usage")
        .execute(pool)
        .await?;
    Ok(())
}

/// Creates `bench_baseline_webhook_events`, a copy of `webhook_events` with its keys, indexes
/// and checks.
pub async fn create_webhook_baseline_table(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_baseline_webhook_events;
         CREATE TABLE bench_baseline_webhook_events (LIKE webhook_events INCLUDING ALL);",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// One delivery's row, inserted as IngestEvent would store it were it not batched: the same
/// columns and the same de-duplication (`ON CONFLICT DO NOTHING`), in a transaction of its own.
pub async fn insert_webhook_baseline_row(
    pool: &PgPool,
    tenant: Uuid,
    account: &str,
    provider_event_id: &str,
    event_type: &str,
    payload: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO bench_baseline_webhook_events
             (tenant_id, id, account, provider, provider_event_id, event_type, next_attempt_at,
              payload, received_at)
         VALUES ($1, $2, $3, 'sandbox', $4, $5, now(), $6, now())
         ON CONFLICT (account, provider_event_id) DO NOTHING
         RETURNING id",
    )
    .bind(tenant)
    .bind(Uuid::now_v7())
    .bind(account)
    .bind(provider_event_id)
    .bind(event_type)
    .bind(payload)
    .fetch_optional(pool)
    .await?;
    Ok(())
}

pub async fn drop_webhook_baseline_table(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::raw_sql("DROP TABLE IF EXISTS bench_baseline_webhook_events")
        .execute(pool)
        .await?;
    Ok(())
}

/// The signing secret the sandbox keeps for `account`, if it made one.
pub async fn sandbox_webhook_secret(
    pool: &PgPool,
    account: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT webhook_secret FROM sandbox_accounts WHERE account = $1")
            .bind(account)
            .fetch_optional(pool)
            .await?,
    )
}

/// The tenant of a checkout session, so the check-access benchmark can apply a subscription
/// to it as the inbox would.
pub async fn session_tenant(
    pool: &PgPool,
    session: Uuid,
) -> Result<crate::domain::ids::TenantId, StoreError> {
    let tenant: Uuid = sqlx::query_scalar("SELECT tenant_id FROM checkout_sessions WHERE id = $1")
        .bind(session)
        .fetch_one(pool)
        .await?;
    Ok(crate::domain::ids::TenantId::from_uuid(tenant))
}

/// The pids of the Postgres backends connected to this pool's database (pg_stat_activity),
/// for `bench all`'s CPU accounting.
pub async fn backend_pids(pool: &PgPool) -> Result<Vec<i32>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            .fetch_all(pool)
            .await?,
    )
}
