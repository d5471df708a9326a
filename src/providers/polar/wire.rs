//! Polar's JSON, as its published OpenAPI schema (`docs/openapi/*.openapi.json` in
//! polarsource/polar) names it: the objects Coffer reads, with only the fields it reads, and
//! the bodies it sends. Nothing here decides anything; [`super::map`] turns these into the
//! port's types.
//!
//! Timestamps stay strings here (Polar writes RFC 3339 with microseconds) and are parsed where
//! they are used; amounts are integers in the currency's minor unit, as Polar sends them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The metadata key carrying Coffer's checkout id, on checkouts — and, since Polar copies a
/// checkout's metadata, on its orders and subscriptions (renewal orders included).
pub const CHECKOUT_KEY: &str = "coffer_checkout_id";
/// On checkouts: when Coffer's session expires (Unix seconds). Polar keeps a checkout open for
/// 24 hours and cannot be told otherwise; Coffer's session ends at the caller's time.
pub const EXPIRES_KEY: &str = "coffer_expires_at";
/// The metadata key carrying Coffer's price id, on the products mirroring Coffer's prices.
pub const PRICE_KEY: &str = "coffer_price_id";
pub const METER_KEY: &str = "coffer_meter_id";
/// The metadata key carrying Coffer's refund id, on refunds.
pub const REFUND_KEY: &str = "coffer_refund_id";
/// The metadata key carrying Coffer's customer id (which is also the customer's Polar
/// `external_id`).
pub const CUSTOMER_KEY: &str = "coffer_customer_id";
/// The caller's own id of the customer, when it has one.
pub const EXTERNAL_KEY: &str = "coffer_external_id";
/// On the private products that carry inline lines: the line's name they are found by.
pub const LINE_KEY: &str = "coffer_line_name";

/// Polar's `metadata`: string keys, string, integer, number or boolean values.
pub type Metadata = serde_json::Map<String, Value>;

/// The string value of `key` in `metadata`.
pub fn meta<'a>(metadata: &'a Metadata, key: &str) -> Option<&'a str> {
    metadata.get(key).and_then(Value::as_str)
}

/// `ListResource_*`: one page of a list.
#[derive(Debug, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub pagination: Pagination,
}

#[derive(Debug, Deserialize)]
pub struct Pagination {
    pub total_count: i64,
    pub max_page: i64,
}

/// `Customer` (individual or team: both have these).
#[derive(Debug, Deserialize)]
pub struct Customer {
    pub id: String,
    #[serde(default)]
    pub external_id: Option<String>,
}

/// `Product`.
#[derive(Debug, Deserialize)]
pub struct Product {
    pub id: String,
    #[serde(default)]
    pub is_archived: bool,
    #[serde(default)]
    pub metadata: Metadata,
}

/// `CheckoutProduct`, the product a checkout sells.
#[derive(Debug, Deserialize)]
pub struct CheckoutProduct {
    pub id: String,
    #[serde(default)]
    pub is_recurring: bool,
}

/// `Checkout`: a checkout session, read with an access token.
#[derive(Debug, Deserialize)]
pub struct Checkout {
    pub id: String,
    pub created_at: String,
    pub modified_at: Option<String>,
    /// `open`, `expired`, `confirmed`, `succeeded`, `failed`.
    pub status: String,
    pub url: String,
    pub expires_at: String,
    /// False for a free checkout (a trial): nothing is charged now.
    #[serde(default = "yes")]
    pub is_payment_required: bool,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub product: Option<CheckoutProduct>,
    #[serde(default)]
    pub customer_id: Option<String>,
}

fn yes() -> bool {
    true
}

/// `Order`: what Polar charged (or will charge) for a checkout, a renewal or an update.
#[derive(Debug, Deserialize)]
pub struct Order {
    pub id: String,
    pub created_at: String,
    pub modified_at: Option<String>,
    /// `draft`, `pending`, `paid`, `refunded`, `partially_refunded`, `void`.
    pub status: String,
    /// Amount after discounts, before taxes (tax is Polar's, on top).
    pub net_amount: i64,
    /// Refunded of `net_amount` (tax refunded apart).
    pub refunded_amount: i64,
    /// Lower case (`usd`).
    pub currency: String,
    /// `purchase`, `subscription_create`, `subscription_cycle`, `subscription_update`,
    /// `subscription_meter_cycle`.
    pub billing_reason: String,
    #[serde(default)]
    pub subscription_id: Option<String>,
    #[serde(default)]
    pub checkout_id: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
}

/// `Refund`.
#[derive(Debug, Deserialize)]
pub struct Refund {
    pub id: String,
    pub created_at: String,
    pub modified_at: Option<String>,
    /// `pending`, `succeeded`, `failed`, `canceled`.
    pub status: String,
    pub amount: i64,
    pub currency: String,
    pub order_id: String,
    #[serde(default)]
    pub metadata: Metadata,
}

/// `Subscription`.
#[derive(Debug, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub created_at: String,
    pub modified_at: Option<String>,
    /// Stripe's list, as Coffer's: `incomplete`, `incomplete_expired`, `trialing`, `active`,
    /// `past_due`, `canceled`, `unpaid`, `paused`.
    pub status: String,
    pub current_period_start: String,
    pub current_period_end: String,
    #[serde(default)]
    pub trial_end: Option<String>,
    #[serde(default)]
    pub cancel_at_period_end: bool,
    #[serde(default)]
    pub canceled_at: Option<String>,
    #[serde(default)]
    pub customer_cancellation_comment: Option<String>,
    #[serde(default)]
    pub product_id: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
}

