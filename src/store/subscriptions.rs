//! Subscriptions (`subscriptions`). Provider state is written only under the row's lock
//! (`FOR UPDATE`, taken by the `lock_*` functions) and only when newer than
//! `provider_version`; the app layer decides, this layer writes.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use super::subscription_events::record_change;
use super::{StoreError, corrupt};
use crate::domain::ids::{CheckoutId, CustomerId, PlanId, PriceId, SubscriptionId, TenantId};
use crate::domain::subscription::{ChangeKind, Lifecycle, Subscription, SubscriptionStatus};

/// A subscription as its columns read (the outbox's snapshots read back the same way).
pub(super) struct SubscriptionRow {
    pub(super) id: Uuid,
    pub(super) customer_id: Uuid,
    pub(super) plan_id: Option<Uuid>,
    pub(super) price_id: Option<Uuid>,
    pub(super) quantity: i32,
    pub(super) status: String,
    pub(super) current_period_start: OffsetDateTime,
    pub(super) current_period_end: OffsetDateTime,
    pub(super) trial_end: Option<OffsetDateTime>,
    pub(super) cancel_at_period_end: bool,
    pub(super) collection_paused: bool,
    pub(super) canceled_at: Option<OffsetDateTime>,
    pub(super) cancel_reason: String,
    pub(super) account: String,
    pub(super) provider_subscription_id: String,
    pub(super) checkout_session_id: Option<Uuid>,
    pub(super) created_at: OffsetDateTime,
}

impl SubscriptionRow {
    pub(super) fn into_domain(self) -> Result<Subscription, StoreError> {
        Ok(Subscription {
            id: SubscriptionId::from_uuid(self.id),
            customer: CustomerId::from_uuid(self.customer_id),
            plan: self.plan_id.map(PlanId::from_uuid),
            price: self.price_id.map(PriceId::from_uuid),
            quantity: u32::try_from(self.quantity).map_err(|e| corrupt("quantity", e))?,
            status: SubscriptionStatus::parse(&self.status)
                .ok_or_else(|| corrupt("subscription status", &self.status))?,
            current_period_start: self.current_period_start,
            current_period_end: self.current_period_end,
            trial_end: self.trial_end,
            cancel_at_period_end: self.cancel_at_period_end,
            collection_paused: self.collection_paused,
            canceled_at: self.canceled_at,
            cancel_reason: self.cancel_reason,
            account: self.account,
            provider_subscription_id: self.provider_subscription_id,
            checkout_session: self.checkout_session_id.map(CheckoutId::from_uuid),
            created_at: self.created_at,
        })
    }
}

/// A subscription to insert.
pub struct NewSubscription<'a> {
    pub id: SubscriptionId,
    pub customer: CustomerId,
    pub price: Option<PriceId>,
    pub quantity: u32,
    pub status: SubscriptionStatus,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub trial_end: Option<OffsetDateTime>,
    pub account: &'a str,
    pub provider_id: &'a str,
    /// The session that made it; `None` for CreateSubscription's.
    pub checkout: Option<CheckoutId>,
    pub version: i64,
}

/// Inserts a subscription (its plan looked up from its price), names it on its session, and
/// records the change in the outbox.
pub async fn insert_subscription(
    conn: &mut PgConnection,
    tenant: TenantId,
    s: &NewSubscription<'_>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO subscriptions
             (tenant_id, id, customer_id, plan_id, price_id, quantity, status,
              current_period_start, current_period_end, trial_end, account,
              provider_subscription_id, checkout_session_id, provider_version, created_at,
              updated_at)
         VALUES ($1, $2, $3,
                 (SELECT plan_id FROM prices WHERE tenant_id = $1 AND id = $4),
                 $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, now(), now())",
        tenant.as_uuid(),
        s.id.as_uuid(),
        s.customer.as_uuid(),
        s.price.map(|p| p.as_uuid()),
        s.quantity as i32,
        s.status.as_str(),
        s.current_period_start,
        s.current_period_end,
        s.trial_end,
        s.account,
        s.provider_id,
        s.checkout.map(|c| c.as_uuid()),
        s.version,
    )
    .execute(&mut *conn)
    .await?;
    if let Some(checkout) = s.checkout {
        sqlx::query!(
            "UPDATE checkout_sessions SET subscription_id = $3, updated_at = now()
             WHERE tenant_id = $1 AND id = $2",
            tenant.as_uuid(),
            checkout.as_uuid(),
            s.id.as_uuid(),
        )
        .execute(&mut *conn)
        .await?;
    }
    record_change(conn, tenant, s.id, ChangeKind::Created).await
}

