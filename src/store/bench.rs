//! The benchmarks' Postgres baselines: scratch copies of the customers and usage_events tables
//! (same columns, indexes and checks) written to directly.

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
