//! PayTabs' callbacks: a `signature` header, the hex HMAC-SHA256 of the raw body keyed with the
//! server key ([`Scheme::PayTabs`]). They carry no event id and no timestamp, so:
//!
//! - the id is `tran_ref` and the result status (`payment_result.response_status`),
//!   `{tran_ref}:{status}`: the same transaction moving to another status is another event;
//! - the type is `tran_type` in lower case (`sale`, `refund`), or `transaction` when absent;
//! - the object an event is about is `tran_ref`.
//!
//! No staleness check is possible; the inbox's de-duplication, and the transaction query made
//! before a result is applied, are the defence against replays: a callback only names the
//! transaction to query ([`super::events`]).

use crate::domain::account::Account;
use crate::providers::object::ProviderObjectRef;
use crate::providers::signature::{self, Check, Header, Rejection, Scheme};
use crate::providers::webhook::{Incoming, checked, json_object, text};
use crate::providers::{Inbound, Trigger};

/// PayTabs' callbacks; stateless.
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
            Scheme::PayTabs,
            &account.webhook_secrets,
            headers,
            body,
            check,
        )?;
        let json = json_object(body)?;
        let tran_ref = text(json.get("tran_ref"))?;
        let status = text(
            json.get("payment_result")
                .and_then(|r| r.get("response_status")),
        )?;
        let event_type = match json.get("tran_type") {
            None => "transaction".to_owned(),
            t => text(t)?.to_ascii_lowercase(),
        };
        Ok(Incoming {
            provider_event_id: checked(&format!("{tran_ref}:{status}"))?,
            event_type,
        })
    }

    fn object_of(&self, payload: &[u8]) -> Option<ProviderObjectRef> {
        ProviderObjectRef::find(payload, &[&["tran_ref"]])
    }

    /// Every callback is a trigger: see [`super::events`].
    fn trigger(&self, event_type: &str, payload: &[u8]) -> Option<Trigger> {
        super::events::trigger(event_type, payload)
    }
}
