//! Subscriptions: their statuses and the one state machine they move through, and the read
//! model. Changes come from the provider (its events, fetched) and, with the lifecycle RPCs,
//! from Coffer's own calls; both go through [`SubscriptionStatus::transition`].

use time::OffsetDateTime;

use crate::domain::ids::{CheckoutId, CustomerId, PlanId, PriceId, SubscriptionId};

/// A subscription's status: Stripe's list. Only TRIALING and ACTIVE are reachable until the
/// lifecycle RPCs and renewals come; the rest are here so the stored values and the API do
/// not change then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    Incomplete,
    IncompleteExpired,
    Trialing,
    Active,
    PastDue,
    Canceled,
    Unpaid,
    Paused,
}

impl SubscriptionStatus {
    pub const ALL: [SubscriptionStatus; 8] = [
        SubscriptionStatus::Incomplete,
        SubscriptionStatus::IncompleteExpired,
        SubscriptionStatus::Trialing,
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Canceled,
        SubscriptionStatus::Unpaid,
        SubscriptionStatus::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Incomplete => "incomplete",
            SubscriptionStatus::IncompleteExpired => "incomplete_expired",
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Canceled => "canceled",
            SubscriptionStatus::Unpaid => "unpaid",
            SubscriptionStatus::Paused => "paused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The one state machine of subscriptions, Stripe's transitions: INCOMPLETE becomes
    /// ACTIVE/TRIALING once paid or INCOMPLETE_EXPIRED; TRIALING and ACTIVE move among
    /// themselves and to PAST_DUE, PAUSED or CANCELED; PAST_DUE recovers or ends
    /// UNPAID/CANCELED; CANCELED and INCOMPLETE_EXPIRED are final. Staying is always allowed
    /// (a repeated event). An illegal move names both ends, for a FAILED_PRECONDITION that
    /// says the current status.
    pub fn transition(
        self,
        to: SubscriptionStatus,
    ) -> Result<SubscriptionStatus, IllegalTransition> {
        use SubscriptionStatus::*;
        let legal = self == to
            || matches!(
                (self, to),
                (Incomplete, Trialing | Active | IncompleteExpired)
                    | (Trialing, Active | PastDue | Paused | Canceled)
                    | (Active, PastDue | Paused | Canceled)
                    | (PastDue, Active | Unpaid | Canceled)
                    | (Unpaid, Active | Canceled)
                    | (Paused, Active | Trialing | Canceled)
            );
        if legal {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }
}

/// A move the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {} subscription cannot become {}", from.as_str(), to.as_str())]
pub struct IllegalTransition {
    pub from: SubscriptionStatus,
    pub to: SubscriptionStatus,
}

/// A subscription made by a completed SUBSCRIPTION checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub customer: CustomerId,
    pub plan: Option<PlanId>,
    pub price: Option<PriceId>,
    pub quantity: u32,
    pub status: SubscriptionStatus,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub trial_end: Option<OffsetDateTime>,
    pub account: String,
    pub provider_subscription_id: String,
    pub checkout_session: CheckoutId,
    pub created_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_trialing_and_active_are_reachable_from_checkout_and_canceled_is_final() {
        use SubscriptionStatus::*;
        assert_eq!(Trialing.transition(Active), Ok(Active));
        assert_eq!(
            Active.transition(Trialing),
            Err(IllegalTransition {
                from: Active,
                to: Trialing
            })
        );
        for to in SubscriptionStatus::ALL {
            assert_eq!(Canceled.transition(to).is_ok(), to == Canceled);
            assert_eq!(
                IncompleteExpired.transition(to).is_ok(),
                to == IncompleteExpired
            );
        }
    }

    #[test]
    fn dunning_recovers_or_ends() {
        use SubscriptionStatus::*;
        assert!(Active.transition(PastDue).is_ok());
        assert!(PastDue.transition(Active).is_ok());
        assert!(PastDue.transition(Unpaid).is_ok());
        assert!(PastDue.transition(Canceled).is_ok());
        assert!(Unpaid.transition(PastDue).is_err());
        assert_eq!(
            Canceled.transition(Active).unwrap_err().to_string(),
            "a canceled subscription cannot become active"
        );
    }

    #[test]
    fn names_round_trip() {
        for s in SubscriptionStatus::ALL {
            assert_eq!(SubscriptionStatus::parse(s.as_str()), Some(s));
        }
    }
}
