//! Payment providers: the only place that speaks a provider's wire format.
//!
//! Inbound, the webhooks: [`signature`] verifies a delivery's signature under each provider's
//! scheme on the raw bytes, before anything is parsed; [`webhook`] then reads what the inbox
//! needs from a verified delivery; [`object`] reads which provider object a stored event is
//! about, for the inbox workers' per-object lock.
//!
//! Outbound, the [`Provider`] trait: the operations Coffer asks of a provider, each answering a
//! typed result or a [`ProviderError`] that says whether the call may be made again
//! ([`ProviderError::Retryable`]), will fail the same way again ([`ProviderError::Definitive`]),
//! or may or may not have happened ([`ProviderError::Unknown`], which only fetching the object
//! can settle). [`supports`] is the capability table of every [`ProviderKind`]. Calls are never
//! made directly: `app::journal` writes each one to the operations journal first.
//!
//! Only the [`sandbox`] is implemented here; Stripe, Polar and PayTabs plug into the same trait
//! (their rows of the capability table already say what they will do).

pub mod object;
pub mod outbound;
pub mod sandbox;
pub mod signature;
pub mod webhook;

use std::time::Duration;

use futures_core::future::BoxFuture;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::account::{AccountName, ProviderKind};
use crate::domain::checkout::{LineItem, Mode, PaymentStatus, Status};
use crate::domain::money::{Currency, Money};

/// An operation Coffer may ask of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    CreateCustomer,
    /// A checkout session of this mode.
    CreateCheckoutSession(Mode),
    FetchCheckoutSession,
    ExpireCheckoutSession,
    Refund,
    /// Finding an object by Coffer's id (the client reference), to resolve unknown outcomes.
    FetchObject,
}

/// The capability table: whether `kind`'s accounts can do `op`. An operation an account's
/// provider lacks is FAILED_PRECONDITION (`PROVIDER_UNSUPPORTED`) before anything is written.
///
/// | provider | customers | payment checkout | subscription checkout | expire | refund | fetch |
/// |----------|-----------|------------------|-----------------------|--------|--------|-------|
/// | sandbox  | yes       | yes              | yes                   | yes    | yes    | yes   |
/// | stripe   | yes       | yes              | yes                   | yes    | yes    | yes   |
/// | polar    | yes       | yes              | yes                   | no     | yes    | yes   |
/// | paytabs  | no        | yes              | no (no subscriptions) | no     | yes    | yes   |
/// | hmac     | no        | no               | no                    | no     | no     | no    |
///
/// Polar checkouts cannot be expired through its API; PayTabs has neither a customer nor a
/// subscription object, so its accounts serve one-time payments and refunds; generic HMAC
/// accounts only send webhooks.
pub fn supports(kind: ProviderKind, op: Operation) -> bool {
    use Operation::*;
    match kind {
        ProviderKind::Sandbox | ProviderKind::Stripe => true,
        ProviderKind::Polar => !matches!(op, ExpireCheckoutSession),
        ProviderKind::PayTabs => !matches!(
            op,
            CreateCustomer | CreateCheckoutSession(Mode::Subscription) | ExpireCheckoutSession
        ),
        ProviderKind::Hmac => false,
    }
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
    Definitive { code: String, message: String },
    /// The request may or may not have been applied (a timeout, a 5xx after sending). Only
    /// fetching the object settles it; calling again blindly could do it twice.
    #[error("provider outcome unknown: {message}")]
    Unknown { message: String },
}

/// A customer to create on the provider.
#[derive(Debug, Clone)]
pub struct CustomerRequest {
    /// Coffer's customer id, sent as the provider's client reference.
    pub client_reference: Uuid,
    /// `{operation}-{generation}`, from the journal.
    pub idempotency_key: String,
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
    pub items: Vec<LineItem>,
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
    pub url: String,
    pub status: Status,
    pub payment_status: PaymentStatus,
    pub expires_at: OffsetDateTime,
    /// Grows with every change; `0` for providers that send none (then the newest fetch wins).
    pub version: i64,
    /// The session's payment as the provider sees it, when the answer carries it (a fetch
    /// does; a create or an event names at most its id).
    pub payment: Option<ProviderPayment>,
    /// The subscription the session made, likewise.
    pub subscription: Option<ProviderSubscription>,
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
    pub version: i64,
}

/// A subscription as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSubscription {
    pub id: String,
    /// Coffer's checkout session id.
    pub client_reference: Uuid,
    pub status: crate::domain::payment::SubscriptionStatus,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub trial_end: Option<OffsetDateTime>,
    pub version: i64,
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
    CheckoutSession,
    Payment,
    Refund,
    Subscription,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Customer => "customer",
            ObjectKind::CheckoutSession => "checkout_session",
            ObjectKind::Payment => "payment",
            ObjectKind::Refund => "refund",
            ObjectKind::Subscription => "subscription",
        }
    }
}

/// An object found by Coffer's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderObject {
    Customer { id: String },
    CheckoutSession(ProviderCheckout),
    Payment(ProviderPayment),
    Refund(ProviderRefund),
    Subscription(ProviderSubscription),
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

    /// The object of `kind` that Coffer created with `client_reference`, if the provider has
    /// one: how an unknown outcome is settled.
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
    }
}
