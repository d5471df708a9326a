//! Usage meters: a tenant's named quantity, and how its events add up.

use time::OffsetDateTime;

use super::customer::DisplayName;
use super::ids::MeterId;
use super::validation::Invalid;

/// How a meter's events add up over a period. Fixed when the meter is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregation {
    Count,
    Sum,
    Max,
    UniqueCount,
    Latest,
}

impl Aggregation {
    pub const ALL: [Aggregation; 5] = [
        Aggregation::Count,
        Aggregation::Sum,
        Aggregation::Max,
        Aggregation::UniqueCount,
        Aggregation::Latest,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Count => "count",
            Aggregation::Sum => "sum",
            Aggregation::Max => "max",
            Aggregation::UniqueCount => "unique_count",
            Aggregation::Latest => "latest",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether events must carry a value (every aggregation but COUNT).
    pub fn reads_value(self) -> bool {
        self != Aggregation::Count
    }
}

/// A meter's key or an event property's name: 1-64 characters of `a-z`, `0-9`, `_`, `-` and
/// `.`, starting with a letter, so it is safe in metric names, URLs and provider APIs alike.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MeterKey(String);

impl MeterKey {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let mut chars = s.chars();
        let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        let rest_ok = chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'));
        if !starts_with_letter || !rest_ok || s.len() > 64 {
            return Err(Invalid::new(
                "must be 1 to 64 characters of a-z, 0-9, '_', '-' and '.', starting with a letter",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How a meter reads its events: COUNT needs no value, every other aggregation names the
/// event property it reads. The two cannot be mixed up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    Count,
    Value {
        aggregation: Aggregation,
        value_key: MeterKey,
    },
}

impl Reading {
    /// `aggregation` with its `value_key` (`None` when the caller gave none).
    pub fn new(aggregation: Aggregation, value_key: Option<MeterKey>) -> Result<Self, Invalid> {
        match (aggregation, value_key) {
            (Aggregation::Count, None) => Ok(Reading::Count),
            (Aggregation::Count, Some(_)) => Err(Invalid::new("must be empty for COUNT")),
            (aggregation, Some(value_key)) => Ok(Reading::Value {
                aggregation,
                value_key,
            }),
            (_, None) => Err(Invalid::new(
                "is required for SUM, MAX, UNIQUE_COUNT and LATEST",
            )),
        }
    }

    pub fn aggregation(&self) -> Aggregation {
        match self {
            Reading::Count => Aggregation::Count,
            Reading::Value { aggregation, .. } => *aggregation,
        }
    }

    pub fn value_key(&self) -> Option<&MeterKey> {
        match self {
            Reading::Count => None,
            Reading::Value { value_key, .. } => Some(value_key),
        }
    }
}

/// A meter to create.
#[derive(Debug, Clone)]
pub struct NewMeter {
    pub key: MeterKey,
    pub name: Option<DisplayName>,
    pub reading: Reading,
}

/// A meter of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meter {
    pub id: MeterId,
    pub key: MeterKey,
    pub name: Option<DisplayName>,
    pub reading: Reading,
    pub created_at: OffsetDateTime,
}

/// How a caller names a meter.
#[derive(Debug, Clone)]
pub enum MeterRef {
    Id(MeterId),
    Key(MeterKey),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for good in ["api_calls", "a", "storage.gb-hours", &"k".repeat(64)] {
            assert!(MeterKey::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1calls",
            "Calls",
            "api calls",
            "api/calls",
            &"k".repeat(65),
            "é",
        ] {
            assert!(MeterKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_value_key_exactly_when_the_aggregation_reads_one() {
        let k = || Some(MeterKey::parse("tokens").unwrap());
        assert_eq!(Reading::new(Aggregation::Count, None), Ok(Reading::Count));
        assert!(Reading::new(Aggregation::Count, k()).is_err());
        for a in [
            Aggregation::Sum,
            Aggregation::Max,
            Aggregation::UniqueCount,
            Aggregation::Latest,
        ] {
            assert!(a.reads_value());
            assert_eq!(Reading::new(a, k()).unwrap().aggregation(), a);
            assert!(Reading::new(a, None).is_err());
        }
        for a in Aggregation::ALL {
            assert_eq!(Aggregation::parse(a.as_str()), Some(a));
        }
    }
}
