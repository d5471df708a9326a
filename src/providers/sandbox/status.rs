//! The sandbox's own statuses, where its states are not Coffer's: a payment's (one card
//! attempt after another on a session, never `created` or `disputed`) and a subscription's (it
//! starts `trialing` or `active` and may end `canceled`). Each spells its values as the sandbox's tables
//! (their CHECKs) and its event objects do.
//!
//! A session's status, payment status and mode, and a refund's status, are the same sets with
//! the same spelling as Coffer's own, so the sandbox uses the domain's enums for them
//! ([`crate::domain::checkout::Status`], [`crate::domain::checkout::PaymentStatus`],
//! [`crate::domain::checkout::Mode`], [`crate::domain::payment::RefundStatus`]).

use crate::domain::subscription::SubscriptionStatus;
use crate::providers::PaymentOutcome;

/// A sandbox payment's status: its last card attempt's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentState {
    /// The card waits on its confirmation step (4000 0025 0000 3155).
    RequiresAction,
    Succeeded,
    /// The last attempt was declined (the row has a failure code); another may succeed.
    Failed,
}

impl PaymentState {
    pub const ALL: [PaymentState; 3] = [
        PaymentState::RequiresAction,
        PaymentState::Succeeded,
        PaymentState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentState::RequiresAction => "requires_action",
            PaymentState::Succeeded => "succeeded",
            PaymentState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl From<PaymentState> for PaymentOutcome {
    fn from(p: PaymentState) -> Self {
        match p {
            PaymentState::RequiresAction => PaymentOutcome::RequiresAction,
            PaymentState::Succeeded => PaymentOutcome::Succeeded,
            PaymentState::Failed => PaymentOutcome::Failed,
        }
    }
}

/// A sandbox subscription's status: it starts `trialing` or `active` (or, made by
/// CreateSubscription with a declined first charge, `incomplete`, which ends
/// `incomplete_expired` after 23 hours unless paid); a failed renewal makes it `past_due`, its
/// retries running out `unpaid` (or `canceled`); a cancel ends it `canceled`; a trial that ends
/// without a card may end `paused` until a card resumes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Made by CreateSubscription, its first charge failed.
    Incomplete,
    /// Incomplete for 23 hours, its first charge never paid: final.
    IncompleteExpired,
    Trialing,
    Active,
    PastDue,
    Unpaid,
    Canceled,
    /// A trial ended without a payment method, the tenant's setting saying pause.
    Paused,
}

impl SubscriptionState {
    pub const ALL: [SubscriptionState; 8] = [
        SubscriptionState::Incomplete,
        SubscriptionState::IncompleteExpired,
        SubscriptionState::Trialing,
        SubscriptionState::Active,
        SubscriptionState::PastDue,
        SubscriptionState::Unpaid,
        SubscriptionState::Canceled,
        SubscriptionState::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::Incomplete => "incomplete",
            SubscriptionState::IncompleteExpired => "incomplete_expired",
            SubscriptionState::Trialing => "trialing",
            SubscriptionState::Active => "active",
            SubscriptionState::PastDue => "past_due",
            SubscriptionState::Unpaid => "unpaid",
            SubscriptionState::Canceled => "canceled",
            SubscriptionState::Paused => "paused",
        }
    }

    /// The sandbox's state of Coffer's status, for the statuses the sandbox makes.
    pub fn of(status: SubscriptionStatus) -> Option<Self> {
        Self::parse(status.as_str())
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl From<SubscriptionState> for SubscriptionStatus {
    fn from(s: SubscriptionState) -> Self {
        match s {
            SubscriptionState::Incomplete => SubscriptionStatus::Incomplete,
            SubscriptionState::IncompleteExpired => SubscriptionStatus::IncompleteExpired,
            SubscriptionState::Trialing => SubscriptionStatus::Trialing,
            SubscriptionState::Active => SubscriptionStatus::Active,
            SubscriptionState::PastDue => SubscriptionStatus::PastDue,
            SubscriptionState::Unpaid => SubscriptionStatus::Unpaid,
            SubscriptionState::Canceled => SubscriptionStatus::Canceled,
            SubscriptionState::Paused => SubscriptionStatus::Paused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::checkout::{Mode, PaymentStatus, Status};
    use crate::domain::payment::RefundStatus;

    #[test]
    fn a_payment_state_round_trips_in_the_tables_spelling() {
        // sandbox_payments' CHECK: ('requires_action', 'succeeded', 'failed').
        let spelled: Vec<&str> = PaymentState::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(spelled, ["requires_action", "succeeded", "failed"]);
        for p in PaymentState::ALL {
            assert_eq!(PaymentState::parse(p.as_str()), Some(p));
        }
        for bad in ["pending", "SUCCEEDED", "succeeded ", ""] {
            assert_eq!(PaymentState::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_payment_state_is_the_outcome_of_the_same_name() {
        assert_eq!(
            PaymentState::ALL.map(PaymentOutcome::from),
            [
                PaymentOutcome::RequiresAction,
                PaymentOutcome::Succeeded,
                PaymentOutcome::Failed
            ]
        );
    }

    #[test]
    fn a_subscription_state_round_trips_and_is_coffers_status_of_the_same_name() {
        // sandbox_subscriptions' CHECK: ('incomplete', 'incomplete_expired', 'trialing',
        // 'active', 'past_due', 'unpaid', 'canceled', 'paused').
        for s in SubscriptionState::ALL {
            assert_eq!(SubscriptionState::parse(s.as_str()), Some(s));
            assert_eq!(SubscriptionStatus::from(s).as_str(), s.as_str());
        }
        for bad in ["expired", "Active", ""] {
            assert_eq!(SubscriptionState::parse(bad), None, "{bad:?}");
        }
    }

    /// The sandbox stores and sends these with the domain's spelling: its tables' CHECKs
    /// allow exactly these values, each of which the domain reads back as itself.
    #[test]
    fn the_domain_enums_the_sandbox_reuses_read_every_value_its_tables_allow() {
        for s in ["open", "complete", "expired"] {
            assert_eq!(Status::parse(s).map(Status::as_str), Some(s));
        }
        for s in ["unpaid", "paid", "no_payment_required"] {
            assert_eq!(PaymentStatus::parse(s).map(PaymentStatus::as_str), Some(s));
        }
        for s in ["payment", "subscription"] {
            assert_eq!(Mode::parse(s).map(Mode::as_str), Some(s));
        }
        for s in ["pending", "succeeded", "failed"] {
            assert_eq!(RefundStatus::parse(s).map(RefundStatus::as_str), Some(s));
        }
    }
}
