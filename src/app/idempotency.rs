//! Idempotency for every mutating RPC, built once.
//!
//! A caller's `idempotency-key` claims a row in `idempotency_keys` (its own short transaction,
//! so a concurrent duplicate sees the claim at once and gets ABORTED instead of waiting). The
//! work then runs in a transaction that also stores the outcome, so the change and the record of
//! it commit together or not at all. Claims carry a lease: a crashed attempt's claim runs out
//! and the key can be used again. Only deterministic outcomes are stored — the response and
//! the caller's own refusals (NOT_FOUND, ALREADY_EXISTS, ...). Malformed requests are refused
//! before anything is claimed and, like INTERNAL and UNAVAILABLE, are not stored, so the caller
//! can fix or retry under the same key.

use futures_core::future::BoxFuture;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use tracing::Instrument;
use uuid::Uuid;

use super::combine::{Combiner, Written};
use super::error::{AppError, Rejection, RejectionKind};
use super::{App, TenantCtx};
use crate::domain::idempotency::IdempotencyKey;
use crate::store::idempotency::{self as store, NewOutcome, Outcome};

/// How long a claim holds a key while its attempt runs.
pub const LEASE_SECS: i64 = 60;

pub const REASON_REUSED: &str = "IDEMPOTENCY_KEY_REUSED";
pub const REASON_IN_USE: &str = "IDEMPOTENCY_KEY_IN_USE";

/// A response that can be stored and handed back on replay. Implemented by the transport for
/// the types it returns, so the stored bytes are exactly what the first caller received.
pub trait Replayable: Sized {
    fn encode_replay(&self) -> Vec<u8>;
    fn decode_replay(bytes: &[u8]) -> Option<Self>;
}

/// The SHA-256 of a request's deterministic encoding.
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
}

impl IdempotentCall {
    /// The completed outcome to write with a change whose response is known before it runs.
    pub fn outcome(&self, response: Vec<u8>) -> NewOutcome {
        NewOutcome {
            method: self.method,
            key: self.key.clone(),
            fingerprint: self.fingerprint.0,
            response,
        }
    }
}

/// A mutation's result, and whether it was a replay of a stored one.
#[derive(Debug)]
pub struct Done<T> {
    pub value: T,
    pub replayed: bool,
}

impl<T> Done<T> {
    /// A result made by this call, not replayed.
    fn new(value: T) -> Self {
        Self {
            value,
            replayed: false,
        }
    }
}

/// The work a mutation does inside its transaction.
pub type Work<'c, T> = BoxFuture<'c, Result<T, AppError>>;

impl App {
    /// Runs `work` in a transaction, under `call`'s idempotency key when there is one.
    ///
    /// The mutation runs on its own task, so a caller that disconnects or times out does not
    /// cancel it half-way: it completes and stores its outcome, and the caller's retry gets the
    /// replay instead of waiting out the lease.
    pub async fn mutate<T, F>(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        work: F,
    ) -> Result<Done<T>, AppError>
    where
        T: Replayable + Send + 'static,
        F: for<'c> FnOnce(&'c mut PgConnection) -> Work<'c, T> + Send + 'static,
    {
        let app = self.clone();
        let ctx = *ctx;
        let work = async move { app.mutate_here(&ctx, call, work).await };
        self.tasks
            .spawn(work.instrument(tracing::Span::current()))
            .await
            .map_err(AppError::internal)?
    }

    async fn mutate_here<T, F>(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        work: F,
    ) -> Result<Done<T>, AppError>
    where
        T: Replayable + Send,
        F: for<'c> FnOnce(&'c mut PgConnection) -> Work<'c, T> + Send,
    {
        let mut conn = self.pool.acquire().await?;
        let Some(call) = call else {
            let mut tx = conn.begin().await?;
            let value = work(&mut tx).await?;
            tx.commit().await?;
            return Ok(Done::new(value));
        };

        let tenant = ctx.tenant;
        let lease = Uuid::now_v7();
        let claimed = store::claim_key(
            &mut conn,
            tenant,
            call.method,
            &call.key,
            &call.fingerprint.0,
            lease,
            LEASE_SECS,
        )
        .await?;
        if !claimed {
            return replay(&mut conn, ctx, &call).await;
        }

        let mut tx = conn.begin().await?;
        match work(&mut tx).await {
            Ok(value) => {
                let bytes = value.encode_replay();
                let kept = store::complete_key(
                    &mut tx,
                    tenant,
                    call.method,
                    &call.key,
                    lease,
                    Outcome::Response(&bytes),
                )
                .await?;
                if !kept {
                    // Our lease ran out and another attempt owns the key now: undo our change
                    // rather than apply the request twice.
                    tx.rollback().await?;
                    return Err(in_use());
                }
                tx.commit().await?;
                Ok(Done::new(value))
            }
            Err(AppError::Rejected(rejection)) => {
                tx.rollback().await?;
                store::complete_key(
                    &mut conn,
                    tenant,
                    call.method,
                    &call.key,
                    lease,
                    Outcome::Error {
                        kind: rejection.kind.as_str(),
                        reason: &rejection.reason,
                        message: &rejection.message,
                    },
                )
                .await?;
                Err(AppError::Rejected(rejection))
            }
            Err(other) => {
                // Not a storable outcome: free the key so the caller can retry. Should this
                // fail too (the database is gone), the lease runs out on its own.
                drop(tx);
                if let Err(e) =
                    store::release_key(&mut conn, tenant, call.method, &call.key, lease).await
                {
                    tracing::warn!(error = %e, "could not release an idempotency key");
                }
                Err(other)
            }
        }
    }
}

