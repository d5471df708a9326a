//! Renewals and dunning on the sandbox clock: what falls due as an account's time passes —
//! a period ends (a scheduled cancel takes effect, or the next period is charged to the card
//! on file, a trial's end included), a failed charge is retried on the dunning schedule
//! until it is paid or the retries run out (UNPAID or CANCELED, as configured), and an
//! INCOMPLETE subscription whose first charge is still unpaid 23 hours after it was made
//! becomes INCOMPLETE_EXPIRED (Stripe's rule; its expiry is kept in `next_retry_at`).
//!
//! Also here, as they charge the way a renewal does: [`resume`], which starts a PAUSED
//! subscription's new period now and charges it (Stripe's resume), and [`card_added`], what a
//! new card on file does to the customer's subscriptions that wait for one.
//!
//! One step is one transaction: the earliest due subscription, locked (`SKIP LOCKED`, so
//! passes on several replicas share the work), moved one boundary on, with its payment and
//! the events reporting both, committed together. Steps repeat until nothing is due, so a
//! jump of a year applies its twelve monthly renewals in order. A period's charge is keyed by
//! (subscription, period start), unique, and the subscription's period moves in the same
//! transaction: a pass killed at any point leaves each period charged once or not at all, and
//! the next pass (AdvanceClock's, or the periodic one after a restart) carries on from there.
//!
//! Statuses move through the domain's state machine ([`Lifecycle::moved`]), as Coffer's do.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection as _, PgPool};
use time::OffsetDateTime;
use uuid::Uuid;

use super::events::{self, EventType};
use super::objects;
use super::page::add_months;
use super::status::{PaymentState, SubscriptionState};
use super::store::{self, Subscription};
use crate::domain::ids::TenantId;
use crate::domain::subscription::{Lifecycle, SubscriptionStatus};
use crate::settings::Settings;
use crate::store::{StoreError, corrupt};

pub use crate::domain::subscription::{DunningEnd, MissingPaymentMethod};

/// The retry schedule of a failed renewal: `retries` more attempts spread evenly over
/// `window` after the failure (3 over 7 days by default, Stripe's default schedule's span),
/// then `end`; and what a trial that ends with no card on file becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dunning {
    pub retries: u32,
    pub window: Duration,
    pub end: DunningEnd,
    pub missing_payment_method: MissingPaymentMethod,
}

impl Default for Dunning {
    fn default() -> Self {
        Dunning {
            retries: 3,
            window: Duration::from_secs(7 * 86_400),
            end: DunningEnd::Unpaid,
            missing_payment_method: MissingPaymentMethod::Cancel,
        }
    }
}

/// Each tenant's [`Dunning`]: its coffer.toml settings (`renewal_retries`,
/// `renewal_retry_window`, `dunning_end`, `trial_end_without_payment_method`) over `base`.
#[derive(Clone, Default)]
pub struct DunningTable {
    base: Dunning,
    settings: Option<Arc<Settings>>,
}

impl DunningTable {
    pub fn new(base: Dunning, settings: Option<Arc<Settings>>) -> Self {
        Self { base, settings }
    }

    pub fn of(&self, tenant: TenantId) -> Dunning {
        let Some(settings) = &self.settings else {
            return self.base;
        };
        let t = settings.tenant(tenant);
        Dunning {
            retries: t.renewal_retries.unwrap_or(self.base.retries),
            window: t.renewal_retry_window.unwrap_or(self.base.window),
            end: t.dunning_end.unwrap_or(self.base.end),
            missing_payment_method: t
                .trial_end_without_payment_method
                .unwrap_or(self.base.missing_payment_method),
        }
    }
}

impl Dunning {
    /// When retry `n` (1-based) of a charge that failed at `failed_at` is due.
    fn retry_at(&self, failed_at: OffsetDateTime, n: u32) -> OffsetDateTime {
        let step = self.window.as_secs() / u64::from(self.retries.max(1));
        failed_at + time::Duration::seconds((step * u64::from(n)) as i64)
    }
}

