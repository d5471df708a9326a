//! Reading the sandbox's event objects (`data.object`, shaped as `events.rs` documents) into
//! the provider-neutral types the appliers take. A field missing or of the wrong kind is an
//! error naming the field, never a guess.

use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::checkout::{PaymentStatus, Status};
use crate::domain::payment::RefundStatus;
use crate::domain::subscription::SubscriptionStatus;
use crate::providers::sandbox::status::PaymentState;
use crate::providers::{PaymentOutcome, ProviderPayment, ProviderRefund, ProviderSubscription};

/// A checkout session's state as an event reports it (no URL: that never changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub id: String,
    /// Coffer's checkout id.
    pub client_reference: Uuid,
    pub status: Status,
    pub payment_status: PaymentStatus,
    pub expires_at: OffsetDateTime,
    pub version: i64,
}

#[derive(Deserialize)]
struct Envelope {
    data: Data,
}

#[derive(Deserialize)]
struct Data {
    object: Value,
}

/// The `data.object` of an event body.
pub fn object(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice::<Envelope>(body)
        .map(|e| e.data.object)
        .map_err(|e| format!("event body: {e}"))
}

#[derive(Deserialize)]
struct Session {
    id: String,
    client_reference_id: String,
    status: String,
    payment_status: String,
    expires_at: i64,
    version: i64,
}

#[derive(Deserialize)]
struct Card {
    brand: String,
    last4: String,
}

#[derive(Deserialize)]
struct Payment {
    id: String,
    client_reference_id: String,
    amount: i64,
    currency: String,
    status: String,
    failure_code: Option<String>,
    card: Option<Card>,
    #[serde(default)]
    amount_refunded: i64,
    /// A renewal's subscription and period start; absent or null for a session's payment.
    #[serde(default)]
    subscription: Option<String>,
    #[serde(default)]
    period_start: Option<i64>,
    #[serde(default)]
    period_end: Option<i64>,
    version: i64,
}

#[derive(Deserialize)]
struct Refund {
    id: String,
    payment: String,
    client_reference_id: String,
    amount: i64,
    status: String,
    version: i64,
}

#[derive(Deserialize)]
struct Subscription {
    id: String,
    client_reference_id: String,
    status: String,
    current_period_start: i64,
    current_period_end: i64,
    trial_end: Option<i64>,
    // Absent from events queued before the lifecycle fields existed: false, null, empty.
    #[serde(default)]
    cancel_at_period_end: bool,
    #[serde(default)]
    collection_paused: bool,
    #[serde(default)]
    canceled_at: Option<i64>,
    #[serde(default)]
    cancel_reason: Option<String>,
    version: i64,
}

fn read<T: for<'de> Deserialize<'de>>(kind: &str, v: &Value) -> Result<T, String> {
    T::deserialize(v).map_err(|e| format!("{kind} object: {e}"))
}

fn time(field: &str, secs: i64) -> Result<OffsetDateTime, String> {
    OffsetDateTime::from_unix_timestamp(secs).map_err(|_| format!("{field}: out of range"))
}

fn reference(s: &str) -> Result<Uuid, String> {
    Uuid::parse_str(s).map_err(|_| "client_reference_id: not a Coffer id".to_owned())
}

fn bad(field: &str, value: &str) -> String {
    format!("{field}: unknown value {value:?}")
}

pub fn session(v: &Value) -> Result<SessionState, String> {
    let s: Session = read("checkout_session", v)?;
    Ok(SessionState {
        status: Status::parse(&s.status).ok_or_else(|| bad("status", &s.status))?,
        payment_status: PaymentStatus::parse(&s.payment_status)
            .ok_or_else(|| bad("payment_status", &s.payment_status))?,
        expires_at: time("expires_at", s.expires_at)?,
        id: s.id,
        client_reference: reference(&s.client_reference_id)?,
        version: s.version,
    })
}

