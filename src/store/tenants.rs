//! Tenants and API keys.

use sqlx::PgConnection;
use time::OffsetDateTime;

use super::StoreError;
use crate::domain::auth::TenantName;
use crate::domain::ids::{KeyId, TenantId};

pub struct TenantRow {
    pub id: TenantId,
    pub name: String,
    pub created_at: OffsetDateTime,
}

/// Inserts a tenant; `false` when the name is taken.
pub async fn insert_tenant(
    conn: &mut PgConnection,
    id: TenantId,
    name: &TenantName,
) -> Result<bool, StoreError> {
    let done = sqlx::query!(
        "INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        id.as_uuid(),
        name.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn find_tenant_by_name(
    conn: &mut PgConnection,
    name: &TenantName,
) -> Result<Option<TenantId>, StoreError> {
    let id = sqlx::query_scalar!("SELECT id FROM tenants WHERE name = $1", name.as_str())
        .fetch_optional(conn)
        .await?;
    Ok(id.map(TenantId::from_uuid))
}

pub async fn list_tenants(conn: &mut PgConnection) -> Result<Vec<TenantRow>, StoreError> {
    let rows = sqlx::query!("SELECT id, name, created_at FROM tenants ORDER BY name")
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| TenantRow {
            id: TenantId::from_uuid(r.id),
            name: r.name,
            created_at: r.created_at,
        })
        .collect())
}

pub async fn insert_api_key(
    conn: &mut PgConnection,
    id: KeyId,
    tenant: Option<TenantId>,
    scopes: &[String],
    key_hash: &[u8; 32],
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO api_keys (id, tenant_id, scopes, key_hash) VALUES ($1, $2, $3, $4)",
        id.as_uuid(),
        tenant.map(|t| t.as_uuid()),
        scopes,
        &key_hash[..],
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// What authentication needs to know about a key.
pub struct KeyRecord {
    pub tenant: Option<TenantId>,
    pub scopes: Vec<String>,
    pub key_hash: Vec<u8>,
    pub revoked: bool,
}

pub async fn find_api_key(
    conn: &mut PgConnection,
    id: KeyId,
) -> Result<Option<KeyRecord>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT tenant_id, scopes, key_hash, revoked_at IS NOT NULL AS "revoked!"
           FROM api_keys WHERE id = $1"#,
        id.as_uuid(),
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| KeyRecord {
        tenant: r.tenant_id.map(TenantId::from_uuid),
        scopes: r.scopes,
        key_hash: r.key_hash,
        revoked: r.revoked,
    }))
}

pub struct KeyListing {
    pub id: KeyId,
    pub tenant_name: Option<String>,
    pub scopes: Vec<String>,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
}

/// Every key, system keys first, then by tenant name and age.
pub async fn list_api_keys(conn: &mut PgConnection) -> Result<Vec<KeyListing>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT k.id, t.name AS "tenant_name?", k.scopes, k.created_at, k.revoked_at
           FROM api_keys k LEFT JOIN tenants t ON t.id = k.tenant_id
           ORDER BY t.name NULLS FIRST, k.id"#
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| KeyListing {
            id: KeyId::from_uuid(r.id),
            tenant_name: r.tenant_name,
            scopes: r.scopes,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        })
        .collect())
}

/// Revokes a key. `None` when there is no such active key; otherwise the key's tenant (`None`
/// inside for a system key).
pub async fn revoke_api_key(
    conn: &mut PgConnection,
    id: KeyId,
) -> Result<Option<Option<TenantId>>, StoreError> {
    let row = sqlx::query!(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
         RETURNING tenant_id",
        id.as_uuid(),
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| r.tenant_id.map(TenantId::from_uuid)))
}