/// Applies everything due (on `account`, or on every account) in order, one step per
/// transaction, until nothing is. Returns how many steps it made.
pub async fn run_due(
    pool: &PgPool,
    account: Option<&str>,
    dunning: &DunningTable,
) -> Result<usize, StoreError> {
    let mut steps = 0;
    loop {
        let mut conn = pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let Some((sub, tenant, now)) = store::lock_next_due(&mut tx, account).await? else {
            return Ok(steps);
        };
        step(&mut tx, &sub, now, dunning.of(tenant)).await?;
        tx.commit().await?;
        steps += 1;
    }
}

fn lifecycle_of(s: &Subscription) -> Lifecycle {
    Lifecycle {
        status: s.status.into(),
        cancel_at_period_end: s.cancel_at_period_end,
        collection_paused: s.collection_paused,
        canceled_at: s.canceled_at,
        cancel_reason: s.cancel_reason.clone(),
    }
}

fn state_of(status: SubscriptionStatus) -> Result<SubscriptionState, StoreError> {
    SubscriptionState::of(status)
        .ok_or_else(|| corrupt("sandbox renewal", format!("reached {}", status.as_str())))
}

/// One due boundary of a locked subscription: a retry if one is due first, else its period's
/// end.
async fn step(
    tx: &mut sqlx::PgConnection,
    sub: &Subscription,
    now: OffsetDateTime,
    dunning: Dunning,
) -> Result<(), StoreError> {
    let (Some(amount), Some(currency), Some(months)) =
        (sub.amount, sub.currency.as_deref(), sub.period_months)
    else {
        return Err(corrupt("sandbox subscription", "due without a price"));
    };
    let current = lifecycle_of(sub);
    let retry_due = sub
        .next_retry_at
        .filter(|at| *at <= sub.current_period_end && *at <= now);
    let mut renewed = renewed_of(sub);
    let at;
    if sub.status == SubscriptionState::Incomplete {
        // Its first charge was never paid: it expires, finally, at the time set when it was
        // made. Nothing is charged.
        at = sub.next_retry_at.unwrap_or(now);
        let next = current
            .moved(SubscriptionStatus::IncompleteExpired, at)
            .map_err(|e| corrupt("sandbox renewal", e))?;
        apply(&mut renewed, &next)?;
    } else if let (Some(retry_at), Some(unpaid)) = (retry_due, sub.unpaid_payment.as_deref()) {
        // A retry of the unpaid period's charge: the card on file is tried again.
        at = retry_at;
        let (status, code) = charge(sub);
        let payment = store::settle_payment(tx, &sub.account, unpaid, status, code, at).await?;
        emit_payment(tx, &sub.account, &payment, at).await?;
        let failed_at = payment
            .renewal
            .as_ref()
            .map(|(_, start)| *start)
            .unwrap_or(at);
        renewed.retries = sub.retries + 1;
        let next = if status == PaymentState::Succeeded {
            renewed.next_retry_at = None;
            renewed.unpaid_payment = None;
            renewed.retries = 0;
            current.moved(SubscriptionStatus::Active, at)
        } else if renewed.retries as u32 >= dunning.retries {
            renewed.next_retry_at = None;
            current.moved(dunning.end.status(), at)
        } else {
            renewed.next_retry_at = Some(dunning.retry_at(failed_at, renewed.retries as u32 + 1));
            Ok(current.clone())
        }
        .map_err(|e| corrupt("sandbox renewal", e))?;
        apply(&mut renewed, &next)?;
    } else {
        // The period ends.
        at = sub.current_period_end;
        let next = if sub.cancel_at_period_end {
            current.moved(SubscriptionStatus::Canceled, at)
        } else if sub.status == SubscriptionState::Trialing
            && !store::has_card_on_file(tx, &sub.account, &sub.id).await?
        {
            // A trial ends with nothing to charge: CANCELED or PAUSED, as the tenant says
            // (Stripe's trial_settings.end_behavior.missing_payment_method). The period stays.
            current.moved(dunning.missing_payment_method.status(), at)
        } else {
            renewed.current_period_start = at;
            renewed.current_period_end = add_months(at, months as u32);
            // A plan change scheduled for the period's end applies now: the new period is
            // charged at its amount.
            let amount = store::take_scheduled_amount(tx, &sub.account, &sub.id)
                .await?
                .unwrap_or(amount);
            if sub.collection_paused {
                // Nothing is collected while paused; the period moves on.
                Ok(current.clone())
            } else {
                let (status, code) = charge(sub);
                let id = format!("py_sbx_{}", Uuid::now_v7().simple());
                let payment = store::insert_renewal(
                    tx,
                    store::NewRenewal {
                        account: &sub.account,
                        new_id: &id,
                        subscription: sub,
                        period_start: at,
                        period_end: renewed.current_period_end,
                        amount,
                        currency,
                        status,
                        failure_code: code,
                    },
                )
                .await?;
                emit_payment(tx, &sub.account, &payment, at).await?;
                if payment.status == PaymentState::Succeeded {
                    renewed.retries = 0;
                    renewed.next_retry_at = None;
                    renewed.unpaid_payment = None;
                    current.moved(SubscriptionStatus::Active, at)
                } else {
                    renewed.retries = 0;
                    renewed.next_retry_at = Some(dunning.retry_at(at, 1));
                    renewed.unpaid_payment = Some(payment.id.clone());
                    current.moved(SubscriptionStatus::PastDue, at)
                }
            }
        }
        .map_err(|e| corrupt("sandbox renewal", e))?;
        apply(&mut renewed, &next)?;
    }
    let written = store::write_renewal(tx, &sub.account, &sub.id, &renewed).await?;
    let event = if written.status == SubscriptionState::Canceled {
        EventType::SubscriptionDeleted
    } else {
        EventType::SubscriptionUpdated
    };
    events::emit(
        tx,
        &sub.account,
        event,
        &objects::subscription(&written),
        at,
    )
    .await?;
    Ok(())
}

