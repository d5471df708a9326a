//! The operations journal: every outbound provider call in three steps.
//!
//! 1. **Write**: [`Journal::begin`] records the intended operation (kind, account, Coffer's
//!    object id, generation) as `pending`, in a statement of its own, committed before anything
//!    is sent.
//! 2. **Call** the provider with the idempotency key `{operation id}-{generation}` and Coffer's
//!    object id as the client reference.
//! 3. **Record** the outcome: `succeeded` with the provider's object id (in the transaction that
//!    applies it), `failed` for a definitive refusal or a call that did nothing, or `unknown`.
//!
//! Invariants: no provider call without a committed journal row; an `unknown` (or stale
//! `pending`) operation is settled by fetching the object by Coffer's id, never by calling again
//! blindly ([`Journal::resolve_due`], run by [`run_resolver`] and by a caller's retry under the
//! same idempotency key); a retry after a failure is a new generation, so the provider never
//! answers it with the stored result of the failed one.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sqlx::{Connection, PgConnection, PgPool};
use tracing::Instrument;
use uuid::Uuid;

use super::payments;
use super::providers::{Providers, Resolved};
use super::{AppError, Rejection, RejectionKind};
use crate::domain::account::{AccountName, ProviderKind};
use crate::domain::ids::{CheckoutId, RefundId, TenantId};
use crate::providers::{ObjectKind, Operation, ProviderCheckout, ProviderError, ProviderObject};
use crate::shutdown::CancellationToken;
use crate::store::StoreError;
use crate::store::journal::{self as store, Begun, OperationRow};

pub const REASON_PROVIDER_REJECTED: &str = "PROVIDER_REJECTED";

/// What an operation does, as the journal names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    CreateCustomer,
    /// Mirroring one of Coffer's prices (`coffer_id` is the price's id).
    CreatePrice,
    /// Mirroring one of Coffer's meters (`coffer_id` is the meter's id).
    CreateMeter,
    /// One batch of usage pushed to an account's meters (`coffer_id` is the batch's id). Its
    /// unknown outcome is settled by the push worker sending the same batch again, never by
    /// the resolver (a meter event cannot be fetched).
    PushUsage,
    CreateCheckoutSession,
    ExpireCheckoutSession,
    Refund,
    /// A lifecycle change to a subscription (`coffer_id` is the change's own id, so each
    /// change is an operation of its own).
    UpdateSubscription,
    /// Making a subscription without a checkout (`coffer_id` is the subscription's id).
    CreateSubscription,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::CreateCustomer => "create_customer",
            OpKind::CreatePrice => "create_price",
            OpKind::CreateMeter => "create_meter",
            OpKind::PushUsage => "push_usage",
            OpKind::CreateCheckoutSession => "create_checkout_session",
            OpKind::ExpireCheckoutSession => "expire_checkout_session",
            OpKind::Refund => "refund",
            OpKind::UpdateSubscription => "update_subscription",
            OpKind::CreateSubscription => "create_subscription",
        }
    }

    /// Every kind; the table's check constraint must take each (a test compares them).
    pub const ALL: [OpKind; 9] = [
        OpKind::CreateCustomer,
        OpKind::CreatePrice,
        OpKind::CreateMeter,
        OpKind::PushUsage,
        OpKind::CreateCheckoutSession,
        OpKind::ExpireCheckoutSession,
        OpKind::Refund,
        OpKind::UpdateSubscription,
        OpKind::CreateSubscription,
    ];

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind of object the operation is about (found by Coffer's id when settling).
    pub fn object(self) -> ObjectKind {
        match self {
            OpKind::CreateCustomer => ObjectKind::Customer,
            OpKind::CreatePrice => ObjectKind::Price,
            OpKind::CreateMeter => ObjectKind::Meter,
            OpKind::PushUsage => ObjectKind::UsageBatch,
            OpKind::CreateCheckoutSession | OpKind::ExpireCheckoutSession => {
                ObjectKind::CheckoutSession
            }
            OpKind::Refund => ObjectKind::Refund,
            OpKind::UpdateSubscription | OpKind::CreateSubscription => ObjectKind::Subscription,
        }
    }
}

/// Where an operation stands (`provider_operations.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpStatus {
    /// Written, and the call may be under way.
    Pending,
    /// The provider made the object; `provider_id` names it.
    Succeeded,
    /// The provider refused, or nothing happened: the next attempt is a new generation.
    Failed,
    /// It may or may not have happened: only fetching the object settles it.
    Unknown,
}

