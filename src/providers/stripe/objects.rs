//! Stripe's objects ([`super::wire`]) as the port's ([`crate::providers`]).
//!
//! Stripe sends no object versions (`created` is the only time, and it does not move), so
//! each answer's version is the time its request was sent, in microseconds
//! ([`version_now`], taken before the first attempt): what an answer says was true at that
//! time or later, so of two answers the one asked later is at least as new, and "newest
//! fetch wins" under the appliers' `version >` checks. The time the answer was *read* would
//! not do: a create's answer read late (a slow network) would outrank the fetch of a webhook
//! that raced it and saw the session already completed.

use time::OffsetDateTime;
use uuid::Uuid;

use super::api::{CHECKOUT_KEY, REFUND_KEY};
use super::money::from_stripe;
use super::wire::{self, Expandable};
use crate::domain::checkout::{PaymentStatus, Status};
use crate::domain::payment::{DisputeStatus, RefundStatus};
use crate::domain::proration::{Behavior, Line, LineKind};
use crate::domain::subscription::SubscriptionStatus;
use crate::providers::{
    PaymentOutcome, PlanChangePreview, ProviderCheckout, ProviderDispute, ProviderError,
    ProviderPayment, ProviderRefund, ProviderSubscription,
};

/// The version of the answer to a request sent now: microseconds since the epoch.
pub fn version_now() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000) as i64
}

fn unexpected(what: &str, value: &str) -> ProviderError {
    ProviderError::definitive(
        "unexpected_answer",
        format!("Stripe answered a {what} Coffer does not know: {value:?}"),
    )
}

fn time(what: &str, t: i64) -> Result<OffsetDateTime, ProviderError> {
    OffsetDateTime::from_unix_timestamp(t).map_err(|_| unexpected(what, &t.to_string()))
}

/// Coffer's id in `metadata[key]`, when there and a UUID.
pub fn coffer_id(metadata: &wire::Metadata, key: &str) -> Option<Uuid> {
    metadata.get(key).and_then(|v| Uuid::parse_str(v).ok())
}

/// Coffer's checkout id of a session: its `client_reference_id`, else its metadata.
pub fn session_reference(s: &wire::Session) -> Option<Uuid> {
    s.client_reference_id
        .as_deref()
        .and_then(|r| Uuid::parse_str(r).ok())
        .or_else(|| coffer_id(&s.metadata, CHECKOUT_KEY))
}

pub fn checkout(s: &wire::Session, version: i64) -> Result<ProviderCheckout, ProviderError> {
    let status = match s.status.as_deref() {
        None | Some("open") => Status::Open,
        Some("complete") => Status::Complete,
        Some("expired") => Status::Expired,
        Some(other) => return Err(unexpected("session status", other)),
    };
    let payment_status = match s.payment_status.as_str() {
        "paid" => PaymentStatus::Paid,
        "unpaid" => PaymentStatus::Unpaid,
        "no_payment_required" => PaymentStatus::NoPaymentRequired,
        other => return Err(unexpected("session payment status", other)),
    };
    let reference = session_reference(s);
    let (mut payment, mut subscription) = (None, None);
    if let Some(reference) = reference {
        if let Some(pi) = s.payment_intent.as_ref().and_then(Expandable::object) {
            payment = session_payment(pi, reference, version)?;
        }
        if let Some(sub) = s.subscription.as_ref().and_then(Expandable::object) {
            subscription = Some(Box::new(self::subscription(sub, reference, version)?));
        }
        if payment.is_none()
            && s.mode == "subscription"
            && let Some(invoice) = s.invoice.as_ref().and_then(Expandable::object)
        {
            payment = invoice_payment(invoice, reference, version)?;
        }
    }
    Ok(ProviderCheckout {
        id: s.id.clone(),
        client_reference: reference,
        // Stripe clears it once the session is complete or expired; empty keeps the one
        // Coffer recorded (`store::checkout::record_provider_session`).
        url: s.url.clone().unwrap_or_default(),
        status,
        payment_status,
        expires_at: time("session expires_at", s.expires_at)?,
        version,
        payment,
        subscription,
    })
}

