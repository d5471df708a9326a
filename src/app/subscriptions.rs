//! The Subscriptions service's use cases: the plan catalogue (create, get, list, archive), and
//! subscriptions — read and listed, and applied from the provider's state
//! ([`apply_subscription`], used by the inbox and the journal alike), and changed by the
//! lifecycle calls ([`Subscriptions::change`]: cancel, undo a scheduled cancel, pause and
//! resume collection), each through the provider and the journal.

use sqlx::{Connection as _, PgPool};
use uuid::Uuid;

use crate::store::replica::ReadPool;

use super::customers::now_micros;
use super::idempotency::{Done, Fingerprint, IdempotentCall, Mutations};
use super::journal::provider_error;
use super::journal::{CallFailed, Journal, OpKind, OpStatus, Started};
use super::mirror::{Mirror, mirrored};
use super::page::{self, Page};
use super::providers::{Providers, Resolved};
use super::{AppError, Rejection, RejectionKind, TenantCtx};
use crate::domain::Violations;
use crate::domain::account::AccountName;
use crate::domain::customer::CustomerRef;
use crate::domain::idempotency::IdempotencyKey;
use crate::domain::ids::PriceId;
use crate::domain::ids::{CheckoutId, KeyId, PlanId, SubscriptionId, TenantId};
use crate::domain::meter::Aggregation;
use crate::domain::page::{FilterDigest, PageSize};
use crate::domain::plan::Billing;
use crate::domain::plan::{self, NewPlan, Plan, PlanRef};
use crate::domain::proration::Behavior;
use crate::domain::subscription::{
    Change, DunningEnd, Effective, IllegalChange, Lifecycle, MAX_CANCEL_REASON, PlanChange,
    Subscription, SubscriptionStatus,
};
use crate::providers::{
    ObjectKind, Operation, PAYMENT_METHOD_REQUIRED, PlanChangePreview, ProviderError,
    ProviderObject, ProviderSubscription, SubscriptionRequest, SubscriptionUpdate,
};
use crate::store::{audit, meters as meter_store, plans as store};
use crate::store::{
    checkout as checkout_store, customers as customer_store, journal as journal_store,
    subscriptions as sub_store,
};
use sqlx::PgConnection;

use super::payments::{ApplyError, lock_visible, refused};

pub const REASON_PLAN_NOT_FOUND: &str = "PLAN_NOT_FOUND";
pub const REASON_SUBSCRIPTION_NOT_FOUND: &str = "SUBSCRIPTION_NOT_FOUND";
pub const REASON_PLAN_KEY_TAKEN: &str = "PLAN_KEY_TAKEN";
pub const REASON_ILLEGAL_SUBSCRIPTION_TRANSITION: &str = "ILLEGAL_SUBSCRIPTION_TRANSITION";
pub const REASON_SUBSCRIPTION_HAS_NO_PRICE: &str = "SUBSCRIPTION_HAS_NO_PRICE";
pub const REASON_PAYMENT_METHOD_REQUIRED: &str = "PAYMENT_METHOD_REQUIRED";

/// The idempotency scope ("method") of the cancels Coffer makes itself when a provider's
/// retries ran out: keys apart from every RPC's, so no caller's key can collide with them.
const DUNNING_END: &str = "coffer.internal/DunningEnd";
/// The cancel reason Coffer gives the provider then.
const DUNNING_END_REASON: &str = "payment retries exhausted (dunning_end = canceled)";

/// How a refusal of Coffer's own dunning cancel is stored: its reason alone. No client ever
/// replays these keys (their scope is no RPC's), so the transport's encoding is not needed.
fn internal_refusal(r: &Rejection) -> Vec<u8> {
    r.reason.clone().into_bytes()
}

/// The list a page token of ListPlans belongs to.
const LIST: &str = "coffer.v1.Subscriptions/ListPlans";
const LIST_SUBSCRIPTIONS: &str = "coffer.v1.Subscriptions/ListSubscriptions";

/// A plan change as asked, before its price is looked up.
#[derive(Debug, Clone)]
pub struct PlanChangeAsk {
    pub price: PriceId,
    pub quantity: u32,
    pub proration: Behavior,
    pub effective: Effective,
    pub proration_time: Option<time::OffsetDateTime>,
}

/// A CreateSubscription as asked, its fields well formed.
#[derive(Debug, Clone)]
pub struct NewSubscriptionAsk {
    pub customer: crate::domain::ids::CustomerId,
    pub price: PriceId,
    pub quantity: u32,
    /// `None`: the price's own trial.
    pub trial_days: Option<crate::domain::subscription::TrialDays>,
    pub account: Option<AccountName>,
}

/// Filters and position of a ListSubscriptions call.
#[derive(Debug, Clone)]
pub struct SubscriptionQuery {
    pub customer: Option<CustomerRef>,
    pub status: Option<SubscriptionStatus>,
    pub page_size: PageSize,
    pub page_token: Option<String>,
}

/// Filters and position of a ListPlans call.
#[derive(Debug, Clone)]
pub struct PlanQuery {
    /// Archived plans too, not only the ones that can be bought.
    pub show_archived: bool,
    pub page_size: PageSize,
    pub page_token: Option<String>,
}

