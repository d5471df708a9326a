//! The PayTabs adapter: hosted payment pages, refunds and the transaction query of PayTabs'
//! PT2 API, and its signed callbacks.
//!
//! - [`client`]: the HTTP calls, one account's client; [`wire`]: their JSON; [`error`]: their
//!   errors; [`amount`]: decimal major units to and from minor units, exactly.
//! - [`objects`]: transactions as the port's sessions, payments and refunds (the mapping of
//!   `response_status` is there).
//! - [`webhook`]: callbacks signed with the server key, their id made of the transaction and
//!   its result, and which object each asks the inbox to fetch ([`events`]).
//!
//! # What Coffer asks of PayTabs
//!
//! | Coffer | PayTabs |
//! |---|---|
//! | CreateCheckoutSession (PAYMENT mode) | `POST /payment/request`, `tran_type` `sale`, `tran_class` `ecom`, `cart_id` = the checkout id as the API writes it (`checkout_…`), the total in major units, `return` = the success URL, `hide_shipping`, the session's expiry in `user_defined.udf1`; answered with `redirect_url` and `tran_ref` (the session's and its payment's provider id) |
//! | fetch a session or payment, VerifyCheckoutSession | `POST /payment/query` by `tran_ref` |
//! | RefundPayment | `POST /payment/request`, `tran_type` `refund`, the sale's `tran_ref`, `cart_id` = the refund id (`refund_…`), the amount |
//! | settle an unknown outcome ([`Provider::fetch_object`]) | `POST /payment/query` by `cart_id` (Coffer's id) |
//!
//! Customers, prices, subscriptions and expiring a page are not PayTabs operations (the
//! capability table says so: FAILED_PRECONDITION `PROVIDER_UNSUPPORTED`). Coffer's cancel URL
//! is not sent: PayTabs has one `return` URL, posted to by the browser whatever the result, so
//! the success page must accept a POST and ask Coffer (VerifyCheckoutSession) what happened.
//! No `callback` URL is sent (the adapter does not know Coffer's public sidecar URL): the
//! profile's IPN, set in PayTabs' dashboard to `https://<sidecar>/webhooks/<account>`, carries
//! the results. No `customer_details` are sent either: the port hands a PayTabs checkout no
//! buyer details (PayTabs has no customers), so the page asks the buyer.
//!
//! PayTabs' query says neither a page's URL nor its expiry: a fetched session carries an empty
//! URL (Coffer keeps the one it recorded) and the expiry Coffer sent in `user_defined`. Nor
//! does PayTabs version its transactions: a fetched object's version is the time it was read
//! ([`objects`]).
//!
//! # Events
//!
//! | callback `tran_type` | trigger | Coffer's change |
//! |---|---|---|
//! | `Sale` (any result) | checkout session `tran_ref` | the session, and its payment, as the query says them now (see [`objects`]) |
//! | `Refund` | refund `tran_ref` | the refund as the query says it |
//! | anything else (`Auth`, `Capture`, `Void`, ...) | none | ignored |
//!
//! A callback is never applied as it is: its body says what PayTabs sent once, the query what
//! PayTabs holds now. A callback whose query answers a declined sale is applied as declined,
//! whatever the body claimed.
//!
//! # No idempotency keys, and unknown outcomes
//!
//! Every `payment/request` makes a new page (or refund), and PayTabs has no idempotency keys:
//! the journal's key is not sent, and a request is never sent twice by the outbound stack.
//! A request whose answer was lost (a timeout, a 5xx, a 409 "Duplicate Request") is
//! `Unknown`; the journal settles it with [`Provider::fetch_object`], a query by `cart_id`:
//!
//! - a page found with a result (paid, pending, declined) is that session;
//! - a page found with no result yet is recorded EXPIRED: its URL reached nobody (the answer
//!   carrying it was lost, and the query does not say it), so nobody can pay on it, and Coffer
//!   makes no second page for the same checkout; the caller creates a new checkout session;
//! - nothing found: nothing was made, the journal records the call failed, and the caller's
//!   retry asks again (a new generation). Should PayTabs refuse that as a "Duplicate Request"
//!   (409, code 4), it is `Unknown` again and settled the same way.
//!
//! So a second page for one checkout is asked for only once PayTabs said it has none. A refund
//! found by its `cart_id` is applied as PayTabs has it (never asked for again); none found
//! frees its amount.

pub mod amount;
pub mod client;
pub mod error;
pub mod events;
pub mod objects;
pub mod webhook;
pub mod wire;

