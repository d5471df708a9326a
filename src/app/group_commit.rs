//! Group commit: rows that concurrent calls write with the same statement share one statement
//! and one commit.
//!
//! Every statement costs Postgres a parse-bind-execute, a commit (a WAL flush) and a round
//! trip whatever it holds, so under load those fixed costs, not the rows, set the rate. A
//! [`GroupCommit`] has a few writer slots. A caller that finds a slot free and nobody waiting
//! writes its own row at once, so a quiet server answers as fast as with no batching at all.
//! Only while every slot is busy do rows queue, and the next slot to come free takes all of
//! them (up to [`MAX_BATCH`]) as one batch. It never waits to fill a batch: batches grow with
//! the load.
//!
//! What makes this safe for any write path:
//!
//! - **Per-row results.** A batch statement finds each row's expected outcome itself (`ON
//!   CONFLICT DO NOTHING`, a lease that no longer holds) and returns one result per row, so a
//!   conflicting row never fails the rows beside it, other tenants' included.
//! - **Bounded.** The queue holds at most `max_queued` rows; past that a row is refused at once
//!   (RESOURCE_EXHAUSTED), not queued. Rows of different sizes (a client's batch of usage
//!   events) are counted by weight, for the queue and for each batch.
//! - **Nothing written for a caller that gave up.** Rows whose caller has gone (its deadline
//!   passed, its client hung up) are dropped from a batch before it is written.
//! - **One lock order.** A batch is sorted by the write's own order (the keys it locks or
//!   inserts), so two batches cannot deadlock on each other.
//! - **No stranded rows.** Batches are written on tasks of the app's tracker; a writer that
//!   panics drops its batch's reply channels (its callers get an error, never silence), and
//!   its slot guard hands the queue to the next writer.
//! - **One failure, one answer each.** A batch that fails as a whole (the database is gone)
//!   answers every caller with the same kind of error. An unexpected error in a batch of
//!   several is retried row by row, so one bad row fails only its own caller.
//!
//! Every statement has a client span from `store`. A row written by its own caller is a child
//! of the caller's span; a batch belongs to no one caller, so its span is a root that links to
//! the span of every caller whose row it carries.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_core::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::AppError;
use crate::store::StoreError;

/// The one statement that writes a batch: one result per row, in the rows' order.
pub type WriteFn<R, O> =
    for<'c> fn(&'c mut PgConnection, &'c [R]) -> BoxFuture<'c, Result<Vec<O>, StoreError>>;

/// The order rows are written in within a batch.
pub type OrderFn<R> = fn(&R, &R) -> Ordering;

/// The most rows one statement carries: enough to share a commit many times over, few enough
/// that a batch stays well inside the statement timeout. A [`GroupCommit`] whose rows differ in
/// size (a row that is itself a batch of usage events) counts by weight instead.
pub const MAX_BATCH: usize = 256;

/// How much of a batch a row takes up.
pub type WeightFn<R> = fn(&R) -> usize;

struct Entry<R, O> {
    row: R,
    reply: oneshot::Sender<Result<O, StoreError>>,
    /// The caller's span, which a batch's span links to.
    caller: tracing::Span,
}

/// The rows waiting for a writer, and their total weight.
struct Queue<R, O> {
    entries: VecDeque<Entry<R, O>>,
    weight: usize,
}

impl<R, O> Default for Queue<R, O> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            weight: 0,
        }
    }
}

struct Inner<R, O> {
    queue: Mutex<Queue<R, O>>,
    /// The most weight the queue holds; past it a row is refused.
    max_queued: usize,
    /// The most weight one batch carries (a single heavier row is still written, alone).
    max_batch: usize,
    weight: WeightFn<R>,
    slots: Arc<Semaphore>,
    pool: PgPool,
    write: WriteFn<R, O>,
    order: OrderFn<R>,
    tasks: TaskTracker,
    /// What the statement writes, for spans and logs.
    name: &'static str,
}

/// Writer slots and a bounded queue of rows for one batch statement. Cheap to clone.
pub struct GroupCommit<R, O> {
    inner: Arc<Inner<R, O>>,
}

