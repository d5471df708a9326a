//! Plan changes on the sandbox (ChangeSubscriptionPlan and its preview), by the domain's
//! proration rule: a change now credits the unused time on the old amount and charges the
//! remaining time on the new one, to the second, and what is due is charged at once as a
//! payment on the card on file (naming the subscription, with the proration time as its
//! period start); a change at the period's end is scheduled, and the renewal charges it.

use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use super::events::{self, EventType};
use super::objects;
use super::status::PaymentState;
use super::store::{self, Subscription};
use crate::domain::proration::{self, Proration};
use crate::domain::subscription::{Effective, PlanChange};
use crate::providers::{PlanChangePreview, ProviderError};
use crate::store::StoreError;

/// What `change` charges now on `sub` at the sandbox time `now`, and the (whole-second)
/// proration time it is computed at.
pub fn price(
    sub: &Subscription,
    change: &PlanChange,
    now: OffsetDateTime,
) -> Result<(Proration, OffsetDateTime, String), ProviderError> {
    let (Some(old_total), Some(currency)) = (sub.amount, sub.currency.clone()) else {
        return Err(ProviderError::definitive(
            "no_price",
            "this subscription charges no amount to change",
        ));
    };
    let at = change.proration_time.unwrap_or(now);
    let at = OffsetDateTime::from_unix_timestamp(at.unix_timestamp())
        .map_err(|e| ProviderError::definitive("invalid_proration_time", e.to_string()))?;
    let behavior = match change.effective {
        // Nothing is prorated when the change waits for the renewal.
        Effective::PeriodEnd => proration::Behavior::None,
        Effective::Now => change.proration,
    };
    let p = proration::prorate(
        old_total,
        change.new_total,
        sub.current_period_start,
        sub.current_period_end,
        at,
        behavior,
    )
    .map_err(|e| ProviderError::definitive("invalid_proration_time", e.to_string()))?;
    Ok((p, at, currency))
}

pub fn preview(
    sub: &Subscription,
    change: &PlanChange,
    now: OffsetDateTime,
) -> Result<PlanChangePreview, ProviderError> {
    let (p, at, currency) = price(sub, change, now)?;
    Ok(PlanChangePreview {
        amount_due: if p.invoice_now { p.amount_due } else { 0 },
        currency,
        lines: p.lines,
        proration_time: at,
    })
}

/// Makes `change` to the locked `sub`: charges the proration (refused, with nothing written,
/// when the card on file declines) and sets the amount now, or schedules it.
pub async fn make(
    tx: &mut PgConnection,
    sub: &Subscription,
    change: &PlanChange,
    now: OffsetDateTime,
) -> Result<Result<(), ProviderError>, StoreError> {
    let (p, at, currency) = match price(sub, change, now) {
        Ok(priced) => priced,
        Err(e) => return Ok(Err(e)),
    };
    if change.effective == Effective::PeriodEnd {
        store::schedule_amount(tx, &sub.account, &sub.id, change.new_total).await?;
        return Ok(Ok(()));
    }
    if p.invoice_now && p.amount_due > 0 {
        if sub.fails_on_renewal {
            return Ok(Err(ProviderError::Definitive {
                code: "card_declined".into(),
                message: "the card on file was declined".into(),
                decline_code: Some("generic_decline".into()),
            }));
        }
        let id = format!("py_sbx_{}", Uuid::now_v7().simple());
        let payment = store::insert_renewal(
            tx,
            store::NewRenewal {
                account: &sub.account,
                new_id: &id,
                subscription: sub,
                period_start: at,
                period_end: sub.current_period_end,
                amount: p.amount_due,
                currency: &currency,
                status: PaymentState::Succeeded,
                failure_code: None,
            },
        )
        .await?;
        events::emit(
            tx,
            &sub.account,
            EventType::PaymentSucceeded,
            &objects::payment(&payment),
            now,
        )
        .await?;
    }
    store::set_subscription_amount(tx, &sub.account, &sub.id, change.new_total).await?;
    Ok(Ok(()))
}
