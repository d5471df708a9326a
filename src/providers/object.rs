//! Which provider object a stored event is about, read from its payload by the event's
//! adapter ([`Inbound::object_of`]): what the inbox workers serialise on (one
//! `pg_advisory_xact_lock` per account and object).
//!
//! The payload was verified and parsed once at ingestion, so a payload that is not JSON, or
//! has no such id, is not an error here: the event is simply about no known object.

use serde_json::Value;

use super::inbound;
use super::webhook::MAX_ID_LEN;
use crate::domain::account::ProviderKind;

/// The provider's id of the object an event is about (`cs_test_…`, `tran_ref`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProviderObjectRef(String);

impl ProviderObjectRef {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first of `paths` (each a list of keys from the top) that leads to a non-empty
    /// string id of at most [`MAX_ID_LEN`] bytes in `payload`.
    pub fn find(payload: &[u8], paths: &[&[&str]]) -> Option<Self> {
        let json: Value = serde_json::from_slice(payload).ok()?;
        paths.iter().find_map(|keys| {
            let id = keys.iter().try_fold(&json, |v, k| v.get(k))?.as_str()?;
            (!id.is_empty() && id.len() <= MAX_ID_LEN).then(|| ProviderObjectRef(id.to_owned()))
        })
    }
}

/// The object `payload` (a stored event of `provider`) is about, when its adapter names one.
pub fn object_of(provider: ProviderKind, payload: &[u8]) -> Option<ProviderObjectRef> {
    inbound(provider).object_of(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(provider: ProviderKind, body: &str) -> Option<String> {
        object_of(provider, body.as_bytes()).map(|o| o.0)
    }

    #[test]
    fn each_scheme_names_its_object() {
        let nested = r#"{"type":"checkout.completed","data":{"object":{"id":"cs_1"},"id":"x"}}"#;
        assert_eq!(of(ProviderKind::Sandbox, nested).as_deref(), Some("cs_1"));
        assert_eq!(of(ProviderKind::Stripe, nested).as_deref(), Some("cs_1"));
        let flat = r#"{"type":"order.paid","data":{"id":"ord_1"}}"#;
        assert_eq!(of(ProviderKind::Polar, flat).as_deref(), Some("ord_1"));
        assert_eq!(of(ProviderKind::Sandbox, flat).as_deref(), Some("ord_1"));
        assert_eq!(
            of(ProviderKind::Stripe, flat),
            None,
            "Stripe has data.object"
        );
        assert_eq!(
            of(
                ProviderKind::PayTabs,
                r#"{"tran_ref":"TST123","tran_type":"Sale"}"#
            )
            .as_deref(),
            Some("TST123")
        );
        assert_eq!(of(ProviderKind::Hmac, nested), None);
    }

    #[test]
    fn no_object_is_not_an_error() {
        for body in [
            "",
            "[]",
            "not json",
            r#"{"data":{"id":7}}"#,
            r#"{"data":{"id":""}}"#,
        ] {
            assert_eq!(of(ProviderKind::Sandbox, body), None, "{body}");
        }
    }
}
