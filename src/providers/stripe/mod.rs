//! The Stripe adapter: everything Coffer knows of Stripe's wire format.
//!
//! - [`webhook`]: `Stripe-Signature` deliveries, their event id, type and livemode, and the
//!   object an event is about; [`events`]: which object each event type asks the inbox to
//!   fetch (the table below).
//! - [`client`]: a typed client of the endpoints Coffer uses ([`api`]), pinned to
//!   [`client::API_VERSION`], through the account's outbound stack; [`form`]: Stripe's
//!   nested form encoding; [`wire`]: Stripe's objects; [`objects`]: them as the port's;
//!   [`error`]: Stripe's error bodies as [`ProviderError`]s; [`money`]: amounts (ISK).
//!
//! # What Coffer makes on Stripe
//!
//! - **Customers**, lazily, the first time a checkout needs one, with
//!   `metadata[coffer_customer_id]` (and `coffer_external_id`), email and name.
//! - **Prices**, one per Coffer price on first use, each with its product in one request
//!   (`product_data`), `lookup_key` `coffer_<price id>` and `metadata[coffer_price_id]`.
//! - **Checkout Sessions** in `payment` or `subscription` mode: `client_reference_id` and
//!   `metadata[coffer_checkout_id]` are Coffer's checkout id, copied to the payment intent
//!   (`payment_intent_data[metadata]`) or the subscription (`subscription_data[metadata]`), so
//!   every object a session makes names Coffer's checkout; lines name their mirrored price, or
//!   carry `price_data` inline; `subscription_data[trial_period_days]` for a trial.
//! - **Refunds** of a payment intent with `metadata[coffer_refund_id]`.
//! - **Subscriptions without a checkout** (CreateSubscription, `POST /v1/subscriptions`): the
//!   mirrored customer and price, `metadata[coffer_subscription_id]` (Coffer's subscription
//!   id, its client reference), `trial_period_days` for a trial; without one Stripe charges the
//!   customer's default payment method now, and a customer with none is refused
//!   (`PAYMENT_METHOD_REQUIRED`; decision 0026).
//! - **Subscription changes** (the lifecycle RPCs): cancel now (`DELETE`) or at the period's
//!   end and its undoing, pause and resume collection, a plan change now (the first item's
//!   price and quantity, `proration_behavior`, the preview's `proration_date`,
//!   `metadata[coffer_change_id]`) or at the period's end (a subscription schedule whose next
//!   phase is the new price; decision 0028), and its preview (`POST
//!   /v1/invoices/create_preview`).
//!
//! # Events
//!
//! | Stripe event | fetched | Coffer change |
//! |---|---|---|
//! | `checkout.session.completed`, `.expired`, `.async_payment_succeeded`, `.async_payment_failed` | the session, with its payment intent, subscription and first invoice | session status; its payment's status and card; its subscription made or updated |
//! | `customer.subscription.created`, `.updated`, `.deleted`, `.paused`, `.resumed`, `.trial_will_end` | the subscription | subscription status, period, trial end, flags, price and quantity |
//! | `invoice.paid`, `.payment_succeeded`, `.payment_failed` | the invoice, its subscription, and the payment intent that paid it | the subscription as above; the invoice's charge as a payment of it, one per period (a session's first invoice: the session's payment) |
//! | `payment_intent.succeeded`, `.payment_failed` | the payment intent and its charge | payment status, decline code, card |
//! | `charge.refunded` | the charge's payment intent (an invoice's: that invoice, found by `/v1/invoice_payments`) | payment kept current |
//! | `refund.updated`, `refund.failed` | the refund | refund status (a pending refund settles) |
//! | `charge.dispute.created`, `.updated`, `.closed` | the dispute, with its payment intent (and an invoice's subscription) | dispute recorded on the payment of that payment intent; payment DISPUTED, SUCCEEDED again when won, amount lost when lost |
//!
//! Any other type is ignored, as is an event about an object Coffer did not make
//! ([`events`]).
//!
//! # Finding what Coffer made (`fetch_object`)
//!
//! An unknown outcome (a timeout, a 5xx) is settled by finding the object by Coffer's id,
//! never by calling again. Search (`/v1/*/search`) is eventually consistent (an object may
//! take a minute to appear), so it is used only where a list cannot answer:
//!
//! - a **session** or **refund**: Stripe has no search for them. Coffer's ids are UUIDv7, so
//!   the id says when the call was made: recent objects (`created[gte]` a few minutes before
//!   the id's time) are listed, newest first, and matched by `client_reference_id` /
//!   `metadata[coffer_refund_id]` — a strongly consistent read, a few pages at most;
//! - a **price**: by its lookup key (`GET /v1/prices?lookup_keys[]=coffer_<id>`), consistent;
//! - a **customer** (made long after its Coffer id): Search by metadata, then the customers
//!   made in the last hour, which Search may not show yet;
//! - a **payment** or **subscription** by checkout id: Search by metadata; the subscription a
//!   plan change was made to, by the change's id (`metadata[coffer_change_id]`);
//! - a subscription **CreateSubscription** made, by Coffer's subscription id: Search by
//!   `metadata[coffer_subscription_id]`, then the subscriptions created since the id's time
//!   (listed, as sessions are), which Search may not show yet.
//!
//! Replaying the create under its idempotency key would also answer (Stripe keeps keys for
//! 24 hours), but it is a write, which the journal never repeats blindly, and the port's
//! `fetch_object` knows only Coffer's id.

