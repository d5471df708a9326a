//! The inbox workers' side of `webhook_events`: claiming due events, settling them, and the
//! cheap summary behind the depth gauges. Ingestion and the operators' RPCs are in
//! [`super::events`].

use std::time::Duration;

use sqlx::PgConnection;
use time::OffsetDateTime;
use tracing::Instrument;

use super::{StoreError, corrupt};
use crate::domain::account::{AccountName, ProviderKind};
use crate::domain::event::EventStatus;
use crate::domain::ids::{EventId, TenantId};

/// An event a worker holds: its row is locked (`FOR UPDATE`) until the claiming transaction
/// ends.
#[derive(Debug, Clone)]
pub struct ClaimedEvent {
    /// Where its row is, for [`settle_events`]: stable while the claim's lock is held.
    pub row: RowAddress,
    pub tenant: TenantId,
    pub id: EventId,
    pub account: AccountName,
    pub provider: ProviderKind,
    pub provider_event_id: String,
    pub event_type: String,
    /// Failed attempts so far.
    pub attempts: i32,
    /// The raw body, as signed.
    pub payload: Vec<u8>,
    pub received_at: OffsetDateTime,
    /// The W3C traceparent of the span that stored it, when that process traced.
    pub traceparent: Option<String>,
}

/// The physical address (`ctid`) of a row this transaction holds locked. Nobody else can update
/// or delete a locked row, so the address stays good until the transaction ends, and a batch
/// of them is found by a TID scan, whatever plan the planner would pick for a join by key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowAddress(String);

/// Locks up to `limit` due events, skipping those another worker holds: failed events due for
/// another attempt first, then pending ones, then leased ones whose lease ran out (their
/// worker died between fetching and applying), each oldest due first. That is the order of the
/// claim index (`webhook_events_claim`, on status and next_attempt_at; `failed` sorts before
/// `pending`), so the scan reads the index in order and stops after `limit` rows, however
/// long the backlog: ordering by next_attempt_at alone would sort every due row (150 ms
/// instead of 0.2 ms with 120 000 due). Retries cannot starve new events for long: each gets
/// ten attempts, ever further apart.
pub async fn claim_events(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<ClaimedEvent>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT ctid::text AS "ctid!", tenant_id, id, account, provider, provider_event_id,
                  event_type, attempts, payload, received_at, traceparent
         FROM webhook_events
         WHERE status IN ('pending', 'failed', 'processing') AND next_attempt_at <= now()
         ORDER BY status, next_attempt_at
         LIMIT $1
         FOR UPDATE SKIP LOCKED"#,
        limit,
    )
    .fetch_all(conn)
    .instrument(super::statement_span!("SELECT", "webhook_events"))
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(ClaimedEvent {
                row: RowAddress(r.ctid),
                tenant: TenantId::from_uuid(r.tenant_id),
                id: EventId::from_uuid(r.id),
                account: AccountName::parse(&r.account).map_err(|e| corrupt("event account", e))?,
                provider: ProviderKind::parse(&r.provider)
                    .map_err(|e| corrupt("event provider", e))?,
                provider_event_id: r.provider_event_id,
                event_type: r.event_type,
                attempts: r.attempts,
                payload: r.payload,
                received_at: r.received_at,
                traceparent: r.traceparent,
            })
        })
        .collect()
}

/// Settles claimed events as `status` (`processed` or `ignored`): one statement for the batch.
pub async fn settle_events(
    conn: &mut PgConnection,
    rows: &[&RowAddress],
    status: EventStatus,
) -> Result<(), StoreError> {
    debug_assert!(matches!(
        status,
        EventStatus::Processed | EventStatus::Ignored
    ));
    if rows.is_empty() {
        return Ok(());
    }
    let rows: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    sqlx::query!(
        "UPDATE webhook_events
         SET status = $2, processed_at = clock_timestamp(), last_error = NULL
         WHERE ctid = ANY($1::text[]::tid[])",
        &rows as _,
        status.as_str(),
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "webhook_events"))
    .await?;
    Ok(())
}

