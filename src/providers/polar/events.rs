//! Polar's webhook events as triggers ([`Inbound::trigger`](crate::providers::Inbound)): which
//! object the inbox fetches for each event type. The event's own copy of the object is only
//! read for its id, its Coffer reference and (orders) what the order is for; what is applied
//! is always the object as a fresh fetch has it.
//!
//! | event type | trigger | why |
//! |---|---|---|
//! | `checkout.created`, `checkout.updated`, `checkout.expired` | checkout session `data.id` | |
//! | `order.created`, `order.updated`, `order.paid`, `order.refunded` of a checkout's first charge | payment `data.id` | |
//! | the same, of a renewal, an update or a zero (trial) order | subscription `data.subscription_id` | its period or status moved |
//! | `subscription.created`, `.active`, `.updated`, `.canceled`, `.uncanceled`, `.revoked`, `.past_due`, `.cycled`, `.paused`, `.resumed` | subscription `data.id` | |
//! | `refund.created`, `refund.updated` | refund `data.id` | |
//! | anything else | none (the inbox marks it ignored) | |
//!
//! An object Coffer did not make — one without Coffer's id in its metadata
//! (`coffer_checkout_id`; `coffer_refund_id` for refunds), such as a checkout link's or a
//! refund made in Polar's dashboard — names nothing to fetch: there is no Coffer row for it to
//! change.

use serde_json::Value;

use super::wire::{CHECKOUT_KEY, REFUND_KEY};
use crate::providers::{ObjectKind, Trigger};

/// The subscription event types Coffer follows.
pub const SUBSCRIPTION_EVENTS: &[&str] = &[
    "subscription.created",
    "subscription.active",
    "subscription.updated",
    "subscription.canceled",
    "subscription.uncanceled",
    "subscription.revoked",
    "subscription.past_due",
    "subscription.cycled",
    "subscription.paused",
    "subscription.resumed",
];

/// The object a Polar event of `event_type` with `payload` (verified) asks the inbox to fetch.
pub fn trigger(event_type: &str, payload: &[u8]) -> Option<Trigger> {
    let json: Value = serde_json::from_slice(payload).ok()?;
    let data = json.get("data")?;
    let text = |key: &str| {
        data.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let carries = |key: &str| {
        data.get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .is_some()
    };
    let of = |kind, id: &str| {
        Some(Trigger {
            kind,
            id: id.to_owned(),
        })
    };
    let id = text("id")?;
    match event_type {
        "checkout.created" | "checkout.updated" | "checkout.expired" if carries(CHECKOUT_KEY) => {
            of(ObjectKind::CheckoutSession, id)
        }
        "order.created" | "order.updated" | "order.paid" | "order.refunded"
            if carries(CHECKOUT_KEY) =>
        {
            let first_charge = matches!(
                text("billing_reason"),
                Some("purchase" | "subscription_create")
            ) && data.get("net_amount").and_then(Value::as_i64) > Some(0);
            if first_charge {
                of(ObjectKind::Payment, id)
            } else {
                of(ObjectKind::Subscription, text("subscription_id")?)
            }
        }
        t if SUBSCRIPTION_EVENTS.contains(&t) && carries(CHECKOUT_KEY) => {
            of(ObjectKind::Subscription, id)
        }
        "refund.created" | "refund.updated" if carries(REFUND_KEY) => of(ObjectKind::Refund, id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF: &str = r#""metadata":{"coffer_checkout_id":"0193c7a4-7e2b-7cc0-8000-000000000001"}"#;

    fn t(event_type: &str, data: &str) -> Option<(ObjectKind, String)> {
        let body = format!(
            r#"{{"type":"{event_type}","timestamp":"2026-01-01T00:00:00Z","data":{data}}}"#
        );
        trigger(event_type, body.as_bytes()).map(|t| (t.kind, t.id))
    }

    #[test]
    fn each_event_names_its_object() {
        let checkout = format!(r#"{{"id":"co_1",{REF}}}"#);
        for e in ["checkout.created", "checkout.updated", "checkout.expired"] {
            assert_eq!(
                t(e, &checkout),
                Some((ObjectKind::CheckoutSession, "co_1".into()))
            );
        }
        let paid = format!(
            r#"{{"id":"ord_1","billing_reason":"purchase","net_amount":900,"subscription_id":null,{REF}}}"#
        );
        for e in [
            "order.created",
            "order.updated",
            "order.paid",
            "order.refunded",
        ] {
            assert_eq!(t(e, &paid), Some((ObjectKind::Payment, "ord_1".into())));
        }
        let first = format!(
            r#"{{"id":"ord_2","billing_reason":"subscription_create","net_amount":900,"subscription_id":"sub_1",{REF}}}"#
        );
        assert_eq!(
            t("order.paid", &first),
            Some((ObjectKind::Payment, "ord_2".into()))
        );
        for (reason, net) in [
            ("subscription_cycle", 900),
            ("subscription_update", 50),
            ("subscription_create", 0),
        ] {
            let order = format!(
                r#"{{"id":"ord_3","billing_reason":"{reason}","net_amount":{net},"subscription_id":"sub_1",{REF}}}"#
            );
            assert_eq!(
                t("order.paid", &order),
                Some((ObjectKind::Subscription, "sub_1".into())),
                "{reason}"
            );
        }
        let sub = format!(r#"{{"id":"sub_1",{REF}}}"#);
        for e in SUBSCRIPTION_EVENTS {
            assert_eq!(t(e, &sub), Some((ObjectKind::Subscription, "sub_1".into())));
        }
        let refund = r#"{"id":"re_1","metadata":{"coffer_refund_id":"0193c7a4-7e2b-7cc0-8000-000000000002"}}"#;
        for e in ["refund.created", "refund.updated"] {
            assert_eq!(t(e, refund), Some((ObjectKind::Refund, "re_1".into())));
        }
    }

    #[test]
    fn unknown_types_and_objects_coffer_did_not_make_name_nothing() {
        let with_ref = format!(r#"{{"id":"x_1",{REF}}}"#);
        for e in [
            "customer.created",
            "benefit_grant.created",
            "product.updated",
            "other",
        ] {
            assert_eq!(t(e, &with_ref), None, "{e}");
        }
        for (e, data) in [
            ("checkout.updated", r#"{"id":"co_1","metadata":{}}"#),
            (
                "order.paid",
                r#"{"id":"ord_1","billing_reason":"purchase","net_amount":5}"#,
            ),
            (
                "subscription.active",
                r#"{"id":"sub_1","metadata":{"x":"y"}}"#,
            ),
            (
                "refund.created",
                r#"{"id":"re_1","metadata":{"coffer_checkout_id":"x"}}"#,
            ),
            (
                "checkout.updated",
                r#"{"metadata":{"coffer_checkout_id":"x"}}"#,
            ),
        ] {
            assert_eq!(t(e, data), None, "{e} {data}");
        }
        assert_eq!(trigger("checkout.updated", b"not json"), None);
    }
}
