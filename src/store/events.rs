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
#[derive(Debug)]
pub struct NewEvent {
    pub tenant: TenantId,
    pub id: EventId,
    pub account: AccountName,
    pub provider: ProviderKind,
    pub provider_event_id: String,
    pub event_type: String,
    /// The raw body, as signed.
    pub payload: Vec<u8>,
    pub received_at: OffsetDateTime,
    /// The W3C traceparent of the span that stored it, for the worker's span to link to.
    pub traceparent: Option<String>,
}

/// Where a delivery ended up: the stored event's id and whether this row stored it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub id: Uuid,
    pub inserted: bool,
}

/// The order rows of one batch are inserted in: by the unique key they insert, so two
/// batches take the index's locks in one order and cannot deadlock.
pub fn order_events(a: &NewEvent, b: &NewEvent) -> std::cmp::Ordering {
    (a.account.as_str(), a.provider_event_id.as_str())
        .cmp(&(b.account.as_str(), b.provider_event_id.as_str()))
}

/// Stores deliveries unless their account already has their provider event id: one
/// statement, committed on its own, one answer per row in order. A duplicate is found with
/// `ON CONFLICT DO NOTHING`, never by a failing insert; its answer is the stored event's id,
/// whether that row was stored before or by another row of this batch. `None` for a row whose
/// first delivery committed while this statement waited on it, after its snapshot: the
/// caller reads again ([`find_event_id`]).
pub async fn insert_events(
    conn: &mut PgConnection,
    rows: &[NewEvent],
) -> Result<Vec<Option<Stored>>, StoreError> {
    let n = rows.len();
    let mut tenant = Vec::with_capacity(n);
    let mut id = Vec::with_capacity(n);
    let mut account = Vec::with_capacity(n);
    let mut provider = Vec::with_capacity(n);
    let mut provider_event_id = Vec::with_capacity(n);
    let mut event_type = Vec::with_capacity(n);
    let mut payload = Vec::with_capacity(n);
    let mut received_at = Vec::with_capacity(n);
    let mut traceparent = Vec::with_capacity(n);
    for row in rows {
        tenant.push(row.tenant.as_uuid());
        id.push(row.id.as_uuid());
        account.push(row.account.as_str());
        provider.push(row.provider.as_str());
        provider_event_id.push(row.provider_event_id.as_str());
        event_type.push(row.event_type.as_str());
        payload.push(row.payload.as_slice());
        received_at.push(row.received_at);
        traceparent.push(row.traceparent.as_deref());
    }
    let stored = sqlx::query!(
        r#"WITH input AS (
               SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                                    $6::text[], $7::bytea[], $8::timestamptz[], $9::text[])
                   WITH ORDINALITY
                   AS t(tenant_id, id, account, provider, provider_event_id, event_type,
                        payload, received_at, traceparent, n)),
           inserted AS (
               INSERT INTO webhook_events (tenant_id, id, account, provider, provider_event_id,
                                           event_type, next_attempt_at, payload, received_at,
                                           traceparent)
               SELECT tenant_id, id, account, provider, provider_event_id, event_type,
                      received_at, payload, received_at, traceparent
               FROM input
               ORDER BY n
               ON CONFLICT (account, provider_event_id) DO NOTHING
               RETURNING id, account, provider_event_id)
           SELECT COALESCE(own.id, sibling.id, earlier.id) AS "id?",
                  own.id IS NOT NULL AS "inserted!"
           FROM input i
           LEFT JOIN inserted own ON own.id = i.id
           LEFT JOIN inserted sibling
               ON sibling.account = i.account AND sibling.provider_event_id = i.provider_event_id
           -- A lookup for each duplicate, and none for the rows stored here (the gate is a
           -- one-time filter). The LIMIT keeps the planner from flattening this into a join,
           -- which a generic plan cached while the inbox was small turned into a hash join
           -- over a scan of the whole table for every batch. (A plan made on a near-empty
           -- table may still scan it here, for duplicates only, until autovacuum's next
           -- ANALYZE replans it.) The snapshot predates this statement's own inserts.
           LEFT JOIN LATERAL (
               SELECT w.id FROM webhook_events w
               WHERE own.id IS NULL AND sibling.id IS NULL
                 AND w.account = i.account AND w.provider_event_id = i.provider_event_id
               LIMIT 1) earlier
               ON true
           ORDER BY i.n"#,
        &tenant,
        &id,
        &account as _,
        &provider as _,
        &provider_event_id as _,
        &event_type as _,
        &payload as _,
        &received_at,
        &traceparent as _,
    )
    .fetch_all(conn)
    .instrument(super::statement_span!("INSERT", "webhook_events"))
    .await?;
    Ok(stored
        .into_iter()
        .map(|r| {
            r.id.map(|id| Stored {
                id,
                inserted: r.inserted,
            })
        })
        .collect())
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
    payload_purged_at: Option<OffsetDateTime>,
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
            payload_purged_at: self.payload_purged_at,
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
                next_attempt_at, last_error, received_at, processed_at, payload_purged_at
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
                next_attempt_at, last_error, received_at, processed_at, payload_purged_at
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
                   next_attempt_at, last_error, received_at, processed_at, payload_purged_at",
        tenant.as_uuid(),
        id.as_uuid(),
        now,
    )
    .fetch_one(conn)
    .instrument(super::statement_span!("UPDATE", "webhook_events"))
    .await?;
    row.into_domain()
}

/// Removes the payloads of settled events (processed, ignored, dead) received before `cutoff`,
/// the oldest first, up to `limit` of them in one statement; returns how many. Pending and
/// failed events keep theirs whatever their age: they still have to be applied. Rows another
/// transaction holds are skipped, and purged by a later sweep.
pub async fn purge_event_payloads(
    conn: &mut PgConnection,
    cutoff: OffsetDateTime,
    limit: i64,
) -> Result<u64, StoreError> {
    // The subquery reads the partial index `webhook_events_to_purge`; the update finds its
    // rows by address (a TID scan), whatever the plan.
    let done = sqlx::query!(
        "UPDATE webhook_events
         SET payload = ''::bytea, payload_purged_at = clock_timestamp()
         WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM webhook_events
             WHERE payload_purged_at IS NULL AND status IN ('processed', 'ignored', 'dead')
               AND received_at < $1
             ORDER BY received_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED))",
        cutoff,
        limit,
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "webhook_events"))
    .await?;
    Ok(done.rows_affected())
}
