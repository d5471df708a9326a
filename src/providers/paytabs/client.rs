//! A small typed client of PayTabs' PT2 API for one account: `POST {base}/payment/request`
//! (a hosted payment page, a refund) and `POST {base}/payment/query`, JSON, with the server
//! key in the `authorization` header and the profile id in every body.
//!
//! `{base}` is the account's region's host ([`base_url`]) unless coffer.toml's `api_base`
//! overrides it (tests point it at a local fake). Every request goes through the account's
//! [`Outbound`] stack.
//!
//! **No idempotency keys.** PayTabs has none: every `payment/request` makes a new page or a
//! new refund. So the adapter sends no `Idempotency-Key` (the stack would otherwise send a
//! write again after a timeout or a 5xx, which here would make a second page or refund), and a
//! write whose answer was lost ends `Unknown`, settled by the journal with a query by
//! `cart_id`, never by sending it again.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{self, Call};
use super::wire::{
    PageAnswer, PageRequest, QueryRequest, RefundRequest, Transaction, Transactions,
};
use crate::domain::account::{Account, AccountName, PayTabsRegion, Secret};
use crate::providers::ProviderError;
use crate::providers::outbound::{Outbound, OutboundBody, OutboundRequest};

/// The API host of each region, as PayTabs documents them.
pub fn base_url(region: PayTabsRegion) -> &'static str {
    match region {
        PayTabsRegion::Are => "https://secure.paytabs.com",
        PayTabsRegion::Sau => "https://secure.paytabs.sa",
        PayTabsRegion::Omn => "https://secure-oman.paytabs.com",
        PayTabsRegion::Jor => "https://secure-jordan.paytabs.com",
        PayTabsRegion::Egy => "https://secure-egypt.paytabs.com",
        PayTabsRegion::Kwt => "https://secure-kuwait.paytabs.com",
        PayTabsRegion::Irq => "https://secure-iraq.paytabs.com",
        PayTabsRegion::Mar => "https://secure-morocco.paytabs.com",
        PayTabsRegion::Qat => "https://secure-doha.paytabs.com",
        PayTabsRegion::Global => "https://secure-global.paytabs.com",
    }
}

/// One PayTabs account's client.
pub struct Client {
    outbound: Outbound,
    account: AccountName,
    server_key: Secret,
    profile_id: u64,
    base: String,
}

impl Client {
    /// The client of a `provider = "paytabs"` account, which settings guarantee has a server
    /// key and a profile; `Err` says which is missing.
    pub fn new(account: &Account, outbound: Outbound) -> Result<Self, String> {
        let server_key = account
            .api_key
            .clone()
            .ok_or("a PayTabs account needs its server key (api_key_env)")?;
        let profile = account
            .paytabs
            .ok_or("a PayTabs account needs its profile_id and region")?;
        let base = account
            .api_base
            .clone()
            .unwrap_or_else(|| base_url(profile.region).to_owned());
        Ok(Self {
            outbound,
            account: account.name.clone(),
            server_key,
            profile_id: profile.profile_id,
            base,
        })
    }

    pub fn account(&self) -> &AccountName {
        &self.account
    }

    pub fn profile_id(&self) -> u64 {
        self.profile_id
    }

    /// Asks for a hosted payment page.
    pub async fn create_page(&self, body: &PageRequest<'_>) -> Result<PageAnswer, ProviderError> {
        self.post(
            "create_checkout_session",
            "payment/request",
            Call::Write,
            body,
        )
        .await
    }

    /// Refunds (part of) a sale; the answer is the refund's own transaction.
    pub async fn refund(&self, body: &RefundRequest<'_>) -> Result<Transaction, ProviderError> {
        self.post("refund", "payment/request", Call::Write, body)
            .await
    }

    /// The transaction `tran_ref` as PayTabs has it now.
    pub async fn query(&self, tran_ref: &str) -> Result<Transaction, ProviderError> {
        let body = QueryRequest {
            profile_id: self.profile_id,
            tran_ref: Some(tran_ref),
            cart_id: None,
        };
        self.post("query_transaction", "payment/query", Call::Read, &body)
            .await
    }

    /// Every transaction made with `cart_id` (Coffer's id of a checkout or a refund).
    pub async fn query_cart(&self, cart_id: &str) -> Result<Vec<Transaction>, ProviderError> {
        let body = QueryRequest {
            profile_id: self.profile_id,
            tran_ref: None,
            cart_id: Some(cart_id),
        };
        let found: Transactions = self
            .post("query_cart", "payment/query", Call::Read, &body)
            .await?;
        Ok(found.into_vec())
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        kind: Call,
        body: &B,
    ) -> Result<T, ProviderError> {
        let json = serde_json::to_vec(body).map_err(|e| {
            ProviderError::definitive("invalid_request", format!("cannot encode: {e}"))
        })?;
        let request = OutboundRequest {
            operation,
            method: http::Method::POST,
            url: format!("{}/{path}", self.base),
            headers: vec![(
                http::header::AUTHORIZATION,
                self.server_key.expose().to_owned(),
            )],
            body: Some(OutboundBody::Json(json)),
            // PayTabs has no idempotency keys; see the module docs.
            idempotency_key: None,
        };
        let response = self
            .outbound
            .send(request)
            .await
            .map_err(|e| error::sent(kind, e))?;
        let bytes = error::answer(&self.account, kind, response)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            // serde's message may quote a value of the answer; only its place is kept.
            let message = format!(
                "PayTabs' answer to {operation} is not what its API documents (line {}, column {})",
                e.line(),
                e.column()
            );
            match kind {
                // The page or refund may have been made all the same.
                Call::Write => ProviderError::Unknown { message },
                Call::Read => ProviderError::definitive("unreadable_answer", message),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_has_an_https_host() {
        for region in PayTabsRegion::ALL {
            let url = base_url(region);
            assert!(url.starts_with("https://secure"), "{url}");
            assert!(!url.ends_with('/'), "{url}");
        }
        assert_eq!(base_url(PayTabsRegion::Sau), "https://secure.paytabs.sa");
    }
}
