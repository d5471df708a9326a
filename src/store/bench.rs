//! The benchmark's Postgres baseline: a scratch copy of the customers table (same columns,
//! indexes and checks) written to directly.

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
