//! The idempotency_keys table: claims with leases, and stored outcomes.
//!
//! A row is either `in_flight` (a claim: the attempt holding `lease_id` runs until
//! `locked_until`) or `completed` (it holds the outcome: the encoded response, or the encoded
//! `google.rpc.Status` of the caller's refusal). A completed response may lapse: stored with
//! `expires_at` and the refusal that answers after it, it is replayed until then and scrubbed
//! by [`scrub_lapsed_outcomes`] after (decision 0033). Every statement here succeeds for the
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
    /// The full gRPC method name.
    pub method: &'static str,
    pub key: &'a IdempotencyKey,
}

/// What a one-statement mutation needs to complete its key in its own statement: the key, the
/// lease that must still hold it (locked for the statement), and both possible outcomes,
/// encoded.
#[derive(Debug, Clone)]
pub struct Completion {
    pub method: &'static str,
    pub key: IdempotencyKey,
    pub lease: Uuid,
    pub response: Vec<u8>,
    pub refusal: Vec<u8>,
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

/// One claim in a batch: the key, the request's fingerprint, and the lease to take.
#[derive(Debug, Clone)]
pub struct ClaimRow {
    pub tenant: TenantId,
    pub method: &'static str,
    pub key: IdempotencyKey,
    pub fingerprint: [u8; 32],
    pub lease: Uuid,
    pub lease_secs: f64,
}

/// The order claims lock their keys in.
pub fn order_claims(a: &ClaimRow, b: &ClaimRow) -> std::cmp::Ordering {
    (a.tenant.as_uuid(), a.method, a.key.as_str()).cmp(&(
        b.tenant.as_uuid(),
        b.method,
        b.key.as_str(),
    ))
}

/// The claims of a batch as the arrays a statement unnests, each with its row's two possible
/// outcomes. Of several claims of one key only the first is kept: `ON CONFLICT DO UPDATE`
/// cannot touch one row twice in a statement.
pub struct ClaimArrays<'a> {
    pub tenant: Vec<Uuid>,
    pub method: Vec<&'static str>,
    pub key: Vec<&'a str>,
    pub fingerprint: Vec<&'a [u8]>,
    pub lease: Vec<Uuid>,
    pub response: Vec<&'a [u8]>,
    pub refusal: Vec<&'a [u8]>,
}

impl<'a> ClaimArrays<'a> {
    /// `completions`: each row's completion (`None` for a row without a key).
    pub fn of(
        completions: impl Iterator<Item = Option<&'a Completion>> + Clone,
        claims: &'a [ClaimRow],
    ) -> Result<Self, StoreError> {
        let m = claims.len();
        let mut k = ClaimArrays {
            tenant: Vec::with_capacity(m),
            method: Vec::with_capacity(m),
            key: Vec::with_capacity(m),
            fingerprint: Vec::with_capacity(m),
            lease: Vec::with_capacity(m),
            response: Vec::with_capacity(m),
            refusal: Vec::with_capacity(m),
        };
        for (i, claim) in claims.iter().enumerate() {
            if i > 0 && order_claims(&claims[i - 1], claim).is_eq() {
                continue;
            }
            let Some(completion) = completions
                .clone()
                .flatten()
                .find(|c| c.lease == claim.lease)
            else {
                return Err(super::corrupt("batch claim", "a claim without its row"));
            };
            k.tenant.push(claim.tenant.as_uuid());
            k.method.push(claim.method);
            k.key.push(claim.key.as_str());
            k.fingerprint.push(&claim.fingerprint[..]);
            k.lease.push(claim.lease);
            k.response.push(&completion.response[..]);
            k.refusal.push(&completion.refusal[..]);
        }
        Ok(k)
    }
}

/// Swaps the response a key was claimed with for the refusal, in the claiming transaction: for
/// a one-statement create whose conflict the statement found without failing (see
/// `super::customers::claim_and_insert_customers`).
pub async fn refuse_key(
    conn: &mut PgConnection,
    tenant: TenantId,
    k: &Completion,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE idempotency_keys SET response = NULL, status = $5
         WHERE tenant_id = $1 AND method = $2 AND key = $3 AND lease_id = $4",
        tenant.as_uuid(),
        k.method,
        k.key.as_str(),
        k.lease,
        &k.refusal[..],
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "idempotency_keys"))
    .await?;
    Ok(())
}

