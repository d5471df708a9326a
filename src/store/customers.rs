//! The customers table.

use std::collections::BTreeMap;

use sqlx::PgConnection;
use sqlx::types::Json;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::{StoreError, corrupt};
use crate::domain::customer::{Customer, CustomerName, CustomerRef, Email, ExternalId, Metadata};
use crate::domain::ids::{CustomerId, KeyId, TenantId};
use crate::store::idempotency::{Completion, Written};

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
                .map(CustomerName::parse)
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

/// Inserts a customer and its audit row in one statement, and with a `completion` also
/// stores the outcome under the idempotency key: the response when the customer was written,
/// the refusal when a live customer of the tenant already has its external id. The conflict is
/// an expected outcome, so the statement finds it (`ON CONFLICT DO NOTHING`) rather than
/// failing, and the external id never reaches the database's error log. The key's row is
/// locked for the statement and must still carry the lease; if another attempt took it over,
/// nothing is written and `completed` is false.
pub async fn insert_customer(
    conn: &mut PgConnection,
    tenant: TenantId,
    by: KeyId,
    c: &Customer,
    completion: Option<Completion<'_>>,
) -> Result<Written, StoreError> {
    let key = completion.as_ref();
    let row = sqlx::query!(
        r#"WITH lease AS (
               SELECT 1 FROM idempotency_keys
               WHERE tenant_id = $1 AND method = $9 AND key = $10 AND lease_id = $11
                 AND state = 'in_flight'
               FOR UPDATE),
           c AS (
               INSERT INTO customers
                   (tenant_id, id, external_id, email, name, metadata, created_at, updated_at)
               SELECT $1, $2, $3, $4, $5, $6, $7, $7
               WHERE $9::text IS NULL OR EXISTS (SELECT 1 FROM lease)
               ON CONFLICT (tenant_id, external_id)
                   WHERE deleted_at IS NULL AND external_id IS NOT NULL
                   DO NOTHING
               RETURNING tenant_id, id),
           a AS (
               INSERT INTO audit_log (tenant_id, key_id, action, object_type, object_id)
               SELECT tenant_id, $8, 'customer.created', 'customer', id FROM c),
           k AS (
               UPDATE idempotency_keys
               SET state = 'completed',
                   response = CASE WHEN EXISTS (SELECT 1 FROM c) THEN $12::bytea END,
                   status = CASE WHEN EXISTS (SELECT 1 FROM c) THEN NULL ELSE $13::bytea END
               WHERE tenant_id = $1 AND method = $9 AND key = $10 AND lease_id = $11
                 AND state = 'in_flight' AND EXISTS (SELECT 1 FROM lease)
               RETURNING 1)
           SELECT EXISTS (SELECT 1 FROM c) AS "applied!", EXISTS (SELECT 1 FROM k) AS "completed!""#,
        tenant.as_uuid(),
        c.id.as_uuid(),
        c.external_id.as_ref().map(ExternalId::as_str),
        c.email.as_ref().map(Email::as_str),
        c.name.as_ref().map(CustomerName::as_str),
        Json(c.metadata.as_map()) as _,
        c.created_at,
        by.as_uuid(),
        key.map(|k| k.key.method),
        key.map(|k| k.key.key.as_str()),
        key.map(|k| k.lease),
        key.map(|k| k.response),
        key.map(|k| k.refusal),
    )
    .fetch_one(conn)
    .instrument(super::statement_span!("INSERT", "customers"))
    .await?;
    Ok(Written {
        applied: row.applied,
        completed: row.completed,
    })
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

/// A live customer by Coffer id or external id.
pub async fn find_customer(
    conn: &mut PgConnection,
    tenant: TenantId,
    by: &CustomerRef,
) -> Result<Option<Customer>, StoreError> {
    let (id, external_id) = match by {
        CustomerRef::Id(id) => (Some(id.as_uuid()), None),
        CustomerRef::External(e) => (None, Some(e.as_str())),
    };
    let row = sqlx::query_as!(
        CustomerRow,
        r#"SELECT id, external_id, email, name,
                  metadata AS "metadata: Json<BTreeMap<String, String>>",
                  created_at, updated_at, deleted_at
           FROM customers
           WHERE tenant_id = $1 AND deleted_at IS NULL
             AND (id = $2::uuid OR $2::uuid IS NULL)
             AND (external_id = $3::text OR $3::text IS NULL)
             AND ($2::uuid IS NOT NULL OR $3::text IS NOT NULL)"#,
        tenant.as_uuid(),
        id,
        external_id,
    )
    .fetch_optional(conn)
    .await?;
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
        customer.name.as_ref().map(CustomerName::as_str),
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

/// One page of live customers in id (creation) order, after `after` when given.
pub async fn list_customers(
    conn: &mut PgConnection,
    tenant: TenantId,
    email: Option<&str>,
    after: Option<CustomerId>,
    limit: i64,
) -> Result<Vec<Customer>, StoreError> {
    let rows = sqlx::query_as!(
        CustomerRow,
        r#"SELECT id, external_id, email, name,
                  metadata AS "metadata: Json<BTreeMap<String, String>>",
                  created_at, updated_at, deleted_at
           FROM customers
           WHERE tenant_id = $1 AND deleted_at IS NULL
             AND ($2::text IS NULL OR lower(email) = lower($2))
             AND ($3::uuid IS NULL OR id > $3)
           ORDER BY id
           LIMIT $4"#,
        tenant.as_uuid(),
        email,
        after.map(|a| a.as_uuid()),
        limit,
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(CustomerRow::into_domain).collect()
}
