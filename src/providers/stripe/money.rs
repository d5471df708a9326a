//! Amounts between Coffer's minor units (ISO 4217 exponents, `domain::money`) and Stripe's.
//!
//! Stripe's "smallest currency unit" is ISO's minor unit for every currency Coffer supports
//! but one: ISK, zero-decimal in ISO 4217, which Stripe still takes as two-decimal with the
//! decimals always `00` (5 ISK is `500`). Currency codes are upper case in Coffer, lower case
//! on Stripe's wire.

use crate::domain::money::{Currency, Money};
use crate::providers::ProviderError;

/// Stripe's amount unit is 10^`shift` of Coffer's for `currency`.
fn shift(currency: Currency) -> u32 {
    if currency.code() == "ISK" { 2 } else { 0 }
}

/// `money`'s amount as Stripe takes it.
pub fn to_stripe(money: Money) -> i64 {
    money.amount() * 10i64.pow(shift(money.currency()))
}

/// Stripe's lower-case code of `currency`.
pub fn currency(currency: Currency) -> String {
    currency.code().to_ascii_lowercase()
}

/// A Stripe `amount` in `code` (lower case, as Stripe sends it) as Coffer's minor units and
/// upper-case code. A currency Coffer does not know keeps its amount as it is (the applier
/// then refuses it for not being the payment's currency).
pub fn from_stripe(amount: i64, code: &str) -> Result<(i64, String), ProviderError> {
    let upper = code.to_ascii_uppercase();
    let Ok(currency) = Currency::parse(&upper) else {
        return Ok((amount, upper));
    };
    let unit = 10i64.pow(shift(currency));
    if amount % unit != 0 {
        return Err(ProviderError::definitive(
            "unexpected_amount",
            format!("Stripe answered {amount} {code}, not a whole number of {upper}'s units"),
        ));
    }
    Ok((amount / unit, upper))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(amount: i64, code: &str) -> Money {
        Money::stored(amount, Currency::parse(code).unwrap()).unwrap()
    }

    #[test]
    fn isk_alone_differs() {
        assert_eq!(to_stripe(money(1999, "USD")), 1999);
        assert_eq!(to_stripe(money(500, "JPY")), 500);
        assert_eq!(to_stripe(money(1250, "KWD")), 1250);
        assert_eq!(to_stripe(money(5, "ISK")), 500);
        assert_eq!(from_stripe(500, "isk").unwrap(), (5, "ISK".into()));
        assert_eq!(from_stripe(1999, "usd").unwrap(), (1999, "USD".into()));
        assert!(from_stripe(550, "isk").is_err());
        assert_eq!(from_stripe(7, "xts").unwrap(), (7, "XTS".into()));
        assert_eq!(currency(Currency::parse("EUR").unwrap()), "eur");
    }
}