impl<R, O> Clone for GroupCommit<R, O> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// How many batches of one kind may be written at once, for rows that are each one call's row
/// (a customer, a webhook event, a claim): one writer per 16 connections of the pool, at least
/// one. Such a statement costs mostly its fixed part (parse, plan, executor set-up, commit), so
/// fewer writers make larger batches and each fixed cost is shared by more rows; rows queue
/// while the writer writes, and it takes them all next. With the default pool of 16, one writer
/// instead of two took CreateCustomer from 0.91-0.94x to 1.06-1.12x of the single-row insert
/// baseline at 64 in flight, and the default webhooks from 0.92-0.95x to 1.04-1.05x
/// (BENCHMARKS.md, "One writer per kind"); two instead of four had taken webhooks from 10 500
/// to 12 400 deliveries/s before.
pub fn writers_for(pool: &PgPool) -> usize {
    (pool.options().get_max_connections() as usize / 16).max(1)
}

/// Writers for rows that are themselves batches ([`GroupCommit::weighed`], a client's usage
/// events): twice [`writers_for`]. Such a statement costs mostly its rows, and a second writer
/// executes while the first commits: one writer instead of two took StreamUsage from 2.4-2.7x
/// to 1.8-1.9x of the COPY baseline.
fn weighed_writers_for(pool: &PgPool) -> usize {
    2 * writers_for(pool)
}

impl<R: Send + Sync + 'static, O: Send + 'static> GroupCommit<R, O> {
    pub fn new(
        name: &'static str,
        pool: PgPool,
        tasks: TaskTracker,
        write: WriteFn<R, O>,
        order: OrderFn<R>,
    ) -> Self {
        let writers = writers_for(&pool);
        Self {
            inner: Arc::new(Inner {
                queue: Mutex::default(),
                max_queued: MAX_BATCH * 4,
                max_batch: MAX_BATCH,
                weight: |_| 1,
                slots: Arc::new(Semaphore::new(writers)),
                pool,
                write,
                order,
                tasks,
                name,
            }),
        }
    }

    /// Bounds the queue at `rows` instead of the default (four full batches).
    pub fn with_max_queued(self, rows: usize) -> Self {
        let inner = Arc::into_inner(self.inner).expect("bounded before it is shared");
        Self {
            inner: Arc::new(Inner {
                max_queued: rows,
                ..inner
            }),
        }
    }

    /// Counts each row as `weight` of it: a batch carries at most `max_batch` of weight and the
    /// queue at most `max_queued`.
    pub fn weighed(self, weight: WeightFn<R>, max_batch: usize, max_queued: usize) -> Self {
        let inner = Arc::into_inner(self.inner).expect("weighed before it is shared");
        Self {
            inner: Arc::new(Inner {
                weight,
                max_batch,
                max_queued,
                slots: Arc::new(Semaphore::new(weighed_writers_for(&inner.pool))),
                ..inner
            }),
        }
    }

    /// How many rows wait for a writer.
    pub fn queued(&self) -> usize {
        self.inner.queue().entries.len()
    }

    /// Writes `row`: alone if a slot is free and nobody waits, else in the next batch. An error
    /// is the statement's: see [`AppError::from_commit`] for what it means to the caller.
    pub async fn write(&self, row: R) -> Result<O, AppError> {
        let inner = &self.inner;
        if let Ok(permit) = inner.slots.clone().try_acquire_owned()
            && inner.queue().entries.is_empty()
        {
            let _slot = Slot {
                inner: inner.clone(),
                permit: Some(permit),
            };
            let mut rows = inner
                .write_rows(std::slice::from_ref(&row))
                .await
                .map_err(AppError::from_commit)?;
            return rows.pop().ok_or_else(|| short_answer(inner.name));
        }
        let (reply, answer) = oneshot::channel();
        {
            let mut queue = inner.queue();
            let weight = (inner.weight)(&row);
            if queue.weight + weight > inner.max_queued {
                return Err(AppError::Overloaded(inner.name));
            }
            queue.weight += weight;
            queue.entries.push_back(Entry {
                row,
                reply,
                caller: tracing::Span::current(),
            });
        }
        // A slot may have come free after the try above; its holder may have looked at the
        // queue before the push, so look again.
        inner.clone().kick();
        match answer.await {
            Ok(result) => result.map_err(AppError::from_commit),
            // The writer dropped the reply without answering: it panicked mid-batch, and its
            // transaction was rolled back with its connection.
            Err(_) => Err(AppError::internal(format!(
                "the {} batch writer stopped",
                inner.name
            ))),
        }
    }
}

