//! The Checkout service's use cases: checkout sessions on the tenant's provider account.
//!
//! Create runs under the idempotency steps with the provider call between claim and complete
//! ([`Mutations::run_external`]), and every provider call goes through the operations journal:
//! the session row and the journal's pending operation are committed first, then the provider
//! is called with Coffer's id as the client reference, then the outcome is recorded. A retry
//! under the same idempotency key finds the operation the first attempt began and settles it
//! (by fetching, when its outcome is unknown) instead of creating a second session.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};

use crate::store::replica::ReadPool;
use time::OffsetDateTime;

use super::customers::now_micros;
use super::idempotency::{Done, IdempotentCall, Mutations};
use super::journal::{self, CallFailed, Journal, OpKind, OpStatus, Started};
use super::mirror::{Mirror, mirrored};
use super::page::{self, Page};
use super::providers::Providers;
use super::{AppError, RejectionKind, TenantCtx};
use crate::domain::Violations;
use crate::domain::account::AccountName;
use crate::domain::checkout::{
    self as domain, CheckoutSession, ItemPrice, LineItem, Mode, NewCheckout, NewLineItem, Status,
};
use crate::domain::customer::{Customer, CustomerRef, Metadata};
use crate::domain::ids::{CheckoutId, CustomerId, PaymentId, PriceId};
use crate::domain::page::{FilterDigest, PageSize};
use crate::domain::plan::Billing;
use crate::providers::{
    CheckoutItem, CheckoutRequest, Operation, ProviderCheckout, ProviderError, ProviderObject,
};
use crate::store::{
    audit, checkout as store, customers as customer_store, payments as payment_store,
    plans as plan_store,
};

pub const REASON_CHECKOUT_NOT_FOUND: &str = "CHECKOUT_SESSION_NOT_FOUND";
pub const REASON_CHECKOUT_NOT_OPEN: &str = "CHECKOUT_SESSION_NOT_OPEN";
pub const REASON_CUSTOMER_NOT_FOUND: &str = "CUSTOMER_NOT_FOUND";
pub const REASON_PRICE_NOT_FOUND: &str = "PRICE_NOT_FOUND";
pub const REASON_PLAN_ARCHIVED: &str = "PLAN_ARCHIVED";

const LIST: &str = "coffer.v1.Checkout/ListCheckoutSessions";

/// A CreateCheckoutSession request, its fields valid; prices not yet looked up.
#[derive(Debug, Clone)]
pub struct CreateCheckout {
    pub customer: CustomerRef,
    pub account: Option<AccountName>,
    pub mode: Mode,
    pub items: Vec<NewLineItem>,
    pub success_url: String,
    pub cancel_url: String,
    pub expires_in: Duration,
    /// `None`: the prices' own trial.
    pub trial_days: Option<u16>,
    pub metadata: Metadata,
}

/// Filters and position of a ListCheckoutSessions call.
#[derive(Debug, Clone)]
pub struct CheckoutQuery {
    pub customer: Option<CustomerId>,
    pub status: Option<Status>,
    pub page_size: PageSize,
    pub page_token: Option<String>,
}

/// The Checkout service's use cases. Cheap to clone.
#[derive(Clone)]
pub struct Checkout {
    pool: PgPool,
    /// Lag-tolerant reads (List*, GetUsage, GetBalance): the read replica while it is within
    /// its bound, else `pool`.
    reads: ReadPool,
    mutations: Mutations,
    providers: Providers,
    journal: Journal,
}

impl Checkout {
    /// Sends lag-tolerant reads to `reads` (the app's [`ReadPool`]).
    pub(crate) fn set_reads(&mut self, reads: ReadPool) {
        self.reads = reads;
    }

