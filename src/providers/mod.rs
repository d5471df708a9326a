//! Payment providers: the port, and one adapter per provider — the only place that speaks a
//! provider's wire format.
//!
//! Adapters: [`sandbox`], [`stripe`], [`polar`], [`paytabs`], [`hmac`]. Each owns its signature
//! scheme's choice, its event parsing and its object mapping; adding a provider touches its
//! folder and [`inbound`] (and the registry in `app::providers` for its calls). Adapters import
//! neither `app` nor `grpc`.
//!
//! Inbound, the webhooks, through the [`Inbound`] trait: an adapter verifies a delivery's
//! signature on the raw bytes before anything is parsed (the algorithms are in [`signature`]),
//! then reads what the inbox needs ([`webhook::Incoming`]), and names the provider object a
//! stored event is about ([`object`]), for the inbox workers' per-object lock. Webhooks need no
//! client or credentials beyond the account's secrets, so this side is stateless and exists for
//! every provider kind, including generic HMAC platforms that Coffer never calls.
//!
//! Outbound, the [`Provider`] trait: the operations Coffer asks of a provider, each answering a
//! typed result or a [`ProviderError`] that says whether the call may be made again
//! ([`ProviderError::Retryable`]), will fail the same way again ([`ProviderError::Definitive`]),
//! or may or may not have happened ([`ProviderError::Unknown`], which only fetching the object
//! can settle). [`supports`] is the capability table of every [`ProviderKind`]. Calls are never
//! made directly: `app::journal` writes each one to the operations journal first.
//!
//! Outbound calls are implemented by the [`sandbox`], [`stripe`], [`polar`] and [`paytabs`]
//! adapters; [`adapter`] builds a configured account's, each on its own outbound stack
//! ([`outbound`]).

pub mod hmac;
pub mod object;
pub mod outbound;
pub mod paytabs;
pub mod polar;
pub mod sandbox;
pub mod signature;
pub mod stripe;
pub mod webhook;

use std::time::Duration;

use futures_core::future::BoxFuture;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::account::{Account, AccountName, ProviderKind};
use crate::domain::checkout::{LineItem, Mode, PaymentStatus, Status};
use crate::domain::money::{Currency, Money};

/// An adapter's side of the webhooks: pure functions of the account's configuration and the
/// delivery.
pub trait Inbound: Send + Sync {
    /// Verifies the delivery's signature on the raw bytes under every active secret of
    /// `account` and, only once one matched, reads its event id and type and checks its
    /// livemode. Anything not understood is a rejection (fail closed).
    fn accept(
        &self,
        account: &Account,
        headers: &[signature::Header],
        body: &[u8],
        check: signature::Check,
    ) -> Result<webhook::Incoming, signature::Rejection>;

    /// The provider object a stored (verified) event is about, when the adapter can name one.
    fn object_of(&self, payload: &[u8]) -> Option<object::ProviderObjectRef>;

    /// What a stored event of `event_type` asks the inbox to fetch, for a provider whose events
    /// are triggers rather than the truth (DESIGN §5.3); `None` when the event is applied as it
    /// is (the sandbox's, which carry versioned objects) or not at all (an unknown type).
    fn trigger(&self, _event_type: &str, _payload: &[u8]) -> Option<Trigger> {
        None
    }
}

/// An object an event names, to be fetched from the provider and applied as the provider has
/// it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trigger {
    pub kind: ObjectKind,
    /// The provider's id of the object.
    pub id: String,
}

/// The adapter that reads `kind`'s webhooks: the one place a provider kind picks its webhook
/// code.
pub fn inbound(kind: ProviderKind) -> &'static dyn Inbound {
    match kind {
        ProviderKind::Sandbox => &sandbox::webhook::Webhooks,
        ProviderKind::Stripe => &stripe::Webhooks,
        ProviderKind::Polar => &polar::Webhooks,
        ProviderKind::PayTabs => &paytabs::Webhooks,
        ProviderKind::Hmac => &hmac::Webhooks,
    }
}

/// Why a configured account's adapter could not be built (at start: `serve` refuses to run).
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("account {account}: {source}")]
    Outbound {
        account: AccountName,
        #[source]
        source: outbound::BuildError,
    },
    #[error("account {account}: {message}")]
    Config {
        account: AccountName,
        message: String,
    },
}