impl OpStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OpStatus::Pending => "pending",
            OpStatus::Succeeded => "succeeded",
            OpStatus::Failed => "failed",
            OpStatus::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [
            OpStatus::Pending,
            OpStatus::Succeeded,
            OpStatus::Failed,
            OpStatus::Unknown,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One operation of the journal, current generation.
#[derive(Debug, Clone)]
pub struct Op {
    pub tenant: TenantId,
    pub id: Uuid,
    pub generation: i32,
    pub kind: OpKind,
    pub coffer_id: Uuid,
    pub status: OpStatus,
    pub provider_id: Option<String>,
}

impl Op {
    fn from_row(row: OperationRow) -> Result<Self, StoreError> {
        Ok(Op {
            tenant: TenantId::from_uuid(row.tenant_id),
            id: row.id,
            generation: row.generation,
            kind: OpKind::parse(&row.kind).ok_or_else(|| StoreError::Corrupt {
                what: "operation kind",
                detail: row.kind.clone(),
            })?,
            coffer_id: row.coffer_id,
            status: OpStatus::parse(&row.status).ok_or_else(|| StoreError::Corrupt {
                what: "operation status",
                detail: row.status.clone(),
            })?,
            provider_id: row.provider_id,
        })
    }

    /// The provider idempotency key of this generation.
    pub fn idempotency_key(&self) -> String {
        format!("{}-{}", self.id.simple(), self.generation)
    }
}

/// A journaled call that failed, recorded: the provider's error, for callers whose own rows
/// depend on how it failed (a refused refund frees its amount), and the error to answer with.
#[derive(Debug)]
pub struct CallFailed {
    pub cause: ProviderError,
    pub error: AppError,
}

impl From<CallFailed> for AppError {
    fn from(f: CallFailed) -> Self {
        f.error
    }
}

/// What [`Journal::begin`] found.
pub enum Started {
    /// Written and committed: call now.
    Call(Op),
    /// Already there and not failed: settle or reuse it.
    Existing(Op),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    provider: &'static str,
    operation: &'static str,
    outcome: &'static str,
}

/// Provider calls by provider, operation and outcome (`succeeded`, `failed`, `retryable`,
/// `unknown`): fixed label values, so a bounded number of series.
#[derive(Clone, Default)]
pub struct ProviderMetrics {
    calls: Family<CallLabels, Counter>,
}

impl ProviderMetrics {
    /// Adds the counter to the registry `/metrics` serves.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "coffer_provider_calls",
            "Outbound provider calls by provider, operation and outcome (succeeded, failed, retryable, unknown)",
            self.calls.clone(),
        );
    }

    /// Counts one call of `operation` on a `provider` account that ended as `result` says.
    pub fn observe<T>(
        &self,
        provider: ProviderKind,
        operation: &'static str,
        result: &Result<T, ProviderError>,
    ) {
        let outcome = match result {
            Ok(_) => "succeeded",
            Err(ProviderError::Definitive { .. }) => "failed",
            Err(ProviderError::Retryable { .. }) => "retryable",
            Err(ProviderError::Unknown { .. }) => "unknown",
        };
        self.calls
            .get_or_create(&CallLabels {
                provider: provider.as_str(),
                operation,
                outcome,
            })
            .inc();
    }
}

/// The journal's steps. Cheap to clone.
#[derive(Clone)]
pub struct Journal {
    pool: PgPool,
    metrics: ProviderMetrics,
}

