//! Stripe's events as triggers (DESIGN §5.3): an event names the object to fetch, and the
//! inbox applies the object as Stripe has it when it is fetched. A payload is never applied
//! as it is: events arrive late, twice and out of order, and their shape follows the webhook
//! endpoint's API version.
//!
//! | event types | fetched | id from the payload |
//! |---|---|---|
//! | `checkout.session.completed`, `.expired`, `.async_payment_succeeded`, `.async_payment_failed` | checkout session | `data.object.id` |
//! | `customer.subscription.created`, `.updated`, `.deleted`, `.paused`, `.resumed`, `.trial_will_end` | subscription | `data.object.id` |
//! | `invoice.paid`, `.payment_succeeded`, `.payment_failed` | the invoice's payment (with its subscription) | `data.object.id` (an `in_…` id) |
//! | `payment_intent.succeeded`, `.payment_failed` | payment | `data.object.id` |
//! | `charge.refunded` | payment | `data.object.payment_intent` |
//! | `refund.updated`, `refund.failed` | refund | `data.object.id` |
//! | `charge.dispute.created`, `.updated`, `.closed` | dispute | `data.object.id` |
//!
//! An invoice's events fetch the invoice as a payment: its payment intent, and the
//! subscription it pays for (the adapter reads all three), so a subscription's every paid
//! invoice — its first, each renewal — is one of Coffer's payments and moves the subscription
//! in the same transaction; an invoice that charged nothing (a trial's) moves only the
//! subscription. Whether the invoice is Coffer's is read from its subscription's metadata,
//! which the invoice copies (`parent.subscription_details.metadata`; before
//! 2025-03-31.basil `subscription_details.metadata`).
//!
//! `charge.refunded` fetches the charge's payment intent, not its refunds: a charge lists
//! none unless expanded, and a refund Coffer asked for is already recorded from the refund
//! call's answer; the refund's own later moves (a pending refund that succeeds or fails) come
//! as `refund.updated` / `refund.failed`, which fetch the refund.
//!
//! Objects Coffer did not make are ignored (`None`), read from the payload's markers, which
//! never change once set: a session without Coffer's `client_reference_id` (a payment link's,
//! say), a payment intent without `coffer_checkout_id` in its metadata, a subscription or
//! invoice without `coffer_checkout_id` or `coffer_subscription_id` (CreateSubscription's) in
//! its (or its subscription's) metadata, a refund without `coffer_refund_id`. Disputes and charges carry
//! no marker of their own; they are fetched, and found by their payment intent.

use serde_json::Value;

use super::api::{CHECKOUT_KEY, REFUND_KEY, SUBSCRIPTION_KEY};
use crate::providers::{ObjectKind, Trigger};

