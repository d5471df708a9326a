//! The customers table.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use sqlx::PgConnection;
use sqlx::types::Json;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::{StoreError, corrupt};
use crate::domain::customer::{Customer, CustomerRef, DisplayName, Email, ExternalId, Metadata};
use crate::domain::ids::{CustomerId, KeyId, TenantId};
use crate::store::idempotency::{ClaimArrays, ClaimRow, Completion, RETENTION_SECS, Written};

/// The unique index that makes external_id unique among a tenant's live customers.
pub const EXTERNAL_ID_INDEX: &str = "customers_external_id_live";

struct CustomerRow {
    id: Uuid,
    external_id: Option<String>,
    email: Option<String>,
    name: Option<String>,
    metadata: Json<BTreeMap<String, String>>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
    deleted_at: Option<OffsetDateTime>,
}

impl CustomerRow {
    fn into_domain(self) -> Result<Customer, StoreError> {
        Ok(Customer {
            id: CustomerId::from_uuid(self.id),
            external_id: self
                .external_id
                .as_deref()
                .map(ExternalId::parse)
                .transpose()
                .map_err(|e| corrupt("customer external_id", e))?,
            email: self
                .email
                .as_deref()
                .map(Email::parse)
                .transpose()
                .map_err(|e| corrupt("customer email", e))?,
            name: self
                .name
                .as_deref()
                .map(DisplayName::parse)
                .transpose()
                .map_err(|e| corrupt("customer name", e))?,
            metadata: Metadata::parse(&self.metadata.0)
                .map_err(|e| corrupt("customer metadata", e))?,
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
        })
    }
}

/// A customer to insert, with who creates it and, under an idempotency key, what completes
/// the key in the same statement.
#[derive(Debug, Clone)]
pub struct CustomerInsert {
    pub tenant: TenantId,
    pub by: KeyId,
    pub customer: Customer,
    pub completion: Option<Completion>,
}

/// The order a batch inserts in: by the unique key it may wait on, so two batches cannot
/// deadlock.
pub fn order_inserts(a: &CustomerInsert, b: &CustomerInsert) -> std::cmp::Ordering {
    fn key(r: &CustomerInsert) -> (uuid::Uuid, Option<&str>) {
        (
            r.tenant.as_uuid(),
            r.customer.external_id.as_ref().map(ExternalId::as_str),
        )
    }
    key(a).cmp(&key(b))
}

