//! The endpoints of Stripe's API that Coffer calls, each a [`Call`]: method, path and
//! parameters, built from the port's requests by pure functions (what the unit tests check)
//! and sent by [`super::client::Client`].
//!
//! Coffer's own ids travel with everything it makes, so anything can be found again by them:
//! `metadata[coffer_customer_id]`, `metadata[coffer_price_id]` and `lookup_key`
//! `coffer_<price id>`, a session's `client_reference_id` and `metadata[coffer_checkout_id]`
//! (copied to its payment intent and subscription), `metadata[coffer_refund_id]`, and on a
//! subscription the last plan change Coffer made to it, `metadata[coffer_change_id]`.

use http::Method;
use time::OffsetDateTime;
use uuid::Uuid;

use super::form::Form;
use super::money::{currency, to_stripe};
use crate::domain::checkout::Mode;
use crate::domain::plan::{Billing, Interval};
use crate::providers::{
    CheckoutRequest, CustomerRequest, MeterFormula, MeterRequest, PriceRequest, RefundRequest,
    SubscriptionRequest, UsageEvent, meter_event_name,
};

pub const CUSTOMER_KEY: &str = "coffer_customer_id";
pub const EXTERNAL_ID_KEY: &str = "coffer_external_id";
pub const PRICE_KEY: &str = "coffer_price_id";
pub const CHECKOUT_KEY: &str = "coffer_checkout_id";
pub const REFUND_KEY: &str = "coffer_refund_id";
/// On a subscription (and its schedule): Coffer's id of the last plan change made to it.
pub const CHANGE_KEY: &str = "coffer_change_id";
/// On a subscription CreateSubscription made: Coffer's subscription id (decision 0026).
pub const SUBSCRIPTION_KEY: &str = "coffer_subscription_id";

/// Stripe's limits on a session's `expires_at`: 30 minutes to 24 hours after its creation.
const MIN_SESSION_LIFE: time::Duration = time::Duration::minutes(30);
const MAX_SESSION_LIFE: time::Duration = time::Duration::hours(24);
/// Room for the time between computing `expires_at` here and Stripe reading it.
const SESSION_LIFE_MARGIN: time::Duration = time::Duration::minutes(1);

/// What a session fetch expands: the payment intent and its charge (status, card, refunded
/// amount), the subscription, and a subscription's first invoice with its payments.
pub const SESSION_EXPAND: [&str; 3] = [
    "payment_intent.latest_charge",
    "subscription",
    "invoice.payments",
];

/// One request to Stripe, not yet sent. `form` is the body of a POST and the query of a GET
/// or DELETE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The metric and span label.
    pub operation: &'static str,
    pub method: Method,
    /// From the API base: `/v1/…`.
    pub path: String,
    pub form: Form,
}

impl Call {
    fn get(operation: &'static str, path: String, query: Form) -> Self {
        Self {
            operation,
            method: Method::GET,
            path,
            form: query,
        }
    }

    fn post(operation: &'static str, path: String, form: Form) -> Self {
        Self {
            operation,
            method: Method::POST,
            path,
            form,
        }
    }

    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }
}

