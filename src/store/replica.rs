//! Reads that tolerate a bounded lag, and where they go: a streaming replica
//! (`--database-read-url`) while its replay lag is within the bound, else the primary.
//!
//! The guarantee: a read sent to the replica sees every transaction committed on the primary
//! more than `max_lag + check_interval` before it (a little more: one check's own round trip,
//! at most the interval or [`CHECK_TIMEOUT`], whichever is longer).
//! The lag is measured every `check_interval` on the replica itself:
//!
//! - caught up (its WAL receiver is streaming and has replayed all it received): 0;
//! - otherwise `now() - pg_last_xact_replay_timestamp()`, the age of the last transaction it
//!   replayed. With an idle primary that age is old, so a replica that has just received new
//!   WAL may be judged lagging for one check: reads go to the primary meanwhile, never the
//!   other way.
//!
//! Above `max_lag`, or when the check fails (replica down, not a replica of anything, no
//! answer within the interval), reads go to the primary until a check passes again. A replica
//! cut off from its primary is seen only once its WAL receiver stops streaming
//! (`wal_receiver_timeout`, 60 s by default, on the replica): lower it where that matters.
//! Reads that must see their own writes never come here: they use the primary pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// How a replica's reads are bounded (`--database-read-max-lag`,
/// `--database-read-check-interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaBound {
    /// The most replay lag at which reads still go to the replica.
    pub max_lag: Duration,
    /// How often the lag is measured.
    pub check_interval: Duration,
}

impl Default for ReplicaBound {
    fn default() -> Self {
        Self {
            max_lag: Duration::from_secs(5),
            check_interval: Duration::from_secs(1),
        }
    }
}

/// The least time a lag check is given before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// A read replica to use: its pool (`--database-read-url`) and bound.
#[derive(Debug, Clone)]
pub struct ReadReplica {
    pub pool: PgPool,
    pub bound: ReplicaBound,
}

/// The pool for reads that tolerate a bounded lag. Cheap to clone; every clone follows the
/// same checks.
#[derive(Clone, Debug)]
pub struct ReadPool {
    primary: PgPool,
    replica: Option<Arc<Replica>>,
}

#[derive(Debug)]
struct Replica {
    pool: PgPool,
    bound: ReplicaBound,
    /// Whether the last check found the lag within the bound. False until the first passes.
    usable: AtomicBool,
    metrics: ReplicaMetrics,
}

#[derive(Debug, Clone, Default)]
struct ReplicaMetrics {
    lag_ms: Gauge,
    in_use: Gauge,
    fallbacks: Counter,
}

impl ReadPool {
    /// Every read on the primary: no replica configured.
    pub fn primary_only(primary: PgPool) -> Self {
        Self {
            primary,
            replica: None,
        }
    }

    /// Reads on `replica` while its lag is within `bound` (from the first passing check on,
    /// see [`ReadPool::watch`]), else on `primary`.
    pub fn with_replica(primary: PgPool, replica: PgPool, bound: ReplicaBound) -> Self {
        Self {
            primary,
            replica: Some(Arc::new(Replica {
                pool: replica,
                bound,
                usable: AtomicBool::new(false),
                metrics: ReplicaMetrics::default(),
            })),
        }
    }

    /// The pool a lag-tolerant read uses now.
    pub fn get(&self) -> &PgPool {
        match &self.replica {
            Some(r) if r.usable.load(Ordering::Relaxed) => &r.pool,
            _ => &self.primary,
        }
    }

    /// Whether reads go to the replica now.
    pub fn on_replica(&self) -> bool {
        self.replica
            .as_ref()
            .is_some_and(|r| r.usable.load(Ordering::Relaxed))
    }

    /// `coffer_database_read_replica_lag_milliseconds` (the last measured lag, -1 when the
    /// check failed), `coffer_database_read_replica_in_use` (1 while reads go to the replica)
    /// and `coffer_database_read_replica_fallbacks_total` (each time reads moved back to the
    /// primary). Nothing without a replica.
    pub fn register(&self, registry: &mut Registry) {
        let Some(r) = &self.replica else { return };
        registry.register(
            "coffer_database_read_replica_lag_milliseconds",
            "The read replica's replay lag at the last check (-1: the check failed)",
            r.metrics.lag_ms.clone(),
        );
        registry.register(
            "coffer_database_read_replica_in_use",
            "1 while lag-tolerant reads go to the read replica, 0 while they go to the primary",
            r.metrics.in_use.clone(),
        );
        registry.register(
            "coffer_database_read_replica_fallbacks",
            "Times lag-tolerant reads moved from the read replica back to the primary",
            r.metrics.fallbacks.clone(),
        );
    }

    /// Measures the replica's lag now and routes reads by it; the lag, or `None` when the
    /// check failed. Nothing to do without a replica.
    pub async fn check(&self) -> Option<Duration> {
        let r = self.replica.as_ref()?;
        // A check slower than this counts as failed: reads go to the primary meanwhile.
        let limit = r.bound.check_interval.max(CHECK_TIMEOUT);
        let lag = tokio::time::timeout(limit, lag(&r.pool))
            .await
            .ok()
            .and_then(|lag| match lag {
                Ok(lag) => lag,
                Err(e) => {
                    tracing::debug!(error = %e, "read replica check failed");
                    None
                }
            });
        let usable = lag.is_some_and(|lag| lag <= r.bound.max_lag);
        let was = r.usable.swap(usable, Ordering::Relaxed);
        r.metrics
            .lag_ms
            .set(lag.map_or(-1, |l| i64::try_from(l.as_millis()).unwrap_or(i64::MAX)));
        r.metrics.in_use.set(i64::from(usable));
        if was && !usable {
            r.metrics.fallbacks.inc();
            tracing::warn!(
                lag_ms = lag.map(|l| l.as_millis() as u64),
                max_lag_ms = r.bound.max_lag.as_millis() as u64,
                "read replica lagging or unreachable: reads go to the primary"
            );
        } else if !was && usable {
            tracing::info!("read replica within its lag bound: reads go to it");
        }
        lag
    }

    /// Checks every `check_interval` until `stop`.
    pub async fn watch(self, stop: CancellationToken) {
        let Some(every) = self.replica.as_ref().map(|r| r.bound.check_interval) else {
            return;
        };
        loop {
            self.check().await;
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// The replica's replay lag (see the module doc); `None` when it cannot say (never replayed a
/// transaction).
async fn lag(pool: &PgPool) -> Result<Option<Duration>, sqlx::Error> {
    let ms: Option<i64> = sqlx::query_scalar(
        "SELECT CASE
             WHEN NOT pg_is_in_recovery() THEN 0
             WHEN EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')
                  AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
             ELSE (EXTRACT(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::int8
         END",
    )
    .fetch_one(pool)
    .await?;
    Ok(ms.map(|ms| Duration::from_millis(ms.max(0) as u64)))
}