/// The outbound adapter of a configured account, with its own client stack (breaker, bulkhead)
/// from `config`: the one place a provider kind picks its calls. `None` for a kind Coffer never
/// calls (generic HMAC platforms only send webhooks), for the sandbox (one instance serves every
/// tenant's sandbox account: `app::providers` holds it), and for a provider whose calls this
/// version does not make yet (its accounts answer `PROVIDER_UNSUPPORTED`).
pub fn adapter(
    account: &Account,
    config: &outbound::OutboundConfig,
) -> Result<Option<std::sync::Arc<dyn Provider>>, AdapterError> {
    // Each adapter that calls its provider gets a stack of its own.
    let stack = || {
        outbound::Outbound::new(
            config.clone(),
            account.provider,
            &account.name,
            outbound::OutboundMetrics::shared().clone(),
        )
        .map_err(|source| AdapterError::Outbound {
            account: account.name.clone(),
            source,
        })
    };
    Ok(match account.provider {
        ProviderKind::Sandbox | ProviderKind::Hmac => None,
        ProviderKind::Stripe => Some(std::sync::Arc::new(stripe::Stripe::new(account, stack()?))),
        ProviderKind::Polar => Some(std::sync::Arc::new(
            polar::Polar::new(account, stack()?).map_err(|message| AdapterError::Config {
                account: account.name.clone(),
                message,
            })?,
        )),
        ProviderKind::PayTabs => Some(std::sync::Arc::new(
            paytabs::PayTabs::new(account, stack()?).map_err(|message| AdapterError::Config {
                account: account.name.clone(),
                message,
            })?,
        )),
    })
}

/// An operation Coffer may ask of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    CreateCustomer,
    /// Mirroring one of Coffer's prices as the provider's own price object, for providers
    /// whose checkouts name prices rather than take amounts inline.
    CreatePrice,
    /// A checkout session of this mode.
    CreateCheckoutSession(Mode),
    FetchCheckoutSession,
    ExpireCheckoutSession,
    Refund,
    /// Finding an object by Coffer's id (the client reference), to resolve unknown outcomes.
    FetchObject,
    /// Cancelling a subscription (now or at its period's end) and undoing a scheduled cancel.
    CancelSubscription,
    /// Pausing and resuming a subscription's collection.
    PauseSubscription,
    /// Mirroring one of Coffer's meters as the provider's meter, for metered prices.
    CreateMeter,
    /// Sending usage to the provider's meters ([`Provider::push_usage`]).
    PushUsage,
    /// Changing a subscription's price or quantity.
    ChangeSubscriptionPlan,
    /// Opening the provider's customer portal for one customer
    /// ([`Provider::create_portal_session`]).
    CreatePortalSession,
    /// Making a subscription without a checkout (CreateSubscription): charged to the
    /// customer's card on file, or on a trial.
    CreateSubscription,
    /// Previewing what a change of price or quantity charges ([`Provider::preview_plan_change`]).
    PreviewPlanChange,
}

impl Operation {
    /// The operation a subscription change is.
    pub fn of_change(change: &crate::domain::subscription::Change) -> Self {
        use crate::domain::subscription::Change;
        match change {
            Change::Cancel { .. } | Change::UndoCancel => Operation::CancelSubscription,
            Change::PauseCollection | Change::ResumeCollection | Change::Resume => {
                Operation::PauseSubscription
            }
            Change::ChangePlan(_) => Operation::ChangeSubscriptionPlan,
        }
    }
}

