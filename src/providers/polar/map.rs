//! Polar's objects as the port's: statuses, amounts, currencies, Coffer's references and
//! versions.
//!
//! | Polar checkout `status` | Coffer session | payment status |
//! |---|---|---|
//! | `open` | OPEN | UNPAID |
//! | `confirmed` (the buyer clicked Pay; no outcome yet) | OPEN | UNPAID |
//! | `succeeded` | COMPLETE | PAID (NO_PAYMENT_REQUIRED when Polar charged nothing: a trial) |
//! | `expired` | EXPIRED | UNPAID |
//! | `failed` (final: "cannot be retried") | EXPIRED | UNPAID |
//!
//! | Polar order `status` | Coffer payment |
//! |---|---|
//! | `paid`, `partially_refunded`, `refunded` | SUCCEEDED (refunds are Coffer's refunds) |
//! | `draft`, `pending` | PROVIDER_PENDING |
//! | `void` | FAILED (`order_void`) |
//!
//! Refunds: `pending`, `succeeded` as they are; `failed` and `canceled` are FAILED.
//! Subscriptions: Polar's statuses are Coffer's (Stripe's list).
//!
//! An order's amount is its `net_amount` (after discounts, before Polar's tax): Coffer sends
//! tax-exclusive prices and turns discount codes off, so it is Coffer's amount, and it is what
//! Polar refunds in. Versions: Polar sends none, so an object's version is its `modified_at`
//! (else `created_at`) in microseconds since the epoch — it grows with every change Polar
//! makes, and a fetch of an unchanged object applies nothing twice.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::wire::{self, CHECKOUT_KEY, EXPIRES_KEY, Metadata, REFUND_KEY, meta};
use crate::domain::checkout::{PaymentStatus, Status};
use crate::domain::money::Currency;
use crate::domain::payment::RefundStatus;
use crate::domain::subscription::SubscriptionStatus;
use crate::providers::{
    PaymentOutcome, ProviderCheckout, ProviderError, ProviderPayment, ProviderRefund,
    ProviderSubscription,
};

/// Coffer's currencies Polar sells in with the same minor unit (Polar counts every currency in
/// hundredths except its zero-decimal ones; BGN, BHD, JOD, KWD, OMR and TND it does not sell
/// in, and ISK it counts in hundredths where ISO 4217, and Coffer, count whole krónur).
const CURRENCIES: &[&str] = &[
    "AED", "ARS", "AUD", "BRL", "CAD", "CHF", "CLP", "CNY", "COP", "CZK", "DKK", "EGP", "EUR",
    "GBP", "HKD", "HUF", "IDR", "ILS", "INR", "JPY", "KES", "KRW", "MXN", "MYR", "NGN", "NOK",
    "NZD", "PHP", "PKR", "PLN", "QAR", "RON", "SAR", "SEK", "SGD", "THB", "TRY", "TWD", "USD",
    "VND", "ZAR",
];

/// Polar's name of `currency` (`usd`), or a definitive refusal for one Polar cannot charge in
/// Coffer's minor units.
pub fn currency(currency: Currency) -> Result<String, ProviderError> {
    if CURRENCIES.contains(&currency.code()) {
        Ok(currency.code().to_ascii_lowercase())
    } else {
        Err(ProviderError::definitive(
            "unsupported_currency",
            format!("Polar accounts cannot charge in {currency}"),
        ))
    }
}

fn unexpected(message: String) -> ProviderError {
    ProviderError::definitive("unexpected_answer", message)
}

/// An RFC 3339 timestamp of Polar's.
pub fn timestamp(s: &str) -> Result<OffsetDateTime, ProviderError> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|e| unexpected(format!("Polar sent a timestamp that does not parse: {e}")))
}

/// The version of an object last changed at `modified_at` (made at `created_at`).
pub fn version(created_at: &str, modified_at: Option<&str>) -> Result<i64, ProviderError> {
    let at = timestamp(modified_at.unwrap_or(created_at))?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000)
        .map_err(|_| unexpected("Polar sent a timestamp out of range".into()))
}

/// Coffer's id under `key` in `metadata`: `None` if it is not there (an object Coffer did not
/// make), an error if it is there but is not an id.
pub fn reference(metadata: &Metadata, key: &str) -> Result<Option<Uuid>, ProviderError> {
    meta(metadata, key)
        .map(|s| {
            Uuid::parse_str(s).map_err(|_| unexpected(format!("Polar's {key} is not a Coffer id")))
        })
        .transpose()
}

fn required(metadata: &Metadata, key: &str, what: &str, id: &str) -> Result<Uuid, ProviderError> {
    reference(metadata, key)?.ok_or_else(|| {
        ProviderError::definitive(
            "not_coffer_s",
            format!("Polar's {what} {id} carries no {key}: Coffer did not make it"),
        )
    })
}

