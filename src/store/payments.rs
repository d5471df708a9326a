//! Payments, refunds and disputes (`payments`, `refunds`, `disputes`). Provider
//! state is written only under the row's lock (`FOR UPDATE`, taken by the `lock_*` functions)
//! and only when newer than `provider_version`; the app layer decides, this layer writes.

use sqlx::PgConnection;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::{StoreError, corrupt};
use crate::domain::ids::{CheckoutId, CustomerId, PaymentId, RefundId, SubscriptionId, TenantId};
use crate::domain::money::Currency;
use crate::domain::payment::{
    DisputeStatus, Payment, PaymentStatus, Refund, RefundReason, RefundStatus,
};

struct PaymentRow {
    id: Uuid,
    customer_id: Uuid,
    checkout_session_id: Option<Uuid>,
    subscription_id: Option<Uuid>,
    period_start: Option<OffsetDateTime>,
    period_end: Option<OffsetDateTime>,
    account: String,
    amount: i64,
    currency: String,
    status: String,
    failure_code: Option<String>,
    card_brand: Option<String>,
    card_last4: Option<String>,
    amount_refunded: i64,
    amount_lost: i64,
    provider_payment_id: Option<String>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

impl PaymentRow {
    fn into_domain(self) -> Result<Payment, StoreError> {
        Ok(Payment {
            id: PaymentId::from_uuid(self.id),
            customer: CustomerId::from_uuid(self.customer_id),
            checkout_session: self.checkout_session_id.map(CheckoutId::from_uuid),
            subscription: self.subscription_id.map(SubscriptionId::from_uuid),
            period: self.period_start.map(|start| (start, self.period_end)),
            account: self.account,
            amount: self.amount,
            currency: Currency::parse(&self.currency).map_err(|e| corrupt("currency", e))?,
            status: PaymentStatus::parse(&self.status)
                .ok_or_else(|| corrupt("payment status", &self.status))?,
            failure_code: self.failure_code,
            card_brand: self.card_brand,
            card_last4: self.card_last4,
            amount_refunded: self.amount_refunded,
            amount_lost: self.amount_lost,
            provider_payment_id: self.provider_payment_id,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// The payment of a session that collects money, written with the pending session.
#[allow(clippy::too_many_arguments)]
pub async fn insert_payment(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: PaymentId,
    customer: CustomerId,
    checkout: CheckoutId,
    account: &str,
    amount: i64,
    currency: Currency,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO payments (tenant_id, id, customer_id, checkout_session_id, account, amount,
                               currency, status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'created', $8, $8)",
        tenant.as_uuid(),
        id.as_uuid(),
        customer.as_uuid(),
        checkout.as_uuid(),
        account,
        amount,
        currency.code(),
        now,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A payment whose session is visible (its provider session exists).
pub async fn find_payment(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: PaymentId,
) -> Result<Option<Payment>, StoreError> {
    let row = sqlx::query_as!(
        PaymentRow,
        "SELECT p.id, p.customer_id, p.checkout_session_id, p.subscription_id, p.period_start,
                p.period_end, p.account, p.amount, p.currency, p.status, p.failure_code,
                p.card_brand, p.card_last4, p.amount_refunded, p.amount_lost,
                p.provider_payment_id, p.created_at, p.updated_at
         FROM payments p
         LEFT JOIN checkout_sessions s
                ON s.tenant_id = p.tenant_id AND s.id = p.checkout_session_id
         WHERE p.tenant_id = $1 AND p.id = $2
           AND (p.checkout_session_id IS NULL OR s.provider_session_id IS NOT NULL)",
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .fetch_optional(conn)
    .await?;
    row.map(PaymentRow::into_domain).transpose()
}

/// The tenant's visible payments after `after`, by id, optionally of one customer, status and
/// subscription.
#[allow(clippy::too_many_arguments)]
pub async fn list_payments(
    conn: &mut PgConnection,
    tenant: TenantId,
    customer: Option<CustomerId>,
    status: Option<PaymentStatus>,
    subscription: Option<SubscriptionId>,
    after: Uuid,
    limit: i64,
) -> Result<Vec<Payment>, StoreError> {
    let rows = sqlx::query_as!(
        PaymentRow,
        "SELECT p.id, p.customer_id, p.checkout_session_id, p.subscription_id, p.period_start,
                p.period_end, p.account, p.amount, p.currency, p.status, p.failure_code,
                p.card_brand, p.card_last4, p.amount_refunded, p.amount_lost,
                p.provider_payment_id, p.created_at, p.updated_at
         FROM payments p
         LEFT JOIN checkout_sessions s
                ON s.tenant_id = p.tenant_id AND s.id = p.checkout_session_id
         WHERE p.tenant_id = $1 AND p.id > $2
           AND (p.checkout_session_id IS NULL OR s.provider_session_id IS NOT NULL)
           AND ($3::uuid IS NULL OR p.customer_id = $3)
           AND ($4::text IS NULL OR p.status = $4)
           AND ($6::uuid IS NULL OR p.subscription_id = $6)
         ORDER BY p.id
         LIMIT $5",
        tenant.as_uuid(),
        after,
        customer.map(|c| c.as_uuid()),
        status.map(PaymentStatus::as_str),
        limit,
        subscription.map(|s| s.as_uuid()),
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(PaymentRow::into_domain).collect()
}

/// A payment locked for an update: what the appliers and RefundPayment decide on.
#[derive(Debug, Clone)]
pub struct LockedPayment {
    pub id: PaymentId,
    pub account: String,
    pub status: PaymentStatus,
    pub amount: i64,
    pub currency: Currency,
    pub amount_refunded: i64,
    pub amount_refund_pending: i64,
    pub provider_payment_id: Option<String>,
    pub provider_version: i64,
}

struct LockedRow {
    id: Uuid,
    account: String,
    status: String,
    amount: i64,
    currency: String,
    amount_refunded: i64,
    amount_refund_pending: i64,
    provider_payment_id: Option<String>,
    provider_version: i64,
}

impl LockedRow {
    fn into_locked(self) -> Result<LockedPayment, StoreError> {
        Ok(LockedPayment {
            id: PaymentId::from_uuid(self.id),
            account: self.account,
            status: PaymentStatus::parse(&self.status)
                .ok_or_else(|| corrupt("payment status", &self.status))?,
            amount: self.amount,
            currency: Currency::parse(&self.currency).map_err(|e| corrupt("currency", e))?,
            amount_refunded: self.amount_refunded,
            amount_refund_pending: self.amount_refund_pending,
            provider_payment_id: self.provider_payment_id,
            provider_version: self.provider_version,
        })
    }
}

/// Locks a payment (`FOR UPDATE`) until the transaction ends.
pub async fn lock_payment(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: PaymentId,
) -> Result<Option<LockedPayment>, StoreError> {
    sqlx::query_as!(
        LockedRow,
        "SELECT id, account, status, amount, currency, amount_refunded, amount_refund_pending,
                provider_payment_id, provider_version
         FROM payments WHERE tenant_id = $1 AND id = $2
         FOR UPDATE",
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .fetch_optional(conn)
    .await?
    .map(LockedRow::into_locked)
    .transpose()
}

/// Locks the payment of a checkout session, if it has one.
pub async fn lock_session_payment(
    conn: &mut PgConnection,
    tenant: TenantId,
    checkout: CheckoutId,
) -> Result<Option<LockedPayment>, StoreError> {
    sqlx::query_as!(
        LockedRow,
        "SELECT id, account, status, amount, currency, amount_refunded, amount_refund_pending,
                provider_payment_id, provider_version
         FROM payments
         WHERE tenant_id = $1 AND checkout_session_id = $2 AND subscription_id IS NULL
         FOR UPDATE",
        tenant.as_uuid(),
        checkout.as_uuid(),
    )
    .fetch_optional(conn)
    .await?
    .map(LockedRow::into_locked)
    .transpose()
}

/// Locks the charge of a subscription's period starting `period_start`, made (CREATED, with
/// `amount`) if it is not there yet: the period's one payment, however often its events come.
#[allow(clippy::too_many_arguments)]
pub async fn lock_renewal_payment(
    conn: &mut PgConnection,
    tenant: TenantId,
    subscription: &crate::domain::subscription::Subscription,
    period: (OffsetDateTime, Option<OffsetDateTime>),
    amount: i64,
    currency: Currency,
    now: OffsetDateTime,
) -> Result<LockedPayment, StoreError> {
    let (period_start, period_end) = period;
    sqlx::query!(
        "INSERT INTO payments (tenant_id, id, customer_id, checkout_session_id, account, amount,
                               currency, status, subscription_id, period_start, period_end,
                               created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'created', $8, $9, $11, $10, $10)
         ON CONFLICT (tenant_id, subscription_id, period_start)
             WHERE subscription_id IS NOT NULL
         DO NOTHING",
        tenant.as_uuid(),
        PaymentId::generate().as_uuid(),
        subscription.customer.as_uuid(),
        subscription.checkout_session.map(|c| c.as_uuid()),
        subscription.account,
        amount,
        currency.code(),
        subscription.id.as_uuid(),
        period_start,
        now,
        period_end,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query_as!(
        LockedRow,
        "SELECT id, account, status, amount, currency, amount_refunded, amount_refund_pending,
                provider_payment_id, provider_version
         FROM payments
         WHERE tenant_id = $1 AND subscription_id = $2 AND period_start = $3
         FOR UPDATE",
        tenant.as_uuid(),
        subscription.id.as_uuid(),
        period_start,
    )
    .fetch_one(conn)
    .await?
    .into_locked()
}

/// The provider's view of a locked payment: its status and card, at `version`.
#[allow(clippy::too_many_arguments)]
pub async fn update_payment_state(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: PaymentId,
    status: PaymentStatus,
    failure_code: Option<&str>,
    card: Option<(&str, &str)>,
    provider_id: &str,
    version: i64,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE payments
         SET status = $3, failure_code = $4,
             card_brand = coalesce($5, card_brand), card_last4 = coalesce($6, card_last4),
             provider_payment_id = $7, provider_version = $8, updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
        tenant.as_uuid(),
        id.as_uuid(),
        status.as_str(),
        failure_code,
        card.map(|c| c.0),
        card.map(|c| c.1),
        provider_id,
        version,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A payment that was not paid when its session expired: EXPIRED (from CREATED, PROVIDER_PENDING
/// or FAILED; any other status is left alone). Returns whether it changed.
pub async fn expire_session_payment(
    conn: &mut PgConnection,
    tenant: TenantId,
    checkout: CheckoutId,
) -> Result<bool, StoreError> {
    let done = sqlx::query!(
        "UPDATE payments SET status = 'expired', failure_code = NULL, updated_at = now()
         WHERE tenant_id = $1 AND checkout_session_id = $2 AND subscription_id IS NULL
           AND status IN ('created', 'provider_pending', 'failed')",
        tenant.as_uuid(),
        checkout.as_uuid(),
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The sweeper's step: every OPEN session past `expires_at` (up to `limit`, across tenants)
/// becomes EXPIRED, and its unpaid payment with it, in one statement. Returns how many
/// sessions and payments it expired.
pub async fn expire_due_sessions(
    conn: &mut PgConnection,
    now: OffsetDateTime,
    limit: i64,
) -> Result<(u64, u64), StoreError> {
    let row = sqlx::query!(
        r#"WITH due AS (
               SELECT tenant_id, id FROM checkout_sessions
               WHERE status = 'open' AND expires_at <= $1
               ORDER BY expires_at
               LIMIT $2
               FOR UPDATE SKIP LOCKED
           ), sessions AS (
               UPDATE checkout_sessions s SET status = 'expired', updated_at = now()
               FROM due WHERE s.tenant_id = due.tenant_id AND s.id = due.id
               RETURNING s.tenant_id, s.id
           ), paid AS (
               UPDATE payments p
               SET status = 'expired', failure_code = NULL, updated_at = now()
               FROM sessions
               WHERE p.tenant_id = sessions.tenant_id AND p.checkout_session_id = sessions.id
                 AND p.subscription_id IS NULL AND p.status IN ('created', 'provider_pending', 'failed')
               RETURNING p.id
           )
           SELECT (SELECT count(*) FROM sessions) AS "sessions!",
                  (SELECT count(*) FROM paid) AS "payments!""#,
        now,
        limit,
    )
    .fetch_one(conn)
    .await?;
    Ok((row.sessions as u64, row.payments as u64))
}

struct RefundRow {
    id: Uuid,
    payment_id: Uuid,
    amount: i64,
    currency: String,
    reason: String,
    status: String,
    failure_code: Option<String>,
    provider_refund_id: Option<String>,
    created_at: OffsetDateTime,
}

impl RefundRow {
    fn into_domain(self) -> Result<Refund, StoreError> {
        Ok(Refund {
            id: RefundId::from_uuid(self.id),
            payment: PaymentId::from_uuid(self.payment_id),
            amount: self.amount,
            currency: Currency::parse(&self.currency).map_err(|e| corrupt("currency", e))?,
            reason: RefundReason::parse(&self.reason)
                .ok_or_else(|| corrupt("refund reason", &self.reason))?,
            status: RefundStatus::parse(&self.status)
                .ok_or_else(|| corrupt("refund status", &self.status))?,
            failure_code: self.failure_code,
            provider_refund_id: self.provider_refund_id,
            created_at: self.created_at,
        })
    }
}

/// A refund asked for (pending), its amount held on the locked payment so concurrent refunds
/// count it. The CHECK constraints make an over-refund fail here even if a caller forgot.
#[allow(clippy::too_many_arguments)]
pub async fn insert_refund(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: RefundId,
    payment: &LockedPayment,
    amount: i64,
    reason: RefundReason,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO refunds (tenant_id, id, payment_id, account, amount, currency, reason,
                              status, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $8)",
        tenant.as_uuid(),
        id.as_uuid(),
        payment.id.as_uuid(),
        payment.account,
        amount,
        payment.currency.code(),
        reason.as_str(),
        now,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "UPDATE payments SET amount_refund_pending = amount_refund_pending + $3, updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
        tenant.as_uuid(),
        payment.id.as_uuid(),
        amount,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A refund locked for an update.
#[derive(Debug, Clone)]
pub struct LockedRefund {
    pub payment: PaymentId,
    pub amount: i64,
    pub status: RefundStatus,
    pub provider_version: i64,
}

/// Locks a refund and then its payment (always in that order, so two settlements never wait
/// on each other in a cycle).
pub async fn lock_refund(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: RefundId,
) -> Result<Option<LockedRefund>, StoreError> {
    let Some(row) = sqlx::query!(
        "SELECT payment_id, amount, status, provider_version FROM refunds
         WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let payment = PaymentId::from_uuid(row.payment_id);
    lock_payment(conn, tenant, payment).await?;
    Ok(Some(LockedRefund {
        payment,
        amount: row.amount,
        status: RefundStatus::parse(&row.status)
            .ok_or_else(|| corrupt("refund status", &row.status))?,
        provider_version: row.provider_version,
    }))
}

/// Records a locked refund's provider state; when it leaves PENDING its amount moves off the
/// payment's pending total, onto `amount_refunded` if it succeeded. The caller checked the
/// transition, so this happens once per refund.
#[allow(clippy::too_many_arguments)]
pub async fn settle_refund(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: RefundId,
    locked: &LockedRefund,
    status: RefundStatus,
    failure_code: Option<&str>,
    provider_id: Option<&str>,
    version: i64,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE refunds
         SET status = $3, failure_code = coalesce($4, failure_code),
             provider_refund_id = coalesce($5, provider_refund_id),
             provider_version = greatest(provider_version, $6), updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
        tenant.as_uuid(),
        id.as_uuid(),
        status.as_str(),
        failure_code,
        provider_id,
        version,
    )
    .execute(&mut *conn)
    .await?;
    if locked.status == RefundStatus::Pending && status != RefundStatus::Pending {
        let refunded = if status == RefundStatus::Succeeded {
            locked.amount
        } else {
            0
        };
        sqlx::query!(
            "UPDATE payments
             SET amount_refund_pending = amount_refund_pending - $3,
                 amount_refunded = amount_refunded + $4, updated_at = now()
             WHERE tenant_id = $1 AND id = $2",
            tenant.as_uuid(),
            locked.payment.as_uuid(),
            locked.amount,
            refunded,
        )
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// A refund that failed without the provider doing anything, asked for again: PENDING, its
/// amount held on the (locked) payment again.
pub async fn repend_refund(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: RefundId,
    payment: PaymentId,
    amount: i64,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE refunds SET status = 'pending', failure_code = NULL, updated_at = now()
         WHERE tenant_id = $1 AND id = $2 AND status = 'failed'",
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "UPDATE payments SET amount_refund_pending = amount_refund_pending + $3, updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
        tenant.as_uuid(),
        payment.as_uuid(),
        amount,
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn find_refund(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: RefundId,
) -> Result<Option<Refund>, StoreError> {
    sqlx::query_as!(
        RefundRow,
        "SELECT id, payment_id, amount, currency, reason, status, failure_code,
                provider_refund_id, created_at
         FROM refunds WHERE tenant_id = $1 AND id = $2",
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .fetch_optional(conn)
    .await?
    .map(RefundRow::into_domain)
    .transpose()
}

/// A dispute as the provider reports it, to record.
pub struct DisputeState<'a> {
    pub provider_dispute_id: &'a str,
    pub amount: i64,
    pub currency: Currency,
    pub status: DisputeStatus,
    pub reason: Option<&'a str>,
    pub version: i64,
}

/// Records a dispute of a locked payment: a new row, or the provider's newer state of a known
/// one (an older state, by version, changes nothing). Returns every dispute of the payment, as
/// (status, amount), for the payment's state.
pub async fn record_dispute(
    conn: &mut PgConnection,
    tenant: TenantId,
    payment: PaymentId,
    account: &str,
    d: &DisputeState<'_>,
) -> Result<Vec<(DisputeStatus, i64)>, StoreError> {
    sqlx::query!(
        "INSERT INTO disputes (tenant_id, id, payment_id, account, provider_dispute_id, amount,
                               currency, status, reason, provider_version, created_at,
                               updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), now())
         ON CONFLICT (account, provider_dispute_id) DO UPDATE
         SET amount = EXCLUDED.amount, status = EXCLUDED.status, reason = EXCLUDED.reason,
             provider_version = EXCLUDED.provider_version, updated_at = now()
         WHERE disputes.provider_version < EXCLUDED.provider_version
           AND disputes.tenant_id = EXCLUDED.tenant_id",
        tenant.as_uuid(),
        Uuid::now_v7(),
        payment.as_uuid(),
        account,
        d.provider_dispute_id,
        d.amount,
        d.currency.code(),
        d.status.as_str(),
        d.reason,
        d.version,
    )
    .execute(&mut *conn)
    .instrument(super::statement_span!("INSERT", "disputes"))
    .await?;
    let rows = sqlx::query!(
        "SELECT status, amount FROM disputes WHERE tenant_id = $1 AND payment_id = $2",
        tenant.as_uuid(),
        payment.as_uuid(),
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let status = DisputeStatus::parse(&r.status)
                .ok_or_else(|| corrupt("dispute status", &r.status))?;
            Ok((status, r.amount))
        })
        .collect()
}

/// The state a locked payment's disputes make: its status and what lost disputes took.
pub async fn update_payment_disputes(
    conn: &mut PgConnection,
    tenant: TenantId,
    payment: PaymentId,
    status: PaymentStatus,
    amount_lost: i64,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE payments SET status = $3, amount_lost = $4, updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
        tenant.as_uuid(),
        payment.as_uuid(),
        status.as_str(),
        amount_lost,
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "payments"))
    .await?;
    Ok(())
}