    pub fn new(pool: PgPool, mutations: Mutations, providers: Providers) -> Self {
        Self {
            journal: Journal::new(pool.clone()),
            reads: ReadPool::primary_only(pool.clone()),
            pool,
            mutations,
            providers,
        }
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    #[tracing::instrument(skip_all)]
    pub async fn create(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        request: CreateCheckout,
    ) -> Result<Done<CheckoutSession>, AppError> {
        let this = self.clone();
        let ctx = *ctx;
        self.mutations
            .run_external(&ctx, call, move |call| async move {
                this.create_attempt(ctx, call, request).await
            })
            .await
    }

    async fn create_attempt(
        &self,
        ctx: TenantCtx,
        call: Option<IdempotentCall>,
        request: CreateCheckout,
    ) -> Result<CheckoutSession, AppError> {
        let account = self
            .providers
            .resolve(ctx.tenant, request.account.as_ref())
            .await?;
        let provider = account.for_op(Operation::CreateCheckoutSession(request.mode))?;
        let mut conn = self.pool.acquire().await?;
        // The session's expiry is on the account's clock (a sandbox account's may be ahead),
        // so Coffer and the provider's page agree on when it ends.
        let now = self.providers.now(ctx.tenant, &account).await?;
        let (new, buyer) = self.prepare(&mut conn, ctx, &request, now).await?;
        let meters = metered_prices(&mut conn, ctx, &new.items).await?;
        // No connection is held while a provider is called: the customer and the prices may
        // be made there.
        drop(conn);
        let customer = mirrored(
            &self.pool,
            &self.journal,
            ctx,
            &account,
            Mirror::Customer(&buyer),
        )
        .await?;
        // Each distinct price is mirrored (or found) once, however many lines name it.
        let mut prices: HashMap<PriceId, Option<String>> = HashMap::new();
        let mut items = Vec::with_capacity(new.items.len());
        for line in &new.items {
            let provider_price = match line.price_id {
                Some(id) => match prices.get(&id) {
                    Some(known) => known.clone(),
                    None => {
                        // A metered price names its provider meter, made first.
                        let meter = match meters.get(&id) {
                            Some(meter) => {
                                mirrored(
                                    &self.pool,
                                    &self.journal,
                                    ctx,
                                    &account,
                                    Mirror::Meter(meter),
                                )
                                .await?
                            }
                            None => None,
                        };
                        let price = Mirror::Price {
                            id,
                            name: &line.name,
                            unit: line.unit,
                            billing: line.billing,
                            meter: meter.as_deref(),
                        };
                        let made =
                            mirrored(&self.pool, &self.journal, ctx, &account, price).await?;
                        prices.insert(id, made.clone());
                        made
                    }
                },
                None => None,
            };
            items.push(CheckoutItem {
                line: line.clone(),
                provider_price,
                metered: line.price_id.is_some_and(|id| meters.contains_key(&id)),
            });
        }
        let mut conn = self.pool.acquire().await?;
        let idempotency = call.as_ref().map(|c| (c.method, c.key.as_str()));

        // An earlier attempt under this key began an operation: find it and its session.
        let earlier = match idempotency {
            Some((method, key)) => {
                crate::store::journal::find_by_idempotency_key(&mut conn, ctx.tenant, method, key)
                    .await?
            }
            None => None,
        };
        let (id, started) = match earlier {
            Some(row) => {
                let id = CheckoutId::from_uuid(row.coffer_id);
                let started = self
                    .journal
                    .begin(
                        &mut conn,
                        ctx.tenant,
                        &account.name,
                        OpKind::CreateCheckoutSession,
                        id.as_uuid(),
                        idempotency,
                    )
                    .await?;
                (id, started)
            }
            None => {
                let id = CheckoutId::generate();
                // A session that collects money now has its payment from the start, CREATED,
                // written with it; a subscription starting with a trial collects nothing yet.
                let payment = new.collects_now().then(PaymentId::generate);
                let now = now_micros();
                let mut tx = conn.begin().await?;
                store::insert_pending_session(
                    &mut tx,
                    ctx.tenant,
                    id,
                    account.name.as_str(),
                    &new,
                    payment,
                    now,
                )
                .await?;
                if let Some(payment) = payment {
                    payment_store::insert_payment(
                        &mut tx,
                        ctx.tenant,
                        payment,
                        new.customer,
                        id,
                        account.name.as_str(),
                        new.amount_total,
                        new.currency,
                        now,
                    )
                    .await?;
                }
                let started = self
                    .journal
                    .begin(
                        &mut tx,
                        ctx.tenant,
                        &account.name,
                        OpKind::CreateCheckoutSession,
                        id.as_uuid(),
                        idempotency,
                    )
                    .await?;
                tx.commit()
                    .await
                    .map_err(|e| AppError::from_commit(e.into()))?;
                (id, started)
            }
        };
        let op = match started {
            Started::Call(op) => op,
            Started::Existing(op) => {
                drop(conn);
                if op.status != OpStatus::Succeeded
                    && self.journal.settle(&op, &account).await?.is_none()
                {
                    // The provider never made it: try again, as a new generation.
                    return Box::pin(self.create_attempt(ctx, call, request)).await;
                }
                let mut conn = self.pool.acquire().await?;
                return self.reload(&mut conn, ctx, id).await;
            }
        };

        drop(conn);
        let call = provider.create_checkout_session(
            &account.name,
            CheckoutRequest {
                client_reference: id.as_uuid(),
                idempotency_key: op.idempotency_key(),
                customer,
                mode: new.mode,
                items,
                amount_total: new.amount_total,
                currency: new.currency,
                success_url: new
                    .success_url
                    .replace(domain::SESSION_ID_PLACEHOLDER, &id.to_string()),
                cancel_url: new.cancel_url.clone(),
                expires_at: new.expires_at,
                trial_days: new.trial_days,
            },
        );
        let session = self.journal.call(&op, account.kind, call).await?;
        super::payments::metrics().checkout("created");
        let mut conn = self.pool.acquire().await?;
        self.record(
            &mut conn,
            ctx,
            id,
            &op,
            &account.name,
            session,
            "checkout.created",
        )
        .await
    }

    /// Records the provider's answer to `op` and its audit row in one transaction, then
    /// reads the session back.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        conn: &mut PgConnection,
        ctx: TenantCtx,
        id: CheckoutId,
        op: &journal::Op,
        account: &AccountName,
        session: ProviderCheckout,
        action: &'static str,
    ) -> Result<CheckoutSession, AppError> {
        let mut tx = conn.begin().await?;
        self.journal
            .apply(
                &mut tx,
                op,
                account,
                &ProviderObject::CheckoutSession(session),
            )
            .await?;
        audit::insert_audit(
            &mut tx,
            ctx.tenant,
            Some(ctx.key),
            action,
            "checkout_session",
            id.as_uuid(),
        )
        .await?;
        tx.commit()
            .await
            .map_err(|e| AppError::from_commit(e.into()))?;
        self.reload(conn, ctx, id).await
    }

