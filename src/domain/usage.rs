//! Usage events, quantities, query windows and credit grants.
//!
//! Quantities are exact decimals held as their text: Rust never does arithmetic on them, so
//! no float and no rounding can creep in; Postgres adds them up as `numeric`.

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};

use super::customer::CustomerRef;
use super::ids::MeterId;
use super::meter::{MeterKey, Reading};
use super::validation::{Invalid, TextKind, is_printable_ascii, visible};

/// The most events one RecordUsage call or one StreamUsage message carries.
pub const MAX_EVENTS_PER_BATCH: usize = 1_000;
/// Events older than this are refused.
pub const MAX_AGE: Duration = Duration::days(35);
/// Events further ahead than this are refused (clocks drift; the future does not happen yet).
pub const MAX_AHEAD: Duration = Duration::minutes(5);
/// The most properties an event carries.
pub const MAX_PROPERTIES: usize = 16;
const MAX_PROPERTY_VALUE: usize = 256;

/// The caller's id of an event: 1-255 printable ASCII characters, unique per tenant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UsageEventId(String);

impl UsageEventId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > 255 || !is_printable_ascii(s) {
            return Err(Invalid::new("must be 1 to 255 printable ASCII characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A non-negative exact decimal: up to 20 digits before the point and 12 after
/// (`12`, `0.5`, `1500.000001`). No sign, exponent, spaces or separators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity(String);

impl Quantity {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let (whole, fraction) = match s.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (s, None),
        };
        let digits = |p: &str, max: usize| {
            !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
        };
        if !digits(whole, 20) || fraction.is_some_and(|f| !digits(f, 12)) {
            return Err(Invalid::new(
                "must be a non-negative decimal with at most 20 digits before the point and 12 after",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// One, what a COUNT meter stores for each event.
    pub fn one() -> Self {
        Self("1".to_owned())
    }

    pub fn is_zero(&self) -> bool {
        self.0.bytes().all(|b| b == b'0' || b == b'.')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An event's properties: at most [`MAX_PROPERTIES`], named like meter keys, each value at most
/// 256 visible characters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(BTreeMap<String, String>);

impl Properties {
    /// Checks every entry; the error names the offending key.
    pub fn parse(map: BTreeMap<String, String>) -> Result<Self, (Option<String>, Invalid)> {
        if map.len() > MAX_PROPERTIES {
            return Err((
                None,
                Invalid::new(format!("at most {MAX_PROPERTIES} properties")),
            ));
        }
        for (k, v) in &map {
            MeterKey::parse(k).map_err(|e| (Some(k.clone()), e))?;
            if v.chars().count() > MAX_PROPERTY_VALUE {
                return Err((
                    Some(k.clone()),
                    Invalid::new(format!("at most {MAX_PROPERTY_VALUE} characters")),
                ));
            }
            visible(v, TextKind::Prose).map_err(|e| (Some(k.clone()), e))?;
        }
        Ok(Self(map))
    }

    pub fn get(&self, key: &MeterKey) -> Option<&str> {
        self.0.get(key.as_str()).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// One usage event as the caller sent it, each field valid on its own.
#[derive(Debug, Clone)]
pub struct UsageEvent {
    pub id: UsageEventId,
    pub customer: CustomerRef,
    pub meter: MeterKey,
    /// The event's value, when given directly rather than as a property.
    pub value: Option<Quantity>,
    pub occurred_at: OffsetDateTime,
    pub properties: Properties,
}

/// Why an event of a batch was refused. The rest of the batch is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// A field is malformed (an id, a key, a time, a property).
    InvalidField,
    UnknownCustomer,
    UnknownMeter,
    /// Older than 35 days or more than 5 minutes ahead.
    OutOfWindow,
    /// The value is missing or not a decimal, or the meter's value property is.
    MalformedValue,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidField => "INVALID_FIELD",
            RejectReason::UnknownCustomer => "UNKNOWN_CUSTOMER",
            RejectReason::UnknownMeter => "UNKNOWN_METER",
            RejectReason::OutOfWindow => "OUT_OF_WINDOW",
            RejectReason::MalformedValue => "MALFORMED_VALUE",
        }
    }
}

/// A refused event: its index in the batch, why, and the field at fault
/// (`events[3].occurred_at`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub index: usize,
    pub reason: RejectReason,
    pub field: String,
    pub description: String,
}

impl Rejected {
    pub fn new(
        index: usize,
        reason: RejectReason,
        field: &str,
        description: impl Into<String>,
    ) -> Self {
        Self {
            index,
            reason,
            field: format!("events[{index}].{field}"),
            description: description.into(),
        }
    }
}

/// Whether an event at `occurred_at` may be recorded at `now`.
pub fn within_window(occurred_at: OffsetDateTime, now: OffsetDateTime) -> bool {
    occurred_at >= now - MAX_AGE && occurred_at <= now + MAX_AHEAD
}

/// What an event contributes to its meter: the stored value, and the distinct key of a
/// UNIQUE_COUNT meter. The error is the field at fault and why.
pub fn reading_of(
    reading: &Reading,
    event: &UsageEvent,
) -> Result<(Quantity, Option<String>), (String, Invalid)> {
    use super::meter::Aggregation;
    match reading {
        Reading::Count => Ok((Quantity::one(), None)),
        Reading::Value {
            aggregation: Aggregation::UniqueCount,
            value_key,
        } => match event.properties.get(value_key) {
            Some(key) if !key.is_empty() => Ok((Quantity::one(), Some(key.to_owned()))),
            _ => Err((
                format!("properties[{}]", value_key.as_str()),
                Invalid::new("is the meter's distinct key and is required"),
            )),
        },
        Reading::Value { value_key, .. } => {
            if let Some(value) = &event.value {
                return Ok((value.clone(), None));
            }
            let field = format!("properties[{}]", value_key.as_str());
            match event.properties.get(value_key) {
                Some(text) => Quantity::parse(text)
                    .map(|q| (q, None))
                    .map_err(|e| (field, e)),
                None => Err((
                    "value".to_owned(),
                    Invalid::new(format!(
                        "is required (or the property {:?})",
                        value_key.as_str()
                    )),
                )),
            }
        }
    }
}

/// The windows GetUsage splits a range into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageWindow {
    /// The range as one total.
    None,
    /// UTC hours.
    Hour,
    /// UTC days.
    Day,
}

impl UsageWindow {
    /// The longest range a window may split, so an answer stays a bounded size.
    pub fn max_range(self) -> Option<Duration> {
        match self {
            UsageWindow::None => None,
            UsageWindow::Hour => Some(Duration::days(31)),
            UsageWindow::Day => Some(Duration::days(400)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UsageWindow::None => "none",
            UsageWindow::Hour => "hour",
            UsageWindow::Day => "day",
        }
    }
}

/// A usage query: one customer, one meter, `[from, to)`.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    pub customer: CustomerRef,
    pub meter: MeterKey,
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
    pub window: UsageWindow,
}

/// A total: the aggregated value and how many events made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    /// The meter's aggregate, as an exact decimal; "0" when no event counts.
    pub value: String,
    pub events: i64,
}

/// One window of a usage answer: `[start, end)`, clipped to the query's range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowFigure {
    pub start: OffsetDateTime,
    pub end: OffsetDateTime,
    pub figure: Figure,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageReport {
    pub meter: MeterId,
    pub total: Figure,
    pub windows: Vec<WindowFigure>,
}

/// Credits to grant: usage of an additive meter (COUNT or SUM) that the grant covers.
#[derive(Debug, Clone)]
pub struct NewGrant {
    pub customer: CustomerRef,
    pub meter: MeterKey,
    pub amount: Quantity,
    pub expires_at: Option<OffsetDateTime>,
    pub reason: Option<String>,
}

/// A grant of credits, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub id: super::ids::GrantId,
    pub customer: super::ids::CustomerId,
    pub meter: MeterId,
    pub amount: Quantity,
    pub granted_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
    pub reason: Option<String>,
}

/// An exact decimal in fixed point, 12 places after the point: what a balance is worked out
/// in. An i128 holds 26 digits before the point, more than any sum of a customer's events
/// reaches; arithmetic is checked all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Units(i128);

const SCALE: i128 = 1_000_000_000_000;

impl Units {
    pub const ZERO: Units = Units(0);
    pub const MAX: Units = Units(i128::MAX);

    /// A whole number of units.
    pub fn whole(n: u64) -> Units {
        Units(n as i128 * SCALE)
    }

    /// Reads a non-negative decimal as Postgres prints a `numeric` (`12`, `0.5`, `3.250`).
    pub fn parse(s: &str) -> Option<Self> {
        let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
        if whole.is_empty()
            || fraction.len() > 12
            || !whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let whole: i128 = whole.parse().ok()?;
        let frac: i128 = if fraction.is_empty() {
            0
        } else {
            fraction.parse::<i128>().ok()? * 10i128.pow(12 - fraction.len() as u32)
        };
        whole.checked_mul(SCALE)?.checked_add(frac).map(Units)
    }

    pub fn checked_add(self, other: Units) -> Option<Units> {
        self.0.checked_add(other.0).map(Units)
    }

    pub fn saturating_sub(self, other: Units) -> Units {
        Units((self.0 - other.0).max(0))
    }

    pub fn min(self, other: Units) -> Units {
        Units(self.0.min(other.0))
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The whole part (what a provider that takes only whole numbers is sent).
    pub fn floor(self) -> Units {
        Units(self.0 - self.0 % SCALE)
    }
}

impl std::fmt::Display for Units {
    /// The shortest exact form: `12`, `0.5`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let whole = self.0 / SCALE;
        let frac = self.0 % SCALE;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{frac:012}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// A customer's credits for one meter: what unexpired grants gave, what usage has drawn from
/// them, and what is left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    pub granted: Units,
    pub used: Units,
    pub remaining: Units,
}

/// A grant as a balance sees it.
#[derive(Debug, Clone)]
pub struct GrantSpan {
    pub amount: Units,
    pub granted_at: OffsetDateTime,
    pub expires_at: Option<OffsetDateTime>,
}

/// The UTC days (their midnights) within which the grants active in an hour change: a grant
/// made during the day after its first hour, or expiring after its start and before its last
/// hour. In any other day every hour draws on the same grants in the same order, so the day's
/// usage drawn at once (as one entry at its midnight, [`balance`]) draws exactly what its
/// hours drawn one by one would: a balance reads a day rollup row for each such day and hour
/// rows only for these, so its cost follows the grants and the days, not the hours.
pub fn days_with_grant_changes(
    grants: impl IntoIterator<Item = (OffsetDateTime, Option<OffsetDateTime>)>,
) -> Vec<OffsetDateTime> {
    let day_of = |t: OffsetDateTime| {
        let t = t.to_offset(time::UtcOffset::UTC);
        t.replace_time(time::Time::MIDNIGHT)
    };
    let mut days = Vec::new();
    for (granted_at, expires_at) in grants {
        // Active in hour h from the hour it was made in: a change within the day unless made
        // in its first hour.
        let d = day_of(granted_at);
        if granted_at >= d + Duration::HOUR {
            days.push(d);
        }
        // Inactive from the hour that starts at or after its expiry: a change within the day
        // unless that is the day's first hour (expiry at or before midnight + 0) or past its
        // last (expiry after 23:00, when every hour of the day still has it).
        if let Some(e) = expires_at {
            let d = day_of(e);
            let from_day_start = e - d;
            if from_day_start > Duration::ZERO && from_day_start <= Duration::hours(23) {
                days.push(d);
            }
        }
    }
    days.sort();
    days.dedup();
    days
}

/// Works out a balance at `now` from the grants and the meter's usage per UTC hour since the
/// oldest of them (expired grants count too: they drew on usage while they lasted), or per
/// whole day for a day outside [`days_with_grant_changes`] (an entry at its midnight). Usage
/// of the hour starting at `h` draws on the grants made before `h + 1 hour` that are not
/// expired at `h`, soonest expiry first (grants that never expire last, then oldest first), so
/// credits that would lapse are used before those that would not. Usage beyond every grant is
/// not a debt: the balance stops at zero.
pub fn balance(
    grants: &[GrantSpan],
    hours: &[(OffsetDateTime, Units)],
    now: OffsetDateTime,
) -> Balance {
    let mut order: Vec<usize> = (0..grants.len()).collect();
    order.sort_by_key(|&i| {
        let g = &grants[i];
        (g.expires_at.is_none(), g.expires_at, g.granted_at)
    });
    let mut left: Vec<Units> = grants.iter().map(|g| g.amount).collect();
    for &(hour, used) in hours {
        let mut need = used;
        for &i in &order {
            if need.is_zero() {
                break;
            }
            let g = &grants[i];
            let active =
                g.granted_at < hour + Duration::HOUR && g.expires_at.is_none_or(|e| e > hour);
            if active {
                let take = need.min(left[i]);
                left[i] = left[i].saturating_sub(take);
                need = need.saturating_sub(take);
            }
        }
    }
    let live = |g: &GrantSpan| g.expires_at.is_none_or(|e| e > now);
    let mut granted = Units::ZERO;
    let mut remaining = Units::ZERO;
    for (g, l) in grants.iter().zip(&left) {
        if live(g) {
            granted = granted.checked_add(g.amount).unwrap_or(Units(i128::MAX));
            remaining = remaining.checked_add(*l).unwrap_or(Units(i128::MAX));
        }
    }
    Balance {
        granted,
        used: granted.saturating_sub(remaining),
        remaining,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drawing a day without grant changes at once draws what its hours one by one draw, over
    /// random grants (made and expiring at any second, some never) and hourly usage.
    #[test]
    fn a_day_without_grant_changes_draws_as_its_hours() {
        let day0 = OffsetDateTime::from_unix_timestamp(1_793_491_200).unwrap(); // a UTC midnight
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % n
        };
        for _ in 0..300 {
            let grants: Vec<GrantSpan> = (0..1 + next(4))
                .map(|_| {
                    let granted_at = day0 + Duration::seconds(next(6 * 86_400) as i64);
                    let expires_at = match next(3) {
                        0 => None,
                        // Some on the hour and at midnight exactly, the edge cases.
                        1 => Some(granted_at + Duration::hours(1 + next(72) as i64)),
                        _ => Some(granted_at + Duration::seconds(1 + next(4 * 86_400) as i64)),
                    };
                    GrantSpan {
                        amount: Units::parse(&format!("{}", 1 + next(500))).unwrap(),
                        granted_at,
                        expires_at,
                    }
                })
                .collect();
            let mut hours: Vec<(OffsetDateTime, Units)> = Vec::new();
            for h in 0..8 * 24 {
                if next(4) != 0 {
                    let used = Units::parse(&format!("{}", next(40))).unwrap();
                    hours.push((day0 + Duration::hours(h), used));
                }
            }
            let changes =
                days_with_grant_changes(grants.iter().map(|g| (g.granted_at, g.expires_at)));
            let mut collapsed: Vec<(OffsetDateTime, Units)> = Vec::new();
            for &(h, used) in &hours {
                let day = h.replace_time(time::Time::MIDNIGHT);
                if changes.contains(&day) {
                    collapsed.push((h, used));
                } else if let Some(last) = collapsed.last_mut().filter(|(d, _)| *d == day) {
                    last.1 = last.1.checked_add(used).unwrap();
                } else {
                    collapsed.push((day, used));
                }
            }
            let now = day0 + Duration::days(8);
            assert_eq!(
                balance(&grants, &hours, now),
                balance(&grants, &collapsed, now),
                "{grants:?}"
            );
        }
    }

    #[test]
    fn quantities_are_exact_decimals() {
        for good in ["0", "12", "0.5", "1500.000001", &"9".repeat(20)] {
            assert!(Quantity::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-1",
            "1e3",
            " 1",
            "1.",
            ".5",
            "1,5",
            "NaN",
            "inf",
            "0x10",
            "1.2.3",
            &"9".repeat(21),
            "1.0000000000001",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Quantity::parse("0.000").unwrap().is_zero());
        assert!(!Quantity::parse("0.001").unwrap().is_zero());
    }

    #[test]
    fn event_ids() {
        assert!(UsageEventId::parse("evt_1").is_ok());
        assert!(UsageEventId::parse(&"x".repeat(255)).is_ok());
        for bad in ["", "a b\u{7}", "é", &"x".repeat(256)] {
            assert!(UsageEventId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_window_is_35_days_back_and_5_minutes_ahead() {
        let now = OffsetDateTime::now_utc();
        assert!(within_window(now - MAX_AGE, now));
        assert!(!within_window(now - MAX_AGE - Duration::seconds(1), now));
        assert!(within_window(now + MAX_AHEAD, now));
        assert!(!within_window(now + MAX_AHEAD + Duration::seconds(1), now));
    }

    #[test]
    fn units_are_exact() {
        for (text, shown) in [
            ("0", "0"),
            ("12", "12"),
            ("0.5", "0.5"),
            ("3.250", "3.25"),
            ("1500.000000000001", "1500.000000000001"),
        ] {
            assert_eq!(Units::parse(text).unwrap().to_string(), shown);
        }
        for bad in ["", "-1", "1.0000000000001", "1e3", ".5"] {
            assert_eq!(Units::parse(bad), None, "{bad:?}");
        }
        let a = Units::parse("0.1").unwrap();
        let b = Units::parse("0.2").unwrap();
        assert_eq!(a.checked_add(b), Units::parse("0.3"));
    }

    #[test]
    fn credits_lapse_first_and_stop_at_zero() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_793_491_200).unwrap(); // an hour's start
        let u = |s: &str| Units::parse(s).unwrap();
        let grants = [
            // Never expires.
            GrantSpan {
                amount: u("100"),
                granted_at: t0,
                expires_at: None,
            },
            // Expires in 10 days: drawn on first.
            GrantSpan {
                amount: u("30"),
                granted_at: t0,
                expires_at: Some(t0 + Duration::days(10)),
            },
        ];
        let hours = [(t0, u("20")), (t0 + Duration::days(1), u("25"))];
        // 30 of the 45 used came from the lapsing grant, 15 from the lasting one.
        let b = balance(&grants, &hours, t0 + Duration::days(2));
        assert_eq!(
            (b.granted, b.used, b.remaining),
            (u("130"), u("45"), u("85"))
        );
        // Once the lapsing grant expires it is left out, used up or not.
        let b = balance(&grants, &hours, t0 + Duration::days(11));
        assert_eq!(
            (b.granted, b.used, b.remaining),
            (u("100"), u("15"), u("85"))
        );
        // Usage past every grant leaves zero, not a debt.
        let b = balance(&grants, &[(t0, u("1000"))], t0 + Duration::days(2));
        assert_eq!(b.remaining, Units::ZERO);
        // Usage before a grant was made is not drawn from it.
        let late = [GrantSpan {
            amount: u("10"),
            granted_at: t0 + Duration::days(1),
            expires_at: None,
        }];
        let b = balance(&late, &[(t0, u("5"))], t0 + Duration::days(2));
        assert_eq!(b.remaining, u("10"));
    }

    #[test]
    fn properties_are_bounded() {
        let many: BTreeMap<_, _> = (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(Properties::parse(many).is_err());
        let bad_key = BTreeMap::from([("Bad Key".to_owned(), "v".to_owned())]);
        assert_eq!(
            Properties::parse(bad_key).unwrap_err().0.as_deref(),
            Some("Bad Key")
        );
        let long = BTreeMap::from([("k".to_owned(), "v".repeat(257))]);
        assert!(Properties::parse(long).is_err());
    }
}
