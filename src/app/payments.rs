//! Payments, refunds and subscriptions: the appliers that bring the provider's view of an
//! object into Coffer's, the inbox handlers that call them for the sandbox's events, and the
//! Payments use cases (Get, List, Refund) and subscription reads.
//!
//! **Appliers.** One per object kind ([`apply_session_state`], [`apply_payment`],
//! [`apply_refund`], and `subscriptions::apply_subscription`), used alike by the inbox handlers, by
//! `VerifyCheckoutSession` and by the journal when it records a provider's answer. Each finds
//! Coffer's object by the provider object's client reference, locks its row (`FOR UPDATE`;
//! always session, then payment, then refund), and applies the provider's state only when its
//! `version` is newer than the stored `provider_version`. So a duplicated event changes
//! nothing, an older one arriving late is ignored, and each effect (a refund's amount added to
//! the payment, a subscription made) happens once. An illegal transition or a reference to an
//! object Coffer does not hold fails the event, which retries and ends `dead` where an
//! operator sees it.
//!
//! **Refunds** never pass the payment's amount: RefundPayment locks the payment, counts what
//! was refunded and what is still pending, and holds its own amount as pending before the
//! provider is called (CHECK constraints back this up). The provider call goes through the
//! operations journal, as checkout's does.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sqlx::{Connection, PgConnection, PgPool};

use crate::store::replica::ReadPool;

use super::customers::now_micros;
use super::idempotency::{Done, IdempotentCall, Mutations};
use super::inbox::{Handler, HandlerError, Handlers, InboxEvent};
use super::journal::{CallFailed, Journal, OpKind, OpStatus, Started};
use super::page::{self, Page};
use super::providers::Providers;
use super::{AppError, RejectionKind, TenantCtx};
use crate::domain::account::{AccountName, ProviderKind};
use crate::domain::checkout::Status;
use crate::domain::ids::{CheckoutId, PaymentId, RefundId, TenantId};
use crate::domain::money::Money;
use crate::domain::page::{FilterDigest, PageSize};
use crate::domain::payment::{
    Payment, PaymentStatus, Refund, RefundReason, RefundStatus, disputed_state, refundable_rest,
};
use crate::providers::sandbox::events::EventType;
use crate::providers::sandbox::wire::{self, SessionState};
use crate::providers::{
    ObjectKind, Operation, PaymentOutcome, ProviderDispute, ProviderError, ProviderPayment,
    ProviderRefund, RefundRequest,
};
use crate::store::{StoreError, audit, checkout as checkout_store};
use crate::store::{journal as journal_store, payments as store, subscriptions as sub_store};

pub const REASON_PAYMENT_NOT_FOUND: &str = "PAYMENT_NOT_FOUND";
pub const REASON_PAYMENT_NOT_REFUNDABLE: &str = "PAYMENT_NOT_REFUNDABLE";
pub const REASON_REFUND_EXCEEDS_PAYMENT: &str = "REFUND_EXCEEDS_PAYMENT";

const LIST_PAYMENTS: &str = "coffer.v1.Checkout/ListPayments";

// ---------------------------------------------------------------------------------------------
// Metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

/// Checkouts created and completed, payments by the status they reached, refunds by the
/// status they reached. Label values are fixed enums, so the series are bounded.
///
/// One set per process ([`metrics`]): the inbox handlers are built before any server and
/// count into it, and each server registers the same families in its registry.
#[derive(Clone, Default)]
pub struct PaymentMetrics {
    checkouts: Family<EventLabels, Counter>,
    payments: Family<StatusLabels, Counter>,
    refunds: Family<StatusLabels, Counter>,
}

static METRICS: LazyLock<PaymentMetrics> = LazyLock::new(PaymentMetrics::default);

/// The process's payment metrics.
pub fn metrics() -> &'static PaymentMetrics {
    &METRICS
}

