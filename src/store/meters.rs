//! The meters table.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use sqlx::PgConnection;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::{StoreError, corrupt};
use crate::domain::customer::DisplayName;
use crate::domain::ids::{MeterId, TenantId};
use crate::domain::meter::{Aggregation, Meter, MeterKey, Reading};
use crate::store::idempotency::{ClaimArrays, ClaimRow, Completion, RETENTION_SECS, Written};

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

/// The unique constraint that makes a meter's key unique within its tenant.
pub const KEY_CONSTRAINT: &str = "meters_tenant_id_key_key";

/// A meter to insert and, under an idempotency key, what completes the key in the same
/// statement.
#[derive(Debug, Clone)]
pub struct MeterInsert {
    pub tenant: TenantId,
    pub meter: Meter,
    pub completion: Option<Completion>,
}

/// The order a batch inserts in: by the unique key it may wait on, so two batches cannot
/// deadlock.
pub fn order_inserts(a: &MeterInsert, b: &MeterInsert) -> std::cmp::Ordering {
    (a.tenant.as_uuid(), a.meter.key.as_str()).cmp(&(b.tenant.as_uuid(), b.meter.key.as_str()))
}

/// The batch's rows as the arrays its statements unnest.
struct MeterArrays<'a> {
    tenant: Vec<Uuid>,
    id: Vec<Uuid>,
    key: Vec<&'a str>,
    name: Vec<Option<&'a str>>,
    aggregation: Vec<&'static str>,
    value_key: Vec<Option<&'a str>>,
    created_at: Vec<OffsetDateTime>,
    lease: Vec<Option<Uuid>>,
}

impl<'a> MeterArrays<'a> {
    fn of(rows: &'a [MeterInsert]) -> Self {
        let n = rows.len();
        let mut a = MeterArrays {
            tenant: Vec::with_capacity(n),
            id: Vec::with_capacity(n),
            key: Vec::with_capacity(n),
            name: Vec::with_capacity(n),
            aggregation: Vec::with_capacity(n),
            value_key: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
            lease: Vec::with_capacity(n),
        };
        for row in rows {
            let m = &row.meter;
            a.tenant.push(row.tenant.as_uuid());
            a.id.push(m.id.as_uuid());
            a.key.push(m.key.as_str());
            a.name.push(m.name.as_ref().map(DisplayName::as_str));
            a.aggregation.push(m.reading.aggregation().as_str());
            a.value_key
                .push(m.reading.value_key().map(MeterKey::as_str));
            a.created_at.push(m.created_at);
            a.lease.push(row.completion.as_ref().map(|k| k.lease));
        }
        a
    }
}