pub mod api;
pub mod client;
pub mod error;
pub mod events;
pub mod form;
pub mod money;
pub mod objects;
pub mod webhook;
pub mod wire;

use futures_core::future::BoxFuture;
use time::OffsetDateTime;
use uuid::Uuid;

pub use webhook::Webhooks;

use self::api::{
    CHECKOUT_KEY, CUSTOMER_KEY, Call, PRICE_KEY, REFUND_KEY, SUBSCRIPTION_KEY, SessionFilter,
    segment,
};
use self::client::Client;
use self::objects::{coffer_id, session_reference, version_now};
use crate::domain::account::{Account, AccountName, ProviderKind};
use crate::domain::proration::Behavior;
use crate::domain::subscription::{Effective, PlanChange};
use crate::providers::outbound::Outbound;
use crate::providers::{
    CheckoutRequest, CreatedSubscription, CustomerRequest, MeterRequest, ObjectKind,
    PAYMENT_METHOD_REQUIRED, PlanChangePreview, PortalRequest, PriceRequest, Provider,
    ProviderCheckout, ProviderError, ProviderObject, ProviderPortal, ProviderRefund, RefundRequest,
    SubscriptionRequest, SubscriptionUpdate, UsageEvent, meter_event_name,
};

/// How long a billing portal session is good for. Stripe does not answer it; an unused session
/// lasts about five minutes (its documentation), so that is what Coffer reports.
const PORTAL_LIFETIME: time::Duration = time::Duration::minutes(5);

/// Whether `e` is Stripe's refusal of a meter event whose identifier it has already taken.
fn already_sent(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Definitive { message, .. }
        if message.starts_with("An event already exists with identifier"))
}

/// Whether `e` is Stripe's refusal of a subscription whose customer has no payment method to
/// charge (`resource_missing`: "This customer has no attached payment source or default
/// payment method.").
fn no_payment_method(e: &ProviderError) -> bool {
    matches!(e, ProviderError::Definitive { code, message, .. }
        if code == "resource_missing"
            && (message.contains("payment source") || message.contains("payment method")))
}

/// Meter events in flight at once per push (see [`Stripe::push_usage`]).
const PUSH_CONCURRENCY: usize = 8;

/// How many pages of 100 a search of recent objects reads before it gives up (and answers
/// retryable rather than "not there").
const MAX_PAGES: usize = 10;
/// How long before its Coffer id's time an object may have been created (clock skew).
const CREATED_SLACK_SECS: i64 = 300;
/// The customers listed besides Search's answer: those Search may not show yet.
const RECENT_CUSTOMERS_SECS: i64 = 3600;

/// One Stripe account's adapter.
#[derive(Clone)]
pub struct Stripe {
    client: Client,
}

impl Stripe {
    pub fn new(account: &Account, outbound: Outbound) -> Self {
        Self {
            client: Client::new(account, outbound),
        }
    }

    /// The typed client, for the calls the port does not name yet (subscription changes).
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn session(&self, id: &str) -> Result<Option<ProviderCheckout>, ProviderError> {
        let version = version_now();
        let Some(id) = segment(id) else {
            return Ok(None);
        };
        let Some(s) = self
            .client
            .find::<wire::Session>(api::retrieve_session(id))
            .await?
        else {
            return Ok(None);
        };
        objects::checkout(&s, version).map(Some)
    }

    /// Coffer's checkout id of an object a session made, when its metadata lost it: the
    /// session that made it, found by the list filter Stripe offers for it.
    async fn reference_by_session(
        &self,
        filter: SessionFilter<'_>,
    ) -> Result<Option<Uuid>, ProviderError> {
        let list: wire::List<wire::Session> = self
            .client
            .send(
                api::list_sessions(&SessionFilter { limit: 1, ..filter }),
                None,
            )
            .await?;
        Ok(list.data.first().and_then(session_reference))
    }

    /// A payment by its payment intent, or by the invoice it pays (`in_…`, what an invoice's
    /// events name): see [`Stripe::invoice`].
    async fn payment(&self, id: &str) -> Result<Option<ProviderObject>, ProviderError> {
        if id.starts_with("in_") {
            return self.invoice(id).await;
        }
        let version = version_now();
        let Some(pi) = self
            .client
            .find::<wire::PaymentIntent>(api::retrieve_payment_intent(id))
            .await?
        else {
            return Ok(None);
        };
        let reference = match coffer_id(&pi.metadata, CHECKOUT_KEY) {
            Some(r) => Some(r),
            None => {
                self.reference_by_session(SessionFilter {
                    payment_intent: Some(id),
                    ..Default::default()
                })
                .await?
            }
        };
        // An invoice's charge (a subscription's) carries no metadata and no session: it is
        // the invoice's payment.
        let Some(reference) = reference else {
            return match self.invoice_paid_by(id).await? {
                Some(invoice) => self.invoice(&invoice).await,
                // Not one of Coffer's: nothing Coffer could apply it to.
                None => Ok(None),
            };
        };
        Ok(Some(ProviderObject::Payment(objects::payment(
            &pi, reference, version,
        )?)))
    }