/// The Subscriptions service's use cases.
#[derive(Clone)]
pub struct Subscriptions {
    pool: PgPool,
    /// Lag-tolerant reads (List*, GetUsage, GetBalance): the read replica while it is within
    /// its bound, else `pool`.
    reads: ReadPool,
    mutations: Mutations,
    providers: Providers,
    journal: Journal,
}

impl Subscriptions {
    /// Sends lag-tolerant reads to `reads` (the app's [`ReadPool`]).
    pub(crate) fn set_reads(&mut self, reads: ReadPool) {
        self.reads = reads;
    }

    pub fn new(pool: PgPool, mutations: Mutations, providers: Providers, journal: Journal) -> Self {
        Self {
            reads: ReadPool::primary_only(pool.clone()),
            pool,
            mutations,
            providers,
            journal,
        }
    }

    /// Makes a lifecycle change (cancel, undo a scheduled cancel, pause or resume collection)
    /// through the subscription's provider, journaled, and answers the subscription after it.
    /// The change is judged by the domain's rules first: an illegal one is
    /// FAILED_PRECONDITION (`ILLEGAL_SUBSCRIPTION_TRANSITION`) naming the current status, and
    /// nothing is written or sent.
    #[tracing::instrument(skip_all)]
    pub async fn change(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        id: SubscriptionId,
        change: Change,
    ) -> Result<Done<Subscription>, AppError> {
        self.change_as(ctx.tenant, Some(ctx.key), call, id, change)
            .await
    }

    /// [`Subscriptions::change`] made by `actor`, the API key audited with it; `None` for a
    /// change Coffer makes on its own (the end of a provider's dunning).
    async fn change_as(
        &self,
        tenant: TenantId,
        actor: Option<KeyId>,
        call: Option<IdempotentCall>,
        id: SubscriptionId,
        change: Change,
    ) -> Result<Done<Subscription>, AppError> {
        let this = self.clone();
        self.mutations
            .run_external_for(tenant, call, move |call| async move {
                this.change_attempt(tenant, actor, call, id, change).await
            })
            .await
    }

    async fn change_attempt(
        &self,
        tenant: TenantId,
        actor: Option<KeyId>,
        call: Option<IdempotentCall>,
        id: SubscriptionId,
        change: Change,
    ) -> Result<Subscription, AppError> {
        let mut conn = self.pool.acquire().await?;
        let sub = sub_store::find_subscription(&mut conn, tenant, id)
            .await?
            .ok_or_else(subscription_not_found)?;
        let name = AccountName::parse(&sub.account)
            .map_err(|e| AppError::internal(format!("stored account: {}", e.0)))?;
        let account = self.providers.resolve(tenant, Some(&name)).await?;
        // Resuming a PAUSED subscription is another call than resuming paused collection.
        let change = match change {
            Change::ResumeCollection => Change::resume_of(sub.status),
            other => other,
        };
        let provider = account.for_op(Operation::of_change(&change))?;
        // A plan change names the provider's price, mirrored on first use; no connection is
        // held while the provider is called.
        let mut change = change;
        if let Change::ChangePlan(plan) = &mut change
            && plan.provider_price.is_empty()
        {
            drop(conn);
            // Coffer asks for no plan change of its own: one always has its caller.
            let key = actor.ok_or_else(|| AppError::internal("a plan change without a caller"))?;
            let ctx = TenantCtx { tenant, key };
            plan.provider_price = self.provider_price(&ctx, &account, plan.price).await?;
            conn = self.pool.acquire().await?;
        }
        let idempotency = call.as_ref().map(|c| (c.method, c.key.as_str()));
        let earlier = match idempotency {
            Some((method, key)) => {
                journal_store::find_by_idempotency_key(&mut conn, tenant, method, key).await?
            }
            None => None,
        };
        // A change already made under this key is answered, not judged again.
        let made = earlier
            .as_ref()
            .is_some_and(|row| row.status == OpStatus::Succeeded.as_str());
        if !made {
            let now = self.providers.now(tenant, &account).await?;
            sub.lifecycle()
                .apply(&change, now)
                .map_err(|e| illegal_change(&e))?;
        }
        let change_id = earlier
            .map(|row| row.coffer_id)
            .unwrap_or_else(Uuid::now_v7);
        let started = self
            .journal
            .begin(
                &mut conn,
                tenant,
                &account.name,
                OpKind::UpdateSubscription,
                change_id,
                idempotency,
            )
            .await?;
        // No connection is held while the provider is called.
        drop(conn);
        let op = match started {
            Started::Call(op) => op,
            Started::Existing(op) => {
                // Pending or unknown: the provider knows whether it made the change. If it did
                // not, the operation is failed and the change is asked again (a new
                // generation).
                if op.status != OpStatus::Succeeded
                    && self.journal.settle(&op, &account).await?.is_none()
                {
                    return Box::pin(self.change_attempt(tenant, actor, call, id, change)).await;
                }
                return self.find_subscription(tenant, id).await;
            }
        };
        let plan = match &change {
            Change::ChangePlan(plan) => Some(plan.clone()),
            _ => None,
        };
        let verb = match &change {
            Change::Cancel {
                at_period_end: false,
                ..
            } => "subscription.canceled",
            Change::Cancel { .. } => "subscription.cancel_scheduled",
            Change::UndoCancel => "subscription.cancel_undone",
            Change::PauseCollection => "subscription.collection_paused",
            Change::ResumeCollection => "subscription.collection_resumed",
            Change::Resume => "subscription.resumed",
            Change::ChangePlan(PlanChange {
                effective: Effective::Now,
                ..
            }) => "subscription.plan_changed",
            Change::ChangePlan(_) => "subscription.plan_change_scheduled",
        };
        let sent = provider.update_subscription(
            &account.name,
            SubscriptionUpdate {
                client_reference: change_id,
                idempotency_key: op.idempotency_key(),
                subscription: sub.provider_subscription_id.clone(),
                change,
            },
        );
        let changed = match self.journal.call(&op, account.kind, sent).await {
            Ok(changed) => changed,
            // Resuming a PAUSED subscription charges the card on file: without one it is
            // refused, as CreateSubscription without a card or trial is.
            Err(CallFailed {
                cause: ProviderError::Definitive { code, .. },
                ..
            }) if code == PAYMENT_METHOD_REQUIRED => {
                return Err(AppError::rejected(
                    RejectionKind::FailedPrecondition,
                    REASON_PAYMENT_METHOD_REQUIRED,
                    "the customer has no payment method on file to charge the resumed period",
                ));
            }
            Err(failed) => return Err(failed.into()),
        };
        // A provider that reports its price (Stripe, Polar) had it applied with its answer.
        let reports_price = changed.price.is_some();
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        self.journal
            .apply(
                &mut tx,
                &op,
                &account.name,
                &ProviderObject::Subscription(changed),
            )
            .await?;
        // A provider that takes amounts inline (the sandbox) reports no price: a plan change's
        // price and quantity are written here, in the same transaction. A change at the
        // period's end is kept for the renewal that starts the next period, which
        // apply_subscription applies.
        if let Some(plan) = &plan {
            match plan.effective {
                Effective::Now if reports_price => {}
                Effective::Now => {
                    sub_store::set_subscription_price(
                        &mut tx,
                        tenant,
                        id,
                        plan.price,
                        plan.quantity,
                    )
                    .await?
                }
                Effective::PeriodEnd => {
                    sub_store::schedule_price(&mut tx, tenant, id, plan.price, plan.quantity)
                        .await?
                }
            }
        }
        audit::insert_audit(&mut tx, tenant, actor, verb, "subscription", id.as_uuid()).await?;
        tx.commit()
            .await
            .map_err(|e| AppError::from_commit(e.into()))?;
        drop(conn);
        self.find_subscription(tenant, id).await
    }

