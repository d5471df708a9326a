//! The inbox workers: they take due events out of `webhook_events` and apply them.
//!
//! One pass ([`Inbox::run_once`]) is one transaction:
//!
//! 1. claim up to `batch` due events (pending, or failed and due again) with `FOR UPDATE SKIP
//!    LOCKED`, so workers of every replica share the queue without waiting on each other;
//! 2. for each, in the order of its object's lock key: take `pg_advisory_xact_lock` on a hash
//!    of (account, provider object id) (`providers::object`), so two events about one object
//!    are never applied at once, whichever worker or replica holds them;
//! 3. apply it with the handler registered for (provider, event type) in a savepoint, and
//!    settle it in the same transaction: `processed` (the handler succeeded), `ignored` (no
//!    handler), `failed` with the next attempt after an exponential backoff with full jitter,
//!    or `dead` after the last attempt (the handler's writes rolled back to the savepoint);
//! 4. commit: every effect and every status change of the batch at once.
//!
//! Processing inside the claiming transaction, rather than under a committed `processing`
//! lease, means a worker that crashes or is stopped strands nothing: its transaction rolls
//! back, the row locks go with it, and the events are due again as they were. The price is a
//! transaction as long as the batch; handlers are short database work (a provider call that
//! may be slow belongs in the operations journal, not here).
//!
//! Delivery is at least once: a handler may see an event again after a rollback, so every
//! effect must be idempotent (the checkout handlers write provider state under a row lock).
//!
//! [`Handlers::builtin`] holds the sandbox's event types (`app::payments`); any other type is
//! `ignored`. Tests add their own ([`Handlers::with`] through `ServerConfig::inbox`).

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::Poll;
use std::time::Duration;

use futures_core::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::AppError;
use super::triggers::Triggers;
use crate::domain::account::{AccountName, ProviderKind};
use crate::domain::event::EventStatus;
use crate::providers::inbound;
use crate::providers::object::{ProviderObjectRef, object_of};
use crate::retry::{backoff, random_unit};
use crate::shutdown::CancellationToken;
use crate::store::StoreError;
use crate::store::inbox::{self as store, ClaimedEvent};

/// Attempts an event gets before it is `dead`.
pub const MAX_ATTEMPTS: i32 = 10;

/// The longest `last_error` kept: enough to diagnose, never a payload.
const MAX_ERROR_LEN: usize = 500;

/// The `type` label of events no handler is registered for, so callers cannot add series.
const OTHER_TYPE: &str = "other";

/// How the workers run.
#[derive(Debug, Clone)]
pub struct InboxConfig {
    /// Workers per process; 0 runs none (another replica does the work, and reports the
    /// gauges).
    pub workers: usize,
    /// Events claimed per transaction.
    pub batch: u32,
    /// How long an idle worker waits before looking again; also how often the gauges are
    /// refreshed.
    pub poll: Duration,
    /// The first retry's backoff ceiling; it doubles per failed attempt, up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// The longest one handler may run; past it the attempt fails (and its writes roll back),
    /// so a stuck handler cannot hold its batch's locks for ever.
    pub handler_timeout: Duration,
    /// What applies each (provider, event type).
    pub handlers: Handlers,
    /// How long a worker holds an event whose object it fetches from the provider (the
    /// leased phase); past it the event is due again for any worker. Longer than a provider
    /// call's whole deadline.
    pub lease: Duration,
}

impl Default for InboxConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            batch: 128,
            poll: Duration::from_secs(1),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(3600),
            handler_timeout: Duration::from_secs(30),
            handlers: Handlers::builtin(),
            lease: Duration::from_secs(60),
        }
    }
}

/// A claimed event as a handler sees it.
#[derive(Debug, Clone)]
pub struct InboxEvent {
    pub event: ClaimedEvent,
    /// The provider object it is about, when its payload names one.
    pub object: Option<ProviderObjectRef>,
    /// The advisory lock serialising work on that object.
    lock: Option<i64>,
}

/// Why a handler did not apply an event. The message becomes the event's `last_error`: say
/// what failed, never a secret or a piece of the payload.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Failed(String),
}