/// `CustomerSession`. Its `token` is a credential to the customer's portal and is never
/// read; the portal URL carries it too, so the URL is a secret as well.
#[derive(Deserialize)]
pub struct CustomerSession {
    pub customer_portal_url: String,
    pub expires_at: String,
}

impl std::fmt::Debug for CustomerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerSession")
            .field("customer_portal_url", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// An error answer: `{"error": "<name>", "detail": "<message>"}` from Polar's own errors,
/// `{"detail": [ValidationError, ...]}` (with `error` on newer servers) for a 422, and
/// `{"error": "invalid_token" | "insufficient_scope", "error_description": ...}` from its
/// OAuth2 layer.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub detail: Option<Value>,
}

/// `ValidationError`, one entry of a 422's `detail`. Its `input` may echo personal data and
/// is never read.
#[derive(Debug, Deserialize)]
pub struct ValidationError {
    #[serde(default)]
    pub loc: Vec<Value>,
    #[serde(default)]
    pub msg: String,
    #[serde(default, rename = "type")]
    pub kind: String,
}

// ---------------------------------------------------------------------------------------------
// Bodies Coffer sends

/// `CustomerIndividualCreate`.
#[derive(Debug, Serialize)]
pub struct CustomerCreate<'a> {
    pub email: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub external_id: String,
    pub metadata: BTreeMap<&'static str, String>,
}

/// `ProductPriceFixedCreate`: a fixed price, tax-exclusive (Polar's tax is added on top, so
/// an order's `net_amount` is Coffer's amount).
#[derive(Debug, Clone, Serialize)]
pub struct FixedPrice {
    pub amount_type: &'static str,
    pub price_amount: i64,
    pub price_currency: String,
    pub tax_behavior: &'static str,
}

impl FixedPrice {
    pub fn new(amount: i64, currency: String) -> Self {
        Self {
            amount_type: "fixed",
            price_amount: amount,
            price_currency: currency,
            tax_behavior: "exclusive",
        }
    }
}

/// A product's price as created: fixed, or metered by a meter.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum PriceCreate {
    Fixed(FixedPrice),
    Metered(MeteredPrice),
}

/// `ProductPriceMeteredUnitCreate`: `unit_amount` per unit of the meter, in the currency's
/// minor unit (a decimal string in Polar's API; Coffer's are whole).
#[derive(Debug, Serialize)]
pub struct MeteredPrice {
    pub amount_type: &'static str,
    pub meter_id: String,
    pub unit_amount: String,
    pub price_currency: String,
}

/// `MeterCreate`: the events named `name_is`, their `metadata.value` summed or the highest
/// taken (Polar has no "last" aggregation; Coffer's per-period totals only grow within a
/// period, except a LATEST meter's, so the highest is the last).
#[derive(Debug, Serialize)]
pub struct MeterCreate {
    pub name: String,
    pub filter: Value,
    pub aggregation: Value,
    pub metadata: BTreeMap<&'static str, String>,
}

/// A meter, as Coffer reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct Meter {
    pub id: String,
    #[serde(default)]
    pub metadata: Metadata,
}

/// `EventsIngestResponse`.
#[derive(Debug, Clone, Deserialize)]
pub struct IngestAnswer {
    #[serde(default)]
    pub inserted: i64,
    #[serde(default)]
    pub duplicates: i64,
}

/// `ProductCreateRecurring` or `ProductCreateOneTime` (the recurring fields left out).
#[derive(Debug, Serialize)]
pub struct ProductCreate {
    pub name: String,
    /// `private`: sold through checkouts made by the API, not shown on a storefront.
    pub visibility: &'static str,
    pub prices: Vec<PriceCreate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recurring_interval: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recurring_interval_count: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trial_interval: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trial_interval_count: Option<u16>,
    pub metadata: BTreeMap<&'static str, String>,
}

/// `CheckoutProductsCreate`.
#[derive(Debug, Serialize)]
pub struct CheckoutCreate {
    pub products: Vec<String>,
    /// Ad-hoc prices per product id, replacing its catalogue prices for this checkout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prices: Option<BTreeMap<String, Vec<FixedPrice>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    pub metadata: BTreeMap<&'static str, String>,
    pub success_url: String,
    /// The back button's target: Coffer's cancel URL.
    pub return_url: String,
    /// Off, so what Polar charges is Coffer's amount.
    pub allow_discount_codes: bool,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_trial: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trial_interval: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trial_interval_count: Option<u16>,
}

/// `RefundCreate`.
#[derive(Debug, Serialize)]
pub struct RefundCreate {
    pub order_id: String,
    pub reason: &'static str,
    pub amount: i64,
    pub metadata: BTreeMap<&'static str, String>,
    pub revoke_benefits: bool,
}

/// `SubscriptionCancel`.
#[derive(Debug, Serialize)]
pub struct SubscriptionCancel {
    pub cancel_at_period_end: bool,
}

/// `SubscriptionUpdateBase` with a new product.
#[derive(Debug, Serialize)]
pub struct SubscriptionProduct {
    pub product_id: String,
    /// `invoice`, `prorate`, `next_period`; absent: the organization's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proration_behavior: Option<String>,
}

/// `CustomerSessionCustomerExternalIDCreate`.
#[derive(Debug, Serialize)]
pub struct CustomerSessionCreate {
    pub external_customer_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_url: Option<String>,
}