/// An id from an event or a stored row, fit to be a path segment: Stripe's ids are
/// `prefix_` and base-62. Anything else is refused before a request is made.
pub fn segment(id: &str) -> Option<&str> {
    (!id.is_empty()
        && id.len() <= 255
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    .then_some(id)
}

/// The lookup key of one of Coffer's prices.
pub fn price_lookup_key(coffer_price: Uuid) -> String {
    format!("coffer_{coffer_price}")
}

// -------------------------------------------------------------------------------------------
// Customers, prices, sessions

/// `GET /v1/{resource}/{id}`, as it is.
pub fn retrieve(operation: &'static str, resource: &str, id: &str) -> Call {
    Call::get(operation, format!("/v1/{resource}/{id}"), Form::new())
}

/// Customers created since `since`, newest first, after `starting_after`.
pub fn list_customers(since: i64, starting_after: Option<&str>) -> Call {
    Call::get(
        "list_customers",
        "/v1/customers".into(),
        Form::new()
            .map("created", Form::new().text("gte", since))
            .opt("starting_after", starting_after)
            .text("limit", 100),
    )
}

pub fn create_customer(r: &CustomerRequest) -> Call {
    let mut metadata = Form::new().text(CUSTOMER_KEY, r.client_reference);
    if let Some(external) = &r.external_id {
        metadata = metadata.text(EXTERNAL_ID_KEY, external);
    }
    Call::post(
        "create_customer",
        "/v1/customers".into(),
        Form::new()
            .opt("email", r.email.as_deref())
            .opt("name", r.name.as_deref())
            .map("metadata", metadata),
    )
}

/// A billing portal session for `customer`, whose return link goes to `return_url`
/// (`POST /v1/billing_portal/sessions`). The account's default portal configuration applies.
pub fn create_portal_session(customer: &str, return_url: &str) -> Call {
    Call::post(
        "create_portal_session",
        "/v1/billing_portal/sessions".into(),
        Form::new()
            .text("customer", customer)
            .text("return_url", return_url),
    )
}

fn recurring(interval: Interval, count: u8) -> Form {
    let interval = match interval {
        Interval::Month => "month",
        Interval::Year => "year",
    };
    Form::new()
        .text("interval", interval)
        .text("interval_count", count)
}

/// A price and its product in one request (`product_data`), so one idempotency key covers
/// both. The lookup key is Coffer's (`transfer_lookup_key`: a price made by an earlier
/// generation of the same operation, never recorded, gives it up to this one).
pub fn create_price(r: &PriceRequest) -> Call {
    let id = r.client_reference.to_string();
    let mut form = Form::new()
        .text("currency", currency(r.unit.currency()))
        .text("unit_amount", to_stripe(r.unit))
        .text("lookup_key", price_lookup_key(r.client_reference))
        .text("transfer_lookup_key", true)
        .map(
            "product_data",
            Form::new()
                .text("name", &r.name)
                .map("metadata", Form::new().text(PRICE_KEY, &id)),
        )
        .map("metadata", Form::new().text(PRICE_KEY, &id));
    if let Billing::Recurring {
        interval, count, ..
    } = r.billing
    {
        let mut recurring = recurring(interval, count);
        if let Some(meter) = &r.meter {
            recurring = recurring.text("usage_type", "metered").text("meter", meter);
        }
        form = form.map("recurring", recurring);
    }
    Call::post("create_price", "/v1/prices".into(), form)
}

/// A billing meter for one of Coffer's meters: events named [`meter_event_name`], the
/// customer in `payload[stripe_customer_id]`, the value in `payload[value]`, summed or the
/// last one taken. Stripe's meters have no metadata: the event name is Coffer's reference.
pub fn create_meter(r: &MeterRequest) -> Call {
    let formula = match r.formula {
        MeterFormula::Sum => "sum",
        MeterFormula::Last => "last",
    };
    Call::post(
        "create_meter",
        "/v1/billing/meters".into(),
        Form::new()
            .text("display_name", &r.name)
            .text("event_name", meter_event_name(r.client_reference))
            .map("default_aggregation", Form::new().text("formula", formula))
            .map(
                "customer_mapping",
                Form::new()
                    .text("type", "by_id")
                    .text("event_payload_key", "stripe_customer_id"),
            )
            .map(
                "value_settings",
                Form::new().text("event_payload_key", "value"),
            ),
    )
}

/// The account's active meters, after `starting_after`.
pub fn list_meters(starting_after: Option<&str>) -> Call {
    Call::get(
        "list_meters",
        "/v1/billing/meters".into(),
        Form::new()
            .text("status", "active")
            .opt("starting_after", starting_after)
            .text("limit", 100),
    )
}

/// One meter event (`POST /v1/billing/meter_events`, one event per request). `identifier` is
/// Stripe's de-duplication key for about a day: the same push sent again is counted once.
pub fn meter_event(e: &UsageEvent) -> Call {
    Call::post(
        "push_usage",
        "/v1/billing/meter_events".into(),
        Form::new()
            .text("event_name", &e.event_name)
            .text("identifier", &e.identifier)
            .text("timestamp", e.timestamp.unix_timestamp())
            .map(
                "payload",
                Form::new()
                    .text("stripe_customer_id", &e.customer)
                    .text("value", &e.value),
            ),
    )
}

/// The price whose lookup key is Coffer's price id's.
pub fn find_price(coffer_price: Uuid) -> Call {
    Call::get(
        "find_price",
        "/v1/prices".into(),
        Form::new()
            .texts("lookup_keys", [price_lookup_key(coffer_price)])
            .text("limit", 1),
    )
}

/// A Checkout Session for `r`, created at `now`. `expires_at` is kept within what Stripe
/// takes (30 minutes to 24 hours from now): Coffer's own checks allow the same range, so
/// this only moves a time that a late retry pushed out of it.
pub fn create_session(r: &CheckoutRequest, now: OffsetDateTime) -> Call {
    let reference = r.client_reference.to_string();
    let marker = || Form::new().text(CHECKOUT_KEY, &reference);
    let expires_at = r.expires_at.clamp(
        now + MIN_SESSION_LIFE + SESSION_LIFE_MARGIN,
        now + MAX_SESSION_LIFE - SESSION_LIFE_MARGIN,
    );
    let items = r.items.iter().map(|item| {
        let line = &item.line;
        let form = match &item.provider_price {
            Some(price) => Form::new().text("price", price),
            None => {
                let mut data = Form::new()
                    .text("currency", currency(line.unit.currency()))
                    .text("unit_amount", to_stripe(line.unit))
                    .map("product_data", Form::new().text("name", &line.name));
                if let Billing::Recurring {
                    interval, count, ..
                } = line.billing
                {
                    data = data.map("recurring", recurring(interval, count));
                }
                Form::new().map("price_data", data)
            }
        };
        if item.metered {
            form
        } else {
            form.text("quantity", line.quantity)
        }
    });
    let mut form = Form::new()
        .text(
            "mode",
            match r.mode {
                Mode::Payment => "payment",
                Mode::Subscription => "subscription",
            },
        )
        .text("client_reference_id", &reference)
        .opt("customer", r.customer.as_deref())
        .text("success_url", &r.success_url)
        .text("cancel_url", &r.cancel_url)
        .text("expires_at", expires_at.unix_timestamp())
        .maps("line_items", items)
        .map("metadata", marker());
    form = match r.mode {
        Mode::Payment => form.map("payment_intent_data", Form::new().map("metadata", marker())),
        Mode::Subscription => {
            let mut data = Form::new().map("metadata", marker());
            if r.trial_days > 0 {
                data = data.text("trial_period_days", r.trial_days);
            }
            form.map("subscription_data", data)
        }
    };
    Call::post(
        "create_checkout_session",
        "/v1/checkout/sessions".into(),
        form,
    )
}

pub fn retrieve_session(id: &str) -> Call {
    Call::get(
        "fetch_checkout_session",
        format!("/v1/checkout/sessions/{id}"),
        Form::new().texts("expand", SESSION_EXPAND),
    )
}

/// What to list sessions by (`GET /v1/checkout/sessions` filters).
#[derive(Debug, Clone, Default)]
pub struct SessionFilter<'a> {
    pub created_gte: Option<i64>,
    pub payment_intent: Option<&'a str>,
    pub subscription: Option<&'a str>,
    pub starting_after: Option<&'a str>,
    pub limit: u8,
}