/// The capability table: whether `kind`'s accounts can do `op`. An operation an account's
/// provider lacks is FAILED_PRECONDITION (`PROVIDER_UNSUPPORTED`) before anything is written.
///
/// | provider | customers | prices | payment checkout | subscription checkout | expire | refund | fetch | cancel sub | pause sub | change plan | preview change | create sub | meters (mirror, push) | portal |
/// |----------|-----------|--------|------------------|-----------------------|--------|--------|-------|------------|-----------|-------------|----------------|------------|-----------------------|--------|
/// | sandbox  | yes       | inline | yes              | yes                   | yes    | yes    | yes   | yes        | yes       | yes         | yes            | yes        | no                    | yes (its own page) |
/// | stripe   | yes       | yes    | yes              | yes                   | yes    | yes    | yes   | yes        | yes       | yes         | yes            | yes        | yes (billing meters)  | yes (billing portal) |
/// | polar    | yes       | yes    | yes              | yes                   | no     | yes    | yes   | yes        | no        | yes         | no             | no         | yes (event ingestion) | yes (customer session) |
/// | paytabs  | no        | inline | yes              | no (no subscriptions) | no     | yes    | yes   | no         | no        | no          | no             | no         | no                    | no     |
/// | hmac     | no        | no     | no               | no                    | no     | no     | no    | no         | no        | no          | no             | no         | no                    | no     |
///
/// Polar checkouts cannot be expired through its API (and sell one product each, so a Polar
/// checkout has one line item); Polar subscriptions have no paused collection and no preview
/// of a change; PayTabs has neither a customer nor a
/// subscription object, so its accounts serve one-time payments and refunds; generic HMAC
/// accounts only send webhooks. "Inline": the provider takes each line's amount in the
/// checkout itself, so Coffer's prices are not mirrored there.
pub fn supports(kind: ProviderKind, op: Operation) -> bool {
    use Operation::*;
    match kind {
        ProviderKind::Sandbox => !matches!(op, CreatePrice | CreateMeter | PushUsage),
        ProviderKind::Stripe => true,
        ProviderKind::Polar => !matches!(
            op,
            ExpireCheckoutSession | PauseSubscription | PreviewPlanChange | CreateSubscription
        ),
        ProviderKind::PayTabs => !matches!(
            op,
            CreateCustomer
                | CreatePrice
                | CreateCheckoutSession(Mode::Subscription)
                | ExpireCheckoutSession
                | CancelSubscription
                | PauseSubscription
                | CreateMeter
                | PushUsage
                | ChangeSubscriptionPlan
                | CreatePortalSession
                | CreateSubscription
                | PreviewPlanChange
        ),
        ProviderKind::Hmac => false,
    }
}

/// Whether `kind`'s meters take only whole numbers (Stripe's meter event values are
/// integers): Coffer then pushes the whole part of a total, and a fraction waits until it adds
/// up to a unit.
pub fn whole_units(kind: ProviderKind) -> bool {
    matches!(kind, ProviderKind::Stripe)
}

/// Runs `futures` concurrently (the caller bounds how many) and answers their outputs in
/// order, without spawning: they borrow the adapter, and every task of Coffer's is owned.
pub async fn join_all<'a, T>(futures: Vec<BoxFuture<'a, T>>) -> Vec<T> {
    let mut pending: Vec<Option<BoxFuture<'a, T>>> = futures.into_iter().map(Some).collect();
    let mut done: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut open = false;
        for (slot, out) in pending.iter_mut().zip(done.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => open = true,
                }
            }
        }
        if open {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// How a provider call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Nothing happened (a refused connection, a 429, a 503 before any work): the same call may
    /// be made again, after `retry_after` when the provider said.
    #[error("provider unavailable: {message}")]
    Retryable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// The provider refused the request; it would refuse it again. `code` is the provider's
    /// (never a secret or card data).
    #[error("provider refused the request: {code}: {message}")]
    Definitive {
        code: String,
        message: String,
        /// The issuer's reason a card was declined (`insufficient_funds`, ...), for card
        /// errors: answered in the error's metadata so a caller can tell its customer why.
        decline_code: Option<String>,
    },
    /// The request may or may not have been applied (a timeout, a 5xx after sending). Only
    /// fetching the object settles it; calling again blindly could do it twice.
    #[error("provider outcome unknown: {message}")]
    Unknown { message: String },
}

impl ProviderError {
    /// A definitive refusal that is not a card decline.
    pub fn definitive(code: impl Into<String>, message: impl Into<String>) -> Self {
        ProviderError::Definitive {
            code: code.into(),
            message: message.into(),
            decline_code: None,
        }
    }
}

