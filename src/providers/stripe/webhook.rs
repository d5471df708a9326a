//! Stripe's webhooks: `Stripe-Signature` verified as Stripe's SDKs do
//! ([`Scheme::Stripe`]), then the event read from the verified body:
//!
//! - the id is the event's `id` (`evt_…`), the type its `type`;
//! - `livemode` must be present and equal the account's;
//! - the object an event is about is `data.object.id`;
//! - what the inbox fetches for it is [`super::events`]' answer.

use serde_json::Value;

use crate::domain::account::Account;
use crate::providers::object::ProviderObjectRef;
use crate::providers::signature::{self, Check, Header, Rejection, Scheme};
use crate::providers::webhook::{Incoming, json_object, text};
use crate::providers::{Inbound, Trigger};

/// Stripe's webhooks; stateless.
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
        signature::verify(
            Scheme::Stripe,
            &account.webhook_secrets,
            headers,
            body,
            check,
        )?;
        let json = json_object(body)?;
        match json.get("livemode") {
            Some(Value::Bool(l)) if *l == account.livemode => {}
            Some(Value::Bool(_)) => return Err(Rejection::Livemode),
            _ => return Err(Rejection::Unparseable),
        }
        Ok(Incoming {
            provider_event_id: text(json.get("id"))?,
            event_type: text(json.get("type"))?,
        })
    }

    fn object_of(&self, payload: &[u8]) -> Option<ProviderObjectRef> {
        ProviderObjectRef::find(payload, &[&["data", "object", "id"]])
    }

    fn trigger(&self, event_type: &str, payload: &[u8]) -> Option<Trigger> {
        super::events::trigger(event_type, payload)
    }
}