/// Resumes a PAUSED subscription `sub` (locked by the caller) at the account's time `now`, as
/// Stripe's `POST /v1/subscriptions/{id}/resume` does: a new period starts now and is charged
/// at once to the card on file. Paid: ACTIVE with that period. Declined (the 0341 card): the
/// failed payment is kept and the subscription stays PAUSED with its period, for the next
/// card or resume to try again. Queues the payment's and the subscription's events. The
/// caller has checked that a card is on file.
pub async fn resume(
    tx: &mut sqlx::PgConnection,
    sub: &Subscription,
    now: OffsetDateTime,
) -> Result<Subscription, StoreError> {
    let (Some(amount), Some(currency), Some(months)) =
        (sub.amount, sub.currency.as_deref(), sub.period_months)
    else {
        return Err(corrupt("sandbox subscription", "resumed without a price"));
    };
    // Whole seconds, as events carry them: a payment is keyed by its period's start.
    let now = now.replace_nanosecond(0).expect("0 is a valid nanosecond");
    let end = add_months(now, months as u32);
    let amount = store::take_scheduled_amount(tx, &sub.account, &sub.id)
        .await?
        .unwrap_or(amount);
    let (status, code) = charge(sub);
    let payment = store::insert_renewal(
        tx,
        store::NewRenewal {
            account: &sub.account,
            new_id: &format!("py_sbx_{}", Uuid::now_v7().simple()),
            subscription: sub,
            period_start: now,
            period_end: end,
            amount,
            currency,
            status,
            failure_code: code,
        },
    )
    .await?;
    emit_payment(tx, &sub.account, &payment, now).await?;
    let mut renewed = renewed_of(sub);
    if payment.status == PaymentState::Succeeded {
        let next = lifecycle_of(sub)
            .moved(SubscriptionStatus::Active, now)
            .map_err(|e| corrupt("sandbox resume", e))?;
        apply(&mut renewed, &next)?;
        renewed.current_period_start = now;
        renewed.current_period_end = end;
        renewed.retries = 0;
        renewed.unpaid_payment = None;
    }
    let written = store::write_renewal(tx, &sub.account, &sub.id, &renewed).await?;
    events::emit(
        tx,
        &sub.account,
        EventType::SubscriptionUpdated,
        &objects::subscription(&written),
        now,
    )
    .await?;
    Ok(written)
}