/// The one-round-trip form of [`claim_and_insert_customers`], for a batch under idempotency
/// keys: one statement, run in autocommit (its own implicit transaction, so still all or
/// nothing), claims the keys *completed* and inserts the customers and their audit rows. The
/// refusal is decided before the insert: a row whose external id a live customer of the tenant
/// already has (as the statement's snapshot sees it) stores the refusal under its key instead
/// of the response and writes no customer. The customers' insert has no `ON CONFLICT`: an
/// external id that a concurrent create committed after the snapshot is a unique violation on
/// [`EXTERNAL_ID_INDEX`], which aborts the whole statement, and this answers `None` — nothing
/// was written, and the caller runs the batch through [`claim_and_insert_customers`] in a
/// transaction, which finds the conflict without failing. `None` too, without a statement, for
/// a batch in which two rows (not under one key) give the same external id: which of them
/// wins depends on the other's claim, which one statement cannot see. `claims` as for
/// [`claim_and_insert_customers`]; one result per row, in the rows' order.
pub async fn claim_and_insert_customers_at_once(
    conn: &mut PgConnection,
    rows: &[CustomerInsert],
    claims: &[ClaimRow],
) -> Result<Option<Vec<Option<Written>>>, StoreError> {
    if external_id_repeated(rows) {
        return Ok(None);
    }
    let Columns {
        tenant,
        id,
        external_id,
        email,
        name,
        metadata,
        created_at,
        by,
        lease,
    } = Columns::of(rows);
    let k = ClaimArrays::of(rows.iter().map(|r| r.completion.as_ref()), claims)?;
    let written = sqlx::query!(
        r#"WITH input AS (
               SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                    $6::jsonb[], $7::timestamptz[], $8::uuid[], $9::uuid[])
                   WITH ORDINALITY
                   AS t(tenant_id, id, external_id, email, name, metadata, created_at, key_id,
                        lease_id, n)),
           pre AS (
               -- A scalar subquery stays one index probe per row whatever the plan: the pool's
               -- generic plans could turn a join into a scan of the whole table.
               SELECT i.*,
                      COALESCE((SELECT true FROM customers x
                                WHERE x.tenant_id = i.tenant_id
                                  AND x.external_id = i.external_id
                                  AND x.deleted_at IS NULL
                                LIMIT 1), false) AS taken
               FROM input i),
           claimed AS (
               INSERT INTO idempotency_keys
                   (tenant_id, method, key, fingerprint, state, lease_id, locked_until, response,
                    status)
               SELECT k.tenant_id, k.method, k.key, k.fingerprint, 'completed', k.lease_id, now(),
                      CASE WHEN p.taken THEN NULL ELSE k.response END,
                      CASE WHEN p.taken THEN k.refusal END
               FROM UNNEST($10::uuid[], $11::text[], $12::text[], $13::bytea[], $14::uuid[],
                           $15::bytea[], $16::bytea[])
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
                                          idempotency_keys.created_at, $17)
               RETURNING lease_id),
           go AS (
               SELECT p.*, p.lease_id IS NULL OR p.lease_id IN (SELECT lease_id FROM claimed)
                          AS go
               FROM pre p),
           c AS (
               INSERT INTO customers
                   (tenant_id, id, external_id, email, name, metadata, created_at, updated_at)
               SELECT tenant_id, id, external_id, email, name, metadata, created_at, created_at
               FROM go
               WHERE go AND NOT taken
               ORDER BY n
               RETURNING tenant_id, id),
           a AS (
               INSERT INTO audit_log (tenant_id, key_id, action, object_type, object_id)
               SELECT c.tenant_id, i.key_id, 'customer.created', 'customer', c.id
               FROM c JOIN input i ON i.id = c.id)
           SELECT g.go AS "go!", c.id IS NOT NULL AS "applied!"
           FROM go g LEFT JOIN c ON c.id = g.id
           ORDER BY g.n"#,
        &tenant,
        &id,
        &external_id as _,
        &email as _,
        &name as _,
        &metadata as _,
        &created_at,
        &by,
        &lease as _,
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
    .instrument(super::statement_span!("INSERT", "customers"))
    .await;
    let written = match written {
        Ok(written) => written,
        Err(e) => {
            let e = StoreError::from(e);
            if e.unique_violation() == Some(EXTERNAL_ID_INDEX) {
                // A concurrent create took the external id after the snapshot; the statement
                // wrote nothing.
                return Ok(None);
            }
            return Err(e);
        }
    };
    if written.len() != rows.len() {
        return Err(super::corrupt("batch result", "wrong number of rows"));
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

/// A batch of customer rows as the column arrays the batch statements `UNNEST`, in the rows'
/// order: both forms of the claiming insert bind the same nine.
struct Columns<'a> {
    tenant: Vec<Uuid>,
    id: Vec<Uuid>,
    external_id: Vec<Option<&'a str>>,
    email: Vec<Option<&'a str>>,
    name: Vec<Option<&'a str>>,
    metadata: Vec<Json<&'a BTreeMap<String, String>>>,
    created_at: Vec<OffsetDateTime>,
    by: Vec<Uuid>,
    lease: Vec<Option<Uuid>>,
}