/// A session's payment intent, when it says something happened: one the customer has not
/// tried to pay yet, or one cancelled with its session (which expires the payment by
/// itself), says nothing.
fn session_payment(
    pi: &wire::PaymentIntent,
    reference: Uuid,
    version: i64,
) -> Result<Option<ProviderPayment>, ProviderError> {
    let untouched = pi.status == "requires_payment_method" && pi.last_payment_error.is_none();
    if untouched || matches!(pi.status.as_str(), "canceled" | "requires_confirmation") {
        return Ok(None);
    }
    payment(pi, reference, version).map(Some)
}

/// A subscription session's first payment, from its invoice's payments, once the invoice is
/// paid (a declined first payment keeps the session open: Checkout asks again).
fn invoice_payment(
    invoice: &wire::Invoice,
    reference: Uuid,
    version: i64,
) -> Result<Option<ProviderPayment>, ProviderError> {
    if invoice.status.as_deref() != Some("paid") || invoice.amount_paid == 0 {
        return Ok(None);
    }
    let intent = invoice
        .payments
        .iter()
        .flat_map(|l| &l.data)
        .filter(|p| p.status.as_deref() == Some("paid"))
        .find_map(|p| p.payment.payment_intent.as_ref())
        .or(invoice.payment_intent.as_ref());
    let Some(intent) = intent else {
        return Ok(None);
    };
    if let Some(pi) = intent.object() {
        return payment(pi, reference, version).map(Some);
    }
    let (amount, currency) = from_stripe(invoice.amount_paid, &invoice.currency)?;
    Ok(Some(ProviderPayment {
        renewal: None,
        period_end: None,
        subscription: None,
        id: intent.id().to_owned(),
        client_reference: reference,
        amount,
        currency,
        status: PaymentOutcome::Succeeded,
        failure_code: None,
        card: None,
        amount_refunded: 0,
        version,
    }))
}

/// A subscription's invoice as the port's payment: the payment intent that paid it (or its
/// latest declined attempt), carrying `sub`, the subscription it pays for, so both are applied
/// together. The first invoice of a subscription a session made is that session's own
/// payment (`renewal: None`, found by the checkout id); every other invoice — the first one
/// of a subscription CreateSubscription made, every renewal (`subscription_cycle`), a
/// change's — is the charge of the period its lines bill for, one per (subscription, period
/// start) however often its events come.
pub fn invoice_charge(
    invoice: &wire::Invoice,
    pi: &wire::PaymentIntent,
    sub: ProviderSubscription,
    session_made: bool,
    version: i64,
) -> Result<ProviderPayment, ProviderError> {
    let mut p = payment(pi, sub.client_reference, version)?;
    let sessions_own =
        session_made && invoice.billing_reason.as_deref() == Some("subscription_create");
    if !sessions_own {
        let (start, end) = invoice
            .lines_period()
            .ok_or_else(|| unexpected("invoice without a billed period", &invoice.id))?;
        p.renewal = Some((sub.id.clone(), time("invoice line period start", start)?));
        p.period_end = Some(time("invoice line period end", end)?);
    }
    p.subscription = Some(Box::new(sub));
    Ok(p)
}

/// A payment intent as Coffer's payment of the checkout `reference`.
pub fn payment(
    pi: &wire::PaymentIntent,
    reference: Uuid,
    version: i64,
) -> Result<ProviderPayment, ProviderError> {
    let failed = pi.last_payment_error.as_ref();
    let (status, failure_code) = match pi.status.as_str() {
        "succeeded" => (PaymentOutcome::Succeeded, None),
        "requires_payment_method" if failed.is_some() => (
            PaymentOutcome::Failed,
            failed.and_then(|e| e.decline_code.clone().or_else(|| e.code.clone())),
        ),
        "canceled" => (PaymentOutcome::Failed, Some("canceled".to_owned())),
        "requires_payment_method"
        | "requires_confirmation"
        | "requires_action"
        | "processing"
        | "requires_capture" => (PaymentOutcome::RequiresAction, None),
        other => return Err(unexpected("payment intent status", other)),
    };
    let (amount, currency) = from_stripe(pi.amount, &pi.currency)?;
    let charge = pi.latest_charge.as_ref().and_then(Expandable::object);
    let card = charge
        .and_then(|c| c.payment_method_details.as_ref())
        .and_then(|d| d.card.as_ref())
        .and_then(|c| Some((c.brand.clone()?, c.last4.clone()?)));
    let amount_refunded = match charge {
        Some(c) => from_stripe(c.amount_refunded, &c.currency)?.0,
        None => 0,
    };
    Ok(ProviderPayment {
        renewal: None,
        period_end: None,
        subscription: None,
        id: pi.id.clone(),
        client_reference: reference,
        amount,
        currency,
        status,
        failure_code,
        card,
        amount_refunded,
        version,
    })
}

