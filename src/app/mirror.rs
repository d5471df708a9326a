//! Objects Coffer makes on a provider the first time something needs them — the customer a
//! checkout is for, and the prices its lines name (on providers whose checkouts take price
//! objects, [`Operation::CreatePrice`]) — once per (account, Coffer id), through the operations
//! journal, and remembered in `provider_objects`.
//!
//! One mechanism for both: the journal's operation is keyed by the Coffer id, so two checkouts
//! racing to mirror the same customer or price make one provider object; the loser waits a
//! little for the winner's answer, or is told to retry.

use std::time::Duration;

use futures_core::future::BoxFuture;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::journal::{Journal, OpKind, OpStatus, Started};
use super::providers::Resolved;
use super::{AppError, TenantCtx};
use crate::domain::account::AccountName;
use crate::domain::customer::Customer;
use crate::domain::ids::PriceId;
use crate::domain::meter::{Aggregation, Meter};
use crate::domain::money::Money;
use crate::domain::plan::Billing;
use crate::providers::{
    CustomerRequest, MeterFormula, MeterRequest, ObjectKind, Operation, PriceRequest, Provider,
    ProviderError, ProviderObject,
};

/// How the provider's meter adds up what Coffer pushes for a meter of `aggregation`: SUM and
/// COUNT push increments (a COUNT's increment is a number of events, so the provider sums
/// it); the others push Coffer's own per-period total, of which the provider keeps the last.
pub fn formula(aggregation: Aggregation) -> MeterFormula {
    match aggregation {
        Aggregation::Sum | Aggregation::Count => MeterFormula::Sum,
        Aggregation::Max | Aggregation::UniqueCount | Aggregation::Latest => MeterFormula::Last,
    }
}

/// How long a call waits for a concurrent one that is making the same object: 50 steps of
/// 50 ms, well inside the work timeout.
const WAIT_STEPS: u32 = 50;
const WAIT_STEP: Duration = Duration::from_millis(50);

/// What to mirror.
#[derive(Debug, Clone, Copy)]
pub enum Mirror<'a> {
    Customer(&'a Customer),
    Price {
        id: PriceId,
        /// The plan's name.
        name: &'a str,
        unit: Money,
        billing: Billing,
        /// The provider's meter of a metered price (mirrored first, as [`Mirror::Meter`]).
        meter: Option<&'a str>,
    },
    /// One of Coffer's meters, as the provider meter its metered prices are billed by.
    Meter(&'a Meter),
}

impl Mirror<'_> {
    fn operation(&self) -> Operation {
        match self {
            Mirror::Customer(_) => Operation::CreateCustomer,
            Mirror::Price { .. } => Operation::CreatePrice,
            Mirror::Meter(_) => Operation::CreateMeter,
        }
    }

    fn op_kind(&self) -> OpKind {
        match self {
            Mirror::Customer(_) => OpKind::CreateCustomer,
            Mirror::Price { .. } => OpKind::CreatePrice,
            Mirror::Meter(_) => OpKind::CreateMeter,
        }
    }

    fn coffer_id(&self) -> Uuid {
        match self {
            Mirror::Customer(c) => c.id.as_uuid(),
            Mirror::Price { id, .. } => id.as_uuid(),
            Mirror::Meter(m) => m.id.as_uuid(),
        }
    }

    /// The provider call that makes it, under the journal's `idempotency_key`.
    fn call<'p>(
        &self,
        provider: &'p dyn Provider,
        account: &'p AccountName,
        idempotency_key: String,
    ) -> BoxFuture<'p, Result<String, ProviderError>> {
        match *self {
            Mirror::Customer(c) => provider.create_customer(
                account,
                CustomerRequest {
                    client_reference: c.id.as_uuid(),
                    idempotency_key,
                    external_id: c.external_id.as_ref().map(|e| e.as_str().to_owned()),
                    email: c.email.as_ref().map(|e| e.as_str().to_owned()),
                    name: c.name.as_ref().map(|n| n.as_str().to_owned()),
                },
            ),
            Mirror::Price {
                id,
                name,
                unit,
                billing,
                meter,
            } => provider.create_price(
                account,
                PriceRequest {
                    client_reference: id.as_uuid(),
                    idempotency_key,
                    name: name.to_owned(),
                    unit,
                    billing,
                    meter: meter.map(str::to_owned),
                },
            ),
            Mirror::Meter(m) => provider.create_meter(
                account,
                MeterRequest {
                    client_reference: m.id.as_uuid(),
                    idempotency_key,
                    name: m
                        .name
                        .as_ref()
                        .map(|n| n.as_str().to_owned())
                        .unwrap_or_else(|| m.key.as_str().to_owned()),
                    formula: formula(m.reading.aggregation()),
                },
            ),
        }
    }
}