/// A customer to create on the provider.
#[derive(Debug, Clone)]
pub struct CustomerRequest {
    /// Coffer's customer id, sent as the provider's client reference.
    pub client_reference: Uuid,
    /// `{operation}-{generation}`, from the journal.
    pub idempotency_key: String,
    /// The caller's own id of the customer (Coffer's `external_id`), when it has one.
    pub external_id: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
}

/// A customer portal to open on the provider for one customer.
#[derive(Debug, Clone)]
pub struct PortalRequest {
    /// Coffer's portal session id, sent as the provider's client reference where it keeps one.
    pub client_reference: Uuid,
    /// Sent with the create where the provider takes one (Stripe).
    pub idempotency_key: String,
    /// The provider's customer (mirrored on first use).
    pub customer: String,
    /// Coffer's id of the customer (Polar finds its customers by it).
    pub coffer_customer: Uuid,
    /// Where the portal's "return" link goes; checked against the tenant's allowed origins.
    pub return_url: String,
    /// When the session ends, on the account's clock, for providers that let Coffer choose
    /// (the sandbox); the others answer their own.
    pub expires_at: OffsetDateTime,
}

/// A portal session as the provider answers it. No `Debug`: the URL is a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderPortal {
    /// Where to send the customer. It is the session's credential: never logged.
    pub url: String,
    pub expires_at: OffsetDateTime,
}

/// One of Coffer's prices, to mirror as the provider's own price object (Stripe's product and
/// price, Polar's product).
#[derive(Debug, Clone)]
pub struct PriceRequest {
    /// Coffer's price id, sent as the provider's client reference (its metadata).
    pub client_reference: Uuid,
    pub idempotency_key: String,
    /// The plan's name, shown on the provider's checkout page.
    pub name: String,
    pub unit: Money,
    pub billing: crate::domain::plan::Billing,
    /// The provider's id of the meter a metered price is billed by (mirrored first,
    /// [`Operation::CreateMeter`]); `None` for a licensed price.
    pub meter: Option<String>,
}

/// How the provider's meter adds up what Coffer pushes to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterFormula {
    /// Each push is an increment (Coffer's SUM and COUNT meters).
    Sum,
    /// The period's value is the newest push: Coffer pushes its own per-period total (MAX,
    /// UNIQUE_COUNT, LATEST), since providers cannot compute those from increments.
    Last,
}

/// One of Coffer's meters, to mirror as the provider's meter.
#[derive(Debug, Clone)]
pub struct MeterRequest {
    /// Coffer's meter id; the provider's event name is [`meter_event_name`] of it.
    pub client_reference: Uuid,
    pub idempotency_key: String,
    /// Shown in the provider's dashboard: the meter's name, or its key.
    pub name: String,
    pub formula: MeterFormula,
}

/// The event name Coffer's meter `meter` has on every provider: derived from its id alone, so
/// an unknown outcome of the meter's creation is settled by finding the name.
pub fn meter_event_name(meter: Uuid) -> String {
    format!("coffer_{}", meter.simple())
}

/// One value pushed to a provider's meter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    /// Deterministic (`{cursor}-{seq}`): sent again unchanged until its answer is recorded, so
    /// the provider de-duplicates a resend (Stripe for about a day, Polar by `external_id`).
    pub identifier: String,
    /// The provider's id of the customer (Stripe's payload names it).
    pub customer: String,
    /// Coffer's id of the customer (Polar's events name it as `external_customer_id`).
    pub customer_reference: Uuid,
    /// [`meter_event_name`] of the meter.
    pub event_name: String,
    /// An exact decimal, never negative.
    pub value: String,
    pub timestamp: OffsetDateTime,
}
/// A line of a checkout as the provider is asked for it.
#[derive(Debug, Clone)]
pub struct CheckoutItem {
    pub line: LineItem,
    /// The provider's id of the line's price, where the line has one of Coffer's prices and
    /// the provider mirrors prices ([`Operation::CreatePrice`]); otherwise the line is sent
    /// inline (name, unit amount, quantity, billing).
    pub provider_price: Option<String>,
    /// The line's price is metered: charged in arrears by usage, so the checkout sends no
    /// quantity for it (Stripe refuses one).
    pub metered: bool,
}