pub fn subscription(
    s: &wire::Subscription,
    reference: Uuid,
    version: i64,
) -> Result<ProviderSubscription, ProviderError> {
    let status = SubscriptionStatus::parse(&s.status)
        .ok_or_else(|| unexpected("subscription status", &s.status))?;
    // Since 2025-03-31.basil the period is each item's; before, the subscription's.
    let item = s.items.as_ref().and_then(|l| l.data.first());
    let start = item
        .and_then(|i| i.current_period_start)
        .or(s.current_period_start)
        .or(s.start_date)
        .ok_or_else(|| unexpected("subscription without a period", &s.id))?;
    let end = item
        .and_then(|i| i.current_period_end)
        .or(s.current_period_end)
        .ok_or_else(|| unexpected("subscription without a period", &s.id))?;
    Ok(ProviderSubscription {
        id: s.id.clone(),
        client_reference: reference,
        status,
        current_period_start: time("period start", start)?,
        current_period_end: time("period end", end)?,
        trial_end: s.trial_end.map(|t| time("trial end", t)).transpose()?,
        cancel_at_period_end: s.cancel_at_period_end,
        collection_paused: s.pause_collection.as_ref().is_some_and(|p| !p.is_null()),
        canceled_at: s.canceled_at.map(|t| time("canceled at", t)).transpose()?,
        cancel_reason: s
            .cancellation_details
            .as_ref()
            .and_then(|d| d.comment.clone())
            .unwrap_or_default(),
        price: item.and_then(|i| i.price.as_ref()).map(|p| p.id.clone()),
        quantity: item
            .and_then(|i| i.quantity)
            .and_then(|q| u32::try_from(q).ok()),
        retries_exhausted: retries_exhausted(s, status),
        version,
    })
}

/// Whether Stripe's dunning has ended without collecting: `unpaid` (the dashboard's "mark the
/// subscription as unpaid" once retries run out), or past due with Stripe given up on its
/// latest invoice (the dashboard's "leave the subscription past-due"): that invoice still
/// open, collected automatically, attempted, and with no next attempt. The invoice is readable
/// only where it was expanded (a fetch); elsewhere a past-due subscription reads `false`.
fn retries_exhausted(s: &wire::Subscription, status: SubscriptionStatus) -> bool {
    if status == SubscriptionStatus::Unpaid {
        return true;
    }
    let Some(invoice) = s.latest_invoice.as_ref().and_then(Expandable::object) else {
        return false;
    };
    status == SubscriptionStatus::PastDue
        && invoice.status.as_deref() == Some("open")
        && invoice.collection_method.as_deref() == Some("charge_automatically")
        && invoice.attempted
        && invoice.next_payment_attempt.is_none()
}

/// Stripe's invoice preview of a plan change as the port's: its proration lines (a credit
/// negative, a charge positive) and their sum when positive — what the change adds, charged at
/// once with `always_invoice`, on the next invoice with `create_prorations`. The preview's
/// other lines (the next period's own charge) are not the change's. Without proration, nothing.
pub fn preview(
    invoice: &wire::InvoicePreview,
    behavior: Behavior,
    proration_time: OffsetDateTime,
) -> PlanChangePreview {
    let lines: Vec<Line> = if behavior == Behavior::None {
        Vec::new()
    } else {
        invoice
            .lines
            .data
            .iter()
            .filter(|l| l.is_proration())
            .map(|l| Line {
                amount: l.amount,
                kind: if l.amount < 0 {
                    LineKind::UnusedTime
                } else {
                    LineKind::RemainingTime
                },
            })
            .collect()
    };
    let net: i64 = lines.iter().map(|l| l.amount).sum();
    PlanChangePreview {
        amount_due: net.max(0),
        currency: invoice.currency.to_ascii_uppercase(),
        lines,
        proration_time,
    }
}

