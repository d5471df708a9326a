//! The change stream of subscriptions: the outbox (`subscription_events`, written with each
//! change by `store::subscription_events::record_change`), one feed per process that follows
//! it, and the `WatchSubscriptionEvents` use case.
//!
//! The feed holds one LISTEN connection and also polls, so a lost notification (or a pooler
//! that drops LISTEN) only delays. Each pass reads the changes that became visible in order
//! (below the snapshot's xmin), tells the access cache whose entries to drop, and moves the
//! process's position, which wakes every open stream; a stream then reads its own tenant's
//! rows after its cursor. So there is one listener per process, however many streams are open,
//! and a stream's rows come from the table, never from memory that a restart would lose.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Semaphore, mpsc, watch};

use super::access::Access;
use super::{AppError, RejectionKind, TenantCtx};
use crate::domain::subscription::{ChangeKind, EventCursor, SubscriptionEvent};
use crate::shutdown::{CancellationToken, TaskTracker};
use crate::store::subscription_events as store;

pub const REASON_CURSOR_EXPIRED: &str = "CURSOR_EXPIRED";

/// Rows one read of the outbox takes.
const BATCH: i64 = 200;

/// How long the feed waits before trying LISTEN again after it failed.
const LISTEN_RETRY: Duration = Duration::from_secs(5);

/// Messages a stream holds ready for a slow client before it stops reading.
const STREAM_BUFFER: usize = 64;

/// How the change stream runs.
#[derive(Debug, Clone)]
pub struct ChangesConfig {
    /// How long outbox rows are kept (`--subscription-events-retention`, default 7 days); a
    /// cursor older than this is refused with `CURSOR_EXPIRED`.
    pub retention: Duration,
    /// How often the feed reads the outbox without a notification.
    pub poll: Duration,
    /// WatchSubscriptionEvents streams open at once in this process; more are refused with
    /// RESOURCE_EXHAUSTED. Within the server's stream budget.
    pub max_streams: usize,
}

impl Default for ChangesConfig {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 86_400),
            poll: Duration::from_millis(250),
            max_streams: 256,
        }
    }
}

/// The process's change feed and the streams it wakes.
#[derive(Clone)]
pub struct Changes {
    pool: PgPool,
    /// The LISTEN session's own connection, outside the calls' pool.
    listen_pool: PgPool,
    config: ChangesConfig,
    tasks: TaskTracker,
    /// The feed's position, (xid, seq): changes up to it have been read; streams wake when it
    /// moves.
    position: Arc<watch::Sender<(i64, i64)>>,
    streams: Arc<Semaphore>,
    /// Ends the streams' readers when the process stops.
    stop: CancellationToken,
}

impl Changes {
    pub fn new(pool: PgPool, config: ChangesConfig, tasks: TaskTracker) -> Self {
        Self {
            listen_pool: crate::store::pool::side_pool(&pool, "coffer changes"),
            pool,
            streams: Arc::new(Semaphore::new(config.max_streams)),
            config,
            tasks,
            position: Arc::new(watch::channel((0, 0)).0),
            stop: CancellationToken::new(),
        }
    }

    pub fn config(&self) -> &ChangesConfig {
        &self.config
    }

