//! The audit log: who changed what, written in the transaction of the change.

use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;
use crate::domain::ids::{KeyId, TenantId};

pub async fn insert_audit(
    conn: &mut PgConnection,
    tenant: TenantId,
    key: Option<KeyId>,
    action: &str,
    object_type: &str,
    object_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO audit_log (tenant_id, key_id, action, object_type, object_id)
         VALUES ($1, $2, $3, $4, $5)",
        tenant.as_uuid(),
        key.map(|k| k.as_uuid()),
        action,
        object_type,
        object_id,
    )
    .execute(conn)
    .await?;
    Ok(())
}
