//! Idempotency for every mutating RPC, built once, as explicit steps.
//!
//! 1. **Claim**: [`Mutations::claim`] inserts an `in_flight` row for (tenant, method, key)
//!    holding the request's fingerprint and a lease, and commits it at once, on its own. A
//!    concurrent duplicate therefore sees the claim immediately and is answered ABORTED
//!    (`IDEMPOTENCY_KEY_IN_USE`), never left waiting on a row lock; a key already completed
//!    is answered from storage. One rule, whatever the mutation.
//! 2. **Complete**: [`Lease::complete`] stores the outcome in the transaction of the change
//!    it records, guarded by the lease, so the change and its record commit together or not at
//!    all, and an attempt whose lease was taken over rolls back instead of applying twice.
//! 3. **Release**: [`Lease::release`] frees the key when the attempt ended without a
//!    deterministic outcome (INTERNAL, UNAVAILABLE, ABORTED, a timeout), so the caller can
//!    retry under the same key.
//!
//! Between claim and complete the attempt may do anything, including calling a payment
//! provider outside any transaction and recording the result afterwards; [`Mutations::run`]
//! is the driver for the common case of database-only work in one transaction.
//!
//! Only deterministic outcomes are stored: the encoded response, and the caller's own
//! refusals as the transport encoded them (a full `google.rpc.Status` with its details), so a
//! replay is byte-for-byte the first answer whatever later code would say. Malformed requests
//! are refused before anything is claimed.

use std::time::Duration;

use futures_core::future::BoxFuture;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use super::TenantCtx;
use super::error::{AppError, Rejection, RejectionKind, StoredStatus};
use super::group_commit::GroupCommit;
use crate::domain::idempotency::IdempotencyKey;
use crate::domain::ids::TenantId;
use crate::store::StoreError;
use crate::store::idempotency::{self as store, ClaimRow, KeyRef, Outcome, StoredState};
pub use crate::store::idempotency::{Completion, Written};

pub const REASON_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
pub const REASON_IN_USE: &str = "IDEMPOTENCY_KEY_IN_USE";

/// How long a claim holds its key, and how long the work under it may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyConfig {
    /// A claim's lease: after it, a crashed or hung attempt's key can be claimed again.
    pub lease: Duration,
    /// The longest an attempt's work may run before it is abandoned (rolled back and its key
    /// released). Shorter than the lease, so a live attempt never loses its key to a retry.
    pub work_timeout: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(60),
            work_timeout: Duration::from_secs(20),
        }
    }
}

impl IdempotencyConfig {
    /// Checks the timeouts nest: a statement ends before the work does, and the work (plus a
    /// margin for its commit) before the lease.
    pub fn check(&self, statement_timeout: Duration) -> Result<(), String> {
        if self.work_timeout.is_zero() || self.work_timeout * 2 > self.lease {
            return Err(format!(
                "the work timeout ({:?}) must be positive and at most half the idempotency lease ({:?})",
                self.work_timeout, self.lease
            ));
        }
        if statement_timeout > self.work_timeout {
            return Err(format!(
                "the database statement timeout ({statement_timeout:?}) must not exceed the work timeout ({:?})",
                self.work_timeout
            ));
        }
        Ok(())
    }
}

/// A response that can be stored and handed back on replay. Implemented by the transport for
/// the types it returns, so the stored bytes are exactly what the first caller received.
pub trait Replayable: Sized {
    fn encode_replay(&self) -> Vec<u8>;
    fn decode_replay(bytes: &[u8]) -> Option<Self>;
}

/// The SHA-256 of a request's deterministic encoding, output-only fields left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(encoded_request: &[u8]) -> Self {
        Self(Sha256::digest(encoded_request).into())
    }
}

/// An idempotency key as it applies to one call.
#[derive(Debug, Clone)]
pub struct IdempotentCall {
    pub key: IdempotencyKey,
    /// The full gRPC method name; keys are scoped per method.
    pub method: &'static str,
    pub fingerprint: Fingerprint,
    /// The transport's encoding of a refusal, stored so a replay is the same bytes.
    pub encode_refusal: fn(&Rejection) -> Vec<u8>,
}

/// A mutation's result, and whether it was a replay of a stored one.
#[derive(Debug)]
pub struct Done<T> {
    pub value: T,
    pub replayed: bool,
}

impl<T> Done<T> {
    /// A result made by this call, not replayed.
    pub fn new(value: T) -> Self {
        Self {
            value,
            replayed: false,
        }
    }
}