use futures_core::future::BoxFuture;
use uuid::Uuid;

pub use webhook::Webhooks;

use self::client::Client;
use self::objects::read_now;
use super::{
    CheckoutRequest, CustomerRequest, ObjectKind, Provider, ProviderCheckout, ProviderError,
    ProviderObject, ProviderRefund, RefundRequest,
};
use crate::domain::account::{Account, AccountName, ProviderKind};
use crate::domain::checkout::{Mode, PaymentStatus, Status};
use crate::domain::payment::RefundStatus;
use crate::providers::outbound::Outbound;

/// One PayTabs account's adapter.
pub struct PayTabs {
    client: Client,
}

impl PayTabs {
    /// The adapter of `account` (a `provider = "paytabs"` account, with its server key and
    /// profile), calling through `outbound`.
    pub fn new(account: &Account, outbound: Outbound) -> Result<Self, String> {
        Ok(Self {
            client: Client::new(account, outbound)?,
        })
    }

    /// Every call names the account it is for; this adapter serves one.
    fn check(&self, account: &AccountName) -> Result<(), ProviderError> {
        if account == self.client.account() {
            Ok(())
        } else {
            Err(ProviderError::definitive(
                "wrong_account",
                format!(
                    "the adapter of account {} was asked to act for {account}",
                    self.client.account()
                ),
            ))
        }
    }

    /// The page's description: its lines, `2 × Tea, 1 × Cake`, cut to PayTabs' length.
    fn description(request: &CheckoutRequest) -> String {
        let lines: Vec<String> = request
            .items
            .iter()
            .map(|i| format!("{} × {}", i.line.quantity, i.line.name))
            .collect();
        wire::truncated(&lines.join(", "), wire::MAX_DESCRIPTION)
    }

    async fn sale(&self, tran_ref: &str) -> Result<wire::Transaction, ProviderError> {
        let t = self.client.query(tran_ref).await?;
        if !t.is(wire::SALE) {
            return Err(ProviderError::definitive(
                "not_a_sale",
                format!("transaction {tran_ref} is not a sale"),
            ));
        }
        Ok(t)
    }
}

fn unsupported(what: &str) -> ProviderError {
    ProviderError::definitive("unsupported", format!("PayTabs has no {what}"))
}

impl Provider for PayTabs {
    fn kind(&self) -> ProviderKind {
        ProviderKind::PayTabs
    }