impl PaymentMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "coffer_checkout_sessions",
            "Checkout sessions by event (created, completed, expired)",
            self.checkouts.clone(),
        );
        registry.register(
            "coffer_payments",
            "Payments reaching each status (provider_pending, succeeded, failed, expired, ...)",
            self.payments.clone(),
        );
        registry.register(
            "coffer_refunds",
            "Refunds reaching each status (pending, succeeded, failed)",
            self.refunds.clone(),
        );
    }

    pub fn checkout(&self, event: &'static str) {
        self.checkouts(event, 1);
    }

    pub fn checkouts(&self, event: &'static str, n: u64) {
        self.checkouts
            .get_or_create(&EventLabels { event })
            .inc_by(n);
    }

    pub fn payment(&self, status: PaymentStatus) {
        self.payments
            .get_or_create(&StatusLabels {
                status: status.as_str(),
            })
            .inc_by(1);
    }

    pub fn payments_expired(&self, n: u64) {
        self.payments
            .get_or_create(&StatusLabels {
                status: PaymentStatus::Expired.as_str(),
            })
            .inc_by(n);
    }

    pub fn refund(&self, status: RefundStatus) {
        self.refunds
            .get_or_create(&StatusLabels {
                status: status.as_str(),
            })
            .inc();
    }
}

// ---------------------------------------------------------------------------------------------
// Appliers

/// Why an applier did not apply the provider's state.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The provider's state names an object Coffer does not hold, or moves one where its
    /// state machine forbids. Never a piece of the payload beyond ids and statuses.
    #[error("{0}")]
    Refused(String),
}

impl From<ApplyError> for HandlerError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Store(e) => HandlerError::Store(e),
            ApplyError::Refused(m) => HandlerError::Failed(m),
        }
    }
}

impl From<ApplyError> for AppError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Store(e) => e.into(),
            ApplyError::Refused(m) => AppError::internal(m),
        }
    }
}

pub(super) fn refused(m: impl Into<String>) -> ApplyError {
    ApplyError::Refused(m.into())
}

/// Locks a visible session, refusing one Coffer does not hold (for this tenant) or whose
/// provider session is not recorded yet (its create's answer is still on the way: the event
/// retries after it).
pub(super) async fn lock_visible(
    tx: &mut PgConnection,
    tenant: TenantId,
    id: CheckoutId,
) -> Result<checkout_store::LockedSession, ApplyError> {
    let locked = checkout_store::lock_session(tx, tenant, id)
        .await?
        .ok_or_else(|| refused(format!("no checkout session {id} for this event")))?;
    if locked.provider_session_id.is_none() {
        return Err(refused(format!(
            "checkout session {id} is not recorded yet; retrying"
        )));
    }
    Ok(locked)
}

/// What a session's change of status does besides: an expired session's unpaid payment
/// expires with it; a completion is counted.
async fn session_moved(
    tx: &mut PgConnection,
    tenant: TenantId,
    id: CheckoutId,
    from: Status,
    to: Status,
) -> Result<(), ApplyError> {
    if from == to {
        return Ok(());
    }
    // The provider's late completion of a session Coffer's clock expired wins (see
    // `domain::payment`): the money was taken.
    let late_completion = from == Status::Expired && to == Status::Complete;
    if from.transition(to).is_err() && !late_completion {
        return Err(refused(format!(
            "a {} checkout session cannot become {}",
            from.as_str(),
            to.as_str()
        )));
    }
    match to {
        Status::Expired => {
            metrics().checkout("expired");
            if store::expire_session_payment(tx, tenant, id).await? {
                metrics().payment(PaymentStatus::Expired);
            }
        }
        Status::Complete => metrics().checkout("completed"),
        Status::Open => {}
    }
    Ok(())
}

