//! The sandbox's own deliveries as Coffer receives them: Standard Webhooks keyed with the
//! decoded `whsec_` secret ([`Scheme::StandardWebhooks`]), read as every Standard Webhooks
//! event is ([`webhook::standard_event`]).

use crate::domain::account::Account;
use crate::providers::Inbound;
use crate::providers::object::ProviderObjectRef;
use crate::providers::signature::{self, Check, Header, Rejection, Scheme};
use crate::providers::webhook::{self, Incoming};

/// The sandbox's webhooks; stateless.
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
            Scheme::StandardWebhooks,
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
}