pub fn list_sessions(f: &SessionFilter<'_>) -> Call {
    let mut form = Form::new();
    if let Some(gte) = f.created_gte {
        form = form.map("created", Form::new().text("gte", gte));
    }
    Call::get(
        "list_checkout_sessions",
        "/v1/checkout/sessions".into(),
        form.opt("payment_intent", f.payment_intent)
            .opt("subscription", f.subscription)
            .opt("starting_after", f.starting_after)
            .text("limit", f.limit.clamp(1, 100)),
    )
}

pub fn expire_session(id: &str) -> Call {
    Call::post(
        "expire_checkout_session",
        format!("/v1/checkout/sessions/{id}/expire"),
        Form::new().texts("expand", SESSION_EXPAND),
    )
}

// -------------------------------------------------------------------------------------------
// Payments, refunds, disputes

pub fn retrieve_payment_intent(id: &str) -> Call {
    Call::get(
        "fetch_payment_intent",
        format!("/v1/payment_intents/{id}"),
        Form::new().texts("expand", ["latest_charge"]),
    )
}

pub fn retrieve_charge(id: &str) -> Call {
    Call::get("fetch_charge", format!("/v1/charges/{id}"), Form::new())
}

pub fn create_refund(r: &RefundRequest) -> Call {
    Call::post(
        "refund",
        "/v1/refunds".into(),
        Form::new()
            .text("payment_intent", &r.payment)
            .text("amount", to_stripe(r.amount))
            .map("metadata", Form::new().text(REFUND_KEY, r.client_reference)),
    )
}

pub fn retrieve_refund(id: &str) -> Call {
    Call::get("fetch_refund", format!("/v1/refunds/{id}"), Form::new())
}

/// Refunds created at or after `created_gte`, newest first, after `starting_after`.
pub fn list_refunds(created_gte: i64, starting_after: Option<&str>) -> Call {
    Call::get(
        "list_refunds",
        "/v1/refunds".into(),
        Form::new()
            .map("created", Form::new().text("gte", created_gte))
            .opt("starting_after", starting_after)
            .text("limit", 100),
    )
}

/// A dispute, with its payment intent (whose metadata names Coffer's checkout).
pub fn retrieve_dispute(id: &str) -> Call {
    Call::get(
        "fetch_dispute",
        format!("/v1/disputes/{id}"),
        Form::new().texts("expand", ["payment_intent"]),
    )
}

/// Stripe's Search API of `resource` (`customers`, `payment_intents`, `charges`,
/// `subscriptions`, `prices`) for objects whose metadata `key` is `value`.
pub fn search_metadata(resource: &'static str, key: &str, value: &str) -> Call {
    let operation = match resource {
        "customers" => "search_customers",
        "payment_intents" => "search_payment_intents",
        "subscriptions" => "search_subscriptions",
        "charges" => "search_charges",
        _ => "search",
    };
    Call::get(
        operation,
        format!("/v1/{resource}/search"),
        Form::new()
            .text("query", format!("metadata['{key}']:'{value}'"))
            .text("limit", 10),
    )
}

