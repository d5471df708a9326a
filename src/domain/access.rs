//! The access policy: whether a customer may use a feature now, judged from the
//! subscriptions they hold. A pure function of its inputs ([`decide`]), so `CheckAccess` can
//! answer from a cache, and the rules are tested here alone.
//!
//! A subscription's standing:
//! - TRIALING and ACTIVE allow (ACTIVE with `cancel_at_period_end` until the period ends).
//! - PAST_DUE allows for the tenant's grace period, counted from the start of the period whose
//!   renewal failed (`current_period_start`), then denies with `PAST_DUE_GRACE_OVER`.
//! - CANCELED, UNPAID, INCOMPLETE, INCOMPLETE_EXPIRED and PAUSED deny.
//! - A DISPUTED payment of the subscription denies when the tenant says so (the default).
//!
//! A feature is allowed by a subscription in good standing whose plan has it; a metered one
//! only while the period's usage is under the limit plus the customer's remaining credits.
//! Of several subscriptions, an allowing one wins (the one allowing longest); with none, the
//! answer says why the most recent one that has the feature denies.

use time::{Duration, OffsetDateTime};

use super::ids::SubscriptionId;
use super::plan::{Feature, FeatureKey, Metered};
use super::subscription::SubscriptionStatus;
use super::usage::Units;

/// Why access is allowed or denied: stable names, part of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Allowed: an ACTIVE subscription's plan has the feature.
    Active,
    /// Allowed: a TRIALING subscription's plan has the feature.
    Trialing,
    /// Allowed: PAST_DUE, within the tenant's grace period.
    PastDueGrace,
    /// Allowed: cancelled at period end, and the period has not ended.
    CancelingAtPeriodEnd,
    /// Denied: the customer holds no subscription (or is unknown).
    NoSubscription,
    /// Denied: no subscription of the customer is to a plan with this feature.
    FeatureNotInPlan,
    /// Denied: PAST_DUE past the grace period.
    PastDueGraceOver,
    /// Denied: CANCELED, or cancelled at period end and the period is over.
    SubscriptionCanceled,
    /// Denied: UNPAID (renewal retries ran out).
    SubscriptionUnpaid,
    /// Denied: INCOMPLETE or INCOMPLETE_EXPIRED (the first payment never succeeded).
    SubscriptionIncomplete,
    /// Denied: PAUSED.
    SubscriptionPaused,
    /// Denied: a payment of the subscription is disputed, and the tenant denies then.
    PaymentDisputed,
    /// Denied: the period's usage reached the limit plus the remaining credits.
    LimitReached,
}

impl Reason {
    pub fn allows(self) -> bool {
        matches!(
            self,
            Reason::Active | Reason::Trialing | Reason::PastDueGrace | Reason::CancelingAtPeriodEnd
        )
    }
}

/// Whether a DISPUTED payment takes access away (a tenant setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DisputedAccess {
    Allow,
    #[default]
    Deny,
}

/// The tenant's side of the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessPolicy {
    pub past_due_grace: Duration,
    pub disputed: DisputedAccess,
}

impl AccessPolicy {
    /// Three days of grace, as Stripe's first retry; disputes deny.
    pub const DEFAULT_GRACE: Duration = Duration::days(3);
}

impl Default for AccessPolicy {
    fn default() -> Self {
        Self {
            past_due_grace: Self::DEFAULT_GRACE,
            disputed: DisputedAccess::Deny,
        }
    }
}

/// A subscription as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    pub subscription: SubscriptionId,
    pub status: SubscriptionStatus,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub trial_end: Option<OffsetDateTime>,
    pub cancel_at_period_end: bool,
    /// A payment of it is DISPUTED.
    pub disputed: bool,
    /// Its plan's features; empty when it was bought without a plan.
    pub features: Vec<Feature>,
}

/// Usage of a metered feature's meter in the holding's current period, and the customer's
/// remaining credits on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeterUsage {
    pub used: Units,
    pub credits: Units,
}

