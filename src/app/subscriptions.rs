//! The Subscriptions service's use cases. This version: the plan catalogue (create, get, list,
//! archive); subscriptions themselves come with their own issue.

use sqlx::PgPool;

use super::customers::now_micros;
use super::idempotency::{Done, IdempotentCall, Mutations};
use super::page::{self, Page};
use super::{AppError, RejectionKind, TenantCtx};
use crate::domain::ids::PlanId;
use crate::domain::page::{FilterDigest, PageSize};
use crate::domain::plan::{NewPlan, Plan, PlanRef};
use crate::store::{audit, plans as store};

pub const REASON_PLAN_NOT_FOUND: &str = "PLAN_NOT_FOUND";
pub const REASON_PLAN_KEY_TAKEN: &str = "PLAN_KEY_TAKEN";

/// The list a page token of ListPlans belongs to.
const LIST: &str = "coffer.v1.Subscriptions/ListPlans";

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
}

fn not_found() -> AppError {
    AppError::not_found(REASON_PLAN_NOT_FOUND, "plan not found")
}