/// What a claim found.
pub enum Claim<T> {
    /// The key is this attempt's: do the work, then complete or release.
    Mine(Lease),
    /// The key holds a completed outcome for the same request: answer with it.
    Replay(Result<Done<T>, AppError>),
}

/// The encoded outcome of an attempt, ready to store.
pub enum Record {
    Response(Vec<u8>),
    Refusal(Vec<u8>),
}

/// A claimed key, held by one attempt until its lease runs out.
#[must_use = "a lease must be completed or released"]
pub struct Lease {
    tenant: TenantId,
    call: IdempotentCall,
    id: Uuid,
}

/// The work a mutation does inside its transaction.
pub type Work<'c, T> = BoxFuture<'c, Result<T, AppError>>;

/// The idempotency steps and the driver for database work. Cheap to clone.
#[derive(Clone)]
pub struct Mutations {
    pool: PgPool,
    config: IdempotencyConfig,
    tasks: TaskTracker,
    /// Every claim goes through one group commit, so concurrent calls share its commit.
    claims: GroupCommit<ClaimRow, bool>,
}

impl Mutations {
    pub fn new(pool: PgPool, config: IdempotencyConfig, tasks: TaskTracker) -> Self {
        let claims = GroupCommit::new(
            "idempotency claims",
            pool.clone(),
            tasks.clone(),
            |conn, rows| Box::pin(store::claim_keys(conn, rows)),
            store::order_claims,
        );
        Self {
            pool,
            config,
            tasks,
            claims,
        }
    }

    pub fn config(&self) -> IdempotencyConfig {
        self.config
    }

    /// Step 1: claims `call`'s key for this attempt, in a statement of its own, or answers
    /// from what already holds it.
    pub async fn claim<T: Replayable>(
        &self,
        tenant: TenantId,
        call: &IdempotentCall,
    ) -> Result<Claim<T>, AppError> {
        let lease = Uuid::now_v7();
        let claimed = self
            .claims
            .write(ClaimRow {
                tenant,
                method: call.method,
                key: call.key.clone(),
                fingerprint: call.fingerprint.0,
                lease,
                lease_secs: self.config.lease.as_secs_f64(),
            })
            .await
            // Whatever became of the claim, no work ran under it: the call changed nothing
            // and may be retried. (A claim that did commit holds the key until its lease runs
            // out; the retry is then told IDEMPOTENCY_KEY_IN_USE until it does.)
            .map_err(|e| match e {
                AppError::OutcomeUnknown(cause) => AppError::Unavailable(cause),
                other => other,
            })?;
        if claimed {
            return Ok(Claim::Mine(Lease {
                tenant,
                call: call.clone(),
                id: lease,
            }));
        }
        let key = KeyRef {
            tenant,
            method: call.method,
            key: &call.key,
        };
        let mut conn = self.pool.acquire().await?;
        let stored = store::held(&mut conn, key, &call.fingerprint.0).await?;
        // A different request under the same key is refused first, even while the first
        // call still runs.
        if stored.fingerprint != call.fingerprint.0 {
            return Ok(Claim::Replay(Err(AppError::rejected(
                RejectionKind::FailedPrecondition,
                REASON_REUSED,
                "this idempotency key was used with a different request",
            ))));
        }
        Ok(Claim::Replay(match stored.state {
            StoredState::InFlight => Err(in_use()),
            StoredState::Response(bytes) => T::decode_replay(&bytes)
                .map(|value| Done {
                    value,
                    replayed: true,
                })
                .ok_or_else(|| AppError::internal("a stored idempotent response does not decode")),
            StoredState::Status(bytes) => Err(AppError::Replayed(StoredStatus(bytes))),
        }))
    }