/// The answer for one feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: Reason,
    /// The subscription the answer comes from; none with NO_SUBSCRIPTION or
    /// FEATURE_NOT_IN_PLAN.
    pub subscription: Option<SubscriptionId>,
    /// Until when the standing that allows lasts (period end, trial end, grace end), barring
    /// a change; none when denied.
    pub valid_until: Option<OffsetDateTime>,
    /// A metered feature's units left this period: the limit plus credits, less usage (0 when
    /// reached); none for a switch.
    pub remaining: Option<Units>,
}

/// A subscription's standing at `now`: allowed with until when, or denied with why.
pub fn standing(
    h: &Holding,
    now: OffsetDateTime,
    policy: &AccessPolicy,
) -> Result<(Reason, OffsetDateTime), Reason> {
    use SubscriptionStatus::*;
    let allowed = match h.status {
        Trialing => (
            Reason::Trialing,
            h.trial_end.unwrap_or(h.current_period_end),
        ),
        Active if h.cancel_at_period_end => {
            if now >= h.current_period_end {
                return Err(Reason::SubscriptionCanceled);
            }
            (Reason::CancelingAtPeriodEnd, h.current_period_end)
        }
        Active => (Reason::Active, h.current_period_end),
        PastDue => {
            let until = h.current_period_start + policy.past_due_grace;
            if now >= until {
                return Err(Reason::PastDueGraceOver);
            }
            (Reason::PastDueGrace, until)
        }
        Canceled => return Err(Reason::SubscriptionCanceled),
        Unpaid => return Err(Reason::SubscriptionUnpaid),
        Incomplete | IncompleteExpired => return Err(Reason::SubscriptionIncomplete),
        Paused => return Err(Reason::SubscriptionPaused),
    };
    if h.disputed && policy.disputed == DisputedAccess::Deny {
        return Err(Reason::PaymentDisputed);
    }
    Ok(allowed)
}

/// The metered part: whether `usage` is under the limit plus credits, and what is left.
pub fn within_limit(m: &Metered, usage: MeterUsage) -> (bool, Units) {
    let allowance = Units::whole(m.limit)
        .checked_add(usage.credits)
        .unwrap_or(Units::MAX);
    (usage.used < allowance, allowance.saturating_sub(usage.used))
}

