//! The idempotency_keys table: claims with leases, and stored outcomes.

use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;
use crate::domain::idempotency::IdempotencyKey;
use crate::domain::ids::TenantId;

/// How long a stored outcome is kept.
pub const RETENTION_SECS: i64 = 24 * 3600;

/// A completed outcome written by the same statement as the change it records.
pub struct NewOutcome {
    pub method: &'static str,
    pub key: IdempotencyKey,
    pub fingerprint: [u8; 32],
    pub response: Vec<u8>,
}

/// The state of a key someone else holds.
pub struct StoredKey {
    pub fingerprint: Vec<u8>,
    pub completed: bool,
    pub response: Option<Vec<u8>>,
    pub error_kind: Option<String>,
    pub error_reason: Option<String>,
    pub error_message: Option<String>,
}

/// Claims `key` for one attempt, identified by `lease`. Succeeds when the key is new, when a
/// previous claim's lease ran out (its holder crashed or hung), or when the stored outcome is
/// older than the retention period. Commits on its own, before the work starts, so that a
/// concurrent duplicate sees the claim at once instead of waiting on a row lock.
pub async fn claim_key(
    conn: &mut PgConnection,
    tenant: TenantId,
    method: &str,
    key: &IdempotencyKey,
    fingerprint: &[u8; 32],
    lease: Uuid,
    lease_secs: i64,
) -> Result<bool, StoreError> {
    let claimed = sqlx::query_scalar!(
        r#"INSERT INTO idempotency_keys
               (tenant_id, method, key, fingerprint, state, lease_id, locked_until)
           VALUES ($1, $2, $3, $4, 'in_flight', $5, now() + make_interval(secs => $6))
           ON CONFLICT (tenant_id, method, key) DO UPDATE
           SET fingerprint = EXCLUDED.fingerprint, state = 'in_flight',
               lease_id = EXCLUDED.lease_id, locked_until = EXCLUDED.locked_until,
               response = NULL, error_kind = NULL, error_reason = NULL, error_message = NULL,
               created_at = now()
           WHERE (idempotency_keys.state = 'in_flight' AND idempotency_keys.locked_until < now())
              OR idempotency_keys.created_at < now() - make_interval(secs => $7)
           RETURNING lease_id"#,
        tenant.as_uuid(),
        method,
        key.as_str(),
        &fingerprint[..],
        lease,
        lease_secs as f64,
        RETENTION_SECS as f64,
    )
    .fetch_optional(conn)
    .await?;
    Ok(claimed == Some(lease))
}

pub async fn find_key(
    conn: &mut PgConnection,
    tenant: TenantId,
    method: &str,
    key: &IdempotencyKey,
) -> Result<Option<StoredKey>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT fingerprint, state = 'completed' AS "completed!", response,
                  error_kind, error_reason, error_message
           FROM idempotency_keys WHERE tenant_id = $1 AND method = $2 AND key = $3"#,
        tenant.as_uuid(),
        method,
        key.as_str(),
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| StoredKey {
        fingerprint: r.fingerprint,
        completed: r.completed,
        response: r.response,
        error_kind: r.error_kind,
        error_reason: r.error_reason,
        error_message: r.error_message,
    }))
}

/// The outcome to store: a response, or a caller's error.
pub enum Outcome<'a> {
    Response(&'a [u8]),
    Error {
        kind: &'a str,
        reason: &'a str,
        message: &'a str,
    },
}

/// Stores the outcome of the attempt holding `lease`; `false` when that lease was lost (it ran
/// out and another attempt took the key), in which case the caller must roll back.
pub async fn complete_key(
    conn: &mut PgConnection,
    tenant: TenantId,
    method: &str,
    key: &IdempotencyKey,
    lease: Uuid,
    outcome: Outcome<'_>,
) -> Result<bool, StoreError> {
    let (response, kind, reason, message) = match outcome {
        Outcome::Response(r) => (Some(r), None, None, None),
        Outcome::Error {
            kind,
            reason,
            message,
        } => (None, Some(kind), Some(reason), Some(message)),
    };
    let done = sqlx::query!(
        "UPDATE idempotency_keys
         SET state = 'completed', response = $5, error_kind = $6, error_reason = $7,
             error_message = $8
         WHERE tenant_id = $1 AND method = $2 AND key = $3 AND lease_id = $4
           AND state = 'in_flight'",
        tenant.as_uuid(),
        method,
        key.as_str(),
        lease,
        response,
        kind,
        reason,
        message,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives up a claim whose attempt ended without a storable outcome, so a retry can run.
pub async fn release_key(
    conn: &mut PgConnection,
    tenant: TenantId,
    method: &str,
    key: &IdempotencyKey,
    lease: Uuid,
) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM idempotency_keys
         WHERE tenant_id = $1 AND method = $2 AND key = $3 AND lease_id = $4
           AND state = 'in_flight'",
        tenant.as_uuid(),
        method,
        key.as_str(),
        lease,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes up to `batch` keys past retention whose lease is not live; returns how many.
pub async fn delete_expired_keys(conn: &mut PgConnection, batch: i64) -> Result<u64, StoreError> {
    let done = sqlx::query!(
        "DELETE FROM idempotency_keys WHERE ctid IN (
             SELECT ctid FROM idempotency_keys
             WHERE created_at < now() - make_interval(secs => $1)
               AND NOT (state = 'in_flight' AND locked_until > now())
             LIMIT $2)",
        RETENTION_SECS as f64,
        batch,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}
