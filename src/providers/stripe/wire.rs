//! Stripe's objects as its API answers them (API version [`super::client::API_VERSION`]),
//! reduced to the fields Coffer reads. Unknown fields are ignored and nullable ones default,
//! so an answer with more in it still reads. Shapes follow `stripe/openapi` (`spec3`): a
//! field that may be expanded is an id or the object ([`Expandable`]).

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};

/// `null` read as the type's default (Stripe sends `null` for absent maps and lists).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

pub type Metadata = HashMap<String, String>;

/// A field Stripe answers as the object's id, or as the object when the request expanded it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Expandable<T> {
    Id(String),
    Object(Box<T>),
}

/// Objects with an `id`, so an [`Expandable`] can name its id either way.
pub trait HasId {
    fn id(&self) -> &str;
}

impl<T: HasId> Expandable<T> {
    pub fn id(&self) -> &str {
        match self {
            Expandable::Id(id) => id,
            Expandable::Object(o) => o.id(),
        }
    }

    pub fn object(&self) -> Option<&T> {
        match self {
            Expandable::Id(_) => None,
            Expandable::Object(o) => Some(o),
        }
    }
}

macro_rules! has_id {
    ($($t:ty),*) => {
        $(impl HasId for $t {
            fn id(&self) -> &str {
                &self.id
            }
        })*
    };
}

has_id!(
    Customer,
    Price,
    Session,
    PaymentIntent,
    Charge,
    Subscription,
    Invoice,
    Refund,
    Dispute,
    SubscriptionSchedule,
    Meter
);

/// A billing meter (`billing.meter`): what Coffer reads of it.
#[derive(Debug, Clone, Deserialize)]
pub struct Meter {
    pub id: String,
    pub event_name: String,
}

/// A meter event's answer (`billing.meter_event`): nothing Coffer needs beyond success.
#[derive(Debug, Clone, Deserialize)]
pub struct MeterEvent {
    #[serde(default)]
    pub identifier: Option<String>,
}

/// `{"object":"list","data":[…],"has_more":…}`, and a search result's
/// `{"object":"search_result","data":[…],"has_more":…,"next_page":…}`.
#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
    /// Search results only: the cursor of the next page.
    #[serde(default)]
    pub next_page: Option<String>,
}

/// Stripe's error body: `{"error":{"type":…,"code":…,"decline_code":…,"message":…,"param":…}}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    pub error: ApiError,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiError {
    /// `api_error`, `card_error`, `idempotency_error`, `invalid_request_error`, …
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Customer {
    pub id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: Metadata,
}