/// The subscription a session made, locked, with its applied version.
pub async fn lock_session_subscription(
    conn: &mut PgConnection,
    tenant: TenantId,
    checkout: CheckoutId,
) -> Result<Option<(Subscription, i64)>, StoreError> {
    let Some(version) = sqlx::query_scalar!(
        "SELECT provider_version FROM subscriptions
         WHERE tenant_id = $1 AND checkout_session_id = $2 FOR UPDATE",
        tenant.as_uuid(),
        checkout.as_uuid(),
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let found = sqlx::query_as!(
        SubscriptionRow,
        "SELECT id, customer_id, plan_id, price_id, quantity, status, current_period_start,
                current_period_end, trial_end, cancel_at_period_end, collection_paused,
                canceled_at, cancel_reason, account, provider_subscription_id,
                checkout_session_id, created_at
         FROM subscriptions WHERE tenant_id = $1 AND checkout_session_id = $2",
        tenant.as_uuid(),
        checkout.as_uuid(),
    )
    .fetch_one(conn)
    .await?
    .into_domain()?;
    Ok(Some((found, version)))
}

/// A subscription's state as the provider reports it, to write.
#[derive(Debug, Clone)]
pub struct SubscriptionState<'a> {
    pub lifecycle: &'a Lifecycle,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub trial_end: Option<OffsetDateTime>,
    pub version: i64,
}

/// The one write of a subscription's state after it exists: every change (the provider's
/// events, the lifecycle calls' answers, renewals) comes through here, under the row's lock
/// the caller took, so what must follow a change is added once, here: its outbox row (STATUS_CHANGED when
/// the status moved, UPDATED otherwise).
pub async fn update_subscription_state(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: SubscriptionId,
    s: &SubscriptionState<'_>,
) -> Result<(), StoreError> {
    // The FROM reads the row as the statement's snapshot has it: before this update.
    let before = sqlx::query_scalar!(
        "UPDATE subscriptions s
         SET status = $3, current_period_start = $4, current_period_end = $5, trial_end = $6,
             provider_version = $7, cancel_at_period_end = $8, collection_paused = $9,
             canceled_at = $10, cancel_reason = $11, updated_at = now()
         FROM (SELECT status FROM subscriptions WHERE tenant_id = $1 AND id = $2) old
         WHERE s.tenant_id = $1 AND s.id = $2
         RETURNING old.status",
        tenant.as_uuid(),
        id.as_uuid(),
        s.lifecycle.status.as_str(),
        s.current_period_start,
        s.current_period_end,
        s.trial_end,
        s.version,
        s.lifecycle.cancel_at_period_end,
        s.lifecycle.collection_paused,
        s.lifecycle.canceled_at,
        &s.lifecycle.cancel_reason,
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(before) = before else {
        return Ok(());
    };
    let kind = if before == s.lifecycle.status.as_str() {
        ChangeKind::Updated
    } else {
        ChangeKind::StatusChanged
    };
    record_change(conn, tenant, id, kind).await
}

/// Whether the customer holds a live subscription (neither canceled nor incomplete_expired).
/// The caller holds the customer's row lock (`FOR UPDATE`), which a subscription's insert
/// (its foreign key's `KEY SHARE`) waits for, so the answer holds until it commits.
pub async fn has_live_subscription(
    conn: &mut PgConnection,
    tenant: TenantId,
    customer: CustomerId,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM subscriptions
                          WHERE tenant_id = $1 AND customer_id = $2
                            AND status NOT IN ('canceled', 'incomplete_expired')) AS "live!""#,
        tenant.as_uuid(),
        customer.as_uuid(),
    )
    .fetch_one(conn)
    .await?)
}

