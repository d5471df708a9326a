//! The idempotency_keys table: claims with leases, and stored outcomes.
//!
//! A row is either `in_flight` (a claim: the attempt holding `lease_id` runs until
//! `locked_until`) or `completed` (it holds the outcome: the encoded response, or the encoded
//! `google.rpc.Status` of the caller's refusal). Every statement here succeeds for the
//! expected outcomes — a key already held, already completed or taken over — and says which by
//! what it returns, so none of them logs an error in the database with the key in it.

use sqlx::PgConnection;
use tracing::Instrument;
use uuid::Uuid;

use super::StoreError;
use crate::domain::idempotency::IdempotencyKey;
use crate::domain::ids::TenantId;

/// How long a stored outcome is kept.
pub const RETENTION_SECS: i64 = 24 * 3600;

/// Which key: (tenant, full method name, key).
#[derive(Debug, Clone, Copy)]
pub struct KeyRef<'a> {
    pub tenant: TenantId,
    pub method: &'a str,
    pub key: &'a IdempotencyKey,
}

/// What a one-statement mutation needs to complete its key in the same statement: the key,
/// the lease that must still hold it (locked for the statement), and both possible outcomes,
/// encoded.
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    pub key: KeyRef<'a>,
    pub lease: Uuid,
    pub response: &'a [u8],
    pub refusal: &'a [u8],
}

/// What a one-statement mutation did: whether it applied the change (else it found the
/// conflict and wrote the refusal), and whether it completed the key (false with a
/// completion: the lease was lost, and then it applied nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub applied: bool,
    pub completed: bool,
}

/// The state of a key another attempt claimed or completed.
#[derive(Debug)]
pub struct StoredKey {
    pub fingerprint: Vec<u8>,
    pub state: StoredState,
}

#[derive(Debug)]
pub enum StoredState {
    InFlight,
    /// The encoded response of a call that succeeded.
    Response(Vec<u8>),
    /// The encoded `google.rpc.Status` of a call that was refused.
    Status(Vec<u8>),
}

/// Claims `key` for the attempt identified by `lease`, for `lease_secs`. Succeeds (`None`)
/// when the key is new, when a previous claim's lease ran out (its holder crashed or hung), or
/// when the stored outcome is past retention. Otherwise returns what holds the key. Runs on
/// its own, outside the work's transaction, so that a concurrent duplicate sees the claim at
/// once instead of waiting on a row lock.
pub async fn claim_key(
    conn: &mut PgConnection,
    key: KeyRef<'_>,
    fingerprint: &[u8; 32],
    lease: Uuid,
    lease_secs: f64,
) -> Result<Option<StoredKey>, StoreError> {
    let row = sqlx::query!(
        r#"WITH claim AS (
               INSERT INTO idempotency_keys
                   (tenant_id, method, key, fingerprint, state, lease_id, locked_until)
               VALUES ($1, $2, $3, $4, 'in_flight', $5, now() + make_interval(secs => $6))
               ON CONFLICT (tenant_id, method, key) DO UPDATE
               SET fingerprint = EXCLUDED.fingerprint, state = 'in_flight',
                   lease_id = EXCLUDED.lease_id, locked_until = EXCLUDED.locked_until,
                   response = NULL, status = NULL, created_at = now()
               WHERE (idempotency_keys.state = 'in_flight'
                      AND idempotency_keys.locked_until < now())
                  OR idempotency_keys.created_at < now() - make_interval(secs => $7)
               RETURNING lease_id)
           SELECT EXISTS (SELECT 1 FROM claim) AS "claimed!""#,
        key.tenant.as_uuid(),
        key.method,
        key.key.as_str(),
        &fingerprint[..],
        lease,
        lease_secs,
        RETENTION_SECS as f64,
    )
    .fetch_one(&mut *conn)
    .instrument(super::statement_span!("INSERT", "idempotency_keys"))
    .await?;
    if row.claimed {
        return Ok(None);
    }
    // Someone else holds the key. Read what they hold; the row may be gone again (its holder
    // released it a moment ago), which reads as in flight: asking again is right either way.
    Ok(Some(find_key(conn, key).await?.unwrap_or(StoredKey {
        fingerprint: fingerprint.to_vec(),
        state: StoredState::InFlight,
    })))
}

/// The key as stored, if it exists.
pub async fn find_key(
    conn: &mut PgConnection,
    key: KeyRef<'_>,
) -> Result<Option<StoredKey>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT fingerprint, state = 'completed' AS "completed!", response, status
           FROM idempotency_keys WHERE tenant_id = $1 AND method = $2 AND key = $3"#,
        key.tenant.as_uuid(),
        key.method,
        key.key.as_str(),
    )
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let state = match (r.completed, r.response, r.status) {
        (false, _, _) => StoredState::InFlight,
        (true, Some(response), _) => StoredState::Response(response),
        (true, None, Some(status)) => StoredState::Status(status),
        (true, None, None) => {
            return Err(super::corrupt(
                "idempotency outcome",
                "completed with neither response nor status",
            ));
        }
    };
    Ok(Some(StoredKey {
        fingerprint: r.fingerprint,
        state,
    }))
}

/// The outcome to store.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The encoded response.
    Response(&'a [u8]),
    /// The encoded `google.rpc.Status` of a refusal.
    Status(&'a [u8]),
}

/// Stores the outcome of the attempt holding `lease`; `false` when that lease was lost (it ran
/// out and another attempt took the key), in which case the caller must roll back. Inside the
/// work's transaction the update locks the row, so a takeover waits for the commit and then
/// finds the key completed.
pub async fn complete_key(
    conn: &mut PgConnection,
    key: KeyRef<'_>,
    lease: Uuid,
    outcome: Outcome<'_>,
) -> Result<bool, StoreError> {
    let (response, status) = match outcome {
        Outcome::Response(r) => (Some(r), None),
        Outcome::Status(s) => (None, Some(s)),
    };
    let done = sqlx::query!(
        "UPDATE idempotency_keys
         SET state = 'completed', response = $5, status = $6
         WHERE tenant_id = $1 AND method = $2 AND key = $3 AND lease_id = $4
           AND state = 'in_flight'",
        key.tenant.as_uuid(),
        key.method,
        key.key.as_str(),
        lease,
        response,
        status,
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "idempotency_keys"))
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives up a claim whose attempt ended without a storable outcome, so a retry can run.
pub async fn release_key(
    conn: &mut PgConnection,
    key: KeyRef<'_>,
    lease: Uuid,
) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM idempotency_keys
         WHERE tenant_id = $1 AND method = $2 AND key = $3 AND lease_id = $4
           AND state = 'in_flight'",
        key.tenant.as_uuid(),
        key.method,
        key.key.as_str(),
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