    /// Ends a subscription's dunning the tenant's way where its provider stopped retrying and
    /// left it PAST_DUE (Stripe's "leave the subscription past-due") or UNPAID (Stripe's "mark
    /// as unpaid"; decision 0034). With
    /// `dunning_end = "canceled"` Coffer cancels it now on the provider, through the lifecycle's
    /// own cancel (journaled, audited with no key), once: under an idempotency key of its own
    /// per subscription (the journal remembers it for good), and only while Coffer's row is
    /// not already final. With `"unpaid"`, which no provider's API can set, nothing is sent:
    /// the subscription stays as the provider left it (PAST_DUE: CheckAccess has denied it
    /// since its grace period ended; UNPAID: denied). A subscription Coffer does not know is
    /// left alone.
    pub async fn end_dunning(
        &self,
        tenant: TenantId,
        account: &AccountName,
        s: &ProviderSubscription,
        end: DunningEnd,
    ) -> Result<(), AppError> {
        if !s.retries_exhausted || end != DunningEnd::Canceled {
            return Ok(());
        }
        let known = {
            let mut conn = self.pool.acquire().await?;
            journal_store::find_coffer_object(
                &mut conn,
                tenant,
                account.as_str(),
                ObjectKind::Subscription.as_str(),
                &s.id,
            )
            .await?
        };
        let Some(id) = known.map(SubscriptionId::from_uuid) else {
            tracing::warn!(
                account = account.as_str(),
                "a provider's dunning ended for a subscription Coffer does not know; left alone"
            );
            return Ok(());
        };
        let current = self.find_subscription(tenant, id).await?;
        if matches!(
            current.status,
            SubscriptionStatus::Canceled | SubscriptionStatus::IncompleteExpired
        ) {
            return Ok(());
        }
        let key = IdempotencyKey::parse(&format!("dunning-end-{}", id.as_uuid()))
            .map_err(|e| AppError::internal(format!("dunning key: {}", e.0)))?;
        let call = IdempotentCall {
            key,
            method: DUNNING_END,
            fingerprint: Fingerprint::of(b"cancel now"),
            encode_refusal: internal_refusal,
        };
        let change = Change::Cancel {
            at_period_end: false,
            reason: DUNNING_END_REASON.to_owned(),
        };
        let done = self.change_as(tenant, None, Some(call), id, change).await?;
        tracing::info!(
            subscription = %id,
            status = done.value.status.as_str(),
            replayed = done.replayed,
            "the provider's retries ran out: canceled, as the tenant's dunning_end says"
        );
        Ok(())
    }