/// The provider's id of `what` on `account`, made the first time it is needed. `None` where
/// the account's provider has no such object (PayTabs has no customers; the sandbox takes
/// prices inline).
pub async fn mirrored(
    pool: &PgPool,
    journal: &Journal,
    ctx: TenantCtx,
    account: &Resolved,
    what: Mirror<'_>,
) -> Result<Option<String>, AppError> {
    let operation = what.operation();
    if !account.supports(operation) {
        return Ok(None);
    }
    let provider = account.for_op(operation)?;
    let kind = what.op_kind().object();
    let coffer_id = what.coffer_id();
    let started = {
        let mut conn = pool.acquire().await?;
        if let Some(id) = known(&mut conn, ctx, &account.name, kind, coffer_id).await? {
            return Ok(Some(id));
        }
        journal
            .begin(
                &mut conn,
                ctx.tenant,
                &account.name,
                what.op_kind(),
                coffer_id,
                None,
            )
            .await?
    };
    let op = match started {
        Started::Call(op) => op,
        Started::Existing(op) => {
            if let Some(id) = &op.provider_id {
                return Ok(Some(id.clone()));
            }
            // Pending: another call is making this object right now. Settling it here could
            // call it failed while it is in flight; wait a little for that call to record it
            // (its own call, or the resolver once it is stale, settles it).
            if op.status == OpStatus::Pending {
                for _ in 0..WAIT_STEPS {
                    tokio::time::sleep(WAIT_STEP).await;
                    let mut conn = pool.acquire().await?;
                    if let Some(id) = known(&mut conn, ctx, &account.name, kind, coffer_id).await? {
                        return Ok(Some(id));
                    }
                }
                return Err(AppError::Provider(ProviderError::Retryable {
                    message: format!(
                        "the provider {} is being made by another call",
                        kind.as_str()
                    ),
                    retry_after: Some(Duration::from_secs(1)),
                }));
            }
            return match journal.settle(&op, account).await? {
                Some(
                    ProviderObject::Customer { id }
                    | ProviderObject::Price { id }
                    | ProviderObject::Meter { id },
                ) => Ok(Some(id)),
                // Not made (yet): the next attempt is a new generation.
                _ => Err(AppError::Provider(ProviderError::Retryable {
                    message: format!("the provider {} is still being made", kind.as_str()),
                    retry_after: None,
                })),
            };
        }
    };
    let call = what.call(provider, &account.name, op.idempotency_key());
    let id = journal.call(&op, account.kind, call).await?;
    let mut conn = pool.acquire().await?;
    let mut tx = conn.begin().await?;
    journal.succeeded(&mut tx, &op, &account.name, &id).await?;
    tx.commit()
        .await
        .map_err(|e| AppError::from_commit(e.into()))?;
    Ok(Some(id))
}

/// The provider's id of Coffer's object `coffer_id` of `kind` on `account`, if Coffer has made
/// it there.
async fn known(
    conn: &mut PgConnection,
    ctx: TenantCtx,
    account: &AccountName,
    kind: ObjectKind,
    coffer_id: Uuid,
) -> Result<Option<String>, AppError> {
    Ok(crate::store::journal::find_provider_object(
        conn,
        ctx.tenant,
        account.as_str(),
        kind.as_str(),
        coffer_id,
    )
    .await?)
}