/// A checkout session to create on the provider.
#[derive(Debug, Clone)]
pub struct CheckoutRequest {
    /// Coffer's checkout id, sent as the provider's client reference.
    pub client_reference: Uuid,
    pub idempotency_key: String,
    /// The provider's customer id; `None` where the provider has no customers.
    pub customer: Option<String>,
    pub mode: Mode,
    pub items: Vec<CheckoutItem>,
    pub amount_total: i64,
    pub currency: Currency,
    pub success_url: String,
    pub cancel_url: String,
    pub expires_at: OffsetDateTime,
    pub trial_days: u16,
}

/// A checkout session as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderCheckout {
    pub id: String,
    /// Coffer's checkout id, as the provider echoes it (`client_reference_id`): how a fetched
    /// session is found here, even before the create's own answer was recorded. `None` where
    /// the answer is to a call that named the session already (the sandbox's).
    pub client_reference: Option<Uuid>,
    /// The page the customer pays on; empty when the answer does not say it (PayTabs' query),
    /// and then the URL Coffer recorded is kept.
    pub url: String,
    pub status: Status,
    pub payment_status: PaymentStatus,
    pub expires_at: OffsetDateTime,
    /// Grows with every change; `0` for providers that send none (then the newest fetch wins).
    pub version: i64,
    /// The session's payment as the provider sees it, when the answer carries it (a fetch
    /// does; a create or an event names at most its id).
    pub payment: Option<ProviderPayment>,
    /// The subscription the session made, likewise (boxed: a session is mostly without).
    pub subscription: Option<Box<ProviderSubscription>>,
}

/// Where a payment is on the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// An extra step (3-D Secure) is under way.
    RequiresAction,
    Succeeded,
    /// The last card attempt was declined; another may still succeed.
    Failed,
}

/// A payment as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPayment {
    pub id: String,
    /// Coffer's checkout session id (the session's client reference).
    pub client_reference: Uuid,
    pub amount: i64,
    pub currency: String,
    pub status: PaymentOutcome,
    /// The provider's code of the declined attempt, when failed (never card data).
    pub failure_code: Option<String>,
    /// The card's brand and last four digits, when known.
    pub card: Option<(String, String)>,
    pub amount_refunded: i64,
    /// A subscription's renewal charge: the provider's subscription id and the start of the
    /// period it pays for. `None` for a checkout session's own payment.
    pub renewal: Option<(String, OffsetDateTime)>,
    /// A renewal's period end, where the provider says it.
    pub period_end: Option<OffsetDateTime>,
    /// The subscription the charge pays for, when the provider's object carries both (a
    /// Stripe invoice): applied first, so a charge never waits for its subscription's own
    /// event (boxed: most payments are without).
    pub subscription: Option<Box<ProviderSubscription>>,
    pub version: i64,
}

/// A subscription as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSubscription {
    pub id: String,
    /// Coffer's checkout session id.
    pub client_reference: Uuid,
    pub status: crate::domain::subscription::SubscriptionStatus,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub trial_end: Option<OffsetDateTime>,
    /// A cancel is scheduled for the period's end.
    pub cancel_at_period_end: bool,
    /// Collection is paused (Stripe's `pause_collection`); the status stays.
    pub collection_paused: bool,
    /// When it was canceled, once CANCELED.
    pub canceled_at: Option<OffsetDateTime>,
    /// The reason given with a cancel, as the provider keeps it; empty when none.
    pub cancel_reason: String,
    /// The provider's id of the price the subscription charges (Stripe's item price, Polar's
    /// product), mapped back to Coffer's price through the mirrored prices
    /// (`provider_objects`); `None` where the provider takes amounts inline (the sandbox),
    /// and then Coffer's price stays as Coffer last wrote it.
    pub price: Option<String>,
    /// How many of the price, where the provider says (Polar has no quantity: `None`).
    pub quantity: Option<u32>,
    /// The provider's dunning ended without collecting and left the subscription short of
    /// the tenant's end state: PAST_DUE with no retry left (Stripe's "leave the subscription
    /// past-due"), or UNPAID (Stripe's "mark as unpaid"). Coffer then applies the tenant's
    /// `dunning_end` itself (decision 0034). Always `false` where Coffer's own settings already
    /// end the dunning (the sandbox) or the provider always cancels (Polar).
    pub retries_exhausted: bool,
    pub version: i64,
}