    /// Follows the outbox until `stop`: wakes on a notification or every `poll`, reads what
    /// became visible, drops those customers' entries from `access`'s cache, and moves the
    /// position. Starts at the end: what happened before the process started is not cached.
    pub async fn run_feed(self, access: Access, stop: CancellationToken) {
        let _stop_streams = self.stop.clone().drop_guard();
        let mut position = loop {
            let start = async {
                let mut conn = self.pool.acquire().await?;
                store::feed_end(&mut conn).await
            };
            match start.await {
                Ok(p) => break p,
                Err(e) => {
                    tracing::warn!(error = %e, "change feed cannot start; trying again");
                    tokio::select! {
                        () = tokio::time::sleep(self.config.poll) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        };
        self.position.send_replace(position);
        access.feed_started();
        let mut seen = HashSet::new();
        let mut listener = None;
        // When to try LISTEN again after it failed: polling carries on meanwhile, and a
        // database that refuses connections is not asked on every poll.
        let mut listen_at = tokio::time::Instant::now();
        loop {
            if listener.is_none() && tokio::time::Instant::now() >= listen_at {
                listener = listen(&self.listen_pool).await;
                listen_at = tokio::time::Instant::now() + LISTEN_RETRY;
            }
            match self.read_feed(&access, position, &mut seen).await {
                Ok(p) => {
                    if p != position {
                        position = p;
                        self.position.send_replace(position);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "change feed read failed; polling on"),
            }
            let wait = async {
                match &mut listener {
                    Some(l) => {
                        if let Err(e) = l.recv().await {
                            tracing::debug!(error = %e, "change listener lost; polling");
                            return false;
                        }
                        true
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                heard = wait => {
                    if !heard {
                        listener = None;
                    }
                }
                () = tokio::time::sleep(self.config.poll) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    /// Reads every change committed after the settled position `from`, dropping its
    /// customer's cache entry the first time it is seen (committed is enough for a cache:
    /// a transaction left open elsewhere must not delay it); returns the new settled
    /// position, the last change below the snapshot's xmin, which is what streams wait for.
    /// `seen` remembers the changes above it already acted on.
    async fn read_feed(
        &self,
        access: &Access,
        mut settled: (i64, i64),
        seen: &mut HashSet<(i64, i64)>,
    ) -> Result<(i64, i64), crate::store::StoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut scan = settled;
        loop {
            let rows = store::feed_after(&mut conn, scan.0, scan.1, BATCH).await?;
            for row in &rows {
                let at = (row.xid, row.seq);
                if row.settled {
                    settled = at;
                }
                if seen.insert(at) {
                    access.invalidate(row.tenant, row.customer);
                }
            }
            if let Some(last) = rows.last() {
                scan = (last.xid, last.seq);
            }
            if (rows.len() as i64) < BATCH {
                seen.retain(|at| *at > settled);
                return Ok(settled);
            }
        }
    }

    /// Opens a WatchSubscriptionEvents stream: the tenant's changes after `after` (from the
    /// oldest kept when `None`), of `kinds` (all when empty), in order, then each new one as
    /// it becomes visible. The stream's reader runs on the app's tasks and stops when the
    /// client goes away or the process stops.
    pub fn watch(
        &self,
        ctx: &TenantCtx,
        after: Option<EventCursor>,
        kinds: Vec<ChangeKind>,
    ) -> Result<mpsc::Receiver<Result<SubscriptionEvent, AppError>>, AppError> {
        let now = super::customers::now_micros();
        let retention =
            time::Duration::try_from(self.config.retention).unwrap_or(time::Duration::MAX);
        if let Some(c) = after
            && c.expired(now, retention)
        {
            return Err(AppError::rejected(
                RejectionKind::FailedPrecondition,
                REASON_CURSOR_EXPIRED,
                "the cursor is older than the events kept; start again from a fresh read",
            ));
        }
        let permit = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| AppError::Overloaded("subscription event streams"))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let this = self.clone();
        let tenant = ctx.tenant;
        let mut cursor = after.unwrap_or(EventCursor::START);
        self.tasks.spawn(async move {
            let _permit = permit;
            let mut woken = this.position.subscribe();
            loop {
                // Marks the position seen before reading, so a change that lands during the
                // read wakes the next wait.
                woken.borrow_and_update();
                let read = async {
                    let mut conn = this.pool.acquire().await?;
                    store::events_after(&mut conn, tenant, cursor, &kinds, BATCH).await
                };
                let rows = tokio::select! {
                    rows = read => rows,
                    () = tx.closed() => return,
                    () = this.stop.cancelled() => return,
                };
                let full = match rows {
                    Ok(rows) => {
                        let full = rows.len() as i64 == BATCH;
                        for event in rows {
                            cursor = event.cursor;
                            if tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                        full
                    }
                    Err(e) => {
                        // Ends the stream with the store's code (UNAVAILABLE when the
                        // database is down); the client resumes from its last cursor.
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if full {
                    continue;
                }
                tokio::select! {
                    changed = woken.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    // The feed may be down; a stream still finds its rows in time.
                    () = tokio::time::sleep(this.config.poll * 4) => {}
                    () = tx.closed() => return,
                    () = this.stop.cancelled() => return,
                }
            }
        });
        Ok(rx)
    }

    /// Deletes outbox rows past the retention (and a minute, so a row written by a
    /// transaction that began before its cursor's is never pruned while the cursor is still
    /// accepted); returns how many.
    pub async fn prune(&self) -> Result<u64, crate::store::StoreError> {
        let Ok(retention) = time::Duration::try_from(self.config.retention) else {
            return Ok(0);
        };
        let Some(before) =
            time::OffsetDateTime::now_utc().checked_sub(retention + time::Duration::MINUTE)
        else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let mut conn = self.pool.acquire().await?;
            let n = store::prune_events(&mut conn, before, 1_000).await?;
            total += n;
            if n < 1_000 {
                return Ok(total);
            }
        }
    }
}

/// A LISTEN session on the outbox's channel, or `None` (logged) when it cannot be had.
async fn listen(pool: &PgPool) -> Option<PgListener> {
    match tokio::time::timeout(Duration::from_secs(5), store::listen(pool)).await {
        Ok(Ok(l)) => Some(l),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot LISTEN for changes; polling");
            None
        }
        Err(_) => None,
    }
}
