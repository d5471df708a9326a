//! Checkout sessions (`checkout_sessions`). A row is written before the provider is called and
//! stays invisible to Get and List until the provider's session is recorded on it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{StoreError, corrupt};
use crate::domain::checkout::{
    CheckoutSession, LineItem, Mode, NewCheckout, PaymentStatus, Status,
};
use crate::domain::customer::Metadata;
use crate::domain::ids::{CheckoutId, CustomerId, PaymentId, PriceId, SubscriptionId, TenantId};
use crate::domain::money::{Currency, Money};
use crate::domain::plan::{Billing, Interval};

/// A line item as stored in `checkout_sessions.line_items`: the store's own shape, so domain
/// types carry no serde.
#[derive(Serialize, Deserialize)]
struct StoredItem {
    /// The price's uuid, as text.
    price_id: Option<String>,
    name: String,
    unit_amount: i64,
    quantity: u32,
    amount_total: i64,
    /// "month", "year" or absent for one-time.
    interval: Option<String>,
    interval_count: u8,
    trial_days: u16,
}

fn store_items(items: &[LineItem]) -> Vec<StoredItem> {
    items
        .iter()
        .map(|i| {
            let (interval, interval_count, trial_days) = match i.billing {
                Billing::OneTime => (None, 0, 0),
                Billing::Recurring {
                    interval,
                    count,
                    trial_days,
                } => (
                    Some(match interval {
                        Interval::Month => "month",
                        Interval::Year => "year",
                    }),
                    count,
                    trial_days,
                ),
            };
            StoredItem {
                price_id: i.price_id.map(|p| p.as_uuid().to_string()),
                name: i.name.clone(),
                unit_amount: i.unit.amount(),
                quantity: i.quantity,
                amount_total: i.amount_total,
                interval: interval.map(str::to_owned),
                interval_count,
                trial_days,
            }
        })
        .collect()
}

fn load_items(items: Vec<StoredItem>, currency: Currency) -> Result<Vec<LineItem>, StoreError> {
    items
        .into_iter()
        .map(|i| {
            let billing = match i.interval.as_deref() {
                None => Billing::OneTime,
                Some(name) => {
                    let interval = match name {
                        "month" => Interval::Month,
                        "year" => Interval::Year,
                        other => return Err(corrupt("line item interval", other)),
                    };
                    Billing::recurring(interval, i.interval_count.into(), i.trial_days.into())
                        .map_err(|(_, e)| corrupt("line item billing", e))?
                }
            };
            Ok(LineItem {
                price_id: i
                    .price_id
                    .map(|p| p.parse::<Uuid>().map(PriceId::from_uuid))
                    .transpose()
                    .map_err(|e| corrupt("line item price", e))?,
                name: i.name,
                unit: Money::stored(i.unit_amount, currency)
                    .map_err(|e| corrupt("line item amount", e))?,
                billing,
                quantity: i.quantity,
                amount_total: i.amount_total,
            })
        })
        .collect()
}

struct SessionRow {
    id: Uuid,
    customer_id: Uuid,
    account: String,
    mode: String,
    status: String,
    payment_status: String,
    line_items: Json<Vec<StoredItem>>,
    amount_total: i64,
    currency: String,
    trial_days: i16,
    success_url: String,
    cancel_url: String,
    metadata: Json<BTreeMap<String, String>>,
    expires_at: OffsetDateTime,
    url: Option<String>,
    provider_session_id: Option<String>,
    subscription_id: Option<Uuid>,
    payment_id: Option<Uuid>,
    created_at: OffsetDateTime,
}

impl SessionRow {
    fn into_domain(self) -> Result<CheckoutSession, StoreError> {
        let currency = Currency::parse(&self.currency).map_err(|e| corrupt("currency", e))?;
        Ok(CheckoutSession {
            id: CheckoutId::from_uuid(self.id),
            customer: CustomerId::from_uuid(self.customer_id),
            account: self.account,
            mode: Mode::parse(&self.mode).ok_or_else(|| corrupt("checkout mode", &self.mode))?,
            status: Status::parse(&self.status)
                .ok_or_else(|| corrupt("checkout status", &self.status))?,
            payment_status: PaymentStatus::parse(&self.payment_status)
                .ok_or_else(|| corrupt("checkout payment status", &self.payment_status))?,
            items: load_items(self.line_items.0, currency)?,
            amount_total: self.amount_total,
            currency,
            success_url: self.success_url,
            cancel_url: self.cancel_url,
            trial_days: u16::try_from(self.trial_days).map_err(|e| corrupt("trial days", e))?,
            metadata: Metadata::parse(&self.metadata.0).map_err(|e| corrupt("metadata", e))?,
            expires_at: self.expires_at,
            url: self.url.ok_or_else(|| corrupt("checkout url", "missing"))?,
            provider_session_id: self
                .provider_session_id
                .ok_or_else(|| corrupt("provider session id", "missing"))?,
            subscription_id: self.subscription_id.map(SubscriptionId::from_uuid),
            payment_id: self.payment_id.map(PaymentId::from_uuid),
            created_at: self.created_at,
        })
    }
}

