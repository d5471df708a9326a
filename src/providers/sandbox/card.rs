//! The sandbox's test cards and the checks on what the hosted page's card form sends.
//!
//! Only a [`Card`] leaves this module: its brand, its last four digits and what the sandbox
//! does with it. The number and the CVC are read, checked and dropped here; no error message
//! repeats them, and nothing here implements `Debug` over them.

use time::{Date, Month, OffsetDateTime};

/// What the sandbox does with a test card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 4242 4242 4242 4242.
    Succeeds,
    /// 4000 0000 0000 0002: `card_declined`.
    Declined,
    /// 4000 0000 0000 9995: `insufficient_funds`.
    InsufficientFunds,
    /// 4000 0025 0000 3155: a confirmation step, approved or failed (`authentication_failed`).
    RequiresAction,
    /// 4000 0000 0000 0341: succeeds now, fails when the subscription renews.
    FailsOnRenewal,
}

/// The test cards: number, behaviour.
pub const TEST_CARDS: &[(&str, Behaviour)] = &[
    ("4242424242424242", Behaviour::Succeeds),
    ("4000000000000002", Behaviour::Declined),
    ("4000000000009995", Behaviour::InsufficientFunds),
    ("4000002500003155", Behaviour::RequiresAction),
    ("4000000000000341", Behaviour::FailsOnRenewal),
];

/// A failed payment's code.
pub const CARD_DECLINED: &str = "card_declined";
pub const INSUFFICIENT_FUNDS: &str = "insufficient_funds";
pub const AUTHENTICATION_FAILED: &str = "authentication_failed";

impl Behaviour {
    /// The failure code of a card the sandbox fails at once.
    pub fn failure_code(self) -> Option<&'static str> {
        match self {
            Behaviour::Declined => Some(CARD_DECLINED),
            Behaviour::InsufficientFunds => Some(INSUFFICIENT_FUNDS),
            _ => None,
        }
    }
}

/// A test card, as much of it as the sandbox keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub brand: &'static str,
    pub last4: String,
    pub behaviour: Behaviour,
}

/// Which form field a problem is about, and what to tell the person. The messages are fixed
/// text: none repeats what was typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldError {
    pub field: Field,
    pub message: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Number,
    Expiry,
    Cvc,
    Name,
}

impl Field {
    /// The form field's name (and the input's id).
    pub fn name(self) -> &'static str {
        match self {
            Field::Number => "number",
            Field::Expiry => "expiry",
            Field::Cvc => "cvc",
            Field::Name => "name",
        }
    }
}

/// The longest name on a card accepted.
const MAX_NAME_CHARS: usize = 100;

/// A card number: digits once spaces are taken out, one of [`TEST_CARDS`].
pub fn parse_number(input: &str) -> Result<Card, FieldError> {
    let error = |message| FieldError {
        field: Field::Number,
        message,
    };
    let digits: String = input.chars().filter(|c| *c != ' ').collect();
    if digits.is_empty() {
        return Err(error("Enter a card number."));
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error("A card number has digits only."));
    }
    let behaviour = TEST_CARDS
        .iter()
        .find(|(number, _)| *number == digits)
        .map(|(_, b)| *b)
        .ok_or(error(
            "That number is not one of the sandbox's test cards. Use 4242 4242 4242 4242 to pay.",
        ))?;
    Ok(Card {
        // Every test card is a Visa: they all start with 4.
        brand: "visa",
        last4: digits[digits.len() - 4..].to_owned(),
        behaviour,
    })
}

/// An expiry `MM/YY` (or `MM / YY`, `MM/YYYY`) not before `today`'s month.
pub fn parse_expiry(input: &str, today: OffsetDateTime) -> Result<(Month, i32), FieldError> {
    let error = |message| FieldError {
        field: Field::Expiry,
        message,
    };
    let compact: String = input.chars().filter(|c| !c.is_whitespace()).collect();
    let (mm, yy) = compact
        .split_once('/')
        .ok_or(error("Enter the expiry as MM / YY."))?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(mm) || !digits(yy) || mm.len() > 2 || !(yy.len() == 2 || yy.len() == 4) {
        return Err(error("Enter the expiry as MM / YY."));
    }
    let month = mm
        .parse::<u8>()
        .ok()
        .and_then(|m| Month::try_from(m).ok())
        .ok_or(error("The expiry month must be 01 to 12."))?;
    let year: i32 = yy
        .parse()
        .map_err(|_| error("Enter the expiry as MM / YY."))?;
    let year = if yy.len() == 2 { 2000 + year } else { year };
    let first_of = |y: i32, m: Month| Date::from_calendar_date(y, m, 1).ok();
    let (expiry, current) = (
        first_of(year, month).ok_or(error("Enter the expiry as MM / YY."))?,
        first_of(today.year(), today.month()).expect("today is a date"),
    );
    if expiry < current {
        return Err(error("This card has expired."));
    }
    Ok((month, year))
}

/// A CVC: three or four digits. Checked, never kept.
pub fn check_cvc(input: &str) -> Result<(), FieldError> {
    let input = input.trim();
    if (3..=4).contains(&input.len()) && input.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(FieldError {
            field: Field::Cvc,
            message: "The CVC is the 3 or 4 digits on the back of the card.",
        })
    }
}

