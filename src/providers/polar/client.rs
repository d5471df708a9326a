//! One Polar account's HTTP requests, all through its outbound stack
//! ([`crate::providers::outbound`]): `Authorization: Bearer <organization access token>`, JSON
//! both ways, paths exactly as Polar's API has them (collections end in `/`; Polar redirects
//! the other spelling, and redirects are not followed).
//!
//! Every request pins Polar's API version ([`API_VERSION`], the `Polar-Version` header), so the
//! shapes Coffer reads do not move when Polar's default version does.
//!
//! Writes are sent without an `Idempotency-Key` unless the caller passes one: Polar has no
//! idempotency keys, and a key is what makes the stack send a write again after a timeout or a
//! 5xx. Only writes that are idempotent by nature (setting a field, revoking) pass one; a
//! create is sent once and an ambiguous outcome is `Unknown`, which the journal settles by
//! finding the object by Coffer's reference (see the adapter's documentation).

use http::Method;
use http::header::{ACCEPT, AUTHORIZATION, HeaderName};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{missing_object, refusal, unreadable};
use crate::domain::account::{Account, AccountName, Secret};
use crate::providers::ProviderError;
use crate::providers::outbound::{Outbound, OutboundBody, OutboundRequest, OutboundResponse};

/// Polar's production API; its sandbox is `https://sandbox-api.polar.sh`.
pub const DEFAULT_API_BASE: &str = "https://api.polar.sh";

/// The API version Coffer speaks (`docs/openapi/2026-04.openapi.json` in polarsource/polar).
/// A version Polar no longer serves answers every request 404 without an error name, which
/// is read as a configuration error, never as a missing object.
pub const API_VERSION: &str = "2026-04";

const POLAR_VERSION: HeaderName = HeaderName::from_static("polar-version");

/// A path under `/v1`, as segments; a last empty segment is the trailing `/` of a collection
/// (`&["checkouts", ""]` is `/v1/checkouts/`). Segments are percent-encoded.
pub type Path<'a> = &'a [&'a str];

/// One account's requests.
pub struct Client {
    outbound: Outbound,
    base: reqwest::Url,
    token: Secret,
    account: AccountName,
}

impl Client {
    /// The client of `account`, which must have its access token (`api_key_env`); its
    /// `api_base` (already checked https, or http on loopback) or Polar's production API.
    pub fn new(account: &Account, outbound: Outbound) -> Result<Self, String> {
        let token = account.api_key.clone().ok_or_else(|| {
            "a Polar account needs api_key_env: the organization access token".to_owned()
        })?;
        let base = account.api_base.as_deref().unwrap_or(DEFAULT_API_BASE);
        let base = reqwest::Url::parse(base.trim_end_matches('/'))
            .map_err(|e| format!("api_base does not parse: {e}"))?;
        if base.cannot_be_a_base() {
            return Err("api_base is not a base URL".into());
        }
        Ok(Self {
            outbound,
            base,
            token,
            account: account.name.clone(),
        })
    }

    pub fn account(&self) -> &AccountName {
        &self.account
    }

    /// The absolute URL of `/v1/{path}` with `query`.
    pub fn url(&self, path: Path<'_>, query: &[(&str, &str)]) -> String {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push("v1").extend(path);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url.into()
    }

    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        url: String,
        body: Option<Vec<u8>>,
        idempotency_key: Option<String>,
    ) -> Result<OutboundResponse, ProviderError> {
        self.outbound
            .send(OutboundRequest {
                operation,
                method,
                url,
                headers: vec![
                    (AUTHORIZATION, format!("Bearer {}", self.token.expose())),
                    (ACCEPT, "application/json".to_owned()),
                    (POLAR_VERSION, API_VERSION.to_owned()),
                ],
                body: body.map(OutboundBody::Json),
                idempotency_key,
            })
            .await
    }

    /// A GET: the object, `None` when Polar says it has no such object (a 404 naming
    /// `ResourceNotFound`; a 404 of a path or version Polar does not serve is an error).
    pub async fn get<T: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: Path<'_>,
        query: &[(&str, &str)],
    ) -> Result<Option<T>, ProviderError> {
        let response = self
            .send(operation, Method::GET, self.url(path, query), None, None)
            .await?;
        if missing_object(&response) {
            return Ok(None);
        }
        if !response.status.is_success() {
            return Err(refusal(&self.account, operation, &response));
        }
        serde_json::from_slice(&response.body)
            .map(Some)
            .map_err(|e| unreadable(true, operation, &e))
    }

    /// A write with a JSON `body` (or none): the object Polar answers with. `idempotency_key`
    /// only for writes that are idempotent by nature (the module's documentation).
    pub async fn write<T: DeserializeOwned, B: Serialize>(
        &self,
        operation: &'static str,
        method: Method,
        path: Path<'_>,
        body: Option<&B>,
        idempotency_key: Option<String>,
    ) -> Result<T, ProviderError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ProviderError::definitive("unencodable_request", e.to_string()))?;
        let response = self
            .send(
                operation,
                method,
                self.url(path, &[]),
                body,
                idempotency_key,
            )
            .await?;
        if !response.status.is_success() {
            return Err(refusal(&self.account, operation, &response));
        }
        serde_json::from_slice(&response.body).map_err(|e| unreadable(false, operation, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::ProviderKind;
    use crate::domain::ids::TenantId;
    use crate::providers::outbound::{OutboundConfig, OutboundMetrics};

    fn client(api_base: Option<&str>) -> Client {
        let account = Account {
            name: AccountName::parse("polar-main").unwrap(),
            tenant: TenantId::generate(),
            provider: ProviderKind::Polar,
            api_key: Some(Secret::new("polar_oat_x")),
            webhook_secrets: vec![Secret::new("whsec")],
            api_base: api_base.map(str::to_owned),
            livemode: false,
            hmac: None,
            paytabs: None,
            webhook_sources: None,
        };
        let outbound = Outbound::new(
            OutboundConfig::default(),
            ProviderKind::Polar,
            &account.name,
            OutboundMetrics::default(),
        )
        .unwrap();
        Client::new(&account, outbound).unwrap()
    }

    #[test]
    fn urls_are_polar_s_paths() {
        let c = client(None);
        assert_eq!(
            c.url(&["checkouts", ""], &[]),
            "https://api.polar.sh/v1/checkouts/"
        );
        assert_eq!(
            c.url(&["checkouts", "b2c1"], &[]),
            "https://api.polar.sh/v1/checkouts/b2c1"
        );
        assert_eq!(
            c.url(
                &["products", ""],
                &[("metadata[coffer_price_id]", "0193"), ("limit", "1")]
            ),
            "https://api.polar.sh/v1/products/?metadata%5Bcoffer_price_id%5D=0193&limit=1"
        );
        // An id from a webhook stays one segment.
        assert_eq!(
            c.url(&["orders", "a/../b?c"], &[]),
            "https://api.polar.sh/v1/orders/a%2F..%2Fb%3Fc"
        );
        let sandbox = client(Some("https://sandbox-api.polar.sh/"));
        assert_eq!(
            sandbox.url(&["refunds", ""], &[]),
            "https://sandbox-api.polar.sh/v1/refunds/"
        );
    }
}
