//! The operations journal (`provider_operations`) and the map of provider objects
//! (`provider_objects`).

use sqlx::PgConnection;
use uuid::Uuid;

use super::StoreError;
use crate::domain::ids::TenantId;

/// A journal row.
#[derive(Debug, Clone)]
pub struct OperationRow {
    pub tenant_id: Uuid,
    pub id: Uuid,
    pub account: String,
    pub kind: String,
    pub coffer_id: Uuid,
    pub generation: i32,
    pub status: String,
    pub provider_id: Option<String>,
}

/// What beginning an operation found.
pub enum Begun {
    /// Written as pending (new, or a new generation after a definitive failure), committed by
    /// the caller: call the provider now.
    Call(OperationRow),
    /// The operation already exists and did not fail: pending or unknown (settle it by
    /// fetching) or succeeded.
    Existing(OperationRow),
}

/// Writes the intended operation: a new row, or the next generation of one that failed.
#[allow(clippy::too_many_arguments)]
pub async fn begin_operation(
    conn: &mut PgConnection,
    tenant: TenantId,
    account: &str,
    kind: &str,
    coffer_id: Uuid,
    idempotency: Option<(&str, &str)>,
) -> Result<Begun, StoreError> {
    let (method, key) = idempotency.unzip();
    let written = sqlx::query_as!(
        OperationRow,
        "INSERT INTO provider_operations AS o
             (tenant_id, id, account, kind, coffer_id, generation, status,
              idempotency_method, idempotency_key, next_resolve_at, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 1, 'pending', $6, $7, now() + interval '1 minute', now(), now())
         ON CONFLICT (tenant_id, account, kind, coffer_id) DO UPDATE
             SET generation = o.generation + 1, status = 'pending', failure = NULL,
                 next_resolve_at = now() + interval '1 minute', updated_at = now()
             WHERE o.status = 'failed'
         RETURNING tenant_id, id, account, kind, coffer_id, generation, status, provider_id",
        tenant.as_uuid(),
        Uuid::now_v7(),
        account,
        kind,
        coffer_id,
        method,
        key,
    )
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = written {
        return Ok(Begun::Call(row));
    }
    let existing = sqlx::query_as!(
        OperationRow,
        "SELECT tenant_id, id, account, kind, coffer_id, generation, status, provider_id
         FROM provider_operations
         WHERE tenant_id = $1 AND account = $2 AND kind = $3 AND coffer_id = $4",
        tenant.as_uuid(),
        account,
        kind,
        coffer_id,
    )
    .fetch_one(conn)
    .await?;
    Ok(Begun::Existing(existing))
}

/// The operation a call under this idempotency key started, if any.
pub async fn find_by_idempotency_key(
    conn: &mut PgConnection,
    tenant: TenantId,
    method: &str,
    key: &str,
) -> Result<Option<OperationRow>, StoreError> {
    Ok(sqlx::query_as!(
        OperationRow,
        "SELECT tenant_id, id, account, kind, coffer_id, generation, status, provider_id
         FROM provider_operations
         WHERE tenant_id = $1 AND idempotency_method = $2 AND idempotency_key = $3",
        tenant.as_uuid(),
        method,
        key,
    )
    .fetch_optional(conn)
    .await?)
}

/// Records an operation's outcome: `succeeded` (with the provider's id), `failed` or
/// `unknown` (due for the resolver at once). Only a generation still current is recorded.
pub async fn record_outcome(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: Uuid,
    generation: i32,
    status: &str,
    provider_id: Option<&str>,
    failure: Option<&str>,
) -> Result<bool, StoreError> {
    let done = sqlx::query!(
        "UPDATE provider_operations
         SET status = $4, provider_id = COALESCE($5, provider_id), failure = $6,
             next_resolve_at = CASE WHEN $4 IN ('unknown', 'pending') THEN now() END,
             updated_at = now()
         WHERE tenant_id = $1 AND id = $2 AND generation = $3",
        tenant.as_uuid(),
        id,
        generation,
        status,
        provider_id,
        failure,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Claims up to `limit` operations whose outcome is unknown (or still pending past their
/// deadline: the caller crashed between commit and record), for one resolver: they are pushed
/// back by a backoff so other replicas skip them. Runs in its own statement.
pub async fn claim_unresolved(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<OperationRow>, StoreError> {
    Ok(sqlx::query_as!(
        OperationRow,
        "UPDATE provider_operations o
         SET resolve_attempts = o.resolve_attempts + 1,
             next_resolve_at = now() + least(interval '1 second' * power(2, o.resolve_attempts), interval '1 hour'),
             status = 'unknown', updated_at = now()
         FROM (SELECT tenant_id, id FROM provider_operations
               WHERE status IN ('unknown', 'pending') AND next_resolve_at <= now()
                 AND kind <> 'push_usage'
               ORDER BY next_resolve_at
               LIMIT $1
               FOR UPDATE SKIP LOCKED) due
         WHERE o.tenant_id = due.tenant_id AND o.id = due.id
         RETURNING o.tenant_id, o.id, o.account, o.kind, o.coffer_id, o.generation, o.status,
                   o.provider_id",
        limit,
    )
    .fetch_all(conn)
    .await?)
}

/// Remembers which provider object is Coffer's `coffer_id` on `account`; a second write of the
/// same mapping changes nothing.
pub async fn insert_provider_object(
    conn: &mut PgConnection,
    tenant: TenantId,
    account: &str,
    kind: &str,
    coffer_id: Uuid,
    provider_id: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO provider_objects (tenant_id, account, kind, coffer_id, provider_id, created_at)
         VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT DO NOTHING",
        tenant.as_uuid(),
        account,
        kind,
        coffer_id,
        provider_id,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Which of Coffer's objects of `kind` the provider's `provider_id` on `account` is, if
/// Coffer made or mirrored it (the reverse of [`find_provider_object`]).
pub async fn find_coffer_object(
    conn: &mut PgConnection,
    tenant: TenantId,
    account: &str,
    kind: &str,
    provider_id: &str,
) -> Result<Option<Uuid>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT coffer_id FROM provider_objects
         WHERE account = $2 AND provider_id = $4 AND tenant_id = $1 AND kind = $3",
        tenant.as_uuid(),
        account,
        kind,
        provider_id,
    )
    .fetch_optional(conn)
    .await?)
}

pub async fn find_provider_object(
    conn: &mut PgConnection,
    tenant: TenantId,
    account: &str,
    kind: &str,
    coffer_id: Uuid,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT provider_id FROM provider_objects
         WHERE tenant_id = $1 AND account = $2 AND kind = $3 AND coffer_id = $4",
        tenant.as_uuid(),
        account,
        kind,
        coffer_id,
    )
    .fetch_optional(conn)
    .await?)
}