/// Leases claimed events whose object is to be fetched from the provider before they are
/// applied: `processing`, and kept from other workers until `lease_end`, which is also the
/// lease's token (see [`settle_leased`]). The lease commits with the claim, so no transaction
/// is open while the provider is called; a worker that dies mid-fetch leaves its events due
/// again when the lease runs out. One statement for the batch.
pub async fn lease_events(
    conn: &mut PgConnection,
    rows: &[&RowAddress],
    lease_end: OffsetDateTime,
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let rows: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    sqlx::query!(
        "UPDATE webhook_events SET status = 'processing', next_attempt_at = $2
         WHERE ctid = ANY($1::text[]::tid[])",
        &rows as _,
        lease_end,
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "webhook_events"))
    .await?;
    Ok(())
}

/// Settles a leased event as `processed` if the lease is still the caller's (the row is
/// `processing` until `lease_end`); `false` if it ran out and another worker has the event.
pub async fn settle_leased(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: EventId,
    lease_end: OffsetDateTime,
) -> Result<bool, StoreError> {
    let done = sqlx::query!(
        "UPDATE webhook_events
         SET status = 'processed', processed_at = clock_timestamp(), last_error = NULL
         WHERE tenant_id = $1 AND id = $2 AND status = 'processing' AND next_attempt_at = $3",
        tenant.as_uuid(),
        id.as_uuid(),
        lease_end,
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "webhook_events"))
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records a failed attempt: `failed` and due again after `retry_in`, or `dead`. For a leased
/// event (`lease_end`), only while the lease is still the caller's.
#[allow(clippy::too_many_arguments)]
pub async fn fail_event(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: EventId,
    status: EventStatus,
    attempts: i32,
    error: &str,
    retry_in: Duration,
    lease_end: Option<OffsetDateTime>,
) -> Result<(), StoreError> {
    debug_assert!(matches!(status, EventStatus::Failed | EventStatus::Dead));
    sqlx::query!(
        "UPDATE webhook_events
         SET status = $3, attempts = $4, last_error = $5,
             next_attempt_at = clock_timestamp() + make_interval(secs => $6)
         WHERE tenant_id = $1 AND id = $2
           AND ($7::timestamptz IS NULL OR (status = 'processing' AND next_attempt_at = $7))",
        tenant.as_uuid(),
        id.as_uuid(),
        status.as_str(),
        attempts,
        error,
        retry_in.as_secs_f64(),
        lease_end,
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "webhook_events"))
    .await?;
    Ok(())
}

/// How many events of a status there are, and how long ago the oldest was received.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusDepth {
    pub status: EventStatus,
    pub count: i64,
    pub oldest_age: Duration,
}

/// The depth of the statuses that stay small in a healthy inbox (pending, processing, failed,
/// dead), found through the claim index. Processed and ignored events accumulate for ever, so
/// counting them on every poll would grow with the table's history; they are left out. The
/// cost grows with the backlog instead (about 90 ms with 120 000 events waiting).
pub async fn inbox_depth(conn: &mut PgConnection) -> Result<Vec<StatusDepth>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT status AS "status!", count(*) AS "count!",
                  EXTRACT(EPOCH FROM now() - min(received_at))::float8 AS "oldest_secs!"
           FROM webhook_events
           WHERE status IN ('pending', 'processing', 'failed', 'dead')
           GROUP BY status"#,
    )
    .fetch_all(conn)
    .instrument(super::statement_span!("SELECT", "webhook_events"))
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(StatusDepth {
                status: EventStatus::parse(&r.status)
                    .ok_or_else(|| corrupt("event status", &r.status))?,
                count: r.count,
                oldest_age: Duration::from_secs_f64(r.oldest_secs.max(0.0)),
            })
        })
        .collect()
}

/// Waits for, and holds until the transaction ends, the advisory locks of provider objects
/// (their keys from `app::inbox`), in the order given: callers pass them sorted, so two
/// batches never wait on each other in a cycle. One statement for the batch; the function
/// scan returns the keys in array order.
pub async fn lock_objects(conn: &mut PgConnection, keys: &[i64]) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(k) FROM UNNEST($1::int8[]) AS k",
        keys,
    )
    .execute(conn)
    .instrument(super::statement_span!("SELECT", "pg_advisory_xact_lock"))
    .await?;
    Ok(())
}