/// The one-round-trip form of [`claim_and_insert_meters`], as
/// `super::customers::claim_and_insert_customers_at_once` is for customers: one statement in
/// autocommit claims the keys *completed* and inserts the meters. A row whose meter key the
/// tenant already has (as the snapshot sees it) stores the refusal under its idempotency key
/// and writes no meter. A meter key a concurrent create committed after the snapshot is a
/// unique violation on [`KEY_CONSTRAINT`], which aborts the whole statement: `None`, nothing
/// was written, and the caller runs the batch through [`claim_and_insert_meters`]. `None` too,
/// without a statement, for a batch that gives one meter key twice other than under one
/// idempotency key. One result per row, in the rows' order.
pub async fn claim_and_insert_meters_at_once(
    conn: &mut PgConnection,
    rows: &[MeterInsert],
    claims: &[ClaimRow],
) -> Result<Option<Vec<Option<Written>>>, StoreError> {
    if key_repeated(rows) {
        return Ok(None);
    }
    let m = MeterArrays::of(rows);
    let k = ClaimArrays::of(rows.iter().map(|r| r.completion.as_ref()), claims)?;
    let written = sqlx::query!(
        r#"WITH input AS (
               SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                    $6::text[], $7::timestamptz[], $8::uuid[])
                   WITH ORDINALITY
                   AS t(tenant_id, id, key, name, aggregation, value_key, created_at, lease_id,
                        n)),
           pre AS (
               -- A scalar subquery stays one index probe per row whatever the plan.
               SELECT i.*,
                      COALESCE((SELECT true FROM meters x
                                WHERE x.tenant_id = i.tenant_id AND x.key = i.key
                                LIMIT 1), false) AS taken
               FROM input i),
           claimed AS (
               INSERT INTO idempotency_keys
                   (tenant_id, method, key, fingerprint, state, lease_id, locked_until, response,
                    status)
               SELECT k.tenant_id, k.method, k.key, k.fingerprint, 'completed', k.lease_id, now(),
                      CASE WHEN p.taken THEN NULL ELSE k.response END,
                      CASE WHEN p.taken THEN k.refusal END
               FROM UNNEST($9::uuid[], $10::text[], $11::text[], $12::bytea[], $13::uuid[],
                           $14::bytea[], $15::bytea[])
                   WITH ORDINALITY
                   AS k(tenant_id, method, key, fingerprint, lease_id, response, refusal, ord)
               JOIN pre p ON p.lease_id = k.lease_id
               -- The order keys are locked in, as in every batch.
               ORDER BY k.ord
               ON CONFLICT (tenant_id, method, key) DO UPDATE
               SET fingerprint = EXCLUDED.fingerprint, state = 'completed',
                   lease_id = EXCLUDED.lease_id, locked_until = EXCLUDED.locked_until,
                   response = EXCLUDED.response, status = EXCLUDED.status, created_at = now()
               WHERE idempotency_key_open(idempotency_keys.state, idempotency_keys.locked_until,
                                          idempotency_keys.created_at, $16)
               RETURNING lease_id),
           go AS (
               SELECT p.*, p.lease_id IS NULL OR p.lease_id IN (SELECT lease_id FROM claimed)
                          AS go
               FROM pre p),
           m AS (
               INSERT INTO meters (tenant_id, id, key, name, aggregation, value_key, created_at)
               SELECT tenant_id, id, key, name, aggregation, value_key, created_at
               FROM go
               WHERE go AND NOT taken
               ORDER BY n
               RETURNING id)
           SELECT g.go AS "go!", m.id IS NOT NULL AS "applied!"
           FROM go g LEFT JOIN m ON m.id = g.id
           ORDER BY g.n"#,
        &m.tenant,
        &m.id,
        &m.key as _,
        &m.name as _,
        &m.aggregation as _,
        &m.value_key as _,
        &m.created_at,
        &m.lease as _,
        &k.tenant,
        &k.method as _,
        &k.key as _,
        &k.fingerprint as _,
        &k.lease,
        &k.response as _,
        &k.refusal as _,
        RETENTION_SECS as f64,
    )
    .fetch_all(&mut *conn)
    .instrument(super::statement_span!("INSERT", "meters"))
    .await;
    let written = match written {
        Ok(written) => written,
        Err(e) => {
            let e = StoreError::from(e);
            if e.unique_violation() == Some(KEY_CONSTRAINT) {
                // A concurrent create took the meter key after the snapshot; the statement
                // wrote nothing.
                return Ok(None);
            }
            return Err(e);
        }
    };
    if written.len() != rows.len() {
        return Err(corrupt("batch result", "wrong number of rows"));
    }
    Ok(Some(
        written
            .into_iter()
            .map(|w| {
                w.go.then_some(Written {
                    applied: w.applied,
                    completed: true,
                })
            })
            .collect(),
    ))
}

/// Whether two rows give one tenant's meter key other than as the same idempotency key's
/// duplicates (of which at most one is written).
fn key_repeated(rows: &[MeterInsert]) -> bool {
    let mut seen: HashMap<(Uuid, &str), Option<(&str, &str)>> = HashMap::new();
    for row in rows {
        let key = row.completion.as_ref().map(|k| (k.method, k.key.as_str()));
        match seen.entry((row.tenant.as_uuid(), row.meter.key.as_str())) {
            Entry::Vacant(v) => {
                v.insert(key);
            }
            Entry::Occupied(o) if key.is_some() && *o.get() == key => {}
            Entry::Occupied(_) => return true,
        }
    }
    false
}

