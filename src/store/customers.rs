//! The customers table.

use std::collections::BTreeMap;

use sqlx::PgConnection;
use sqlx::types::Json;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::{StoreError, corrupt};
use crate::domain::customer::{Customer, CustomerRef, DisplayName, Email, ExternalId, Metadata};
use crate::domain::ids::{CustomerId, KeyId, TenantId};
use crate::store::idempotency::{ClaimRow, Completion, RETENTION_SECS, Written};

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

/// Inserts customers and their audit rows in one statement, and for each row with a
/// completion also stores its outcome under its idempotency key: the response when the
/// customer was written, the refusal when a live customer of the tenant already has its
/// external id (in the table, or earlier in the same batch). The conflict is an expected
/// outcome, so the statement finds it (`ON CONFLICT DO NOTHING`) rather than failing, and the
/// external id never reaches the database's error log. A key's row is locked for the statement
/// and must still carry the row's lease; if another attempt took it over, nothing is written
/// for that row and `completed` is false. One result per row, in the rows' order.
pub async fn insert_customers(
    conn: &mut PgConnection,
    rows: &[CustomerInsert],
) -> Result<Vec<Written>, StoreError> {
    let n = rows.len();
    let mut tenant = Vec::with_capacity(n);
    let mut id = Vec::with_capacity(n);
    let mut external_id = Vec::with_capacity(n);
    let mut email = Vec::with_capacity(n);
    let mut name = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    let mut created_at = Vec::with_capacity(n);
    let mut by = Vec::with_capacity(n);
    let mut method = Vec::with_capacity(n);
    let mut key = Vec::with_capacity(n);
    let mut lease = Vec::with_capacity(n);
    let mut response = Vec::with_capacity(n);
    let mut refusal = Vec::with_capacity(n);
    for row in rows {
        let c = &row.customer;
        tenant.push(row.tenant.as_uuid());
        id.push(c.id.as_uuid());
        external_id.push(c.external_id.as_ref().map(ExternalId::as_str));
        email.push(c.email.as_ref().map(Email::as_str));
        name.push(c.name.as_ref().map(DisplayName::as_str));
        metadata.push(Json(c.metadata.as_map()));
        created_at.push(c.created_at);
        by.push(row.by.as_uuid());
        let k = row.completion.as_ref();
        method.push(k.map(|k| k.method));
        key.push(k.map(|k| k.key.as_str()));
        lease.push(k.map(|k| k.lease));
        response.push(k.map(|k| &k.response[..]));
        refusal.push(k.map(|k| &k.refusal[..]));
    }
    let written = sqlx::query!(
        r#"WITH input AS (
               SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                    $6::jsonb[], $7::timestamptz[], $8::uuid[], $9::text[],
                                    $10::text[], $11::uuid[], $12::bytea[], $13::bytea[])
                   WITH ORDINALITY
                   AS t(tenant_id, id, external_id, email, name, metadata, created_at, key_id,
                        method, key, lease_id, response, refusal, n)),
           lease AS (
               -- One index lookup per row, whatever the batch's size: a join here would let
               -- the planner scan the whole table for a large batch.
               SELECT i.id, l.kctid
               FROM input i
               CROSS JOIN LATERAL (
                   SELECT k.ctid AS kctid FROM idempotency_keys k
                   WHERE k.tenant_id = i.tenant_id AND k.method = i.method AND k.key = i.key
                     AND k.lease_id = i.lease_id AND k.state = 'in_flight'
                   FOR UPDATE) l),
           c AS (
               INSERT INTO customers
                   (tenant_id, id, external_id, email, name, metadata, created_at, updated_at)
               SELECT tenant_id, id, external_id, email, name, metadata, created_at, created_at
               FROM input
               WHERE key IS NULL OR id IN (SELECT id FROM lease)
               ORDER BY n
               ON CONFLICT (tenant_id, external_id)
                   WHERE deleted_at IS NULL AND external_id IS NOT NULL
                   DO NOTHING
               RETURNING tenant_id, id),
           a AS (
               INSERT INTO audit_log (tenant_id, key_id, action, object_type, object_id)
               SELECT c.tenant_id, i.key_id, 'customer.created', 'customer', c.id
               FROM c JOIN input i ON i.id = c.id),
           k AS (
               UPDATE idempotency_keys k
               SET state = 'completed',
                   response = CASE WHEN c.id IS NOT NULL THEN i.response END,
                   status = CASE WHEN c.id IS NULL THEN i.refusal END
               FROM lease l JOIN input i ON i.id = l.id LEFT JOIN c ON c.id = i.id
               WHERE k.ctid = l.kctid
               RETURNING i.id)
           SELECT c.id IS NOT NULL AS "applied!", k.id IS NOT NULL AS "completed!"
           FROM input i LEFT JOIN c ON c.id = i.id LEFT JOIN k ON k.id = i.id
           ORDER BY i.n"#,
        &tenant,
        &id,
        &external_id as _,
        &email as _,
        &name as _,
        &metadata as _,
        &created_at,
        &by,
        &method as _,
        &key as _,
        &lease as _,
        &response as _,
        &refusal as _,
    )
    .fetch_all(conn)
    .instrument(super::statement_span!("INSERT", "customers"))
    .await?;
    Ok(written
        .into_iter()
        .map(|r| Written {
            applied: r.applied,
            completed: r.completed,
        })
        .collect())
}