    /// Runs `work` in a transaction, under `call`'s idempotency key when there is one: claim,
    /// then the work and its outcome in one transaction, or release.
    ///
    /// The mutation runs on a task of the server's tracker, so a caller that disconnects or
    /// times out does not cancel it half-way: it completes and stores its outcome, the
    /// caller's retry gets the replay, and shutdown waits for it.
    pub async fn run<T, F>(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        work: F,
    ) -> Result<Done<T>, AppError>
    where
        T: Replayable + Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConnection) -> Work<'c, T> + Send + 'static,
    {
        let this = self.clone();
        let tenant = ctx.tenant;
        let attempt = async move { this.run_here(tenant, call, work).await };
        self.tasks
            .spawn(attempt.instrument(tracing::Span::current()))
            .await
            .map_err(AppError::internal)?
    }

    async fn run_here<T, F>(
        &self,
        tenant: TenantId,
        call: Option<IdempotentCall>,
        work: F,
    ) -> Result<Done<T>, AppError>
    where
        T: Replayable + Send,
        F: for<'c> FnOnce(&'c mut PgConnection) -> Work<'c, T> + Send,
    {
        let Some(call) = call else {
            let mut conn = self.pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let value = self.bounded(work(&mut tx)).await?;
            tx.commit()
                .await
                .map_err(|e| AppError::from_commit(e.into()))?;
            return Ok(Done::new(value));
        };
        let lease = match self.claim(tenant, &call).await? {
            Claim::Mine(lease) => lease,
            Claim::Replay(answer) => return answer,
        };
        let mut conn = self.pool.acquire().await?;

        let mut tx = conn.begin().await?;
        let result = self.bounded(work(&mut tx)).await;
        let Some(record) = lease.record(&result) else {
            drop(tx);
            lease.release(&mut conn).await;
            return result.map(Done::new);
        };
        if let Err(e) = lease.complete(&mut tx, record).await {
            drop(tx);
            lease.release(&mut conn).await;
            return Err(e);
        }
        match tx.commit().await {
            Ok(()) => result.map(Done::new),
            Err(e) => {
                let e = AppError::from_commit(e.into());
                // Whether or not the commit went through, releasing is safe: it only removes
                // a claim still in flight, and a committed outcome is no longer one.
                lease.release_elsewhere(&self.pool).await;
                Err(e)
            }
        }
    }

    /// Runs an attempt whose work commits on its own, outside one transaction: a provider call
    /// between journal writes. Claim; the work, which is handed the call so it can find what
    /// an earlier attempt under the same key began (the operations journal remembers the key);
    /// then [`Mutations::finish`]. On the server's tracker, like [`Mutations::run`], so a
    /// caller that goes away does not cut a provider call in half.
    pub async fn run_external<T, F, Fut>(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        work: F,
    ) -> Result<Done<T>, AppError>
    where
        T: Replayable + Send + 'static,
        F: FnOnce(Option<IdempotentCall>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, AppError>> + Send,
    {
        let this = self.clone();
        let tenant = ctx.tenant;
        let attempt = async move {
            let lease = match &call {
                None => None,
                Some(c) => match this.claim(tenant, c).await? {
                    Claim::Mine(lease) => Some(lease),
                    Claim::Replay(answer) => return answer,
                },
            };
            let result = this.bounded(Box::pin(work(call))).await;
            match lease {
                None => result.map(Done::new),
                Some(lease) => this.finish(lease, result).await,
            }
        };
        self.tasks
            .spawn(attempt.instrument(tracing::Span::current()))
            .await
            .map_err(AppError::internal)?
    }

    /// Steps 2 and 3 for work that committed its own changes: stores a deterministic outcome
    /// under the key in a transaction of its own, or releases the key. The work must be safe to
    /// find again under the same key should this step be lost (the journal makes it so).
    pub async fn finish<T: Replayable>(
        &self,
        lease: Lease,
        result: Result<T, AppError>,
    ) -> Result<Done<T>, AppError> {
        let mut conn = match self.pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                // The key's lease runs out on its own; the work is found again under it.
                tracing::warn!(error = %e, "could not record an idempotent outcome");
                return result.map(Done::new);
            }
        };
        let Some(record) = lease.record(&result) else {
            lease.release(&mut conn).await;
            return result.map(Done::new);
        };
        let mut tx = conn.begin().await?;
        if let Err(e) = lease.complete(&mut tx, record).await {
            drop(tx);
            lease.release(&mut conn).await;
            return Err(e);
        }
        if let Err(e) = tx.commit().await {
            tracing::warn!(error = %e, "could not record an idempotent outcome");
            lease.release_elsewhere(&self.pool).await;
        }
        result.map(Done::new)
    }

    /// Runs a mutation whose work is one statement that records its own outcome: a create,
    /// whose response (`value`) is known before it runs because Coffer picks the id and the
    /// timestamps, and whose one possible refusal (`refusal`, a conflict the statement finds
    /// without failing) is known too. Claim, then the statement, which writes the change and
    /// completes the key under the lease's row lock: two round trips and no explicit
    /// transaction, where [`Mutations::run`] takes five.
    pub async fn run_statement<T, R>(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        value: T,
        refusal: Rejection,
        writes: &GroupCommit<R, Written>,
        row: impl FnOnce(Option<Completion>) -> R + Send + 'static,
    ) -> Result<Done<T>, AppError>
    where
        T: Replayable + Send + 'static,
        R: Send + Sync + 'static,
    {
        let this = self.clone();
        let writes = writes.clone();
        let tenant = ctx.tenant;
        let attempt = async move {
            let lease = match &call {
                None => None,
                Some(call) => match this.claim(tenant, call).await? {
                    Claim::Mine(lease) => Some(lease),
                    Claim::Replay(answer) => return answer,
                },
            };
            let completion = lease.as_ref().map(|lease| Completion {
                method: lease.call.method,
                key: lease.call.key.clone(),
                lease: lease.id,
                response: value.encode_replay(),
                refusal: (lease.call.encode_refusal)(&refusal),
            });
            // Not bounded by the work timeout: a row handed to a batch may be written after
            // its caller stopped waiting, so giving up here could not honestly say "nothing
            // changed". The statement timeout bounds the statement, and the queue is bounded.
            match writes.write(row(completion)).await {
                Ok(Written { applied: true, .. }) => Ok(Done::new(value)),
                Ok(Written {
                    completed: false, ..
                }) if lease.is_some() => Err(in_use()),
                Ok(_) => Err(AppError::Rejected(refusal)),
                Err(e) => {
                    if let Some(lease) = lease {
                        lease.release_elsewhere(&this.pool).await;
                    }
                    Err(e)
                }
            }
        };
        self.tasks
            .spawn(attempt.instrument(tracing::Span::current()))
            .await
            .map_err(AppError::internal)?
    }

    /// Runs `work`, abandoning it after the work timeout (its transaction is then dropped and
    /// rolled back). The statement timeout is shorter still, so the database stops first.
    async fn bounded<T>(&self, work: Work<'_, T>) -> Result<T, AppError> {
        match tokio::time::timeout(self.config.work_timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(AppError::Unavailable(StoreError::Timeout(sqlx::Error::Io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the work ran past its timeout",
                ),
            )))),
        }
    }
}