// -------------------------------------------------------------------------------------------
// Subscriptions and invoices

/// A subscription with its latest invoice expanded: whether Stripe will try that invoice
/// again (`next_payment_attempt`) is how Coffer learns that Stripe's retries ran out and left
/// the subscription past due (decision 0034).
pub fn retrieve_subscription(id: &str) -> Call {
    Call::get(
        "fetch_subscription",
        format!("/v1/subscriptions/{id}"),
        Form::new().texts("expand", ["latest_invoice"]),
    )
}

/// A subscription made without a checkout (`POST /v1/subscriptions`, CreateSubscription):
/// the mirrored customer and price, `metadata[coffer_subscription_id]` naming Coffer's
/// subscription, `trial_period_days` for a trial. `payment_behavior` is Stripe's default
/// (`allow_incomplete`): without a trial the first invoice is charged now to the customer's
/// default payment method (a decline leaves it `incomplete`, as the sandbox does), and a
/// customer with none is refused with a 400 (decision 0026).
pub fn create_subscription(r: &SubscriptionRequest, customer: &str, price: &str) -> Call {
    let item = Form::new()
        .text("price", price)
        .text("quantity", r.quantity);
    let mut form = Form::new()
        .text("customer", customer)
        .maps("items", [item])
        .map(
            "metadata",
            Form::new().text(SUBSCRIPTION_KEY, r.client_reference),
        );
    if r.trial_days > 0 {
        form = form.text("trial_period_days", r.trial_days);
    }
    Call::post("create_subscription", "/v1/subscriptions".into(), form)
}

/// Subscriptions created since `since` (any status), newest first, after `starting_after`.
pub fn list_subscriptions(since: i64, starting_after: Option<&str>) -> Call {
    Call::get(
        "list_subscriptions",
        "/v1/subscriptions".into(),
        Form::new()
            .map("created", Form::new().text("gte", since))
            .text("status", "all")
            .opt("starting_after", starting_after)
            .text("limit", 100),
    )
}

/// An invoice with its payments (`payments` is includable only: without the expansion the
/// invoice does not say which payment intent paid it).
pub fn retrieve_invoice(id: &str) -> Call {
    Call::get(
        "fetch_invoice",
        format!("/v1/invoices/{id}"),
        Form::new().texts("expand", ["payments"]),
    )
}

/// The invoice payment made by the payment intent `intent` (`GET /v1/invoice_payments`
/// filtered by `payment[type]=payment_intent` and `payment[payment_intent]`): how a charge of
/// an invoice names its invoice since 2025-03-31.basil, which took `invoice` off the payment
/// intent.
pub fn invoice_payments_of(intent: &str) -> Call {
    Call::get(
        "list_invoice_payments",
        "/v1/invoice_payments".into(),
        Form::new()
            .map(
                "payment",
                Form::new()
                    .text("type", "payment_intent")
                    .text("payment_intent", intent),
            )
            .text("limit", 1),
    )
}

/// Cancels a subscription now (`DELETE /v1/subscriptions/{id}`), optionally invoicing what is
/// pending and crediting the unused time.
pub fn cancel_subscription(id: &str, invoice_now: bool, prorate: bool) -> Call {
    Call {
        operation: "cancel_subscription",
        method: Method::DELETE,
        path: format!("/v1/subscriptions/{id}"),
        form: Form::new()
            .text("invoice_now", invoice_now)
            .text("prorate", prorate),
    }
}

/// Cancels at the end of the current period (`true`), or takes that back (`false`).
pub fn cancel_at_period_end(id: &str, at_period_end: bool) -> Call {
    Call::post(
        "update_subscription",
        format!("/v1/subscriptions/{id}"),
        Form::new().text("cancel_at_period_end", at_period_end),
    )
}

/// How a change of price is charged (`proration_behavior`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proration {
    /// Prorated items on the next invoice.
    CreateProrations,
    /// Prorated, invoiced and charged now.
    AlwaysInvoice,
    None,
}

impl Proration {
    pub fn as_str(self) -> &'static str {
        match self {
            Proration::CreateProrations => "create_prorations",
            Proration::AlwaysInvoice => "always_invoice",
            Proration::None => "none",
        }
    }
}

/// A move of a subscription's item to another price: what the update and its preview send.
#[derive(Debug, Clone, Copy)]
pub struct PriceChange<'a> {
    /// The subscription item (`si_…`).
    pub item: &'a str,
    /// The mirrored Stripe price (`price_…`).
    pub price: &'a str,
    pub quantity: u32,
    pub proration: Proration,
    /// The time to prorate at (Unix seconds): the preview's, sent with the change, so the
    /// change prorates exactly as previewed; `None`: Stripe's now.
    pub proration_date: Option<i64>,
}