/// Inserts one customer (see [`insert_customers`]).
pub async fn insert_customer(
    conn: &mut PgConnection,
    tenant: TenantId,
    by: KeyId,
    customer: &Customer,
    completion: Option<Completion>,
) -> Result<Written, StoreError> {
    let row = CustomerInsert {
        tenant,
        by,
        customer: customer.clone(),
        completion,
    };
    let mut written = insert_customers(conn, std::slice::from_ref(&row)).await?;
    written
        .pop()
        .ok_or_else(|| super::corrupt("insert result", "no row"))
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
    let n = rows.len();
    let mut tenant = Vec::with_capacity(n);
    let mut id = Vec::with_capacity(n);
    let mut external_id = Vec::with_capacity(n);
    let mut email = Vec::with_capacity(n);
    let mut name = Vec::with_capacity(n);
    let mut metadata = Vec::with_capacity(n);
    let mut created_at = Vec::with_capacity(n);
    let mut by = Vec::with_capacity(n);
    let mut lease = Vec::with_capacity(n);
    for row in rows {
        let c = &row.customer;
        tenant.push(row.tenant.as_uuid());
        id.push(c.id.as_uuid());
        external_id.push(c.external_id.as_ref().map(ExternalId::as_str));
        email.push(c.email.as_ref().map(Email::as_str));
        name.push(c.name.as_ref().map(DisplayName::as_str));
        metadata.push(Json(c.metadata.as_map()));
        created_at.push(c.created_at);
        by.push(row.by.as_uuid());
        lease.push(row.completion.as_ref().map(|k| k.lease));
    }
    let m = claims.len();
    let (mut k_tenant, mut k_method, mut k_key, mut k_fingerprint, mut k_lease, mut k_response) = (
        Vec::with_capacity(m),
        Vec::with_capacity(m),
        Vec::with_capacity(m),
        Vec::with_capacity(m),
        Vec::with_capacity(m),
        Vec::with_capacity(m),
    );
    for (i, claim) in claims.iter().enumerate() {
        // ON CONFLICT DO UPDATE cannot touch one row twice in a statement.
        if i > 0 && super::idempotency::order_claims(&claims[i - 1], claim).is_eq() {
            continue;
        }
        let Some(completion) = rows
            .iter()
            .filter_map(|r| r.completion.as_ref())
            .find(|k| k.lease == claim.lease)
        else {
            return Err(super::corrupt("batch claim", "a claim without its row"));
        };
        k_tenant.push(claim.tenant.as_uuid());
        k_method.push(claim.method);
        k_key.push(claim.key.as_str());
        k_fingerprint.push(&claim.fingerprint[..]);
        k_lease.push(claim.lease);
        k_response.push(&completion.response[..]);
    }
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
               WHERE (idempotency_keys.state = 'in_flight'
                      AND idempotency_keys.locked_until < now())
                  OR idempotency_keys.created_at < now() - make_interval(secs => $16)
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
        &k_tenant,
        &k_method as _,
        &k_key as _,
        &k_fingerprint as _,
        &k_lease,
        &k_response as _,
        RETENTION_SECS as f64,
    )
    .fetch_all(&mut *conn)
    .instrument(super::statement_span!("INSERT", "customers"))
    .await?;
    if written.len() != rows.len() {
        return Err(super::corrupt("batch result", "wrong number of rows"));
    }
    let mut results = Vec::with_capacity(n);
    for (row, w) in rows.iter().zip(written) {
        if !w.go {
            results.push(None);
            continue;
        }
        if let (false, Some(k)) = (w.applied, &row.completion) {
            // The external id is taken: the key stores the refusal instead of the response,
            // in the same transaction.
            refuse_key(conn, row.tenant, k).await?;
        }
        results.push(Some(Written {
            applied: w.applied,
            completed: true,
        }));
    }
    Ok(results)
}

/// Swaps the response a key was claimed with for the refusal (see
/// [`claim_and_insert_customers`]).
async fn refuse_key(
    conn: &mut PgConnection,
    tenant: TenantId,
    k: &Completion,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE idempotency_keys SET response = NULL, status = $5
         WHERE tenant_id = $1 AND method = $2 AND key = $3 AND lease_id = $4",
        tenant.as_uuid(),
        k.method,
        k.key.as_str(),
        k.lease,
        &k.refusal[..],
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "idempotency_keys"))
    .await?;
    Ok(())
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