    /// A subscription of the tenant, by id.
    async fn find_subscription(
        &self,
        tenant: TenantId,
        id: SubscriptionId,
    ) -> Result<Subscription, AppError> {
        let mut conn = self.pool.acquire().await?;
        sub_store::find_subscription(&mut conn, tenant, id)
            .await?
            .ok_or_else(subscription_not_found)
    }

    /// Creates a subscription without a checkout (CreateSubscription), through the account's
    /// provider and the journal, as the lifecycle changes are: what is asked is recorded under
    /// the subscription's id first, so whoever applies the provider's answer (this call, its
    /// event, or the resolver settling an unknown outcome) makes the same row.
    #[tracing::instrument(skip_all)]
    pub async fn create(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        ask: NewSubscriptionAsk,
    ) -> Result<Done<Subscription>, AppError> {
        let this = self.clone();
        let ctx = *ctx;
        self.mutations
            .run_external(&ctx, call, move |call| async move {
                this.create_attempt(ctx, call, ask).await
            })
            .await
    }

    async fn create_attempt(
        &self,
        ctx: TenantCtx,
        call: Option<IdempotentCall>,
        ask: NewSubscriptionAsk,
    ) -> Result<Subscription, AppError> {
        let account = self
            .providers
            .resolve(ctx.tenant, ask.account.as_ref())
            .await?;
        let provider = account.for_op(Operation::CreateSubscription)?;
        let mut conn = self.pool.acquire().await?;
        let customer =
            customer_store::find_customer(&mut conn, ctx.tenant, &CustomerRef::Id(ask.customer))
                .await?
                .ok_or_else(|| {
                    AppError::not_found(
                        super::checkout::REASON_CUSTOMER_NOT_FOUND,
                        "customer not found",
                    )
                })?;
        let prices =
            store::find_prices_for_sale(&mut conn, ctx.tenant, &[ask.price.as_uuid()]).await?;
        let sale = prices.get(&ask.price.as_uuid()).ok_or_else(|| {
            AppError::not_found(super::checkout::REASON_PRICE_NOT_FOUND, "price not found")
        })?;
        let bad = |why: &str| AppError::Invalid(Violations::single("price_id", why.to_owned()));
        if sale.archived {
            return Err(bad("its plan is archived"));
        }
        let Billing::Recurring { trial_days, .. } = sale.price.billing else {
            return Err(bad("must be a recurring price"));
        };
        if sale.price.meter.is_some() {
            return Err(bad("a metered price is bought by checkout"));
        }
        if sale
            .price
            .money
            .amount()
            .checked_mul(i64::from(ask.quantity))
            .is_none()
        {
            return Err(AppError::Invalid(Violations::single(
                "quantity",
                "is too large".to_owned(),
            )));
        }
        let trial_days = ask.trial_days.map(|t| t.get()).unwrap_or(trial_days);
        let idempotency = call.as_ref().map(|c| (c.method, c.key.as_str()));
        let earlier = match idempotency {
            Some((method, key)) => {
                journal_store::find_by_idempotency_key(&mut conn, ctx.tenant, method, key).await?
            }
            None => None,
        };
        let id = earlier
            .as_ref()
            .map(|row| SubscriptionId::from_uuid(row.coffer_id))
            .unwrap_or_else(SubscriptionId::generate);
        if earlier
            .as_ref()
            .is_some_and(|row| row.status == OpStatus::Succeeded.as_str())
        {
            drop(conn);
            return self.get_subscription(&ctx, id).await;
        }
        drop(conn);
        // No connection is held while the provider is called: the customer and the price may
        // be made there.
        let provider_customer = mirrored(
            &self.pool,
            &self.journal,
            ctx,
            &account,
            Mirror::Customer(&customer),
        )
        .await?;
        let provider_price = mirrored(
            &self.pool,
            &self.journal,
            ctx,
            &account,
            Mirror::Price {
                id: ask.price,
                name: &sale.plan_name,
                unit: sale.price.money,
                billing: sale.price.billing,
                meter: None,
            },
        )
        .await?;
        let mut conn = self.pool.acquire().await?;
        sub_store::insert_creation(
            &mut conn,
            ctx.tenant,
            id,
            &sub_store::Creation {
                customer: customer.id,
                price: ask.price,
                quantity: ask.quantity,
                account: account.name.as_str().to_owned(),
            },
        )
        .await?;
        let started = self
            .journal
            .begin(
                &mut conn,
                ctx.tenant,
                &account.name,
                OpKind::CreateSubscription,
                id.as_uuid(),
                idempotency,
            )
            .await?;
        drop(conn);
        let op = match started {
            Started::Call(op) => op,
            Started::Existing(op) => {
                // Pending or unknown: the provider knows whether it made the subscription. If
                // it did not, the operation is failed and asked again (a new generation).
                if op.status != OpStatus::Succeeded
                    && self.journal.settle(&op, &account).await?.is_none()
                {
                    return Box::pin(self.create_attempt(ctx, call, ask)).await;
                }
                return self.get_subscription(&ctx, id).await;
            }
        };
        let sent = provider.create_subscription(
            &account.name,
            SubscriptionRequest {
                client_reference: id.as_uuid(),
                idempotency_key: op.idempotency_key(),
                customer: provider_customer,
                provider_price,
                unit: sale.price.money,
                billing: sale.price.billing,
                quantity: ask.quantity,
                trial_days,
            },
        );
        let made = match self.journal.call(&op, account.kind, sent).await {
            Ok(made) => made,
            Err(CallFailed {
                cause: ProviderError::Definitive { code, .. },
                ..
            }) if code == PAYMENT_METHOD_REQUIRED => {
                return Err(AppError::rejected(
                    RejectionKind::FailedPrecondition,
                    REASON_PAYMENT_METHOD_REQUIRED,
                    "the customer has no payment method on file (from an earlier checkout) \
                     and the subscription has no trial",
                ));
            }
            Err(failed) => return Err(failed.into()),
        };
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        self.journal
            .apply(
                &mut tx,
                &op,
                &account.name,
                &ProviderObject::Subscription(made.subscription),
            )
            .await?;
        // The first period's charge, made with it: shown at once, not only once its event
        // arrives.
        if let Some(payment) = &made.payment {
            super::payments::apply_payment(&mut tx, ctx.tenant, payment).await?;
        }
        audit::insert_audit(
            &mut tx,
            ctx.tenant,
            Some(ctx.key),
            "subscription.created",
            "subscription",
            id.as_uuid(),
        )
        .await?;
        tx.commit()
            .await
            .map_err(|e| AppError::from_commit(e.into()))?;
        drop(conn);
        self.get_subscription(&ctx, id).await
    }

