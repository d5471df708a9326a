//! Money: an amount in minor units (cents, pence, yen, fils) of an ISO 4217 currency, and the
//! limits an amount must fall within.
//!
//! Amounts are `i64` minor units everywhere: in protobuf (`int64`), in SQL (`bigint`) and here.
//! No float ever holds money. A [`Currency`] is one of a fixed table's codes, which knows its
//! exponent (JPY 0, USD 2, KWD 3) and its default limits; a tenant may narrow those limits per
//! currency in `coffer.toml` ([`CurrencyLimits::narrow`]), never widen them. Providers' own
//! limits and steps (Stripe's minimum charges, ISK in multiples of 100) apply on top, in the
//! providers.

use std::collections::BTreeMap;
use std::fmt;

use super::Invalid;

/// One row of the currency table.
struct CurrencyInfo {
    code: &'static str,
    /// Digits after the decimal point: an amount of 1 is 10^-exponent major units.
    exponent: u8,
    /// Default limits in minor units: roughly 0.50 to 1 000 000 US dollars' worth, rounded,
    /// as the seed guidance (USD and EUR 50…100 000 000, HUF 100…1 000 000 000) sets them. They
    /// catch a misplaced decimal point; tenants narrow them to their own business.
    min: i64,
    max: i64,
}

const fn c(code: &'static str, exponent: u8, min: i64, max: i64) -> CurrencyInfo {
    CurrencyInfo {
        code,
        exponent,
        min,
        max,
    }
}

/// The currencies Coffer accepts, sorted by code (a test keeps it so; lookups are a binary
/// search). Exponents are ISO 4217's.
const TABLE: &[CurrencyInfo] = &[
    c("AED", 2, 200, 400_000_000),
    c("ARS", 2, 50_000, 100_000_000_000),
    c("AUD", 2, 50, 150_000_000),
    c("BGN", 2, 100, 200_000_000),
    c("BHD", 3, 200, 400_000_000),
    c("BRL", 2, 50, 500_000_000),
    c("CAD", 2, 50, 150_000_000),
    c("CHF", 2, 50, 100_000_000),
    c("CLP", 0, 500, 1_000_000_000),
    c("CNY", 2, 400, 700_000_000),
    c("COP", 2, 200_000, 400_000_000_000),
    c("CZK", 2, 1_500, 2_500_000_000),
    c("DKK", 2, 250, 700_000_000),
    c("EGP", 2, 2_500, 5_000_000_000),
    c("EUR", 2, 50, 100_000_000),
    c("GBP", 2, 30, 100_000_000),
    c("HKD", 2, 400, 800_000_000),
    c("HUF", 2, 100, 1_000_000_000),
    c("IDR", 2, 800_000, 1_600_000_000_000),
    c("ILS", 2, 200, 400_000_000),
    c("INR", 2, 5_000, 9_000_000_000),
    c("ISK", 0, 100, 150_000_000),
    c("JOD", 3, 500, 700_000_000),
    c("JPY", 0, 50, 150_000_000),
    c("KES", 2, 5_000, 15_000_000_000),
    c("KRW", 0, 500, 1_500_000_000),
    c("KWD", 3, 200, 300_000_000),
    c("MXN", 2, 1_000, 2_000_000_000),
    c("MYR", 2, 200, 500_000_000),
    c("NGN", 2, 50_000, 150_000_000_000),
    c("NOK", 2, 300, 1_000_000_000),
    c("NZD", 2, 50, 170_000_000),
    c("OMR", 3, 200, 400_000_000),
    c("PHP", 2, 2_500, 6_000_000_000),
    c("PKR", 2, 10_000, 30_000_000_000),
    c("PLN", 2, 200, 400_000_000),
    c("QAR", 2, 200, 400_000_000),
    c("RON", 2, 200, 500_000_000),
    c("SAR", 2, 200, 400_000_000),
    c("SEK", 2, 300, 1_000_000_000),
    c("SGD", 2, 50, 130_000_000),
    c("THB", 2, 1_000, 3_500_000_000),
    c("TND", 3, 1_000, 3_000_000_000),
    c("TRY", 2, 1_000, 4_000_000_000),
    c("TWD", 2, 1_500, 3_000_000_000),
    c("USD", 2, 50, 100_000_000),
    c("VND", 0, 10_000, 25_000_000_000),
    c("ZAR", 2, 1_000, 2_000_000_000),
];

/// An ISO 4217 currency from Coffer's table. Ordered by code.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(u8);

impl Currency {
    /// Parses an upper-case ISO 4217 code Coffer supports (`USD`).
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Invalid::new(
                "must be an ISO 4217 currency code in upper case, such as USD",
            ));
        }
        TABLE
            .binary_search_by(|info| info.code.cmp(s))
            .map(|i| Self(i as u8))
            .map_err(|_| Invalid::new(format!("{s} is not a currency Coffer supports")))
    }

    fn info(self) -> &'static CurrencyInfo {
        &TABLE[self.0 as usize]
    }

    pub fn code(self) -> &'static str {
        self.info().code
    }

    /// Digits after the decimal point (JPY 0, USD 2, KWD 3).
    pub fn exponent(self) -> u8 {
        self.info().exponent
    }

    /// The limits every tenant starts from.
    pub fn default_limits(self) -> AmountLimits {
        let info = self.info();
        AmountLimits {
            min: info.min,
            max: info.max,
        }
    }

    /// Every currency of the table.
    pub fn all() -> impl Iterator<Item = Currency> {
        (0..TABLE.len()).map(|i| Self(i as u8))
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The smallest and largest amount allowed, in minor units, both included. Always
/// `1 <= min <= max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmountLimits {
    min: i64,
    max: i64,
}