/// A billing portal session. Its `url` is a credential for the customer's portal: no `Debug`.
#[derive(Clone, Deserialize)]
pub struct PortalSession {
    pub id: String,
    pub url: String,
    /// When Stripe made it; Stripe does not say when it ends (an unused session lasts about
    /// five minutes).
    pub created: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Price {
    pub id: String,
    #[serde(default)]
    pub lookup_key: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: Metadata,
    #[serde(default)]
    pub active: Option<bool>,
}

/// A Checkout Session (`checkout.session`).
#[derive(Debug, Clone, Deserialize)]
pub struct Session {
    pub id: String,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: Metadata,
    /// `payment`, `subscription`, `setup`.
    pub mode: String,
    /// `open`, `complete`, `expired`.
    #[serde(default)]
    pub status: Option<String>,
    /// `paid`, `unpaid`, `no_payment_required`.
    pub payment_status: String,
    /// Null once the session is complete or expired.
    #[serde(default)]
    pub url: Option<String>,
    pub expires_at: i64,
    #[serde(default)]
    pub amount_total: Option<i64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub payment_intent: Option<Expandable<PaymentIntent>>,
    #[serde(default)]
    pub subscription: Option<Expandable<Subscription>>,
    #[serde(default)]
    pub invoice: Option<Expandable<Invoice>>,
}

/// The last error of a payment intent: its `code` and, for declines, the issuer's
/// `decline_code`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PaymentError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    /// `requires_payment_method`, `requires_confirmation`, `requires_action`, `processing`,
    /// `requires_capture`, `canceled`, `succeeded`.
    pub status: String,
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: Metadata,
    #[serde(default)]
    pub last_payment_error: Option<PaymentError>,
    #[serde(default)]
    pub latest_charge: Option<Expandable<Charge>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CardDetails {
    #[serde(default)]
    pub brand: Option<String>,
    #[serde(default)]
    pub last4: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PaymentMethodDetails {
    #[serde(default)]
    pub card: Option<CardDetails>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Charge {
    pub id: String,
    pub amount: i64,
    #[serde(default)]
    pub amount_refunded: i64,
    pub currency: String,
    #[serde(default)]
    pub payment_intent: Option<String>,
    #[serde(default)]
    pub payment_method_details: Option<PaymentMethodDetails>,
    #[serde(default)]
    pub failure_code: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionItem {
    pub id: String,
    /// The item's price (always an object).
    #[serde(default)]
    pub price: Option<Price>,
    #[serde(default)]
    pub quantity: Option<u64>,
    /// Where the billing period lives since API version 2025-03-31.basil.
    #[serde(default)]
    pub current_period_start: Option<i64>,
    #[serde(default)]
    pub current_period_end: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Subscription {
    pub id: String,
    /// `incomplete`, `incomplete_expired`, `trialing`, `active`, `past_due`, `canceled`,
    /// `unpaid`, `paused`.
    pub status: String,
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: Metadata,
    /// Before 2025-03-31.basil the period was the subscription's own.
    #[serde(default)]
    pub current_period_start: Option<i64>,
    #[serde(default)]
    pub current_period_end: Option<i64>,
    #[serde(default)]
    pub trial_end: Option<i64>,
    #[serde(default)]
    pub start_date: Option<i64>,
    #[serde(default)]
    pub items: Option<List<SubscriptionItem>>,
    #[serde(default)]
    pub cancel_at_period_end: bool,
    #[serde(default)]
    pub canceled_at: Option<i64>,
    /// Set (an object) while collection is paused; null otherwise.
    #[serde(default)]
    pub pause_collection: Option<serde_json::Value>,
    #[serde(default)]
    pub cancellation_details: Option<CancellationDetails>,
    #[serde(default)]
    pub customer: Option<Expandable<Customer>>,
    /// The schedule that manages it, when one does (`sub_sched_…`).
    #[serde(default)]
    pub schedule: Option<Expandable<SubscriptionSchedule>>,
    /// The newest invoice it made; expanded when fetched (its dunning state).
    #[serde(default)]
    pub latest_invoice: Option<Expandable<Invoice>>,
}

/// A subscription schedule (`subscription_schedule`), as far as Coffer reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionSchedule {
    pub id: String,
    #[serde(default)]
    pub current_phase: Option<SchedulePhaseSpan>,
    #[serde(default)]
    pub phases: Vec<SchedulePhaseSpan>,
}

/// When a schedule's phase starts and ends (Unix seconds).
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulePhaseSpan {
    #[serde(default)]
    pub start_date: Option<i64>,
    #[serde(default)]
    pub end_date: Option<i64>,
}

/// An invoice preview (`POST /v1/invoices/create_preview`): what it would charge, and its
/// lines.
#[derive(Debug, Clone, Deserialize)]
pub struct InvoicePreview {
    #[serde(default)]
    pub amount_due: i64,
    pub currency: String,
    pub lines: List<InvoiceLine>,
}

/// A line of an invoice.
#[derive(Debug, Clone, Deserialize)]
pub struct InvoiceLine {
    pub amount: i64,
    /// The time the line bills for (a subscription line: its period, or the part of it a
    /// proration covers).
    #[serde(default)]
    pub period: Option<LinePeriod>,
    /// Before 2025-03-31.basil.
    #[serde(default)]
    pub proration: Option<bool>,
    /// Since 2025-03-31.basil.
    #[serde(default)]
    pub parent: Option<InvoiceLineParent>,
}

impl InvoiceLine {
    /// Whether the line prorates a change (rather than charging a whole period).
    pub fn is_proration(&self) -> bool {
        self.parent
            .as_ref()
            .and_then(|p| p.subscription_item_details.as_ref())
            .map(|d| d.proration)
            .or(self.proration)
            .unwrap_or(false)
    }
}

/// A line's `period` (Unix seconds).
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct LinePeriod {
    pub start: i64,
    pub end: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct InvoiceLineParent {
    #[serde(default)]
    pub subscription_item_details: Option<SubscriptionItemDetails>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SubscriptionItemDetails {
    #[serde(default)]
    pub proration: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CancellationDetails {
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SubscriptionDetails {
    #[serde(default)]
    pub subscription: Option<Expandable<Subscription>>,
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: Metadata,
}

/// Where an invoice comes from (since 2025-03-31.basil).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InvoiceParent {
    #[serde(default)]
    pub subscription_details: Option<SubscriptionDetails>,
}

/// What an invoice payment paid with.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InvoicePaymentMethod {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub payment_intent: Option<Expandable<PaymentIntent>>,
}

/// One payment of an invoice (`invoice_payment`); listed on the invoice when `payments` is
/// expanded.
#[derive(Debug, Clone, Deserialize)]
pub struct InvoicePayment {
    /// The invoice it pays (listed by `GET /v1/invoice_payments`).
    #[serde(default)]
    pub invoice: Option<Expandable<Invoice>>,
    #[serde(default)]
    pub payment: InvoicePaymentMethod,
    /// `open`, `paid`, `canceled`.
    #[serde(default)]
    pub status: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Invoice {
    pub id: String,
    /// `draft`, `open`, `paid`, `uncollectible`, `void`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub amount_due: i64,
    #[serde(default)]
    pub amount_paid: i64,
    pub currency: String,
    /// `subscription_create`, `subscription_cycle`, `subscription_update`, `manual`, …
    #[serde(default)]
    pub billing_reason: Option<String>,
    /// Its lines (the first ten; a subscription's invoice has one per item, and its
    /// prorations).
    #[serde(default)]
    pub lines: Option<List<InvoiceLine>>,
    /// Before 2025-03-31.basil.
    #[serde(default)]
    pub subscription: Option<Expandable<Subscription>>,
    #[serde(default)]
    pub parent: Option<InvoiceParent>,
    #[serde(default)]
    pub payments: Option<List<InvoicePayment>>,
    /// Before 2025-03-31.basil.
    #[serde(default)]
    pub payment_intent: Option<Expandable<PaymentIntent>>,
    /// `charge_automatically` (Stripe retries a failed payment on its schedule) or
    /// `send_invoice`.
    #[serde(default)]
    pub collection_method: Option<String>,
    /// Whether a payment has been attempted.
    #[serde(default)]
    pub attempted: bool,
    #[serde(default)]
    pub attempt_count: i64,
    /// When Stripe will next try to collect it; null once its retries have run out (or for
    /// an invoice it does not collect automatically).
    #[serde(default)]
    pub next_payment_attempt: Option<i64>,
}

impl Invoice {
    /// The subscription the invoice bills, where either API version puts it.
    pub fn subscription_id(&self) -> Option<&str> {
        self.parent
            .as_ref()
            .and_then(|p| p.subscription_details.as_ref())
            .and_then(|d| d.subscription.as_ref())
            .or(self.subscription.as_ref())
            .map(Expandable::id)
    }

    /// The time its lines bill for: the earliest start and the latest end. For a
    /// subscription's first or renewal invoice that is the period it pays (the invoice's own
    /// `period_start`/`period_end` are the *previous* period's, by Stripe's definition).
    pub fn lines_period(&self) -> Option<(i64, i64)> {
        let periods = self
            .lines
            .iter()
            .flat_map(|l| &l.data)
            .filter_map(|l| l.period);
        periods.fold(None, |acc, p| match acc {
            None => Some((p.start, p.end)),
            Some((s, e)) => Some((s.min(p.start), e.max(p.end))),
        })
    }

    /// The payment intent that paid it (its `paid` invoice payment), else the latest one
    /// tried (a declined attempt); the old shape's `payment_intent` before 2025-03-31.basil.
    pub fn intent(&self) -> Option<&Expandable<PaymentIntent>> {
        let payments = || self.payments.iter().flat_map(|l| &l.data);
        payments()
            .filter(|p| p.status.as_deref() == Some("paid"))
            .find_map(|p| p.payment.payment_intent.as_ref())
            .or_else(|| payments().find_map(|p| p.payment.payment_intent.as_ref()))
            .or(self.payment_intent.as_ref())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    /// `pending`, `requires_action`, `succeeded`, `failed`, `canceled`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub payment_intent: Option<Expandable<PaymentIntent>>,
    #[serde(default)]
    pub charge: Option<Expandable<Charge>>,
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: Metadata,
    #[serde(default)]
    pub failure_reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Dispute {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    /// `warning_needs_response`, `warning_under_review`, `warning_closed`,
    /// `needs_response`, `under_review`, `won`, `lost`, `prevented`.
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub payment_intent: Option<Expandable<PaymentIntent>>,
    #[serde(default)]
    pub charge: Option<Expandable<Charge>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_expanded_and_unexpanded_fields() {
        let s: Session = serde_json::from_str(
            r#"{"id":"cs_1","object":"checkout.session","client_reference_id":null,
                "metadata":null,"mode":"payment","status":"open","payment_status":"unpaid",
                "url":"https://checkout.stripe.com/c/pay/cs_1","expires_at":1800000000,
                "payment_intent":"pi_1","subscription":null,"extra":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(s.payment_intent.as_ref().unwrap().id(), "pi_1");
        assert!(s.payment_intent.unwrap().object().is_none());
        assert!(s.metadata.is_empty());

        let s: Session = serde_json::from_str(
            r#"{"id":"cs_1","mode":"payment","status":"complete","payment_status":"paid",
                "url":null,"expires_at":1800000000,
                "payment_intent":{"id":"pi_1","amount":500,"currency":"usd","status":"succeeded",
                  "metadata":{"coffer_checkout_id":"x"},
                  "latest_charge":{"id":"ch_1","amount":500,"amount_refunded":0,"currency":"usd",
                    "payment_method_details":{"card":{"brand":"visa","last4":"4242"}}}}}"#,
        )
        .unwrap();
        let pi = s.payment_intent.as_ref().unwrap().object().unwrap();
        assert_eq!(pi.metadata["coffer_checkout_id"], "x");
        let charge = pi.latest_charge.as_ref().unwrap().object().unwrap();
        assert_eq!(
            charge
                .payment_method_details
                .as_ref()
                .unwrap()
                .card
                .as_ref()
                .unwrap()
                .last4
                .as_deref(),
            Some("4242")
        );
    }

    #[test]
    fn an_invoice_names_its_subscription_in_either_version() {
        let new: Invoice = serde_json::from_str(
            r#"{"id":"in_1","currency":"usd","subscription":null,
                "parent":{"type":"subscription_details",
                  "subscription_details":{"metadata":null,"subscription":"sub_new"}}}"#,
        )
        .unwrap();
        assert_eq!(new.subscription_id(), Some("sub_new"));
        let old: Invoice =
            serde_json::from_str(r#"{"id":"in_1","currency":"usd","subscription":"sub_old"}"#)
                .unwrap();
        assert_eq!(old.subscription_id(), Some("sub_old"));
        let none: Invoice =
            serde_json::from_str(r#"{"id":"in_1","currency":"usd","parent":null}"#).unwrap();
        assert_eq!(none.subscription_id(), None);
    }
}