    /// The plan change a ChangeSubscriptionPlan or PreviewPlanChange asks, its price checked:
    /// a recurring price of the tenant's plans (not archived), in the subscription's currency
    /// and billed at its interval, else INVALID_ARGUMENT naming `price_id`.
    pub async fn plan_change(
        &self,
        ctx: &TenantCtx,
        id: SubscriptionId,
        ask: PlanChangeAsk,
    ) -> Result<PlanChange, AppError> {
        let mut conn = self.pool.acquire().await?;
        let sub = sub_store::find_subscription(&mut conn, ctx.tenant, id)
            .await?
            .ok_or_else(subscription_not_found)?;
        if let Some(t) = ask.proration_time
            && (t < sub.current_period_start || t > sub.current_period_end)
        {
            return Err(AppError::Invalid(Violations::single(
                "proration_time",
                "must lie within the current period",
            )));
        }
        let Some(current) = sub.price else {
            return Err(AppError::rejected(
                RejectionKind::FailedPrecondition,
                REASON_SUBSCRIPTION_HAS_NO_PRICE,
                "the subscription names no price to change from",
            ));
        };
        let prices = store::find_prices_for_sale(
            &mut conn,
            ctx.tenant,
            &[current.as_uuid(), ask.price.as_uuid()],
        )
        .await?;
        let bad = |why: &str| AppError::Invalid(Violations::single("price_id", why.to_owned()));
        let new = prices
            .get(&ask.price.as_uuid())
            .ok_or_else(|| bad("no such price among the tenant's plans"))?;
        let old = prices
            .get(&current.as_uuid())
            .ok_or_else(|| AppError::internal("a subscription's price is missing"))?;
        if new.archived {
            return Err(bad("its plan is archived"));
        }
        let (
            Billing::Recurring {
                interval, count, ..
            },
            Billing::Recurring {
                interval: was,
                count: was_count,
                ..
            },
        ) = (new.price.billing, old.price.billing)
        else {
            return Err(bad("must be a recurring price"));
        };
        if new.price.money.currency() != old.price.money.currency() {
            return Err(bad("must be in the subscription's currency"));
        }
        if (interval, count) != (was, was_count) {
            return Err(bad("must bill at the subscription's interval"));
        }
        let new_total = new
            .price
            .money
            .amount()
            .checked_mul(i64::from(ask.quantity))
            .ok_or_else(|| {
                AppError::Invalid(Violations::single("quantity", "is too large".to_owned()))
            })?;
        Ok(PlanChange {
            price: ask.price,
            provider_price: String::new(),
            quantity: ask.quantity,
            new_total,
            proration: ask.proration,
            effective: ask.effective,
            proration_time: ask.proration_time,
        })
    }

    /// What a plan change would charge now, by the subscription's provider, with nothing
    /// written or changed; refused as the change would be.
    #[tracing::instrument(skip_all)]
    pub async fn preview_plan_change(
        &self,
        ctx: &TenantCtx,
        id: SubscriptionId,
        plan: PlanChange,
    ) -> Result<PlanChangePreview, AppError> {
        let sub = self.get_subscription(ctx, id).await?;
        let name = AccountName::parse(&sub.account)
            .map_err(|e| AppError::internal(format!("stored account: {}", e.0)))?;
        let account = self.providers.resolve(ctx.tenant, Some(&name)).await?;
        let provider = account.for_op(Operation::PreviewPlanChange)?;
        let mut plan = plan;
        plan.provider_price = self.provider_price(ctx, &account, plan.price).await?;
        let change = Change::ChangePlan(plan);
        let now = self.providers.now(ctx.tenant, &account).await?;
        sub.lifecycle()
            .apply(&change, now)
            .map_err(|e| illegal_change(&e))?;
        let Change::ChangePlan(plan) = &change else {
            unreachable!("made above")
        };
        provider
            .preview_plan_change(&account.name, &sub.provider_subscription_id, plan)
            .await
            .map_err(provider_error)
    }