/// Applies one type of event. It runs inside the worker's transaction (in a savepoint): its
/// writes commit together with the event's `processed`, or roll back with a failure.
pub trait Handler: Send + Sync {
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        event: &'a InboxEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// The dispatch table: (provider, event type) → handler. Cheap to clone.
#[derive(Clone, Default)]
pub struct Handlers(Arc<HashMap<ProviderKind, ByType>>);

/// One provider's handlers by event type (a nested map, so a lookup borrows the type).
type ByType = HashMap<String, Arc<dyn Handler>>;

impl Handlers {
    /// The handlers Coffer ships: the sandbox's checkout, payment, refund and subscription
    /// events (`app::payments`).
    pub fn builtin() -> Self {
        super::payments::with_sandbox_handlers(Self::default())
    }

    /// The same table with `handler` for `event_type` of `provider` (replacing any).
    pub fn with(
        mut self,
        provider: ProviderKind,
        event_type: &str,
        handler: impl Handler + 'static,
    ) -> Self {
        Arc::make_mut(&mut self.0)
            .entry(provider)
            .or_default()
            .insert(event_type.to_owned(), Arc::new(handler));
        self
    }

    fn get(&self, provider: ProviderKind, event_type: &str) -> Option<&Arc<dyn Handler>> {
        self.0.get(&provider)?.get(event_type)
    }
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(
                self.0
                    .iter()
                    .flat_map(|(p, types)| types.keys().map(move |t| format!("{p}:{t}"))),
            )
            .finish()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    provider: &'static str,
    /// A registered event type, or `other`.
    r#type: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

/// The statuses the gauges report: those that stay small in a healthy inbox.
const GAUGED: [EventStatus; 4] = [
    EventStatus::Pending,
    EventStatus::Processing,
    EventStatus::Failed,
    EventStatus::Dead,
];

/// The inbox metrics. Labels are the provider (5), a registered type or `other`, an outcome
/// (4) and a status (4), so the series are bounded whatever providers send.
#[derive(Clone, Default)]
pub struct InboxMetrics {
    handled: Family<OutcomeLabels, Counter>,
    depth: Family<StatusLabels, Gauge>,
    oldest: Family<StatusLabels, Gauge<f64, AtomicU64>>,
}

impl InboxMetrics {
    /// Adds the families to the registry `/metrics` serves.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "coffer_inbox_events_handled",
            "Inbox events settled by the workers, by provider, type (registered types, else other) and outcome (processed, ignored, failed, dead)",
            self.handled.clone(),
        );
        registry.register(
            "coffer_inbox_events",
            "Inbox events by status (pending, processing, failed, dead), refreshed every poll",
            self.depth.clone(),
        );
        registry.register(
            "coffer_inbox_oldest_event_age_seconds",
            "Age of the oldest inbox event by status (pending, processing, failed, dead), 0 when none",
            self.oldest.clone(),
        );
    }

    fn outcome(&self, provider: ProviderKind, r#type: String, outcome: EventStatus) {
        self.handled
            .get_or_create(&OutcomeLabels {
                provider: provider.as_str(),
                r#type,
                outcome: outcome.as_str(),
            })
            .inc();
    }

    fn set_depth(&self, rows: &[store::StatusDepth]) {
        for status in GAUGED {
            let row = rows.iter().find(|r| r.status == status);
            let labels = StatusLabels {
                status: status.as_str(),
            };
            self.depth
                .get_or_create(&labels)
                .set(row.map_or(0, |r| r.count));
            self.oldest
                .get_or_create(&labels)
                .set(row.map_or(0.0, |r| r.oldest_age.as_secs_f64()));
        }
    }
}

/// The inbox workers of one process. Cheap to clone.
#[derive(Clone)]
pub struct Inbox {
    pool: PgPool,
    config: Arc<InboxConfig>,
    metrics: InboxMetrics,
    /// What fetches the objects of events that are triggers; without it (no provider account
    /// sends them) such events are `ignored`.
    triggers: Option<Triggers>,
}

impl Inbox {
    pub fn new(pool: PgPool, config: InboxConfig) -> Self {
        Self {
            pool,
            config: Arc::new(InboxConfig {
                // A zero poll would spin.
                poll: config.poll.max(Duration::from_millis(10)),
                ..config
            }),
            metrics: InboxMetrics::default(),
            triggers: None,
        }
    }

    /// The same workers, fetching and applying the objects of events that are triggers.
    pub fn with_triggers(mut self, triggers: Triggers) -> Self {
        self.triggers = Some(triggers);
        self
    }

    pub fn metrics(&self) -> &InboxMetrics {
        &self.metrics
    }