/// Claims each row's key for the attempt identified by its lease, in one statement; `true`
/// for a row whose claim succeeded: the key was new, its previous claim's lease ran out (its
/// holder crashed or hung), or its stored outcome is past retention. Commits on its own,
/// before the work starts, so that a concurrent duplicate sees the claim at once instead of
/// waiting on a row lock. Rows must come in [`order_claims`] order; of several rows with one
/// key, only the first can succeed.
pub async fn claim_keys(
    conn: &mut PgConnection,
    rows: &[ClaimRow],
) -> Result<Vec<bool>, StoreError> {
    let n = rows.len();
    let (mut tenant, mut method, mut key, mut fingerprint, mut lease, mut secs) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (i, row) in rows.iter().enumerate() {
        // ON CONFLICT DO UPDATE cannot touch one row twice in a statement.
        if i > 0 && order_claims(&rows[i - 1], row).is_eq() {
            continue;
        }
        tenant.push(row.tenant.as_uuid());
        method.push(row.method);
        key.push(row.key.as_str());
        fingerprint.push(&row.fingerprint[..]);
        lease.push(row.lease);
        secs.push(row.lease_secs);
    }
    let claimed: Vec<Uuid> = sqlx::query_scalar!(
        r#"INSERT INTO idempotency_keys
               (tenant_id, method, key, fingerprint, state, lease_id, locked_until)
           SELECT tenant_id, method, key, fingerprint, 'in_flight', lease_id,
                  now() + make_interval(secs => lease_secs)
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::uuid[],
                       $6::float8[])
               AS t(tenant_id, method, key, fingerprint, lease_id, lease_secs)
           ON CONFLICT (tenant_id, method, key) DO UPDATE
           SET fingerprint = EXCLUDED.fingerprint, state = 'in_flight',
               lease_id = EXCLUDED.lease_id, locked_until = EXCLUDED.locked_until,
               response = NULL, status = NULL, expires_at = NULL, created_at = now()
           WHERE idempotency_key_open(idempotency_keys.state, idempotency_keys.locked_until,
                                      idempotency_keys.created_at, $7)
           RETURNING lease_id"#,
        &tenant,
        &method as _,
        &key as _,
        &fingerprint as _,
        &lease,
        &secs,
        RETENTION_SECS as f64,
    )
    .fetch_all(&mut *conn)
    .instrument(super::statement_span!("INSERT", "idempotency_keys"))
    .await?;
    Ok(rows.iter().map(|r| claimed.contains(&r.lease)).collect())
}

/// What holds a key a claim did not get. The row may be gone again (its holder released it a
/// moment ago), which reads as in flight: asking again is right either way.
pub async fn held(
    conn: &mut PgConnection,
    key: KeyRef<'_>,
    fingerprint: &[u8; 32],
) -> Result<StoredKey, StoreError> {
    Ok(find_key(conn, key).await?.unwrap_or(StoredKey {
        fingerprint: fingerprint.to_vec(),
        state: StoredState::InFlight,
    }))
}

/// The key as stored, if it exists. A response past its `expires_at` reads as the refusal
/// stored beside it, whether or not the sweeper has scrubbed it yet.
pub async fn find_key(
    conn: &mut PgConnection,
    key: KeyRef<'_>,
) -> Result<Option<StoredKey>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT fingerprint, state = 'completed' AS "completed!",
                  CASE WHEN expires_at <= now() THEN NULL ELSE response END AS response,
                  status
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
    /// The encoded response, and, for one that lapses, how long it is replayed (from the
    /// commit that stores it, on the database's clock) and the encoded refusal replayed after.
    Response(&'a [u8], Option<Lapse<'a>>),
    /// The encoded `google.rpc.Status` of a refusal.
    Status(&'a [u8]),
}

/// When a stored response stops being answered, and what is answered instead.
#[derive(Debug, Clone, Copy)]
pub struct Lapse<'a> {
    pub after_secs: f64,
    /// The encoded `google.rpc.Status` answered once it has lapsed.
    pub refusal: &'a [u8],
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
    let (response, status, lapse_secs) = match outcome {
        Outcome::Response(r, None) => (Some(r), None, None),
        Outcome::Response(r, Some(lapse)) => (Some(r), Some(lapse.refusal), Some(lapse.after_secs)),
        Outcome::Status(s) => (None, Some(s), None),
    };
    let done = sqlx::query!(
        "UPDATE idempotency_keys
         SET state = 'completed', response = $5, status = $6,
             expires_at = now() + make_interval(secs => $7)
         WHERE tenant_id = $1 AND method = $2 AND key = $3 AND lease_id = $4
           AND state = 'in_flight'",
        key.tenant.as_uuid(),
        key.method,
        key.key.as_str(),
        lease,
        response,
        status,
        lapse_secs,
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

/// Scrubs every stored response past its `expires_at`, in one statement: the response goes,
/// the refusal stored beside it stays (an ordinary stored refusal from then on, kept until
/// the key's retention ends); returns how many. Set-based, not batched: only answers that
/// lapse (portal links) carry an expiry, a few per hour, found through their partial index.
pub async fn scrub_lapsed_outcomes(conn: &mut PgConnection) -> Result<u64, StoreError> {
    let done = sqlx::query!(
        "UPDATE idempotency_keys SET response = NULL, expires_at = NULL
         WHERE expires_at IS NOT NULL AND expires_at <= now()",
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "idempotency_keys"))
    .await?;
    Ok(done.rows_affected())
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