    fn create_customer<'a>(
        &'a self,
        _account: &'a AccountName,
        _request: CustomerRequest,
    ) -> BoxFuture<'a, Result<String, ProviderError>> {
        Box::pin(async { Err(unsupported("customer objects")) })
    }

    fn create_checkout_session<'a>(
        &'a self,
        account: &'a AccountName,
        request: CheckoutRequest,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>> {
        Box::pin(async move {
            self.check(account)?;
            if request.mode != Mode::Payment {
                return Err(unsupported("subscriptions"));
            }
            if request.amount_total <= 0 {
                return Err(ProviderError::definitive(
                    "amount_required",
                    "PayTabs takes payments of a positive amount only",
                ));
            }
            let body = wire::PageRequest {
                profile_id: self.client.profile_id(),
                tran_type: wire::SALE,
                tran_class: wire::ECOM,
                cart_id: objects::cart_id(ObjectKind::CheckoutSession, request.client_reference),
                cart_currency: request.currency.code(),
                cart_amount: amount::to_major(request.amount_total, request.currency),
                cart_description: Self::description(&request),
                callback: None,
                return_url: &request.success_url,
                // The port hands over no buyer details for PayTabs (it has no customers);
                // the page asks the buyer.
                customer_details: None,
                hide_shipping: true,
                user_defined: objects::user_defined(request.expires_at),
            };
            let page = self.client.create_page(&body).await?;
            Ok(ProviderCheckout {
                id: page.tran_ref,
                client_reference: Some(request.client_reference),
                url: page.redirect_url,
                status: Status::Open,
                payment_status: PaymentStatus::Unpaid,
                expires_at: request.expires_at,
                version: read_now(),
                payment: None,
                subscription: None,
            })
        })
    }

    fn fetch_checkout_session<'a>(
        &'a self,
        account: &'a AccountName,
        id: &'a str,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>> {
        Box::pin(async move {
            self.check(account)?;
            let version = read_now();
            objects::session(&self.sale(id).await?, String::new(), version)
        })
    }

    fn expire_checkout_session<'a>(
        &'a self,
        _account: &'a AccountName,
        _id: &'a str,
        _idempotency_key: String,
    ) -> BoxFuture<'a, Result<ProviderCheckout, ProviderError>> {
        Box::pin(async { Err(unsupported("way to expire a payment page")) })
    }

    fn refund<'a>(
        &'a self,
        account: &'a AccountName,
        request: RefundRequest,
    ) -> BoxFuture<'a, Result<ProviderRefund, ProviderError>> {
        Box::pin(async move {
            self.check(account)?;
            let currency = request.amount.currency();
            let body = wire::RefundRequest {
                profile_id: self.client.profile_id(),
                tran_type: wire::REFUND,
                tran_class: wire::ECOM,
                tran_ref: &request.payment,
                cart_id: objects::cart_id(ObjectKind::Refund, request.client_reference),
                cart_currency: currency.code(),
                cart_amount: amount::to_major(request.amount.amount(), currency),
                cart_description: format!("Refund of {}", request.payment),
            };
            let version = read_now();
            let mut t = self.client.refund(&body).await?;
            // The answer is the refund's transaction; it names its sale, or is taken to.
            t.previous_tran_ref
                .get_or_insert_with(|| request.payment.clone());
            let refund = objects::refund(&t, version)?;
            if refund.status == RefundStatus::Failed {
                let result = t.payment_result.unwrap_or(wire::PaymentResult {
                    response_status: String::new(),
                    response_code: None,
                    response_message: None,
                });
                return Err(ProviderError::definitive(
                    result
                        .response_code
                        .unwrap_or_else(|| "refund_declined".into()),
                    result
                        .response_message
                        .unwrap_or_else(|| "PayTabs declined the refund".into()),
                ));
            }
            Ok(refund)
        })
    }

    fn fetch<'a>(
        &'a self,
        account: &'a AccountName,
        kind: ObjectKind,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ProviderObject>, ProviderError>> {
        Box::pin(async move {
            self.check(account)?;
            let version = read_now();
            Ok(match kind {
                ObjectKind::CheckoutSession => Some(ProviderObject::CheckoutSession(
                    objects::session(&self.sale(id).await?, String::new(), version)?,
                )),
                ObjectKind::Payment => {
                    objects::payment(&self.sale(id).await?, version)?.map(ProviderObject::Payment)
                }
                ObjectKind::Refund => {
                    let t = self.client.query(id).await?;
                    if !t.is(wire::REFUND) {
                        return Err(ProviderError::definitive(
                            "not_a_refund",
                            format!("transaction {id} is not a refund"),
                        ));
                    }
                    Some(ProviderObject::Refund(objects::refund(&t, version)?))
                }
                ObjectKind::Customer
                | ObjectKind::Price
                | ObjectKind::Subscription
                | ObjectKind::Dispute
                | ObjectKind::Meter
                | ObjectKind::UsageBatch => None,
            })
        })
    }

    fn fetch_object<'a>(
        &'a self,
        account: &'a AccountName,
        kind: ObjectKind,
        client_reference: Uuid,
    ) -> BoxFuture<'a, Result<Option<ProviderObject>, ProviderError>> {
        Box::pin(async move {
            self.check(account)?;
            let tran_type = match kind {
                ObjectKind::CheckoutSession | ObjectKind::Payment => wire::SALE,
                ObjectKind::Refund => wire::REFUND,
                ObjectKind::Customer
                | ObjectKind::Price
                | ObjectKind::Subscription
                | ObjectKind::Dispute
                | ObjectKind::Meter
                | ObjectKind::UsageBatch => return Ok(None),
            };
            let cart_id = objects::cart_id(kind, client_reference);
            let version = read_now();
            let found = self.client.query_cart(&cart_id).await?;
            let Some(t) = objects::best(&found, &cart_id, tran_type)? else {
                return Ok(None);
            };
            Ok(match kind {
                ObjectKind::Refund => Some(ProviderObject::Refund(objects::refund(t, version)?)),
                ObjectKind::Payment => objects::payment(t, version)?.map(ProviderObject::Payment),
                _ => {
                    let mut session = objects::session(t, String::new(), version)?;
                    // A page with no result, found only by settling a lost answer: its URL
                    // reached nobody, so nobody can pay on it (see the module docs).
                    if objects::status(t)?.is_none() {
                        session.status = Status::Expired;
                    }
                    Some(ProviderObject::CheckoutSession(session))
                }
            })
        })
    }
}