/// Whether the customer holding `holdings` may use `feature` at `now`. `usage` gives a
/// metered feature's usage in a holding's current period (`None`: unknown, which denies).
pub fn decide(
    feature: &FeatureKey,
    holdings: &[Holding],
    now: OffsetDateTime,
    policy: &AccessPolicy,
    usage: impl Fn(&Holding, &Metered) -> Option<MeterUsage>,
) -> Decision {
    let denied = |reason| Decision {
        allowed: false,
        reason,
        subscription: None,
        valid_until: None,
        remaining: None,
    };
    if holdings.is_empty() {
        return denied(Reason::NoSubscription);
    }
    let mut best: Option<Decision> = None;
    let mut refusal: Option<(OffsetDateTime, Decision)> = None;
    for h in holdings {
        let Some(f) = h.features.iter().find(|f| &f.key == feature) else {
            continue;
        };
        let judged = match standing(h, now, policy) {
            Err(reason) => Decision {
                subscription: Some(h.subscription),
                ..denied(reason)
            },
            Ok((reason, until)) => match &f.metered {
                None => Decision {
                    allowed: true,
                    reason,
                    subscription: Some(h.subscription),
                    valid_until: Some(until),
                    remaining: None,
                },
                Some(m) => {
                    let (under, left) = match usage(h, m) {
                        Some(u) => within_limit(m, u),
                        None => (false, Units::ZERO),
                    };
                    Decision {
                        allowed: under,
                        reason: if under { reason } else { Reason::LimitReached },
                        subscription: Some(h.subscription),
                        valid_until: under.then_some(until),
                        remaining: Some(left),
                    }
                }
            },
        };
        if judged.allowed {
            if best
                .as_ref()
                .is_none_or(|b| judged.valid_until > b.valid_until)
            {
                best = Some(judged);
            }
        } else if refusal
            .as_ref()
            .is_none_or(|(end, _)| h.current_period_end > *end)
        {
            refusal = Some((h.current_period_end, judged));
        }
    }
    best.or(refusal.map(|(_, d)| d))
        .unwrap_or_else(|| denied(Reason::FeatureNotInPlan))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + s).unwrap()
    }

    const DAY: i64 = 86_400;

    fn holding(status: SubscriptionStatus) -> Holding {
        Holding {
            subscription: SubscriptionId::generate(),
            status,
            current_period_start: t(0),
            current_period_end: t(30 * DAY),
            trial_end: None,
            cancel_at_period_end: false,
            disputed: false,
            features: vec![
                Feature::parse("reports", "", 0).unwrap(),
                Feature::parse("api_calls", "calls", 100).unwrap(),
            ],
        }
    }

    fn key(k: &str) -> FeatureKey {
        FeatureKey::parse(k).unwrap()
    }

    fn units(n: u64) -> Units {
        Units::whole(n)
    }

    fn used(n: u64, credits: u64) -> impl Fn(&Holding, &Metered) -> Option<MeterUsage> {
        move |_, _| {
            Some(MeterUsage {
                used: units(n),
                credits: units(credits),
            })
        }
    }

    fn reason(h: &[Holding], f: &str, now: OffsetDateTime) -> Reason {
        decide(&key(f), h, now, &AccessPolicy::default(), used(0, 0)).reason
    }

    #[test]
    fn statuses() {
        use SubscriptionStatus::*;
        let now = t(DAY);
        for (status, want) in [
            (Active, Reason::Active),
            (Trialing, Reason::Trialing),
            (PastDue, Reason::PastDueGrace),
            (Canceled, Reason::SubscriptionCanceled),
            (Unpaid, Reason::SubscriptionUnpaid),
            (Incomplete, Reason::SubscriptionIncomplete),
            (IncompleteExpired, Reason::SubscriptionIncomplete),
            (Paused, Reason::SubscriptionPaused),
        ] {
            let d = decide(
                &key("reports"),
                &[holding(status)],
                now,
                &AccessPolicy::default(),
                used(0, 0),
            );
            assert_eq!(d.reason, want, "{status:?}");
            assert_eq!(d.allowed, want.allows(), "{status:?}");
            assert!(d.subscription.is_some());
        }
        assert_eq!(reason(&[], "reports", now), Reason::NoSubscription);
        assert_eq!(
            reason(&[holding(Active)], "sso", now),
            Reason::FeatureNotInPlan
        );
    }

    #[test]
    fn past_due_allows_for_the_grace_period_from_the_failed_renewal() {
        let h = [holding(SubscriptionStatus::PastDue)];
        let policy = AccessPolicy {
            past_due_grace: Duration::days(3),
            ..Default::default()
        };
        let d = decide(&key("reports"), &h, t(3 * DAY - 1), &policy, used(0, 0));
        assert_eq!((d.allowed, d.valid_until), (true, Some(t(3 * DAY))));
        let d = decide(&key("reports"), &h, t(3 * DAY), &policy, used(0, 0));
        assert_eq!(d.reason, Reason::PastDueGraceOver);
    }

    #[test]
    fn cancel_at_period_end_allows_until_then() {
        let mut h = holding(SubscriptionStatus::Active);
        h.cancel_at_period_end = true;
        let h = [h];
        assert_eq!(
            reason(&h, "reports", t(30 * DAY - 1)),
            Reason::CancelingAtPeriodEnd
        );
        assert_eq!(
            reason(&h, "reports", t(30 * DAY)),
            Reason::SubscriptionCanceled
        );
    }

    #[test]
    fn disputes_follow_the_tenant() {
        let mut h = holding(SubscriptionStatus::Active);
        h.disputed = true;
        let h = [h];
        assert_eq!(reason(&h, "reports", t(1)), Reason::PaymentDisputed);
        let lenient = AccessPolicy {
            disputed: DisputedAccess::Allow,
            ..Default::default()
        };
        assert!(decide(&key("reports"), &h, t(1), &lenient, used(0, 0)).allowed);
    }

    #[test]
    fn metered_features_allow_under_the_limit_plus_credits() {
        let h = [holding(SubscriptionStatus::Active)];
        let p = AccessPolicy::default();
        let d = decide(&key("api_calls"), &h, t(1), &p, used(99, 0));
        assert_eq!((d.allowed, d.remaining), (true, Some(units(1))));
        let d = decide(&key("api_calls"), &h, t(1), &p, used(100, 0));
        assert_eq!(
            (d.allowed, d.reason, d.remaining),
            (false, Reason::LimitReached, Some(units(0)))
        );
        let d = decide(&key("api_calls"), &h, t(1), &p, used(100, 50));
        assert_eq!((d.allowed, d.remaining), (true, Some(units(50))));
        let d = decide(&key("api_calls"), &h, t(1), &p, |_, _| None);
        assert!(!d.allowed);
        // A switch has no remaining.
        assert_eq!(
            decide(&key("reports"), &h, t(1), &p, used(1_000, 0)).remaining,
            None
        );
    }

    #[test]
    fn an_allowing_subscription_wins_over_a_denying_one() {
        let mut old = holding(SubscriptionStatus::Canceled);
        old.current_period_end = t(60 * DAY);
        let new = holding(SubscriptionStatus::Active);
        let d = decide(
            &key("reports"),
            &[old.clone(), new.clone()],
            t(1),
            &AccessPolicy::default(),
            used(0, 0),
        );
        assert_eq!(d.subscription, Some(new.subscription));
        let d = decide(
            &key("reports"),
            &[old.clone()],
            t(1),
            &AccessPolicy::default(),
            used(0, 0),
        );
        assert_eq!(
            (d.reason, d.subscription),
            (Reason::SubscriptionCanceled, Some(old.subscription))
        );
    }

    fn any_status() -> impl Strategy<Value = SubscriptionStatus> {
        prop::sample::select(SubscriptionStatus::ALL.to_vec())
    }

    proptest! {
        /// Whatever the subscriptions, usage and time: an answer allows exactly when its
        /// reason is an allowing one; an allowed answer names a subscription in good standing
        /// whose plan has the feature, valid until a time after now; a metered allowance is
        /// never granted at or past the limit plus credits; and CANCELED, UNPAID and
        /// INCOMPLETE subscriptions never allow anything.
        #[test]
        fn answers_are_consistent(
            statuses in prop::collection::vec(any_status(), 0..4),
            cancel in any::<bool>(),
            disputed in any::<bool>(),
            now in -40 * DAY..80 * DAY,
            grace_days in 0i64..10,
            use_n in 0u64..300,
            credits in 0u64..300,
            feature in prop::sample::select(vec!["reports", "api_calls", "sso"]),
            lenient in any::<bool>(),
        ) {
            let holdings: Vec<Holding> = statuses
                .iter()
                .map(|s| Holding { cancel_at_period_end: cancel, disputed, ..holding(*s) })
                .collect();
            let policy = AccessPolicy {
                past_due_grace: Duration::days(grace_days),
                disputed: if lenient { DisputedAccess::Allow } else { DisputedAccess::Deny },
            };
            let now = t(now);
            let d = decide(&key(feature), &holdings, now, &policy, used(use_n, credits));
            prop_assert_eq!(d.allowed, d.reason.allows());
            if d.allowed {
                let h = holdings.iter().find(|h| Some(h.subscription) == d.subscription).unwrap();
                prop_assert!(h.features.iter().any(|f| f.key.as_str() == feature));
                prop_assert!(standing(h, now, &policy).is_ok());
                prop_assert!(d.valid_until.unwrap() > now || h.status == SubscriptionStatus::Active
                    || h.status == SubscriptionStatus::Trialing);
                use SubscriptionStatus::*;
                prop_assert!(!matches!(h.status, Canceled | Unpaid | Incomplete | IncompleteExpired | Paused));
                if feature == "api_calls" {
                    prop_assert!(use_n < 100 + credits);
                    prop_assert_eq!(d.remaining, Some(units(100 + credits - use_n)));
                }
                if disputed {
                    prop_assert!(lenient);
                }
            }
            if holdings.is_empty() {
                prop_assert_eq!(d.reason, Reason::NoSubscription);
            }
        }
    }
}
