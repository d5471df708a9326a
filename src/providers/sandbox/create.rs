//! Subscriptions made without a checkout (CreateSubscription): on a trial, or charging the
//! first period to the customer's card on file now — the card of an earlier checkout, as the
//! sandbox keeps it (its payments and subscriptions record whether it is the 0341 card, which
//! paid at its checkout and fails every later charge).
//!
//! The subscription names itself as its session (it has none) and Coffer's subscription id as
//! its client reference; its first charge is a payment of the period that starts now, like a
//! renewal's. Made once per client reference: a repeated request answers what was made.

use sqlx::PgConnection;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::events::{self, EventType};
use super::objects;
use super::page::add_months;
use super::status::{PaymentState, SubscriptionState};
use super::store::{self, Payment, Subscription};
use crate::domain::plan::{Billing, Interval};
use crate::domain::subscription::{self as domain, CardOnFile, Start, TrialDays};
use crate::providers::{PAYMENT_METHOD_REQUIRED, ProviderError, SubscriptionRequest};
use crate::store::StoreError;

/// How long an INCOMPLETE subscription waits for its first charge to be paid before it is
/// INCOMPLETE_EXPIRED: Stripe's 23 hours.
pub const INCOMPLETE_FOR: Duration = Duration::hours(23);

/// Makes the subscription `r` asks on `account` (at the account's time `now`), with its first
/// charge and the events reporting both, in the caller's transaction; or answers the one made
/// already for the same client reference. The inner error is the sandbox's refusal.
pub async fn make(
    tx: &mut PgConnection,
    account: &str,
    r: &SubscriptionRequest,
    now: OffsetDateTime,
) -> Result<Result<(Subscription, Option<Payment>), ProviderError>, StoreError> {
    if let Some(sub) =
        store::find_subscription_by_reference(tx, account, r.client_reference).await?
    {
        let first = store::find_renewal(tx, account, &sub.id, sub.created_at).await?;
        return Ok(Ok((sub, first)));
    }
    let Some(customer) = r.customer.as_deref() else {
        return Ok(Err(ProviderError::definitive(
            "parameter_missing",
            "a subscription needs a customer",
        )));
    };
    let Billing::Recurring {
        interval, count, ..
    } = r.billing
    else {
        return Ok(Err(ProviderError::definitive(
            "parameter_invalid",
            "a subscription needs a recurring price",
        )));
    };
    let months = match interval {
        Interval::Month => u32::from(count),
        Interval::Year => 12 * u32::from(count),
    };
    let Some(amount) = r.unit.amount().checked_mul(i64::from(r.quantity)) else {
        return Ok(Err(ProviderError::definitive(
            "parameter_invalid",
            "the amount is too large",
        )));
    };
    let card = store::find_card_on_file(tx, account, customer)
        .await?
        .map(|fails| {
            if fails {
                CardOnFile::Declines
            } else {
                CardOnFile::Pays
            }
        });
    let trial =
        TrialDays::parse(u32::from(r.trial_days)).unwrap_or(TrialDays::parse(0).expect("0"));
    let start = match domain::start(trial, card) {
        Ok(start) => start,
        Err(e) => {
            return Ok(Err(ProviderError::definitive(
                PAYMENT_METHOD_REQUIRED,
                e.to_string(),
            )));
        }
    };
    let trial_end = (start == Start::Trial).then(|| now + Duration::days(r.trial_days.into()));
    let id = format!("sub_sbx_{}", Uuid::now_v7().simple());
    let currency = r.unit.currency().code();
    let sub = store::insert_subscription(
        tx,
        store::NewSubscription {
            account,
            id: &id,
            // It has no session: it names itself, which no session is called.
            session_id: &id,
            client_reference: r.client_reference,
            customer,
            status: SubscriptionState::of(start.status()).expect("the sandbox makes each start"),
            current_period_start: now,
            current_period_end: trial_end.unwrap_or_else(|| add_months(now, months)),
            trial_end,
            fails_on_renewal: card == Some(CardOnFile::Declines),
            amount,
            currency,
            period_months: months as i32,
            now,
            // Stripe expires a subscription whose first invoice stays unpaid 23 hours.
            expires_at: (start == Start::FirstChargeFailed).then(|| now + INCOMPLETE_FOR),
        },
    )
    .await?;
    if card.is_none() {
        store::set_no_card_on_file(tx, account, &id).await?;
    }
    events::emit(
        tx,
        account,
        EventType::SubscriptionCreated,
        &objects::subscription(&sub),
        now,
    )
    .await?;
    let payment = match start {
        Start::Trial => None,
        Start::Paid | Start::FirstChargeFailed => {
            let (status, code) = if start == Start::Paid {
                (PaymentState::Succeeded, None)
            } else {
                (PaymentState::Failed, Some("card_declined"))
            };
            let payment = store::insert_renewal(
                tx,
                store::NewRenewal {
                    account,
                    new_id: &format!("py_sbx_{}", Uuid::now_v7().simple()),
                    subscription: &sub,
                    period_start: now,
                    period_end: sub.current_period_end,
                    amount,
                    currency,
                    status,
                    failure_code: code,
                },
            )
            .await?;
            let event = if status == PaymentState::Succeeded {
                EventType::PaymentSucceeded
            } else {
                EventType::PaymentFailed
            };
            events::emit(tx, account, event, &objects::payment(&payment), now).await?;
            Some(payment)
        }
    };
    Ok(Ok((sub, payment)))
}