    /// The invoice the payment intent `intent` pays, when it pays one.
    async fn invoice_paid_by(&self, intent: &str) -> Result<Option<String>, ProviderError> {
        let list: wire::List<wire::InvoicePayment> = self
            .client
            .send(api::invoice_payments_of(intent), None)
            .await?;
        Ok(list
            .data
            .into_iter()
            .find_map(|p| p.invoice)
            .map(|i| i.id().to_owned()))
    }

    /// Invoice `id` of one of Coffer's subscriptions as its charge
    /// ([`objects::invoice_charge`]: the payment intent, read whole, with the subscription it
    /// pays for), or the subscription alone when the invoice charged nothing (a trial's) or
    /// was not tried yet; `None` for an invoice of no subscription of Coffer's. All three are
    /// read now, so the payment and the subscription are as new as the fetch.
    async fn invoice(&self, id: &str) -> Result<Option<ProviderObject>, ProviderError> {
        let version = version_now();
        let Some(invoice) = self
            .client
            .find::<wire::Invoice>(api::retrieve_invoice(id))
            .await?
        else {
            return Ok(None);
        };
        let Some(sub_id) = invoice.subscription_id().and_then(segment) else {
            return Ok(None);
        };
        let Some(sub) = self
            .client
            .find::<wire::Subscription>(api::retrieve_subscription(sub_id))
            .await?
        else {
            return Ok(None);
        };
        let session_made = coffer_id(&sub.metadata, SUBSCRIPTION_KEY).is_none();
        let Some(subscription) = self.subscription_of(&sub, version).await? else {
            return Ok(None);
        };
        let Some(intent) = invoice.intent().filter(|_| invoice.amount_due > 0) else {
            return Ok(Some(ProviderObject::Subscription(subscription)));
        };
        let pi = match intent.object() {
            Some(pi) => pi.clone(),
            None => self
                .client
                .find::<wire::PaymentIntent>(api::retrieve_payment_intent(intent.id()))
                .await?
                .ok_or_else(|| {
                    ProviderError::definitive(
                        "resource_missing",
                        format!("invoice {id}'s payment intent is gone"),
                    )
                })?,
        };
        objects::invoice_charge(&invoice, &pi, subscription, session_made, version)
            .map(|p| Some(ProviderObject::Payment(p)))
    }

    async fn subscription(&self, id: &str) -> Result<Option<ProviderObject>, ProviderError> {
        let version = version_now();
        let Some(sub) = self
            .client
            .find::<wire::Subscription>(api::retrieve_subscription(id))
            .await?
        else {
            return Ok(None);
        };
        Ok(self
            .subscription_of(&sub, version)
            .await?
            .map(ProviderObject::Subscription))
    }

    /// A subscription as Stripe answered it, with Coffer's reference: the checkout that made it
    /// (its metadata, or the session that names it), or Coffer's own subscription id for one
    /// CreateSubscription made; `None` for one Coffer did not make.
    async fn subscription_of(
        &self,
        sub: &wire::Subscription,
        version: i64,
    ) -> Result<Option<crate::providers::ProviderSubscription>, ProviderError> {
        let reference = match coffer_id(&sub.metadata, CHECKOUT_KEY)
            .or_else(|| coffer_id(&sub.metadata, SUBSCRIPTION_KEY))
        {
            Some(r) => Some(r),
            None => {
                self.reference_by_session(SessionFilter {
                    subscription: Some(&sub.id),
                    ..Default::default()
                })
                .await?
            }
        };
        reference
            .map(|reference| objects::subscription(sub, reference, version))
            .transpose()
    }

    async fn dispute(&self, id: &str) -> Result<Option<ProviderObject>, ProviderError> {
        let version = version_now();
        let Some(d) = self
            .client
            .find::<wire::Dispute>(api::retrieve_dispute(id))
            .await?
        else {
            return Ok(None);
        };
        let mut reference = d
            .payment_intent
            .as_ref()
            .and_then(wire::Expandable::object)
            .and_then(|pi| coffer_id(&pi.metadata, CHECKOUT_KEY));
        // A dispute of a charge made without a payment intent (not Coffer's) names none.
        let intent = d.payment_intent.as_ref().map(|pi| pi.id().to_owned());
        if reference.is_none()
            && let Some(intent) = &intent
        {
            reference = self
                .reference_by_session(SessionFilter {
                    payment_intent: Some(intent),
                    ..Default::default()
                })
                .await?;
        }
        // A charge of a subscription's invoice: the invoice's subscription names Coffer's.
        if reference.is_none()
            && let Some(intent) = &intent
            && let Some(invoice) = self.invoice_paid_by(intent).await?
            && let Some(ProviderObject::Payment(p)) = self.invoice(&invoice).await?
        {
            reference = Some(p.client_reference);
        }
        let Some(reference) = reference else {
            return Ok(None);
        };
        Ok(Some(ProviderObject::Dispute(objects::dispute(
            &d, reference, version,
        )?)))
    }