/// A batch of meter creates with the claims of their idempotency keys, in the caller's
/// transaction, as `super::customers::claim_and_insert_customers` is for customers: one
/// statement claims the keys *completed* with their responses and inserts the meters
/// (`ON CONFLICT DO NOTHING` on the tenant's meter key); then, only for a row whose meter key
/// turned out taken, a second statement swaps its key's response for the refusal. One result
/// per row, in the rows' order: `None` for a row whose key was held.
pub async fn claim_and_insert_meters(
    conn: &mut PgConnection,
    rows: &[MeterInsert],
    claims: &[ClaimRow],
) -> Result<Vec<Option<Written>>, StoreError> {
    let m = MeterArrays::of(rows);
    let k = ClaimArrays::of(rows.iter().map(|r| r.completion.as_ref()), claims)?;
    let written = sqlx::query!(
        r#"WITH claimed AS (
               INSERT INTO idempotency_keys
                   (tenant_id, method, key, fingerprint, state, lease_id, locked_until, response)
               SELECT tenant_id, method, key, fingerprint, 'completed', lease_id, now(), response
               FROM UNNEST($9::uuid[], $10::text[], $11::text[], $12::bytea[], $13::uuid[],
                           $14::bytea[])
                   WITH ORDINALITY
                   AS t(tenant_id, method, key, fingerprint, lease_id, response, ord)
               ORDER BY ord
               ON CONFLICT (tenant_id, method, key) DO UPDATE
               SET fingerprint = EXCLUDED.fingerprint, state = 'completed',
                   lease_id = EXCLUDED.lease_id, locked_until = EXCLUDED.locked_until,
                   response = EXCLUDED.response, status = NULL, created_at = now()
               WHERE idempotency_key_open(idempotency_keys.state, idempotency_keys.locked_until,
                                          idempotency_keys.created_at, $15)
               RETURNING lease_id),
           input AS (
               SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                    $6::text[], $7::timestamptz[], $8::uuid[])
                   WITH ORDINALITY
                   AS t(tenant_id, id, key, name, aggregation, value_key, created_at, lease_id,
                        n)),
           go AS (
               SELECT i.*, i.lease_id IS NULL OR i.lease_id IN (SELECT lease_id FROM claimed)
                          AS go
               FROM input i),
           m AS (
               INSERT INTO meters (tenant_id, id, key, name, aggregation, value_key, created_at)
               SELECT tenant_id, id, key, name, aggregation, value_key, created_at
               FROM go
               WHERE go
               ORDER BY n
               ON CONFLICT (tenant_id, key) DO NOTHING
               RETURNING id)
           SELECT g.go AS "go!", m.id IS NOT NULL AS "applied!"
           FROM go g LEFT JOIN m ON m.id = g.id
           ORDER BY g.n"#,
        &m.tenant,
        &m.id,
        &m.key as _,
        &m.name as _,
        &m.aggregation as _,
        &m.value_key as _,
        &m.created_at,
        &m.lease as _,
        &k.tenant,
        &k.method as _,
        &k.key as _,
        &k.fingerprint as _,
        &k.lease,
        &k.response as _,
        RETENTION_SECS as f64,
    )
    .fetch_all(&mut *conn)
    .instrument(super::statement_span!("INSERT", "meters"))
    .await?;
    if written.len() != rows.len() {
        return Err(corrupt("batch result", "wrong number of rows"));
    }
    let mut results = Vec::with_capacity(rows.len());
    for (row, w) in rows.iter().zip(written) {
        if !w.go {
            results.push(None);
            continue;
        }
        if let (false, Some(k)) = (w.applied, &row.completion) {
            // The meter key is taken: the idempotency key stores the refusal instead of the
            // response, in the same transaction.
            super::idempotency::refuse_key(conn, row.tenant, k).await?;
        }
        results.push(Some(Written {
            applied: w.applied,
            completed: true,
        }));
    }
    Ok(results)
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