    /// Spawns the workers and the gauges' refresher on `tasks`. Once `stop_claiming` is
    /// cancelled (the shutdown signal) a worker claims nothing more and ends when its batch in
    /// flight has committed; once `stop` is cancelled, everything ends at once, and a batch
    /// still in flight is abandoned (rolled back).
    pub fn spawn(
        &self,
        tasks: &TaskTracker,
        stop_claiming: &CancellationToken,
        stop: &CancellationToken,
    ) {
        for worker in 0..self.config.workers {
            tasks.spawn(
                self.clone()
                    .work(worker, stop_claiming.clone(), stop.clone()),
            );
        }
        // The processes that apply the inbox report on it; one that runs no workers keeps no
        // connection busy for it either.
        if self.config.workers > 0 {
            tasks.spawn(self.clone().gauge(stop.clone()));
        }
    }

    async fn work(self, worker: usize, stop_claiming: CancellationToken, stop: CancellationToken) {
        let claiming = crate::shutdown::Claiming {
            what: "inbox batch",
            worker,
            batch: self.config.batch as usize,
            poll: self.config.poll,
        };
        crate::shutdown::claim_batches(claiming, stop_claiming, stop, || self.run_once()).await;
    }

    async fn gauge(self, stop: CancellationToken) {
        loop {
            let depth = tokio::select! {
                depth = self.depth() => depth,
                () = stop.cancelled() => return,
            };
            match depth {
                Ok(rows) => self.metrics.set_depth(&rows),
                Err(e) => tracing::warn!(error = %e, "reading the inbox depth failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.config.poll) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn depth(&self) -> Result<Vec<store::StatusDepth>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        store::inbox_depth(&mut conn).await
    }

    /// One batch, claimed, applied and committed in one transaction; returns how many events
    /// it claimed. An error rolls the whole batch back: its events stay due as they were.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let claimed = store::claim_events(&mut tx, i64::from(self.config.batch)).await?;
        let claimed_count = claimed.len();
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let mut events: Vec<InboxEvent> = claimed
            .into_iter()
            .map(|event| {
                let object = object_of(event.provider, &event.payload);
                let lock = object.as_ref().map(|o| lock_key(&event.account, o));
                InboxEvent {
                    event,
                    object,
                    lock,
                }
            })
            .collect();
        // Every worker takes its advisory locks in ascending key order, so two batches never
        // wait on each other in a cycle; one object's events keep the order they came in.
        events.sort_by_key(|e| (e.lock, e.event.received_at));
        let mut keys: Vec<i64> = events.iter().filter_map(|e| e.lock).collect();
        keys.dedup();
        store::lock_objects(&mut tx, &keys).await?;
        let mut settled = Vec::with_capacity(events.len());
        for event in &events {
            let span = tracing::info_span!(
                "inbox event",
                otel.kind = "consumer",
                event_id = %event.event.id,
                provider = event.event.provider.as_str(),
                event_type = %event.event.event_type,
                attempt = event.event.attempts + 1,
            );
            // The processing belongs to this worker's batch, not to the delivery's trace (which
            // ended when the delivery was acknowledged): a link, not a parent, leads back to
            // the IngestEvent span that stored it.
            if let Some(stored_by) = event
                .event
                .traceparent
                .as_deref()
                .and_then(crate::telemetry::linked_context)
            {
                span.add_link(stored_by);
            }
            let outcome = self.apply(&mut tx, event).instrument(span).await?;
            settled.push(outcome);
        }
        // Applied and failed events were written as they went; the batch's processed and
        // ignored ones are settled together, in the same transaction, and its triggers are
        // leased for the fetch that follows the commit.
        let with = |status: EventStatus| -> Vec<&store::RowAddress> {
            events
                .iter()
                .zip(&settled)
                .filter(|(_, outcome)| **outcome == status)
                .map(|(e, _)| &e.event.row)
                .collect()
        };
        for status in [EventStatus::Processed, EventStatus::Ignored] {
            store::settle_events(&mut tx, &with(status), status).await?;
        }
        let lease_end = super::customers::now_micros() + self.config.lease;
        store::lease_events(&mut tx, &with(EventStatus::Processing), lease_end).await?;
        tx.commit().await?;
        for (event, outcome) in events.iter().zip(settled) {
            let outcome = match outcome {
                EventStatus::Processing => {
                    let span = tracing::info_span!(
                        "inbox trigger",
                        otel.kind = "consumer",
                        event_id = %event.event.id,
                        provider = event.event.provider.as_str(),
                        event_type = %event.event.event_type,
                        attempt = event.event.attempts + 1,
                    );
                    match self
                        .fetch_and_apply(event, lease_end)
                        .instrument(span)
                        .await?
                    {
                        Some(outcome) => outcome,
                        // The lease ran out first: the worker that took the event counts it.
                        None => continue,
                    }
                }
                other => other,
            };
            self.count(&event.event, outcome);
        }
        Ok(claimed_count)
    }

    fn count(&self, e: &ClaimedEvent, outcome: EventStatus) {
        let known = self
            .config
            .handlers
            .get(e.provider, &e.event_type)
            .is_some()
            || inbound(e.provider)
                .trigger(&e.event_type, &e.payload)
                .is_some();
        let r#type = if known {
            e.event_type.clone()
        } else {
            OTHER_TYPE.to_owned()
        };
        self.metrics.outcome(e.provider, r#type, outcome);
    }

    /// The leased phase of an event that is a trigger: fetch its object from the provider with
    /// no transaction open, then, in one short transaction under the object's lock, apply it
    /// and settle the event while the lease is still this worker's. Returns the event's new
    /// status, or `None` if the lease ran out before the apply (another worker has it).
    async fn fetch_and_apply(
        &self,
        event: &InboxEvent,
        lease_end: time::OffsetDateTime,
    ) -> Result<Option<EventStatus>, StoreError> {
        let e = &event.event;
        let (Some(triggers), Some(trigger)) = (
            &self.triggers,
            inbound(e.provider).trigger(&e.event_type, &e.payload),
        ) else {
            return Ok(Some(EventStatus::Ignored));
        };
        let mut fetched = triggers.fetch(e.tenant, &e.account, &trigger).await;
        // What the object asks of Coffer on the provider is done before it is applied, with
        // no transaction open; failing, the event fails like a failed fetch and comes again.
        if let Ok(Some(object)) = &fetched
            && let Err(error) = triggers.act_on(e.tenant, &e.account, object).await
        {
            fetched = Err(error);
        }
        let failure = match fetched {
            Ok(Some(object)) => {
                let mut tx = self.pool.begin().await?;
                if let Some(key) = event.lock {
                    store::lock_objects(&mut tx, &[key]).await?;
                }
                if !store::settle_leased(&mut tx, e.tenant, e.id, lease_end).await? {
                    tx.rollback().await?;
                    tracing::warn!(
                        "inbox trigger lease ran out before its apply; left to its new holder"
                    );
                    return Ok(None);
                }
                match super::triggers::apply(&mut tx, e.tenant, &object).await {
                    Ok(()) => {
                        tx.commit().await?;
                        tracing::info!("inbox event processed");
                        return Ok(Some(EventStatus::Processed));
                    }
                    Err(error) => {
                        tx.rollback().await?;
                        Failure::Coffer(error.to_string())
                    }
                }
            }
            Ok(None) => Failure::Coffer(format!(
                "the provider has no {} {}",
                trigger.kind.as_str(),
                trigger.id
            )),
            // The provider is down or slow: the event waits for it, however long the outage.
            Err(AppError::Provider(error)) => Failure::ProviderDown(error.to_string()),
            Err(error) => Failure::Coffer(error.to_string()),
        };
        let mut conn = self.pool.acquire().await?;
        let status = self.fail(&mut conn, e, failure, Some(lease_end)).await?;
        Ok(Some(status))
    }

    /// Records a failed attempt of `e`: `failed` and due again after a backoff, or `dead` after
    /// the last attempt — but never `dead` while the provider is down.
    async fn fail(
        &self,
        conn: &mut PgConnection,
        e: &ClaimedEvent,
        failure: Failure,
        lease_end: Option<time::OffsetDateTime>,
    ) -> Result<EventStatus, StoreError> {
        let attempts = e.attempts + 1;
        let (mut message, provider_down) = match failure {
            Failure::Coffer(m) => (m, false),
            Failure::ProviderDown(m) => (m, true),
        };
        truncate(&mut message, MAX_ERROR_LEN);
        let (status, retry_in) = if attempts >= MAX_ATTEMPTS && !provider_down {
            (EventStatus::Dead, Duration::ZERO)
        } else {
            (
                EventStatus::Failed,
                backoff(
                    attempts,
                    self.config.backoff_base,
                    self.config.backoff_cap,
                    random_unit(),
                ),
            )
        };
        store::fail_event(
            conn, e.tenant, e.id, status, attempts, &message, retry_in, lease_end,
        )
        .await?;
        tracing::warn!(
            error = %message,
            attempts,
            status = status.as_str(),
            retry_in_ms = retry_in.as_millis() as u64,
            "inbox event failed"
        );
        Ok(status)
    }

    /// Applies one event in a savepoint of `tx`; returns its new status. A failure is recorded
    /// here; `processed` and `ignored` are left for the caller to settle with the batch.
    async fn apply(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        event: &InboxEvent,
    ) -> Result<EventStatus, StoreError> {
        let e = &event.event;
        let Some(handler) = self.config.handlers.get(e.provider, &e.event_type) else {
            // A trigger is leased now and fetched after the commit; anything else is ignored.
            if self.triggers.is_some()
                && inbound(e.provider)
                    .trigger(&e.event_type, &e.payload)
                    .is_some()
            {
                return Ok(EventStatus::Processing);
            }
            tracing::debug!("no handler for this event type: ignored");
            return Ok(EventStatus::Ignored);
        };
        let mut savepoint = sqlx::Acquire::begin(&mut *tx).await?;
        match run_handler(handler, &mut savepoint, event, self.config.handler_timeout).await {
            Ok(()) => {
                savepoint.commit().await?;
                tracing::info!("inbox event processed");
                Ok(EventStatus::Processed)
            }
            Err(error) => {
                // The handler's writes go; the failure is recorded in the batch's transaction.
                savepoint.rollback().await?;
                self.fail(tx, e, Failure::Coffer(error.to_string()), None)
                    .await
            }
        }
    }
}

/// Why an attempt failed, for whether it may end `dead`.
enum Failure {
    /// Coffer could not apply the event (a handler's error, an object it does not hold).
    Coffer(String),
    /// The provider could not be asked (unavailable, timed out, its breaker open): the event
    /// retries with backoff, never going `dead` for it.
    ProviderDown(String),
}

/// Runs a handler for at most `timeout`, with a panic turned into a failure rather than the
/// end of the worker: a handler that panics on one event must not stop, in turn, every worker
/// that claims it (the event fails like any other and ends `dead`). The panic's message is
/// printed by the panic hook; `last_error` says only that it panicked.
async fn run_handler(
    handler: &Arc<dyn Handler>,
    conn: &mut PgConnection,
    event: &InboxEvent,
    timeout: Duration,
) -> Result<(), HandlerError> {
    let panicked = || HandlerError::Failed("the handler panicked".into());
    let mut applying =
        std::panic::catch_unwind(AssertUnwindSafe(once(move || handler.apply(conn, event))))
            .map_err(|_| panicked())?;
    let caught = std::future::poll_fn(|cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| applying.as_mut().poll(cx))) {
            Ok(Poll::Ready(done)) => Poll::Ready(done),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(panicked())),
        }
    });
    tokio::time::timeout(timeout, caught)
        .await
        .unwrap_or_else(|_| Err(HandlerError::Failed("the handler timed out".into())))
}

