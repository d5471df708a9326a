//! Checkout sessions: what a customer is asked to pay, where they go afterwards, and the
//! session's state as the provider reports it.
//!
//! A session is created OPEN on the provider; it becomes COMPLETE when paid (by a verified
//! provider event or `VerifyCheckoutSession`, never by a redirect) and EXPIRED at `expires_at`
//! or by `ExpireCheckoutSession`. COMPLETE and EXPIRED are final.

use std::time::Duration;

use time::OffsetDateTime;

use super::Invalid;
use super::customer::{DisplayName, Metadata};
use super::ids::{CheckoutId, CustomerId, PaymentId, PriceId, SubscriptionId};
use super::money::{Currency, Money};
use super::plan::Billing;

/// What the customer pays for: once, or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Payment,
    Subscription,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Payment => "payment",
            Mode::Subscription => "subscription",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Mode::Payment, Mode::Subscription]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Open,
    Complete,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Complete => "complete",
            Status::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Status::Open, Status::Complete, Status::Expired]
            .into_iter()
            .find(|m| m.as_str() == s)
    }

    /// The state machine: OPEN may complete or expire; COMPLETE and EXPIRED are final.
    /// Staying in the same state is allowed (a repeated event).
    pub fn transition(self, to: Status) -> Result<Status, Invalid> {
        match (self, to) {
            (a, b) if a == b => Ok(b),
            (Status::Open, b) => Ok(b),
            (a, b) => Err(Invalid::new(format!(
                "a {} session cannot become {}",
                a.as_str(),
                b.as_str()
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Unpaid,
    Paid,
    NoPaymentRequired,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Unpaid => "unpaid",
            PaymentStatus::Paid => "paid",
            PaymentStatus::NoPaymentRequired => "no_payment_required",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            PaymentStatus::Unpaid,
            PaymentStatus::Paid,
            PaymentStatus::NoPaymentRequired,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// The shortest and longest a session may stay open, and the default.
pub const MIN_EXPIRES_IN: Duration = Duration::from_secs(30 * 60);
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(24 * 60 * 60);
pub const MAX_LINE_ITEMS: usize = 20;
pub const MAX_QUANTITY: u32 = 1_000;

/// The placeholder a success URL may carry, replaced by the session's id on redirect.
pub const SESSION_ID_PLACEHOLDER: &str = "{CHECKOUT_SESSION_ID}";

/// What a line item charges: a catalogue price or one given inline (one-time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemPrice {
    Catalogue(PriceId),
    Inline { money: Money, name: DisplayName },
}

/// A line item as asked for: a price and a quantity in 1..=1 000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLineItem {
    pub price: ItemPrice,
    pub quantity: u32,
}

/// A line item with its price resolved and its total computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineItem {
    pub price_id: Option<PriceId>,
    pub name: String,
    pub unit: Money,
    pub billing: Billing,
    pub quantity: u32,
    /// unit × quantity, exact in minor units.
    pub amount_total: i64,
}

/// A quantity, 1..=1 000.
pub fn quantity(q: i64) -> Result<u32, Invalid> {
    u32::try_from(q)
        .ok()
        .filter(|q| (1..=MAX_QUANTITY).contains(q))
        .ok_or_else(|| Invalid::new(format!("must be between 1 and {MAX_QUANTITY}")))
}

/// A session's lifetime, 30 minutes to 24 hours; `None` is the default, 24 hours.
pub fn expires_in(seconds: Option<i64>) -> Result<Duration, Invalid> {
    let Some(seconds) = seconds else {
        return Ok(MAX_EXPIRES_IN);
    };
    u64::try_from(seconds)
        .ok()
        .map(Duration::from_secs)
        .filter(|d| (MIN_EXPIRES_IN..=MAX_EXPIRES_IN).contains(d))
        .ok_or_else(|| Invalid::new("must be between 30 minutes and 24 hours"))
}

/// The items' total, in one currency, with checked arithmetic. The error names the item
/// (its index) and what is wrong.
pub fn total(items: &[LineItem]) -> Result<(i64, Currency), (usize, Invalid)> {
    let first = items
        .first()
        .ok_or_else(|| (0, Invalid::new("at least one line item is required")))?
        .unit
        .currency();
    let mut sum: i64 = 0;
    for (i, item) in items.iter().enumerate() {
        if item.unit.currency() != first {
            return Err((
                i,
                Invalid::new(format!(
                    "is in {} but the first item is in {first}: a session has one currency",
                    item.unit.currency()
                )),
            ));
        }
        sum = sum
            .checked_add(item.amount_total)
            .ok_or_else(|| (i, Invalid::new("the session total overflows")))?;
    }
    Ok((sum, first))
}

/// unit × quantity, or an error when it overflows 64 bits.
pub fn item_total(unit: Money, quantity: u32) -> Result<i64, Invalid> {
    unit.amount()
        .checked_mul(i64::from(quantity))
        .ok_or_else(|| Invalid::new("unit amount × quantity overflows"))
}

/// A success or cancel URL: absolute, https (http only on loopback), at most 2 048
/// characters. Whether its origin is allowed is the tenant's settings' call.
pub fn redirect_url(s: &str) -> Result<String, Invalid> {
    if s.is_empty() {
        return Err(Invalid::new("is required"));
    }
    if s.len() > 2048 {
        return Err(Invalid::new("must be at most 2048 characters"));
    }
    // The placeholder's braces are not URL characters; check the URL it will become.
    let probe = s.replace(SESSION_ID_PLACEHOLDER, "checkout_x");
    let uri: http::Uri = probe
        .parse()
        .map_err(|_| Invalid::new("must be an absolute URL"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(Invalid::new("must be an absolute URL"));
    };
    if authority.as_str().contains('@') {
        return Err(Invalid::new("must not carry user information"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match scheme.to_ascii_lowercase().as_str() {
        "https" => Ok(s.to_owned()),
        "http" if loopback => Ok(s.to_owned()),
        _ => Err(Invalid::new("must be https (http only on a loopback host)")),
    }
}

/// A checkout session to create, its fields valid and its prices resolved.
#[derive(Debug, Clone)]
pub struct NewCheckout {
    pub customer: CustomerId,
    pub mode: Mode,
    pub items: Vec<LineItem>,
    pub amount_total: i64,
    pub currency: Currency,
    pub success_url: String,
    pub cancel_url: String,
    pub expires_at: OffsetDateTime,
    pub trial_days: u16,
    pub metadata: Metadata,
}

impl NewCheckout {
    /// Whether the session collects money when paid: PAYMENT mode, or a subscription without
    /// a trial. Such a session has a payment from the start.
    pub fn collects_now(&self) -> bool {
        self.amount_total > 0 && (self.mode == Mode::Payment || self.trial_days == 0)
    }
}

/// A checkout session as Coffer knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckoutSession {
    pub id: CheckoutId,
    pub customer: CustomerId,
    pub account: String,
    pub mode: Mode,
    pub status: Status,
    pub payment_status: PaymentStatus,
    pub items: Vec<LineItem>,
    pub amount_total: i64,
    pub currency: Currency,
    pub success_url: String,
    pub cancel_url: String,
    pub trial_days: u16,
    pub metadata: Metadata,
    pub expires_at: OffsetDateTime,
    pub url: String,
    pub provider_session_id: String,
    pub subscription_id: Option<SubscriptionId>,
    pub payment_id: Option<PaymentId>,
    pub created_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_urls() {
        assert!(redirect_url("https://shop.example/ok?id={CHECKOUT_SESSION_ID}").is_ok());
        assert!(redirect_url("http://localhost:3000/ok").is_ok());
        assert!(redirect_url("http://127.0.0.1/ok").is_ok());
        for bad in [
            "",
            "/relative",
            "http://shop.example/ok",
            "ftp://shop.example",
            "https://user@shop.example/",
            "javascript:alert(1)",
        ] {
            assert!(redirect_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lifetimes_and_quantities() {
        assert_eq!(expires_in(None).unwrap(), MAX_EXPIRES_IN);
        assert!(expires_in(Some(1799)).is_err());
        assert!(expires_in(Some(1800)).is_ok());
        assert!(expires_in(Some(86_401)).is_err());
        assert!(quantity(0).is_err());
        assert!(quantity(1000).is_ok());
        assert!(quantity(1001).is_err());
    }

    #[test]
    fn totals_are_exact_in_one_currency_and_never_overflow() {
        let usd = Currency::parse("USD").unwrap();
        let eur = Currency::parse("EUR").unwrap();
        let item = |amount: i64, currency, quantity| {
            let unit = Money::stored(amount, currency).unwrap();
            LineItem {
                price_id: None,
                name: "x".into(),
                unit,
                billing: Billing::OneTime,
                quantity,
                amount_total: item_total(unit, quantity).unwrap(),
            }
        };
        assert_eq!(
            total(&[item(1_999, usd, 3), item(1, usd, 1)]).unwrap(),
            (5_998, usd)
        );
        assert_eq!(
            total(&[item(100, usd, 1), item(100, eur, 1)])
                .unwrap_err()
                .0,
            1
        );
        assert!(item_total(Money::stored(i64::MAX / 2, usd).unwrap(), 3).is_err());
        let big = item(i64::MAX / 1_000, usd, 1_000);
        assert_eq!(total(&[big.clone(), big]).unwrap_err().0, 1);
        assert!(total(&[]).is_err());
    }

    #[test]
    fn states_are_final() {
        assert!(Status::Open.transition(Status::Expired).is_ok());
        assert!(Status::Expired.transition(Status::Open).is_err());
        assert!(Status::Complete.transition(Status::Expired).is_err());
    }
}
