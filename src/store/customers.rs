//! The customers table.

use std::collections::BTreeMap;

use sqlx::PgConnection;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{StoreError, corrupt};
use crate::domain::customer::{Customer, CustomerName, CustomerRef, Email, ExternalId, Metadata};
use crate::domain::ids::{CustomerId, KeyId, TenantId};
use crate::store::idempotency::NewOutcome;

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

/// A customer to insert, with who creates it and, under an idempotency key, the completed
/// outcome to store with it.
pub struct CustomerInsert {
    pub tenant: TenantId,
    pub by: KeyId,
    pub customer: Customer,
    pub outcome: Option<NewOutcome>,
}

/// Inserts customers, their audit rows and their stored outcomes, all in one statement: the
/// cheapest way to commit them together, whether `rows` holds one customer or a batch of
/// concurrent creates. Any conflict aborts the whole statement and writes nothing: a unique
/// violation on [`EXTERNAL_ID_INDEX`] (the external id is taken) or on an idempotency key
/// (used before, or held by a call still running). Inside a transaction, that violation
/// aborts the transaction too.
pub async fn insert_customers(
    conn: &mut PgConnection,
    rows: &[CustomerInsert],
) -> Result<(), StoreError> {
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
    let mut fingerprint = Vec::with_capacity(n);
    let mut response = Vec::with_capacity(n);
    for row in rows {
        let c = &row.customer;
        tenant.push(row.tenant.as_uuid());
        id.push(c.id.as_uuid());
        external_id.push(c.external_id.as_ref().map(ExternalId::as_str));
        email.push(c.email.as_ref().map(Email::as_str));
        name.push(c.name.as_ref().map(CustomerName::as_str));
        metadata.push(Json(c.metadata.as_map()));
        created_at.push(c.created_at);
        by.push(row.by.as_uuid());
        let outcome = row.outcome.as_ref();
        method.push(outcome.map(|o| o.method));
        key.push(outcome.map(|o| o.key.as_str()));
        fingerprint.push(outcome.map(|o| &o.fingerprint[..]));
        response.push(outcome.map(|o| &o.response[..]));
    }
    sqlx::query!(
        r#"WITH input AS (
               SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                    $6::jsonb[], $7::timestamptz[], $8::uuid[], $9::text[],
                                    $10::text[], $11::bytea[], $12::bytea[])
                   AS t(tenant_id, id, external_id, email, name, metadata, created_at, key_id,
                        method, key, fingerprint, response)),
           a AS (
               INSERT INTO audit_log (tenant_id, key_id, action, object_type, object_id)
               SELECT tenant_id, key_id, 'customer.created', 'customer', id FROM input),
           k AS (
               INSERT INTO idempotency_keys
                   (tenant_id, method, key, fingerprint, state, lease_id, locked_until, response)
               SELECT tenant_id, method, key, fingerprint, 'completed', id, now(), response
               FROM input
               WHERE key IS NOT NULL)
           INSERT INTO customers
               (tenant_id, id, external_id, email, name, metadata, created_at, updated_at)
           SELECT tenant_id, id, external_id, email, name, metadata, created_at, created_at
           FROM input"#,
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
        &fingerprint as _,
        &response as _,
    )
    .execute(conn)
    .await?;
    Ok(())
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