/// What a stored event of `event_type` asks the inbox to fetch; `None` for a type Coffer
/// does not subscribe to or an object Coffer did not make.
pub fn trigger(event_type: &str, payload: &[u8]) -> Option<Trigger> {
    let json: Value = serde_json::from_slice(payload).ok()?;
    let object = json.get("data")?.get("object")?;
    let id = || text(object.get("id"));
    let marked =
        |metadata: Option<&Value>, key: &str| text(metadata.and_then(|m| m.get(key))).is_some();
    // A subscription a session made, or one CreateSubscription made.
    let subscription_marked = |metadata: Option<&Value>| {
        marked(metadata, CHECKOUT_KEY) || marked(metadata, SUBSCRIPTION_KEY)
    };
    let (kind, id) = match event_type {
        "checkout.session.completed"
        | "checkout.session.expired"
        | "checkout.session.async_payment_succeeded"
        | "checkout.session.async_payment_failed" => {
            let ours = text(object.get("client_reference_id")).is_some()
                || marked(object.get("metadata"), CHECKOUT_KEY);
            (ObjectKind::CheckoutSession, id().filter(|_| ours)?)
        }
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
        | "customer.subscription.paused"
        | "customer.subscription.resumed"
        | "customer.subscription.trial_will_end" => {
            let ours = subscription_marked(object.get("metadata"));
            (ObjectKind::Subscription, id().filter(|_| ours)?)
        }
        "invoice.paid" | "invoice.payment_succeeded" | "invoice.payment_failed" => {
            let details = object
                .get("parent")
                .and_then(|p| p.get("subscription_details"));
            // The old shape: `subscription` and `subscription_details.metadata` at the top.
            let old = object.get("subscription_details");
            let ours = subscription_marked(details.and_then(|d| d.get("metadata")))
                || subscription_marked(old.and_then(|d| d.get("metadata")));
            let subscription = expandable_id(details.and_then(|d| d.get("subscription")))
                .or_else(|| expandable_id(object.get("subscription")));
            // The invoice itself, fetched as its payment (the adapter reads its subscription
            // too); an invoice of no subscription is not Coffer's.
            subscription.filter(|_| ours)?;
            (ObjectKind::Payment, id()?)
        }
        "payment_intent.succeeded" | "payment_intent.payment_failed" => {
            let ours = marked(object.get("metadata"), CHECKOUT_KEY);
            (ObjectKind::Payment, id().filter(|_| ours)?)
        }
        "charge.refunded" => (
            ObjectKind::Payment,
            expandable_id(object.get("payment_intent"))?,
        ),
        "refund.updated" | "refund.failed" => {
            let ours = marked(object.get("metadata"), REFUND_KEY);
            (ObjectKind::Refund, id().filter(|_| ours)?)
        }
        "charge.dispute.created" | "charge.dispute.updated" | "charge.dispute.closed" => {
            (ObjectKind::Dispute, id()?)
        }
        _ => return None,
    };
    Some(Trigger {
        kind,
        id: id.to_owned(),
    })
}

