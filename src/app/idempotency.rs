//! Idempotency for every mutating RPC, built once, as explicit steps, with two uses.
//!
//! 1. **Claim**: an `in_flight` row for (tenant, method, key) holding the request's
//!    fingerprint and a lease. A key already completed is answered from storage; a different
//!    request under it is refused (`IDEMPOTENCY_KEY_REUSED`).
//! 2. **Complete**: [`Lease::complete`] stores the outcome in the transaction of the change
//!    it records, guarded by the lease, so the change and its record commit together or not at
//!    all, and an attempt whose lease was taken over rolls back instead of applying twice.
//! 3. **Release**: [`Lease::release`] frees the key when the attempt ended without a
//!    deterministic outcome (INTERNAL, UNAVAILABLE, ABORTED, a timeout), so the caller can
//!    retry under the same key.
//!
//! The two uses differ in where the claim commits:
//!
//! - **One transaction** ([`Mutations::run_atomic`], [`Mutations::run_statement`]), for every
//!   mutation that calls no provider: the claim, the change and the outcome are one
//!   transaction, group-committed with concurrent calls' for one-statement creates. Nobody
//!   sees the claim before the outcome, so nothing is ever released: a failed attempt rolls
//!   its claim back with its change. A concurrent duplicate waits on the key's unique index
//!   for at most that commit, then replays the outcome.
//! - **Claim first** ([`Mutations::run_external`], [`Mutations::claim`] and
//!   [`Mutations::finish`], and [`Mutations::run`]), for calls that hold a provider call
//!   between the steps: the claim commits on its own before the work starts, so a concurrent
//!   duplicate is answered ABORTED (`IDEMPOTENCY_KEY_IN_USE`) at once instead of waiting on a
//!   call to a payment provider, and a crashed attempt's key comes back when its lease runs out.
//!
//! Only deterministic outcomes are stored: the encoded response, and the caller's own
//! refusals as the transport encoded them (a full `google.rpc.Status` with its details), so a
//! replay is byte-for-byte the first answer whatever later code would say. Malformed requests
//! are refused before anything is claimed.
//!
//! An answer that stops being true (a portal link, a credential that works for an hour) says
//! so ([`Replayable::lapse`]): it is stored with its expiry and the refusal that replaces it,
//! replayed byte for byte until then, refused after, and its bytes are scrubbed by the sweeper
//! (decision 0033). The key still never does two things: a replay after the lapse is refused,
//! never run again.

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
    /// When this answer stops being one to hand back, and the refusal answered after; `None`
    /// (the default): it is replayed for the key's whole retention.
    fn lapse(&self) -> Option<Lapse> {
        None
    }
}