/// A change to make to a provider's subscription (a lifecycle call).
#[derive(Debug, Clone)]
pub struct SubscriptionUpdate {
    /// Coffer's id of this change, sent as the client reference: how an unknown outcome is
    /// settled ([`Provider::fetch_object`] of a subscription finds the one a change was made
    /// to).
    pub client_reference: Uuid,
    pub idempotency_key: String,
    /// The provider's subscription id.
    pub subscription: String,
    pub change: crate::domain::subscription::Change,
}

/// A subscription to make without a checkout (CreateSubscription).
#[derive(Debug, Clone)]
pub struct SubscriptionRequest {
    /// Coffer's subscription id, sent as the client reference (Stripe: metadata).
    pub client_reference: Uuid,
    pub idempotency_key: String,
    /// The provider's customer id; `None` where the provider has no customers.
    pub customer: Option<String>,
    /// The provider's price id, where the provider mirrors prices.
    pub provider_price: Option<String>,
    /// The price's unit amount and its billing (recurring), for providers that take it inline.
    pub unit: Money,
    pub billing: crate::domain::plan::Billing,
    pub quantity: u32,
    /// 0: no trial.
    pub trial_days: u16,
}

/// A subscription the provider made, with its first period's charge when one was made now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSubscription {
    pub subscription: ProviderSubscription,
    pub payment: Option<ProviderPayment>,
}

/// The provider's code for a CreateSubscription it refused because the customer has no
/// payment method on file and no trial was asked (Coffer answers `PAYMENT_METHOD_REQUIRED`).
pub const PAYMENT_METHOD_REQUIRED: &str = "payment_method_required";

/// What a plan change would charge or credit now, as the provider computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanChangePreview {
    /// What is charged at once (0 when nothing is, or the change waits for the period's end).
    pub amount_due: i64,
    pub currency: String,
    /// The proration lines (credit negative), empty when nothing is prorated.
    pub lines: Vec<crate::domain::proration::Line>,
    /// The time the proration was computed at, to send with the change.
    pub proration_time: time::OffsetDateTime,
}

/// A refund to ask for.
#[derive(Debug, Clone)]
pub struct RefundRequest {
    pub client_reference: Uuid,
    pub idempotency_key: String,
    /// The provider's payment id.
    pub payment: String,
    pub amount: Money,
}

/// A refund as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderRefund {
    pub id: String,
    /// The provider's payment id.
    pub payment: String,
    /// Coffer's refund id.
    pub client_reference: Uuid,
    pub amount: i64,
    pub status: crate::domain::payment::RefundStatus,
    pub version: i64,
}

/// The kinds of provider object Coffer maps to its own (`provider_objects.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Customer,
    /// One of Coffer's prices mirrored on the provider.
    Price,
    CheckoutSession,
    Payment,
    Refund,
    Subscription,
    /// A dispute (chargeback) of a payment; only ever fetched, never made by Coffer.
    Dispute,
    /// One of Coffer's meters mirrored on the provider.
    Meter,
    /// A batch of usage pushed to meters; never fetched (the journal's operation kind only).
    UsageBatch,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Customer => "customer",
            ObjectKind::Price => "price",
            ObjectKind::CheckoutSession => "checkout_session",
            ObjectKind::Payment => "payment",
            ObjectKind::Refund => "refund",
            ObjectKind::Subscription => "subscription",
            ObjectKind::Dispute => "dispute",
            ObjectKind::Meter => "meter",
            ObjectKind::UsageBatch => "usage_batch",
        }
    }
}

/// An object found by Coffer's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderObject {
    Customer { id: String },
    Price { id: String },
    Meter { id: String },
    CheckoutSession(ProviderCheckout),
    Payment(ProviderPayment),
    Refund(ProviderRefund),
    Subscription(ProviderSubscription),
    Dispute(ProviderDispute),
}

/// A dispute (chargeback) as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderDispute {
    pub id: String,
    /// Coffer's checkout session id of the disputed payment (its payment's client reference),
    /// or Coffer's subscription id for a charge of a subscription CreateSubscription made.
    pub client_reference: Uuid,
    /// The provider's id of the disputed payment (as recorded on Coffer's payment), which
    /// tells a subscription's charges apart; empty where the provider names none.
    pub payment: String,
    pub amount: i64,
    pub currency: String,
    pub status: crate::domain::payment::DisputeStatus,
    /// The provider's reason code (`fraudulent`, ...), when it gives one.
    pub reason: Option<String>,
    pub version: i64,
}

