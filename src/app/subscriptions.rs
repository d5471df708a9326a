//! The Subscriptions service's use cases: the plan catalogue (create, get, list, archive), and
//! subscriptions — read and listed, and applied from the provider's state
//! ([`apply_subscription`], used by the inbox and the journal alike). Changing them (cancel,
//! change plan, pause) comes with the lifecycle RPCs.

use sqlx::PgPool;

use super::customers::now_micros;
use super::idempotency::{Done, IdempotentCall, Mutations};
use super::page::{self, Page};
use super::{AppError, RejectionKind, TenantCtx};
use crate::domain::Violations;
use crate::domain::customer::CustomerRef;
use crate::domain::ids::{CheckoutId, PlanId, SubscriptionId, TenantId};
use crate::domain::meter::Aggregation;
use crate::domain::page::{FilterDigest, PageSize};
use crate::domain::plan::{self, NewPlan, Plan, PlanRef};
use crate::domain::subscription::{Subscription, SubscriptionStatus};
use crate::providers::{ObjectKind, ProviderSubscription};
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

/// The list a page token of ListPlans belongs to.
const LIST: &str = "coffer.v1.Subscriptions/ListPlans";
const LIST_SUBSCRIPTIONS: &str = "coffer.v1.Subscriptions/ListSubscriptions";

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
    mutations: Mutations,
}

impl Subscriptions {
    pub fn new(pool: PgPool, mutations: Mutations) -> Self {
        Self { pool, mutations }
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
            .run(&ctx, call, move |conn| {
                Box::pin(async move {
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
            .run(&ctx, call, move |conn| {
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
        let mut conn = self.pool.acquire().await?;
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
        let mut conn = self.pool.acquire().await?;
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

/// A subscription a session made: created the first time (with the session's first line
/// item's price and quantity, and named on the session), its state updated after.
pub async fn apply_subscription(
    tx: &mut PgConnection,
    tenant: TenantId,
    s: &ProviderSubscription,
) -> Result<(), ApplyError> {
    let checkout = CheckoutId::from_uuid(s.client_reference);
    lock_visible(tx, tenant, checkout).await?;
    let id = match sub_store::lock_session_subscription(tx, tenant, checkout).await? {
        Some((id, status, version)) => {
            if s.version <= version {
                return Ok(());
            }
            status
                .transition(s.status)
                .map_err(|e| refused(format!("subscription {id}: {e}")))?;
            sub_store::update_subscription_state(
                tx,
                tenant,
                id,
                s.status,
                s.current_period_start,
                s.current_period_end,
                s.trial_end,
                s.version,
            )
            .await?;
            id
        }
        None => {
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
                    checkout,
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