    /// The provider's id of a plan change's price on `account`, mirrored the first time
    /// (`app::mirror`), for providers whose subscriptions name price objects (Stripe's
    /// prices, Polar's products); empty for the ones that take amounts inline (the sandbox).
    async fn provider_price(
        &self,
        ctx: &TenantCtx,
        account: &Resolved,
        price: PriceId,
    ) -> Result<String, AppError> {
        if !account.supports(Operation::CreatePrice) {
            return Ok(String::new());
        }
        let mut conn = self.pool.acquire().await?;
        let found = store::find_prices_for_sale(&mut conn, ctx.tenant, &[price.as_uuid()]).await?;
        drop(conn);
        let sale = found
            .get(&price.as_uuid())
            .ok_or_else(|| AppError::internal("a plan change's price is missing"))?;
        if sale.price.meter.is_some() {
            return Err(AppError::Invalid(Violations::single(
                "price_id",
                "a metered price cannot be changed to on this account's provider",
            )));
        }
        let made = mirrored(
            &self.pool,
            &self.journal,
            *ctx,
            account,
            Mirror::Price {
                id: price,
                name: &sale.plan_name,
                unit: sale.price.money,
                billing: sale.price.billing,
                meter: None,
            },
        )
        .await?;
        made.ok_or_else(|| AppError::internal("the provider mirrored no price"))
    }

    /// Creates a plan with its features and prices, in one statement. A key the tenant already
    /// uses is the statement finding the conflict, not a failed insert; the refusal is stored
    /// under the idempotency key like any outcome.
    pub async fn create_plan(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        new: NewPlan,
    ) -> Result<Done<Plan>, AppError> {
        let ctx = *ctx;
        self.check_feature_meters(&ctx, &new).await?;
        let plan = Plan::create(new, now_micros());
        self.mutations
            .run_atomic(&ctx, call, move |conn| {
                Box::pin(async move {
                    // A metered price names a meter of the tenant's; the foreign key would
                    // refuse an unknown one too, but not name the field.
                    let mut unknown = crate::domain::Violations::default();
                    for (i, price) in plan.prices.iter().enumerate() {
                        if let Some(key) = &price.meter
                            && crate::store::meters::find_meter_by_key(conn, ctx.tenant, key)
                                .await?
                                .is_none()
                        {
                            unknown.add(
                                &format!("prices[{i}].meter_key"),
                                "the tenant has no meter with this key",
                            );
                        }
                    }
                    if !unknown.is_empty() {
                        return Err(AppError::Invalid(unknown));
                    }
                    if !store::insert_plan(conn, ctx.tenant, &plan).await? {
                        return Err(AppError::rejected(
                            RejectionKind::AlreadyExists,
                            REASON_PLAN_KEY_TAKEN,
                            "the tenant already has a plan with this key",
                        ));
                    }
                    audit::insert_audit(
                        conn,
                        ctx.tenant,
                        Some(ctx.key),
                        "plan.created",
                        "plan",
                        plan.id.as_uuid(),
                    )
                    .await?;
                    Ok(plan)
                })
            })
            .await
    }

    /// Every metered feature names a COUNT or SUM meter of the tenant; otherwise
    /// INVALID_ARGUMENT naming `features[i].meter_key`. Read before the plan's transaction:
    /// meters are never deleted, so one found stays.
    async fn check_feature_meters(&self, ctx: &TenantCtx, new: &NewPlan) -> Result<(), AppError> {
        let keys: Vec<String> = new
            .features
            .iter()
            .filter_map(|f| f.metered.as_ref().map(|m| m.meter.as_str().to_owned()))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool.acquire().await?;
        let found = meter_store::find_meter_aggregations(&mut conn, ctx.tenant, &keys).await?;
        let bad = plan::check_meters(&new.features, |key| {
            found
                .iter()
                .find(|(k, _)| k == key.as_str())
                .map(|(_, a)| matches!(a, Aggregation::Count | Aggregation::Sum))
        });
        let mut v = Violations::new();
        for (i, e) in bad {
            v.add(&format!("features[{i}].meter_key"), e.0);
        }
        v.finish().map_err(AppError::Invalid)
    }

    pub async fn get_plan(&self, ctx: &TenantCtx, by: &PlanRef) -> Result<Plan, AppError> {
        let mut conn = self.pool.acquire().await?;
        let found = match by {
            PlanRef::Id(id) => store::find_plan_by_id(&mut conn, ctx.tenant, *id).await?,
            PlanRef::Key(key) => store::find_plan_by_key(&mut conn, ctx.tenant, key).await?,
        };
        found.ok_or_else(not_found)
    }