impl Lease {
    fn key(&self) -> KeyRef<'_> {
        KeyRef {
            tenant: self.tenant,
            method: self.call.method,
            key: &self.call.key,
        }
    }

    /// What of `result` is stored against the key: the response, or a deterministic refusal;
    /// `None` for failures (INTERNAL, UNAVAILABLE, ABORTED, ...), after which the key is
    /// released instead.
    pub fn record<T: Replayable>(&self, result: &Result<T, AppError>) -> Option<Record> {
        match result {
            Ok(value) => Some(Record::Response(value.encode_replay())),
            Err(AppError::Rejected(r)) if r.kind.is_deterministic() => {
                Some(Record::Refusal((self.call.encode_refusal)(r)))
            }
            Err(_) => None,
        }
    }

    /// Step 2: stores `record` against the key inside the work's transaction `tx`; commit
    /// `tx` after it. A refusal first undoes whatever the work wrote before refusing, so `tx`
    /// then holds the outcome alone. A lost lease (it ran out and another attempt took the
    /// key) is ABORTED (`IDEMPOTENCY_KEY_IN_USE`), and `tx` must be rolled back.
    pub async fn complete(&self, tx: &mut PgConnection, record: Record) -> Result<(), AppError> {
        if let Record::Refusal(_) = record {
            sqlx::query("ROLLBACK AND CHAIN")
                .execute(&mut *tx)
                .await
                .map_err(AppError::from)?;
        }
        let outcome = match &record {
            Record::Response(bytes) => Outcome::Response(bytes),
            Record::Refusal(bytes) => Outcome::Status(bytes),
        };
        if store::complete_key(tx, self.key(), self.id, outcome).await? {
            Ok(())
        } else {
            // Another attempt owns the key now: undo our change rather than apply the request
            // twice.
            Err(in_use())
        }
    }

    /// Step 3: frees the key so the caller can retry. Best effort: should the database be
    /// gone, the lease runs out on its own.
    pub async fn release(self, conn: &mut PgConnection) {
        if let Err(e) = store::release_key(conn, self.key(), self.id).await {
            tracing::warn!(error = %e, "could not release an idempotency key");
        }
    }

    /// Releases on a fresh connection, for when the attempt's own connection broke.
    pub async fn release_elsewhere(self, pool: &PgPool) {
        match pool.acquire().await {
            Ok(mut conn) => self.release(&mut conn).await,
            Err(e) => tracing::warn!(error = %e, "could not release an idempotency key"),
        }
    }
}

fn in_use() -> AppError {
    AppError::rejected(
        RejectionKind::Aborted,
        REASON_IN_USE,
        "a request with this idempotency key is still in progress; retry shortly",
    )
}