/// `f`, known to be called once: so it may hand out what it captured by unique reference.
fn once<R>(f: impl FnOnce() -> R) -> impl FnOnce() -> R {
    f
}

/// The advisory lock key of an object: the first 8 bytes of SHA-256 over the account and the
/// object id. Stable across processes and versions (unlike `std`'s hasher); a collision only
/// serialises two unrelated objects.
fn lock_key(account: &AccountName, object: &ProviderObjectRef) -> i64 {
    let mut h = Sha256::new();
    h.update(account.as_str().as_bytes());
    h.update([0]);
    h.update(object.as_str().as_bytes());
    let digest = h.finalize();
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(key)
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_depend_on_account_and_object() {
        let a = AccountName::parse("a").unwrap();
        let b = AccountName::parse("b").unwrap();
        let cs = object_of(ProviderKind::PayTabs, br#"{"tran_ref":"cs_1"}"#).unwrap();
        let other = object_of(ProviderKind::PayTabs, br#"{"tran_ref":"cs_2"}"#).unwrap();
        assert_eq!(lock_key(&a, &cs), lock_key(&a, &cs));
        assert_ne!(lock_key(&a, &cs), lock_key(&b, &cs));
        assert_ne!(lock_key(&a, &cs), lock_key(&a, &other));
    }

    #[test]
    fn errors_are_cut_on_a_character_boundary() {
        let mut s = "é".repeat(300);
        truncate(&mut s, MAX_ERROR_LEN);
        assert!(s.len() <= MAX_ERROR_LEN && s.chars().all(|c| c == 'é'));
    }
}