/// The session's state as an event reports it.
pub async fn apply_session_state(
    tx: &mut PgConnection,
    tenant: TenantId,
    s: &SessionState,
) -> Result<(), ApplyError> {
    let id = CheckoutId::from_uuid(s.client_reference);
    let locked = lock_visible(tx, tenant, id).await?;
    if locked.provider_session_id.as_deref() != Some(s.id.as_str()) {
        return Err(refused(format!(
            "the event's session is not checkout session {id}'s"
        )));
    }
    if s.version <= locked.provider_version {
        return Ok(());
    }
    session_moved(tx, tenant, id, locked.status, s.status).await?;
    checkout_store::update_session_state(
        tx,
        tenant,
        id,
        s.status,
        s.payment_status,
        s.expires_at,
        s.version,
    )
    .await?;
    Ok(())
}

/// The session's state as a provider's answer reports it (a create, an expire, a fetch):
/// recorded (making the session visible) with its URL, then its payment and subscription
/// when the answer carries them.
pub async fn apply_checkout(
    tx: &mut PgConnection,
    tenant: TenantId,
    id: CheckoutId,
    s: &crate::providers::ProviderCheckout,
) -> Result<(), ApplyError> {
    let locked = checkout_store::lock_session(tx, tenant, id)
        .await?
        .ok_or_else(|| refused(format!("no checkout session {id}")))?;
    if s.version > locked.provider_version {
        session_moved(tx, tenant, id, locked.status, s.status).await?;
    }
    checkout_store::record_provider_session(
        tx,
        tenant,
        id,
        &s.id,
        &s.url,
        s.status,
        s.payment_status,
        s.expires_at,
        s.version,
    )
    .await?;
    if let Some(p) = &s.payment {
        apply_payment(tx, tenant, p).await?;
    }
    if let Some(sub) = &s.subscription {
        super::subscriptions::apply_subscription(tx, tenant, sub).await?;
    }
    Ok(())
}

/// A payment's state: status, decline code and card, on the session's payment, or on the
/// period's payment of a subscription's renewal (made the first time it is reported). A
/// payment that carries its subscription (a Stripe invoice's) applies the subscription first,
/// so the charge of a subscription whose own event has not come yet finds its row.
pub async fn apply_payment(
    tx: &mut PgConnection,
    tenant: TenantId,
    p: &ProviderPayment,
) -> Result<(), ApplyError> {
    if let Some(sub) = &p.subscription {
        super::subscriptions::apply_subscription(tx, tenant, sub).await?;
    }
    let checkout = CheckoutId::from_uuid(p.client_reference);
    // A charge of a subscription CreateSubscription made names the subscription itself.
    let created = match &p.renewal {
        Some(_) => sub_store::find_creation(tx, tenant, p.client_reference)
            .await?
            .is_some(),
        None => false,
    };
    if !created {
        lock_visible(tx, tenant, checkout).await?;
    }
    let locked = match &p.renewal {
        None => store::lock_session_payment(tx, tenant, checkout)
            .await?
            .ok_or_else(|| refused(format!("checkout session {checkout} has no payment")))?,
        Some((provider_subscription, period_start)) => {
            let found = if created {
                let id = crate::domain::ids::SubscriptionId::from_uuid(p.client_reference);
                sub_store::lock_subscription_versioned(tx, tenant, id).await?
            } else {
                sub_store::lock_session_subscription(tx, tenant, checkout).await?
            };
            let (sub, _) = found.ok_or_else(|| {
                refused(format!(
                    "the subscription of {checkout} is not recorded yet"
                ))
            })?;
            if sub.provider_subscription_id != *provider_subscription {
                return Err(refused(format!(
                    "the renewal's subscription is not checkout session {checkout}'s"
                )));
            }
            let currency = crate::domain::money::Currency::parse(&p.currency)
                .map_err(|e| refused(format!("renewal currency: {}", e.0)))?;
            store::lock_renewal_payment(
                tx,
                tenant,
                &sub,
                (*period_start, p.period_end),
                p.amount,
                currency,
                now_micros(),
            )
            .await?
        }
    };
    if p.version <= locked.provider_version {
        return Ok(());
    }
    // The provider charging another sum than the session's is not something to record quietly.
    if p.amount != locked.amount || p.currency != locked.currency.code() {
        return Err(refused(format!(
            "the provider's payment of checkout session {checkout} is not of its amount"
        )));
    }
    let to = match p.status {
        // A provider's payment stays succeeded while it is disputed: its disputes, not its own
        // state, say when it stops being DISPUTED (`apply_dispute`).
        PaymentOutcome::Succeeded if locked.status == PaymentStatus::Disputed => {
            PaymentStatus::Disputed
        }
        PaymentOutcome::RequiresAction => PaymentStatus::ProviderPending,
        PaymentOutcome::Succeeded => PaymentStatus::Succeeded,
        PaymentOutcome::Failed => PaymentStatus::Failed,
    };
    locked
        .status
        .transition(to)
        .map_err(|e| refused(format!("payment {}: {}", locked.id, e.0)))?;
    let failure =
        (to == PaymentStatus::Failed).then(|| p.failure_code.as_deref().unwrap_or("card_declined"));
    let card = p.card.as_ref().map(|(b, l)| (b.as_str(), l.as_str()));
    store::update_payment_state(tx, tenant, locked.id, to, failure, card, &p.id, p.version).await?;
    journal_store::insert_provider_object(
        tx,
        tenant,
        &locked.account,
        ObjectKind::Payment.as_str(),
        locked.id.as_uuid(),
        &p.id,
    )
    .await?;
    if to != locked.status || to == PaymentStatus::Failed {
        metrics().payment(to);
    }
    Ok(())
}