impl Journal {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            metrics: ProviderMetrics::default(),
        }
    }

    pub fn metrics(&self) -> &ProviderMetrics {
        &self.metrics
    }

    /// Step 2, and step 3 when it fails: the one way Coffer calls a provider to change
    /// something. The caller has begun `op` (step 1, committed) and holds no database
    /// connection while `call` runs — a provider's seconds must not hold one of the pool's
    /// connections — so this takes the future alone. The call is counted; a failure is
    /// recorded (`failed` when the provider refused or nothing happened, `unknown` when it may
    /// have happened) and comes back with the error to answer. A success is recorded by the
    /// caller in the transaction that applies it ([`Journal::apply`], [`Journal::succeeded`]);
    /// an unknown outcome is settled by fetching ([`Journal::settle`]), never by calling again
    /// blindly.
    pub async fn call<T>(
        &self,
        op: &Op,
        provider: ProviderKind,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, CallFailed> {
        let result = call
            .instrument(tracing::info_span!(
                "provider call",
                provider = provider.as_str(),
                operation = op.kind.as_str(),
                generation = op.generation,
            ))
            .await;
        self.metrics.observe(provider, op.kind.as_str(), &result);
        match result {
            Ok(value) => Ok(value),
            Err(cause) => {
                let error = self.failed(op, cause.clone()).await;
                Err(CallFailed { cause, error })
            }
        }
    }

    /// A read of the provider's current state (nothing to journal: it changes nothing there),
    /// counted as `operation`; its failure is the caller's error.
    pub async fn fetch<T>(
        &self,
        provider: ProviderKind,
        operation: &'static str,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, AppError> {
        let result = call
            .instrument(tracing::info_span!(
                "provider fetch",
                provider = provider.as_str(),
                operation,
            ))
            .await;
        self.metrics.observe(provider, operation, &result);
        result.map_err(provider_error)
    }

    /// Step 1, committed on its own: the operation as pending.
    pub async fn begin(
        &self,
        conn: &mut PgConnection,
        tenant: TenantId,
        account: &AccountName,
        kind: OpKind,
        coffer_id: Uuid,
        idempotency: Option<(&str, &str)>,
    ) -> Result<Started, AppError> {
        Ok(
            match store::begin_operation(
                conn,
                tenant,
                account.as_str(),
                kind.as_str(),
                coffer_id,
                idempotency,
            )
            .await?
            {
                Begun::Call(row) => Started::Call(Op::from_row(row)?),
                Begun::Existing(row) => Started::Existing(Op::from_row(row)?),
            },
        )
    }

    /// Step 3 for a failed call: `failed` when the provider refused or nothing happened,
    /// `unknown` otherwise; returns the error to answer with.
    async fn failed(&self, op: &Op, error: ProviderError) -> AppError {
        let (status, failure) = match &error {
            ProviderError::Definitive { code, .. } => (OpStatus::Failed, code.as_str()),
            ProviderError::Retryable { .. } => (OpStatus::Failed, "retryable"),
            ProviderError::Unknown { .. } => (OpStatus::Unknown, "unknown"),
        };
        let recorded = match self.pool.acquire().await {
            Ok(mut conn) => store::record_outcome(
                &mut conn,
                op.tenant,
                op.id,
                op.generation,
                status.as_str(),
                None,
                Some(failure),
            )
            .await
            .map(|_| ()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = recorded {
            // The row stays pending, which the resolver treats as unknown once due.
            tracing::warn!(error = %e, "could not record a provider operation's failure");
        }
        provider_error(error)
    }

    /// Step 3 for a success, inside the transaction `tx` that applies it.
    pub async fn succeeded(
        &self,
        tx: &mut PgConnection,
        op: &Op,
        account: &AccountName,
        provider_id: &str,
    ) -> Result<(), AppError> {
        store::record_outcome(
            tx,
            op.tenant,
            op.id,
            op.generation,
            OpStatus::Succeeded.as_str(),
            Some(provider_id),
            None,
        )
        .await?;
        store::insert_provider_object(
            tx,
            op.tenant,
            account.as_str(),
            op.kind.object().as_str(),
            op.coffer_id,
            provider_id,
        )
        .await?;
        Ok(())
    }

    /// Step 3 for a pushed batch of usage, inside the transaction `tx` that advances its
    /// cursors: the operation succeeded, naming no provider object (`batch` is Coffer's).
    pub async fn pushed(
        &self,
        tx: &mut PgConnection,
        op: &Op,
        batch: &str,
    ) -> Result<(), AppError> {
        store::record_outcome(
            tx,
            op.tenant,
            op.id,
            op.generation,
            OpStatus::Succeeded.as_str(),
            Some(batch),
            None,
        )
        .await?;
        Ok(())
    }

    /// Settles an operation whose outcome is not known by fetching its object by Coffer's id:
    /// the object if the provider has it (the operation is then recorded and applied), `None`
    /// if it does not (the operation is recorded failed, so the next attempt is a new
    /// generation).
    pub async fn settle(
        &self,
        op: &Op,
        account: &Resolved,
    ) -> Result<Option<ProviderObject>, AppError> {
        let provider = account.for_op(Operation::FetchObject)?;
        let found = self
            .fetch(
                account.kind,
                "fetch_object",
                provider.fetch_object(&account.name, op.kind.object(), op.coffer_id),
            )
            .await?;
        let mut conn = self.pool.acquire().await?;
        match &found {
            None => {
                let mut tx = conn.begin().await?;
                store::record_outcome(
                    &mut tx,
                    op.tenant,
                    op.id,
                    op.generation,
                    OpStatus::Failed.as_str(),
                    None,
                    Some("not_found_on_provider"),
                )
                .await?;
                // A refund the provider never made holds no money: its amount is free again.
                if op.kind == OpKind::Refund {
                    payments::fail_refund(
                        &mut tx,
                        op.tenant,
                        RefundId::from_uuid(op.coffer_id),
                        "not_found_on_provider",
                    )
                    .await?;
                }
                tx.commit()
                    .await
                    .map_err(|e| AppError::from_commit(e.into()))?;
            }
            Some(object) => {
                let mut tx = conn.begin().await?;
                self.apply(&mut tx, op, &account.name, object).await?;
                tx.commit()
                    .await
                    .map_err(|e| AppError::from_commit(e.into()))?;
            }
        }
        Ok(found)
    }

    /// Records `object` as `op`'s outcome and applies it to Coffer's object, in `tx`.
    pub async fn apply(
        &self,
        tx: &mut PgConnection,
        op: &Op,
        account: &AccountName,
        object: &ProviderObject,
    ) -> Result<(), AppError> {
        // The object's own rows are locked first, then the journal's and `provider_objects`'
        // (`succeeded`): the order an inbox worker applying the same object's event takes, so
        // an answer and its event racing each other wait in line instead of deadlocking.
        match object {
            ProviderObject::Customer { id }
            | ProviderObject::Price { id }
            | ProviderObject::Meter { id } => self.succeeded(tx, op, account, id).await,
            ProviderObject::CheckoutSession(session) => {
                apply_checkout(tx, op.tenant, CheckoutId::from_uuid(op.coffer_id), session).await?;
                self.succeeded(tx, op, account, &session.id).await
            }
            ProviderObject::Refund(refund) => {
                payments::apply_refund(tx, op.tenant, refund).await?;
                self.succeeded(tx, op, account, &refund.id).await
            }
            // No operation makes these yet; recorded and applied all the same.
            ProviderObject::Payment(payment) => {
                payments::apply_payment(tx, op.tenant, payment).await?;
                self.succeeded(tx, op, account, &payment.id).await
            }
            ProviderObject::Subscription(sub) => {
                super::subscriptions::apply_subscription(tx, op.tenant, sub).await?;
                self.succeeded(tx, op, account, &sub.id).await
            }
            ProviderObject::Dispute(dispute) => {
                payments::apply_dispute(tx, op.tenant, dispute).await?;
                self.succeeded(tx, op, account, &dispute.id).await
            }
        }
    }

    /// One pass of the resolver: settles up to `limit` due operations. Returns how many it
    /// looked at.
    pub async fn resolve_due(&self, providers: &Providers, limit: i64) -> Result<usize, AppError> {
        let rows = {
            let mut conn = self.pool.acquire().await?;
            store::claim_unresolved(&mut conn, limit).await?
        };
        let n = rows.len();
        for row in rows {
            let account = row.account.clone();
            let op = Op::from_row(row)?;
            let outcome = async {
                let name = AccountName::parse(&account)
                    .map_err(|e| AppError::internal(format!("journal account: {}", e.0)))?;
                let resolved = providers.resolve(op.tenant, Some(&name)).await?;
                self.settle(&op, &resolved).await
            }
            .await;
            match outcome {
                Ok(found) => tracing::info!(
                    operation = %op.id,
                    kind = op.kind.as_str(),
                    found = found.is_some(),
                    "settled a provider operation"
                ),
                Err(e) => tracing::warn!(
                    operation = %op.id,
                    error = %e,
                    "could not settle a provider operation; will retry"
                ),
            }
        }
        Ok(n)
    }
}

/// Applies the provider's view of a session (with its payment and subscription, when the
/// answer carries them) to Coffer's rows: `payments::apply_checkout`, the one applier.
pub async fn apply_checkout(
    tx: &mut PgConnection,
    tenant: TenantId,
    id: CheckoutId,
    s: &ProviderCheckout,
) -> Result<(), AppError> {
    Ok(payments::apply_checkout(tx, tenant, id, s).await?)
}

/// A provider failure as the caller sees it: a definitive refusal is FAILED_PRECONDITION
/// (`PROVIDER_REJECTED`, stored under the idempotency key); the rest say retry.
pub fn provider_error(error: ProviderError) -> AppError {
    match error {
        ProviderError::Definitive {
            code,
            message,
            decline_code,
        } => AppError::Rejected(Rejection {
            kind: RejectionKind::FailedPrecondition,
            reason: REASON_PROVIDER_REJECTED.to_owned(),
            message: format!("the payment provider refused the request ({code}): {message}"),
            metadata: [
                ("provider_code", Some(code)),
                ("decline_code", decline_code),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect(),
        }),
        other => AppError::Provider(other),
    }
}

/// The resolver worker: settles unknown outcomes every `interval` until `stop`.
pub async fn run_resolver(
    journal: Journal,
    providers: Providers,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if let Err(e) = journal.resolve_due(&providers, 100).await {
            tracing::warn!(error = %e, "the provider operation resolver failed a pass");
        }
    }
}