    async fn refund_object(&self, id: &str) -> Result<Option<ProviderObject>, ProviderError> {
        let version = version_now();
        let Some(r) = self
            .client
            .find::<wire::Refund>(api::retrieve_refund(id))
            .await?
        else {
            return Ok(None);
        };
        Ok(objects::refund(&r, version)?.map(ProviderObject::Refund))
    }

    /// Reads pages of a newest-first list (`call(starting_after)`) until `found` matches, the
    /// list ends (`None`: not there), or [`MAX_PAGES`] were read (retryable: not known).
    async fn scan<T: serde::de::DeserializeOwned + wire::HasId>(
        &self,
        call: impl Fn(Option<&str>) -> Call,
        found: impl Fn(&T) -> bool,
    ) -> Result<Option<T>, ProviderError> {
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let page: wire::List<T> = self.client.send(call(after.as_deref()), None).await?;
            let last = page.data.last().map(|o| o.id().to_owned());
            if let Some(hit) = page.data.into_iter().find(|o| found(o)) {
                return Ok(Some(hit));
            }
            match last {
                Some(last) if page.has_more => after = Some(last),
                _ => return Ok(None),
            }
        }
        Err(ProviderError::Retryable {
            message: format!(
                "the object was not among the {MAX_PAGES} newest pages of Stripe's list"
            ),
            retry_after: None,
        })
    }

    async fn search_one<T: serde::de::DeserializeOwned>(
        &self,
        resource: &'static str,
        key: &str,
        value: Uuid,
    ) -> Result<Option<T>, ProviderError> {
        let list: wire::List<T> = self
            .client
            .send(
                api::search_metadata(resource, key, &value.to_string()),
                None,
            )
            .await?;
        Ok(list.data.into_iter().next())
    }

    async fn find_customer(
        &self,
        reference: Uuid,
    ) -> Result<Option<ProviderObject>, ProviderError> {
        let customer = match self
            .search_one::<wire::Customer>("customers", CUSTOMER_KEY, reference)
            .await?
        {
            Some(c) => Some(c),
            None => {
                let since = OffsetDateTime::now_utc().unix_timestamp() - RECENT_CUSTOMERS_SECS;
                self.scan::<wire::Customer>(
                    |after| api::list_customers(since, after),
                    |c| coffer_id(&c.metadata, CUSTOMER_KEY) == Some(reference),
                )
                .await?
            }
        };
        Ok(customer.map(|c| ProviderObject::Customer { id: c.id }))
    }

    async fn find_price(&self, reference: Uuid) -> Result<Option<ProviderObject>, ProviderError> {
        let list: wire::List<wire::Price> =
            self.client.send(api::find_price(reference), None).await?;
        Ok(list
            .data
            .into_iter()
            .find(|p| {
                p.lookup_key.as_deref() == Some(api::price_lookup_key(reference).as_str())
                    || coffer_id(&p.metadata, PRICE_KEY) == Some(reference)
            })
            .map(|p| ProviderObject::Price { id: p.id }))
    }

    async fn find_session(&self, reference: Uuid) -> Result<Option<ProviderObject>, ProviderError> {
        let since = created_since(reference);
        let found = self
            .scan::<wire::Session>(
                |after| {
                    api::list_sessions(&SessionFilter {
                        created_gte: Some(since),
                        starting_after: after,
                        limit: 100,
                        ..Default::default()
                    })
                },
                |s| session_reference(s) == Some(reference),
            )
            .await?;
        match found {
            // Listed sessions are not expanded: read it whole.
            Some(s) => Ok(self
                .session(&s.id)
                .await?
                .map(ProviderObject::CheckoutSession)),
            None => Ok(None),
        }
    }

    async fn find_refund(&self, reference: Uuid) -> Result<Option<ProviderObject>, ProviderError> {
        let version = version_now();
        let since = created_since(reference);
        let found = self
            .scan::<wire::Refund>(
                |after| api::list_refunds(since, after),
                |r| coffer_id(&r.metadata, REFUND_KEY) == Some(reference),
            )
            .await?;
        match found {
            Some(r) => Ok(objects::refund(&r, version)?.map(ProviderObject::Refund)),
            None => Ok(None),
        }
    }

    async fn find_payment(&self, reference: Uuid) -> Result<Option<ProviderObject>, ProviderError> {
        match self
            .search_one::<wire::PaymentIntent>("payment_intents", CHECKOUT_KEY, reference)
            .await?
        {
            // Search answers are not expanded: read it whole.
            Some(pi) => self.payment(&pi.id).await,
            None => Ok(None),
        }
    }

    /// A session's subscription by its checkout id, one CreateSubscription made by Coffer's
    /// subscription id, or the one a plan change (by the change's id,
    /// `metadata[coffer_change_id]`) was made to.
    async fn find_subscription(
        &self,
        reference: Uuid,
    ) -> Result<Option<ProviderObject>, ProviderError> {
        let version = version_now();
        if let Some(sub) = self
            .search_one::<wire::Subscription>("subscriptions", CHECKOUT_KEY, reference)
            .await?
        {
            return Ok(Some(ProviderObject::Subscription(objects::subscription(
                &sub, reference, version,
            )?)));
        }
        if let Some(sub) = self.find_created_subscription(reference).await? {
            return Ok(Some(ProviderObject::Subscription(objects::subscription(
                &sub, reference, version,
            )?)));
        }
        match self
            .search_one::<wire::Subscription>("subscriptions", api::CHANGE_KEY, reference)
            .await?
        {
            Some(sub) => Ok(self
                .subscription_of(&sub, version)
                .await?
                .map(ProviderObject::Subscription)),
            None => Ok(None),
        }
    }

    /// The subscription CreateSubscription made under Coffer's id `reference`: Search by
    /// metadata, then the subscriptions created since the id's time, which Search may not
    /// show yet (a strongly consistent read).
    async fn find_created_subscription(
        &self,
        reference: Uuid,
    ) -> Result<Option<wire::Subscription>, ProviderError> {
        if let Some(sub) = self
            .search_one::<wire::Subscription>("subscriptions", SUBSCRIPTION_KEY, reference)
            .await?
        {
            return Ok(Some(sub));
        }
        let since = created_since(reference);
        self.scan::<wire::Subscription>(
            |after| api::list_subscriptions(since, after),
            |s| coffer_id(&s.metadata, SUBSCRIPTION_KEY) == Some(reference),
        )
        .await
    }

    /// The subscription `id` as it is now, with the item a plan change moves.
    async fn subscription_item(
        &self,
        id: &str,
    ) -> Result<(wire::Subscription, String), ProviderError> {
        let sub = self
            .client
            .find::<wire::Subscription>(api::retrieve_subscription(id))
            .await?
            .ok_or_else(|| {
                ProviderError::definitive("resource_missing", format!("no subscription {id}"))
            })?;
        let item = sub
            .items
            .as_ref()
            .and_then(|l| l.data.first())
            .map(|i| i.id.clone())
            .ok_or_else(|| {
                ProviderError::definitive("no_item", format!("subscription {id} has no item"))
            })?;
        Ok((sub, item))
    }

    /// A plan change at the period's end: the subscription is put under a schedule (or its
    /// schedule is updated) whose current phase ends with the period and whose next phase
    /// charges the new price, unprorated; Stripe then renews at the new price and the
    /// schedule releases the subscription. Decision 0028.
    async fn schedule_plan_change(
        &self,
        sub: &wire::Subscription,
        plan: &PlanChange,
        change_id: Uuid,
        key: &str,
    ) -> Result<(), ProviderError> {
        let item = sub.items.as_ref().and_then(|l| l.data.first());
        let current = item.and_then(|i| i.price.as_ref()).ok_or_else(|| {
            ProviderError::definitive("no_item", "the subscription's item names no price")
        })?;
        let quantity = item
            .and_then(|i| i.quantity)
            .and_then(|q| u32::try_from(q).ok())
            .unwrap_or(1);
        let period_end = item
            .and_then(|i| i.current_period_end)
            .or(sub.current_period_end)
            .ok_or_else(|| {
                ProviderError::definitive("no_period", "the subscription has no period")
            })?;
        let schedule: wire::SubscriptionSchedule = match &sub.schedule {
            Some(wire::Expandable::Object(s)) => (**s).clone(),
            Some(wire::Expandable::Id(id)) => {
                self.client
                    .find(api::retrieve_schedule(id))
                    .await?
                    .ok_or_else(|| ProviderError::definitive("resource_missing", "schedule gone"))?
            }
            None => {
                self.client
                    .send(
                        api::create_schedule_from(&sub.id),
                        Some(format!("{key}-schedule")),
                    )
                    .await?
            }
        };
        let start = schedule
            .current_phase
            .as_ref()
            .or(schedule.phases.first())
            .and_then(|p| p.start_date);
        let _: wire::SubscriptionSchedule = self
            .client
            .send(
                api::update_schedule(
                    &schedule.id,
                    &[
                        api::Phase {
                            price: &current.id,
                            quantity,
                            start_date: start,
                            end_date: Some(period_end),
                        },
                        api::Phase {
                            price: &plan.provider_price,
                            quantity: plan.quantity,
                            start_date: None,
                            end_date: None,
                        },
                    ],
                    change_id,
                ),
                Some(format!("{key}-phases")),
            )
            .await?;
        Ok(())
    }
}

