//! Customers use cases.

use time::OffsetDateTime;

use sqlx::PgPool;

use crate::store::replica::ReadPool;

use tokio_util::task::TaskTracker;

use super::group_commit::GroupCommit;
use super::idempotency::{self, Done, IdempotentCall, Keyed, Mutations, Written};
use super::page::{self, Page};
use super::{AppError, Rejection, RejectionKind, TenantCtx};
use crate::domain::customer::{Customer, CustomerPatch, CustomerRef, Email, NewCustomer};
use crate::domain::ids::CustomerId;
use crate::domain::page::{FilterDigest, PageSize};
use crate::store::customers::CustomerInsert;
use crate::store::{audit, customers as store};

pub const REASON_NOT_FOUND: &str = "CUSTOMER_NOT_FOUND";
pub const REASON_EXTERNAL_ID_TAKEN: &str = "CUSTOMER_EXTERNAL_ID_TAKEN";
pub const REASON_HAS_LIVE_SUBSCRIPTION: &str = "CUSTOMER_HAS_LIVE_SUBSCRIPTION";

/// How a batch of creates is written with the claims of their keys: one statement in
/// autocommit, or, when a concurrent create of the same external id aborted it, the
/// transaction that finds the conflict ([`idempotency::claim_and_write`]).
static WRITES: idempotency::ClaimingWrites<CustomerInsert> = idempotency::ClaimingWrites {
    at_once: |conn, rows, claims| {
        Box::pin(store::claim_and_insert_customers_at_once(
            conn, rows, claims,
        ))
    },
    in_transaction: |conn, rows, claims| {
        Box::pin(store::claim_and_insert_customers(conn, rows, claims))
    },
};

/// The list a page token of ListCustomers belongs to.
const LIST: &str = "coffer.v1.Customers/ListCustomers";

/// Filters and position of a ListCustomers call.
#[derive(Debug, Clone)]
pub struct CustomerQuery {
    pub email: Option<Email>,
    pub page_size: PageSize,
    pub page_token: Option<String>,
}

/// The Customers service's use cases.
#[derive(Clone)]
pub struct Customers {
    pool: PgPool,
    /// Lag-tolerant reads (List*, GetUsage, GetBalance): the read replica while it is within
    /// its bound, else `pool`.
    reads: ReadPool,
    mutations: Mutations,
    /// Concurrent creates share a statement and a commit.
    inserts: GroupCommit<Keyed<CustomerInsert>, Option<Written>>,
}

impl Customers {
    /// Sends lag-tolerant reads to `reads` (the app's [`ReadPool`]).
    pub(crate) fn set_reads(&mut self, reads: ReadPool) {
        self.reads = reads;
    }

    pub fn new(pool: PgPool, mutations: Mutations, tasks: TaskTracker) -> Self {
        let inserts = GroupCommit::new(
            "customer inserts",
            pool.clone(),
            tasks,
            |conn, rows| Box::pin(idempotency::claim_and_write(conn, rows, &WRITES)),
            |a, b| store::order_inserts(&a.row, &b.row),
        );
        Self {
            reads: ReadPool::primary_only(pool.clone()),
            pool,
            mutations,
            inserts,
        }
    }

    /// Creates a customer: one transaction claims the key, and one statement writes the
    /// customer, its audit row and the key's outcome, shared with concurrent creates (group
    /// commit). A taken external id is
    /// the statement finding the conflict and writing nothing, not a failed insert.
    pub async fn create(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        new: NewCustomer,
    ) -> Result<Done<Customer>, AppError> {
        let ctx = *ctx;
        let now = now_micros();
        let customer = Customer {
            id: CustomerId::generate(),
            external_id: new.external_id,
            email: new.email,
            name: new.name,
            metadata: new.metadata,
            created_at: now,
            updated_at: now,
            deleted_at: None,
        };
        self.mutations
            .run_statement(
                &ctx,
                call,
                customer.clone(),
                Some(external_id_taken()),
                &self.inserts,
                move |completion| CustomerInsert {
                    tenant: ctx.tenant,
                    by: ctx.key,
                    customer,
                    completion,
                },
            )
            .await
    }

    pub async fn get(&self, ctx: &TenantCtx, by: &CustomerRef) -> Result<Customer, AppError> {
        let mut conn = self.pool.acquire().await?;
        store::find_customer(&mut conn, ctx.tenant, by)
            .await?
            .ok_or_else(not_found)
    }

