//! Proration: what a change of price or quantity in the middle of a period credits and
//! charges, in exact integer arithmetic on minor units, to the second.
//!
//! The rule, as Stripe documents its default ("calculated down to the second", one line for
//! the unused time on the old price and one for the remaining time on the new):
//!
//! - `remaining = period_end - at` and `length = period_end - period_start`, in whole seconds
//!   (`at` is truncated to the second; it must lie within the period).
//! - The **credit** line is `-round(old_total * remaining / length)`, the **debit** line is
//!   `+round(new_total * remaining / length)`, where a total is unit amount × quantity.
//! - `round` is to the nearest minor unit, halves away from zero, on each line separately
//!   (Stripe shows each proration line as an integer amount and documents no other rule);
//!   products are computed in `i128`, so no total Coffer accepts can overflow.
//! - The amount due is the lines' sum when positive, else zero: a net credit is not paid out
//!   (Stripe keeps it as customer balance; Coffer has none, so it is reported as
//!   `credit_unused`).
//!
//! Because `remaining <= length`, a credit never exceeds what was paid for the period, and
//! the preview and the change call this one function with the same inputs (the preview's
//! `at` travels with the change as its proration time), so the charge is the preview.

use time::OffsetDateTime;

/// How a plan change prorates (the API's PRORATE | NONE | ALWAYS_INVOICE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Credit the unused time, charge the remaining time on the new price; charged now when
    /// the net is positive.
    Prorate,
    /// No proration: the new price applies from the next period's charge.
    None,
    /// As `Prorate`, and the lines are invoiced now even when they net to zero or less.
    AlwaysInvoice,
}

/// One line of a proration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// Negative for the credit of unused time, positive for the remaining time's charge.
    pub amount: i64,
    /// Which side of the change the line is for.
    pub kind: LineKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    UnusedTime,
    RemainingTime,
}

/// What a change costs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proration {
    pub lines: Vec<Line>,
    /// What is charged now: the lines' sum when positive, else 0.
    pub amount_due: i64,
    /// A net credit not paid out (the lines' sum when negative, as a positive number).
    pub credit_unused: i64,
    /// Whether an invoice (a payment) is made now.
    pub invoice_now: bool,
}

/// A proration time outside the period, or a period that is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProrationError {
    #[error("the period ends before it starts")]
    EmptyPeriod,
    #[error("the proration time is outside the current period")]
    OutsidePeriod,
    #[error("a total is negative")]
    Negative,
}

/// `total * remaining / length`, rounded to the nearest integer, halves away from zero.
/// `0 <= remaining <= length`, `length > 0` and `total >= 0`, so the result is within
/// `0..=total`.
fn share(total: i64, remaining: i64, length: i64) -> i64 {
    let n = i128::from(total) * i128::from(remaining);
    let d = i128::from(length);
    let (q, r) = (n / d, n % d);
    let rounded = if 2 * r >= d { q + 1 } else { q };
    i64::try_from(rounded).expect("a share of a total fits in i64")
}

