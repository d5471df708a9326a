//! Payments, refunds and subscriptions: their statuses and the transitions between them.
//!
//! ```text
//!            ┌──────────────► PROVIDER_PENDING ──┐ (3-D Secure and the like)
//!            │                   │   ▲            │
//!  CREATED ──┼──► FAILED ◄───────┘   │            ├──► SUCCEEDED ◄──► DISPUTED
//!            │      │  └─────────────┘            │
//!            │      └──────────────────────────────┘ (a later card attempt)
//!            └──► EXPIRED, CANCELED (final)  ◄── CREATED, PROVIDER_PENDING, FAILED
//! ```
//!
//! A FAILED payment is not final: as with Stripe's payment intents, a declined card leaves the
//! checkout session open and the customer may try another card, so a FAILED payment may still
//! succeed (or fail again with another code) while its session is open. It ends EXPIRED when
//! the session expires unpaid.
//!
//! SUCCEEDED is final for the charge itself: refunds change `amount_refunded`, not the status,
//! and a dispute moves it to DISPUTED and back (a dispute won).
//!
//! One exception is allowed on the provider's word: an EXPIRED payment may become SUCCEEDED.
//! Coffer expires a session by its own clock at `expires_at`; if the provider says it took the
//! money in the last second, the money was taken, and refusing to record it would hide it.

use time::OffsetDateTime;

use super::Invalid;
use super::ids::{CheckoutId, CustomerId, PaymentId, RefundId};
use super::money::Currency;

/// Where a payment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PaymentStatus {
    Created,
    ProviderPending,
    Succeeded,
    Failed,
    Expired,
    Canceled,
    Disputed,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 7] = [
        PaymentStatus::Created,
        PaymentStatus::ProviderPending,
        PaymentStatus::Succeeded,
        PaymentStatus::Failed,
        PaymentStatus::Expired,
        PaymentStatus::Canceled,
        PaymentStatus::Disputed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Created => "created",
            PaymentStatus::ProviderPending => "provider_pending",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Expired => "expired",
            PaymentStatus::Canceled => "canceled",
            PaymentStatus::Disputed => "disputed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether `self → to` is allowed. Staying put is (a repeated event).
    pub fn can_become(self, to: PaymentStatus) -> bool {
        use PaymentStatus::*;
        self == to
            || matches!(
                (self, to),
                (
                    Created | ProviderPending | Failed,
                    ProviderPending | Succeeded | Failed | Expired | Canceled
                ) | (Succeeded, Disputed)
                    | (Disputed, Succeeded)
                    | (Expired, Succeeded)
            )
    }

    /// The state machine: `to`, or why not.
    pub fn transition(self, to: PaymentStatus) -> Result<PaymentStatus, Invalid> {
        if self.can_become(to) {
            Ok(to)
        } else {
            Err(Invalid::new(format!(
                "a {} payment cannot become {}",
                self.as_str(),
                to.as_str()
            )))
        }
    }

    /// Whether money was taken and may be given back.
    pub fn refundable(self) -> bool {
        self == PaymentStatus::Succeeded
    }
}

/// Where a refund is. PENDING may become SUCCEEDED or FAILED; both are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    Pending,
    Succeeded,
    Failed,
}

impl RefundStatus {
    pub const ALL: [RefundStatus; 3] = [
        RefundStatus::Pending,
        RefundStatus::Succeeded,
        RefundStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub fn can_become(self, to: RefundStatus) -> bool {
        self == to || self == RefundStatus::Pending
    }
}

/// A refund reason, as Stripe names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundReason {
    Unspecified,
    RequestedByCustomer,
    Duplicate,
    Fraudulent,
}

impl RefundReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundReason::Unspecified => "",
            RefundReason::RequestedByCustomer => "requested_by_customer",
            RefundReason::Duplicate => "duplicate",
            RefundReason::Fraudulent => "fraudulent",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            RefundReason::Unspecified,
            RefundReason::RequestedByCustomer,
            RefundReason::Duplicate,
            RefundReason::Fraudulent,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// A payment, as Coffer holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub id: PaymentId,
    pub customer: CustomerId,
    /// The session that collected it; `None` for a charge of a subscription CreateSubscription
    /// made.
    pub checkout_session: Option<CheckoutId>,
    /// The subscription whose period it pays (a renewal, a proration, or CreateSubscription's
    /// first charge); `None` for a session's own payment.
    pub subscription: Option<crate::domain::ids::SubscriptionId>,
    /// The period it pays for: its start, and its end where known.
    pub period: Option<(OffsetDateTime, Option<OffsetDateTime>)>,
    pub account: String,
    pub amount: i64,
    pub currency: Currency,
    pub status: PaymentStatus,
    pub failure_code: Option<String>,
    pub card_brand: Option<String>,
    pub card_last4: Option<String>,
    pub amount_refunded: i64,
    /// What lost disputes took back, in minor units.
    pub amount_lost: i64,
    pub provider_payment_id: Option<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// Where a dispute (a chargeback) is, as Coffer tells them apart: OPEN until the bank decides,
/// then WON (the money stays) or LOST (it is taken back). Providers' finer states (Stripe's
/// needs_response, under_review, warning_*) are all OPEN here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisputeStatus {
    Open,
    Won,
    Lost,
}

impl DisputeStatus {
    pub const ALL: [DisputeStatus; 3] =
        [DisputeStatus::Open, DisputeStatus::Won, DisputeStatus::Lost];

