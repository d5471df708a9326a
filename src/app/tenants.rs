//! Tenant and key administration, behind the `coffer tenant` and `coffer key` commands.

use sqlx::Connection;

use sqlx::PgPool;

use super::{AppError, RejectionKind};
use crate::domain::Violations;
use crate::domain::auth::{ApiKey, KeyOwner, Scope, Scopes, TenantName, check_scopes_for};
use crate::domain::ids::{KeyId, TenantId};
use crate::store::audit;
use crate::store::tenants::{self as store, KeyListing, TenantRow};

pub const REASON_TENANT_NAME_TAKEN: &str = "TENANT_NAME_TAKEN";
pub const REASON_TENANT_NOT_FOUND: &str = "TENANT_NOT_FOUND";
pub const REASON_KEY_NOT_FOUND: &str = "API_KEY_NOT_FOUND";

/// Whose key to create: a tenant's, by name, or a system key.
#[derive(Debug, Clone)]
pub enum KeyFor {
    Tenant(TenantName),
    System,
}

/// Tenant and key administration. Not a gRPC service: the CLI's.
#[derive(Clone)]
pub struct Tenants {
    pool: PgPool,
}

impl Tenants {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Creates a tenant and its first key (`read,write,admin`), together or not at all.
    pub async fn create_tenant(&self, name: &TenantName) -> Result<(TenantId, ApiKey), AppError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let id = TenantId::generate();
        if !store::insert_tenant(&mut tx, id, name).await? {
            return Err(AppError::rejected(
                RejectionKind::AlreadyExists,
                REASON_TENANT_NAME_TAKEN,
                format!("a tenant named {:?} already exists", name.as_str()),
            ));
        }
        audit::insert_audit(&mut tx, id, None, "tenant.created", "tenant", id.as_uuid()).await?;
        let scopes = Scopes::new([Scope::Read, Scope::Write, Scope::Admin]);
        let key = insert_key(&mut tx, KeyOwner::Tenant(id), &scopes).await?;
        tx.commit().await?;
        Ok((id, key))
    }

    pub async fn find_tenant(&self, name: &TenantName) -> Result<Option<TenantId>, AppError> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::find_tenant_by_name(&mut conn, name).await?)
    }

    pub async fn list_tenants(&self) -> Result<Vec<TenantRow>, AppError> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::list_tenants(&mut conn).await?)
    }

    pub async fn create_key(&self, owner: &KeyFor, scopes: &Scopes) -> Result<ApiKey, AppError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let owner = match owner {
            KeyFor::System => KeyOwner::System,
            KeyFor::Tenant(name) => KeyOwner::Tenant(
                store::find_tenant_by_name(&mut tx, name)
                    .await?
                    .ok_or_else(|| {
                        AppError::not_found(
                            REASON_TENANT_NOT_FOUND,
                            format!("no tenant named {:?}", name.as_str()),
                        )
                    })?,
            ),
        };
        let key = insert_key(&mut tx, owner, scopes).await?;
        tx.commit().await?;
        Ok(key)
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyListing>, AppError> {
        let mut conn = self.pool.acquire().await?;
        Ok(store::list_api_keys(&mut conn).await?)
    }

    pub async fn revoke_key(&self, id: KeyId) -> Result<(), AppError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let tenant = store::revoke_api_key(&mut tx, id).await?.ok_or_else(|| {
            AppError::not_found(REASON_KEY_NOT_FOUND, format!("no active key {id}"))
        })?;
        tracing::info!(key_id = %id, owner = %owner_label(tenant), "api key revoked");
        if let Some(tenant) = tenant {
            audit::insert_audit(
                &mut tx,
                tenant,
                None,
                "api_key.revoked",
                "api_key",
                id.as_uuid(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn insert_key(
    conn: &mut sqlx::PgConnection,
    owner: KeyOwner,
    scopes: &Scopes,
) -> Result<ApiKey, AppError> {
    check_scopes_for(owner, scopes).map_err(|e| Violations::single("scopes", e.0))?;
    let key = ApiKey::generate(KeyId::generate());
    let tenant = match owner {
        KeyOwner::Tenant(t) => Some(t),
        KeyOwner::System => None,
    };
    store::insert_api_key(conn, key.id(), tenant, &scopes.as_strs(), &key.hash()).await?;
    // The log line is the record of a system key, which has no tenant to own an audit row.
    // It names the key by id; the secret is never logged.
    tracing::info!(key_id = %key.id(), owner = %owner_label(tenant), %scopes, "api key created");
    if let Some(tenant) = tenant {
        audit::insert_audit(
            conn,
            tenant,
            None,
            "api_key.created",
            "api_key",
            key.id().as_uuid(),
        )
        .await?;
    }
    Ok(key)
}

/// A key's owner in log lines: the tenant's id, or "system".
fn owner_label(tenant: Option<TenantId>) -> String {
    tenant.map_or_else(|| "system".to_owned(), |t| t.to_string())
}
