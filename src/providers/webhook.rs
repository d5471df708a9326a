//! A delivery, from raw bytes to what the inbox stores. Each adapter owns its scheme and its
//! reading of events ([`Inbound`], in `stripe/`, `polar/`, `paytabs/`, `hmac/`, `sandbox/`):
//! it verifies the signature first and only then reads the provider's event id and type and
//! checks livemode (a verified payload whose id or type cannot be read is `unparseable`). This
//! module holds what they share: the shape of the answer, the
//! Standard Webhooks reading (the sandbox and Polar both send Standard Webhooks) and the
//! checks every id and type passes.
//!
//! Where each scheme's event id comes from (the inbox is unique per account and this id) is
//! written in each adapter's `webhook` module.

use serde_json::Value;

use super::inbound;
use super::signature::{Check, Header, Rejection, Verified};
use crate::domain::account::Account;

/// The longest provider event id and type the inbox keeps; longer is `unparseable`.
pub const MAX_ID_LEN: usize = 255;

/// Where a Standard Webhooks event names its object: `data.object.id`, else `data.id`.
pub const STANDARD_OBJECT_PATHS: &[&[&str]] = &[&["data", "object", "id"], &["data", "id"]];

/// What the inbox needs of a verified delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub provider_event_id: String,
    pub event_type: String,
}

/// Verifies a delivery for `account` with its provider's adapter and reads its event. Nothing
/// of the body is parsed before the signature has matched.
pub fn accept(
    account: &Account,
    headers: &[Header],
    body: &[u8],
    check: Check,
) -> Result<Incoming, Rejection> {
    inbound(account.provider).accept(account, headers, body, check)
}

/// A Standard Webhooks event (sandbox, Polar): the id is the signed `webhook-id` header, which
/// stays the same across redeliveries of one message; the type is the payload's `type`; a
/// top-level boolean `livemode`, when the payload has one, must equal the account's.
pub fn standard_event(
    verified: &Verified,
    body: &[u8],
    livemode: bool,
) -> Result<Incoming, Rejection> {
    let json = json_object(body)?;
    if let Some(Value::Bool(l)) = json.get("livemode")
        && *l != livemode
    {
        return Err(Rejection::Livemode);
    }
    let id = verified
        .webhook_id
        .as_deref()
        .ok_or(Rejection::Unparseable)?;
    Ok(Incoming {
        provider_event_id: checked(id)?,
        event_type: text(json.get("type"))?,
    })
}

/// A verified body as a JSON object.
pub fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, Rejection> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(Rejection::Unparseable),
    }
}

/// A JSON string fit to be an id or a type.
pub fn text(v: Option<&Value>) -> Result<String, Rejection> {
    match v {
        Some(Value::String(s)) => checked(s),
        _ => Err(Rejection::Unparseable),
    }
}