impl PriceChange<'_> {
    fn items(&self) -> [Form; 1] {
        [Form::new()
            .text("id", self.item)
            .text("price", self.price)
            .text("quantity", self.quantity)]
    }
}

/// Moves the subscription's item to another price and quantity now
/// (`POST /v1/subscriptions/{id}`), with `metadata[coffer_change_id]` naming Coffer's change,
/// so a lost answer is settled by finding the subscription it was made to.
pub fn update_subscription_price(id: &str, change: &PriceChange<'_>, change_id: Uuid) -> Call {
    Call::post(
        "update_subscription",
        format!("/v1/subscriptions/{id}"),
        Form::new()
            .maps("items", change.items())
            .text("proration_behavior", change.proration.as_str())
            .opt("proration_date", change.proration_date)
            .map("metadata", Form::new().text(CHANGE_KEY, change_id)),
    )
}

/// Puts a subscription under a schedule built from its current state
/// (`POST /v1/subscription_schedules` with `from_subscription`): one phase, the current one.
pub fn create_schedule_from(subscription: &str) -> Call {
    Call::post(
        "create_subscription_schedule",
        "/v1/subscription_schedules".into(),
        Form::new().text("from_subscription", subscription),
    )
}

/// One phase of a schedule: its items, and when it starts and ends (Unix seconds).
#[derive(Debug, Clone, Copy)]
pub struct Phase<'a> {
    pub price: &'a str,
    pub quantity: u32,
    pub start_date: Option<i64>,
    pub end_date: Option<i64>,
}

/// Replaces a schedule's phases (`POST /v1/subscription_schedules/{id}`): the current phase
/// until the period's end, then the new price, without proration; the schedule then releases
/// the subscription (`end_behavior=release`), which goes on renewing at the new price.
pub fn update_schedule(id: &str, phases: &[Phase<'_>], change_id: Uuid) -> Call {
    Call::post(
        "update_subscription_schedule",
        format!("/v1/subscription_schedules/{id}"),
        Form::new()
            .maps(
                "phases",
                phases.iter().map(|p| {
                    Form::new()
                        .maps(
                            "items",
                            [Form::new()
                                .text("price", p.price)
                                .text("quantity", p.quantity)],
                        )
                        .opt("start_date", p.start_date)
                        .opt("end_date", p.end_date)
                        .text("proration_behavior", "none")
                }),
            )
            .text("end_behavior", "release")
            .map("metadata", Form::new().text(CHANGE_KEY, change_id)),
    )
}

/// Releases a subscription from its schedule (`POST /v1/subscription_schedules/{id}/release`):
/// the subscription stays as it is, and the schedule's later phases are dropped.
pub fn release_schedule(id: &str) -> Call {
    Call::post(
        "release_subscription_schedule",
        format!("/v1/subscription_schedules/{id}/release"),
        Form::new(),
    )
}

pub fn retrieve_schedule(id: &str) -> Call {
    Call::get(
        "fetch_subscription_schedule",
        format!("/v1/subscription_schedules/{id}"),
        Form::new(),
    )
}

/// What happens to invoices while collection is paused (`pause_collection[behavior]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseBehavior {
    KeepAsDraft,
    MarkUncollectible,
    Void,
}

impl PauseBehavior {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseBehavior::KeepAsDraft => "keep_as_draft",
            PauseBehavior::MarkUncollectible => "mark_uncollectible",
            PauseBehavior::Void => "void",
        }
    }
}

/// Pauses payment collection, until `resumes_at` if given.
pub fn pause_collection(id: &str, behavior: PauseBehavior, resumes_at: Option<i64>) -> Call {
    Call::post(
        "update_subscription",
        format!("/v1/subscriptions/{id}"),
        Form::new().map(
            "pause_collection",
            Form::new()
                .text("behavior", behavior.as_str())
                .opt("resumes_at", resumes_at),
        ),
    )
}

/// Collects payments again: an empty `pause_collection` unsets it.
pub fn unpause_collection(id: &str) -> Call {
    Call::post(
        "update_subscription",
        format!("/v1/subscriptions/{id}"),
        Form::new().text("pause_collection", ""),
    )
}

/// Resumes a `paused` subscription (one whose trial ended without a payment method), its
/// billing cycle starting now (`now`) or kept (`unchanged`).
pub fn resume_subscription(id: &str, reset_billing_cycle: bool) -> Call {
    Call::post(
        "resume_subscription",
        format!("/v1/subscriptions/{id}/resume"),
        Form::new()
            .text(
                "billing_cycle_anchor",
                if reset_billing_cycle {
                    "now"
                } else {
                    "unchanged"
                },
            )
            .text("proration_behavior", "create_prorations"),
    )
}