impl<'a> Columns<'a> {
    fn of(rows: &'a [CustomerInsert]) -> Self {
        let n = rows.len();
        let mut c = Columns {
            tenant: Vec::with_capacity(n),
            id: Vec::with_capacity(n),
            external_id: Vec::with_capacity(n),
            email: Vec::with_capacity(n),
            name: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            created_at: Vec::with_capacity(n),
            by: Vec::with_capacity(n),
            lease: Vec::with_capacity(n),
        };
        for row in rows {
            let r = &row.customer;
            c.tenant.push(row.tenant.as_uuid());
            c.id.push(r.id.as_uuid());
            c.external_id
                .push(r.external_id.as_ref().map(ExternalId::as_str));
            c.email.push(r.email.as_ref().map(Email::as_str));
            c.name.push(r.name.as_ref().map(DisplayName::as_str));
            c.metadata.push(Json(r.metadata.as_map()));
            c.created_at.push(r.created_at);
            c.by.push(row.by.as_uuid());
            c.lease.push(row.completion.as_ref().map(|k| k.lease));
        }
        c
    }
}

/// Whether two rows give one tenant's external id other than as the same key's duplicates (of
/// which at most one is written).
fn external_id_repeated(rows: &[CustomerInsert]) -> bool {
    let mut seen: HashMap<(Uuid, &str), Option<(&str, &str)>> = HashMap::new();
    for row in rows {
        let Some(external_id) = &row.customer.external_id else {
            continue;
        };
        let key = row.completion.as_ref().map(|k| (k.method, k.key.as_str()));
        match seen.entry((row.tenant.as_uuid(), external_id.as_str())) {
            Entry::Vacant(v) => {
                v.insert(key);
            }
            Entry::Occupied(o) if key.is_some() && *o.get() == key => {}
            Entry::Occupied(_) => return true,
        }
    }
    false
}

/// A batch of creates with the claims of their idempotency keys, in one transaction: one
/// statement claims the keys *completed* (the response stored at once, since a create's
/// response is known before it runs), inserts the customers of the rows whose key it claimed
/// and of the rows without a key, and their audit rows; then, only for a row whose external id
/// turned out taken, a second statement swaps its key's stored response for the refusal. So a
/// key is written once, not claimed and then updated, and no key is looked up or locked again.
/// `claims` must come in [`super::idempotency::order_claims`] order (the order keys are locked
/// in), each row's claim carrying the lease of its row's completion; of several claims of one
/// key, only the first is made. `conn` must be in a transaction, committed by the caller.
/// One result per row, in the rows' order: `None` for a row whose key was held (by a committed
/// outcome, a live claim-first attempt, or an earlier row of this batch).
pub async fn claim_and_insert_customers(
    conn: &mut PgConnection,
    rows: &[CustomerInsert],
    claims: &[ClaimRow],
) -> Result<Vec<Option<Written>>, StoreError> {
    let Columns {
        tenant,
        id,
        external_id,
        email,
        name,
        metadata,
        created_at,
        by,
        lease,
    } = Columns::of(rows);
    let k = ClaimArrays::of(rows.iter().map(|r| r.completion.as_ref()), claims)?;
    let written = sqlx::query!(
        r#"WITH claimed AS (
               INSERT INTO idempotency_keys
                   (tenant_id, method, key, fingerprint, state, lease_id, locked_until, response)
               SELECT tenant_id, method, key, fingerprint, 'completed', lease_id, now(), response
               FROM UNNEST($10::uuid[], $11::text[], $12::text[], $13::bytea[], $14::uuid[],
                           $15::bytea[])
                   AS t(tenant_id, method, key, fingerprint, lease_id, response)
               ON CONFLICT (tenant_id, method, key) DO UPDATE
               SET fingerprint = EXCLUDED.fingerprint, state = 'completed',
                   lease_id = EXCLUDED.lease_id, locked_until = EXCLUDED.locked_until,
                   response = EXCLUDED.response, status = NULL, created_at = now()
               WHERE idempotency_key_open(idempotency_keys.state, idempotency_keys.locked_until,
                                          idempotency_keys.created_at, $16)
               RETURNING lease_id),
           input AS (
               SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                    $6::jsonb[], $7::timestamptz[], $8::uuid[], $9::uuid[])
                   WITH ORDINALITY
                   AS t(tenant_id, id, external_id, email, name, metadata, created_at, key_id,
                        lease_id, n)),
           go AS (
               SELECT i.*, i.lease_id IS NULL OR i.lease_id IN (SELECT lease_id FROM claimed)
                          AS go
               FROM input i),
           c AS (
               INSERT INTO customers
                   (tenant_id, id, external_id, email, name, metadata, created_at, updated_at)
               SELECT tenant_id, id, external_id, email, name, metadata, created_at, created_at
               FROM go
               WHERE go
               ORDER BY n
               ON CONFLICT (tenant_id, external_id)
                   WHERE deleted_at IS NULL AND external_id IS NOT NULL
                   DO NOTHING
               RETURNING tenant_id, id),
           a AS (
               INSERT INTO audit_log (tenant_id, key_id, action, object_type, object_id)
               SELECT c.tenant_id, i.key_id, 'customer.created', 'customer', c.id
               FROM c JOIN input i ON i.id = c.id)
           SELECT g.go AS "go!", c.id IS NOT NULL AS "applied!"
           FROM go g LEFT JOIN c ON c.id = g.id
           ORDER BY g.n"#,
        &tenant,
        &id,
        &external_id as _,
        &email as _,
        &name as _,
        &metadata as _,
        &created_at,
        &by,
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
    .instrument(super::statement_span!("INSERT", "customers"))
    .await?;
    if written.len() != rows.len() {
        return Err(super::corrupt("batch result", "wrong number of rows"));
    }
    let mut results = Vec::with_capacity(rows.len());
    for (row, w) in rows.iter().zip(written) {
        if !w.go {
            results.push(None);
            continue;
        }
        if let (false, Some(k)) = (w.applied, &row.completion) {
            // The external id is taken: the key stores the refusal instead of the response,
            // in the same transaction.
            super::idempotency::refuse_key(conn, row.tenant, k).await?;
        }
        results.push(Some(Written {
            applied: w.applied,
            completed: true,
        }));
    }
    Ok(results)
}