    async fn reload(
        &self,
        conn: &mut PgConnection,
        ctx: TenantCtx,
        id: CheckoutId,
    ) -> Result<CheckoutSession, AppError> {
        store::find_session(conn, ctx.tenant, id)
            .await?
            .ok_or_else(|| AppError::internal("a created checkout session is missing"))
    }

    /// The request with its customer and prices looked up and every rule checked.
    async fn prepare(
        &self,
        conn: &mut PgConnection,
        ctx: TenantCtx,
        r: &CreateCheckout,
        now: OffsetDateTime,
    ) -> Result<(NewCheckout, Customer), AppError> {
        let customer = customer_store::find_customer(conn, ctx.tenant, &r.customer)
            .await?
            .ok_or_else(|| AppError::not_found(REASON_CUSTOMER_NOT_FOUND, "customer not found"))?;
        let ids: Vec<_> = r
            .items
            .iter()
            .filter_map(|i| match &i.price {
                ItemPrice::Catalogue(id) => Some(id.as_uuid()),
                ItemPrice::Inline { .. } => None,
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let prices = plan_store::find_prices_for_sale(conn, ctx.tenant, &ids).await?;
        let mut v = Violations::new();
        let mut items = Vec::with_capacity(r.items.len());
        for (i, item) in r.items.iter().enumerate() {
            let (price_id, name, unit, billing) = match &item.price {
                ItemPrice::Inline { money, name } => {
                    (None, name.as_str().to_owned(), *money, Billing::OneTime)
                }
                ItemPrice::Catalogue(id) => {
                    let Some(found) = prices.get(&id.as_uuid()) else {
                        return Err(AppError::not_found(
                            REASON_PRICE_NOT_FOUND,
                            format!("line_items[{i}].price_id: price not found"),
                        ));
                    };
                    if found.archived {
                        return Err(AppError::rejected(
                            RejectionKind::FailedPrecondition,
                            REASON_PLAN_ARCHIVED,
                            format!(
                                "line_items[{i}].price_id: the price's plan is archived and cannot be bought"
                            ),
                        ));
                    }
                    (
                        Some(*id),
                        found.plan_name.clone(),
                        found.price.money,
                        found.price.billing,
                    )
                }
            };
            let field = format!("line_items[{i}]");
            match (r.mode, billing) {
                (Mode::Payment, Billing::Recurring { .. }) => v.add(
                    &format!("{field}.price_id"),
                    "is a recurring price: PAYMENT mode takes one-time or inline prices",
                ),
                (Mode::Subscription, Billing::OneTime) => v.add(
                    &format!("{field}.price_id"),
                    "is not a recurring price: SUBSCRIPTION mode takes recurring prices",
                ),
                _ => {}
            }
            if let Some(total) = v.check(
                &format!("{field}.quantity"),
                domain::item_total(unit, item.quantity),
            ) {
                items.push(LineItem {
                    price_id,
                    name,
                    unit,
                    billing,
                    quantity: item.quantity,
                    amount_total: total,
                });
            }
        }
        v.finish()?;
        let mut v = Violations::new();
        // One interval for a subscription: every price renews together.
        if r.mode == Mode::Subscription
            && let Some(first) = items.first()
        {
            for (i, item) in items.iter().enumerate().skip(1) {
                let same = matches!((first.billing, item.billing),
                    (Billing::Recurring { interval: a, count: x, .. }, Billing::Recurring { interval: b, count: y, .. })
                    if a == b && x == y);
                if !same {
                    v.add(&format!("line_items[{i}].price_id"), "renews on another interval than line_items[0]: a subscription has one interval");
                }
            }
        }
        let (amount_total, currency) = match domain::total(&items) {
            Ok(t) => t,
            Err((i, e)) => {
                v.add(&format!("line_items[{i}]"), e.0);
                v.finish()?;
                unreachable!("a violation was added")
            }
        };
        let trial_days = match (r.mode, r.trial_days) {
            (Mode::Payment, Some(d)) if d > 0 => {
                v.add("trial_days", "must be 0 in PAYMENT mode");
                0
            }
            (_, Some(d)) => d,
            (Mode::Payment, None) => 0,
            (Mode::Subscription, None) => items
                .iter()
                .map(|i| i.billing.trial_days())
                .max()
                .unwrap_or(0),
        };
        v.finish()?;
        let new = NewCheckout {
            customer: customer.id,
            mode: r.mode,
            items,
            amount_total,
            currency,
            success_url: r.success_url.clone(),
            cancel_url: r.cancel_url.clone(),
            expires_at: now + r.expires_in,
            trial_days,
            metadata: r.metadata.clone(),
        };
        Ok((new, customer))
    }

    pub async fn get(&self, ctx: &TenantCtx, id: CheckoutId) -> Result<CheckoutSession, AppError> {
        let mut conn = self.pool.acquire().await?;
        store::find_session(&mut conn, ctx.tenant, id)
            .await?
            .ok_or_else(not_found)
    }

    pub async fn list(
        &self,
        ctx: &TenantCtx,
        query: &CheckoutQuery,
    ) -> Result<Page<CheckoutSession>, AppError> {
        let customer = query.customer.map(|c| c.to_string()).unwrap_or_default();
        let status = query.status.map(Status::as_str).unwrap_or("");
        let filters = FilterDigest::of(LIST, &[&customer, status]);
        let after = page::start(query.page_token.as_deref(), filters)?.unwrap_or(uuid::Uuid::nil());
        let mut conn = self.reads.get().acquire().await?;
        let rows = store::list_sessions(
            &mut conn,
            ctx.tenant,
            query.customer,
            query.status,
            after,
            query.page_size.get() as i64 + 1,
        )
        .await?;
        Ok(Page::of(rows, query.page_size, filters, |s| s.id.as_uuid()))
    }

    /// Asks the provider for the session's current state (with its payment and subscription)
    /// and applies it with the same appliers the events use, then returns the session: what a
    /// success page calls instead of trusting a redirect. It writes only what the provider
    /// already says, so it needs no idempotency key.
    #[tracing::instrument(skip_all)]
    pub async fn verify(
        &self,
        ctx: &TenantCtx,
        id: CheckoutId,
    ) -> Result<CheckoutSession, AppError> {
        let session = {
            let mut conn = self.pool.acquire().await?;
            store::find_session(&mut conn, ctx.tenant, id)
                .await?
                .ok_or_else(not_found)?
        };
        let name = AccountName::parse(&session.account)
            .map_err(|e| AppError::internal(format!("stored account: {}", e.0)))?;
        let account = self.providers.resolve(ctx.tenant, Some(&name)).await?;
        let provider = account.for_op(Operation::FetchCheckoutSession)?;
        let current = self
            .journal
            .fetch(
                account.kind,
                "fetch_checkout_session",
                provider.fetch_checkout_session(&account.name, &session.provider_session_id),
            )
            .await?;
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        journal::apply_checkout(&mut tx, ctx.tenant, id, &current).await?;
        tx.commit()
            .await
            .map_err(|e| AppError::from_commit(e.into()))?;
        self.reload(&mut conn, *ctx, id).await
    }

    /// Expires an OPEN session on the provider, then here. Anything but OPEN is
    /// FAILED_PRECONDITION (`CHECKOUT_SESSION_NOT_OPEN`).
    #[tracing::instrument(skip_all)]
    pub async fn expire(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        id: CheckoutId,
    ) -> Result<Done<CheckoutSession>, AppError> {
        let this = self.clone();
        let ctx = *ctx;
        self.mutations
            .run_external(&ctx, call, move |_| async move {
                this.expire_attempt(ctx, id).await
            })
            .await
    }

    async fn expire_attempt(
        &self,
        ctx: TenantCtx,
        id: CheckoutId,
    ) -> Result<CheckoutSession, AppError> {
        let session = {
            let mut conn = self.pool.acquire().await?;
            store::find_session(&mut conn, ctx.tenant, id)
                .await?
                .ok_or_else(not_found)?
        };
        if session.status != Status::Open {
            return Err(not_open(session.status));
        }
        let name = AccountName::parse(&session.account)
            .map_err(|e| AppError::internal(format!("stored account: {}", e.0)))?;
        let account = self.providers.resolve(ctx.tenant, Some(&name)).await?;
        let provider = account.for_op(Operation::ExpireCheckoutSession)?;
        let started = {
            let mut conn = self.pool.acquire().await?;
            self.journal
                .begin(
                    &mut conn,
                    ctx.tenant,
                    &account.name,
                    OpKind::ExpireCheckoutSession,
                    id.as_uuid(),
                    None,
                )
                .await?
        };
        let op = match started {
            Started::Call(op) | Started::Existing(op) => op,
        };
        // Expiring is idempotent on the provider's side (an expired session stays expired, and
        // the provider answers with it), so an operation left pending or unknown by a lost
        // attempt is settled by making the same call with the same key.
        let call = provider.expire_checkout_session(
            &account.name,
            &session.provider_session_id,
            op.idempotency_key(),
        );
        let expired = match self.journal.call(&op, account.kind, call).await {
            Ok(s) => s,
            Err(CallFailed {
                cause: ProviderError::Definitive { code, .. },
                ..
            }) if code == "session_not_open" => {
                // The provider knows better: fetch and apply its state, then refuse.
                let current = self
                    .journal
                    .fetch(
                        account.kind,
                        "fetch_checkout_session",
                        provider
                            .fetch_checkout_session(&account.name, &session.provider_session_id),
                    )
                    .await?;
                let mut conn = self.pool.acquire().await?;
                let mut tx = conn.begin().await?;
                journal::apply_checkout(&mut tx, ctx.tenant, id, &current).await?;
                tx.commit()
                    .await
                    .map_err(|e| AppError::from_commit(e.into()))?;
                return Err(not_open(current.status));
            }
            Err(failed) => return Err(failed.into()),
        };
        let mut conn = self.pool.acquire().await?;
        self.record(
            &mut conn,
            ctx,
            id,
            &op,
            &account.name,
            expired,
            "checkout.expired",
        )
        .await
    }
}

fn not_found() -> AppError {
    AppError::not_found(REASON_CHECKOUT_NOT_FOUND, "checkout session not found")
}

fn not_open(status: Status) -> AppError {
    AppError::rejected(
        RejectionKind::FailedPrecondition,
        REASON_CHECKOUT_NOT_OPEN,
        format!("the checkout session is {}, not open", status.as_str()),
    )
}

/// The meters of the metered prices among `items`' (by price): two reads, none when no line
/// names a price.
async fn metered_prices(
    conn: &mut PgConnection,
    ctx: TenantCtx,
    items: &[crate::domain::checkout::LineItem],
) -> Result<HashMap<PriceId, crate::domain::meter::Meter>, AppError> {
    let ids: Vec<uuid::Uuid> = items
        .iter()
        .filter_map(|l| l.price_id.map(|p| p.as_uuid()))
        .collect();
    let mut found = HashMap::new();
    if ids.is_empty() {
        return Ok(found);
    }
    let prices = crate::store::plans::find_prices_for_sale(conn, ctx.tenant, &ids).await?;
    for (id, sale) in prices {
        if let Some(key) = &sale.price.meter
            && let Some(meter) =
                crate::store::meters::find_meter_by_key(conn, ctx.tenant, key).await?
        {
            found.insert(PriceId::from_uuid(id), meter);
        }
    }
    Ok(found)
}
