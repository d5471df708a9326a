//! The sandbox's objects as its events carry them (`data.object`), to the shapes
//! [`super::events`] documents: every time in unix seconds, every amount in minor units. One
//! serializer per object kind, so every event about an object goes through the same one.

use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::checkout::{Mode, PaymentStatus, Status};
use crate::providers::sandbox::store::{Checkout, Payment, Refund, Subscription};

/// A checkout session's fields, as an event reports them.
#[derive(Debug, Clone, Copy)]
pub struct CheckoutSession<'a> {
    pub id: &'a str,
    /// Coffer's checkout session id.
    pub client_reference: Uuid,
    pub customer: &'a str,
    /// `payment|subscription`.
    pub mode: Mode,
    /// `open|complete|expired`.
    pub status: Status,
    /// `unpaid|paid|no_payment_required`.
    pub payment_status: PaymentStatus,
    pub amount_total: i64,
    pub currency: &'a str,
    pub expires_at: OffsetDateTime,
    pub payment: Option<&'a str>,
    pub subscription: Option<&'a str>,
    pub version: i64,
}

/// The `checkout_session` object.
pub fn checkout_session(s: &CheckoutSession<'_>) -> Value {
    json!({
        "id": s.id,
        "client_reference_id": s.client_reference.to_string(),
        "customer": s.customer,
        "mode": s.mode.as_str(),
        "status": s.status.as_str(),
        "payment_status": s.payment_status.as_str(),
        "amount_total": s.amount_total,
        "currency": s.currency,
        "expires_at": s.expires_at.unix_timestamp(),
        "payment": s.payment,
        "subscription": s.subscription,
        "version": s.version,
    })
}

impl<'a> From<&'a Checkout> for CheckoutSession<'a> {
    fn from(s: &'a Checkout) -> Self {
        Self {
            id: &s.id,
            client_reference: s.client_reference,
            customer: &s.customer,
            mode: s.mode,
            status: s.status,
            payment_status: s.payment_status,
            amount_total: s.amount_total,
            currency: &s.currency,
            expires_at: s.expires_at,
            payment: s.payment.as_deref(),
            subscription: s.subscription.as_deref(),
            version: s.version,
        }
    }
}

/// `payment`. The card is its brand and last four digits: nothing more exists to send.
pub fn payment(p: &Payment) -> Value {
    let card = match (&p.card_brand, &p.card_last4) {
        (Some(brand), Some(last4)) => json!({"brand": brand, "last4": last4}),
        _ => Value::Null,
    };
    json!({
        "id": p.id,
        "checkout_session": p.session_id,
        "client_reference_id": p.client_reference.to_string(),
        "amount": p.amount,
        "currency": p.currency,
        "status": p.status.as_str(),
        "failure_code": p.failure_code,
        "card": card,
        "amount_refunded": p.amount_refunded,
        "subscription": p.renewal.as_ref().map(|(sub, _)| sub),
        "period_start": p.renewal.as_ref().map(|(_, start)| start.unix_timestamp()),
        "period_end": p.period_end.map(OffsetDateTime::unix_timestamp),
        "version": p.version,
    })
}

/// `refund`.
pub fn refund(r: &Refund) -> Value {
    json!({
        "id": r.id,
        "payment": r.payment_id,
        "client_reference_id": r.client_reference.to_string(),
        "amount": r.amount,
        "currency": r.currency,
        "status": r.status.as_str(),
        "version": r.version,
    })
}

