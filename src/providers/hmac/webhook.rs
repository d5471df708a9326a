//! A generic HMAC platform's deliveries, verified under the account's configured scheme
//! ([`Scheme::Hmac`]); an account without its scheme verifies nothing. Platforms name their ids
//! differently, so:
//!
//! - the id is `sha256:` and the hex SHA-256 of the raw body: a byte-identical redelivery is a
//!   duplicate;
//! - the type is the payload's top-level `type` (or `event`) string when it has one, else
//!   `unknown`; a top-level boolean `livemode`, when present, must equal the account's;
//! - no object is named (payloads are shaped differently), so such events are not serialised
//!   per object.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::account::Account;
use crate::providers::Inbound;
use crate::providers::object::ProviderObjectRef;
use crate::providers::signature::{self, Check, Header, Rejection, Scheme};
use crate::providers::webhook::{Incoming, text};

/// Generic HMAC deliveries; stateless (the scheme is the account's).
#[derive(Debug, Clone, Copy)]
pub struct Webhooks;

impl Inbound for Webhooks {
    fn accept(
        &self,
        account: &Account,
        headers: &[Header],
        body: &[u8],
        check: Check,
    ) -> Result<Incoming, Rejection> {
        // An hmac account without its scheme cannot verify anything: refused, never waved on.
        let scheme = account.hmac.as_ref().ok_or(Rejection::Mismatch)?;
        signature::verify(
            Scheme::Hmac(scheme),
            &account.webhook_secrets,
            headers,
            body,
            check,
        )?;
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let named = json
            .as_ref()
            .and_then(|j| j.get("type").or_else(|| j.get("event")))
            .and_then(|t| text(Some(t)).ok());
        if let Some(Value::Bool(l)) = json.as_ref().and_then(|j| j.get("livemode"))
            && *l != account.livemode
        {
            return Err(Rejection::Livemode);
        }
        Ok(Incoming {
            provider_event_id: format!("sha256:{}", signature::encode_hex(&Sha256::digest(body))),
            event_type: named.unwrap_or_else(|| "unknown".to_owned()),
        })
    }

    fn object_of(&self, _payload: &[u8]) -> Option<ProviderObjectRef> {
        None
    }
}
