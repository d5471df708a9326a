//! Customer portal sessions: who opened each, for which customer, on which account.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use super::StoreError;
use crate::domain::ids::{CustomerId, KeyId, SubscriptionId, TenantId};

/// A portal session as Coffer keeps it (never its URL).
#[derive(Debug, Clone)]
pub struct PortalSessionRow {
    pub id: Uuid,
    pub customer: CustomerId,
    pub key: KeyId,
    pub account: String,
    pub expires_at: OffsetDateTime,
}

#[allow(clippy::too_many_arguments)]
pub async fn insert_portal_session(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: Uuid,
    customer: CustomerId,
    key: KeyId,
    account: &str,
    return_url: &str,
    expires_at: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO portal_sessions (tenant_id, id, customer_id, key_id, account, return_url,
                                      expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now())",
        tenant.as_uuid(),
        id,
        customer.as_uuid(),
        key.as_uuid(),
        account,
        return_url,
        expires_at,
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn find_portal_session(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<PortalSessionRow>, StoreError> {
    let row = sqlx::query!(
        "SELECT id, customer_id, key_id, account, expires_at
         FROM portal_sessions WHERE tenant_id = $1 AND id = $2",
        tenant.as_uuid(),
        id,
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| PortalSessionRow {
        id: r.id,
        customer: CustomerId::from_uuid(r.customer_id),
        key: KeyId::from_uuid(r.key_id),
        account: r.account,
        expires_at: r.expires_at,
    }))
}

/// The customer's subscription that is `provider_id` on `account`, if there is one.
pub async fn find_customer_subscription(
    conn: &mut PgConnection,
    tenant: TenantId,
    customer: CustomerId,
    account: &str,
    provider_id: &str,
) -> Result<Option<SubscriptionId>, StoreError> {
    let id = sqlx::query_scalar!(
        "SELECT id FROM subscriptions
         WHERE tenant_id = $1 AND customer_id = $2 AND account = $3
           AND provider_subscription_id = $4",
        tenant.as_uuid(),
        customer.as_uuid(),
        account,
        provider_id,
    )
    .fetch_optional(conn)
    .await?;
    Ok(id.map(SubscriptionId::from_uuid))
}