impl AmountLimits {
    pub fn new(min: i64, max: i64) -> Result<Self, Invalid> {
        if min < 1 {
            return Err(Invalid::new("min must be at least 1 minor unit"));
        }
        if min > max {
            return Err(Invalid::new(format!(
                "min ({min}) must not be greater than max ({max})"
            )));
        }
        Ok(Self { min, max })
    }

    pub fn min(self) -> i64 {
        self.min
    }

    pub fn max(self) -> i64 {
        self.max
    }

    pub fn contains(self, amount: i64) -> bool {
        (self.min..=self.max).contains(&amount)
    }

    /// Whether `self` lies within `outer`.
    pub fn within(self, outer: AmountLimits) -> bool {
        outer.min <= self.min && self.max <= outer.max
    }
}

/// The limits one tenant applies: each currency's default, or the tenant's narrower ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrencyLimits {
    narrowed: BTreeMap<Currency, AmountLimits>,
}

impl CurrencyLimits {
    /// Narrows `currency`'s limits to `limits`, which must lie within its defaults: a tenant
    /// may ask for less than Coffer allows, never more.
    pub fn narrow(&mut self, currency: Currency, limits: AmountLimits) -> Result<(), Invalid> {
        let default = currency.default_limits();
        if !limits.within(default) {
            return Err(Invalid::new(format!(
                "{}…{} widens {currency}'s limits ({}…{} minor units); a tenant may only narrow them",
                limits.min, limits.max, default.min, default.max
            )));
        }
        self.narrowed.insert(currency, limits);
        Ok(())
    }

    pub fn of(&self, currency: Currency) -> AmountLimits {
        self.narrowed
            .get(&currency)
            .copied()
            .unwrap_or_else(|| currency.default_limits())
    }
}

/// An amount of money: minor units of a currency, positive and, when it was made from caller
/// input, within the limits that applied then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    amount: i64,
    currency: Currency,
}

impl Money {
    /// An amount a caller asked for, checked against the limits that apply to it.
    pub fn new(amount: i64, currency: Currency, limits: &CurrencyLimits) -> Result<Self, Invalid> {
        let allowed = limits.of(currency);
        if !allowed.contains(amount) {
            return Err(Invalid::new(format!(
                "must be between {} and {} minor units of {currency}",
                allowed.min, allowed.max
            )));
        }
        Ok(Self { amount, currency })
    }

    /// An amount read back from storage. Limits are not checked again: they may have been
    /// narrowed since, and a price made under the old ones stays what it was.
    pub fn stored(amount: i64, currency: Currency) -> Result<Self, Invalid> {
        if amount < 1 {
            return Err(Invalid::new("must be positive"));
        }
        Ok(Self { amount, currency })
    }

    /// Minor units.
    pub fn amount(self) -> i64 {
        self.amount
    }

    pub fn currency(self) -> Currency {
        self.currency
    }
}