pub fn payment(v: &Value) -> Result<ProviderPayment, String> {
    let p: Payment = read("payment", v)?;
    Ok(ProviderPayment {
        status: PaymentState::parse(&p.status)
            .map(PaymentOutcome::from)
            .ok_or_else(|| bad("status", &p.status))?,
        id: p.id,
        client_reference: reference(&p.client_reference_id)?,
        amount: p.amount,
        currency: p.currency,
        failure_code: p.failure_code,
        card: p.card.map(|c| (c.brand, c.last4)),
        amount_refunded: p.amount_refunded,
        renewal: match (p.subscription, p.period_start) {
            (Some(sub), Some(start)) => Some((sub, time("period_start", start)?)),
            _ => None,
        },
        period_end: p.period_end.map(|t| time("period_end", t)).transpose()?,
        subscription: None,
        version: p.version,
    })
}

pub fn refund(v: &Value) -> Result<ProviderRefund, String> {
    let r: Refund = read("refund", v)?;
    Ok(ProviderRefund {
        status: RefundStatus::parse(&r.status).ok_or_else(|| bad("status", &r.status))?,
        id: r.id,
        payment: r.payment,
        client_reference: reference(&r.client_reference_id)?,
        amount: r.amount,
        version: r.version,
    })
}

pub fn subscription(v: &Value) -> Result<ProviderSubscription, String> {
    let s: Subscription = read("subscription", v)?;
    Ok(ProviderSubscription {
        status: SubscriptionStatus::parse(&s.status).ok_or_else(|| bad("status", &s.status))?,
        current_period_start: time("current_period_start", s.current_period_start)?,
        current_period_end: time("current_period_end", s.current_period_end)?,
        trial_end: s.trial_end.map(|t| time("trial_end", t)).transpose()?,
        cancel_at_period_end: s.cancel_at_period_end,
        collection_paused: s.collection_paused,
        canceled_at: s.canceled_at.map(|t| time("canceled_at", t)).transpose()?,
        cancel_reason: s.cancel_reason.unwrap_or_default(),
        id: s.id,
        client_reference: reference(&s.client_reference_id)?,
        price: None,
        quantity: None,
        // The sandbox's renewals end its dunning themselves, in the tenant's end state.
        retries_exhausted: false,
        version: s.version,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::providers::sandbox::events::{EventType, body};

    #[test]
    fn reads_each_object_of_the_contract() {
        let cs = Uuid::now_v7();
        let at = OffsetDateTime::from_unix_timestamp(1_764_590_000).unwrap();
        let p = json!({"id": "py_1", "checkout_session": "cs_1", "client_reference_id": cs.to_string(),
            "amount": 5000, "currency": "USD", "status": "failed", "failure_code": "card_declined",
            "card": {"brand": "visa", "last4": "0002"}, "amount_refunded": 0, "version": 2});
        let read = payment(&object(&body("m", EventType::PaymentFailed, &p, at)).unwrap()).unwrap();
        assert_eq!(read.status, PaymentOutcome::Failed);
        assert_eq!(read.card, Some(("visa".into(), "0002".into())));
        assert_eq!(read.client_reference, cs);
        let s = json!({"id": "cs_1", "client_reference_id": cs.to_string(), "customer": "cus_1",
            "mode": "payment", "status": "complete", "payment_status": "paid", "amount_total": 5000,
            "currency": "USD", "expires_at": 1_764_600_000, "payment": "py_1",
            "subscription": null, "version": 3});
        let read = session(&s).unwrap();
        assert_eq!((read.status, read.version), (Status::Complete, 3));
        let sub = json!({"id": "sub_1", "checkout_session": "cs_1", "client_reference_id": cs.to_string(),
            "customer": "cus_1", "status": "trialing", "current_period_start": 1_764_590_000,
            "current_period_end": 1_765_799_600, "trial_end": 1_765_799_600, "version": 1});
        assert_eq!(
            subscription(&sub).unwrap().status,
            SubscriptionStatus::Trialing
        );
        let bad = json!({"id": "py_1", "client_reference_id": cs.to_string(), "amount": 1,
            "currency": "USD", "status": "pending", "version": 1});
        assert!(payment(&bad).unwrap_err().contains("status"));
        assert!(
            refund(&json!({"id": "re_1"}))
                .unwrap_err()
                .contains("refund object")
        );
    }
}