fn text(v: Option<&Value>) -> Option<&str> {
    v.and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An id, or an expanded object's id.
fn expandable_id(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Object(o) => o.get("id")?.as_str().filter(|s| !s.is_empty()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, object: &str) -> Option<(ObjectKind, String)> {
        let body = format!(
            r#"{{"id":"evt_1","object":"event","type":"{event_type}","livemode":false,"data":{{"object":{object}}}}}"#
        );
        trigger(event_type, body.as_bytes()).map(|t| (t.kind, t.id))
    }

    fn is(kind: ObjectKind, id: &str) -> Option<(ObjectKind, String)> {
        Some((kind, id.to_owned()))
    }

    const OURS: &str = r#"{"coffer_checkout_id":"0190"}"#;

    #[test]
    fn sessions() {
        let ours = r#"{"id":"cs_1","object":"checkout.session","client_reference_id":"0190"}"#;
        for t in [
            "checkout.session.completed",
            "checkout.session.expired",
            "checkout.session.async_payment_succeeded",
            "checkout.session.async_payment_failed",
        ] {
            assert_eq!(
                event(t, ours),
                is(ObjectKind::CheckoutSession, "cs_1"),
                "{t}"
            );
        }
        let foreign = r#"{"id":"cs_2","client_reference_id":null,"metadata":{}}"#;
        assert_eq!(event("checkout.session.completed", foreign), None);
    }

    #[test]
    fn subscriptions_and_their_invoices() {
        let sub = format!(r#"{{"id":"sub_1","object":"subscription","metadata":{OURS}}}"#);
        for t in [
            "customer.subscription.created",
            "customer.subscription.updated",
            "customer.subscription.deleted",
            "customer.subscription.paused",
            "customer.subscription.resumed",
            "customer.subscription.trial_will_end",
        ] {
            assert_eq!(event(t, &sub), is(ObjectKind::Subscription, "sub_1"), "{t}");
        }
        assert_eq!(
            event(
                "customer.subscription.updated",
                r#"{"id":"sub_2","metadata":{}}"#
            ),
            None
        );
        let new = format!(
            r#"{{"id":"in_1","object":"invoice","subscription":null,"parent":{{"type":"subscription_details",
                "subscription_details":{{"metadata":{OURS},"subscription":"sub_1"}}}}}}"#
        );
        let old = format!(
            r#"{{"id":"in_1","object":"invoice","subscription":"sub_1","subscription_details":{{"metadata":{OURS}}}}}"#
        );
        for t in [
            "invoice.paid",
            "invoice.payment_succeeded",
            "invoice.payment_failed",
        ] {
            assert_eq!(event(t, &new), is(ObjectKind::Payment, "in_1"), "{t}");
            assert_eq!(event(t, &old), is(ObjectKind::Payment, "in_1"), "{t}");
        }
        let manual = r#"{"id":"in_2","object":"invoice","subscription":null,"parent":null}"#;
        assert_eq!(event("invoice.paid", manual), None);
    }

    #[test]
    fn subscriptions_create_subscription_made_are_ours() {
        let created = r#"{"id":"sub_3","object":"subscription",
            "metadata":{"coffer_subscription_id":"0190f2a0-0000-7000-8000-000000000003"}}"#;
        assert_eq!(
            event("customer.subscription.created", created),
            is(ObjectKind::Subscription, "sub_3")
        );
        let invoice = r#"{"id":"in_3","object":"invoice","parent":{"type":"subscription_details",
            "subscription_details":{"subscription":"sub_3",
            "metadata":{"coffer_subscription_id":"0190f2a0-0000-7000-8000-000000000003"}}}}"#;
        assert_eq!(
            event("invoice.paid", invoice),
            is(ObjectKind::Payment, "in_3")
        );
    }

    #[test]
    fn payments_refunds_disputes() {
        let pi = format!(r#"{{"id":"pi_1","object":"payment_intent","metadata":{OURS}}}"#);
        assert_eq!(
            event("payment_intent.succeeded", &pi),
            is(ObjectKind::Payment, "pi_1")
        );
        assert_eq!(
            event("payment_intent.payment_failed", &pi),
            is(ObjectKind::Payment, "pi_1")
        );
        assert_eq!(
            event("payment_intent.succeeded", r#"{"id":"pi_2","metadata":{}}"#),
            None,
            "a renewal invoice's payment intent is the subscription's business"
        );
        assert_eq!(
            event(
                "charge.refunded",
                r#"{"id":"ch_1","object":"charge","payment_intent":"pi_1"}"#
            ),
            is(ObjectKind::Payment, "pi_1")
        );
        assert_eq!(
            event("charge.refunded", r#"{"id":"ch_1","payment_intent":null}"#),
            None
        );
        let refund = r#"{"id":"re_1","object":"refund","metadata":{"coffer_refund_id":"0190"}}"#;
        assert_eq!(
            event("refund.updated", refund),
            is(ObjectKind::Refund, "re_1")
        );
        assert_eq!(
            event("refund.failed", refund),
            is(ObjectKind::Refund, "re_1")
        );
        assert_eq!(
            event("refund.updated", r#"{"id":"re_2","metadata":{}}"#),
            None
        );
        for t in [
            "charge.dispute.created",
            "charge.dispute.updated",
            "charge.dispute.closed",
        ] {
            assert_eq!(
                event(t, r#"{"id":"dp_1","object":"dispute","charge":"ch_1"}"#),
                is(ObjectKind::Dispute, "dp_1")
            );
        }
    }

    #[test]
    fn unknown_types_and_shapes_are_ignored() {
        assert_eq!(event("customer.created", r#"{"id":"cus_1"}"#), None);
        assert_eq!(
            event(
                "checkout.session.completed",
                r#"{"client_reference_id":"x"}"#
            ),
            None
        );
        assert_eq!(trigger("charge.refunded", b"not json"), None);
        assert_eq!(trigger("charge.refunded", br#"{"data":{}}"#), None);
    }
}