impl<R: Send + Sync + 'static, O: Send + 'static> Inner<R, O> {
    fn queue(&self) -> MutexGuard<'_, Queue<R, O>> {
        // The lock guards plain pushes and pops, which cannot panic half-way.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a writer for the queue if a slot is free and there is work.
    fn kick(self: Arc<Self>) {
        if self.queue().entries.is_empty() {
            return;
        }
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            let slot = Slot {
                inner: self.clone(),
                permit: Some(permit),
            };
            self.tasks.spawn(self.clone().drain(slot));
        }
    }

    /// Writes batches from the queue until it is empty. The slot goes back when this ends,
    /// however it ends, and its guard looks at the queue once more, so a row pushed while
    /// every slot was taken is always written by the last slot holder to see it.
    async fn drain(self: Arc<Self>, _slot: Slot<R, O>) {
        loop {
            let mut batch: Vec<Entry<R, O>> = {
                let mut queue = self.queue();
                let mut batch = Vec::new();
                let mut weight = 0;
                while let Some(entry) = queue.entries.front() {
                    let w = (self.weight)(&entry.row);
                    if !batch.is_empty() && weight + w > self.max_batch {
                        break;
                    }
                    weight += w;
                    batch.extend(queue.entries.pop_front());
                }
                queue.weight -= weight;
                batch
            };
            if batch.is_empty() {
                return;
            }
            // Nothing is written for a caller that is no longer waiting for the answer.
            batch.retain(|e| !e.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            batch.sort_by(|a, b| (self.order)(&a.row, &b.row));
            let span = tracing::info_span!(
                "group commit",
                coffer.batch.name = self.name,
                coffer.batch.rows = batch.len() as i64
            );
            for entry in &batch {
                span.follows_from(entry.caller.id());
            }
            self.write_batch(batch).instrument(span).await;
        }
    }

    async fn write_batch(&self, batch: Vec<Entry<R, O>>) {
        let (rows, replies): (Vec<R>, Vec<_>) = batch.into_iter().map(|e| (e.row, e.reply)).unzip();
        match self.write_rows(&rows).await {
            Ok(results) if results.len() == rows.len() => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Ok(_) => {
                tracing::error!(
                    batch = self.name,
                    "a batch statement answered the wrong number of rows"
                );
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Corrupt {
                        what: "batch result",
                        detail: "wrong number of rows".into(),
                    }));
                }
            }
            // A bug or a bad row, not the database: write each row alone, so only the bad
            // row's caller hears of it.
            Err(StoreError::Database(e)) if rows.len() > 1 => {
                tracing::warn!(batch = self.name, error = %e, rows = rows.len(), "a batch failed; writing its rows one by one");
                for (row, reply) in rows.iter().zip(replies) {
                    let result =
                        self.write_rows(std::slice::from_ref(row))
                            .await
                            .and_then(|mut r| {
                                r.pop().ok_or_else(|| StoreError::Corrupt {
                                    what: "batch result",
                                    detail: "no row".into(),
                                })
                            });
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::warn!(batch = self.name, error = %e, rows = rows.len(), "a batch failed");
                for reply in replies {
                    let _ = reply.send(Err(e.replicate()));
                }
            }
        }
    }

    async fn write_rows(&self, rows: &[R]) -> Result<Vec<O>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        (self.write)(&mut conn, rows).await
    }
}

/// A writer slot. However its holder ends — done, cancelled, panicked — the slot goes back and
/// the rows that queued meanwhile get a writer.
struct Slot<R: Send + Sync + 'static, O: Send + 'static> {
    inner: Arc<Inner<R, O>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<R: Send + Sync + 'static, O: Send + 'static> Drop for Slot<R, O> {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.inner.clone().kick();
    }
}

fn short_answer(name: &str) -> AppError {
    AppError::internal(format!("the {name} statement answered no row"))
}
