//! The sandbox's clock and what follows it: each account's sandbox time is `now() +
//! clock_offset`, which AdvanceClock moves forward (never back), and open checkout sessions
//! whose `expires_at` has passed on their account's clock are expired, with a
//! `checkout.session.expired` event each.
//!
//! Expiry is set-based: one statement expires a batch (bumping each session's version), one
//! more queues its events, in one transaction, so an expired session and its event exist
//! together or not at all. AdvanceClock expires the account's due sessions in its own
//! transaction; a periodic pass ([`run_expirer`]) does the rest, on every replica (sessions
//! another pass holds are skipped).

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;

use super::events::{EventType, emit_many};
use super::objects::{self, CheckoutSession};
use crate::domain::ids::TenantId;
use crate::providers::sandbox::store::{self as store, ClockMove};
use crate::shutdown::CancellationToken;
use crate::store::StoreError;

/// Sessions expired per statement.
const BATCH: i64 = 500;

/// Moves the tenant's sandbox account `account` so its sandbox time is `to`, then expires its
/// sessions due by then, in the caller's transaction.
pub async fn advance(
    conn: &mut PgConnection,
    tenant: TenantId,
    account: &str,
    to: OffsetDateTime,
) -> Result<ClockMove, StoreError> {
    let moved = store::advance_clock(conn, tenant, account, to).await?;
    if let ClockMove::Moved(_) = moved {
        while expire_batch(conn, Some(account)).await? == BATCH as usize {}
    }
    Ok(moved)
}

/// Expires one batch of due sessions (of `account`, or of every account) and queues their
/// events. Returns how many expired.
pub async fn expire_batch(
    conn: &mut PgConnection,
    account: Option<&str>,
) -> Result<usize, StoreError> {
    let expired = store::expire_due_sessions(conn, account, BATCH).await?;
    let events: Vec<(&str, serde_json::Value, OffsetDateTime)> = expired
        .iter()
        .map(|s| {
            let object = objects::checkout_session(&CheckoutSession {
                id: &s.id,
                client_reference: s.client_reference,
                customer: &s.customer,
                mode: s.mode,
                status: s.status,
                payment_status: s.payment_status,
                amount_total: s.amount_total,
                currency: &s.currency,
                expires_at: s.expires_at,
                payment: s.payment.as_deref(),
                subscription: s.subscription.as_deref(),
                version: s.version,
            });
            (s.account.as_str(), object, s.sandbox_now)
        })
        .collect();
    emit_many(conn, EventType::CheckoutExpired, &events).await?;
    Ok(expired.len())
}

/// Expires due sessions, and applies due renewals (`renewals`, with `dunning`), every `every`
/// until `stop`: what AdvanceClock began and a crash interrupted is finished here.
pub async fn run_expirer(
    pool: PgPool,
    every: Duration,
    dunning: super::renewals::DunningTable,
    stop: CancellationToken,
) {
    let every = every.max(Duration::from_millis(10));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let pass = async {
            loop {
                let mut tx = pool.begin().await?;
                let n = expire_batch(&mut tx, None).await?;
                tx.commit().await?;
                if n > 0 {
                    tracing::info!(sessions = n, "sandbox sessions expired");
                }
                if n < BATCH as usize {
                    let steps = super::renewals::run_due(&pool, None, &dunning).await?;
                    if steps > 0 {
                        tracing::info!(steps, "sandbox renewals applied");
                    }
                    return Ok::<_, StoreError>(());
                }
            }
        };
        let ran = tokio::select! {
            ran = pass => ran,
            () = stop.cancelled() => return,
        };
        if let Err(e) = ran {
            tracing::warn!(error = %e, "sandbox expiry pass failed; trying again next time");
        }
    }
}
