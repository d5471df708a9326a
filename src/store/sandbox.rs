//! The sandbox provider's own tables (`sandbox_accounts`, `sandbox_customers`,
//! `sandbox_checkout_sessions`, its payments, refunds, subscriptions and outbox): what a real
//! provider would hold on its side.

use sqlx::PgConnection;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::StoreError;
use crate::domain::ids::TenantId;

/// A sandbox checkout session as stored.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub id: String,
    pub url: String,
    pub status: String,
    pub payment_status: String,
    pub expires_at: OffsetDateTime,
    pub version: i64,
}

/// A sandbox checkout session to insert.
pub struct NewSession<'a> {
    pub account: &'a str,
    pub id: &'a str,
    pub client_reference: Uuid,
    pub customer: &'a str,
    pub mode: &'a str,
    pub payment_status: &'a str,
    pub line_items: serde_json::Value,
    pub amount_total: i64,
    pub currency: &'a str,
    pub trial_days: i16,
    pub success_url: &'a str,
    pub cancel_url: &'a str,
    pub url: &'a str,
    pub expires_at: OffsetDateTime,
}

/// The tenant's sandbox account (name and secret), made with `name` and `secret` if it has
/// none yet. `None` for a tenant that does not exist.
pub async fn ensure_sandbox_account(
    conn: &mut PgConnection,
    tenant: TenantId,
    name: impl FnOnce(&str) -> String,
    secret: &str,
) -> Result<Option<(String, String)>, StoreError> {
    if let Some(found) = find_sandbox_account(conn, tenant).await? {
        return Ok(Some(found));
    }
    let Some(tenant_name) =
        sqlx::query_scalar!("SELECT name FROM tenants WHERE id = $1", tenant.as_uuid())
            .fetch_optional(&mut *conn)
            .await?
    else {
        return Ok(None);
    };
    sqlx::query!(
        "INSERT INTO sandbox_accounts (tenant_id, account, webhook_secret, created_at)
         VALUES ($1, $2, $3, now())
         ON CONFLICT (tenant_id) DO NOTHING",
        tenant.as_uuid(),
        name(&tenant_name),
        secret,
    )
    .execute(&mut *conn)
    .await?;
    find_sandbox_account(conn, tenant).await
}

pub async fn find_sandbox_account(
    conn: &mut PgConnection,
    tenant: TenantId,
) -> Result<Option<(String, String)>, StoreError> {
    let row = sqlx::query!(
        "SELECT account, webhook_secret FROM sandbox_accounts WHERE tenant_id = $1",
        tenant.as_uuid()
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.account, r.webhook_secret)))
}

/// The sandbox customer made for `client_reference`, created as `id` if there is none.
pub async fn upsert_customer(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    client_reference: Uuid,
) -> Result<String, StoreError> {
    sqlx::query!(
        "INSERT INTO sandbox_customers (account, id, client_reference, version, created_at)
         VALUES ($1, $2, $3, 1, now())
         ON CONFLICT (account, client_reference) DO NOTHING",
        account,
        id,
        client_reference,
    )
    .execute(&mut *conn)
    .await?;
    find_customer(conn, account, client_reference)
        .await?
        .ok_or_else(|| super::corrupt("sandbox customer", "missing after insert"))
}

pub async fn find_customer(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT id FROM sandbox_customers WHERE account = $1 AND client_reference = $2",
        account,
        client_reference,
    )
    .fetch_optional(conn)
    .await?)
}

/// Inserts the session unless one exists for its client reference; returns the one stored.
pub async fn upsert_session(
    conn: &mut PgConnection,
    s: NewSession<'_>,
) -> Result<SessionRow, StoreError> {
    sqlx::query!(
        "INSERT INTO sandbox_checkout_sessions
             (account, id, client_reference, customer, mode, status, payment_status, line_items,
              amount_total, currency, trial_days, success_url, cancel_url, url, expires_at,
              version, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'open', $6, $7, $8, $9, $10, $11, $12, $13, $14, 1, now(), now())
         ON CONFLICT (account, client_reference) DO NOTHING",
        s.account,
        s.id,
        s.client_reference,
        s.customer,
        s.mode,
        s.payment_status,
        Json(&s.line_items) as _,
        s.amount_total,
        s.currency,
        s.trial_days,
        s.success_url,
        s.cancel_url,
        s.url,
        s.expires_at,
    )
    .execute(&mut *conn)
    .await?;
    find_session_by_reference(conn, s.account, s.client_reference)
        .await?
        .ok_or_else(|| super::corrupt("sandbox session", "missing after insert"))
}

pub async fn find_session(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
) -> Result<Option<SessionRow>, StoreError> {
    Ok(sqlx::query_as!(
        SessionRow,
        "SELECT id, url, status, payment_status, expires_at, version
         FROM sandbox_checkout_sessions WHERE account = $1 AND id = $2",
        account,
        id,
    )
    .fetch_optional(conn)
    .await?)
}

pub async fn find_session_by_reference(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<SessionRow>, StoreError> {
    Ok(sqlx::query_as!(
        SessionRow,
        "SELECT id, url, status, payment_status, expires_at, version
         FROM sandbox_checkout_sessions WHERE account = $1 AND client_reference = $2",
        account,
        client_reference,
    )
    .fetch_optional(conn)
    .await?)
}

/// Expires the session if it is open, bumping its version; `None` if it is not open (or
/// does not exist).
pub async fn expire_session(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
) -> Result<Option<SessionRow>, StoreError> {
    Ok(sqlx::query_as!(
        SessionRow,
        "UPDATE sandbox_checkout_sessions
         SET status = 'expired', version = version + 1, updated_at = now()
         WHERE account = $1 AND id = $2 AND status = 'open'
         RETURNING id, url, status, payment_status, expires_at, version",
        account,
        id,
    )
    .fetch_optional(conn)
    .await?)
}

/// Queues an event body for delivery, due now. `webhook_id` is unique: an event is queued once.
pub async fn enqueue_event(
    conn: &mut PgConnection,
    account: &str,
    webhook_id: &str,
    event_type: &str,
    body: &[u8],
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO sandbox_outbox (account, webhook_id, event_type, body, next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, now(), now())",
        account,
        webhook_id,
        event_type,
        body,
    )
    .execute(conn)
    .await?;
    Ok(())
}
