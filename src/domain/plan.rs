//! The plan catalogue: plans, what they grant (features) and what they cost (prices).
//!
//! A plan is what a tenant sells; its prices are the ways to pay for it (monthly in USD, yearly
//! in EUR, once). A price never changes once made, as Stripe's do: a new amount is a new price,
//! so a subscription's price always means what it meant when it was bought. A plan can be
//! archived, after which it cannot be bought; existing subscriptions keep it.

use time::OffsetDateTime;

use super::Invalid;
use super::customer::DisplayName;
use super::ids::{PlanId, PriceId};
use super::meter::MeterKey;
use super::money::Money;
use super::validation::{TextKind, visible};

/// A plan's key, the tenant's own name for it (`pro`, `team-yearly`): the syntax of meter
/// keys, unique per tenant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PlanKey(String);

impl PlanKey {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        MeterKey::parse(s).map(|k| Self(k.as_str().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A feature's key (`sso`, `api.calls`): what `CheckAccess` asks about. The syntax of meter
/// keys, since a metered feature will name its meter the same way.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FeatureKey(String);

impl FeatureKey {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        MeterKey::parse(s).map(|k| Self(k.as_str().to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a plan grants under one key: a switch (`reports`: on for whoever holds the plan), or a
/// metered allowance (`api_calls`: up to `limit` units of a meter per billing period, plus any
/// credits the customer was granted). What `CheckAccess` judges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub key: FeatureKey,
    pub metered: Option<Metered>,
}

/// A metered feature's allowance: usage of `meter` per period, up to `limit` units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metered {
    pub meter: MeterKey,
    pub limit: u64,
}

/// Which field of a feature a violation is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureField {
    Key,
    MeterKey,
    LimitPerPeriod,
}

impl FeatureField {
    /// The field's name in the API, under `features[i].`.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureField::Key => "key",
            FeatureField::MeterKey => "meter_key",
            FeatureField::LimitPerPeriod => "limit_per_period",
        }
    }
}

impl Feature {
    /// The largest limit per period: far above any real allowance, and exact in every
    /// decimal and integer type the limit meets on its way.
    pub const MAX_LIMIT: i64 = 1_000_000_000_000_000;

    /// A feature from its three fields: a switch has neither a meter nor a limit; a metered
    /// feature names its meter and a limit of 0 (credits only) up to [`Self::MAX_LIMIT`].
    pub fn parse(
        key: &str,
        meter_key: &str,
        limit_per_period: i64,
    ) -> Result<Self, Vec<(FeatureField, Invalid)>> {
        let mut errors = Vec::new();
        let key = FeatureKey::parse(key).map_err(|e| errors.push((FeatureField::Key, e)));
        let metered = if meter_key.is_empty() {
            if limit_per_period != 0 {
                errors.push((
                    FeatureField::LimitPerPeriod,
                    Invalid::new("needs a meter_key: a switch feature has no limit"),
                ));
            }
            None
        } else {
            let meter =
                MeterKey::parse(meter_key).map_err(|e| errors.push((FeatureField::MeterKey, e)));
            if !(0..=Self::MAX_LIMIT).contains(&limit_per_period) {
                errors.push((
                    FeatureField::LimitPerPeriod,
                    Invalid::new(format!("must be between 0 and {}", Self::MAX_LIMIT)),
                ));
            }
            meter.ok().map(|meter| Metered {
                meter,
                limit: limit_per_period.max(0) as u64,
            })
        };
        match key {
            Ok(key) if errors.is_empty() => Ok(Feature { key, metered }),
            _ => Err(errors),
        }
    }