    /// Archives a plan: it can no longer be bought, and existing subscriptions keep it.
    /// Archiving an archived plan changes nothing and returns it as it is, with the time it was
    /// first archived, so a retry without an idempotency key is harmless too.
    pub async fn archive_plan(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        id: PlanId,
    ) -> Result<Done<Plan>, AppError> {
        let ctx = *ctx;
        self.mutations
            .run_atomic(&ctx, call, move |conn| {
                Box::pin(async move {
                    if store::archive_plan(conn, ctx.tenant, id, now_micros()).await? {
                        audit::insert_audit(
                            conn,
                            ctx.tenant,
                            Some(ctx.key),
                            "plan.archived",
                            "plan",
                            id.as_uuid(),
                        )
                        .await?;
                    }
                    store::find_plan_by_id(conn, ctx.tenant, id)
                        .await?
                        .ok_or_else(not_found)
                })
            })
            .await
    }

    pub async fn list_plans(
        &self,
        ctx: &TenantCtx,
        query: &PlanQuery,
    ) -> Result<Page<Plan>, AppError> {
        let filters = FilterDigest::of(LIST, &[if query.show_archived { "all" } else { "active" }]);
        let after = page::start(query.page_token.as_deref(), filters)?.unwrap_or(uuid::Uuid::nil());
        let mut conn = self.reads.get().acquire().await?;
        let rows = store::list_plans(
            &mut conn,
            ctx.tenant,
            query.show_archived,
            after,
            query.page_size.get() as i64 + 1,
        )
        .await?;
        Ok(Page::of(rows, query.page_size, filters, |p| p.id.as_uuid()))
    }

    pub async fn get_subscription(
        &self,
        ctx: &TenantCtx,
        id: SubscriptionId,
    ) -> Result<Subscription, AppError> {
        let mut conn = self.pool.acquire().await?;
        sub_store::find_subscription(&mut conn, ctx.tenant, id)
            .await?
            .ok_or_else(|| {
                AppError::not_found(REASON_SUBSCRIPTION_NOT_FOUND, "subscription not found")
            })
    }

    pub async fn list_subscriptions(
        &self,
        ctx: &TenantCtx,
        query: &SubscriptionQuery,
    ) -> Result<Page<Subscription>, AppError> {
        let mut conn = self.reads.get().acquire().await?;
        // An external id names a customer; one that names none has no subscriptions.
        let customer = match &query.customer {
            None => None,
            Some(r) => match customer_store::find_customer(&mut conn, ctx.tenant, r).await? {
                Some(c) => Some(c.id),
                None => {
                    return Ok(Page {
                        items: Vec::new(),
                        next_page_token: None,
                    });
                }
            },
        };
        let who = customer.map(|c| c.to_string()).unwrap_or_default();
        let status = query.status.map(SubscriptionStatus::as_str).unwrap_or("");
        let filters = FilterDigest::of(LIST_SUBSCRIPTIONS, &[&who, status]);
        let after = page::start(query.page_token.as_deref(), filters)?.unwrap_or(uuid::Uuid::nil());
        let rows = sub_store::list_subscriptions(
            &mut conn,
            ctx.tenant,
            customer,
            query.status,
            after,
            query.page_size.get() as i64 + 1,
        )
        .await?;
        Ok(Page::of(rows, query.page_size, filters, |s| s.id.as_uuid()))
    }
}

fn not_found() -> AppError {
    AppError::not_found(REASON_PLAN_NOT_FOUND, "plan not found")
}

fn subscription_not_found() -> AppError {
    AppError::not_found(REASON_SUBSCRIPTION_NOT_FOUND, "subscription not found")
}

/// A change the subscription's state refuses: FAILED_PRECONDITION naming its status, in the
/// message and in the metadata (`status`).
fn illegal_change(e: &IllegalChange) -> AppError {
    AppError::Rejected(Rejection {
        kind: RejectionKind::FailedPrecondition,
        reason: REASON_ILLEGAL_SUBSCRIPTION_TRANSITION.to_owned(),
        message: e.to_string(),
        metadata: vec![("status", e.status.as_str().to_owned())],
    })
}

