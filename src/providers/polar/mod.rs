//! The Polar adapter: Polar's public API (`https://api.polar.sh/v1`, its sandbox
//! `https://sandbox-api.polar.sh/v1`) with an organization access token, as its published
//! OpenAPI schema has it.
//!
//! - [`webhook`]: Standard Webhooks deliveries keyed as Polar's SDKs key them, and the events
//!   read as triggers ([`events`]).
//! - [`client`]: one account's requests through its outbound stack; [`error`]: Polar's
//!   refusals as [`ProviderError`]s; [`wire`]: its JSON; [`map`]: its objects as the port's.
//! - [`Polar`]: the [`Provider`] (with the lifecycle calls: cancel at period end and undo,
//!   revoke, product changes), and what Polar offers beyond the port (customer portal
//!   sessions).
//!
//! # What Coffer's objects are on Polar
//!
//! | Coffer | Polar | found again by |
//! |---|---|---|
//! | customer | customer, `external_id` = Coffer's customer id (email and name sent; the caller's own id in `metadata.coffer_external_id`) | `GET /v1/customers/external/{id}` |
//! | price | a private product with one fixed, tax-exclusive price (recurring ones with their interval and trial), `metadata.coffer_price_id` | `GET /v1/products/?metadata[coffer_price_id]=…` |
//! | checkout session | checkout of that product (`metadata.coffer_checkout_id`, and `coffer_expires_at`: Polar keeps checkouts open 24 hours, Coffer's session ends at its own time; discount codes off; `return_url` = the cancel URL) | the most recent checkouts, scanned |
//! | payment | the checkout's order (its metadata is the checkout's) | `GET /v1/orders/?metadata[coffer_checkout_id]=…` |
//! | refund | refund of the order, `metadata.coffer_refund_id` | the order's refunds; the most recent refunds, scanned |
//! | subscription | subscription (its metadata is the checkout's) | `GET /v1/subscriptions/?metadata[coffer_checkout_id]=…` |
//!
//! A Polar checkout sells one product, so a Coffer checkout for Polar has exactly one line
//! item. Its quantity, and a line given inline (with no Coffer price), become an ad-hoc price
//! of the line's total in the checkout's `prices`; an inline line is sold as a private one-time
//! product named as the line (found by `metadata.coffer_line_name`, made the first time),
//! since Polar's checkout page shows a product's name.
//!
//! # Each create happens once, without idempotency keys
//!
//! Polar takes no `Idempotency-Key`. Creates are therefore sent without one — with one, the
//! outbound stack would send them again after a timeout or a 5xx, and Polar would make a
//! second object — so an ambiguous outcome is `Unknown`, and the operations journal settles it
//! with [`Provider::fetch_object`], by Coffer's id, never by calling again blindly. Beyond
//! that, per object:
//!
//! - customers and prices are looked up by Coffer's id before they are made (the customer's
//!   external id is unique on Polar anyway);
//! - a refund is looked up among its order's refunds before it is made, so a refund the
//!   journal could not find in the recent refunds (and marked failed) is found, not made
//!   twice, when the caller asks again;
//! - a checkout is settled by scanning the most recent checkouts
//!   ([`SCAN_PAGES`] pages of 100) for its metadata; one that is not found there is made
//!   again, and the lost one is harmless: its URL was never handed to anyone, and it expires.
//! - Subscription changes and revocations are idempotent by nature and do carry a key (so the
//!   stack may retry them); a revocation or cancellation Polar says is already done answers
//!   the subscription as it is.
//!
//! # Events
//!
//! Every event is a trigger ([`events`]): the inbox fetches the object, as Polar has it now,
//! and applies it.
//!
//! | Polar event | trigger (fetched) | Coffer change |
//! |---|---|---|
//! | `checkout.created`, `.updated`, `.expired` | checkout session (with its order and subscription once succeeded) | session status and payment status; its payment and subscription |
//! | `order.created`, `.updated`, `.paid`, `.refunded` of a checkout's first charge | payment (the order) | the session's payment |
//! | the same for a renewal, an update or a trial's zero order | subscription | its status and period |
//! | `subscription.created`, `.active`, `.updated`, `.canceled`, `.uncanceled`, `.revoked`, `.past_due`, `.cycled`, `.paused`, `.resumed` | subscription | the subscription (made on first sight) |
//! | `refund.created`, `.updated` | refund | its status; the payment's refunded amount |
//! | anything else, or an object without Coffer's reference in its metadata | none | `ignored` |
//!
//! Setup (endpoint, events, token scopes, secret rotation): `docs/providers/polar.md`.
//!
//! Unsupported: expiring a checkout (Polar's API cannot; the capability table says so),
//! disputes (not fetched), checkouts of several line items, and the currencies
//! [`map::currency`] refuses. Polar objects carry no version, so an object's version is its
//! `modified_at` ([`map`]).