/// A dispute's state, on the disputed payment: the dispute recorded (an older state of it
/// changes nothing), then the payment's status and lost amount derived from all its disputes —
/// DISPUTED while one is open or lost, SUCCEEDED again once every one was won.
pub async fn apply_dispute(
    tx: &mut PgConnection,
    tenant: TenantId,
    d: &ProviderDispute,
) -> Result<(), ApplyError> {
    let (locked, subscription) = disputed_payment(tx, tenant, d).await?;
    if !matches!(
        locked.status,
        PaymentStatus::Succeeded | PaymentStatus::Disputed
    ) {
        return Err(refused(format!(
            "payment {} is {}: only a succeeded payment can be disputed",
            locked.id,
            locked.status.as_str()
        )));
    }
    if d.currency != locked.currency.code() || d.amount > locked.amount {
        return Err(refused(format!(
            "the provider's dispute of payment {} is not within its amount",
            locked.id
        )));
    }
    let disputes = store::record_dispute(
        tx,
        tenant,
        locked.id,
        &locked.account,
        &store::DisputeState {
            provider_dispute_id: &d.id,
            amount: d.amount,
            currency: locked.currency,
            status: d.status,
            reason: d.reason.as_deref(),
            version: d.version,
        },
    )
    .await?;
    let (to, amount_lost) = disputed_state(&disputes);
    locked
        .status
        .transition(to)
        .map_err(|e| refused(format!("payment {}: {}", locked.id, e.0)))?;
    store::update_payment_disputes(tx, tenant, locked.id, to, amount_lost.min(locked.amount))
        .await?;
    if to != locked.status {
        metrics().payment(to);
        // A disputed payment may take its subscription's access away (and a won dispute give
        // it back): the subscription's entitlements changed, in this transaction.
        let subscription = match subscription {
            Some(id) => Some(id),
            None => sub_store::lock_session_subscription(
                tx,
                tenant,
                CheckoutId::from_uuid(d.client_reference),
            )
            .await?
            .map(|(sub, _)| sub.id),
        };
        if let Some(sub) = subscription {
            crate::store::subscription_events::record_change(
                tx,
                tenant,
                sub,
                crate::domain::subscription::ChangeKind::EntitlementsChanged,
            )
            .await?;
        }
    }
    Ok(())
}