/// What the invoice of a change of price would be (`POST /v1/invoices/create_preview`),
/// prorated as of `change.proration_date`; changes nothing.
pub fn preview_invoice(customer: &str, subscription: &str, change: &PriceChange<'_>) -> Call {
    Call::post(
        "preview_invoice",
        "/v1/invoices/create_preview".into(),
        Form::new()
            .text("customer", customer)
            .text("subscription", subscription)
            .map(
                "subscription_details",
                Form::new()
                    .maps("items", change.items())
                    .text("proration_behavior", change.proration.as_str())
                    .opt("proration_date", change.proration_date),
            ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::checkout::LineItem;
    use crate::domain::money::{Currency, Money};
    use crate::providers::CheckoutItem;

    fn pairs(call: &Call) -> Vec<(String, String)> {
        call.form.pairs()
    }

    fn has(call: &Call, key: &str, value: &str) -> bool {
        pairs(call).iter().any(|(k, v)| k == key && v == value)
    }

    fn usd(amount: i64) -> Money {
        Money::stored(amount, Currency::parse("USD").unwrap()).unwrap()
    }

    const REF: Uuid = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);

    fn checkout(mode: Mode, trial_days: u16, now: OffsetDateTime) -> CheckoutRequest {
        let monthly = Billing::Recurring {
            interval: Interval::Month,
            count: 1,
            trial_days: 0,
        };
        CheckoutRequest {
            client_reference: REF,
            idempotency_key: "op-1".into(),
            customer: Some("cus_1".into()),
            mode,
            items: vec![
                CheckoutItem {
                    line: LineItem {
                        price_id: None,
                        name: "Pro".into(),
                        unit: usd(2900),
                        billing: monthly,
                        quantity: 1,
                        amount_total: 2900,
                    },
                    provider_price: Some("price_1".into()),
                    metered: false,
                },
                CheckoutItem {
                    line: LineItem {
                        price_id: None,
                        name: "Setup".into(),
                        unit: usd(500),
                        billing: Billing::OneTime,
                        quantity: 3,
                        amount_total: 1500,
                    },
                    provider_price: None,
                    metered: false,
                },
            ],
            amount_total: 4400,
            currency: Currency::parse("USD").unwrap(),
            success_url: "https://shop.example/ok".into(),
            cancel_url: "https://shop.example/no".into(),
            expires_at: now + time::Duration::hours(2),
            trial_days,
        }
    }

    #[test]
    fn a_payment_session() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let call = create_session(&checkout(Mode::Payment, 0, now), now);
        assert_eq!(
            (call.method.clone(), call.path.as_str()),
            (Method::POST, "/v1/checkout/sessions")
        );
        let r = REF.to_string();
        let expect = [
            ("mode", "payment"),
            ("client_reference_id", r.as_str()),
            ("customer", "cus_1"),
            ("success_url", "https://shop.example/ok"),
            ("cancel_url", "https://shop.example/no"),
            ("expires_at", "1800007200"),
            ("line_items[0][price]", "price_1"),
            ("line_items[0][quantity]", "1"),
            ("line_items[1][price_data][currency]", "usd"),
            ("line_items[1][price_data][unit_amount]", "500"),
            ("line_items[1][price_data][product_data][name]", "Setup"),
            ("line_items[1][quantity]", "3"),
            ("metadata[coffer_checkout_id]", r.as_str()),
            (
                "payment_intent_data[metadata][coffer_checkout_id]",
                r.as_str(),
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(pairs(&call), expect);
    }

    #[test]
    fn a_subscription_session_with_a_trial() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let call = create_session(&checkout(Mode::Subscription, 14, now), now);
        let r = REF.to_string();
        assert!(has(&call, "mode", "subscription"));
        assert!(has(
            &call,
            "subscription_data[metadata][coffer_checkout_id]",
            &r
        ));
        assert!(has(&call, "subscription_data[trial_period_days]", "14"));
        assert!(
            !pairs(&call)
                .iter()
                .any(|(k, _)| k.starts_with("payment_intent_data"))
        );
        let without = create_session(&checkout(Mode::Subscription, 0, now), now);
        assert!(!pairs(&without).iter().any(|(k, _)| k.contains("trial")));
    }

    #[test]
    fn inline_recurring_lines_and_expiry_within_stripes_range() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let mut r = checkout(Mode::Subscription, 0, now);
        r.items[0].provider_price = None;
        r.items[0].line.billing = Billing::Recurring {
            interval: Interval::Year,
            count: 2,
            trial_days: 0,
        };
        r.expires_at = now + time::Duration::minutes(30);
        let call = create_session(&r, now);
        assert!(has(
            &call,
            "line_items[0][price_data][recurring][interval]",
            "year"
        ));
        assert!(has(
            &call,
            "line_items[0][price_data][recurring][interval_count]",
            "2"
        ));
        assert!(has(&call, "line_items[0][price_data][unit_amount]", "2900"));
        assert!(
            !pairs(&call)
                .iter()
                .any(|(k, _)| k == "line_items[1][price_data][recurring][interval]")
        );
        assert!(
            has(&call, "expires_at", "1800001860"),
            "30 minutes and a margin"
        );
        r.expires_at = now + time::Duration::hours(30);
        assert!(has(&create_session(&r, now), "expires_at", "1800086340"));
    }

    #[test]
    fn customers_prices_refunds() {
        let c = create_customer(&CustomerRequest {
            client_reference: REF,
            idempotency_key: "k".into(),
            external_id: Some("alice-1".into()),
            email: Some("alice@example.com".into()),
            name: None,
        });
        assert_eq!(
            c.form.encode(),
            format!(
                "email=alice%40example.com&metadata[coffer_customer_id]={REF}\
                 &metadata[coffer_external_id]=alice-1"
            )
        );
        let p = create_price(&PriceRequest {
            client_reference: REF,
            idempotency_key: "k".into(),
            name: "Pro".into(),
            unit: Money::stored(5, Currency::parse("ISK").unwrap()).unwrap(),
            billing: Billing::Recurring {
                interval: Interval::Month,
                count: 3,
                trial_days: 7,
            },
            meter: None,
        });
        let r = REF.to_string();
        assert_eq!(
            pairs(&p),
            [
                ("currency", "isk"),
                ("unit_amount", "500"),
                ("lookup_key", &format!("coffer_{r}")),
                ("transfer_lookup_key", "true"),
                ("product_data[name]", "Pro"),
                ("product_data[metadata][coffer_price_id]", &r),
                ("metadata[coffer_price_id]", &r),
                ("recurring[interval]", "month"),
                ("recurring[interval_count]", "3"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let f = find_price(REF);
        assert_eq!(
            (f.method.clone(), f.path.as_str()),
            (Method::GET, "/v1/prices")
        );
        assert_eq!(
            f.form.encode(),
            format!("lookup_keys[0]=coffer_{r}&limit=1")
        );

        let refund = create_refund(&RefundRequest {
            client_reference: REF,
            idempotency_key: "k".into(),
            payment: "pi_1".into(),
            amount: usd(700),
        });
        assert_eq!(
            refund.form.encode(),
            format!("payment_intent=pi_1&amount=700&metadata[coffer_refund_id]={r}")
        );
    }

    #[test]
    fn an_invoice_with_its_payments_and_the_invoice_a_payment_intent_paid() {
        assert_eq!(retrieve_invoice("in_1").form.encode(), "expand[0]=payments");
        let l = invoice_payments_of("pi_1");
        assert_eq!(
            (l.method.clone(), l.path.as_str()),
            (Method::GET, "/v1/invoice_payments")
        );
        assert_eq!(
            l.form.encode(),
            "payment[type]=payment_intent&payment[payment_intent]=pi_1&limit=1"
        );
    }

    #[test]
    fn reads_and_searches() {
        assert_eq!(
            retrieve_session("cs_1").form.encode(),
            "expand[0]=payment_intent.latest_charge&expand[1]=subscription&expand[2]=invoice.payments"
        );
        let l = list_sessions(&SessionFilter {
            created_gte: Some(1_800_000_000),
            payment_intent: Some("pi_1"),
            limit: 100,
            ..Default::default()
        });
        assert_eq!(
            l.form.encode(),
            "created[gte]=1800000000&payment_intent=pi_1&limit=100"
        );
        let s = search_metadata("customers", CUSTOMER_KEY, "abc");
        assert_eq!(s.path, "/v1/customers/search");
        assert_eq!(
            s.form.encode(),
            "query=metadata%5B%27coffer_customer_id%27%5D%3A%27abc%27&limit=10"
        );
        assert_eq!(
            retrieve_dispute("dp_1").form.encode(),
            "expand[0]=payment_intent"
        );
        assert_eq!(segment("cs_test_a1B2"), Some("cs_test_a1B2"));
        assert_eq!(segment("../v1/x"), None);
        assert_eq!(segment(""), None);
    }

    #[test]
    fn subscription_changes() {
        let c = cancel_subscription("sub_1", false, true);
        assert_eq!(
            (c.method.clone(), c.path.as_str()),
            (Method::DELETE, "/v1/subscriptions/sub_1")
        );
        assert_eq!(c.form.encode(), "invoice_now=false&prorate=true");

        let c = cancel_at_period_end("sub_1", true);
        assert_eq!(
            (c.method.clone(), c.path.as_str()),
            (Method::POST, "/v1/subscriptions/sub_1")
        );
        assert_eq!(c.form.encode(), "cancel_at_period_end=true");

        let change = PriceChange {
            item: "si_1",
            price: "price_2",
            quantity: 2,
            proration: Proration::AlwaysInvoice,
            proration_date: Some(1_800_000_000),
        };
        let u = update_subscription_price("sub_1", &change, Uuid::nil());
        assert_eq!(
            u.form.encode(),
            "items[0][id]=si_1&items[0][price]=price_2&items[0][quantity]=2\
             &proration_behavior=always_invoice&proration_date=1800000000\
             &metadata[coffer_change_id]=00000000-0000-0000-0000-000000000000"
        );
        let s = update_schedule(
            "sub_sched_1",
            &[
                Phase {
                    price: "price_1",
                    quantity: 1,
                    start_date: Some(1_700_000_000),
                    end_date: Some(1_800_000_000),
                },
                Phase {
                    price: "price_2",
                    quantity: 3,
                    start_date: None,
                    end_date: None,
                },
            ],
            Uuid::nil(),
        );
        assert_eq!(s.path, "/v1/subscription_schedules/sub_sched_1");
        assert_eq!(
            s.form.encode(),
            "phases[0][items][0][price]=price_1&phases[0][items][0][quantity]=1\
             &phases[0][start_date]=1700000000&phases[0][end_date]=1800000000\
             &phases[0][proration_behavior]=none\
             &phases[1][items][0][price]=price_2&phases[1][items][0][quantity]=3\
             &phases[1][proration_behavior]=none&end_behavior=release\
             &metadata[coffer_change_id]=00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(
            create_schedule_from("sub_1").form.encode(),
            "from_subscription=sub_1"
        );

        let p = pause_collection("sub_1", PauseBehavior::Void, Some(1_800_000_000));
        assert_eq!(
            p.form.encode(),
            "pause_collection[behavior]=void&pause_collection[resumes_at]=1800000000"
        );
        assert_eq!(
            pause_collection("sub_1", PauseBehavior::KeepAsDraft, None)
                .form
                .encode(),
            "pause_collection[behavior]=keep_as_draft"
        );
        assert_eq!(
            unpause_collection("sub_1").form.encode(),
            "pause_collection="
        );

        let r = resume_subscription("sub_1", true);
        assert_eq!(r.path, "/v1/subscriptions/sub_1/resume");
        assert_eq!(
            r.form.encode(),
            "billing_cycle_anchor=now&proration_behavior=create_prorations"
        );

        let v = preview_invoice(
            "cus_1",
            "sub_1",
            &PriceChange {
                item: "si_1",
                price: "price_2",
                quantity: 1,
                proration: Proration::CreateProrations,
                proration_date: Some(1_800_000_000),
            },
        );
        assert_eq!(
            (v.method.clone(), v.path.as_str()),
            (Method::POST, "/v1/invoices/create_preview")
        );
        assert_eq!(
            v.form.encode(),
            "customer=cus_1&subscription=sub_1&subscription_details[items][0][id]=si_1\
             &subscription_details[items][0][price]=price_2&subscription_details[items][0][quantity]=1\
             &subscription_details[proration_behavior]=create_prorations\
             &subscription_details[proration_date]=1800000000"
        );
    }

    #[test]
    fn create_subscription_names_coffers_subscription() {
        let monthly = Billing::Recurring {
            interval: Interval::Month,
            count: 1,
            trial_days: 0,
        };
        let mut r = SubscriptionRequest {
            client_reference: REF,
            idempotency_key: "op-1".into(),
            customer: Some("cus_1".into()),
            provider_price: Some("price_1".into()),
            unit: usd(500),
            billing: monthly,
            quantity: 2,
            trial_days: 14,
        };
        let c = create_subscription(&r, "cus_1", "price_1");
        assert_eq!(
            (c.method.clone(), c.path.as_str()),
            (Method::POST, "/v1/subscriptions")
        );
        assert_eq!(
            c.form.encode(),
            format!(
                "customer=cus_1&items[0][price]=price_1&items[0][quantity]=2\
                 &metadata[coffer_subscription_id]={REF}&trial_period_days=14"
            )
        );
        r.trial_days = 0;
        let c = create_subscription(&r, "cus_1", "price_1");
        assert!(!pairs(&c).iter().any(|(k, _)| k == "trial_period_days"));
        assert!(!pairs(&c).iter().any(|(k, _)| k == "payment_behavior"));

        let l = list_subscriptions(1_800_000_000, Some("sub_9"));
        assert_eq!(
            l.form.encode(),
            "created[gte]=1800000000&status=all&starting_after=sub_9&limit=100"
        );
    }
}