impl App {
    /// A create: its response is known before it runs, because Coffer picks the id and the
    /// timestamps. So the change, its audit row and (with a key) the completed outcome are one
    /// row for `writes`' insert statement, which writes them together with the rows of
    /// concurrent creates: one statement, one commit for the lot (see [`Combiner`]). That
    /// statement has no `ON CONFLICT`: any unique violation (a key used before or held by a
    /// call still running, or the caller's own data conflicting) aborts it whole. A refused
    /// batch's rows are written alone, and when a row alone conflicts, `fallback` runs through
    /// [`App::mutate`], which decides: replay, IDEMPOTENCY_KEY_REUSED or _IN_USE, a stale claim
    /// taken over, or the caller's refusal stored against the key.
    pub async fn create<T, R, F>(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        value: T,
        writes: &Combiner<R>,
        row: impl FnOnce(&T, Option<NewOutcome>) -> R,
        fallback: F,
    ) -> Result<Done<T>, AppError>
    where
        T: Replayable + Send + 'static,
        R: Send + Sync + 'static,
        F: for<'c> FnOnce(&'c mut PgConnection) -> Work<'c, T> + Send + 'static,
    {
        let outcome = call.as_ref().map(|c| c.outcome(value.encode_replay()));
        let written = match writes.submit(row(&value, outcome)).await {
            Written::Stored => Ok(()),
            Written::Refused(row) => {
                let mut conn = self.pool.acquire().await?;
                writes.insert_alone(&mut conn, row).await
            }
            Written::Failed(e) => Err(e),
        };
        match written {
            Ok(()) => Ok(Done::new(value)),
            Err(e) if e.unique_violation().is_some() => self.mutate(ctx, call, fallback).await,
            Err(e) => Err(e.into()),
        }
    }
}

/// Answers a call whose key was already claimed: the stored outcome, or why there is none.
async fn replay<T: Replayable>(
    conn: &mut PgConnection,
    ctx: &TenantCtx,
    call: &IdempotentCall,
) -> Result<Done<T>, AppError> {
    // No row means the holder released it a moment ago; asking again is right either way.
    let Some(stored) = store::find_key(conn, ctx.tenant, call.method, &call.key).await? else {
        return Err(in_use());
    };
    if stored.fingerprint != call.fingerprint.0 {
        return Err(AppError::rejected(
            RejectionKind::FailedPrecondition,
            REASON_REUSED,
            "this idempotency key was used with a different request",
        ));
    }
    if !stored.completed {
        return Err(in_use());
    }
    if let Some(bytes) = stored.response {
        let value = T::decode_replay(&bytes)
            .ok_or_else(|| AppError::internal("a stored idempotent response does not decode"))?;
        return Ok(Done {
            value,
            replayed: true,
        });
    }
    let kind = stored
        .error_kind
        .as_deref()
        .and_then(RejectionKind::parse)
        .ok_or_else(|| AppError::internal("a stored idempotent outcome has no known kind"))?;
    Err(AppError::Rejected(Rejection {
        kind,
        reason: stored.error_reason.unwrap_or_default(),
        message: stored.error_message.unwrap_or_default(),
    }))
}

fn in_use() -> AppError {
    AppError::rejected(
        RejectionKind::Aborted,
        REASON_IN_USE,
        "a request with this idempotency key is still in progress; retry shortly",
    )
}