/// The payment a dispute is about, locked, and the subscription it is a charge of when the
/// reference names one CreateSubscription made. A charge is found by the provider's payment id
/// Coffer recorded when it applied the payment (`provider_objects`): among the charges of the
/// subscription CreateSubscription made, or of the checkout session's subscription when the
/// disputed payment is not the session's own (a renewal's). A charge not recorded yet (its
/// invoice's event still on the way) refuses, and the dispute's event retries.
async fn disputed_payment(
    tx: &mut PgConnection,
    tenant: TenantId,
    d: &ProviderDispute,
) -> Result<
    (
        store::LockedPayment,
        Option<crate::domain::ids::SubscriptionId>,
    ),
    ApplyError,
> {
    let charge = async |tx: &mut PgConnection, account: &str| -> Result<_, ApplyError> {
        let Some(found) = journal_store::find_coffer_object(
            tx,
            tenant,
            account,
            ObjectKind::Payment.as_str(),
            &d.payment,
        )
        .await?
        else {
            return Ok(None);
        };
        Ok(store::lock_payment(tx, tenant, PaymentId::from_uuid(found)).await?)
    };
    if let Some(creation) = sub_store::find_creation(tx, tenant, d.client_reference).await? {
        let sub = crate::domain::ids::SubscriptionId::from_uuid(d.client_reference);
        let locked = charge(tx, &creation.account).await?.ok_or_else(|| {
            refused(format!(
                "the disputed charge of subscription {sub} is not recorded yet; retrying"
            ))
        })?;
        return Ok((locked, Some(sub)));
    }
    let checkout = CheckoutId::from_uuid(d.client_reference);
    lock_visible(tx, tenant, checkout).await?;
    let own = store::lock_session_payment(tx, tenant, checkout).await?;
    if let Some(own) = &own
        && (d.payment.is_empty() || own.provider_payment_id.as_deref() == Some(d.payment.as_str()))
    {
        return Ok((own.clone(), None));
    }
    let account = match &own {
        Some(own) => Some(own.account.clone()),
        None => sub_store::lock_session_subscription(tx, tenant, checkout)
            .await?
            .map(|(sub, _)| sub.account),
    };
    let renewal = match account {
        Some(account) if !d.payment.is_empty() => charge(tx, &account).await?,
        _ => None,
    };
    renewal
        .map(|locked| (locked, None))
        .ok_or_else(|| refused(format!("checkout session {checkout} has no such payment")))
}

/// A refund's state; once it leaves PENDING its amount is taken off the payment's pending
/// total (and added to `amount_refunded` if it succeeded), once.
pub async fn apply_refund(
    tx: &mut PgConnection,
    tenant: TenantId,
    r: &ProviderRefund,
) -> Result<(), ApplyError> {
    let id = RefundId::from_uuid(r.client_reference);
    let locked = store::lock_refund(tx, tenant, id)
        .await?
        .ok_or_else(|| refused(format!("no refund {id} for this event")))?;
    if r.version <= locked.provider_version {
        return Ok(());
    }
    if !locked.status.can_become(r.status) {
        return Err(refused(format!(
            "refund {id}: a {} refund cannot become {}",
            locked.status.as_str(),
            r.status.as_str()
        )));
    }
    store::settle_refund(
        tx,
        tenant,
        id,
        &locked,
        r.status,
        None,
        Some(&r.id),
        r.version,
    )
    .await?;
    let account = store::lock_payment(tx, tenant, locked.payment)
        .await?
        .map(|p| p.account)
        .unwrap_or_default();
    journal_store::insert_provider_object(
        tx,
        tenant,
        &account,
        ObjectKind::Refund.as_str(),
        id.as_uuid(),
        &r.id,
    )
    .await?;
    if r.status != locked.status {
        metrics().refund(r.status);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inbox handlers

/// Applies the sandbox's events of one type: reads `data.object` and hands it to its applier.
struct SandboxEvents(EventType);

impl Handler for SandboxEvents {
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        event: &'a InboxEvent,
    ) -> futures_core::future::BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let tenant = event.event.tenant;
            let object = wire::object(&event.event.payload).map_err(HandlerError::Failed)?;
            match self.0 {
                EventType::CheckoutCompleted | EventType::CheckoutExpired => {
                    let s = wire::session(&object).map_err(HandlerError::Failed)?;
                    apply_session_state(conn, tenant, &s).await?;
                }
                EventType::PaymentSucceeded | EventType::PaymentFailed => {
                    let p = wire::payment(&object).map_err(HandlerError::Failed)?;
                    apply_payment(conn, tenant, &p).await?;
                }
                EventType::RefundSucceeded => {
                    let r = wire::refund(&object).map_err(HandlerError::Failed)?;
                    apply_refund(conn, tenant, &r).await?;
                }
                EventType::SubscriptionCreated
                | EventType::SubscriptionUpdated
                | EventType::SubscriptionDeleted => {
                    let s = wire::subscription(&object).map_err(HandlerError::Failed)?;
                    super::subscriptions::apply_subscription(conn, tenant, &s).await?;
                }
            }
            Ok(())
        })
    }
}