/// `subscription`.
pub fn subscription(s: &Subscription) -> Value {
    json!({
        "id": s.id,
        "checkout_session": s.session_id,
        "client_reference_id": s.client_reference.to_string(),
        "customer": s.customer,
        "status": s.status.as_str(),
        "current_period_start": s.current_period_start.unix_timestamp(),
        "current_period_end": s.current_period_end.unix_timestamp(),
        "trial_end": s.trial_end.map(OffsetDateTime::unix_timestamp),
        "cancel_at_period_end": s.cancel_at_period_end,
        "collection_paused": s.collection_paused,
        "canceled_at": s.canceled_at.map(OffsetDateTime::unix_timestamp),
        "cancel_reason": s.cancel_reason,
        "version": s.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::payment::RefundStatus;
    use crate::providers::sandbox::status::{PaymentState, SubscriptionState};

    #[test]
    fn a_checkout_session_has_the_documented_fields() {
        let reference = Uuid::now_v7();
        let v = checkout_session(&CheckoutSession {
            id: "cs_sbx_1",
            client_reference: reference,
            customer: "cus_sbx_1",
            mode: Mode::Payment,
            status: Status::Expired,
            payment_status: PaymentStatus::Unpaid,
            amount_total: 2_900,
            currency: "USD",
            expires_at: OffsetDateTime::from_unix_timestamp(1_764_590_000).unwrap(),
            payment: None,
            subscription: None,
            version: 2,
        });
        assert_eq!(v["client_reference_id"], reference.to_string());
        assert_eq!(v["expires_at"], 1_764_590_000);
        assert_eq!(v["amount_total"], 2_900);
        assert_eq!(v["payment"], Value::Null);
        assert_eq!(v["status"], "expired");
        assert_eq!(v["version"], 2);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        for k in [
            "id",
            "client_reference_id",
            "customer",
            "mode",
            "status",
            "payment_status",
            "amount_total",
            "currency",
            "expires_at",
            "payment",
            "subscription",
            "version",
        ] {
            assert!(keys.contains(&k), "{k}");
        }
    }

    fn at(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(s).unwrap()
    }

    #[test]
    fn a_payment_carries_its_card_as_brand_and_last_four_only() {
        let reference = Uuid::now_v7();
        let p = Payment {
            account: "acme-sandbox".into(),
            id: "py_sbx_1".into(),
            session_id: "cs_sbx_1".into(),
            client_reference: reference,
            amount: 5_800,
            currency: "USD".into(),
            status: PaymentState::Failed,
            failure_code: Some("card_declined".into()),
            card_brand: Some("visa".into()),
            card_last4: Some("0002".into()),
            fails_on_renewal: false,
            amount_refunded: 0,
            renewal: None,
            period_end: None,
            version: 2,
            created_at: at(1),
            updated_at: at(2),
        };
        assert_eq!(
            payment(&p),
            json!({
                "id": "py_sbx_1", "checkout_session": "cs_sbx_1",
                "client_reference_id": reference.to_string(), "amount": 5_800,
                "currency": "USD", "status": "failed", "failure_code": "card_declined",
                "card": {"brand": "visa", "last4": "0002"}, "amount_refunded": 0, "version": 2,
                "subscription": null, "period_start": null, "period_end": null,
            })
        );
    }

    /// The objects spell every status as the event contract ([`super::super::events`]) does,
    /// whatever type holds it.
    #[test]
    fn the_objects_spell_statuses_as_the_contract_does() {
        let session = |mode, status, payment_status| {
            checkout_session(&CheckoutSession {
                id: "cs_sbx_1",
                client_reference: Uuid::nil(),
                customer: "cus_sbx_1",
                mode,
                status,
                payment_status,
                amount_total: 0,
                currency: "USD",
                expires_at: at(1),
                payment: None,
                subscription: None,
                version: 1,
            })
        };
        let v = session(
            Mode::Subscription,
            Status::Complete,
            PaymentStatus::NoPaymentRequired,
        );
        assert_eq!(
            (&v["mode"], &v["status"], &v["payment_status"]),
            (
                &json!("subscription"),
                &json!("complete"),
                &json!("no_payment_required")
            )
        );
        let v = session(Mode::Payment, Status::Open, PaymentStatus::Paid);
        assert_eq!(
            (&v["mode"], &v["status"], &v["payment_status"]),
            (&json!("payment"), &json!("open"), &json!("paid"))
        );
        let r = Refund {
            account: "a".into(),
            id: "re_sbx_1".into(),
            payment_id: "py_sbx_1".into(),
            client_reference: Uuid::nil(),
            amount: 500,
            currency: "USD".into(),
            status: RefundStatus::Succeeded,
            version: 1,
            created_at: at(1),
        };
        assert_eq!(refund(&r)["status"], "succeeded");
        let s = Subscription {
            account: "a".into(),
            id: "sub_sbx_1".into(),
            session_id: "cs_sbx_1".into(),
            client_reference: Uuid::nil(),
            customer: "cus_sbx_1".into(),
            status: SubscriptionState::Trialing,
            current_period_start: at(100),
            current_period_end: at(200),
            trial_end: Some(at(200)),
            fails_on_renewal: false,
            cancel_at_period_end: false,
            collection_paused: false,
            canceled_at: None,
            cancel_reason: String::new(),
            amount: Some(2_900),
            currency: Some("USD".into()),
            period_months: Some(1),
            retries: 0,
            next_retry_at: None,
            unpaid_payment: None,
            version: 1,
            created_at: at(100),
        };
        assert_eq!(subscription(&s)["status"], "trialing");
    }

    #[test]
    fn a_subscription_without_a_trial_has_a_null_trial_end() {
        let s = Subscription {
            account: "a".into(),
            id: "sub_sbx_1".into(),
            session_id: "cs_sbx_1".into(),
            client_reference: Uuid::nil(),
            customer: "cus_sbx_1".into(),
            status: SubscriptionState::Active,
            current_period_start: at(100),
            current_period_end: at(200),
            trial_end: None,
            fails_on_renewal: false,
            cancel_at_period_end: false,
            collection_paused: false,
            canceled_at: None,
            cancel_reason: String::new(),
            amount: Some(2_900),
            currency: Some("USD".into()),
            period_months: Some(1),
            retries: 0,
            next_retry_at: None,
            unpaid_payment: None,
            version: 1,
            created_at: at(100),
        };
        let v = subscription(&s);
        assert_eq!(v["trial_end"], Value::Null);
        assert_eq!(v["current_period_start"], 100);
        assert_eq!(v["current_period_end"], 200);
        assert_eq!(v["checkout_session"], "cs_sbx_1");
        assert_eq!(v["cancel_at_period_end"], false);
        assert_eq!(v["canceled_at"], Value::Null);
    }
}