/// Coffer's proration as Stripe's `proration_behavior`.
fn proration(behavior: Behavior) -> api::Proration {
    match behavior {
        Behavior::Prorate => api::Proration::CreateProrations,
        Behavior::None => api::Proration::None,
        Behavior::AlwaysInvoice => api::Proration::AlwaysInvoice,
    }
}

/// The earliest an object made for Coffer's `id` can have been created: a few minutes before
/// the time in the UUIDv7 (clock skew), or two days ago for an id that carries no time.
fn created_since(id: Uuid) -> i64 {
    match id.get_timestamp() {
        Some(ts) => ts.to_unix().0 as i64 - CREATED_SLACK_SECS,
        None => OffsetDateTime::now_utc().unix_timestamp() - 2 * 86_400,
    }
}

impl Provider for Stripe {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Stripe
    }

    fn create_customer<'a>(
        &'a self,
        _account: &'a AccountName,
        request: CustomerRequest,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            let key = request.idempotency_key.clone();
            let c: wire::Customer = self
                .client
                .send(api::create_customer(&request), Some(key))
                .await?;
            Ok(c.id)
        })
    }

    fn create_portal_session<'a>(
        &'a self,
        _account: &'a AccountName,
        request: PortalRequest,
    ) -> BoxFuture<'a, Result<ProviderPortal, ProviderError>> {
        Box::pin(async move {
            let s: wire::PortalSession = self
                .client
                .send(
                    api::create_portal_session(&request.customer, &request.return_url),
                    Some(request.idempotency_key),
                )
                .await?;
            let created = OffsetDateTime::from_unix_timestamp(s.created).map_err(|_| {
                ProviderError::definitive("unreadable", "the portal session's created is no time")
            })?;
            tracing::debug!(stripe.portal_session = %s.id, "billing portal session made");
            Ok(ProviderPortal {
                url: s.url,
                expires_at: created + PORTAL_LIFETIME,
            })
        })
    }

    fn create_price<'a>(
        &'a self,
        _account: &'a AccountName,
        request: PriceRequest,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            let key = request.idempotency_key.clone();
            let p: wire::Price = self
                .client
                .send(api::create_price(&request), Some(key))
                .await?;
            Ok(p.id)
        })
    }

    fn create_meter<'a>(
        &'a self,
        _account: &'a AccountName,
        request: MeterRequest,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async move {
            let key = request.idempotency_key.clone();
            let m: wire::Meter = self
                .client
                .send(api::create_meter(&request), Some(key))
                .await?;
            Ok(m.id)
        })
    }

    /// One request per event (the v1 endpoint takes one), at most [`PUSH_CONCURRENCY`] at a
    /// time: Stripe documents 1 000 meter events a second in live mode, and the account's
    /// bulkhead bounds what all of Coffer's calls on it hold together. A 429 is waited out by
    /// the outbound stack as its `Retry-After` says. The v2 meter event stream (10 000 a
    /// second, batches of 100) needs a session token of 15 minutes and validates events only
    /// after answering; Coffer pushes pre-aggregated totals, a few events per customer and
    /// period, so the v1 endpoint's synchronous answer is worth more than the stream's rate.
    fn push_usage<'a>(
        &'a self,
        _account: &'a AccountName,
        events: &'a [UsageEvent],
    ) -> BoxFuture<'a, Result<Vec<Result<(), ProviderError>>, ProviderError>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(events.len());
            for chunk in events.chunks(PUSH_CONCURRENCY) {
                let sends = chunk
                    .iter()
                    .map(|e| {
                        let call = api::meter_event(e);
                        let key = e.identifier.clone();
                        Box::pin(async move {
                            match self.client.send::<wire::MeterEvent>(call, Some(key)).await {
                                Ok(_) => Ok(()),
                                // Stripe refuses an identifier it already has (400, "An event
                                // already exists with identifier …"): that push arrived.
                                Err(e) if already_sent(&e) => Ok(()),
                                Err(e) => Err(e),
                            }
                        }) as BoxFuture<'_, Result<(), ProviderError>>
                    })
                    .collect();
                results.extend(crate::providers::join_all(sends).await);
            }
            // Nothing arrived for sure and nothing was refused: the batch's own outcome (an
            // open breaker, Stripe down), for the journal to record.
            if let Some(Err(first)) = results.first()
                && results.iter().all(|r| {
                    matches!(
                        r,
                        Err(ProviderError::Retryable { .. } | ProviderError::Unknown { .. })
                    )
                })
            {
                return Err(first.clone());
            }
            Ok(results)
        })
    }

    fn create_checkout_session<'a>(
        &'a self,
        _account: &'a AccountName,
        request: CheckoutRequest,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>> {
        Box::pin(async move {
            let version = version_now();
            let call = api::create_session(&request, OffsetDateTime::now_utc());
            let s: wire::Session = self
                .client
                .send(call, Some(request.idempotency_key.clone()))
                .await?;
            let mut checkout = objects::checkout(&s, version)?;
            checkout
                .client_reference
                .get_or_insert(request.client_reference);
            Ok(checkout)
        })
    }

    fn fetch_checkout_session<'a>(
        &'a self,
        _account: &'a AccountName,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>> {
        Box::pin(async move {
            self.session(id).await?.ok_or_else(|| {
                ProviderError::definitive("resource_missing", format!("Stripe has no session {id}"))
            })
        })
    }

    fn expire_checkout_session<'a>(
        &'a self,
        _account: &'a AccountName,
        id: &'a str,
        idempotency_key: String,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>> {
        Box::pin(async move {
            let Some(segment) = segment(id) else {
                return Err(ProviderError::definitive(
                    "resource_missing",
                    "not a Stripe session id",
                ));
            };
            let version = version_now();
            match self
                .client
                .send::<wire::Session>(api::expire_session(segment), Some(idempotency_key))
                .await
            {
                Ok(s) => objects::checkout(&s, version),
                // Stripe refuses to expire a session that is not open with a plain
                // invalid_request_error: read the session to say so.
                Err(refused @ ProviderError::Definitive { .. }) => match self.session(id).await? {
                    Some(s) if s.status != crate::domain::checkout::Status::Open => {
                        Err(ProviderError::definitive(
                            "session_not_open",
                            format!("the session is {}", s.status.as_str()),
                        ))
                    }
                    _ => Err(refused),
                },
                Err(e) => Err(e),
            }
        })
    }

    fn refund<'a>(
        &'a self,
        _account: &'a AccountName,
        request: RefundRequest,
    ) -> BoxFuture<'a, Result<ProviderRefund, ProviderError>> {
        Box::pin(async move {
            let version = version_now();
            let r: wire::Refund = self
                .client
                .send(
                    api::create_refund(&request),
                    Some(request.idempotency_key.clone()),
                )
                .await?;
            let (amount, _) = money::from_stripe(r.amount, &r.currency)?;
            Ok(ProviderRefund {
                id: r.id.clone(),
                payment: request.payment.clone(),
                client_reference: request.client_reference,
                amount,
                status: objects::refund_status(r.status.as_deref())?,
                version,
            })
        })
    }

    /// Stripe's own calls for each change: DELETE (cancel now), `cancel_at_period_end`,
    /// `pause_collection` (invoices voided while paused, Stripe's usual choice) and its unset,
    /// and `POST …/resume` for a `paused` subscription.
    fn update_subscription<'a>(
        &'a self,
        _account: &'a AccountName,
        r: SubscriptionUpdate,
    ) -> BoxFuture<'a, Result<crate::providers::ProviderSubscription, ProviderError>> {
        use crate::domain::subscription::Change;
        Box::pin(async move {
            let version = version_now();
            let key = r.idempotency_key.clone();
            let id = r.subscription.as_str();
            let sub = match &r.change {
                Change::Cancel {
                    at_period_end: false,
                    ..
                } => {
                    self.client
                        .cancel_subscription(id, false, false, key)
                        .await?
                }
                Change::Cancel { .. } => self.client.cancel_at_period_end(id, true, key).await?,
                Change::UndoCancel => self.client.cancel_at_period_end(id, false, key).await?,
                Change::PauseCollection => {
                    self.client
                        .pause_collection(id, api::PauseBehavior::Void, None, key)
                        .await?
                }
                Change::ResumeCollection => self.client.unpause_collection(id, key).await?,
                // A `paused` subscription: Stripe's resume, a new billing cycle from now,
                // invoiced at once.
                Change::Resume => self.client.resume_subscription(id, true, key).await?,
                Change::ChangePlan(plan) => {
                    let (sub, item) = self.subscription_item(id).await?;
                    match plan.effective {
                        Effective::Now => {
                            // A change made now replaces one scheduled for the period's end
                            // (as Coffer's own scheduled change is dropped): the schedule is
                            // released first, so its next phase never applies.
                            if let Some(schedule) = &sub.schedule {
                                let _: wire::SubscriptionSchedule = self
                                    .client
                                    .send(
                                        api::release_schedule(schedule.id()),
                                        Some(format!("{key}-release")),
                                    )
                                    .await?;
                            }
                            let change = api::PriceChange {
                                item: &item,
                                price: &plan.provider_price,
                                quantity: plan.quantity,
                                proration: proration(plan.proration),
                                proration_date: plan.proration_time.map(|t| t.unix_timestamp()),
                            };
                            self.client
                                .update_subscription_price(id, &change, r.client_reference, key)
                                .await?
                        }
                        Effective::PeriodEnd => {
                            self.schedule_plan_change(&sub, plan, r.client_reference, &key)
                                .await?;
                            self.subscription_item(id).await?.0
                        }
                    }
                }
            };
            self.subscription_of(&sub, version).await?.ok_or_else(|| {
                ProviderError::definitive(
                    "not_coffers",
                    "the subscription names no Coffer checkout",
                )
            })
        })
    }

    /// `POST /v1/subscriptions` under the journal's idempotency key, with the mirrored customer
    /// and price (the app mirrors both first). The first period's charge is not answered
    /// here: its invoice's events bring it. No payment method and no trial is Stripe's 400
    /// `resource_missing`, answered as [`PAYMENT_METHOD_REQUIRED`].
    fn create_subscription<'a>(
        &'a self,
        _account: &'a AccountName,
        r: SubscriptionRequest,
    ) -> BoxFuture<'a, Result<CreatedSubscription, ProviderError>> {
        Box::pin(async move {
            let version = version_now();
            let (Some(customer), Some(price)) = (&r.customer, &r.provider_price) else {
                return Err(ProviderError::definitive(
                    "not_mirrored",
                    "a Stripe subscription needs the mirrored customer and price",
                ));
            };
            let sub: wire::Subscription = self
                .client
                .send(
                    api::create_subscription(&r, customer, price),
                    Some(r.idempotency_key.clone()),
                )
                .await
                .map_err(|e| {
                    if no_payment_method(&e) {
                        ProviderError::definitive(
                            PAYMENT_METHOD_REQUIRED,
                            "the customer has no default payment method and no trial was asked",
                        )
                    } else {
                        e
                    }
                })?;
            Ok(CreatedSubscription {
                subscription: objects::subscription(&sub, r.client_reference, version)?,
                payment: None,
            })
        })
    }

    /// Stripe's own invoice preview of the change (`POST /v1/invoices/create_preview`),
    /// prorated at the asked time or now (whole seconds, the time answered), so the change
    /// sent with that time prorates exactly as shown. What it charges is its proration lines'
    /// sum, when positive: the next period's own charge, which a preview also shows, is not
    /// the change's. A change at the period's end prorates nothing.
    fn preview_plan_change<'a>(
        &'a self,
        _account: &'a AccountName,
        subscription: &'a str,
        plan: &'a PlanChange,
    ) -> BoxFuture<'a, Result<PlanChangePreview, ProviderError>> {
        Box::pin(async move {
            let (sub, item) = self.subscription_item(subscription).await?;
            let at = plan
                .proration_time
                .unwrap_or_else(OffsetDateTime::now_utc)
                .unix_timestamp();
            let proration_time = OffsetDateTime::from_unix_timestamp(at)
                .map_err(|e| ProviderError::definitive("invalid_proration_time", e.to_string()))?;
            let customer = sub
                .customer
                .as_ref()
                .map(|c| c.id().to_owned())
                .ok_or_else(|| {
                    ProviderError::definitive("no_customer", "the subscription names no customer")
                })?;
            let behavior = match plan.effective {
                Effective::Now => plan.proration,
                Effective::PeriodEnd => Behavior::None,
            };
            let change = api::PriceChange {
                item: &item,
                price: &plan.provider_price,
                quantity: plan.quantity,
                proration: proration(behavior),
                proration_date: Some(at),
            };
            // A preview changes nothing; its key only makes the stack's retries safe.
            let invoice = self
                .client
                .preview_invoice(
                    &customer,
                    subscription,
                    &change,
                    format!("preview-{}", Uuid::now_v7().simple()),
                )
                .await?;
            Ok(objects::preview(&invoice, behavior, proration_time))
        })
    }

    fn fetch<'a>(
        &'a self,
        _account: &'a AccountName,
        kind: ObjectKind,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ProviderObject>, ProviderError>> {
        Box::pin(async move {
            // An id that cannot be Stripe's names nothing Stripe has.
            let Some(id) = segment(id) else {
                return Ok(None);
            };
            match kind {
                ObjectKind::CheckoutSession => {
                    Ok(self.session(id).await?.map(ProviderObject::CheckoutSession))
                }
                ObjectKind::Payment => self.payment(id).await,
                ObjectKind::Subscription => self.subscription(id).await,
                ObjectKind::Refund => self.refund_object(id).await,
                ObjectKind::Dispute => self.dispute(id).await,
                ObjectKind::Customer => Ok(self
                    .client
                    .find::<wire::Customer>(api::retrieve("fetch_customer", "customers", id))
                    .await?
                    .map(|c| ProviderObject::Customer { id: c.id })),
                ObjectKind::Price => Ok(self
                    .client
                    .find::<wire::Price>(api::retrieve("fetch_price", "prices", id))
                    .await?
                    .map(|p| ProviderObject::Price { id: p.id })),
                ObjectKind::Meter => Ok(self
                    .client
                    .find::<wire::Meter>(api::retrieve("fetch_meter", "billing/meters", id))
                    .await?
                    .map(|m| ProviderObject::Meter { id: m.id })),
                ObjectKind::UsageBatch => Ok(None),
            }
        })
    }

    fn fetch_object<'a>(
        &'a self,
        _account: &'a AccountName,
        kind: ObjectKind,
        client_reference: Uuid,
    ) -> BoxFuture<'a, Result<Option<ProviderObject>, ProviderError>> {
        Box::pin(async move {
            match kind {
                ObjectKind::Customer => self.find_customer(client_reference).await,
                ObjectKind::Price => self.find_price(client_reference).await,
                ObjectKind::CheckoutSession => self.find_session(client_reference).await,
                ObjectKind::Refund => self.find_refund(client_reference).await,
                ObjectKind::Payment => self.find_payment(client_reference).await,
                ObjectKind::Subscription => self.find_subscription(client_reference).await,
                ObjectKind::Meter => {
                    let name = meter_event_name(client_reference);
                    Ok(self
                        .scan::<wire::Meter>(api::list_meters, |m| m.event_name == name)
                        .await?
                        .map(|m| ProviderObject::Meter { id: m.id }))
                }
                // Coffer never makes a dispute; a usage batch is never fetched.
                ObjectKind::Dispute | ObjectKind::UsageBatch => Ok(None),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_customer_without_a_payment_method_is_told_apart_from_other_missing_objects() {
        let no_card = ProviderError::definitive(
            "resource_missing",
            "This customer has no attached payment source or default payment method. \
             Please consider adding a default payment method. (request req_1)",
        );
        assert!(no_payment_method(&no_card));
        let no_price = ProviderError::definitive(
            "resource_missing",
            "No such price: 'price_1' (parameter items[0][price]) (request req_2)",
        );
        assert!(!no_payment_method(&no_price));
        let declined = ProviderError::Definitive {
            code: "card_declined".into(),
            message: "Your card was declined.".into(),
            decline_code: Some("generic_decline".into()),
        };
        assert!(!no_payment_method(&declined));
    }
}