/// What a card newly on file (the portal's card change, already saved) does to `customer`'s
/// subscriptions that wait for one, at the account's time `now`, in the caller's
/// transaction: a PAUSED one (its trial ended without a card) is resumed ([`resume`]); an
/// INCOMPLETE one has its declined first charge tried again on the new card, ACTIVE when it
/// pays. Returns how many it touched.
pub async fn card_added(
    tx: &mut sqlx::PgConnection,
    account: &str,
    customer: &str,
    now: OffsetDateTime,
) -> Result<usize, StoreError> {
    let waiting = store::lock_waiting_for_card(tx, account, customer).await?;
    for sub in &waiting {
        match sub.status {
            SubscriptionState::Paused => {
                resume(tx, sub, now).await?;
            }
            SubscriptionState::Incomplete => pay_first_charge(tx, sub, now).await?,
            _ => {}
        }
    }
    Ok(waiting.len())
}

/// Tries an INCOMPLETE subscription's first charge again on the card now on file: paid, it is
/// ACTIVE with the period it was made with (Stripe's incomplete subscription whose first
/// invoice is paid); declined, it stays INCOMPLETE and still expires when it would have.
async fn pay_first_charge(
    tx: &mut sqlx::PgConnection,
    sub: &Subscription,
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    let Some(first) = store::find_renewal(tx, &sub.account, &sub.id, sub.created_at).await? else {
        return Err(corrupt(
            "sandbox subscription",
            "incomplete without its first charge",
        ));
    };
    let now = now.replace_nanosecond(0).expect("0 is a valid nanosecond");
    let (status, code) = charge(sub);
    let payment = store::settle_payment(tx, &sub.account, &first.id, status, code, now).await?;
    emit_payment(tx, &sub.account, &payment, now).await?;
    if payment.status != PaymentState::Succeeded {
        return Ok(());
    }
    let next = lifecycle_of(sub)
        .moved(SubscriptionStatus::Active, now)
        .map_err(|e| corrupt("sandbox first charge", e))?;
    let mut renewed = renewed_of(sub);
    apply(&mut renewed, &next)?;
    let written = store::write_renewal(tx, &sub.account, &sub.id, &renewed).await?;
    events::emit(
        tx,
        &sub.account,
        EventType::SubscriptionUpdated,
        &objects::subscription(&written),
        now,
    )
    .await?;
    Ok(())
}

/// The row as it is, to change and write back.
fn renewed_of(sub: &Subscription) -> store::Renewed {
    store::Renewed {
        status: sub.status,
        current_period_start: sub.current_period_start,
        current_period_end: sub.current_period_end,
        cancel_at_period_end: sub.cancel_at_period_end,
        collection_paused: sub.collection_paused,
        canceled_at: sub.canceled_at,
        retries: sub.retries,
        next_retry_at: sub.next_retry_at,
        unpaid_payment: sub.unpaid_payment.clone(),
    }
}

/// The lifecycle's state onto the row to write.
fn apply(renewed: &mut store::Renewed, next: &Lifecycle) -> Result<(), StoreError> {
    renewed.status = state_of(next.status)?;
    renewed.cancel_at_period_end = next.cancel_at_period_end;
    renewed.collection_paused = next.collection_paused;
    renewed.canceled_at = next.canceled_at;
    if next.status != SubscriptionStatus::PastDue {
        renewed.next_retry_at = None;
    }
    Ok(())
}

/// The card on file's answer: the 0341 card fails every renewal; every other card the
/// sandbox accepted pays.
fn charge(sub: &Subscription) -> (PaymentState, Option<&'static str>) {
    if sub.fails_on_renewal {
        (PaymentState::Failed, Some("card_declined"))
    } else {
        (PaymentState::Succeeded, None)
    }
}

async fn emit_payment(
    tx: &mut sqlx::PgConnection,
    account: &str,
    payment: &store::Payment,
    at: OffsetDateTime,
) -> Result<(), StoreError> {
    let event = if payment.status == PaymentState::Succeeded {
        EventType::PaymentSucceeded
    } else {
        EventType::PaymentFailed
    };
    events::emit(tx, account, event, &objects::payment(payment), at).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_retries_over_seven_days_are_spread_evenly() {
        let d = Dunning::default();
        let t0 = OffsetDateTime::from_unix_timestamp(1_764_590_000).unwrap();
        let days = |n: u32| (d.retry_at(t0, n) - t0).whole_seconds();
        assert_eq!(days(1), 201_600);
        assert_eq!(days(3), 604_800);
    }
}