    /// A switch feature.
    pub fn switch(key: FeatureKey) -> Self {
        Feature { key, metered: None }
    }
}

/// Checks the meters a plan's metered features name, given what the tenant's meter of a key
/// is (`None`: no such meter; `Some(additive)`: a COUNT or SUM meter, whose usage adds up to
/// a total a limit and credits can bound). Returns the index and reason of each feature that
/// names no usable meter.
pub fn check_meters(
    features: &[Feature],
    meter: impl Fn(&MeterKey) -> Option<bool>,
) -> Vec<(usize, Invalid)> {
    features
        .iter()
        .enumerate()
        .filter_map(|(i, f)| {
            let m = f.metered.as_ref()?;
            match meter(&m.meter) {
                None => Some((i, Invalid::new("names no meter of the tenant"))),
                Some(false) => Some((
                    i,
                    Invalid::new("must name a COUNT or SUM meter: a limit bounds a total"),
                )),
                Some(true) => None,
            }
        })
        .collect()
}

/// A plan's description: at most 1 000 characters of prose, with the character rules of names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description(String);

impl Description {
    pub const MAX_CHARS: usize = 1_000;

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.chars().count() > Self::MAX_CHARS {
            return Err(Invalid::new(format!(
                "must be at most {} characters",
                Self::MAX_CHARS
            )));
        }
        visible(s, TextKind::Prose)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The unit a recurring price renews by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Month,
    Year,
}

impl Interval {
    /// The most units one period may span: a year in months, three years.
    pub fn max_count(self) -> u8 {
        match self {
            Interval::Month => 12,
            Interval::Year => 3,
        }
    }
}

/// How a price is charged: once, or every `count` intervals, optionally after a free trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Billing {
    OneTime,
    Recurring {
        interval: Interval,
        /// 1..=12 months or 1..=3 years.
        count: u8,
        /// Free days before the first charge, 0..=730.
        trial_days: u16,
    },
}

impl Billing {
    pub const MAX_TRIAL_DAYS: u16 = 730;

    /// A recurring billing, checked: the period count within the interval's range (the field
    /// is `interval_count`), the trial within two years (`trial_days`). Each error says which.
    pub fn recurring(
        interval: Interval,
        count: i64,
        trial_days: i64,
    ) -> Result<Self, (BillingField, Invalid)> {
        let max = interval.max_count();
        let count = u8::try_from(count)
            .ok()
            .filter(|c| (1..=max).contains(c))
            .ok_or_else(|| {
                (
                    BillingField::IntervalCount,
                    Invalid::new(format!("must be between 1 and {max} for this interval")),
                )
            })?;
        let trial_days = u16::try_from(trial_days)
            .ok()
            .filter(|d| *d <= Self::MAX_TRIAL_DAYS)
            .ok_or_else(|| {
                (
                    BillingField::TrialDays,
                    Invalid::new(format!("must be between 0 and {}", Self::MAX_TRIAL_DAYS)),
                )
            })?;
        Ok(Billing::Recurring {
            interval,
            count,
            trial_days,
        })
    }

    pub fn interval_count(self) -> u8 {
        match self {
            Billing::OneTime => 0,
            Billing::Recurring { count, .. } => count,
        }
    }

    pub fn trial_days(self) -> u16 {
        match self {
            Billing::OneTime => 0,
            Billing::Recurring { trial_days, .. } => trial_days,
        }
    }
}

/// Which field of a price a billing error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingField {
    IntervalCount,
    TrialDays,
}

/// A price to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPrice {
    pub money: Money,
    pub billing: Billing,
    /// The meter whose usage a subscription to this (recurring) price is billed by: its
    /// `money` is then the price of one unit, charged in arrears.
    pub meter: Option<MeterKey>,
}

/// A price of a plan, as stored. Immutable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub id: PriceId,
    pub money: Money,
    pub billing: Billing,
    /// See [`NewPrice::meter`].
    pub meter: Option<MeterKey>,
    pub created_at: OffsetDateTime,
}

/// A plan to create, every field valid and the lists within their bounds.
#[derive(Debug, Clone)]
pub struct NewPlan {
    pub key: PlanKey,
    pub name: DisplayName,
    pub description: Option<Description>,
    pub features: Vec<Feature>,
    pub prices: Vec<NewPrice>,
}

impl NewPlan {
    pub const MAX_PRICES: usize = 20;
    pub const MAX_FEATURES: usize = 50;
}