/// `handlers` with the sandbox's event types registered.
pub fn with_sandbox_handlers(mut handlers: Handlers) -> Handlers {
    for t in EventType::ALL {
        handlers = handlers.with(ProviderKind::Sandbox, t.as_str(), SandboxEvents(t));
    }
    handlers
}

// ---------------------------------------------------------------------------------------------
// Use cases

/// Filters and position of a ListPayments call.
#[derive(Debug, Clone)]
pub struct PaymentQuery {
    pub customer: Option<crate::domain::ids::CustomerId>,
    pub status: Option<PaymentStatus>,
    pub subscription: Option<crate::domain::ids::SubscriptionId>,
    pub page_size: PageSize,
    pub page_token: Option<String>,
}

/// A RefundPayment request, its fields valid.
#[derive(Debug, Clone)]
pub struct NewRefund {
    pub payment: PaymentId,
    /// `None`: what remains to be refunded.
    pub amount: Option<i64>,
    pub reason: RefundReason,
}

/// The Payments use cases (on the Checkout service) and subscription reads. Cheap to clone.
#[derive(Clone)]
pub struct Payments {
    pool: PgPool,
    /// Lag-tolerant reads (List*, GetUsage, GetBalance): the read replica while it is within
    /// its bound, else `pool`.
    reads: ReadPool,
    mutations: Mutations,
    providers: Providers,
    journal: Journal,
}

impl Payments {
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

    pub async fn get(&self, ctx: &TenantCtx, id: PaymentId) -> Result<Payment, AppError> {
        let mut conn = self.pool.acquire().await?;
        store::find_payment(&mut conn, ctx.tenant, id)
            .await?
            .ok_or_else(payment_not_found)
    }

    pub async fn list(
        &self,
        ctx: &TenantCtx,
        query: &PaymentQuery,
    ) -> Result<Page<Payment>, AppError> {
        let customer = query.customer.map(|c| c.to_string()).unwrap_or_default();
        let status = query.status.map(PaymentStatus::as_str).unwrap_or("");
        let subscription = query
            .subscription
            .map(|s| s.to_string())
            .unwrap_or_default();
        let filters = FilterDigest::of(LIST_PAYMENTS, &[&customer, status, &subscription]);
        let after = page::start(query.page_token.as_deref(), filters)?.unwrap_or(uuid::Uuid::nil());
        let mut conn = self.reads.get().acquire().await?;
        let rows = store::list_payments(
            &mut conn,
            ctx.tenant,
            query.customer,
            query.status,
            query.subscription,
            after,
            query.page_size.get() as i64 + 1,
        )
        .await?;
        Ok(Page::of(rows, query.page_size, filters, |p| p.id.as_uuid()))
    }