/// Whether a live customer of the tenant other than `except` has `external_id`.
pub async fn external_id_taken(
    conn: &mut PgConnection,
    tenant: TenantId,
    external_id: &ExternalId,
    except: CustomerId,
) -> Result<bool, StoreError> {
    let taken = sqlx::query_scalar!(
        r#"SELECT EXISTS (
               SELECT 1 FROM customers
               WHERE tenant_id = $1 AND external_id = $2 AND deleted_at IS NULL AND id <> $3
           ) AS "taken!""#,
        tenant.as_uuid(),
        external_id.as_str(),
        except.as_uuid(),
    )
    .fetch_one(conn)
    .await?;
    Ok(taken)
}

/// A live customer by Coffer id or external id: two statements, so each has a plan that uses
/// its own index.
pub async fn find_customer(
    conn: &mut PgConnection,
    tenant: TenantId,
    by: &CustomerRef,
) -> Result<Option<Customer>, StoreError> {
    let row = match by {
        CustomerRef::Id(id) => {
            sqlx::query_as!(
                CustomerRow,
                r#"SELECT id, external_id, email, name,
                          metadata AS "metadata: Json<BTreeMap<String, String>>",
                          created_at, updated_at, deleted_at
                   FROM customers
                   WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"#,
                tenant.as_uuid(),
                id.as_uuid(),
            )
            .fetch_optional(conn)
            .await?
        }
        CustomerRef::External(external_id) => {
            sqlx::query_as!(
                CustomerRow,
                r#"SELECT id, external_id, email, name,
                          metadata AS "metadata: Json<BTreeMap<String, String>>",
                          created_at, updated_at, deleted_at
                   FROM customers
                   WHERE tenant_id = $1 AND external_id = $2 AND deleted_at IS NULL"#,
                tenant.as_uuid(),
                external_id.as_str(),
            )
            .fetch_optional(conn)
            .await?
        }
    };
    row.map(CustomerRow::into_domain).transpose()
}

