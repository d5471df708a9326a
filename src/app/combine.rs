//! Write combining: concurrent creates of one kind are written together, by one statement in
//! one transaction.
//!
//! Each create costs Postgres a statement, a commit (a WAL flush) and a round trip whatever it
//! holds, so under load those fixed costs, not the rows, set the rate. A [`Combiner`] has a
//! few writer slots. A caller that finds a slot free and nobody waiting writes its row at
//! once, itself, so a quiet server answers as fast as with no combiner at all. Only while every
//! slot is busy do rows queue up, and the next slot to come free takes all of them as one
//! batch. It never waits to fill a batch: batches form in proportion to the load.
//!
//! A batch is all or nothing, so one row that conflicts (a taken external id, an idempotency
//! key used before or by a concurrent duplicate) would fail the rows beside it. When the
//! database refuses a batch, nothing of it was written, and every row comes back to its caller
//! as [`Written::Refused`] to be written alone, where the caller's own conflict handling
//! decides. Only an unavailable database is reported as an error, because then the batch may
//! or may not have committed and writing the rows again could apply them twice.
//!
//! A batch of queued rows is written on its own task, so a caller that goes away cancels
//! nothing but its wait. A caller writing its own row alone can be cancelled mid-statement;
//! that is safe because the statement commits whole or not at all.
//!
//! Every statement has a client span, `INSERT <table>`. A row written alone is a child of its
//! caller's span; a batch belongs to no one caller, so its span is a root that links to the
//! span of every caller whose row it carries, and `coffer.batch.rows` says how many.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_core::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::store::StoreError;

/// The one statement that writes a batch: it writes every row or, on any error, none.
pub type InsertFn<R> =
    for<'c> fn(&'c mut PgConnection, &'c [R]) -> BoxFuture<'c, Result<(), StoreError>>;

/// The most rows one statement carries: enough to amortise a commit many times over, few
/// enough that a batch stays well inside the statement timeout.
const MAX_BATCH: usize = 256;

/// What became of a submitted row.
pub enum Written<R> {
    /// Committed.
    Stored,
    /// The database refused the batch this row was in (a conflict in any of its rows), so
    /// nothing of it was written: write this row alone.
    Refused(R),
    /// Writing this row failed: alone, for whatever reason the error gives; in a batch, because
    /// the database was unavailable, so whether the batch committed is unknown.
    Failed(StoreError),
}

struct Entry<R> {
    row: R,
    reply: oneshot::Sender<Written<R>>,
    /// The caller's span, which the batch's span links to.
    caller: tracing::Span,
}

struct Inner<R> {
    /// Rows waiting for a slot. Its length is bounded by the calls in flight, which the
    /// server bounds.
    queue: Mutex<VecDeque<Entry<R>>>,
    slots: Arc<Semaphore>,
    pool: PgPool,
    /// Owns the batch writers' tasks, so shutdown waits for them.
    tasks: TaskTracker,
    insert: InsertFn<R>,
    /// The table the statement inserts into, for its spans.
    table: &'static str,
}

/// Writer slots and a queue of rows for one insert statement.
pub struct Combiner<R> {
    inner: Arc<Inner<R>>,
}

impl<R: Send + Sync + 'static> Combiner<R> {
    /// `insert` writes rows into `table`. `writers` bounds the statements in flight, and so
    /// the pool connections this combiner holds at once. Fewer writers make larger batches.
    pub fn new(
        pool: PgPool,
        tasks: TaskTracker,
        writers: usize,
        table: &'static str,
        insert: InsertFn<R>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                queue: Mutex::default(),
                slots: Arc::new(Semaphore::new(writers.max(1))),
                pool,
                tasks,
                insert,
                table,
            }),
        }
    }

    /// Writes `row`, alone if a slot is free and nobody waits, else in the next batch.
    pub async fn submit(&self, row: R) -> Written<R> {
        let inner = &self.inner;
        if let Ok(permit) = inner.slots.clone().try_acquire_owned() {
            if inner.queue().is_empty() {
                let slot = Slot {
                    inner: inner.clone(),
                    permit: Some(permit),
                };
                let span = inner.statement_span(1);
                let written = inner.write_one(row).instrument(span).await;
                drop(slot);
                return written;
            }
            // Others were first: join their batch, written on the slot just taken.
            let (entry, answer) = Entry::new(row);
            inner.queue().push_back(entry);
            inner.tasks.spawn(inner.clone().drain(permit));
            return answer.await.unwrap_or_else(|_| crashed());
        }
        let (entry, answer) = Entry::new(row);
        inner.queue().push_back(entry);
        // A slot may have come free between the failed try and the push; its holder may have
        // looked at the queue before the push, so look again.
        inner.clone().kick();
        answer.await.unwrap_or_else(|_| crashed())
    }

    /// How many rows wait for a slot.
    pub fn queued(&self) -> usize {
        self.inner.queue().len()
    }

    /// Writes `row` by itself on `conn`, as a batch of one.
    pub async fn insert_alone(&self, conn: &mut PgConnection, row: R) -> Result<(), StoreError> {
        (self.inner.insert)(conn, std::slice::from_ref(&row)).await
    }
}

