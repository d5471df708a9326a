//! The sandbox's objects as its events carry them (`data.object`), to the shapes
//! [`super::events`] documents: every time in unix seconds, every amount in minor units.

use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

/// A checkout session's fields, as an event reports them.
#[derive(Debug, Clone, Copy)]
pub struct CheckoutSession<'a> {
    pub id: &'a str,
    /// Coffer's checkout session id.
    pub client_reference: Uuid,
    pub customer: &'a str,
    /// `payment|subscription`.
    pub mode: &'a str,
    /// `open|complete|expired`.
    pub status: &'a str,
    /// `unpaid|paid|no_payment_required`.
    pub payment_status: &'a str,
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
        "mode": s.mode,
        "status": s.status,
        "payment_status": s.payment_status,
        "amount_total": s.amount_total,
        "currency": s.currency,
        "expires_at": s.expires_at.unix_timestamp(),
        "payment": s.payment,
        "subscription": s.subscription,
        "version": s.version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkout_session_has_the_documented_fields() {
        let reference = Uuid::now_v7();
        let v = checkout_session(&CheckoutSession {
            id: "cs_sbx_1",
            client_reference: reference,
            customer: "cus_sbx_1",
            mode: "payment",
            status: "expired",
            payment_status: "unpaid",
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
}
