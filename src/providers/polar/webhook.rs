//! Polar's webhooks: Standard Webhooks headers and message, with the MAC keyed as Polar's SDKs
//! key it — the secret string's own bytes, and (polar-sdk 1.x) also the base64-decoded key —
//! ([`Scheme::Polar`]). The event is read as every Standard Webhooks event is
//! ([`webhook::standard_event`]). Every event is a trigger: [`super::events`] says which object
//! the inbox fetches for it.

use crate::domain::account::Account;
use crate::providers::object::ProviderObjectRef;
use crate::providers::signature::{self, Check, Header, Rejection, Scheme};
use crate::providers::webhook::{self, Incoming};
use crate::providers::{Inbound, Trigger};

/// Polar's webhooks; stateless.
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
        let verified = signature::verify(
            Scheme::Polar,
            &account.webhook_secrets,
            headers,
            body,
            check,
        )?;
        webhook::standard_event(&verified, body, account.livemode)
    }

    fn object_of(&self, payload: &[u8]) -> Option<ProviderObjectRef> {
        ProviderObjectRef::find(payload, webhook::STANDARD_OBJECT_PATHS)
    }

    fn trigger(&self, event_type: &str, payload: &[u8]) -> Option<Trigger> {
        super::events::trigger(event_type, payload)
    }
}