/// `amount` minor units of `currency` written out for people, exactly: the currency's
/// exponent places the decimal point, thousands are grouped with commas and the code follows
/// (`123456` USD is `1,234.56 USD`, `1500` JPY is `1,500 JPY`, `1500` KWD is `1.500 KWD`).
/// Integer arithmetic only.
pub fn format_amount(amount: i64, currency: Currency) -> String {
    let exponent = u32::from(currency.exponent());
    let scale = 10u64.pow(exponent);
    let magnitude = amount.unsigned_abs();
    let (major, minor) = (magnitude / scale, magnitude % scale);
    let digits = major.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3 + 8);
    if amount < 0 {
        grouped.push('-');
    }
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(d);
    }
    if exponent > 0 {
        grouped.push_str(&format!(".{minor:0width$}", width = exponent as usize));
    }
    format!("{grouped} {}", currency.code())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cur(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn the_table_is_sorted_and_its_limits_are_sane() {
        for pair in TABLE.windows(2) {
            assert!(
                pair[0].code < pair[1].code,
                "{} then {}",
                pair[0].code,
                pair[1].code
            );
        }
        assert!(TABLE.len() < u8::MAX as usize);
        for c in Currency::all() {
            let l = c.default_limits();
            assert!(AmountLimits::new(l.min(), l.max()).is_ok(), "{c}");
            assert!(c.exponent() <= 3, "{c}");
            assert_eq!(cur(c.code()), c);
        }
    }

    #[test]
    fn amounts_are_written_with_the_currency_exponent() {
        for (amount, code, text) in [
            (0, "USD", "0.00 USD"),
            (5, "USD", "0.05 USD"),
            (2_900, "USD", "29.00 USD"),
            (123_456, "USD", "1,234.56 USD"),
            (100_000_000, "EUR", "1,000,000.00 EUR"),
            (1_500, "JPY", "1,500 JPY"),
            (999, "JPY", "999 JPY"),
            (1_000, "KRW", "1,000 KRW"),
            (1_500, "KWD", "1.500 KWD"),
            (1, "BHD", "0.001 BHD"),
            (1_234_567_890, "TND", "1,234,567.890 TND"),
            (-2_900, "USD", "-29.00 USD"),
            (i64::MAX, "USD", "92,233,720,368,547,758.07 USD"),
            (i64::MIN, "USD", "-92,233,720,368,547,758.08 USD"),
        ] {
            assert_eq!(format_amount(amount, cur(code)), text, "{amount} {code}");
        }
    }

    #[test]
    fn exponents_follow_iso_4217() {
        for (code, exponent) in [
            ("JPY", 0),
            ("KRW", 0),
            ("USD", 2),
            ("EUR", 2),
            ("GBP", 2),
            ("HUF", 2),
            ("KWD", 3),
            ("BHD", 3),
            ("JOD", 3),
            ("OMR", 3),
            ("TND", 3),
        ] {
            assert_eq!(cur(code).exponent(), exponent, "{code}");
        }
    }

    #[test]
    fn seed_limits() {
        for (code, min, max) in [
            ("USD", 50, 100_000_000),
            ("EUR", 50, 100_000_000),
            ("HUF", 100, 1_000_000_000),
        ] {
            assert_eq!(
                cur(code).default_limits(),
                AmountLimits::new(min, max).unwrap()
            );
        }
    }

    #[test]
    fn codes_are_upper_case_iso_4217_from_the_table() {
        for bad in ["usd", "US", "USDD", "", "XXX", "ÜSD", "U D"] {
            assert!(Currency::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Currency::parse("XYZ").unwrap_err().0,
            "XYZ is not a currency Coffer supports"
        );
    }

    #[test]
    fn amounts_outside_the_limits_are_refused() {
        let limits = CurrencyLimits::default();
        let usd = cur("USD");
        assert!(Money::new(50, usd, &limits).is_ok());
        assert!(Money::new(100_000_000, usd, &limits).is_ok());
        for bad in [0, -1, 49, 100_000_001, i64::MIN, i64::MAX] {
            assert!(Money::new(bad, usd, &limits).is_err(), "{bad}");
        }
        assert_eq!(
            Money::new(1, usd, &limits).unwrap_err().0,
            "must be between 50 and 100000000 minor units of USD"
        );
    }

    #[test]
    fn tenants_narrow_and_never_widen() {
        let mut limits = CurrencyLimits::default();
        let huf = cur("HUF");
        limits
            .narrow(huf, AmountLimits::new(10_000, 500_000).unwrap())
            .unwrap();
        assert!(Money::new(9_999, huf, &limits).is_err());
        assert!(Money::new(10_000, huf, &limits).is_ok());
        assert!(Money::new(500_001, huf, &limits).is_err());
        // Other currencies keep their defaults.
        assert!(Money::new(50, cur("USD"), &limits).is_ok());
        let err = limits
            .narrow(cur("USD"), AmountLimits::new(1, 100).unwrap())
            .unwrap_err();
        assert!(err.0.contains("widens USD's limits (50…100000000"), "{err}");
        assert!(
            limits
                .narrow(cur("USD"), AmountLimits::new(100, 100_000_001).unwrap())
                .is_err()
        );
        assert!(AmountLimits::new(0, 5).is_err());
        assert!(AmountLimits::new(6, 5).is_err());
    }

    #[test]
    fn stored_amounts_are_positive() {
        assert!(Money::stored(1, cur("JPY")).is_ok());
        assert!(Money::stored(0, cur("JPY")).is_err());
    }

    proptest! {
        /// An amount is accepted exactly when it lies within the currency's limits.
        #[test]
        fn accepted_exactly_within_limits(index in 0..TABLE.len(), amount in any::<i64>()) {
            let currency = Currency(index as u8);
            let limits = CurrencyLimits::default();
            let d = currency.default_limits();
            let ok = Money::new(amount, currency, &limits).is_ok();
            prop_assert_eq!(ok, d.min() <= amount && amount <= d.max());
        }

        /// A narrowing is accepted exactly when it lies within the defaults, and what a narrowed
        /// table accepts the default table accepts too.
        #[test]
        fn narrowing_never_widens(
            index in 0..TABLE.len(),
            min in 1i64..2_000_000_000_000,
            span in 0i64..2_000_000_000_000,
            amount in 0i64..4_000_000_000_000,
        ) {
            let currency = Currency(index as u8);
            let wanted = AmountLimits::new(min, min + span).unwrap();
            let mut narrowed = CurrencyLimits::default();
            let accepted = narrowed.narrow(currency, wanted).is_ok();
            prop_assert_eq!(accepted, wanted.within(currency.default_limits()));
            if Money::new(amount, currency, &narrowed).is_ok() {
                prop_assert!(Money::new(amount, currency, &CurrencyLimits::default()).is_ok());
            }
        }
    }
}