pub mod client;
pub mod error;
pub mod events;
pub mod map;
pub mod webhook;
pub mod wire;

use std::collections::BTreeMap;

use futures_core::future::BoxFuture;
use http::Method;
use time::OffsetDateTime;
use uuid::Uuid;

pub use webhook::Webhooks;

use self::client::Client;
use self::wire::{
    CHECKOUT_KEY, CUSTOMER_KEY, EXPIRES_KEY, EXTERNAL_KEY, LINE_KEY, METER_KEY, PRICE_KEY,
    REFUND_KEY,
};
use crate::domain::account::{Account, AccountName, ProviderKind};
use crate::domain::checkout::Mode;
use crate::domain::plan::{Billing, Interval};
use crate::providers::outbound::Outbound;
use crate::providers::{
    CheckoutItem, CheckoutRequest, CustomerRequest, MeterFormula, MeterRequest, ObjectKind,
    PortalRequest, PriceRequest, Provider, ProviderCheckout, ProviderError, ProviderObject,
    ProviderPortal, ProviderRefund, ProviderSubscription, RefundRequest, SubscriptionUpdate,
    UsageEvent, meter_event_name,
};

/// Pages of 100 scanned, most recent first, to find a checkout or a refund by Coffer's id
/// (Polar cannot filter those by metadata).
pub const SCAN_PAGES: u32 = 10;
const PAGE: &str = "100";

/// A Polar account's adapter.
pub struct Polar {
    client: Client,
}

/// A customer portal session: where to send the customer to manage their subscriptions and
/// orders. The URL carries the session's token: give it to the customer only, never log it.
pub struct CustomerPortal {
    pub url: String,
    pub expires_at: OffsetDateTime,
}