/// The session's state for a checkout `status`.
pub fn checkout_state(
    status: &str,
    is_payment_required: bool,
) -> Result<(Status, PaymentStatus), ProviderError> {
    Ok(match status {
        "open" | "confirmed" => (Status::Open, PaymentStatus::Unpaid),
        "succeeded" if is_payment_required => (Status::Complete, PaymentStatus::Paid),
        "succeeded" => (Status::Complete, PaymentStatus::NoPaymentRequired),
        "expired" | "failed" => (Status::Expired, PaymentStatus::Unpaid),
        other => return Err(unexpected(format!("unknown Polar checkout status {other}"))),
    })
}

/// A checkout as the port's session, without its payment and subscription. It expires at
/// Coffer's time when that is earlier than Polar's (Polar keeps checkouts open 24 hours; a
/// payment after Coffer's time is the provider's late completion, which Coffer records).
pub fn checkout(c: &wire::Checkout) -> Result<ProviderCheckout, ProviderError> {
    let (mut status, payment_status) = checkout_state(&c.status, c.is_payment_required)?;
    let expires_at = expires_at(c)?;
    // Still open on Polar past Coffer's time: expired for Coffer, as its own clock made it
    // (an open state must not undo that expiry; a payment still may, as a late completion).
    if status == Status::Open && expires_at <= OffsetDateTime::now_utc() {
        status = Status::Expired;
    }
    Ok(ProviderCheckout {
        id: c.id.clone(),
        client_reference: reference(&c.metadata, CHECKOUT_KEY)?,
        url: c.url.clone(),
        status,
        payment_status,
        expires_at,
        version: version(&c.created_at, c.modified_at.as_deref())?,
        payment: None,
        subscription: None,
    })
}

fn expires_at(c: &wire::Checkout) -> Result<OffsetDateTime, ProviderError> {
    let polar = timestamp(&c.expires_at)?;
    let coffer = meta(&c.metadata, EXPIRES_KEY)
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok());
    Ok(coffer.map_or(polar, |coffer| coffer.min(polar)))
}

/// Whether `order` is the payment of the checkout that made it: the first charge of a
/// purchase or a subscription. A zero one (a trial's) is not: Coffer's session then has no
/// payment. Renewals and updates are their subscription's business.
pub fn is_checkout_payment(order: &wire::Order) -> bool {
    matches!(
        order.billing_reason.as_str(),
        "purchase" | "subscription_create"
    ) && order.net_amount > 0
}

/// An order as the port's payment.
pub fn payment(o: &wire::Order) -> Result<ProviderPayment, ProviderError> {
    let (status, failure_code) = match o.status.as_str() {
        "paid" | "partially_refunded" | "refunded" => (PaymentOutcome::Succeeded, None),
        "draft" | "pending" => (PaymentOutcome::RequiresAction, None),
        "void" => (PaymentOutcome::Failed, Some("order_void".to_owned())),
        other => return Err(unexpected(format!("unknown Polar order status {other}"))),
    };
    Ok(ProviderPayment {
        renewal: None,
        period_end: None,
        subscription: None,
        id: o.id.clone(),
        client_reference: required(&o.metadata, CHECKOUT_KEY, "order", &o.id)?,
        amount: o.net_amount,
        currency: o.currency.to_ascii_uppercase(),
        status,
        failure_code,
        card: None,
        amount_refunded: o.refunded_amount,
        version: version(&o.created_at, o.modified_at.as_deref())?,
    })
}

/// A refund as the port's.
pub fn refund(r: &wire::Refund) -> Result<ProviderRefund, ProviderError> {
    let status = match r.status.as_str() {
        "pending" => RefundStatus::Pending,
        "succeeded" => RefundStatus::Succeeded,
        "failed" | "canceled" => RefundStatus::Failed,
        other => return Err(unexpected(format!("unknown Polar refund status {other}"))),
    };
    Ok(ProviderRefund {
        id: r.id.clone(),
        payment: r.order_id.clone(),
        client_reference: required(&r.metadata, REFUND_KEY, "refund", &r.id)?,
        amount: r.amount,
        status,
        version: version(&r.created_at, r.modified_at.as_deref())?,
    })
}