/// A payment provider's API, as Coffer uses it. Every method takes the account it acts for (one
/// instance may serve many accounts: the sandbox serves every tenant's). Dyn-compatible, so the
/// registry holds `Arc<dyn Provider>`.
pub trait Provider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    fn create_customer<'a>(
        &'a self,
        account: &'a AccountName,
        request: CustomerRequest,
    ) -> BoxFuture<'a, Result<String, ProviderError>>;

    fn create_checkout_session<'a>(
        &'a self,
        account: &'a AccountName,
        request: CheckoutRequest,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>>;

    /// Mirrors one of Coffer's prices; only asked of providers that support
    /// [`Operation::CreatePrice`].
    fn create_price<'a>(
        &'a self,
        _account: &'a AccountName,
        _request: PriceRequest,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async {
            Err(ProviderError::definitive(
                "unsupported",
                "this provider takes prices inline",
            ))
        })
    }

    /// Mirrors one of Coffer's meters; only asked of providers that support
    /// [`Operation::CreateMeter`].
    fn create_meter<'a>(
        &'a self,
        _account: &'a AccountName,
        _request: MeterRequest,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async { Err(ProviderError::definitive("unsupported", "no meters")) })
    }

    /// Sends `events` to the provider's meters, within its rate limits. The outer error is the
    /// whole batch's (nothing of it is known to have arrived); otherwise one result per event,
    /// in order. Only asked of providers that support [`Operation::PushUsage`].
    fn push_usage<'a>(
        &'a self,
        _account: &'a AccountName,
        _events: &'a [UsageEvent],
    ) -> BoxFuture<'a, Result<Vec<Result<(), ProviderError>>, ProviderError>> {
        Box::pin(async { Err(ProviderError::definitive("unsupported", "no meters")) })
    }

    fn fetch_checkout_session<'a>(
        &'a self,
        account: &'a AccountName,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>>;

    /// Expires an open session; a session that is not open is a definitive failure
    /// (`session_not_open`).
    fn expire_checkout_session<'a>(
        &'a self,
        account: &'a AccountName,
        id: &'a str,
        idempotency_key: String,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>>;

    fn refund<'a>(
        &'a self,
        account: &'a AccountName,
        request: RefundRequest,
    ) -> BoxFuture<'a, Result<ProviderRefund, ProviderError>>;

    /// The current state of the provider's object `id` of `kind`, `None` if the provider has
    /// no such object: what the inbox applies for an event that is a trigger.
    fn fetch<'a>(
        &'a self,
        account: &'a AccountName,
        kind: ObjectKind,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ProviderObject>, ProviderError>>;

    /// Makes `request.change` to a subscription and answers its state after; only asked of
    /// providers that support the change's [`Operation::of_change`]. A repeated request (the
    /// same client reference) answers the subscription as it is, without changing it again.
    fn update_subscription<'a>(
        &'a self,
        _account: &'a AccountName,
        _request: SubscriptionUpdate,
    ) -> BoxFuture<'a, Result<ProviderSubscription, ProviderError>> {
        Box::pin(async {
            Err(ProviderError::definitive(
                "unsupported",
                "this provider's subscriptions cannot be changed through Coffer",
            ))
        })
    }

    /// Makes a subscription for a customer without a checkout: on a trial, or charging the
    /// first period to the customer's card on file now; only asked of providers that support
    /// [`Operation::CreateSubscription`]. No card and no trial is a definitive
    /// [`PAYMENT_METHOD_REQUIRED`]. A repeated request (the same client reference) answers the
    /// subscription made, without making another.
    fn create_subscription<'a>(
        &'a self,
        _account: &'a AccountName,
        _request: SubscriptionRequest,
    ) -> BoxFuture<'a, Result<CreatedSubscription, ProviderError>> {
        Box::pin(async {
            Err(ProviderError::definitive(
                "unsupported",
                "this provider's subscriptions cannot be made through Coffer",
            ))
        })
    }

    /// What `change` would charge now on the subscription `subscription`, changing nothing;
    /// only asked of providers that support [`Operation::PreviewPlanChange`].
    fn preview_plan_change<'a>(
        &'a self,
        _account: &'a AccountName,
        _subscription: &'a str,
        _change: &'a crate::domain::subscription::PlanChange,
    ) -> BoxFuture<'a, Result<PlanChangePreview, ProviderError>> {
        Box::pin(async {
            Err(ProviderError::definitive(
                "unsupported",
                "this provider's plan changes cannot be previewed through Coffer",
            ))
        })
    }

    /// Opens the provider's customer portal for `request.customer`; only asked of providers
    /// that support [`Operation::CreatePortalSession`]. A portal session is a short-lived
    /// link, not an object with a state: a lost answer is settled by opening another.
    fn create_portal_session<'a>(
        &'a self,
        _account: &'a AccountName,
        _request: PortalRequest,
    ) -> BoxFuture<'a, Result<ProviderPortal, ProviderError>> {
        Box::pin(async {
            Err(ProviderError::definitive(
                "unsupported",
                "this provider has no customer portal",
            ))
        })
    }

    /// The object of `kind` that Coffer created with `client_reference`, if the provider has
    /// one: how an unknown outcome is settled. For a subscription, the reference may also be a
    /// change's ([`SubscriptionUpdate::client_reference`]): the subscription it was made to.
    fn fetch_object<'a>(
        &'a self,
        account: &'a AccountName,
        kind: ObjectKind,
        client_reference: Uuid,
    ) -> BoxFuture<'a, Result<Option<ProviderObject>, ProviderError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_table() {
        use Operation::*;
        assert!(supports(
            ProviderKind::Sandbox,
            CreateCheckoutSession(Mode::Subscription)
        ));
        assert!(!supports(
            ProviderKind::PayTabs,
            CreateCheckoutSession(Mode::Subscription)
        ));
        assert!(supports(
            ProviderKind::PayTabs,
            CreateCheckoutSession(Mode::Payment)
        ));
        assert!(supports(ProviderKind::PayTabs, Refund));
        assert!(!supports(ProviderKind::PayTabs, CreateCustomer));
        assert!(!supports(ProviderKind::Polar, ExpireCheckoutSession));
        assert!(!supports(ProviderKind::Hmac, FetchObject));
        assert!(supports(ProviderKind::Sandbox, CancelSubscription));
        assert!(supports(ProviderKind::Sandbox, PauseSubscription));
        assert!(!supports(ProviderKind::PayTabs, CancelSubscription));
        assert!(supports(ProviderKind::Stripe, PauseSubscription));
        assert!(supports(ProviderKind::Sandbox, ChangeSubscriptionPlan));
        assert!(supports(ProviderKind::Stripe, ChangeSubscriptionPlan));
        assert!(supports(ProviderKind::Stripe, PreviewPlanChange));
        assert!(supports(ProviderKind::Polar, CancelSubscription));
        assert!(supports(ProviderKind::Polar, ChangeSubscriptionPlan));
        assert!(!supports(ProviderKind::Polar, PauseSubscription));
        assert!(!supports(ProviderKind::Polar, PreviewPlanChange));
        assert!(!supports(ProviderKind::PayTabs, ChangeSubscriptionPlan));
        assert!(supports(ProviderKind::Sandbox, CreatePortalSession));
        assert!(supports(ProviderKind::Stripe, CreatePortalSession));
        assert!(supports(ProviderKind::Polar, CreatePortalSession));
        assert!(!supports(ProviderKind::PayTabs, CreatePortalSession));
        assert!(!supports(ProviderKind::Hmac, CreatePortalSession));
        assert!(supports(ProviderKind::Sandbox, CreateSubscription));
        assert!(supports(ProviderKind::Stripe, CreateSubscription));
        assert!(!supports(ProviderKind::Polar, CreateSubscription));
        assert!(!supports(ProviderKind::PayTabs, CreateSubscription));
        assert!(!supports(ProviderKind::PayTabs, PreviewPlanChange));
        assert!(supports(ProviderKind::Sandbox, PreviewPlanChange));
    }
}
