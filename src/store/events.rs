//! The webhook inbox, `webhook_events`.

use sqlx::PgConnection;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::{StoreError, corrupt};
use crate::domain::account::{AccountName, ProviderKind};
use crate::domain::event::{EventStatus, WebhookEvent};
use crate::domain::ids::{EventId, TenantId};

/// A verified delivery, ready to be stored.
pub struct NewEvent<'a> {
    pub tenant: TenantId,
    pub id: EventId,
    pub account: &'a AccountName,
    pub provider: ProviderKind,
    pub provider_event_id: &'a str,
    pub event_type: &'a str,
    pub payload: &'a [u8],
    pub received_at: OffsetDateTime,
}

/// Stores a delivery unless its account already has its provider event id; either way the id
/// of the stored event, and whether this call stored it. One statement, committed on its own.
/// A duplicate is found with `ON CONFLICT DO NOTHING`, never by a failing insert.
pub async fn insert_event(
    conn: &mut PgConnection,
    new: &NewEvent<'_>,
) -> Result<Option<(Uuid, bool)>, StoreError> {
    let row = sqlx::query!(
        r#"WITH inserted AS (
               INSERT INTO webhook_events (tenant_id, id, account, provider, provider_event_id,
                                           event_type, next_attempt_at, payload, received_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $7)
               ON CONFLICT (account, provider_event_id) DO NOTHING
               RETURNING id)
           SELECT id AS "id!", true AS "inserted!" FROM inserted
           UNION ALL
           SELECT id, false FROM webhook_events
           WHERE account = $3 AND provider_event_id = $5 AND NOT EXISTS (SELECT 1 FROM inserted)"#,
        new.tenant.as_uuid(),
        new.id.as_uuid(),
        new.account.as_str(),
        new.provider.as_str(),
        new.provider_event_id,
        new.event_type,
        new.received_at,
        new.payload,
    )
    .fetch_optional(conn)
    .instrument(super::statement_span!("INSERT", "webhook_events"))
    .await?;
    Ok(row.map(|r| (r.id, r.inserted)))
}

/// The stored event of an account's provider event id. For the rare duplicate whose first
/// delivery committed after [`insert_event`]'s snapshot was taken (the insert waited for it,
/// then found the conflict, but its read could not see the row).
pub async fn find_event_id(
    conn: &mut PgConnection,
    account: &AccountName,
    provider_event_id: &str,
) -> Result<Option<Uuid>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT id FROM webhook_events WHERE account = $1 AND provider_event_id = $2",
        account.as_str(),
        provider_event_id,
    )
    .fetch_optional(conn)
    .await?)
}

struct EventRow {
    id: Uuid,
    account: String,
    provider: String,
    provider_event_id: String,
    event_type: String,
    status: String,
    attempts: i32,
    next_attempt_at: OffsetDateTime,
    last_error: Option<String>,
    received_at: OffsetDateTime,
    processed_at: Option<OffsetDateTime>,
}

impl EventRow {
    fn into_domain(self) -> Result<WebhookEvent, StoreError> {
        Ok(WebhookEvent {
            id: EventId::from_uuid(self.id),
            account: AccountName::parse(&self.account).map_err(|e| corrupt("event account", e))?,
            provider: ProviderKind::parse(&self.provider)
                .map_err(|e| corrupt("event provider", e))?,
            provider_event_id: self.provider_event_id,
            event_type: self.event_type,
            status: EventStatus::parse(&self.status)
                .ok_or_else(|| corrupt("event status", &self.status))?,
            attempts: self.attempts,
            next_attempt_at: self.next_attempt_at,
            last_error: self.last_error,
            received_at: self.received_at,
            processed_at: self.processed_at,
        })
    }
}

/// One page of a tenant's events in id order after `after`, optionally of one status and one
/// account.
pub async fn list_events(
    conn: &mut PgConnection,
    tenant: TenantId,
    status: Option<EventStatus>,
    account: Option<&AccountName>,
    after: Uuid,
    limit: i64,
) -> Result<Vec<WebhookEvent>, StoreError> {
    let rows = sqlx::query_as!(
        EventRow,
        "SELECT id, account, provider, provider_event_id, event_type, status, attempts,
                next_attempt_at, last_error, received_at, processed_at
         FROM webhook_events
         WHERE tenant_id = $1 AND id > $2
           AND ($3::text IS NULL OR status = $3)
           AND ($4::text IS NULL OR account = $4)
         ORDER BY id
         LIMIT $5",
        tenant.as_uuid(),
        after,
        status.map(EventStatus::as_str),
        account.map(AccountName::as_str),
        limit,
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(EventRow::into_domain).collect()
}

/// One of the tenant's events, locked for the rest of the transaction.
pub async fn lock_event(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: EventId,
) -> Result<Option<WebhookEvent>, StoreError> {
    let row = sqlx::query_as!(
        EventRow,
        "SELECT id, account, provider, provider_event_id, event_type, status, attempts,
                next_attempt_at, last_error, received_at, processed_at
         FROM webhook_events
         WHERE tenant_id = $1 AND id = $2
         FOR UPDATE",
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .fetch_optional(conn)
    .await?;
    row.map(EventRow::into_domain).transpose()
}

/// Puts an event back in the queue: pending, due at `now`, no attempts, no error.
pub async fn requeue_event(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: EventId,
    now: OffsetDateTime,
) -> Result<WebhookEvent, StoreError> {
    let row = sqlx::query_as!(
        EventRow,
        "UPDATE webhook_events
         SET status = 'pending', attempts = 0, next_attempt_at = $3, last_error = NULL,
             processed_at = NULL
         WHERE tenant_id = $1 AND id = $2
         RETURNING id, account, provider, provider_event_id, event_type, status, attempts,
                   next_attempt_at, last_error, received_at, processed_at",
        tenant.as_uuid(),
        id.as_uuid(),
        now,
    )
    .fetch_one(conn)
    .instrument(super::statement_span!("UPDATE", "webhook_events"))
    .await?;
    row.into_domain()
}
