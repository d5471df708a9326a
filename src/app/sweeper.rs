//! Retention: deletes idempotency keys past their 24-hour retention, in small batches so it
//! never holds long locks; scrubs stored answers that lapsed (portal links past their expiry,
//! [`scrub_lapsed`]); expires checkout sessions still OPEN past their `expires_at`, with
//! their unpaid payments ([`expire_sessions`]); removes the payloads of settled webhook events
//! past their retention period (`Events::purge_payloads`); prunes the subscription change
//! outbox past its retention (`Changes::prune`). Apart, and more often: keeps the planner's
//! statistics of Coffer's tables current ([`keep_statistics`]) and folds the usage rollups'
//! per-connection rows of past minutes, hours and days into one each ([`fold_usage`]).

use std::time::Duration;

use super::App;
use crate::shutdown::CancellationToken;
use time::OffsetDateTime;

use crate::store::idempotency::{delete_expired_keys, scrub_lapsed_outcomes};
use crate::store::payments::expire_due_sessions;
use crate::store::stats;

const BATCH: i64 = 1_000;

/// Runs until shutdown, sweeping every `every`.
pub async fn run(app: App, every: Duration, stop: CancellationToken) {
    loop {
        // A sweep in progress is abandoned at shutdown: each batch is its own statement, so
        // nothing is left half-done, and the next start sweeps again.
        let swept = tokio::select! {
            swept = sweep_once(&app) => swept,
            () = stop.cancelled() => return,
        };
        match swept {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "swept expired idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "idempotency sweep failed"),
        }
        let scrubbed = tokio::select! {
            scrubbed = scrub_lapsed(&app) => scrubbed,
            () = stop.cancelled() => return,
        };
        match scrubbed {
            Ok(0) => {}
            Ok(n) => tracing::info!(scrubbed = n, "scrubbed lapsed idempotent answers"),
            Err(e) => tracing::warn!(error = %e, "idempotent answer scrub failed"),
        }
        let expired = tokio::select! {
            expired = expire_sessions(&app) => expired,
            () = stop.cancelled() => return,
        };
        match expired {
            Ok((0, _)) => {}
            Ok((sessions, payments)) => {
                tracing::info!(
                    sessions,
                    payments,
                    "expired checkout sessions past expires_at"
                )
            }
            Err(e) => tracing::warn!(error = %e, "checkout expiry failed"),
        }
        let purged = tokio::select! {
            done = app.events.purge_payloads() => done,
            () = stop.cancelled() => return,
        };
        match purged {
            Ok(0) => {}
            Ok(n) => tracing::info!(events = n, "webhook payloads past their retention removed"),
            Err(e) => tracing::warn!(error = %e, "webhook payload purge failed"),
        }
        let pruned = tokio::select! {
            done = app.changes.prune() => done,
            () = stop.cancelled() => return,
        };
        match pruned {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                events = n,
                "subscription events past their retention pruned"
            ),
            Err(e) => tracing::warn!(error = %e, "subscription event prune failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Deletes every expired key, a batch at a time; returns how many.
pub async fn sweep_once(app: &App) -> Result<u64, crate::store::StoreError> {
    let mut total = 0;
    loop {
        let mut conn = app.pool.acquire().await?;
        let n = delete_expired_keys(&mut conn, BATCH).await?;
        total += n;
        if n < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Scrubs every stored idempotent answer past its expiry (a portal link that no longer
/// works), in one statement; returns how many. A replay between the expiry and the scrub is
/// already refused (`store::idempotency::find_key`): the sweep only takes the bytes away.
pub async fn scrub_lapsed(app: &App) -> Result<u64, crate::store::StoreError> {
    let mut conn = app.pool.acquire().await?;
    scrub_lapsed_outcomes(&mut conn).await
}

/// Expires every OPEN checkout session whose `expires_at` has passed, and its CREATED,
/// PROVIDER_PENDING or FAILED payment, a batch (one statement) at a time; returns how many
/// sessions and payments. Coffer's own clock decides here; the provider's word, should it
/// differ (a payment taken in the last second), still wins when it arrives, being newer.
pub async fn expire_sessions(app: &App) -> Result<(u64, u64), crate::store::StoreError> {
    let (mut sessions, mut payments) = (0, 0);
    loop {
        let mut conn = app.pool.acquire().await?;
        let (s, p) = expire_due_sessions(&mut conn, OffsetDateTime::now_utc(), BATCH).await?;
        sessions += s;
        payments += p;
        let metrics = crate::app::payments::metrics();
        metrics.checkouts("expired", s);
        metrics.payments_expired(p);
        if s < BATCH as u64 {
            return Ok((sessions, payments));
        }
    }
}

/// How often [`fold_usage`] folds: a read costs the rollup rows it finds, one per writing
/// connection until folded, so past periods are folded within seconds rather than at the
/// sweep's minutes. A pass with nothing to fold is one index probe per level.
pub const FOLD_EVERY: Duration = Duration::from_secs(10);

/// Runs until shutdown: folds the usage rollups' per-connection rows of past periods
/// (`Usage::maintain`) every `every`.
pub async fn fold_usage(app: App, every: Duration, stop: CancellationToken) {
    loop {
        let maintained = tokio::select! {
            done = app.usage.maintain() => done,
            () = stop.cancelled() => return,
        };
        match maintained {
            Ok(0) => {}
            Ok(folded) => tracing::debug!(groups_folded = folded, "usage rollups folded"),
            Err(e) => tracing::warn!(error = ?e, "usage rollup fold failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// How often [`keep_statistics`] looks at the tables' change counters.
pub const STATISTICS_EVERY: Duration = Duration::from_secs(2);

/// Runs until shutdown: analyses each of Coffer's tables whose rows moved by more than its
/// size since its last analysis ([`stats::tables_to_analyze`]). Autovacuum does this where it
/// runs, but not in its first minute nor where it is off, and a statement's generic plan made
/// on a table without statistics stays a plan for an empty table: StreamUsage ran 3.5x slower
/// on a fresh database without autovacuum. A table that grows is analysed each time it
/// doubles; one whose rows churn (idempotency keys) as often as they are replaced.
pub async fn keep_statistics(app: App, every: Duration, stop: CancellationToken) {
    loop {
        let analysed = tokio::select! {
            done = analyze_moved(&app) => done,
            () = stop.cancelled() => return,
        };
        match analysed {
            Ok(tables) if tables.is_empty() => {}
            Ok(tables) => tracing::debug!(?tables, "analysed tables whose rows moved"),
            Err(e) => tracing::warn!(error = %e, "analysing moved tables failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Analyses every table whose rows moved; returns their names.
pub async fn analyze_moved(app: &App) -> Result<Vec<String>, crate::store::StoreError> {
    let mut conn = app.pool.acquire().await?;
    let tables = stats::tables_to_analyze(&mut conn).await?;
    for table in &tables {
        stats::analyze(&mut conn, table).await?;
    }
    Ok(tables)
}
