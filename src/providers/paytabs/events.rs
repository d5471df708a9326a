//! Which object a stored PayTabs callback asks the inbox to fetch ([`Inbound::trigger`]).
//!
//! The event's type is its `tran_type` in lower case (`webhook`): a `sale` names a checkout
//! session and its payment by `tran_ref` (one PayTabs transaction is both), a `refund` names a
//! refund by its own `tran_ref`. Anything else (`auth`, `capture`, `void`, a type PayTabs adds
//! later) is nothing Coffer made, and is ignored.
//!
//! [`Inbound::trigger`]: crate::providers::Inbound::trigger

use crate::providers::{ObjectKind, Trigger};

/// The object a verified callback of `event_type` names; `None` for a type Coffer ignores or a
/// payload without a `tran_ref`.
pub fn trigger(event_type: &str, payload: &[u8]) -> Option<Trigger> {
    let kind = match event_type {
        "sale" => ObjectKind::CheckoutSession,
        "refund" => ObjectKind::Refund,
        _ => return None,
    };
    let id = crate::providers::object::ProviderObjectRef::find(payload, &[&["tran_ref"]])?;
    Some(Trigger {
        kind,
        id: id.as_str().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sales_and_refunds_are_triggers() {
        let body = br#"{"tran_ref":"TST2233","tran_type":"Sale","cart_id":"c"}"#;
        assert_eq!(
            trigger("sale", body),
            Some(Trigger {
                kind: ObjectKind::CheckoutSession,
                id: "TST2233".into()
            })
        );
        let body = br#"{"tran_ref":"TST9","tran_type":"Refund","previous_tran_ref":"TST2233"}"#;
        assert_eq!(
            trigger("refund", body),
            Some(Trigger {
                kind: ObjectKind::Refund,
                id: "TST9".into()
            })
        );
        for (event_type, body) in [
            ("auth", &br#"{"tran_ref":"T"}"#[..]),
            ("void", br#"{"tran_ref":"T"}"#),
            ("transaction", br#"{"tran_ref":"T"}"#),
            ("sale", br#"{"tran_ref":""}"#),
            ("sale", b"not json"),
        ] {
            assert_eq!(trigger(event_type, body), None, "{event_type}");
        }
    }
}