/// A subscription a session or CreateSubscription made: created the first time (with the
/// session's first line item's price and quantity, and named on the session; or with what
/// CreateSubscription asked, recorded under the subscription's id before the provider was
/// called), its state updated after. The client reference is the session's id, or the
/// subscription's own.
pub async fn apply_subscription(
    tx: &mut PgConnection,
    tenant: TenantId,
    s: &ProviderSubscription,
) -> Result<(), ApplyError> {
    // Locked: two appliers of a created subscription racing (the retry settling a lost answer
    // and the resolver, say) would otherwise both see no row and both insert it.
    let (existing, origin) = match sub_store::lock_creation(tx, tenant, s.client_reference).await? {
        Some(creation) => {
            let id = SubscriptionId::from_uuid(s.client_reference);
            (
                sub_store::lock_subscription_versioned(tx, tenant, id).await?,
                Origin::Created(id, creation),
            )
        }
        None => {
            let checkout = CheckoutId::from_uuid(s.client_reference);
            lock_visible(tx, tenant, checkout).await?;
            (
                sub_store::lock_session_subscription(tx, tenant, checkout).await?,
                Origin::Session(checkout),
            )
        }
    };
    let id = match existing {
        Some((current, version)) => {
            if s.version <= version {
                return Ok(());
            }
            let id = current.id;
            // A renewal that starts the next period applies a plan change scheduled for it.
            if s.current_period_start > current.current_period_start {
                sub_store::apply_scheduled_price(tx, tenant, id).await?;
            }
            current
                .status
                .transition(s.status)
                .map_err(|e| refused(format!("subscription {id}: {e}")))?;
            // The provider's flags are the truth; a CANCELED subscription always has its time
            // (a provider that sends none ended it with its period).
            let lifecycle = Lifecycle {
                status: s.status,
                cancel_at_period_end: s.cancel_at_period_end,
                collection_paused: s.collection_paused,
                canceled_at: (s.status == SubscriptionStatus::Canceled)
                    .then(|| s.canceled_at.unwrap_or(s.current_period_end)),
                cancel_reason: s.cancel_reason.chars().take(MAX_CANCEL_REASON).collect(),
            };
            sub_store::update_subscription_state(
                tx,
                tenant,
                id,
                &sub_store::SubscriptionState {
                    lifecycle: &lifecycle,
                    current_period_start: s.current_period_start,
                    current_period_end: s.current_period_end,
                    trial_end: s.trial_end,
                    version: s.version,
                },
            )
            .await?;
            apply_price(tx, tenant, &current, s).await?;
            id
        }
        None => {
            let checkout = match origin {
                Origin::Session(checkout) => checkout,
                Origin::Created(id, c) => {
                    sub_store::insert_subscription(
                        tx,
                        tenant,
                        &sub_store::NewSubscription {
                            id,
                            customer: c.customer,
                            price: Some(c.price),
                            quantity: c.quantity,
                            status: s.status,
                            current_period_start: s.current_period_start,
                            current_period_end: s.current_period_end,
                            trial_end: s.trial_end,
                            account: &c.account,
                            provider_id: &s.id,
                            checkout: None,
                            version: s.version,
                        },
                    )
                    .await?;
                    journal_store::insert_provider_object(
                        tx,
                        tenant,
                        &c.account,
                        ObjectKind::Subscription.as_str(),
                        id.as_uuid(),
                        &s.id,
                    )
                    .await?;
                    tracing::debug!(subscription = %id, status = s.status.as_str(), "subscription created");
                    return Ok(());
                }
            };
            let session = checkout_store::find_session(tx, tenant, checkout)
                .await?
                .ok_or_else(|| refused(format!("no checkout session {checkout}")))?;
            let first = session
                .items
                .first()
                .ok_or_else(|| refused(format!("checkout session {checkout} has no items")))?;
            let id = SubscriptionId::generate();
            sub_store::insert_subscription(
                tx,
                tenant,
                &sub_store::NewSubscription {
                    id,
                    customer: session.customer,
                    price: first.price_id,
                    quantity: first.quantity,
                    status: s.status,
                    current_period_start: s.current_period_start,
                    current_period_end: s.current_period_end,
                    trial_end: s.trial_end,
                    account: &session.account,
                    provider_id: &s.id,
                    checkout: Some(checkout),
                    version: s.version,
                },
            )
            .await?;
            journal_store::insert_provider_object(
                tx,
                tenant,
                &session.account,
                ObjectKind::Subscription.as_str(),
                id.as_uuid(),
                &s.id,
            )
            .await?;
            id
        }
    };
    tracing::debug!(subscription = %id, status = s.status.as_str(), "subscription applied");
    Ok(())
}

/// Where a provider's subscription came from, by its client reference.
enum Origin {
    Session(CheckoutId),
    Created(SubscriptionId, sub_store::Creation),
}

/// The provider's price and quantity of a subscription it reports, written when they differ
/// from Coffer's (a plan change made on the provider, a lost answer settled by fetching, a
/// schedule's next phase): the provider's price is mapped back to Coffer's through the
/// mirrored prices. A provider that names no price (the sandbox takes amounts inline), or a
/// price Coffer did not mirror (one set in the provider's dashboard), leaves Coffer's as it is.
async fn apply_price(
    tx: &mut PgConnection,
    tenant: TenantId,
    current: &Subscription,
    s: &ProviderSubscription,
) -> Result<(), ApplyError> {
    let Some(provider_price) = s.price.as_deref() else {
        return Ok(());
    };
    let Some(price) = journal_store::find_coffer_object(
        tx,
        tenant,
        &current.account,
        ObjectKind::Price.as_str(),
        provider_price,
    )
    .await?
    else {
        // A subscription of an inline line has no Coffer price to map to; one of Coffer's
        // prices moved to a price made elsewhere is worth an operator's look.
        if current.price.is_some() {
            tracing::warn!(
                subscription = %current.id,
                "the provider's subscription charges a price Coffer did not mirror; kept Coffer's"
            );
        }
        return Ok(());
    };
    let price = PriceId::from_uuid(price);
    let quantity = s.quantity.filter(|q| *q > 0).unwrap_or(current.quantity);
    if current.price == Some(price) && current.quantity == quantity {
        return Ok(());
    }
    sub_store::set_subscription_price(tx, tenant, current.id, price, quantity).await?;
    Ok(())
}
