//! Retention: deletes idempotency keys past their 24-hour retention, in small batches so it
//! never holds long locks; folds past hours' usage rollup rows into one per hour
//! (`Usage::maintain`).

use std::time::Duration;

use super::App;
use crate::shutdown::CancellationToken;
use crate::store::idempotency::delete_expired_keys;

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
        let maintained = tokio::select! {
            done = app.usage.maintain() => done,
            () = stop.cancelled() => return,
        };
        match maintained {
            Ok(0) => {}
            Ok(folded) => tracing::info!(hours_folded = folded, "usage rollups folded"),
            Err(e) => tracing::warn!(error = ?e, "usage rollup fold failed"),
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