pub fn refund_status(status: Option<&str>) -> Result<RefundStatus, ProviderError> {
    Ok(match status.unwrap_or("pending") {
        "pending" | "requires_action" => RefundStatus::Pending,
        "succeeded" => RefundStatus::Succeeded,
        "failed" | "canceled" => RefundStatus::Failed,
        other => return Err(unexpected("refund status", other)),
    })
}

/// A refund Coffer asked for (its metadata names Coffer's refund); `None` for one made
/// elsewhere (the dashboard), which Coffer has no row for.
pub fn refund(r: &wire::Refund, version: i64) -> Result<Option<ProviderRefund>, ProviderError> {
    let Some(reference) = coffer_id(&r.metadata, REFUND_KEY) else {
        return Ok(None);
    };
    let payment = r
        .payment_intent
        .as_ref()
        .map(|p| p.id().to_owned())
        .unwrap_or_default();
    Ok(Some(ProviderRefund {
        id: r.id.clone(),
        payment,
        client_reference: reference,
        amount: from_stripe(r.amount, &r.currency)?.0,
        status: refund_status(r.status.as_deref())?,
        version,
    }))
}

/// Stripe's dispute statuses: the `warning_*` ones are inquiries (no money moved yet);
/// `won`, `warning_closed` (an inquiry that never became a chargeback) and `prevented` keep
/// the money; `lost` does not.
pub fn dispute_status(status: &str) -> Result<DisputeStatus, ProviderError> {
    Ok(match status {
        "warning_needs_response" | "warning_under_review" | "needs_response" | "under_review" => {
            DisputeStatus::Open
        }
        "won" | "warning_closed" | "prevented" => DisputeStatus::Won,
        "lost" => DisputeStatus::Lost,
        other => return Err(unexpected("dispute status", other)),
    })
}

