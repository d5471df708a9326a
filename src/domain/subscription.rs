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

/// What a change to a subscription was, as its outbox row and `WatchSubscriptionEvents` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The subscription was made.
    Created,
    /// Its status moved (what CheckAccess answers may have changed).
    StatusChanged,
    /// What it grants changed without a status change: another price or plan, a payment of it
    /// disputed or settled.
    EntitlementsChanged,
    /// Anything else: a new period, a trial end.
    Updated,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 4] = [
        ChangeKind::Created,
        ChangeKind::StatusChanged,
        ChangeKind::EntitlementsChanged,
        ChangeKind::Updated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::StatusChanged => "status_changed",
            ChangeKind::EntitlementsChanged => "entitlements_changed",
            ChangeKind::Updated => "updated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a change stands in the outbox's order: the writing transaction's id, then the row's
/// sequence, and (for expiry) when it was written. Opaque to clients, who get it encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor {
    pub xid: i64,
    pub seq: i64,
    /// When the change was written, in Unix microseconds.
    pub at_micros: i64,
}

const CURSOR_VERSION: u8 = 1;

impl EventCursor {
    /// Before every change.
    pub const START: EventCursor = EventCursor {
        xid: 0,
        seq: 0,
        at_micros: i64::MAX,
    };

    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let mut bytes = Vec::with_capacity(25);
        bytes.push(CURSOR_VERSION);
        bytes.extend_from_slice(&self.xid.to_be_bytes());
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        bytes.extend_from_slice(&self.at_micros.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(s: &str) -> Result<Self, super::Invalid> {
        use base64::Engine as _;
        let bad = || super::Invalid::new("is not a cursor of this stream");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad())?;
        if bytes.len() != 25 || bytes[0] != CURSOR_VERSION {
            return Err(bad());
        }
        let int = |i: usize| i64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let cursor = EventCursor {
            xid: int(1),
            seq: int(9),
            at_micros: int(17),
        };
        if cursor.xid < 0 || cursor.seq < 0 {
            return Err(bad());
        }
        Ok(cursor)
    }

    /// Whether the change it points at is older than `retention` at `now`: the rows after it
    /// may have been pruned, so a stream cannot resume from it without a gap.
    pub fn expired(&self, now: OffsetDateTime, retention: time::Duration) -> bool {
        let at = OffsetDateTime::from_unix_timestamp_nanos(self.at_micros as i128 * 1_000);
        match at {
            Ok(at) => at < now - retention,
            Err(_) => true,
        }
    }
}

/// One change of a subscription, with the whole subscription as it was right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionEvent {
    pub cursor: EventCursor,
    pub kind: ChangeKind,
    pub subscription: Subscription,
    pub occurred_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_expire() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let c = EventCursor {
            xid: 7_000_123,
            seq: 42,
            at_micros: 1_800_000_000 * 1_000_000 - 5_000_000,
        };
        assert_eq!(EventCursor::decode(&c.encode()), Ok(c));
        assert!(EventCursor::decode("").is_err());
        assert!(EventCursor::decode("AAAA").is_err());
        assert!(!c.expired(now, time::Duration::seconds(10)));
        assert!(c.expired(now, time::Duration::seconds(4)));
        for k in ChangeKind::ALL {
            assert_eq!(ChangeKind::parse(k.as_str()), Some(k));
        }
    }

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
