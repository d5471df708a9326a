//! A small typed client of the Stripe endpoints Coffer uses ([`super::api`]), sending every
//! request through the account's outbound stack (`providers::outbound`: timeouts, retries,
//! breaker, bulkhead, metrics, spans).
//!
//! Every request carries `Authorization: Bearer <secret key>` and `Stripe-Version:`
//! [`API_VERSION`], so the shapes of answers do not move when the account's default version
//! does; every write carries the journal's idempotency key. A typed client of these few
//! endpoints was chosen over the `async-stripe` crate, whose generated types take minutes to
//! compile on the 2-core machines Coffer is built on.

use http::HeaderName;
use http::header::AUTHORIZATION;
use serde::de::DeserializeOwned;

use super::api::{self, Call, PauseBehavior, PriceChange};
use super::error;
use super::form::with_query;
use super::wire;
use crate::domain::account::{Account, AccountName, Secret};
use crate::providers::ProviderError;
use crate::providers::outbound::{Outbound, OutboundBody, OutboundRequest};
use uuid::Uuid;

/// The API version every request pins. Webhook endpoints should be created with the same
/// version (docs/providers/stripe.md), since event payloads follow the endpoint's.
pub const API_VERSION: &str = "2026-08-26.dahlia";

/// Where Stripe's API is, unless the account says otherwise (`api_base`).
pub const DEFAULT_API_BASE: &str = "https://api.stripe.com";

const STRIPE_VERSION: HeaderName = HeaderName::from_static("stripe-version");

/// One account's client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    outbound: Outbound,
    base: String,
    key: Option<Secret>,
    account: AccountName,
}

impl Client {
    /// The client of `account`, sending through `outbound`. An account without an API key
    /// (only possible for accounts built in code, coffer.toml requires one) sends nothing:
    /// every call is a configuration error.
    pub fn new(account: &Account, outbound: Outbound) -> Self {
        Self {
            outbound,
            base: account
                .api_base
                .as_deref()
                .unwrap_or(DEFAULT_API_BASE)
                .trim_end_matches('/')
                .to_owned(),
            key: account.api_key.clone(),
            account: account.name.clone(),
        }
    }

    pub fn account(&self) -> &AccountName {
        &self.account
    }

    /// Sends `call` (with `idempotency_key` when it is a write) and reads its answer as `T`.
    pub async fn send<T: DeserializeOwned>(
        &self,
        call: Call,
        idempotency_key: Option<String>,
    ) -> Result<T, ProviderError> {
        let (operation, write) = (call.operation, call.is_write());
        let response = self.exchange(call, idempotency_key).await?;
        if !response.status.is_success() {
            return Err(error::from_response(&self.account, operation, &response));
        }
        serde_json::from_slice(&response.body).map_err(|e| error::unreadable(operation, write, e))
    }

    /// A read whose object may not exist: Stripe's 404 is `None`.
    pub async fn find<T: DeserializeOwned>(&self, call: Call) -> Result<Option<T>, ProviderError> {
        let operation = call.operation;
        let response = self.exchange(call, None).await?;
        if response.status == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status.is_success() {
            return Err(error::from_response(&self.account, operation, &response));
        }
        serde_json::from_slice(&response.body)
            .map(Some)
            .map_err(|e| error::unreadable(operation, false, e))
    }

    async fn exchange(
        &self,
        call: Call,
        idempotency_key: Option<String>,
    ) -> Result<crate::providers::outbound::OutboundResponse, ProviderError> {
        let Some(key) = &self.key else {
            tracing::error!(
                account = self.account.as_str(),
                operation = call.operation,
                "the Stripe account has no API key: a configuration error"
            );
            return Err(ProviderError::Retryable {
                message: format!("the Stripe account {} has no API key", self.account),
                retry_after: None,
            });
        };
        let url = format!("{}{}", self.base, call.path);
        let write = call.method == http::Method::POST;
        let idempotency_key = if call.is_write() {
            idempotency_key
        } else {
            None
        };
        let (url, body) = if write {
            (url, Some(OutboundBody::Form(call.form.encode())))
        } else {
            (with_query(&url, &call.form), None)
        };
        self.outbound
            .send(OutboundRequest {
                operation: call.operation,
                method: call.method,
                url,
                headers: vec![
                    (AUTHORIZATION, format!("Bearer {}", key.expose())),
                    (STRIPE_VERSION, API_VERSION.to_owned()),
                ],
                body,
                idempotency_key,
            })
            .await
    }

    // -----------------------------------------------------------------------------------
    // Subscription changes (the lifecycle RPCs, through `Provider::update_subscription`).

    /// Cancels now.
    pub async fn cancel_subscription(
        &self,
        id: &str,
        invoice_now: bool,
        prorate: bool,
        idempotency_key: String,
    ) -> Result<wire::Subscription, ProviderError> {
        self.send(
            api::cancel_subscription(id, invoice_now, prorate),
            Some(idempotency_key),
        )
        .await
    }

    /// Cancels at the end of the current period, or takes that back.
    pub async fn cancel_at_period_end(
        &self,
        id: &str,
        at_period_end: bool,
        idempotency_key: String,
    ) -> Result<wire::Subscription, ProviderError> {
        self.send(
            api::cancel_at_period_end(id, at_period_end),
            Some(idempotency_key),
        )
        .await
    }

    /// Moves the subscription's item to another price now.
    pub async fn update_subscription_price(
        &self,
        id: &str,
        change: &PriceChange<'_>,
        change_id: Uuid,
        idempotency_key: String,
    ) -> Result<wire::Subscription, ProviderError> {
        self.send(
            api::update_subscription_price(id, change, change_id),
            Some(idempotency_key),
        )
        .await
    }

    pub async fn pause_collection(
        &self,
        id: &str,
        behavior: PauseBehavior,
        resumes_at: Option<i64>,
        idempotency_key: String,
    ) -> Result<wire::Subscription, ProviderError> {
        self.send(
            api::pause_collection(id, behavior, resumes_at),
            Some(idempotency_key),
        )
        .await
    }

    pub async fn unpause_collection(
        &self,
        id: &str,
        idempotency_key: String,
    ) -> Result<wire::Subscription, ProviderError> {
        self.send(api::unpause_collection(id), Some(idempotency_key))
            .await
    }

    /// Resumes a paused subscription.
    pub async fn resume_subscription(
        &self,
        id: &str,
        reset_billing_cycle: bool,
        idempotency_key: String,
    ) -> Result<wire::Subscription, ProviderError> {
        self.send(
            api::resume_subscription(id, reset_billing_cycle),
            Some(idempotency_key),
        )
        .await
    }

    /// The invoice a change of price would make; changes nothing (a POST all the same, so
    /// it carries a key).
    pub async fn preview_invoice(
        &self,
        customer: &str,
        subscription: &str,
        change: &PriceChange<'_>,
        idempotency_key: String,
    ) -> Result<wire::InvoicePreview, ProviderError> {
        self.send(
            api::preview_invoice(customer, subscription, change),
            Some(idempotency_key),
        )
        .await
    }
}
