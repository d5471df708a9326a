//! Amounts on PayTabs' wire: decimal numbers of major units (`cart_amount: "12.500"` KWD),
//! where Coffer holds integer minor units. Both ways go through integer arithmetic and text
//! only, never through a float: the currency's exponent (`domain::money`) places the decimal
//! point.
//!
//! Coffer sends an amount as a JSON string with exactly the exponent's digits after the point
//! (`"10.00"` USD, `"1500"` JPY, `"1.250"` KWD), as PayTabs' own samples do. PayTabs answers
//! amounts as strings too; an answer is read back exactly, and one with more fraction digits
//! than the currency has (`"1.005"` USD) is refused rather than rounded.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

use crate::domain::money::Currency;

/// Why a decimal amount of an answer could not be read as minor units.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("{0:?} is not a decimal amount")]
    Malformed(String),
    #[error("{amount:?} has more than {exponent} digits after the point for {currency}")]
    TooPrecise {
        amount: String,
        exponent: u8,
        currency: &'static str,
    },
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// `minor` minor units of `currency` as PayTabs' decimal major units: `1050` USD is `10.50`,
/// `1500` JPY is `1500`, `1250` KWD is `1.250`.
pub fn to_major(minor: i64, currency: Currency) -> String {
    let exponent = u32::from(currency.exponent());
    let scale = 10u64.pow(exponent);
    let magnitude = minor.unsigned_abs();
    let sign = if minor < 0 { "-" } else { "" };
    let (major, fraction) = (magnitude / scale, magnitude % scale);
    if exponent == 0 {
        format!("{sign}{major}")
    } else {
        format!(
            "{sign}{major}.{fraction:0width$}",
            width = exponent as usize
        )
    }
}

/// A decimal amount of major units of `currency` (`"10.5"`, `"10.50"`, `"10"`) as minor units,
/// exactly. No sign, no exponent, no spaces; at most the currency's exponent of digits after
/// the point.
pub fn to_minor(amount: &str, currency: Currency) -> Result<i64, AmountError> {
    let malformed = || AmountError::Malformed(amount.to_owned());
    let (whole, fraction) = match amount.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (amount, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || fraction.is_some_and(|f| !digits(f)) {
        return Err(malformed());
    }
    let exponent = currency.exponent();
    let fraction = fraction.unwrap_or("");
    if fraction.len() > usize::from(exponent) {
        return Err(AmountError::TooPrecise {
            amount: amount.to_owned(),
            exponent,
            currency: currency.code(),
        });
    }
    let too_large = || AmountError::TooLarge(amount.to_owned());
    // Parsed digit by digit: `whole` may be longer than any i64.
    let mut minor: i64 = 0;
    let padded = fraction
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(usize::from(exponent));
    for b in whole.bytes().chain(padded) {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(b - b'0')))
            .ok_or_else(too_large)?;
    }
    Ok(minor)
}

/// A decimal amount as PayTabs answers it, kept as its text: a JSON string (`"10.50"`), or a
/// JSON integer (`10`). A JSON number with a fraction is refused, since reading it would go
/// through a float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal(pub String);

impl Decimal {
    /// The amount in minor units of `currency`.
    pub fn minor(&self, currency: Currency) -> Result<i64, AmountError> {
        to_minor(&self.0, currency)
    }
}

impl<'de> serde::Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DecimalVisitor;

        impl Visitor<'_> for DecimalVisitor {
            type Value = Decimal;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal amount as a string or an integer")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
                Ok(Decimal(v.to_owned()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
                Ok(Decimal(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
                // Negative amounts are refused when read as minor units.
                Ok(Decimal(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Decimal, E> {
                Err(E::custom(
                    "a fractional JSON number: amounts are read from strings, never floats",
                ))
            }
        }

        deserializer.deserialize_any(DecimalVisitor)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn cur(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn minor_units_are_written_with_the_exponent() {
        for (minor, code, text) in [
            (1500, "JPY", "1500"),
            (1, "JPY", "1"),
            (1050, "USD", "10.50"),
            (5, "USD", "0.05"),
            (100_000_000, "USD", "1000000.00"),
            (1250, "KWD", "1.250"),
            (1, "BHD", "0.001"),
            (1_234_567, "OMR", "1234.567"),
            (200, "AED", "2.00"),
            (i64::MAX, "USD", "92233720368547758.07"),
        ] {
            assert_eq!(to_major(minor, cur(code)), text, "{minor} {code}");
        }
    }

    #[test]
    fn decimal_amounts_are_read_exactly() {
        for (text, code, minor) in [
            ("1500", "JPY", 1500),
            ("0", "JPY", 0),
            ("10.50", "USD", 1050),
            ("10.5", "USD", 1050),
            ("10", "USD", 1000),
            ("0.01", "USD", 1),
            ("1.250", "KWD", 1250),
            ("1.25", "KWD", 1250),
            ("0.001", "BHD", 1),
            ("1234.567", "OMR", 1_234_567),
            ("007.10", "USD", 710),
            ("92233720368547758.07", "USD", i64::MAX),
        ] {
            assert_eq!(to_minor(text, cur(code)), Ok(minor), "{text} {code}");
        }
    }

    #[test]
    fn more_fraction_digits_than_the_currency_has_are_refused() {
        for (text, code) in [
            ("1500.0", "JPY"),
            ("10.505", "USD"),
            ("10.500", "USD"),
            ("1.2500", "KWD"),
            ("0.0001", "BHD"),
        ] {
            assert!(
                matches!(
                    to_minor(text, cur(code)),
                    Err(AmountError::TooPrecise { .. })
                ),
                "{text} {code}"
            );
        }
    }

    #[test]
    fn anything_but_plain_decimals_is_refused() {
        for text in [
            "", ".", "1.", ".5", "-1", "+1", "1e3", "1,000", " 1", "1 ", "1.0.0", "0x10", "١٠",
        ] {
            assert_eq!(
                to_minor(text, cur("USD")),
                Err(AmountError::Malformed(text.to_owned())),
                "{text:?}"
            );
        }
        assert!(matches!(
            to_minor("92233720368547758.08", cur("USD")),
            Err(AmountError::TooLarge(_))
        ));
        assert!(matches!(
            to_minor("99999999999999999999999", cur("JPY")),
            Err(AmountError::TooLarge(_))
        ));
    }

    #[test]
    fn answers_carry_strings_or_integers_never_floats() {
        let read = |json: &str| serde_json::from_str::<Decimal>(json).map(|d| d.0);
        assert_eq!(read(r#""10.50""#).unwrap(), "10.50");
        assert_eq!(read("10").unwrap(), "10");
        assert!(read("10.5").is_err());
        assert!(read("true").is_err());
        assert_eq!(
            Decimal("1.250".into()).minor(cur("KWD")),
            Ok(1250),
            "KWD has three decimals"
        );
    }

    proptest! {
        #[test]
        fn writing_then_reading_is_the_identity(minor in 0i64..=i64::MAX, i in 0usize..4) {
            let currency = cur(["JPY", "USD", "KWD", "BHD"][i]);
            prop_assert_eq!(to_minor(&to_major(minor, currency), currency), Ok(minor));
        }
    }
}
