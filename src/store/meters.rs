//! The meters table.

use sqlx::PgConnection;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::{StoreError, corrupt};
use crate::domain::customer::DisplayName;
use crate::domain::ids::{MeterId, TenantId};
use crate::domain::meter::{Aggregation, Meter, MeterKey, Reading};

struct MeterRow {
    id: Uuid,
    key: String,
    name: Option<String>,
    aggregation: String,
    value_key: Option<String>,
    created_at: OffsetDateTime,
}

impl MeterRow {
    fn into_domain(self) -> Result<Meter, StoreError> {
        let aggregation = Aggregation::parse(&self.aggregation)
            .ok_or_else(|| corrupt("meter aggregation", &self.aggregation))?;
        let value_key = self
            .value_key
            .as_deref()
            .map(MeterKey::parse)
            .transpose()
            .map_err(|e| corrupt("meter value_key", e))?;
        Ok(Meter {
            id: MeterId::from_uuid(self.id),
            key: MeterKey::parse(&self.key).map_err(|e| corrupt("meter key", e))?,
            name: self
                .name
                .as_deref()
                .map(DisplayName::parse)
                .transpose()
                .map_err(|e| corrupt("meter name", e))?,
            reading: Reading::new(aggregation, value_key)
                .map_err(|e| corrupt("meter reading", e))?,
            created_at: self.created_at,
        })
    }
}

/// Inserts a meter; `false`, writing nothing, when the tenant has a meter with its key (an
/// expected outcome, found with `ON CONFLICT DO NOTHING`).
pub async fn insert_meter(
    conn: &mut PgConnection,
    tenant: TenantId,
    meter: &Meter,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query_scalar!(
        r#"WITH m AS (
               INSERT INTO meters (tenant_id, id, key, name, aggregation, value_key, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (tenant_id, key) DO NOTHING
               RETURNING id)
           SELECT EXISTS (SELECT 1 FROM m) AS "inserted!""#,
        tenant.as_uuid(),
        meter.id.as_uuid(),
        meter.key.as_str(),
        meter.name.as_ref().map(DisplayName::as_str),
        meter.reading.aggregation().as_str(),
        meter.reading.value_key().map(MeterKey::as_str),
        meter.created_at,
    )
    .fetch_one(conn)
    .instrument(super::statement_span!("INSERT", "meters"))
    .await?;
    Ok(inserted)
}

pub async fn find_meter_by_id(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: MeterId,
) -> Result<Option<Meter>, StoreError> {
    let row = sqlx::query_as!(
        MeterRow,
        "SELECT id, key, name, aggregation, value_key, created_at
         FROM meters WHERE tenant_id = $1 AND id = $2",
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .fetch_optional(conn)
    .await?;
    row.map(MeterRow::into_domain).transpose()
}

pub async fn find_meter_by_key(
    conn: &mut PgConnection,
    tenant: TenantId,
    key: &MeterKey,
) -> Result<Option<Meter>, StoreError> {
    let row = sqlx::query_as!(
        MeterRow,
        "SELECT id, key, name, aggregation, value_key, created_at
         FROM meters WHERE tenant_id = $1 AND key = $2",
        tenant.as_uuid(),
        key.as_str(),
    )
    .fetch_optional(conn)
    .await?;
    row.map(MeterRow::into_domain).transpose()
}

/// One page of meters in id (creation) order, after `after` (the nil id for the first page).
pub async fn list_meters(
    conn: &mut PgConnection,
    tenant: TenantId,
    after: Uuid,
    limit: i64,
) -> Result<Vec<Meter>, StoreError> {
    let rows = sqlx::query_as!(
        MeterRow,
        "SELECT id, key, name, aggregation, value_key, created_at
         FROM meters WHERE tenant_id = $1 AND id > $2
         ORDER BY id
         LIMIT $3",
        tenant.as_uuid(),
        after,
        limit,
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(MeterRow::into_domain).collect()
}

/// The tenant's meters among `keys`, as (key, aggregation); unknown keys are absent.
pub async fn find_meter_aggregations(
    conn: &mut PgConnection,
    tenant: TenantId,
    keys: &[String],
) -> Result<Vec<(String, Aggregation)>, StoreError> {
    let rows = sqlx::query!(
        "SELECT key, aggregation FROM meters WHERE tenant_id = $1 AND key = ANY($2)",
        tenant.as_uuid(),
        keys,
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let a = Aggregation::parse(&r.aggregation)
                .ok_or_else(|| corrupt("meter aggregation", &r.aggregation))?;
            Ok((r.key, a))
        })
        .collect()
}