    /// Refunds (part of) a SUCCEEDED payment through the provider.
    #[tracing::instrument(skip_all)]
    pub async fn refund(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        request: NewRefund,
    ) -> Result<Done<Refund>, AppError> {
        let this = self.clone();
        let ctx = *ctx;
        self.mutations
            .run_external(&ctx, call, move |call| async move {
                this.refund_attempt(ctx, call, request).await
            })
            .await
    }

    async fn refund_attempt(
        &self,
        ctx: TenantCtx,
        call: Option<IdempotentCall>,
        request: NewRefund,
    ) -> Result<Refund, AppError> {
        let mut conn = self.pool.acquire().await?;
        let payment = store::find_payment(&mut conn, ctx.tenant, request.payment)
            .await?
            .ok_or_else(payment_not_found)?;
        let name = AccountName::parse(&payment.account)
            .map_err(|e| AppError::internal(format!("stored account: {}", e.0)))?;
        let account = self.providers.resolve(ctx.tenant, Some(&name)).await?;
        let provider = account.for_op(Operation::Refund)?;
        let idempotency = call.as_ref().map(|c| (c.method, c.key.as_str()));
        let earlier = match idempotency {
            Some((method, key)) => {
                journal_store::find_by_idempotency_key(&mut conn, ctx.tenant, method, key).await?
            }
            None => None,
        };

        let mut tx = conn.begin().await?;
        let locked = store::lock_payment(&mut tx, ctx.tenant, payment.id)
            .await?
            .ok_or_else(payment_not_found)?;
        let (id, amount) = match earlier {
            // An earlier attempt under this key began this refund. If it failed without the
            // provider doing anything, it is asked for again (as a new generation).
            Some(row) => {
                let id = RefundId::from_uuid(row.coffer_id);
                let refund = store::find_refund(&mut tx, ctx.tenant, id)
                    .await?
                    .ok_or_else(|| AppError::internal("a journalled refund is missing"))?;
                if row.status == OpStatus::Failed.as_str() && refund.status == RefundStatus::Failed
                {
                    refundable(&locked, Some(refund.amount))?;
                    store::repend_refund(&mut tx, ctx.tenant, id, payment.id, refund.amount)
                        .await?;
                }
                (id, refund.amount)
            }
            None => {
                let amount = refundable(&locked, request.amount)?;
                let id = RefundId::generate();
                store::insert_refund(
                    &mut tx,
                    ctx.tenant,
                    id,
                    &locked,
                    amount,
                    request.reason,
                    now_micros(),
                )
                .await?;
                metrics().refund(RefundStatus::Pending);
                (id, amount)
            }
        };
        let started = self
            .journal
            .begin(
                &mut tx,
                ctx.tenant,
                &account.name,
                OpKind::Refund,
                id.as_uuid(),
                idempotency,
            )
            .await?;
        tx.commit()
            .await
            .map_err(|e| AppError::from_commit(e.into()))?;
        // No connection is held while the provider is called.
        drop(conn);

        let op = match started {
            Started::Call(op) => op,
            Started::Existing(op) => {
                // Pending or unknown: the provider knows whether it refunded. If it did not
                // (the refund is then FAILED, its amount free), ask again as a new generation.
                if op.status != OpStatus::Succeeded
                    && self.journal.settle(&op, &account).await?.is_none()
                {
                    return Box::pin(self.refund_attempt(ctx, call, request)).await;
                }
                let mut conn = self.pool.acquire().await?;
                return self.reload_refund(&mut conn, ctx, id).await;
            }
        };
        let provider_payment = locked
            .provider_payment_id
            .clone()
            .ok_or_else(|| AppError::internal("a succeeded payment has no provider id"))?;
        let money = Money::stored(amount, locked.currency)
            .map_err(|e| AppError::internal(format!("refund amount: {}", e.0)))?;
        let call = provider.refund(
            &account.name,
            RefundRequest {
                client_reference: id.as_uuid(),
                idempotency_key: op.idempotency_key(),
                payment: provider_payment,
                amount: money,
            },
        );
        let sent = self.journal.call(&op, account.kind, call).await;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        match sent {
            Ok(refund) => {
                self.journal
                    .apply(
                        &mut tx,
                        &op,
                        &account.name,
                        &crate::providers::ProviderObject::Refund(refund),
                    )
                    .await?;
            }
            // The provider refused: the refund is FAILED, its amount free again; the answer is
            // the failed refund (stored under the idempotency key like any other).
            Err(CallFailed {
                cause: ProviderError::Definitive { code, .. },
                ..
            }) => {
                fail_refund(&mut tx, ctx.tenant, id, &code).await?;
            }
            // Nothing happened: free the amount; a retry under the same key asks again.
            Err(CallFailed {
                cause: ProviderError::Retryable { .. },
                error,
            }) => {
                fail_refund(&mut tx, ctx.tenant, id, "provider_unavailable").await?;
                tx.commit()
                    .await
                    .map_err(|e| AppError::from_commit(e.into()))?;
                return Err(error);
            }
            // It may have happened: the refund stays pending until the journal settles it.
            Err(failed) => return Err(failed.into()),
        }
        audit::insert_audit(
            &mut tx,
            ctx.tenant,
            Some(ctx.key),
            "payment.refunded",
            "refund",
            id.as_uuid(),
        )
        .await?;
        tx.commit()
            .await
            .map_err(|e| AppError::from_commit(e.into()))?;
        self.reload_refund(&mut conn, ctx, id).await
    }

