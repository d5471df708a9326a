//! The sandbox's events: what it tells Coffer, and the shape every consumer reads.
//!
//! An event is queued in `sandbox_outbox` by [`emit`], in the same transaction as the change it
//! reports, and delivered later over HTTP to `/webhooks/{account}`, signed with Standard
//! Webhooks. The body is JSON:
//!
//! ```json
//! {"id": "msg_sbx_…", "type": "payment.succeeded", "created": 1764590000, "livemode": false,
//!  "data": {"object": { … the object's whole current state … }}}
//! ```
//!
//! `id` is also the `webhook-id` header (the same on every redelivery). `data.object` is the
//! object's state *after* the change, with its `version`, so a consumer applies an event only
//! when its version is newer than what it holds. The objects (every time is unix seconds, every
//! amount minor units):
//!
//! - `checkout_session`: `id`, `client_reference_id` (Coffer's checkout id), `customer`, `mode`
//!   (`payment|subscription`), `status` (`open|complete|expired`), `payment_status`
//!   (`unpaid|paid|no_payment_required`), `amount_total`, `currency`, `expires_at`, `payment`
//!   (the payment's id or null), `subscription` (id or null), `version`.
//! - `payment`: `id`, `checkout_session`, `client_reference_id` (Coffer's checkout id),
//!   `amount`, `currency`, `status` (`requires_action|succeeded|failed`), `failure_code`
//!   (`card_declined|insufficient_funds|authentication_failed` or null), `card` (`{brand,
//!   last4}` or null), `amount_refunded`, `subscription` and `period_start` (a renewal's: the
//!   subscription and the start of the period it pays; null for a session's payment),
//!   `version`.
//! - `refund`: `id`, `payment`, `client_reference_id` (Coffer's refund id), `amount`,
//!   `currency`, `status` (`pending|succeeded|failed`), `version`.
//! - `subscription`: `id`, `checkout_session`, `client_reference_id` (Coffer's checkout id),
//!   `customer`, `status` (`incomplete|incomplete_expired|trialing|active|past_due|unpaid|
//!   canceled|paused`), `current_period_start`, `current_period_end`, `trial_end` (or null),
//!   `cancel_at_period_end`, `collection_paused`, `canceled_at` (or null), `cancel_reason`
//!   (empty when none), `version`. Sent as `subscription.created`, `subscription.updated` (a
//!   scheduled cancel, undone, paused or resumed collection, a renewal, an INCOMPLETE one
//!   expired, a PAUSED one resumed) and `subscription.deleted` (canceled).

use serde_json::{Value, json};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use super::store;
use crate::store::StoreError;

/// What the sandbox reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    CheckoutCompleted,
    CheckoutExpired,
    PaymentSucceeded,
    PaymentFailed,
    RefundSucceeded,
    SubscriptionCreated,
    SubscriptionUpdated,
    SubscriptionDeleted,
}

impl EventType {
    pub const ALL: [EventType; 8] = [
        EventType::CheckoutCompleted,
        EventType::CheckoutExpired,
        EventType::PaymentSucceeded,
        EventType::PaymentFailed,
        EventType::RefundSucceeded,
        EventType::SubscriptionCreated,
        EventType::SubscriptionUpdated,
        EventType::SubscriptionDeleted,
    ];

    /// The `type` of the event body.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CheckoutCompleted => "checkout.session.completed",
            EventType::CheckoutExpired => "checkout.session.expired",
            EventType::PaymentSucceeded => "payment.succeeded",
            EventType::PaymentFailed => "payment.failed",
            EventType::RefundSucceeded => "refund.succeeded",
            EventType::SubscriptionCreated => "subscription.created",
            EventType::SubscriptionUpdated => "subscription.updated",
            EventType::SubscriptionDeleted => "subscription.deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The body of an event about `object`, as it will be signed and sent.
pub fn body(id: &str, event_type: EventType, object: &Value, created: OffsetDateTime) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id,
        "type": event_type.as_str(),
        "created": created.unix_timestamp(),
        "livemode": false,
        "data": {"object": object},
    }))
    .expect("a JSON value serialises")
}

/// Queues an event about `object` (its state after the change) for delivery to `account`'s
/// webhook endpoint. Call it in the transaction that makes the change, so the event exists if
/// and only if the change does. Returns the event's id.
pub async fn emit(
    conn: &mut PgConnection,
    account: &str,
    event_type: EventType,
    object: &Value,
    created: OffsetDateTime,
) -> Result<String, StoreError> {
    let id = format!("msg_sbx_{}", Uuid::now_v7().simple());
    let body = body(&id, event_type, object, created);
    store::enqueue_event(conn, account, &id, event_type.as_str(), &body).await?;
    Ok(id)
}

/// Queues one event per (account, object) about changes made in one set-based statement, in
/// one statement of its own, in the transaction that made them (as [`emit`] does for one).
/// `created` is each event's time (the account's sandbox time).
pub async fn emit_many(
    conn: &mut PgConnection,
    event_type: EventType,
    events: &[(&str, Value, OffsetDateTime)],
) -> Result<Vec<String>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut accounts = Vec::with_capacity(events.len());
    let mut ids = Vec::with_capacity(events.len());
    let mut bodies = Vec::with_capacity(events.len());
    for (account, object, created) in events {
        let id = format!("msg_sbx_{}", Uuid::now_v7().simple());
        bodies.push(body(&id, event_type, object, *created));
        accounts.push((*account).to_owned());
        ids.push(id);
    }
    let types = vec![event_type.as_str().to_owned(); events.len()];
    store::enqueue_events(conn, &accounts, &ids, &types, &bodies).await?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_round_trip() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("payment.refunded"), None);
    }

    #[test]
    fn the_body_names_its_object() {
        let object = json!({"id": "py_sbx_1", "version": 3});
        let at = OffsetDateTime::from_unix_timestamp(1_764_590_000).unwrap();
        let body: Value =
            serde_json::from_slice(&body("msg_1", EventType::PaymentFailed, &object, at)).unwrap();
        assert_eq!(body["type"], "payment.failed");
        assert_eq!(body["id"], "msg_1");
        assert_eq!(body["created"], 1_764_590_000);
        assert_eq!(body["livemode"], false);
        assert_eq!(body["data"]["object"]["id"], "py_sbx_1");
    }
}