/// Writes a session before its provider call, invisible until [`record_provider_session`].
pub async fn insert_pending_session(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: CheckoutId,
    account: &str,
    new: &NewCheckout,
    payment: Option<PaymentId>,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO checkout_sessions
             (tenant_id, id, customer_id, account, mode, status, payment_status, line_items,
              amount_total, currency, trial_days, success_url, cancel_url, metadata, expires_at,
              payment_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 'open', 'unpaid', $6, $7, $8, $9, $10, $11, $12, $13, $15,
                 $14, $14)",
        tenant.as_uuid(),
        id.as_uuid(),
        new.customer.as_uuid(),
        account,
        new.mode.as_str(),
        Json(store_items(&new.items)) as _,
        new.amount_total,
        new.currency.code(),
        new.trial_days as i16,
        new.success_url,
        new.cancel_url,
        Json(new.metadata.as_map()) as _,
        new.expires_at,
        now,
        payment.map(|p| p.as_uuid()),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records the provider's session on Coffer's, making it visible; a state older than the one
/// applied (by version) leaves the state alone. An empty `url` (an answer that does not say
/// the page's URL, as PayTabs' transaction query does not) keeps the one recorded.
#[allow(clippy::too_many_arguments)]
pub async fn record_provider_session(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: CheckoutId,
    provider_session_id: &str,
    url: &str,
    status: Status,
    payment_status: PaymentStatus,
    expires_at: OffsetDateTime,
    version: i64,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE checkout_sessions
         SET provider_session_id = $3, url = COALESCE(NULLIF($4, ''), url, ''),
             status = CASE WHEN provider_version < $8 THEN $5 ELSE status END,
             payment_status = CASE WHEN provider_version < $8 THEN $6 ELSE payment_status END,
             expires_at = $7,
             provider_version = greatest(provider_version, $8),
             updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
        tenant.as_uuid(),
        id.as_uuid(),
        provider_session_id,
        url,
        status.as_str(),
        payment_status.as_str(),
        expires_at,
        version,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A visible session.
pub async fn find_session(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: CheckoutId,
) -> Result<Option<CheckoutSession>, StoreError> {
    let row = sqlx::query_as!(
        SessionRow,
        r#"SELECT id, customer_id, account, mode, status, payment_status,
                  line_items AS "line_items: Json<Vec<StoredItem>>", amount_total, currency,
                  trial_days, success_url, cancel_url,
                  metadata AS "metadata: Json<BTreeMap<String, String>>", expires_at, url,
                  provider_session_id, subscription_id, payment_id, created_at
           FROM checkout_sessions
           WHERE tenant_id = $1 AND id = $2 AND provider_session_id IS NOT NULL"#,
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .fetch_optional(conn)
    .await?;
    row.map(SessionRow::into_domain).transpose()
}

/// The tenant's visible sessions after `after`, by id, optionally of one customer and status.
pub async fn list_sessions(
    conn: &mut PgConnection,
    tenant: TenantId,
    customer: Option<CustomerId>,
    status: Option<Status>,
    after: Uuid,
    limit: i64,
) -> Result<Vec<CheckoutSession>, StoreError> {
    let rows = sqlx::query_as!(
        SessionRow,
        r#"SELECT id, customer_id, account, mode, status, payment_status,
                  line_items AS "line_items: Json<Vec<StoredItem>>", amount_total, currency,
                  trial_days, success_url, cancel_url,
                  metadata AS "metadata: Json<BTreeMap<String, String>>", expires_at, url,
                  provider_session_id, subscription_id, payment_id, created_at
           FROM checkout_sessions
           WHERE tenant_id = $1 AND provider_session_id IS NOT NULL AND id > $2
             AND ($3::uuid IS NULL OR customer_id = $3)
             AND ($4::text IS NULL OR status = $4)
           ORDER BY id
           LIMIT $5"#,
        tenant.as_uuid(),
        after,
        customer.map(|c| c.as_uuid()),
        status.map(Status::as_str),
        limit,
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(SessionRow::into_domain).collect()
}

/// A session locked for an update (`FOR UPDATE`): what the appliers decide on.
#[derive(Debug, Clone)]
pub struct LockedSession {
    pub status: Status,
    /// `None` while the provider's session is not recorded yet (the row is invisible).
    pub provider_session_id: Option<String>,
    pub provider_version: i64,
}

pub async fn lock_session(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: CheckoutId,
) -> Result<Option<LockedSession>, StoreError> {
    let Some(row) = sqlx::query!(
        "SELECT status, provider_session_id, provider_version FROM checkout_sessions
         WHERE tenant_id = $1 AND id = $2 FOR UPDATE",
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .fetch_optional(conn)
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(LockedSession {
        status: Status::parse(&row.status)
            .ok_or_else(|| corrupt("checkout status", &row.status))?,
        provider_session_id: row.provider_session_id,
        provider_version: row.provider_version,
    }))
}

/// The provider's state of a locked, visible session at `version` (an event's view: the URL
/// and provider id are already recorded and never change).
pub async fn update_session_state(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: CheckoutId,
    status: Status,
    payment_status: PaymentStatus,
    expires_at: OffsetDateTime,
    version: i64,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE checkout_sessions
         SET status = $3, payment_status = $4, expires_at = $5, provider_version = $6,
             updated_at = now()
         WHERE tenant_id = $1 AND id = $2",
        tenant.as_uuid(),
        id.as_uuid(),
        status.as_str(),
        payment_status.as_str(),
        expires_at,
        version,
    )
    .execute(conn)
    .await?;
    Ok(())
}