/// 1-255 printable ASCII characters: ids and types are keys and labels, not prose.
pub fn checked(s: &str) -> Result<String, Rejection> {
    if s.is_empty() || s.len() > MAX_ID_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Rejection::Unparseable);
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::{
        AccountName, HmacEncoding, HmacMessage, HmacScheme, ProviderKind, Secret,
    };
    use crate::domain::ids::TenantId;
    use crate::providers::signature::{DEFAULT_TOLERANCE_SECS, sign};

    const NOW: i64 = 1_767_225_630;
    const CHECK: Check = Check {
        now: NOW,
        tolerance_secs: DEFAULT_TOLERANCE_SECS,
    };
    const WHSEC: &str = "whsec_CIDVmpcN1wy5sTTCIMm7V5T3QOHMbcGZgb+aVYruOUo=";

    fn account(provider: ProviderKind, secret: &str) -> Account {
        Account {
            name: AccountName::parse("main").unwrap(),
            tenant: TenantId::generate(),
            provider,
            api_key: None,
            webhook_secrets: vec![Secret::new(secret)],
            api_base: None,
            livemode: false,
            hmac: (provider == ProviderKind::Hmac).then(|| HmacScheme {
                signature_header: "x-signature".into(),
                timestamp_header: None,
                message: HmacMessage::Body,
                encoding: HmacEncoding::Hex,
                prefix: None,
            }),
            paytabs: None,
            webhook_sources: None,
        }
    }

    fn stripe(body: &str) -> Result<Incoming, Rejection> {
        let a = account(ProviderKind::Stripe, "whsec_x");
        let h = [Header::new(
            "stripe-signature",
            sign::stripe("whsec_x", NOW, body.as_bytes()),
        )];
        accept(&a, &h, body.as_bytes(), CHECK)
    }

    #[test]
    fn stripe_events() {
        assert_eq!(
            stripe(r#"{"id":"evt_1","type":"invoice.paid","livemode":false}"#),
            Ok(Incoming {
                provider_event_id: "evt_1".into(),
                event_type: "invoice.paid".into()
            })
        );
        assert_eq!(
            stripe(r#"{"id":"evt_1","type":"invoice.paid","livemode":true}"#),
            Err(Rejection::Livemode)
        );
        for body in [
            r#"{"id":"evt_1","type":"invoice.paid"}"#,
            r#"{"type":"invoice.paid","livemode":false}"#,
            r#"{"id":"","type":"invoice.paid","livemode":false}"#,
            r#"{"id":"evt 1","type":"invoice.paid","livemode":false}"#,
            r#"[1]"#,
            "not json",
        ] {
            assert_eq!(stripe(body), Err(Rejection::Unparseable), "{body}");
        }
    }

    #[test]
    fn a_forged_body_is_never_parsed() {
        // Not JSON, but refused for its signature before anyone looks.
        let a = account(ProviderKind::Stripe, "whsec_x");
        let h = [Header::new(
            "stripe-signature",
            sign::stripe("whsec_other", NOW, b"x"),
        )];
        assert_eq!(accept(&a, &h, b"x", CHECK), Err(Rejection::Mismatch));
    }

    #[test]
    fn standard_webhooks_use_the_signed_id() {
        let a = account(ProviderKind::Sandbox, WHSEC);
        let body = br#"{"type":"checkout.completed","livemode":false}"#;
        let h = sign::standard(WHSEC, "msg_9", NOW, body);
        assert_eq!(
            accept(&a, &h, body, CHECK),
            Ok(Incoming {
                provider_event_id: "msg_9".into(),
                event_type: "checkout.completed".into()
            })
        );
        let live = br#"{"type":"checkout.completed","livemode":true}"#;
        let h = sign::standard(WHSEC, "msg_9", NOW, live);
        assert_eq!(accept(&a, &h, live, CHECK), Err(Rejection::Livemode));
    }

    #[test]
    fn paytabs_ids_are_the_transaction_and_its_status() {
        let a = account(ProviderKind::PayTabs, "server-key");
        let body = br#"{"tran_ref":"TST2233","tran_type":"Sale","payment_result":{"response_status":"A"}}"#;
        let h = [Header::new("signature", sign::body_hex("server-key", body))];
        assert_eq!(
            accept(&a, &h, body, CHECK),
            Ok(Incoming {
                provider_event_id: "TST2233:A".into(),
                event_type: "sale".into()
            })
        );
    }

    #[test]
    fn generic_hmac_ids_are_the_body_digest() {
        let a = account(ProviderKind::Hmac, "shh");
        let body = b"plain text body";
        let h = [Header::new("x-signature", sign::body_hex("shh", body))];
        let got = accept(&a, &h, body, CHECK).unwrap();
        assert!(got.provider_event_id.starts_with("sha256:"));
        assert_eq!(got.provider_event_id.len(), 7 + 64);
        assert_eq!(got.event_type, "unknown");
        let json = br#"{"event":"order.created"}"#;
        let h = [Header::new("x-signature", sign::body_hex("shh", json))];
        assert_eq!(
            accept(&a, &h, json, CHECK).unwrap().event_type,
            "order.created"
        );
        // Without its scheme an hmac account verifies nothing.
        let mut bare = a.clone();
        bare.hmac = None;
        assert_eq!(accept(&bare, &h, json, CHECK), Err(Rejection::Mismatch));
    }
}