/// The name on the card: not blank, at most 100 characters, no control characters.
pub fn check_name(input: &str) -> Result<(), FieldError> {
    let error = |message| FieldError {
        field: Field::Name,
        message,
    };
    let name = input.trim();
    if name.is_empty() {
        return Err(error("Enter the name on the card."));
    }
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(error("Enter the name as printed on the card."));
    }
    Ok(())
}

/// The whole form: the card, or every field's problem (in the form's order).
pub fn check_form(
    number: &str,
    expiry: &str,
    cvc: &str,
    name: &str,
    today: OffsetDateTime,
) -> Result<Card, Vec<FieldError>> {
    let card = parse_number(number);
    let errors: Vec<FieldError> = [
        card.as_ref().err().copied(),
        parse_expiry(expiry, today).err(),
        check_cvc(cvc).err(),
        check_name(name).err(),
    ]
    .into_iter()
    .flatten()
    .collect();
    match card {
        Ok(card) if errors.is_empty() => Ok(card),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> OffsetDateTime {
        Date::from_calendar_date(2026, Month::December, 1)
            .unwrap()
            .midnight()
            .assume_utc()
    }

    #[test]
    fn each_test_card_has_its_behaviour_and_keeps_only_its_last_four() {
        for (typed, behaviour, last4) in [
            ("4242 4242 4242 4242", Behaviour::Succeeds, "4242"),
            ("4242424242424242", Behaviour::Succeeds, "4242"),
            ("4000 0000 0000 0002", Behaviour::Declined, "0002"),
            ("4000 0000 0000 9995", Behaviour::InsufficientFunds, "9995"),
            ("4000 0025 0000 3155", Behaviour::RequiresAction, "3155"),
            (" 4000000000000341 ", Behaviour::FailsOnRenewal, "0341"),
        ] {
            let card = parse_number(typed).unwrap();
            assert_eq!(card.behaviour, behaviour, "{typed}");
            assert_eq!(card.last4, last4);
            assert_eq!(card.brand, "visa");
        }
        assert_eq!(Behaviour::Declined.failure_code(), Some("card_declined"));
        assert_eq!(
            Behaviour::InsufficientFunds.failure_code(),
            Some("insufficient_funds")
        );
        assert_eq!(Behaviour::Succeeds.failure_code(), None);
        assert_eq!(Behaviour::RequiresAction.failure_code(), None);
    }

    #[test]
    fn other_numbers_are_refused_without_being_repeated() {
        for typed in [
            "5555 5555 5555 4444",
            "4242 4242 4242 4241",
            "4242-4242-4242-4242",
            "4242\t4242424242424242",
            "",
            "   ",
            "42424242424242424242",
            "４２４２４２４２４２４２４２４２",
        ] {
            let e = parse_number(typed).unwrap_err();
            assert_eq!(e.field, Field::Number);
            let digits: String = typed.chars().filter(char::is_ascii_digit).collect();
            assert!(
                digits.is_empty() || !e.message.contains(&digits),
                "{typed:?}: {}",
                e.message
            );
            assert!(typed.trim().is_empty() || !e.message.contains(typed.trim()));
        }
    }

    #[test]
    fn expiries() {
        assert_eq!(
            parse_expiry("12/26", today()).unwrap(),
            (Month::December, 2026)
        );
        assert_eq!(
            parse_expiry("01 / 30", today()).unwrap(),
            (Month::January, 2030)
        );
        assert_eq!(
            parse_expiry("7/2031", today()).unwrap(),
            (Month::July, 2031)
        );
        for bad in [
            "", "1226", "13/30", "00/30", "ab/cd", "11/26", "12/2", "12/026", "/30",
        ] {
            assert_eq!(
                parse_expiry(bad, today()).unwrap_err().field,
                Field::Expiry,
                "{bad}"
            );
        }
        assert_eq!(
            parse_expiry("11/26", today()).unwrap_err().message,
            "This card has expired."
        );
    }

    #[test]
    fn cvcs_and_names() {
        assert!(check_cvc("123").is_ok());
        assert!(check_cvc("1234").is_ok());
        for bad in ["", "12", "12345", "12a", "１２３"] {
            assert!(check_cvc(bad).is_err(), "{bad}");
        }
        assert!(check_name("Ada Lovelace").is_ok());
        assert!(check_name("  ").is_err());
        assert!(check_name(&"a".repeat(101)).is_err());
        assert!(check_name("Ada\u{0}").is_err());
    }

    #[test]
    fn the_form_reports_every_field_in_order() {
        let errors = check_form("", "13/30", "1", "", today()).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [Field::Number, Field::Expiry, Field::Cvc, Field::Name]
        );
        let card = check_form("4242 4242 4242 4242", "12/30", "123", "Ada", today()).unwrap();
        assert_eq!(card.behaviour, Behaviour::Succeeds);
        // A good number with a bad field is still refused.
        assert!(check_form("4242 4242 4242 4242", "12/30", "", "Ada", today()).is_err());
    }
}