impl<R> Entry<R> {
    fn new(row: R) -> (Self, oneshot::Receiver<Written<R>>) {
        let (reply, answer) = oneshot::channel();
        let caller = tracing::Span::current();
        (Self { row, reply, caller }, answer)
    }
}

impl<R: Send + Sync + 'static> Inner<R> {
    fn queue(&self) -> MutexGuard<'_, VecDeque<Entry<R>>> {
        // The lock guards plain pushes and pops, which cannot panic half-way.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts a writer for the queue if a slot is free and there is work.
    fn kick(self: Arc<Self>) {
        if self.queue().is_empty() {
            return;
        }
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            self.tasks.spawn(self.clone().drain(permit));
        }
    }

    /// Writes batches from the queue until it is empty, then gives the slot back. After giving
    /// it back it looks once more: a row pushed while every slot was taken is written by the
    /// last slot holder to see it, so none is left behind.
    async fn drain(self: Arc<Self>, permit: OwnedSemaphorePermit) {
        loop {
            let batch: Vec<Entry<R>> = {
                let mut queue = self.queue();
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            let span = self.statement_span(batch.len());
            for entry in &batch {
                span.follows_from(entry.caller.id());
            }
            self.write_batch(batch).instrument(span).await;
        }
        drop(permit);
        self.kick();
    }

    /// The client span of one statement: the current span's child, or in a drain task (which
    /// has none) a root.
    fn statement_span(&self, rows: usize) -> tracing::Span {
        tracing::info_span!(
            "db statement",
            otel.name = format!("INSERT {}", self.table),
            otel.kind = "client",
            db.system.name = "postgresql",
            db.operation.name = "INSERT",
            db.collection.name = self.table,
            coffer.batch.rows = rows as i64,
        )
    }

    async fn write_one(&self, row: R) -> Written<R> {
        match self.write(std::slice::from_ref(&row)).await {
            Ok(()) => Written::Stored,
            Err(e) => Written::Failed(e),
        }
    }

    async fn write_batch(&self, batch: Vec<Entry<R>>) {
        let (rows, replies): (Vec<R>, Vec<_>) = batch.into_iter().map(|e| (e.row, e.reply)).unzip();
        match self.write(&rows).await {
            Ok(()) => {
                for reply in replies {
                    let _ = reply.send(Written::Stored);
                }
            }
            Err(StoreError::Unavailable(e)) => {
                tracing::warn!(error = %e, rows = rows.len(), "a batched insert failed");
                let message = e.to_string();
                for reply in replies {
                    let lost = std::io::Error::other(message.clone());
                    let _ = reply.send(Written::Failed(StoreError::Unavailable(lost.into())));
                }
            }
            Err(_) => {
                for (row, reply) in rows.into_iter().zip(replies) {
                    let _ = reply.send(Written::Refused(row));
                }
            }
        }
    }

    async fn write(&self, rows: &[R]) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        (self.insert)(&mut conn, rows).await
    }
}

/// A slot held by a caller writing its own row. However the caller ends, even cancelled, the
/// slot goes back and the rows that queued meanwhile get a writer.
struct Slot<R: Send + Sync + 'static> {
    inner: Arc<Inner<R>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl<R: Send + Sync + 'static> Drop for Slot<R> {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.inner.clone().kick();
    }
}

/// A batch's task panicked; its transaction was rolled back with its connection.
fn crashed<R>() -> Written<R> {
    Written::Failed(StoreError::Database(sqlx::Error::WorkerCrashed))
}