/// A subscription as the port's.
pub fn subscription(s: &wire::Subscription) -> Result<ProviderSubscription, ProviderError> {
    let status = SubscriptionStatus::parse(&s.status)
        .ok_or_else(|| unexpected(format!("unknown Polar subscription status {}", s.status)))?;
    Ok(ProviderSubscription {
        id: s.id.clone(),
        client_reference: required(&s.metadata, CHECKOUT_KEY, "subscription", &s.id)?,
        status,
        current_period_start: timestamp(&s.current_period_start)?,
        current_period_end: timestamp(&s.current_period_end)?,
        trial_end: s.trial_end.as_deref().map(timestamp).transpose()?,
        cancel_at_period_end: s.cancel_at_period_end,
        // Polar has no paused collection.
        collection_paused: false,
        canceled_at: s.canceled_at.as_deref().map(timestamp).transpose()?,
        cancel_reason: s.customer_cancellation_comment.clone().unwrap_or_default(),
        // A Polar subscription sells one product (Coffer's mirrored price), with no quantity.
        price: s.product_id.clone(),
        quantity: None,
        // Polar ends its own dunning, revoking the subscription (decision 0034).
        retries_exhausted: false,
        version: version(&s.created_at, s.modified_at.as_deref())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: &str, reason: &str, net: i64) -> wire::Order {
        serde_json::from_value(serde_json::json!({
            "id": "ord_1",
            "created_at": "2026-01-01T10:00:00Z",
            "modified_at": "2026-01-01T10:00:01.000250Z",
            "status": status,
            "net_amount": net,
            "refunded_amount": 0,
            "currency": "usd",
            "billing_reason": reason,
            "metadata": {"coffer_checkout_id": "0193c7a4-7e2b-7cc0-8000-000000000001"},
        }))
        .unwrap()
    }

    #[test]
    fn checkout_statuses() {
        use PaymentStatus::*;
        use Status::*;
        let state = |s, paid| checkout_state(s, paid).unwrap();
        assert_eq!(state("open", true), (Open, Unpaid));
        assert_eq!(state("confirmed", true), (Open, Unpaid));
        assert_eq!(state("succeeded", true), (Complete, Paid));
        assert_eq!(state("succeeded", false), (Complete, NoPaymentRequired));
        assert_eq!(state("expired", true), (Expired, Unpaid));
        assert_eq!(state("failed", true), (Expired, Unpaid));
        assert!(checkout_state("exploded", true).is_err());
    }

    #[test]
    fn a_checkout_ends_at_coffer_s_time() {
        let at = |t: OffsetDateTime| t.format(&Rfc3339).unwrap();
        let now = OffsetDateTime::now_utc();
        let checkout = |status: &str, coffer: OffsetDateTime| -> wire::Checkout {
            serde_json::from_value(serde_json::json!({
                "id": "co_1",
                "created_at": at(now),
                "modified_at": null,
                "status": status,
                "url": "https://sandbox.polar.sh/checkout/x",
                "expires_at": at(now + time::Duration::hours(24)),
                "metadata": {
                    "coffer_checkout_id": "0193c7a4-7e2b-7cc0-8000-000000000001",
                    "coffer_expires_at": coffer.unix_timestamp().to_string(),
                },
            }))
            .unwrap()
        };
        let soon = now + time::Duration::minutes(30);
        let open = super::checkout(&checkout("open", soon)).unwrap();
        assert_eq!(open.status, Status::Open);
        assert_eq!(open.expires_at.unix_timestamp(), soon.unix_timestamp());
        let past = now - time::Duration::minutes(1);
        assert_eq!(
            super::checkout(&checkout("confirmed", past))
                .unwrap()
                .status,
            Status::Expired
        );
        assert_eq!(
            super::checkout(&checkout("succeeded", past))
                .unwrap()
                .status,
            Status::Complete
        );
    }

    #[test]
    fn orders_are_payments_with_their_net_amount_and_a_microsecond_version() {
        let p = payment(&order("partially_refunded", "purchase", 9_900)).unwrap();
        assert_eq!(p.status, PaymentOutcome::Succeeded);
        assert_eq!((p.amount, p.currency.as_str()), (9_900, "USD"));
        assert_eq!(p.version, 1_767_261_601_000_250);
        assert_eq!(
            payment(&order("void", "purchase", 1)).unwrap().failure_code,
            Some("order_void".into())
        );
        assert_eq!(
            payment(&order("pending", "purchase", 1)).unwrap().status,
            PaymentOutcome::RequiresAction
        );
        assert!(is_checkout_payment(&order(
            "paid",
            "subscription_create",
            1
        )));
        assert!(!is_checkout_payment(&order(
            "paid",
            "subscription_create",
            0
        )));
        assert!(!is_checkout_payment(&order(
            "paid",
            "subscription_cycle",
            1
        )));
        let mut foreign = order("paid", "purchase", 1);
        foreign.metadata.clear();
        assert!(matches!(
            payment(&foreign),
            Err(ProviderError::Definitive { code, .. }) if code == "not_coffer_s"
        ));
    }

    #[test]
    fn currencies_polar_counts_alike() {
        let c = |s| currency(Currency::parse(s).unwrap());
        assert_eq!(c("USD").unwrap(), "usd");
        assert_eq!(c("JPY").unwrap(), "jpy");
        for odd in ["ISK", "KWD", "BGN"] {
            assert!(c(odd).is_err(), "{odd}");
        }
    }
}
