//! The sandbox provider's money (`sandbox_payments`, `sandbox_refunds`,
//! `sandbox_subscriptions`), as its API reads them and as its refunds change them. The hosted
//! page writes payments and subscriptions; this module only reads them, and makes refunds.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use super::StoreError;

#[derive(Debug, Clone)]
pub struct PaymentRow {
    pub id: String,
    pub session_id: String,
    pub client_reference: Uuid,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub failure_code: Option<String>,
    pub card_brand: Option<String>,
    pub card_last4: Option<String>,
    pub amount_refunded: i64,
    pub version: i64,
}

#[derive(Debug, Clone)]
pub struct RefundRow {
    pub id: String,
    pub payment_id: String,
    pub client_reference: Uuid,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub version: i64,
}

#[derive(Debug, Clone)]
pub struct SubscriptionRow {
    pub id: String,
    pub session_id: String,
    pub client_reference: Uuid,
    pub customer: String,
    pub status: String,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub trial_end: Option<OffsetDateTime>,
    pub version: i64,
}

/// The payment of a sandbox session, if a card was tried.
pub async fn find_session_payment(
    conn: &mut PgConnection,
    account: &str,
    session_id: &str,
) -> Result<Option<PaymentRow>, StoreError> {
    Ok(sqlx::query_as!(
        PaymentRow,
        "SELECT id, session_id, client_reference, amount, currency, status, failure_code,
                card_brand, card_last4, amount_refunded, version
         FROM sandbox_payments WHERE account = $1 AND session_id = $2",
        account,
        session_id,
    )
    .fetch_optional(conn)
    .await?)
}

/// The payment of the session Coffer created as `client_reference` (its checkout id).
pub async fn find_payment_by_reference(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<PaymentRow>, StoreError> {
    Ok(sqlx::query_as!(
        PaymentRow,
        "SELECT id, session_id, client_reference, amount, currency, status, failure_code,
                card_brand, card_last4, amount_refunded, version
         FROM sandbox_payments WHERE account = $1 AND client_reference = $2",
        account,
        client_reference,
    )
    .fetch_optional(conn)
    .await?)
}

pub async fn find_session_subscription(
    conn: &mut PgConnection,
    account: &str,
    session_id: &str,
) -> Result<Option<SubscriptionRow>, StoreError> {
    Ok(sqlx::query_as!(
        SubscriptionRow,
        "SELECT id, session_id, client_reference, customer, status, current_period_start,
                current_period_end, trial_end, version
         FROM sandbox_subscriptions WHERE account = $1 AND session_id = $2",
        account,
        session_id,
    )
    .fetch_optional(conn)
    .await?)
}

pub async fn find_subscription_by_reference(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<SubscriptionRow>, StoreError> {
    Ok(sqlx::query_as!(
        SubscriptionRow,
        "SELECT id, session_id, client_reference, customer, status, current_period_start,
                current_period_end, trial_end, version
         FROM sandbox_subscriptions WHERE account = $1 AND client_reference = $2",
        account,
        client_reference,
    )
    .fetch_optional(conn)
    .await?)
}

pub async fn find_refund_by_reference(
    conn: &mut PgConnection,
    account: &str,
    client_reference: Uuid,
) -> Result<Option<RefundRow>, StoreError> {
    Ok(sqlx::query_as!(
        RefundRow,
        "SELECT r.id, r.payment_id, r.client_reference, r.amount, p.currency, r.status, r.version
         FROM sandbox_refunds r
         JOIN sandbox_payments p ON p.account = r.account AND p.id = r.payment_id
         WHERE r.account = $1 AND r.client_reference = $2",
        account,
        client_reference,
    )
    .fetch_optional(conn)
    .await?)
}

/// A sandbox payment locked for a refund: its status, amount and what was refunded.
pub async fn lock_payment(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
) -> Result<Option<PaymentRow>, StoreError> {
    Ok(sqlx::query_as!(
        PaymentRow,
        "SELECT id, session_id, client_reference, amount, currency, status, failure_code,
                card_brand, card_last4, amount_refunded, version
         FROM sandbox_payments WHERE account = $1 AND id = $2 FOR UPDATE",
        account,
        id,
    )
    .fetch_optional(conn)
    .await?)
}

/// A succeeded refund of `amount` on a locked payment: the refund row and the payment's
/// `amount_refunded` (its CHECK stops an over-refund), the payment's version bumped.
pub async fn insert_refund(
    conn: &mut PgConnection,
    account: &str,
    id: &str,
    payment: &PaymentRow,
    client_reference: Uuid,
    amount: i64,
) -> Result<RefundRow, StoreError> {
    sqlx::query!(
        "INSERT INTO sandbox_refunds (account, id, payment_id, client_reference, amount, status,
                                      version, created_at)
         VALUES ($1, $2, $3, $4, $5, 'succeeded', 1, now())",
        account,
        id,
        payment.id,
        client_reference,
        amount,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "UPDATE sandbox_payments
         SET amount_refunded = amount_refunded + $3, version = version + 1, updated_at = now()
         WHERE account = $1 AND id = $2",
        account,
        payment.id,
        amount,
    )
    .execute(conn)
    .await?;
    Ok(RefundRow {
        id: id.to_owned(),
        payment_id: payment.id.clone(),
        client_reference,
        amount,
        currency: payment.currency.clone(),
        status: "succeeded".into(),
        version: 1,
    })
}