/// The subscription, locked for the rest of the transaction.
pub async fn lock_subscription(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: SubscriptionId,
) -> Result<Option<Subscription>, StoreError> {
    sqlx::query_as!(
        SubscriptionRow,
        "SELECT id, customer_id, plan_id, price_id, quantity, status, current_period_start,
                current_period_end, trial_end, cancel_at_period_end, collection_paused,
                canceled_at, cancel_reason, account, provider_subscription_id,
                checkout_session_id, created_at
         FROM subscriptions WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .fetch_optional(conn)
    .await?
    .map(SubscriptionRow::into_domain)
    .transpose()
}

pub async fn find_subscription(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: SubscriptionId,
) -> Result<Option<Subscription>, StoreError> {
    sqlx::query_as!(
        SubscriptionRow,
        "SELECT id, customer_id, plan_id, price_id, quantity, status, current_period_start,
                current_period_end, trial_end, cancel_at_period_end, collection_paused,
                canceled_at, cancel_reason, account, provider_subscription_id,
                checkout_session_id, created_at
         FROM subscriptions WHERE tenant_id = $1 AND id = $2",
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .fetch_optional(conn)
    .await?
    .map(SubscriptionRow::into_domain)
    .transpose()
}

/// The tenant's subscriptions after `after`, by id, optionally of one customer and status.
pub async fn list_subscriptions(
    conn: &mut PgConnection,
    tenant: TenantId,
    customer: Option<CustomerId>,
    status: Option<SubscriptionStatus>,
    after: Uuid,
    limit: i64,
) -> Result<Vec<Subscription>, StoreError> {
    let rows = sqlx::query_as!(
        SubscriptionRow,
        "SELECT id, customer_id, plan_id, price_id, quantity, status, current_period_start,
                current_period_end, trial_end, cancel_at_period_end, collection_paused,
                canceled_at, cancel_reason, account, provider_subscription_id,
                checkout_session_id, created_at
         FROM subscriptions
         WHERE tenant_id = $1 AND id > $2
           AND ($3::uuid IS NULL OR customer_id = $3)
           AND ($4::text IS NULL OR status = $4)
         ORDER BY id
         LIMIT $5",
        tenant.as_uuid(),
        after,
        customer.map(|c| c.as_uuid()),
        status.map(SubscriptionStatus::as_str),
        limit,
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(SubscriptionRow::into_domain).collect()
}

/// A plan change made now: the subscription's price (and its plan) and quantity. A change
/// scheduled earlier is replaced by it, so it is dropped.
pub async fn set_subscription_price(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: SubscriptionId,
    price: PriceId,
    quantity: u32,
) -> Result<(), StoreError> {
    sqlx::query!(
        "WITH dropped AS (
             DELETE FROM subscription_scheduled_changes
             WHERE tenant_id = $1 AND subscription_id = $2)
         UPDATE subscriptions s
         SET price_id = $3, quantity = $4, updated_at = now(),
             plan_id = (SELECT plan_id FROM prices WHERE tenant_id = $1 AND id = $3)
         WHERE s.tenant_id = $1 AND s.id = $2",
        tenant.as_uuid(),
        id.as_uuid(),
        price.as_uuid(),
        i32::try_from(quantity).map_err(|e| corrupt("quantity", e))?,
    )
    .execute(&mut *conn)
    .await?;
    record_change(conn, tenant, id, ChangeKind::EntitlementsChanged).await
}

/// A plan change for the renewal that starts the subscription's next period (replacing one
/// scheduled before).
pub async fn schedule_price(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: SubscriptionId,
    price: PriceId,
    quantity: u32,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO subscription_scheduled_changes
             (tenant_id, subscription_id, price_id, quantity, created_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (tenant_id, subscription_id)
         DO UPDATE SET price_id = EXCLUDED.price_id, quantity = EXCLUDED.quantity",
        tenant.as_uuid(),
        id.as_uuid(),
        price.as_uuid(),
        i32::try_from(quantity).map_err(|e| corrupt("quantity", e))?,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Applies the plan change scheduled for a locked subscription, if any: called when a renewal
/// starts its next period.
pub async fn apply_scheduled_price(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: SubscriptionId,
) -> Result<(), StoreError> {
    let applied = sqlx::query!(
        "WITH taken AS (
             DELETE FROM subscription_scheduled_changes
             WHERE tenant_id = $1 AND subscription_id = $2
             RETURNING price_id, quantity)
         UPDATE subscriptions s
         SET price_id = taken.price_id, quantity = taken.quantity, updated_at = now(),
             plan_id = (SELECT plan_id FROM prices p
                        WHERE p.tenant_id = $1 AND p.id = taken.price_id)
         FROM taken
         WHERE s.tenant_id = $1 AND s.id = $2",
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .execute(&mut *conn)
    .await?;
    if applied.rows_affected() == 0 {
        return Ok(());
    }
    record_change(conn, tenant, id, ChangeKind::EntitlementsChanged).await
}

/// What a CreateSubscription asked, kept from before its provider call (see
/// `subscription_creations`).
#[derive(Debug, Clone)]
pub struct Creation {
    pub customer: CustomerId,
    pub price: PriceId,
    pub quantity: u32,
    pub account: String,
}

/// Records what a CreateSubscription asks under the subscription's id; the same id again
/// changes nothing (a retry's).
pub async fn insert_creation(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: SubscriptionId,
    c: &Creation,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO subscription_creations
             (tenant_id, id, customer_id, price_id, quantity, account, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, now())
         ON CONFLICT (tenant_id, id) DO NOTHING",
        tenant.as_uuid(),
        id.as_uuid(),
        c.customer.as_uuid(),
        c.price.as_uuid(),
        c.quantity as i32,
        c.account,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The CreateSubscription recorded under `id`, if one was.
pub async fn find_creation(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<Creation>, StoreError> {
    let Some(row) = sqlx::query!(
        "SELECT customer_id, price_id, quantity, account FROM subscription_creations
         WHERE tenant_id = $1 AND id = $2",
        tenant.as_uuid(),
        id,
    )
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Creation {
        customer: CustomerId::from_uuid(row.customer_id),
        price: PriceId::from_uuid(row.price_id),
        quantity: u32::try_from(row.quantity).map_err(|e| corrupt("quantity", e))?,
        account: row.account,
    }))
}

/// The CreateSubscription recorded under `id`, locked until the transaction ends: whoever
/// applies the provider's subscription first (the call's answer, its event, the resolver)
/// holds it while it makes the row, so a concurrent applier waits and then finds that row
/// instead of inserting a second one.
pub async fn lock_creation(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: Uuid,
) -> Result<Option<Creation>, StoreError> {
    let Some(row) = sqlx::query!(
        "SELECT customer_id, price_id, quantity, account FROM subscription_creations
         WHERE tenant_id = $1 AND id = $2
         FOR UPDATE",
        tenant.as_uuid(),
        id,
    )
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(Creation {
        customer: CustomerId::from_uuid(row.customer_id),
        price: PriceId::from_uuid(row.price_id),
        quantity: u32::try_from(row.quantity).map_err(|e| corrupt("quantity", e))?,
        account: row.account,
    }))
}

/// The subscription `id`, locked, with its applied version.
pub async fn lock_subscription_versioned(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: SubscriptionId,
) -> Result<Option<(Subscription, i64)>, StoreError> {
    let Some(version) = sqlx::query_scalar!(
        "SELECT provider_version FROM subscriptions
         WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let found = find_subscription(conn, tenant, id)
        .await?
        .ok_or_else(|| corrupt("subscription", "missing under its lock"))?;
    Ok(Some((found, version)))
}