impl std::fmt::Debug for CustomerPortal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerPortal")
            .field("url", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

fn definitive(code: &str, message: impl Into<String>) -> ProviderError {
    ProviderError::definitive(code, message)
}

fn metadata(pairs: &[(&'static str, String)]) -> BTreeMap<&'static str, String> {
    pairs.iter().cloned().collect()
}

fn interval(interval: Interval) -> &'static str {
    match interval {
        Interval::Month => "month",
        Interval::Year => "year",
    }
}

impl Polar {
    /// The adapter of `account` (a Polar account with its access token) over `outbound`.
    pub fn new(account: &Account, outbound: Outbound) -> Result<Self, String> {
        Ok(Self {
            client: Client::new(account, outbound)?,
        })
    }

    /// The first item of the list at `path` (with `query`) that `matches`, scanning at most
    /// `pages` pages of 100, most recent first.
    async fn scan<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        path: client::Path<'_>,
        query: &[(&str, &str)],
        pages: u32,
        matches: impl Fn(&T) -> bool,
    ) -> Result<Option<T>, ProviderError> {
        for page in 1..=pages {
            let number = page.to_string();
            let mut q: Vec<(&str, &str)> = query.to_vec();
            q.extend([
                ("page", number.as_str()),
                ("limit", PAGE),
                ("sorting", "-created_at"),
            ]);
            let Some(list) = self
                .client
                .get::<wire::Page<T>>(operation, path, &q)
                .await?
            else {
                return Ok(None);
            };
            let last = list.items.is_empty() || i64::from(page) >= list.pagination.max_page;
            if let Some(found) = list.items.into_iter().find(|item| matches(item)) {
                return Ok(Some(found));
            }
            if last {
                break;
            }
        }
        Ok(None)
    }

    /// The first object of the list at `path` whose metadata has `key` = `value`.
    async fn by_metadata<T: serde::de::DeserializeOwned>(
        &self,
        operation: &'static str,
        path: client::Path<'_>,
        key: &str,
        value: &str,
        extra: &[(&str, &str)],
    ) -> Result<Option<T>, ProviderError> {
        let filter = format!("metadata[{key}]");
        let mut query = vec![(filter.as_str(), value), ("limit", "10")];
        query.extend_from_slice(extra);
        Ok(self
            .client
            .get::<wire::Page<T>>(operation, path, &query)
            .await?
            .and_then(|page| page.items.into_iter().next()))
    }

    async fn customer_by_reference(
        &self,
        reference: Uuid,
    ) -> Result<Option<wire::Customer>, ProviderError> {
        let external_id = reference.to_string();
        self.client
            .get(
                "get_customer_external",
                &["customers", "external", &external_id],
                &[],
            )
            .await
    }

    async fn product_by(&self, key: &str, value: &str) -> Result<Option<String>, ProviderError> {
        let product: Option<wire::Product> = self
            .by_metadata(
                "list_products",
                &["products", ""],
                key,
                value,
                &[("is_archived", "false")],
            )
            .await?;
        Ok(product.map(|p| p.id))
    }

    /// The private one-time product an inline line named `name` is sold as, made the first
    /// time (its catalogue price is the first line's; checkouts always give an ad-hoc one).
    async fn inline_product(
        &self,
        name: &str,
        unit: crate::domain::money::Money,
    ) -> Result<String, ProviderError> {
        if let Some(id) = self.product_by(LINE_KEY, name).await? {
            return Ok(id);
        }
        let body = wire::ProductCreate {
            name: name.to_owned(),
            visibility: "private",
            prices: vec![wire::PriceCreate::Fixed(wire::FixedPrice::new(
                unit.amount(),
                map::currency(unit.currency())?,
            ))],
            recurring_interval: None,
            recurring_interval_count: None,
            trial_interval: None,
            trial_interval_count: None,
            metadata: metadata(&[(LINE_KEY, name.to_owned())]),
        };
        self.create_product(&body).await
    }

    /// Makes a product (`POST /v1/products/`); its id. No idempotency key: Polar has none, and
    /// each caller looked for the product by its metadata first.
    async fn meter_by(&self, reference: &str) -> Result<Option<wire::Meter>, ProviderError> {
        self.by_metadata("list_meters", &["meters", ""], METER_KEY, reference, &[])
            .await
    }

    async fn create_product(&self, body: &wire::ProductCreate) -> Result<String, ProviderError> {
        let product: wire::Product = self
            .client
            .write(
                "create_product",
                Method::POST,
                &["products", ""],
                Some(body),
                None,
            )
            .await?;
        Ok(product.id)
    }

    /// The product and (if the catalogue price will not do) the ad-hoc price of a checkout's
    /// one line.
    async fn line(
        &self,
        item: &CheckoutItem,
        currency: &str,
    ) -> Result<(String, Option<wire::FixedPrice>), ProviderError> {
        let line = &item.line;
        let total = || {
            Some(wire::FixedPrice::new(
                line.amount_total,
                currency.to_owned(),
            ))
        };
        Ok(match &item.provider_price {
            Some(product) if line.quantity == 1 => (product.clone(), None),
            Some(product) => (product.clone(), total()),
            None if matches!(line.billing, Billing::Recurring { .. }) => {
                return Err(definitive(
                    "unsupported_line_item",
                    "a recurring line needs one of Coffer's prices on Polar",
                ));
            }
            None => (self.inline_product(&line.name, line.unit).await?, total()),
        })
    }

    /// The checkout as the port's session; once it succeeded, with its order (the payment)
    /// and, for a recurring product, its subscription.
    async fn checkout_with_outcome(
        &self,
        checkout: wire::Checkout,
    ) -> Result<ProviderCheckout, ProviderError> {
        let mut session = map::checkout(&checkout)?;
        if checkout.status != "succeeded" {
            return Ok(session);
        }
        let orders: Option<wire::Page<wire::Order>> = self
            .client
            .get(
                "list_orders",
                &["orders", ""],
                &[("checkout_id", checkout.id.as_str()), ("limit", "10")],
            )
            .await?;
        if let Some(order) = orders
            .into_iter()
            .flat_map(|p| p.items)
            .find(map::is_checkout_payment)
        {
            session.payment = Some(map::payment(&order)?);
        }
        let recurring = checkout.product.as_ref().is_some_and(|p| p.is_recurring);
        if let (true, Some(reference)) = (recurring, session.client_reference) {
            let sub: Option<wire::Subscription> = self
                .by_metadata(
                    "list_subscriptions",
                    &["subscriptions", ""],
                    CHECKOUT_KEY,
                    &reference.to_string(),
                    &[],
                )
                .await?;
            session.subscription = sub
                .as_ref()
                .map(map::subscription)
                .transpose()?
                .map(Box::new);
        }
        Ok(session)
    }

    async fn get_subscription(
        &self,
        id: &str,
    ) -> Result<Option<wire::Subscription>, ProviderError> {
        self.client
            .get("get_subscription", &["subscriptions", id], &[])
            .await
    }

    /// What an order is to Coffer: the payment of its checkout, or (a renewal, an update, a
    /// trial's zero order) a change of its subscription.
    async fn order_object(&self, order: wire::Order) -> Result<ProviderObject, ProviderError> {
        if map::is_checkout_payment(&order) {
            return Ok(ProviderObject::Payment(map::payment(&order)?));
        }
        let Some(sub) = order.subscription_id.as_deref() else {
            return Err(definitive(
                "not_a_payment",
                format!("Polar's order {} is not a checkout's payment", order.id),
            ));
        };
        let sub = self.get_subscription(sub).await?.ok_or_else(|| {
            definitive(
                "not_found",
                format!("the subscription of Polar's order {} is gone", order.id),
            )
        })?;
        Ok(ProviderObject::Subscription(map::subscription(&sub)?))
    }

    async fn refund_by_id(&self, id: &str) -> Result<Option<wire::Refund>, ProviderError> {
        let page: Option<wire::Page<wire::Refund>> = self
            .client
            .get("list_refunds", &["refunds", ""], &[("id", id)])
            .await?;
        Ok(page.and_then(|p| p.items.into_iter().find(|r| r.id == id)))
    }

    /// The subscription a change left, where Polar may refuse the change as already done
    /// (`AlreadyCanceledSubscription`, when `done_if_canceled`) because an earlier attempt of
    /// it was applied: then the subscription as it is.
    async fn subscription_change(
        &self,
        id: &str,
        result: Result<wire::Subscription, ProviderError>,
        done_if_canceled: bool,
    ) -> Result<ProviderSubscription, ProviderError> {
        let sub = match result {
            Ok(sub) => sub,
            Err(ProviderError::Definitive { code, .. })
                if done_if_canceled && code == "AlreadyCanceledSubscription" =>
            {
                self.get_subscription(id)
                    .await?
                    .ok_or_else(|| definitive("not_found", format!("no Polar subscription {id}")))?
            }
            Err(e) => return Err(e),
        };
        map::subscription(&sub)
    }

    /// Cancels subscription `id` at the end of its period (`cancel`), or takes that back.
    pub async fn cancel_at_period_end(
        &self,
        id: &str,
        cancel: bool,
    ) -> Result<ProviderSubscription, ProviderError> {
        self.cancel_keyed(id, cancel, Uuid::now_v7().simple().to_string())
            .await
    }

    async fn cancel_keyed(
        &self,
        id: &str,
        cancel: bool,
        key: String,
    ) -> Result<ProviderSubscription, ProviderError> {
        let body = wire::SubscriptionCancel {
            cancel_at_period_end: cancel,
        };
        let result = self
            .client
            .write(
                "update_subscription",
                Method::PATCH,
                &["subscriptions", id],
                Some(&body),
                Some(key),
            )
            .await;
        self.subscription_change(id, result, cancel).await
    }

    /// Revokes subscription `id` now (`DELETE`): it ends at once, without a refund.
    pub async fn revoke_subscription(
        &self,
        id: &str,
    ) -> Result<ProviderSubscription, ProviderError> {
        self.revoke_keyed(id, Uuid::now_v7().simple().to_string())
            .await
    }

    async fn revoke_keyed(
        &self,
        id: &str,
        key: String,
    ) -> Result<ProviderSubscription, ProviderError> {
        let result = self
            .client
            .write::<_, ()>(
                "revoke_subscription",
                Method::DELETE,
                &["subscriptions", id],
                None,
                Some(key),
            )
            .await;
        self.subscription_change(id, result, true).await
    }

    /// Moves subscription `id` to another product (a price Coffer mirrored: its Polar id),
    /// with Polar's `proration_behavior` (`prorate`, `invoice`, `next_period`), or the
    /// organization's default when `None`.
    pub async fn change_subscription_product(
        &self,
        id: &str,
        product: &str,
        proration: Option<&str>,
    ) -> Result<ProviderSubscription, ProviderError> {
        self.change_product_keyed(id, product, proration, Uuid::now_v7().simple().to_string())
            .await
    }

    async fn change_product_keyed(
        &self,
        id: &str,
        product: &str,
        proration: Option<&str>,
        key: String,
    ) -> Result<ProviderSubscription, ProviderError> {
        let body = wire::SubscriptionProduct {
            product_id: product.to_owned(),
            proration_behavior: proration.map(str::to_owned),
        };
        let sub: wire::Subscription = self
            .client
            .write(
                "update_subscription",
                Method::PATCH,
                &["subscriptions", id],
                Some(&body),
                Some(key),
            )
            .await?;
        map::subscription(&sub)
    }

    /// A customer portal session for Coffer's customer `customer` (made on Polar by Coffer,
    /// so its external id is Coffer's id), with a back button to `return_url`. Not keyed: an
    /// ambiguous outcome is `Unknown`, and asking again makes a new, equally good session.
    pub async fn customer_portal(
        &self,
        customer: Uuid,
        return_url: Option<String>,
    ) -> Result<CustomerPortal, ProviderError> {
        let body = wire::CustomerSessionCreate {
            external_customer_id: customer.to_string(),
            return_url,
        };
        let session: wire::CustomerSession = self
            .client
            .write(
                "create_customer_session",
                Method::POST,
                &["customer-sessions", ""],
                Some(&body),
                None,
            )
            .await?;
        Ok(CustomerPortal {
            url: session.customer_portal_url,
            expires_at: map::timestamp(&session.expires_at)?,
        })
    }
}

impl Provider for Polar {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Polar
    }

    /// Finds the customer by its external id (Coffer's id) before making it.
    fn create_customer<'a>(
        &'a self,
        _account: &'a AccountName,
        request: CustomerRequest,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            if let Some(found) = self.customer_by_reference(request.client_reference).await? {
                return Ok(found.id);
            }
            let Some(email) = request.email.as_deref() else {
                return Err(definitive(
                    "customer_email_required",
                    "Polar customers need an email: give the customer one in Coffer",
                ));
            };
            let mut meta = vec![(CUSTOMER_KEY, request.client_reference.to_string())];
            if let Some(external) = &request.external_id {
                meta.push((EXTERNAL_KEY, external.clone()));
            }
            let body = wire::CustomerCreate {
                email,
                name: request.name.as_deref(),
                external_id: request.client_reference.to_string(),
                metadata: metadata(&meta),
            };
            let customer: wire::Customer = self
                .client
                .write(
                    "create_customer",
                    Method::POST,
                    &["customers", ""],
                    Some(&body),
                    None,
                )
                .await?;
            Ok(customer.id)
        })
    }

    /// A customer session (`POST /v1/customer-sessions/`, by external id: Coffer's), whose
    /// `customer_portal_url` is the portal, signed in ([`Polar::customer_portal`]).
    fn create_portal_session<'a>(
        &'a self,
        _account: &'a AccountName,
        request: PortalRequest,
    ) -> BoxFuture<'a, Result<ProviderPortal, ProviderError>> {
        Box::pin(async move {
            let portal = self
                .customer_portal(request.coffer_customer, Some(request.return_url))
                .await?;
            Ok(ProviderPortal {
                url: portal.url,
                expires_at: portal.expires_at,
            })
        })
    }

    /// A private product with one fixed price, found by its metadata before it is made.
    fn create_price<'a>(
        &'a self,
        _account: &'a AccountName,
        request: PriceRequest,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            let reference = request.client_reference.to_string();
            if let Some(id) = self.product_by(PRICE_KEY, &reference).await? {
                return Ok(id);
            }
            let currency = map::currency(request.unit.currency())?;
            let price = match &request.meter {
                Some(meter) => wire::PriceCreate::Metered(wire::MeteredPrice {
                    amount_type: "metered_unit",
                    meter_id: meter.clone(),
                    unit_amount: request.unit.amount().to_string(),
                    price_currency: currency,
                }),
                None => {
                    wire::PriceCreate::Fixed(wire::FixedPrice::new(request.unit.amount(), currency))
                }
            };
            let (recurring, count, trial) = match request.billing {
                Billing::OneTime => (None, None, 0),
                Billing::Recurring {
                    interval: i,
                    count,
                    trial_days,
                } => (Some(interval(i)), Some(count), trial_days),
            };
            let body = wire::ProductCreate {
                name: request.name.clone(),
                visibility: "private",
                prices: vec![price],
                recurring_interval: recurring,
                recurring_interval_count: count,
                trial_interval: (trial > 0).then_some("day"),
                trial_interval_count: (trial > 0).then_some(trial),
                metadata: metadata(&[(PRICE_KEY, reference)]),
            };
            self.create_product(&body).await
        })
    }

    /// A meter over the events named [`meter_event_name`], with Coffer's meter id in its
    /// metadata (how an unknown outcome is settled: Polar's creates take no idempotency key).
    fn create_meter<'a>(
        &'a self,
        _account: &'a AccountName,
        request: MeterRequest,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            let reference = request.client_reference.to_string();
            if let Some(m) = self.meter_by(&reference).await? {
                return Ok(m.id);
            }
            let func = match request.formula {
                MeterFormula::Sum => "sum",
                MeterFormula::Last => "max",
            };
            let body = wire::MeterCreate {
                name: request.name.clone(),
                filter: serde_json::json!({
                    "conjunction": "and",
                    "clauses": [{
                        "property": "name",
                        "operator": "eq",
                        "value": meter_event_name(request.client_reference),
                    }],
                }),
                aggregation: serde_json::json!({"func": func, "property": "value"}),
                metadata: metadata(&[(METER_KEY, reference)]),
            };
            let meter: wire::Meter = self
                .client
                .write(
                    "create_meter",
                    Method::POST,
                    &["meters", ""],
                    Some(&body),
                    None,
                )
                .await?;
            Ok(meter.id)
        })
    }

    /// The whole batch in one `POST /v1/events/ingest`, each event with its identifier as
    /// `external_id`, which Polar de-duplicates (a resend answers `duplicates`). Sent with the
    /// identifiers as the idempotency key, so the outbound stack may send it again after a
    /// timeout: the events are idempotent by their ids.
    fn push_usage<'a>(
        &'a self,
        _account: &'a AccountName,
        events: &'a [UsageEvent],
    ) -> BoxFuture<'a, Result<Vec<Result<(), ProviderError>>, ProviderError>> {
        Box::pin(async move {
            let events_json = events
                .iter()
                .map(|e| {
                    let value: serde_json::Number = e.value.parse().map_err(|_| {
                        definitive("invalid_value", format!("{} is not a number", e.value))
                    })?;
                    let timestamp = e
                        .timestamp
                        .format(&time::format_description::well_known::Rfc3339)
                        .map_err(|err| definitive("invalid_timestamp", err.to_string()))?;
                    Ok(serde_json::json!({
                        "name": e.event_name,
                        "external_customer_id": e.customer_reference.to_string(),
                        "external_id": e.identifier,
                        "timestamp": timestamp,
                        "metadata": {"value": value},
                    }))
                })
                .collect::<Result<Vec<_>, ProviderError>>()?;
            let key = events
                .first()
                .map(|e| format!("{}+{}", e.identifier, events.len()));
            let _: wire::IngestAnswer = self
                .client
                .write(
                    "push_usage",
                    Method::POST,
                    &["events", "ingest"],
                    Some(&serde_json::json!({ "events": events_json })),
                    key,
                )
                .await?;
            Ok(events.iter().map(|_| Ok(())).collect())
        })
    }

    fn create_checkout_session<'a>(
        &'a self,
        _account: &'a AccountName,
        r: CheckoutRequest,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>> {
        Box::pin(async move {
            let [item] = r.items.as_slice() else {
                return Err(definitive(
                    "unsupported_line_items",
                    format!(
                        "a Polar checkout sells one product: give one line item (of any \
                         quantity), not {}",
                        r.items.len()
                    ),
                ));
            };
            let currency = map::currency(r.currency)?;
            let (product, adhoc) = self.line(item, &currency).await?;
            let (allow_trial, trial_interval, trial_interval_count) = match r.mode {
                Mode::Payment => (None, None, None),
                Mode::Subscription if r.trial_days > 0 => {
                    (Some(true), Some("day"), Some(r.trial_days))
                }
                Mode::Subscription => (Some(false), None, None),
            };
            let body = wire::CheckoutCreate {
                prices: adhoc.map(|p| [(product.clone(), vec![p])].into_iter().collect()),
                products: vec![product],
                customer_id: r.customer.clone(),
                metadata: metadata(&[
                    (CHECKOUT_KEY, r.client_reference.to_string()),
                    (EXPIRES_KEY, r.expires_at.unix_timestamp().to_string()),
                ]),
                success_url: r.success_url.clone(),
                return_url: r.cancel_url.clone(),
                allow_discount_codes: false,
                currency,
                allow_trial,
                trial_interval,
                trial_interval_count,
            };
            let checkout: wire::Checkout = self
                .client
                .write(
                    "create_checkout_session",
                    Method::POST,
                    &["checkouts", ""],
                    Some(&body),
                    None,
                )
                .await?;
            let session = map::checkout(&checkout)?;
            if session.client_reference != Some(r.client_reference) {
                return Err(ProviderError::Unknown {
                    message: format!(
                        "Polar's checkout {} does not carry Coffer's reference",
                        checkout.id
                    ),
                });
            }
            Ok(session)
        })
    }

    fn fetch_checkout_session<'a>(
        &'a self,
        _account: &'a AccountName,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>> {
        Box::pin(async move {
            let checkout: wire::Checkout = self
                .client
                .get("get_checkout_session", &["checkouts", id], &[])
                .await?
                .ok_or_else(|| definitive("not_found", format!("no Polar checkout {id}")))?;
            self.checkout_with_outcome(checkout).await
        })
    }

    /// Polar's API cannot expire a checkout ([`super::supports`] says so before this is asked).
    fn expire_checkout_session<'a>(
        &'a self,
        _account: &'a AccountName,
        _id: &'a str,
        _idempotency_key: String,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>> {
        Box::pin(async {
            Err(definitive(
                "unsupported",
                "Polar checkouts cannot be expired through its API",
            ))
        })
    }

    /// Finds the refund among its order's refunds before making it (Polar has no idempotency
    /// keys; see the module's documentation).
    fn refund<'a>(
        &'a self,
        _account: &'a AccountName,
        r: RefundRequest,
    ) -> BoxFuture<'a, Result<ProviderRefund, ProviderError>> {
        Box::pin(async move {
            map::currency(r.amount.currency())?;
            let reference = r.client_reference.to_string();
            let earlier = self
                .scan::<wire::Refund>(
                    "list_refunds",
                    &["refunds", ""],
                    &[("order_id", r.payment.as_str())],
                    SCAN_PAGES,
                    |refund| wire::meta(&refund.metadata, REFUND_KEY) == Some(reference.as_str()),
                )
                .await?;
            if let Some(refund) = earlier {
                return map::refund(&refund);
            }
            let body = wire::RefundCreate {
                order_id: r.payment.clone(),
                // The port does not carry Coffer's reason yet.
                reason: "other",
                amount: r.amount.amount(),
                metadata: metadata(&[(REFUND_KEY, reference)]),
                revoke_benefits: false,
            };
            let refund: wire::Refund = self
                .client
                .write("refund", Method::POST, &["refunds", ""], Some(&body), None)
                .await?;
            map::refund(&refund)
        })
    }

    /// Lifecycle changes through Polar's subscription API: cancel at the period's end
    /// (`PATCH {"cancel_at_period_end": true}`) and its undoing (`false`), cancel now
    /// (`DELETE`, Polar's revoke), and a plan change (`PATCH {"product_id", "proration_behavior"}`:
    /// PRORATE is `prorate`, ALWAYS_INVOICE `invoice`, PERIOD_END `next_period`; Polar has no
    /// change made now without proration, so NONE now is refused, and no quantity, so a
    /// quantity other than 1 is). Polar has no paused
    /// collection (not in the capability table, so never asked).
    fn update_subscription<'a>(
        &'a self,
        _account: &'a AccountName,
        r: SubscriptionUpdate,
    ) -> BoxFuture<'a, Result<ProviderSubscription, ProviderError>> {
        use crate::domain::proration::Behavior;
        use crate::domain::subscription::{Change, Effective};
        Box::pin(async move {
            let id = r.subscription.as_str();
            let key = r.idempotency_key.clone();
            match &r.change {
                Change::Cancel {
                    at_period_end: true,
                    ..
                } => self.cancel_keyed(id, true, key).await,
                Change::Cancel { .. } => self.revoke_keyed(id, key).await,
                Change::UndoCancel => self.cancel_keyed(id, false, key).await,
                Change::PauseCollection | Change::ResumeCollection | Change::Resume => {
                    Err(definitive(
                        "unsupported",
                        "Polar subscriptions have no paused collection",
                    ))
                }
                Change::ChangePlan(plan) => {
                    if plan.quantity != 1 {
                        return Err(definitive(
                            "unsupported_quantity",
                            "a Polar subscription sells one of its product",
                        ));
                    }
                    let proration = match (plan.effective, plan.proration) {
                        (Effective::PeriodEnd, _) => "next_period",
                        (Effective::Now, Behavior::Prorate) => "prorate",
                        (Effective::Now, Behavior::AlwaysInvoice) => "invoice",
                        (Effective::Now, Behavior::None) => {
                            return Err(definitive(
                                "unsupported_proration",
                                "Polar prorates every change made now: ask PRORATE, \
                                 ALWAYS_INVOICE, or PERIOD_END",
                            ));
                        }
                    };
                    self.change_product_keyed(id, &plan.provider_price, Some(proration), key)
                        .await
                }
            }
        })
    }

    fn fetch<'a>(
        &'a self,
        _account: &'a AccountName,
        kind: ObjectKind,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ProviderObject>, ProviderError>> {
        Box::pin(async move {
            Ok(match kind {
                ObjectKind::CheckoutSession => {
                    match self
                        .client
                        .get::<wire::Checkout>("get_checkout_session", &["checkouts", id], &[])
                        .await?
                    {
                        Some(c) => Some(ProviderObject::CheckoutSession(
                            self.checkout_with_outcome(c).await?,
                        )),
                        None => None,
                    }
                }
                ObjectKind::Payment => {
                    match self
                        .client
                        .get::<wire::Order>("get_order", &["orders", id], &[])
                        .await?
                    {
                        Some(order) => Some(self.order_object(order).await?),
                        None => None,
                    }
                }
                ObjectKind::Refund => self
                    .refund_by_id(id)
                    .await?
                    .map(|r| map::refund(&r).map(ProviderObject::Refund))
                    .transpose()?,
                ObjectKind::Subscription => self
                    .get_subscription(id)
                    .await?
                    .map(|s| map::subscription(&s).map(ProviderObject::Subscription))
                    .transpose()?,
                ObjectKind::Customer => self
                    .client
                    .get::<wire::Customer>("get_customer", &["customers", id], &[])
                    .await?
                    .map(|c| ProviderObject::Customer { id: c.id }),
                ObjectKind::Price => self
                    .client
                    .get::<wire::Product>("get_product", &["products", id], &[])
                    .await?
                    .map(|p| ProviderObject::Price { id: p.id }),
                ObjectKind::Meter => self
                    .client
                    .get::<wire::Meter>("get_meter", &["meters", id], &[])
                    .await?
                    .map(|m| ProviderObject::Meter { id: m.id }),
                ObjectKind::UsageBatch => None,
                ObjectKind::Dispute => {
                    return Err(definitive(
                        "unsupported",
                        "Coffer does not read Polar's disputes",
                    ));
                }
            })
        })
    }

    fn fetch_object<'a>(
        &'a self,
        _account: &'a AccountName,
        kind: ObjectKind,
        client_reference: Uuid,
    ) -> BoxFuture<'a, Result<Option<ProviderObject>, ProviderError>> {
        Box::pin(async move {
            let reference = client_reference.to_string();
            let is_ours = |m: &wire::Metadata, key| wire::meta(m, key) == Some(reference.as_str());
            Ok(match kind {
                ObjectKind::Customer => self
                    .customer_by_reference(client_reference)
                    .await?
                    .map(|c| ProviderObject::Customer { id: c.id }),
                ObjectKind::Price => self
                    .product_by(PRICE_KEY, &reference)
                    .await?
                    .map(|id| ProviderObject::Price { id }),
                ObjectKind::CheckoutSession => {
                    match self
                        .scan::<wire::Checkout>(
                            "list_checkout_sessions",
                            &["checkouts", ""],
                            &[],
                            SCAN_PAGES,
                            |c| is_ours(&c.metadata, CHECKOUT_KEY),
                        )
                        .await?
                    {
                        Some(c) => Some(ProviderObject::CheckoutSession(
                            self.checkout_with_outcome(c).await?,
                        )),
                        None => None,
                    }
                }
                ObjectKind::Payment => {
                    let orders: Option<wire::Page<wire::Order>> = self
                        .client
                        .get(
                            "list_orders",
                            &["orders", ""],
                            &[
                                (&format!("metadata[{CHECKOUT_KEY}]"), reference.as_str()),
                                ("limit", PAGE),
                            ],
                        )
                        .await?;
                    orders
                        .into_iter()
                        .flat_map(|p| p.items)
                        .find(map::is_checkout_payment)
                        .map(|o| map::payment(&o).map(ProviderObject::Payment))
                        .transpose()?
                }
                ObjectKind::Refund => self
                    .scan::<wire::Refund>("list_refunds", &["refunds", ""], &[], SCAN_PAGES, |r| {
                        is_ours(&r.metadata, REFUND_KEY)
                    })
                    .await?
                    .map(|r| map::refund(&r).map(ProviderObject::Refund))
                    .transpose()?,
                ObjectKind::Subscription => self
                    .by_metadata::<wire::Subscription>(
                        "list_subscriptions",
                        &["subscriptions", ""],
                        CHECKOUT_KEY,
                        &reference,
                        &[],
                    )
                    .await?
                    .map(|s| map::subscription(&s).map(ProviderObject::Subscription))
                    .transpose()?,
                ObjectKind::Meter => self
                    .meter_by(&reference)
                    .await?
                    .map(|m| ProviderObject::Meter { id: m.id }),
                ObjectKind::Dispute | ObjectKind::UsageBatch => None,
            })
        })
    }
}