/// A live customer by id, locked for the rest of the transaction.
pub async fn lock_customer(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: CustomerId,
) -> Result<Option<Customer>, StoreError> {
    let row = sqlx::query_as!(
        CustomerRow,
        r#"SELECT id, external_id, email, name,
                  metadata AS "metadata: Json<BTreeMap<String, String>>",
                  created_at, updated_at, deleted_at
           FROM customers
           WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
           FOR UPDATE"#,
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .fetch_optional(conn)
    .await?;
    row.map(CustomerRow::into_domain).transpose()
}

/// Writes every field of `customer`; a taken external_id is a unique violation on
/// [`EXTERNAL_ID_INDEX`].
pub async fn update_customer(
    conn: &mut PgConnection,
    tenant: TenantId,
    customer: &Customer,
) -> Result<Customer, StoreError> {
    let row = sqlx::query_as!(
        CustomerRow,
        r#"UPDATE customers
           SET external_id = $3, email = $4, name = $5, metadata = $6, updated_at = $7
           WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
           RETURNING id, external_id, email, name,
                     metadata AS "metadata: Json<BTreeMap<String, String>>",
                     created_at, updated_at, deleted_at"#,
        tenant.as_uuid(),
        customer.id.as_uuid(),
        customer.external_id.as_ref().map(ExternalId::as_str),
        customer.email.as_ref().map(Email::as_str),
        customer.name.as_ref().map(DisplayName::as_str),
        Json(customer.metadata.as_map()) as _,
        customer.updated_at,
    )
    .fetch_one(conn)
    .instrument(super::statement_span!("UPDATE", "customers"))
    .await?;
    row.into_domain()
}

/// Marks a live customer deleted; `None` when there is no such live customer.
pub async fn soft_delete_customer(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: CustomerId,
    now: OffsetDateTime,
) -> Result<Option<Customer>, StoreError> {
    let row = sqlx::query_as!(
        CustomerRow,
        r#"UPDATE customers SET deleted_at = $3, updated_at = $3
           WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL
           RETURNING id, external_id, email, name,
                     metadata AS "metadata: Json<BTreeMap<String, String>>",
                     created_at, updated_at, deleted_at"#,
        tenant.as_uuid(),
        id.as_uuid(),
        now,
    )
    .fetch_optional(conn)
    .instrument(super::statement_span!("UPDATE", "customers"))
    .await?;
    row.map(CustomerRow::into_domain).transpose()
}

/// One page of live customers in id (creation) order, after `after` when given. With an
/// email filter and without it are two statements, each with its own index.
pub async fn list_customers(
    conn: &mut PgConnection,
    tenant: TenantId,
    email: Option<&str>,
    after: Option<CustomerId>,
    limit: i64,
) -> Result<Vec<Customer>, StoreError> {
    // Every id sorts after the nil UUID, so "from the start" needs no predicate of its own.
    let after = after.map_or(uuid::Uuid::nil(), |a| a.as_uuid());
    let rows = match email {
        None => {
            sqlx::query_as!(
                CustomerRow,
                r#"SELECT id, external_id, email, name,
                          metadata AS "metadata: Json<BTreeMap<String, String>>",
                          created_at, updated_at, deleted_at
                   FROM customers
                   WHERE tenant_id = $1 AND deleted_at IS NULL AND id > $2
                   ORDER BY id
                   LIMIT $3"#,
                tenant.as_uuid(),
                after,
                limit,
            )
            .fetch_all(conn)
            .await?
        }
        Some(email) => {
            sqlx::query_as!(
                CustomerRow,
                r#"SELECT id, external_id, email, name,
                          metadata AS "metadata: Json<BTreeMap<String, String>>",
                          created_at, updated_at, deleted_at
                   FROM customers
                   WHERE tenant_id = $1 AND deleted_at IS NULL AND lower(email) = lower($2)
                     AND id > $3
                   ORDER BY id
                   LIMIT $4"#,
                tenant.as_uuid(),
                email,
                after,
                limit,
            )
            .fetch_all(conn)
            .await?
        }
    };
    rows.into_iter().map(CustomerRow::into_domain).collect()
}