/// The proration of changing from `old_total` to `new_total` per period at `at`, within the
/// period `[start, end)`.
pub fn prorate(
    old_total: i64,
    new_total: i64,
    start: OffsetDateTime,
    end: OffsetDateTime,
    at: OffsetDateTime,
    behavior: Behavior,
) -> Result<Proration, ProrationError> {
    if old_total < 0 || new_total < 0 {
        return Err(ProrationError::Negative);
    }
    let (start, end, at) = (
        start.unix_timestamp(),
        end.unix_timestamp(),
        at.unix_timestamp(),
    );
    if end <= start {
        return Err(ProrationError::EmptyPeriod);
    }
    if at < start || at > end {
        return Err(ProrationError::OutsidePeriod);
    }
    if behavior == Behavior::None {
        return Ok(Proration {
            lines: Vec::new(),
            amount_due: 0,
            credit_unused: 0,
            invoice_now: false,
        });
    }
    let (remaining, length) = (end - at, end - start);
    let lines = vec![
        Line {
            amount: -share(old_total, remaining, length),
            kind: LineKind::UnusedTime,
        },
        Line {
            amount: share(new_total, remaining, length),
            kind: LineKind::RemainingTime,
        },
    ];
    let net: i64 = lines.iter().map(|l| l.amount).sum();
    Ok(Proration {
        lines,
        amount_due: net.max(0),
        credit_unused: (-net).max(0),
        invoice_now: net > 0 || behavior == Behavior::AlwaysInvoice,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(s).unwrap()
    }

    #[test]
    fn stripes_documented_example_half_way_from_10_to_20_is_5() {
        let p = prorate(1_000, 2_000, t(0), t(100), t(50), Behavior::Prorate).unwrap();
        assert_eq!(
            p.lines.iter().map(|l| l.amount).collect::<Vec<_>>(),
            [-500, 1_000]
        );
        assert_eq!(
            (p.amount_due, p.credit_unused, p.invoice_now),
            (500, 0, true)
        );
    }

    #[test]
    fn a_30_day_month_upgraded_after_10_days_by_hand() {
        // 2 900 -> 9 900 a month, 20 of 30 days left: credit 2 900 * 2/3 = 1 933.33 -> 1 933,
        // debit 9 900 * 2/3 = 6 600; due 4 667.
        let day = 86_400;
        let p = prorate(
            2_900,
            9_900,
            t(0),
            t(30 * day),
            t(10 * day),
            Behavior::Prorate,
        )
        .unwrap();
        assert_eq!(p.lines[0].amount, -1_933);
        assert_eq!(p.lines[1].amount, 6_600);
        assert_eq!(p.amount_due, 4_667);
    }

    #[test]
    fn halves_round_away_from_zero_and_downgrades_credit_without_paying_out() {
        // 1 * 1/2 = 0.5 -> 1.
        assert_eq!(share(1, 1, 2), 1);
        assert_eq!(share(3, 1, 2), 2);
        let p = prorate(2_000, 1_000, t(0), t(100), t(50), Behavior::Prorate).unwrap();
        assert_eq!(
            (p.amount_due, p.credit_unused, p.invoice_now),
            (0, 500, false)
        );
        let p = prorate(2_000, 1_000, t(0), t(100), t(50), Behavior::AlwaysInvoice).unwrap();
        assert!(p.invoice_now);
        let p = prorate(2_000, 1_000, t(0), t(100), t(50), Behavior::None).unwrap();
        assert!(p.lines.is_empty() && p.amount_due == 0);
    }

    #[test]
    fn a_time_outside_the_period_is_refused() {
        assert_eq!(
            prorate(1, 1, t(10), t(20), t(21), Behavior::Prorate),
            Err(ProrationError::OutsidePeriod)
        );
        assert_eq!(
            prorate(1, 1, t(10), t(10), t(10), Behavior::Prorate),
            Err(ProrationError::EmptyPeriod)
        );
    }

    proptest! {
        /// The credit never exceeds what was paid for the period, the debit never exceeds
        /// the new period's price, each line is within half a unit of the exact share, and
        /// the amount due is exactly the lines' positive net: a preview (this function) is
        /// what the change charges (this function, with the preview's inputs).
        #[test]
        fn credits_never_exceed_what_was_paid_and_preview_equals_charge(
            old in 0i64..=100_000_000 * 10_000,
            new in 0i64..=100_000_000 * 10_000,
            start in -10_000_000_000i64..10_000_000_000,
            length in 1i64..=3 * 366 * 86_400,
            into in 0.0f64..=1.0,
        ) {
            let at = start + ((length as f64) * into) as i64;
            let p = prorate(old, new, t(start), t(start + length), t(at), Behavior::Prorate)
                .unwrap();
            let credit = -p.lines[0].amount;
            let debit = p.lines[1].amount;
            prop_assert!((0..=old).contains(&credit));
            prop_assert!((0..=new).contains(&debit));
            let remaining = i128::from(start + length - at);
            for (amount, total) in [(credit, old), (debit, new)] {
                // |amount * length - total * remaining| <= length / 2
                let err = (i128::from(amount) * i128::from(length)
                    - i128::from(total) * remaining).abs();
                prop_assert!(2 * err <= i128::from(length));
            }
            let net = debit - credit;
            prop_assert_eq!(p.amount_due, net.max(0));
            prop_assert_eq!(p.credit_unused, (-net).max(0));
            let again = prorate(old, new, t(start), t(start + length), t(at), Behavior::Prorate)
                .unwrap();
            prop_assert_eq!(again, p);
        }

        /// Later in the period, never more credit.
        #[test]
        fn the_credit_shrinks_as_the_period_runs(
            old in 0i64..=1_000_000_000,
            length in 1i64..=366 * 86_400,
            a in 0.0f64..=1.0,
            b in 0.0f64..=1.0,
        ) {
            let (a, b) = (((length as f64) * a.min(b)) as i64, ((length as f64) * a.max(b)) as i64);
            let credit = |at| -prorate(old, 0, t(0), t(length), t(at), Behavior::Prorate)
                .unwrap().lines[0].amount;
            prop_assert!(credit(a) >= credit(b));
            prop_assert_eq!(credit(0), old);
            prop_assert_eq!(credit(length), 0);
        }
    }
}