    async fn reload_refund(
        &self,
        conn: &mut PgConnection,
        ctx: TenantCtx,
        id: RefundId,
    ) -> Result<Refund, AppError> {
        store::find_refund(conn, ctx.tenant, id)
            .await?
            .ok_or_else(|| AppError::internal("a created refund is missing"))
    }
}

/// The amount a refund of `asked` (`None`: all that is left) takes from a locked payment, or
/// why it cannot: a refusal names what was asked for and what is left.
fn refundable(p: &store::LockedPayment, asked: Option<i64>) -> Result<i64, AppError> {
    if !p.status.refundable() {
        return Err(AppError::rejected(
            RejectionKind::FailedPrecondition,
            REASON_PAYMENT_NOT_REFUNDABLE,
            format!(
                "the payment is {}: only a succeeded payment can be refunded",
                p.status.as_str()
            ),
        ));
    }
    let rest = refundable_rest(p.amount, p.amount_refunded, p.amount_refund_pending);
    let exceeds = |what: String| {
        AppError::rejected(
            RejectionKind::FailedPrecondition,
            REASON_REFUND_EXCEEDS_PAYMENT,
            format!(
                "{what}, but {rest} is left to refund of the payment's {} ({} refunded, {} \
                 being refunded)",
                p.amount, p.amount_refunded, p.amount_refund_pending
            ),
        )
    };
    match asked {
        None if rest == 0 => Err(exceeds("amount: the whole rest was asked for".into())),
        None => Ok(rest),
        Some(amount) if amount > rest || rest == 0 => {
            Err(exceeds(format!("amount: {amount} was asked for")))
        }
        Some(amount) => Ok(amount),
    }
}

/// Marks a pending refund FAILED with `code`, freeing its amount.
pub async fn fail_refund(
    tx: &mut PgConnection,
    tenant: TenantId,
    id: RefundId,
    code: &str,
) -> Result<(), AppError> {
    if let Some(locked) = store::lock_refund(tx, tenant, id).await?
        && locked.status == RefundStatus::Pending
    {
        store::settle_refund(
            tx,
            tenant,
            id,
            &locked,
            RefundStatus::Failed,
            Some(code),
            None,
            0,
        )
        .await?;
        metrics().refund(RefundStatus::Failed);
    }
    Ok(())
}

fn payment_not_found() -> AppError {
    AppError::not_found(REASON_PAYMENT_NOT_FOUND, "payment not found")
}