/// A plan of a tenant, with its features and prices in the order they were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub id: PlanId,
    pub key: PlanKey,
    pub name: DisplayName,
    pub description: Option<Description>,
    pub features: Vec<Feature>,
    pub prices: Vec<Price>,
    pub created_at: OffsetDateTime,
    /// Set once, when the plan is first archived; archived plans cannot be bought.
    pub archived_at: Option<OffsetDateTime>,
}

impl Plan {
    /// The plan `new` describes, with fresh ids, made at `now`.
    pub fn create(new: NewPlan, now: OffsetDateTime) -> Self {
        Plan {
            id: PlanId::generate(),
            key: new.key,
            name: new.name,
            description: new.description,
            features: new.features,
            prices: new
                .prices
                .into_iter()
                .map(|p| Price {
                    id: PriceId::generate(),
                    money: p.money,
                    billing: p.billing,
                    meter: p.meter,
                    created_at: now,
                })
                .collect(),
            created_at: now,
            archived_at: None,
        }
    }
}

/// How a caller names a plan.
#[derive(Debug, Clone)]
pub enum PlanRef {
    Id(PlanId),
    Key(PlanKey),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_meter_keys() {
        assert!(PlanKey::parse("pro").is_ok());
        assert!(PlanKey::parse("team-yearly.v2").is_ok());
        for bad in ["", "Pro", "1pro", "pro plan", &"p".repeat(65)] {
            assert!(PlanKey::parse(bad).is_err(), "{bad:?}");
            assert!(FeatureKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn recurring_ranges() {
        use BillingField::*;
        let field = |i, c, t| Billing::recurring(i, c, t).err().map(|(f, _)| f);
        assert_eq!(field(Interval::Month, 1, 0), None);
        assert_eq!(field(Interval::Month, 12, 730), None);
        assert_eq!(field(Interval::Year, 3, 14), None);
        assert_eq!(field(Interval::Month, 0, 0), Some(IntervalCount));
        assert_eq!(field(Interval::Month, 13, 0), Some(IntervalCount));
        assert_eq!(field(Interval::Year, 4, 0), Some(IntervalCount));
        assert_eq!(field(Interval::Year, -1, 0), Some(IntervalCount));
        assert_eq!(field(Interval::Year, 1, 731), Some(TrialDays));
        assert_eq!(field(Interval::Year, 1, -1), Some(TrialDays));
        assert_eq!(Billing::OneTime.interval_count(), 0);
    }

    #[test]
    fn features_are_switches_or_metered() {
        let f = Feature::parse("reports", "", 0).unwrap();
        assert_eq!(f.metered, None);
        let f = Feature::parse("api_calls", "calls", 100).unwrap();
        assert_eq!(f.metered.unwrap().limit, 100);
        assert!(Feature::parse("prepaid", "calls", 0).is_ok());
        let fields = |k, m, l| {
            Feature::parse(k, m, l)
                .err()
                .map(|e| e.into_iter().map(|(f, _)| f).collect::<Vec<_>>())
        };
        use FeatureField::*;
        assert_eq!(fields("reports", "", 5), Some(vec![LimitPerPeriod]));
        assert_eq!(fields("api", "Calls", 5), Some(vec![MeterKey]));
        assert_eq!(fields("api", "calls", -1), Some(vec![LimitPerPeriod]));
        assert_eq!(
            fields("API", "calls", Feature::MAX_LIMIT + 1),
            Some(vec![Key, LimitPerPeriod])
        );
    }

    #[test]
    fn metered_features_need_an_additive_meter() {
        let features = [
            Feature::parse("a", "calls", 1).unwrap(),
            Feature::parse("b", "", 0).unwrap(),
            Feature::parse("c", "nope", 1).unwrap(),
            Feature::parse("d", "peak", 1).unwrap(),
        ];
        let bad = check_meters(&features, |m| match m.as_str() {
            "calls" => Some(true),
            "peak" => Some(false),
            _ => None,
        });
        assert_eq!(bad.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn descriptions() {
        assert!(Description::parse("Everything in Team, and SSO.").is_ok());
        assert!(Description::parse(&"x".repeat(1_000)).is_ok());
        assert!(Description::parse(&"x".repeat(1_001)).is_err());
        assert!(Description::parse("line\nbreak").is_err());
    }
}