    pub fn as_str(self) -> &'static str {
        match self {
            DisputeStatus::Open => "open",
            DisputeStatus::Won => "won",
            DisputeStatus::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// The payment's state its disputes make: DISPUTED while any is open or lost (with what the
/// lost ones took), SUCCEEDED once every one was won. `disputes` holds each dispute's status and
/// amount.
pub fn disputed_state(disputes: &[(DisputeStatus, i64)]) -> (PaymentStatus, i64) {
    let lost: i64 = disputes
        .iter()
        .filter(|(s, _)| *s == DisputeStatus::Lost)
        .map(|(_, a)| *a)
        .sum();
    let settled_won = disputes.iter().all(|(s, _)| *s == DisputeStatus::Won);
    if settled_won {
        (PaymentStatus::Succeeded, 0)
    } else {
        (PaymentStatus::Disputed, lost)
    }
}

/// A refund of (part of) a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: RefundId,
    pub payment: PaymentId,
    pub amount: i64,
    pub currency: Currency,
    pub reason: RefundReason,
    pub status: RefundStatus,
    pub failure_code: Option<String>,
    pub provider_refund_id: Option<String>,
    pub created_at: OffsetDateTime,
}

/// What may still be refunded of `amount` with `refunded` given back and `pending` asked for:
/// the default amount of a refund, and its ceiling.
pub fn refundable_rest(amount: i64, refunded: i64, pending: i64) -> i64 {
    (amount - refunded - pending).max(0)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn disputes_make_the_payments_state() {
        use DisputeStatus::*;
        assert_eq!(disputed_state(&[(Open, 500)]), (PaymentStatus::Disputed, 0));
        assert_eq!(disputed_state(&[(Won, 500)]), (PaymentStatus::Succeeded, 0));
        assert_eq!(
            disputed_state(&[(Lost, 500)]),
            (PaymentStatus::Disputed, 500)
        );
        assert_eq!(
            disputed_state(&[(Won, 500), (Lost, 300), (Open, 200)]),
            (PaymentStatus::Disputed, 300)
        );
        for s in DisputeStatus::ALL {
            assert_eq!(DisputeStatus::parse(s.as_str()), Some(s));
        }
        // The two moves disputes make are the state machine's.
        assert!(PaymentStatus::Succeeded.can_become(PaymentStatus::Disputed));
        assert!(PaymentStatus::Disputed.can_become(PaymentStatus::Succeeded));
    }
    use PaymentStatus::*;

    #[test]
    fn a_declined_payment_may_still_succeed_on_another_card() {
        assert_eq!(Created.transition(Failed).unwrap(), Failed);
        assert_eq!(Failed.transition(Failed).unwrap(), Failed);
        assert_eq!(Failed.transition(Succeeded).unwrap(), Succeeded);
        assert_eq!(Failed.transition(Expired).unwrap(), Expired);
    }

    #[test]
    fn money_taken_is_never_untaken() {
        for to in [Created, ProviderPending, Failed, Expired, Canceled] {
            assert!(Succeeded.transition(to).is_err(), "succeeded → {to:?}");
        }
        assert!(Succeeded.can_become(Disputed) && Disputed.can_become(Succeeded));
        assert!(Expired.can_become(Succeeded), "the provider's late success");
        for to in [Created, ProviderPending, Failed] {
            assert!(!Expired.can_become(to) && !Canceled.can_become(to));
        }
        assert!(!Expired.can_become(Canceled) && !Canceled.can_become(Expired));
        assert!(!Canceled.can_become(Succeeded));
    }

    #[test]
    fn refunds_settle_once() {
        use RefundStatus::*;
        assert!(Pending.can_become(Succeeded) && Pending.can_become(Failed));
        assert!(!Succeeded.can_become(Failed) && !Failed.can_become(Succeeded));
        assert!(!Succeeded.can_become(Pending));
    }

    #[test]
    fn names_round_trip() {
        for s in PaymentStatus::ALL {
            assert_eq!(PaymentStatus::parse(s.as_str()), Some(s));
        }
        for s in RefundStatus::ALL {
            assert_eq!(RefundStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(
            RefundReason::parse("duplicate"),
            Some(RefundReason::Duplicate)
        );
        assert_eq!(RefundReason::parse("because"), None);
    }

    fn status() -> impl Strategy<Value = PaymentStatus> {
        prop::sample::select(PaymentStatus::ALL.to_vec())
    }

    proptest! {
        /// Whatever the provider reports in whatever order, a payment that succeeded is
        /// succeeded or disputed afterwards, and final states stay final (but for a late
        /// success), with every step the machine allowed.
        #[test]
        fn any_walk_keeps_the_invariants(steps in prop::collection::vec(status(), 0..40)) {
            let mut at = Created;
            let mut succeeded = false;
            for to in steps {
                match at.transition(to) {
                    Ok(next) => {
                        prop_assert!(at.can_become(next));
                        if succeeded {
                            prop_assert!(matches!(next, Succeeded | Disputed));
                        }
                        if at == Canceled {
                            prop_assert_eq!(next, Canceled);
                        }
                        at = next;
                        succeeded |= at == Succeeded;
                    }
                    Err(_) => prop_assert!(!at.can_become(to)),
                }
            }
        }

        #[test]
        fn the_rest_never_goes_negative(amount in 1i64..1_000_000, r in 0i64..1_000_000, p in 0i64..1_000_000) {
            let rest = refundable_rest(amount, r, p);
            prop_assert!(rest >= 0 && rest <= amount);
        }
    }
}