pub fn dispute(
    d: &wire::Dispute,
    reference: Uuid,
    version: i64,
) -> Result<ProviderDispute, ProviderError> {
    let (amount, currency) = from_stripe(d.amount, &d.currency)?;
    Ok(ProviderDispute {
        id: d.id.clone(),
        client_reference: reference,
        payment: d
            .payment_intent
            .as_ref()
            .map(|pi| pi.id().to_owned())
            .unwrap_or_default(),
        amount,
        currency,
        status: dispute_status(&d.status)?,
        reason: d.reason.clone(),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF: &str = "01900000-0000-7000-8000-000000000001";

    fn session(json: &str) -> ProviderCheckout {
        checkout(&serde_json::from_str(json).unwrap(), 7).unwrap()
    }

    #[test]
    fn a_paid_session_carries_its_payment() {
        let s = session(&format!(
            r#"{{"id":"cs_1","client_reference_id":"{REF}","mode":"payment","status":"complete",
                "payment_status":"paid","url":null,"expires_at":1800000000,
                "payment_intent":{{"id":"pi_1","amount":500,"currency":"usd","status":"succeeded",
                  "latest_charge":{{"id":"ch_1","amount":500,"amount_refunded":200,"currency":"usd",
                    "payment_method_details":{{"card":{{"brand":"visa","last4":"4242"}}}}}}}}}}"#
        ));
        assert_eq!(s.status, Status::Complete);
        assert_eq!(s.payment_status, PaymentStatus::Paid);
        assert_eq!(s.client_reference, Some(Uuid::parse_str(REF).unwrap()));
        assert_eq!(s.url, "");
        let p = s.payment.unwrap();
        assert_eq!(
            (p.id.as_str(), p.amount, p.currency.as_str()),
            ("pi_1", 500, "USD")
        );
        assert_eq!(p.status, PaymentOutcome::Succeeded);
        assert_eq!(p.card, Some(("visa".into(), "4242".into())));
        assert_eq!(p.amount_refunded, 200);
        assert_eq!(p.version, 7);
    }

    #[test]
    fn an_untouched_or_cancelled_intent_says_nothing() {
        for status in ["requires_payment_method", "canceled"] {
            let s = session(&format!(
                r#"{{"id":"cs_1","client_reference_id":"{REF}","mode":"payment","status":"open",
                    "payment_status":"unpaid","url":"https://checkout.stripe.com/c/pay/cs_1",
                    "expires_at":1800000000,
                    "payment_intent":{{"id":"pi_1","amount":500,"currency":"usd","status":"{status}"}}}}"#
            ));
            assert_eq!(s.payment, None, "{status}");
        }
        let declined: wire::PaymentIntent = serde_json::from_str(
            r#"{"id":"pi_1","amount":500,"currency":"usd","status":"requires_payment_method",
                "last_payment_error":{"code":"card_declined","decline_code":"insufficient_funds"}}"#,
        )
        .unwrap();
        let p = payment(&declined, Uuid::nil(), 1).unwrap();
        assert_eq!(p.status, PaymentOutcome::Failed);
        assert_eq!(p.failure_code.as_deref(), Some("insufficient_funds"));
    }

    #[test]
    fn a_subscription_session_with_its_subscription_and_first_invoice() {
        let s = session(&format!(
            r#"{{"id":"cs_1","client_reference_id":"{REF}","mode":"subscription","status":"complete",
                "payment_status":"paid","url":null,"expires_at":1800000000,"payment_intent":null,
                "subscription":{{"id":"sub_1","status":"active","trial_end":null,
                  "items":{{"object":"list","data":[{{"id":"si_1","current_period_start":1800000000,
                    "current_period_end":1802592000}}],"has_more":false}}}},
                "invoice":{{"id":"in_1","status":"paid","amount_due":2900,"amount_paid":2900,"currency":"usd",
                  "payments":{{"data":[{{"status":"paid","payment":{{"type":"payment_intent","payment_intent":"pi_9"}}}}]}}}}}}"#
        ));
        let sub = s.subscription.unwrap();
        assert_eq!(sub.status, SubscriptionStatus::Active);
        assert_eq!(sub.current_period_end.unix_timestamp(), 1_802_592_000);
        let p = s.payment.unwrap();
        assert_eq!(
            (p.id.as_str(), p.amount, p.status),
            ("pi_9", 2900, PaymentOutcome::Succeeded)
        );
    }

    #[test]
    fn stripes_dunning_has_ended_only_without_a_next_attempt_or_when_unpaid() {
        let of = |status: &str, invoice: &str| {
            let s: wire::Subscription = serde_json::from_str(&format!(
                r#"{{"id":"sub_1","status":"{status}","current_period_start":1800000000,
                    "current_period_end":1802592000,"latest_invoice":{invoice}}}"#
            ))
            .unwrap();
            subscription(&s, Uuid::nil(), 1).unwrap().retries_exhausted
        };
        let invoice = |next: &str, method: &str, state: &str| {
            format!(
                r#"{{"id":"in_1","object":"invoice","status":"{state}","currency":"usd",
                    "collection_method":"{method}","attempted":true,"attempt_count":4,
                    "next_payment_attempt":{next}}}"#
            )
        };
        let given_up = invoice("null", "charge_automatically", "open");
        assert!(of("past_due", &given_up));
        assert!(!of(
            "past_due",
            &invoice("1800259200", "charge_automatically", "open")
        ));
        assert!(!of("past_due", &invoice("null", "send_invoice", "open")));
        assert!(!of(
            "past_due",
            &invoice("null", "charge_automatically", "paid")
        ));
        assert!(!of("active", &given_up));
        assert!(!of("past_due", r#""in_1""#), "not expanded: unknown");
        assert!(of("unpaid", r#""in_1""#));
    }

    #[test]
    fn an_invoice_is_the_charge_of_the_period_its_lines_bill_or_a_sessions_own_payment() {
        let sub: wire::Subscription = serde_json::from_str(
            r#"{"id":"sub_1","status":"active","items":{"object":"list","has_more":false,
                "data":[{"id":"si_1","current_period_start":1802592000,"current_period_end":1805184000}]}}"#,
        )
        .unwrap();
        let sub = subscription(&sub, Uuid::parse_str(REF).unwrap(), 9).unwrap();
        let pi: wire::PaymentIntent = serde_json::from_str(
            r#"{"id":"pi_2","amount":2500,"currency":"usd","status":"succeeded",
                "latest_charge":{"id":"ch_2","amount":2500,"amount_refunded":0,"currency":"usd",
                  "payment_method_details":{"card":{"brand":"visa","last4":"4242"}}}}"#,
        )
        .unwrap();
        let invoice = |reason: &str| -> wire::Invoice {
            serde_json::from_str(&format!(
                r#"{{"id":"in_2","status":"paid","amount_due":2500,"amount_paid":2500,
                    "currency":"usd","billing_reason":"{reason}",
                    "period_start":1800000000,"period_end":1802592000,
                    "lines":{{"object":"list","has_more":false,"data":[{{"amount":2500,
                      "period":{{"start":1802592000,"end":1805184000}},
                      "parent":{{"subscription_item_details":{{"proration":false}}}}}}]}},
                    "payments":{{"object":"list","has_more":false,"data":[
                      {{"status":"canceled","payment":{{"type":"payment_intent","payment_intent":"pi_1"}}}},
                      {{"status":"paid","payment":{{"type":"payment_intent","payment_intent":"pi_2"}}}}]}}}}"#
            ))
            .unwrap()
        };
        let renewal = invoice("subscription_cycle");
        assert_eq!(
            renewal.intent().map(Expandable::id),
            Some("pi_2"),
            "the paid one"
        );
        // A renewal: the period its line bills, not the invoice's own (the period before).
        let p = invoice_charge(&renewal, &pi, sub.clone(), true, 9).unwrap();
        let (on, start) = p.renewal.clone().unwrap();
        assert_eq!(
            (on.as_str(), start.unix_timestamp()),
            ("sub_1", 1_802_592_000)
        );
        assert_eq!(p.period_end.unwrap().unix_timestamp(), 1_805_184_000);
        assert_eq!(
            (p.id.as_str(), p.amount, p.currency.as_str()),
            ("pi_2", 2500, "USD")
        );
        assert_eq!(p.client_reference, Uuid::parse_str(REF).unwrap());
        assert_eq!(p.subscription.as_deref(), Some(&sub));
        // The first invoice of a session's subscription is the session's own payment; that of
        // one CreateSubscription made is its first period's charge.
        let first = invoice("subscription_create");
        assert_eq!(
            invoice_charge(&first, &pi, sub.clone(), true, 9)
                .unwrap()
                .renewal,
            None
        );
        assert!(
            invoice_charge(&first, &pi, sub.clone(), false, 9)
                .unwrap()
                .renewal
                .is_some()
        );
        let mut lineless = invoice("subscription_cycle");
        lineless.lines = None;
        assert!(invoice_charge(&lineless, &pi, sub, false, 9).is_err());
    }

    #[test]
    fn a_trialing_subscription_from_the_old_shape() {
        let s: wire::Subscription = serde_json::from_str(
            r#"{"id":"sub_1","status":"trialing","current_period_start":1800000000,
                "current_period_end":1801209600,"trial_end":1801209600}"#,
        )
        .unwrap();
        let s = subscription(&s, Uuid::nil(), 1).unwrap();
        assert_eq!(s.status, SubscriptionStatus::Trialing);
        assert_eq!(s.trial_end.unwrap().unix_timestamp(), 1_801_209_600);
    }

    #[test]
    fn disputes_and_refunds() {
        for (stripe, coffer) in [
            ("warning_needs_response", DisputeStatus::Open),
            ("needs_response", DisputeStatus::Open),
            ("under_review", DisputeStatus::Open),
            ("won", DisputeStatus::Won),
            ("warning_closed", DisputeStatus::Won),
            ("lost", DisputeStatus::Lost),
        ] {
            assert_eq!(dispute_status(stripe).unwrap(), coffer);
        }
        assert!(dispute_status("charge_refunded").is_err());
        let r: wire::Refund = serde_json::from_str(&format!(
            r#"{{"id":"re_1","amount":300,"currency":"usd","status":"succeeded",
                "payment_intent":"pi_1","metadata":{{"coffer_refund_id":"{REF}"}}}}"#
        ))
        .unwrap();
        let r = refund(&r, 3).unwrap().unwrap();
        assert_eq!(
            (r.payment.as_str(), r.amount, r.status),
            ("pi_1", 300, RefundStatus::Succeeded)
        );
        let foreign: wire::Refund = serde_json::from_str(
            r#"{"id":"re_2","amount":300,"currency":"usd","status":"succeeded","metadata":{}}"#,
        )
        .unwrap();
        assert_eq!(refund(&foreign, 3).unwrap(), None);
    }
}