/// How long a stored answer is replayed, and what a replay is answered after that: for an
/// answer that is a credential, so it is kept no longer than it works.
#[derive(Debug, Clone)]
pub struct Lapse {
    /// From when the answer is stored (its commit, on the database's clock).
    pub after: Duration,
    /// A deterministic refusal (FAILED_PRECONDITION, with a stable reason), stored encoded
    /// beside the answer and replayed as any stored refusal.
    pub refusal: Rejection,
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
    /// The response, and when it lapses: after how long, and the encoded refusal then.
    Response(Vec<u8>, Option<(Duration, Vec<u8>)>),
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
        self.held(tenant, call).await.map(Claim::Replay)
    }

    /// The answer for a call whose claim found its key taken: the stored outcome, in use, or
    /// reused with a different request.
    async fn held<T: Replayable>(
        &self,
        tenant: TenantId,
        call: &IdempotentCall,
    ) -> Result<Result<Done<T>, AppError>, AppError> {
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
            return Ok(Err(AppError::rejected(
                RejectionKind::FailedPrecondition,
                REASON_REUSED,
                "this idempotency key was used with a different request",
            )));
        }
        Ok(match stored.state {
            StoredState::InFlight => Err(in_use()),
            StoredState::Response(bytes) => T::decode_replay(&bytes)
                .map(|value| Done {
                    value,
                    replayed: true,
                })
                .ok_or_else(|| AppError::internal("a stored idempotent response does not decode")),
            StoredState::Status(bytes) => Err(AppError::Replayed(StoredStatus(bytes))),
        })
    }

    /// The claim of `call`'s key for a new attempt, to commit with its work.
    fn claim_row(&self, tenant: TenantId, call: &IdempotentCall) -> ClaimRow {
        ClaimRow {
            tenant,
            method: call.method,
            key: call.key.clone(),
            fingerprint: call.fingerprint.0,
            lease: Uuid::now_v7(),
            lease_secs: self.config.lease.as_secs_f64(),
        }
    }

    /// Runs `work` in one transaction with the claim of `call`'s key and its outcome: the
    /// one-transaction use, for every mutation that calls no provider. A concurrent duplicate
    /// waits on the key's unique index until this commits (or rolls back), then replays the
    /// outcome (or runs). On the server's tracker, like [`Mutations::run`].
    pub async fn run_atomic<T, F>(
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
        let attempt = async move {
            let Some(call) = call else {
                return this.run_here(tenant, None, work).await;
            };
            let claim = this.claim_row(tenant, &call);
            let mut conn = this.pool.acquire().await?;
            let mut tx = conn.begin().await?;
            let claimed = store::claim_keys(&mut tx, std::slice::from_ref(&claim)).await?;
            if claimed.first() != Some(&true) {
                // Held by a committed attempt (a running one made the claim wait for it).
                drop(tx);
                return this.held(tenant, &call).await?;
            }
            let lease = Lease {
                tenant,
                call,
                id: claim.lease,
            };
            let result = this.bounded(work(&mut tx)).await;
            // Without a storable outcome, rolling back takes the claim with the change.
            let Some(record) = lease.record(&result) else {
                return result.map(Done::new);
            };
            if let Record::Refusal(_) = record {
                // Undo what the work wrote before refusing; the claim goes with it, so claim
                // again. Should a duplicate have claimed meanwhile, it stores its own answer.
                sqlx::query("ROLLBACK AND CHAIN")
                    .execute(&mut *tx)
                    .await
                    .map_err(AppError::from)?;
                let again = store::claim_keys(&mut tx, std::slice::from_ref(&claim)).await?;
                if again.first() != Some(&true) {
                    return result.map(Done::new);
                }
            }
            lease.store(&mut tx, &record).await?;
            if let Err(e) = tx.commit().await {
                // The commit may yet go through. Releasing waits on the key's row until the
                // transaction's fate is known, and changes nothing either way (a committed
                // key is no longer in flight; a rolled-back one is gone), so the caller is
                // answered only once a retry would find the outcome.
                lease.release_elsewhere(&this.pool).await;
                return Err(AppError::from_commit(e.into()));
            }
            result.map(Done::new)
        };
        self.tasks
            .spawn(attempt.instrument(tracing::Span::current()))
            .await
            .map_err(AppError::internal)?
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
        self.run_external_for(ctx.tenant, call, work).await
    }

    /// [`Mutations::run_external`] for a tenant, with no caller: for a change Coffer makes on
    /// its own under a key of its own (ending a provider's dunning).
    pub async fn run_external_for<T, F, Fut>(
        &self,
        tenant: TenantId,
        call: Option<IdempotentCall>,
        work: F,
    ) -> Result<Done<T>, AppError>
    where
        T: Replayable + Send + 'static,
        F: FnOnce(Option<IdempotentCall>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, AppError>> + Send,
    {
        let this = self.clone();
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
    /// without failing) is known too; `None` for a write that cannot be refused once it runs
    /// (a credit grant, whose customer and meter were found before). The one-transaction use, group-committed: `writes`
    /// claims the keys of a batch of rows, runs their statement and commits once (see
    /// [`claim_and_write`]), so under load a create shares its commit with the others.
    pub async fn run_statement<T, R>(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        value: T,
        refusal: Option<Rejection>,
        writes: &GroupCommit<Keyed<R>, Option<Written>>,
        row: impl FnOnce(Option<Completion>) -> R + Send + 'static,
    ) -> Result<Done<T>, AppError>
    where
        T: Replayable + Send + 'static,
        R: Send + Sync + 'static,
    {
        // A create's answer is written by its own statement, which stores no expiry.
        debug_assert!(
            value.lapse().is_none(),
            "a one-statement answer cannot lapse"
        );
        let this = self.clone();
        let writes = writes.clone();
        let tenant = ctx.tenant;
        let attempt = async move {
            let claim = call.as_ref().map(|call| this.claim_row(tenant, call));
            let completion = call
                .as_ref()
                .zip(claim.as_ref())
                .map(|(call, claim)| Completion {
                    method: call.method,
                    key: call.key.clone(),
                    lease: claim.lease,
                    response: value.encode_replay(),
                    // Stored only for a row the statement refuses, which it never does
                    // without a refusal to store.
                    refusal: refusal
                        .as_ref()
                        .map(|r| (call.encode_refusal)(r))
                        .unwrap_or_default(),
                });
            // Not bounded by the work timeout: a row handed to a batch may be written after
            // its caller stopped waiting, so giving up here could not honestly say "nothing
            // changed". The statement timeout bounds the statement, and the queue is bounded.
            // Nothing is ever released: the claim commits with the outcome or not at all.
            let lease = call
                .as_ref()
                .zip(claim.as_ref())
                .map(|(call, claim)| Lease {
                    tenant,
                    call: call.clone(),
                    id: claim.lease,
                });
            let written = match writes
                .write(Keyed {
                    row: row(completion),
                    claim,
                })
                .await
            {
                Ok(written) => written,
                Err(e) => {
                    // As in run_atomic: answer once the batch's fate is known (a row refused
                    // before it was queued has none).
                    if let Some(lease) = lease
                        && !matches!(e, AppError::Overloaded(_))
                    {
                        lease.release_elsewhere(&this.pool).await;
                    }
                    return Err(e);
                }
            };
            match (written, call) {
                (Some(Written { applied: true, .. }), _) => Ok(Done::new(value)),
                (
                    Some(Written {
                        completed: false, ..
                    }),
                    Some(_),
                ) => Err(in_use()),
                (Some(_), _) => Err(refusal.map_or_else(
                    || AppError::internal("a write that cannot be refused was not applied"),
                    AppError::Rejected,
                )),
                (None, Some(call)) => this.held(tenant, &call).await?,
                (None, None) => Err(AppError::internal("an unkeyed row was not written")),
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

/// A row of a one-statement mutation and, under an idempotency key, the claim of its key,
/// which the batch writing the row makes in the same transaction.
#[derive(Debug, Clone)]
pub struct Keyed<R> {
    pub row: R,
    pub claim: Option<ClaimRow>,
}

/// The statement that writes a batch of one-statement mutations together with the claims of
/// their keys (in [`store::order_claims`] order), in a transaction: it claims each key
/// *completed*, with the response the row's call answers, writes the rows whose key it claimed
/// and those without a key, and stores the refusal instead for a claimed row it found a
/// conflict for. One result per row: `None` for a row whose key was held. See
/// `store::customers::claim_and_insert_customers`.
pub type ClaimingWriteFn<R> = for<'c> fn(
    &'c mut PgConnection,
    &'c [R],
    &'c [ClaimRow],
)
    -> BoxFuture<'c, Result<Vec<Option<Written>>, StoreError>>;

/// The same write as one statement in autocommit, for the batches it can decide alone: the
/// refusal decided before the change, and a conflict it could not foresee (a concurrent
/// writer's) failing the whole statement, so that it wrote nothing. `Ok(None)`: it wrote
/// nothing, and the batch must go through the [`ClaimingWriteFn`]. See
/// `store::customers::claim_and_insert_customers_at_once`.
pub type ClaimingWriteAtOnceFn<R> =
    for<'c> fn(
        &'c mut PgConnection,
        &'c [R],
        &'c [ClaimRow],
    ) -> BoxFuture<'c, Result<Option<Vec<Option<Written>>>, StoreError>>;

/// How a batch of one-statement mutations is written with the claims of their keys: at once
/// when it can be, else in a transaction.
pub struct ClaimingWrites<R> {
    pub at_once: ClaimingWriteAtOnceFn<R>,
    pub in_transaction: ClaimingWriteFn<R>,
}

/// Writes a batch of one-statement mutations with the claims of their keys. A key is written
/// once, as the outcome, never first as a claim and then completed: nobody sees the key before
/// the commit anyway. First as one statement in autocommit (`writes.at_once`): one round trip
/// and one implicit transaction, all or nothing, where `BEGIN`, the statement and `COMMIT`
/// would be three. When that statement cannot decide the batch alone (a conflict raised by a
/// concurrent writer aborted it, or the batch repeats what one statement cannot order) it wrote
/// nothing, and the batch runs in a transaction (`writes.in_transaction`): `BEGIN`, one
/// statement that claims the keys and writes the rows (a second one only for rows refused),
/// `COMMIT`. Either way the outcome commits with the change or not at all, and a claim that
/// meets another batch's uncommitted claim of the same key waits for that commit. `None` for a
/// row whose key was held (by a committed outcome, a live claim-first attempt, or an earlier
/// row of this batch): its caller reads the key once this batch has committed.
pub async fn claim_and_write<R: Clone>(
    conn: &mut PgConnection,
    rows: &[Keyed<R>],
    writes: &ClaimingWrites<R>,
) -> Result<Vec<Option<Written>>, StoreError> {
    let mut claims: Vec<ClaimRow> = rows.iter().filter_map(|r| r.claim.clone()).collect();
    let batch: Vec<R> = rows.iter().map(|r| r.row.clone()).collect();
    if claims.is_empty() {
        // Nothing to claim: the statement commits on its own.
        return (writes.in_transaction)(conn, &batch, &[]).await;
    }
    // Keys are locked in one order by every batch, so two batches cannot deadlock on them.
    claims.sort_by(store::order_claims);
    let written = match (writes.at_once)(conn, &batch, &claims).await? {
        Some(written) => written,
        None => {
            let mut tx = conn.begin().await?;
            let written = (writes.in_transaction)(&mut tx, &batch, &claims).await?;
            if written.len() == batch.len() {
                tx.commit().await?;
            }
            written
        }
    };
    if written.len() != batch.len() {
        return Err(StoreError::Corrupt {
            what: "batch result",
            detail: "wrong number of rows".into(),
        });
    }
    Ok(written)
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
            Ok(value) => Some(Record::Response(
                value.encode_replay(),
                value
                    .lapse()
                    .map(|l| (l.after, (self.call.encode_refusal)(&l.refusal))),
            )),
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
        self.store(tx, &record).await
    }

    /// Stores `record` under the key, as [`Lease::complete`] does once the transaction holds
    /// only what the outcome records.
    async fn store(&self, tx: &mut PgConnection, record: &Record) -> Result<(), AppError> {
        let outcome = match record {
            Record::Response(bytes, lapse) => Outcome::Response(
                bytes,
                lapse.as_ref().map(|(after, refusal)| store::Lapse {
                    after_secs: after.as_secs_f64(),
                    refusal,
                }),
            ),
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