    pub async fn update(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        id: CustomerId,
        patch: CustomerPatch,
    ) -> Result<Done<Customer>, AppError> {
        let ctx = *ctx;
        self.mutations
            .run_atomic(&ctx, call, move |conn| {
                Box::pin(async move {
                    let current = store::lock_customer(conn, ctx.tenant, id)
                        .await?
                        .ok_or_else(not_found)?;
                    if patch.is_empty() {
                        return Ok(current);
                    }
                    let mut changed = patch.apply(current);
                    changed.updated_at = now_micros();
                    // The expected conflict is found by a read; a concurrent create of the
                    // same external id between the read and the write still trips the unique
                    // index, and means the same.
                    if let Some(external_id) = &changed.external_id
                        && store::external_id_taken(conn, ctx.tenant, external_id, id).await?
                    {
                        return Err(AppError::Rejected(external_id_taken()));
                    }
                    let customer = store::update_customer(conn, ctx.tenant, &changed)
                        .await
                        .map_err(|e| match e.unique_violation() {
                            Some(store::EXTERNAL_ID_INDEX) => {
                                AppError::Rejected(external_id_taken())
                            }
                            _ => AppError::from(e),
                        })?;
                    audit::insert_audit(
                        conn,
                        ctx.tenant,
                        Some(ctx.key),
                        "customer.updated",
                        "customer",
                        id.as_uuid(),
                    )
                    .await?;
                    Ok(customer)
                })
            })
            .await
    }

    /// Soft-deletes a customer. Subscriptions do not exist yet; when they do, a live one
    /// refuses the delete with CUSTOMER_HAS_LIVE_SUBSCRIPTION, checked here under the row lock.
    pub async fn delete(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        id: CustomerId,
    ) -> Result<Done<Customer>, AppError> {
        let ctx = *ctx;
        self.mutations
            .run_atomic(&ctx, call, move |conn| {
                Box::pin(async move {
                    // The customer's row lock first: a subscription's insert waits for it (its
                    // foreign key), so none appears between the check and the delete.
                    store::lock_customer(conn, ctx.tenant, id)
                        .await?
                        .ok_or_else(not_found)?;
                    if crate::store::subscriptions::has_live_subscription(conn, ctx.tenant, id)
                        .await?
                    {
                        return Err(AppError::rejected(
                            RejectionKind::FailedPrecondition,
                            REASON_HAS_LIVE_SUBSCRIPTION,
                            "the customer holds a live subscription: cancel it first",
                        ));
                    }
                    let customer = store::soft_delete_customer(conn, ctx.tenant, id, now_micros())
                        .await?
                        .ok_or_else(not_found)?;
                    audit::insert_audit(
                        conn,
                        ctx.tenant,
                        Some(ctx.key),
                        "customer.deleted",
                        "customer",
                        id.as_uuid(),
                    )
                    .await?;
                    Ok(customer)
                })
            })
            .await
    }

    pub async fn list(
        &self,
        ctx: &TenantCtx,
        query: &CustomerQuery,
    ) -> Result<Page<Customer>, AppError> {
        let email = query.email.as_ref().map(Email::as_str);
        // The filter compares case-insensitively, so its token binding does too.
        let filters = FilterDigest::of(LIST, &[&email.unwrap_or("").to_lowercase()]);
        let after = page::start(query.page_token.as_deref(), filters)?;
        let mut conn = self.reads.get().acquire().await?;
        let items = store::list_customers(
            &mut conn,
            ctx.tenant,
            email,
            after.map(CustomerId::from_uuid),
            query.page_size.get() as i64 + 1,
        )
        .await?;
        Ok(Page::of(items, query.page_size, filters, |c| {
            c.id.as_uuid()
        }))
    }
}

/// Now, at the microsecond precision Postgres stores, so a response built before an insert
/// equals the row read back later.
pub(crate) fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .expect("a whole number of microseconds is a valid nanosecond")
}

fn not_found() -> AppError {
    AppError::not_found(REASON_NOT_FOUND, "customer not found")
}

fn external_id_taken() -> Rejection {
    Rejection {
        kind: RejectionKind::AlreadyExists,
        reason: REASON_EXTERNAL_ID_TAKEN.to_owned(),
        message: "a live customer already has this external_id".to_owned(),
        metadata: Vec::new(),
    }
}
