//! Usage pushed to provider meters (DESIGN §4, Usage): for each subscription to a metered
//! price on a Stripe or Polar account, the period's usage goes to the provider's meter in the
//! background, batched, through the account's outbound stack and the operations journal.
//!
//! One cursor per (subscription, period, meter) (`store::usage_push`) holds what was pushed.
//! A pass, per account: open cursors for current periods; read each open cursor's period total
//! from the rollups (`store::usage::usage_windows`, hours not events); decide the push (SUM and
//! COUNT: the increment since the last push; MAX, UNIQUE_COUNT, LATEST: the total itself, to a
//! `last` meter); then, in one transaction, journal the batch (`provider_operations`, kind
//! `push_usage`) and write each cursor's push as in flight (value, total, timestamp). Only
//! after that commit is anything sent, each event with the identifier `{cursor}-{seq}`. The
//! answer is recorded, and `pushed`/`seq` advance, in one transaction.
//!
//! A crash (or a lost answer, a 429, an open breaker) between the commit and the record leaves
//! the batch in flight: after `resend_after` the next pass sends the very same events again,
//! which the provider de-duplicates by identifier — Stripe for about a day, Polar by
//! `external_id`. A batch still in flight after `dedupe_window` (23 h, inside Stripe's day) is
//! not sent again blindly: the cursor stops with `failure` set and is counted, for an operator
//! to compare with the provider's meter summary. See docs/decisions/0025-usage-push-cursors.md.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sqlx::{Connection, PgConnection, PgPool};
use std::sync::atomic::AtomicU64;
use time::OffsetDateTime;
use uuid::Uuid;

use super::AppError;
use super::journal::{Journal, OpKind, Started};
use super::mirror::formula;
use super::providers::{Providers, Resolved};
use crate::domain::account::ProviderKind;
use crate::domain::ids::{CustomerId, MeterId, TenantId};
use crate::domain::meter::Aggregation;
use crate::domain::usage::{Units, UsageWindow};
use crate::providers::{
    MeterFormula, Operation, ProviderError, UsageEvent, meter_event_name, whole_units,
};
use crate::shutdown::CancellationToken;
use crate::store::usage_push::{self as store, CursorRow};

/// Cursors read per pass, in batches: a pass reads the totals of up to this many batches'
/// worth of cursors (one statement each, on the rollups) to find a batch of pushes, so
/// subscriptions without new usage cost a read per interval, not a slot in the batch.
const READS_PER_BATCH: usize = 10;

/// The push worker's settings.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Pause between passes (a pass that filled its batch is followed at once).
    pub interval: Duration,
    /// Events per batch per account, at most 100 (one Polar ingest request; Stripe's are sent
    /// eight at a time).
    pub batch: usize,
    /// How long a batch in flight waits before it is sent again.
    pub resend_after: Duration,
    /// How long after a period's end its last usage is still pushed (late events).
    pub grace: Duration,
    /// A batch in flight longer than this is not sent again: the provider may have forgotten
    /// its identifiers (Stripe: about 24 hours).
    pub dedupe_window: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            batch: 100,
            resend_after: Duration::from_secs(30),
            grace: Duration::from_secs(3600),
            dedupe_window: Duration::from_secs(23 * 3600),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushLabels {
    provider: &'static str,
    outcome: &'static str,
}

/// The push's metrics: events pushed by outcome, and the backlog as gauges refreshed every
/// pass from the cursors (one statement).
#[derive(Clone, Default)]
pub struct PushMetrics {
    pushes: Family<PushLabels, Counter>,
    behind: Gauge,
    units: Gauge<f64, AtomicU64>,
    lag: Gauge<f64, AtomicU64>,
    failed: Gauge,
}

impl PushMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "coffer_usage_pushes",
            "Usage events pushed to provider meters, by provider and outcome (succeeded, retryable, unknown, failed, expired)",
            self.pushes.clone(),
        );
        registry.register(
            "coffer_usage_push_backlog_cursors",
            "Subscription periods whose usage on the provider's meter is behind Coffer's",
            self.behind.clone(),
        );
        registry.register(
            "coffer_usage_push_backlog_units",
            "Units of usage not yet pushed to provider meters (totals of last meters count their difference)",
            self.units.clone(),
        );
        registry.register(
            "coffer_usage_push_lag_seconds",
            "Age of the oldest usage not yet pushed to a provider meter, 0 when none",
            self.lag.clone(),
        );
        registry.register(
            "coffer_usage_push_failed_cursors",
            "Subscription periods no longer pushed: refused by the provider, or unknown past its de-duplication window",
            self.failed.clone(),
        );
    }

    fn count(&self, provider: ProviderKind, outcome: &'static str, n: usize) {
        self.pushes
            .get_or_create(&PushLabels {
                provider: provider.as_str(),
                outcome,
            })
            .inc_by(n as u64);
    }
}

/// The push worker. Cheap to clone.
#[derive(Clone)]
pub struct UsagePush {
    pool: PgPool,
    journal: Journal,
    providers: Providers,
    config: PushConfig,
    metrics: PushMetrics,
}

/// One event of a batch, and the cursor it advances.
struct Push {
    cursor: Uuid,
    /// The batch in flight it was taken from, when sent again.
    previous: Option<Uuid>,
    value: Units,
    total: Units,
    event: UsageEvent,
}

impl UsagePush {
    pub fn new(pool: PgPool, journal: Journal, providers: Providers, config: PushConfig) -> Self {
        Self {
            pool,
            journal,
            providers,
            config,
            metrics: PushMetrics::default(),
        }
    }

    pub fn metrics(&self) -> &PushMetrics {
        &self.metrics
    }

    /// Runs passes until `stop`. A pass in progress is abandoned at shutdown: whatever it
    /// committed is a batch in flight, sent again by the next start.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let full = tokio::select! {
                full = self.pass() => full,
                () = stop.cancelled() => return,
            };
            if !full {
                tokio::select! {
                    () = tokio::time::sleep(self.config.interval) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }

    /// One pass over every account that pushes usage; `true` when some account filled its
    /// batch (more is waiting). Errors are logged per account and retried next pass.
    pub async fn pass(&self) -> bool {
        let mut full = false;
        for (tenant, account) in self.providers.metering_accounts() {
            match self.pass_account(tenant, &account).await {
                Ok(more) => full |= more,
                Err(e) => tracing::warn!(
                    account = account.name.as_str(),
                    error = %e,
                    "a usage push pass failed; the next pass tries again"
                ),
            }
        }
        if let Err(e) = self.refresh_gauges().await {
            tracing::warn!(error = %e, "could not read the usage push backlog");
        }
        full
    }

    async fn refresh_gauges(&self) -> Result<(), AppError> {
        let mut conn = self.pool.acquire().await?;
        let b = store::backlog(&mut conn).await?;
        self.metrics.behind.set(b.cursors);
        self.metrics
            .units
            .set(b.units.parse::<f64>().unwrap_or_default());
        self.metrics.lag.set(b.lag_seconds);
        self.metrics.failed.set(b.failed);
        Ok(())
    }

    /// One batch of `account`'s: events sent again first, then new pushes from up to
    /// [`READS_PER_BATCH`] batches' worth of cursors not read this interval. Returns whether
    /// more may be waiting (the batch or the reads were full).
    async fn pass_account(&self, tenant: TenantId, account: &Resolved) -> Result<bool, AppError> {
        let provider = account.for_op(Operation::PushUsage)?;
        let name = account.name.as_str();
        let now = OffsetDateTime::now_utc();
        let batch = self.config.batch.clamp(1, 100);
        let mut conn = self.pool.acquire().await?;
        store::open_cursors(&mut conn, tenant, name).await?;

        let due = store::in_flight(
            &mut conn,
            tenant,
            name,
            now - self.config.resend_after,
            batch as i64,
        )
        .await?;
        let window = now - self.config.dedupe_window;
        let (expired, again): (Vec<_>, Vec<_>) = due
            .into_iter()
            .partition(|c| c.pending_since.is_some_and(|s| s < window));
        if !expired.is_empty() {
            let ids: Vec<Uuid> = expired.iter().map(|c| c.id).collect();
            let why = vec!["outcome_unknown_past_dedupe_window".to_owned(); ids.len()];
            store::fail_pushes(&mut conn, tenant, &ids, &why).await?;
            self.metrics.count(account.kind, "expired", ids.len());
            tracing::error!(
                account = name,
                cursors = ids.len(),
                "usage pushes stayed unknown past the provider's de-duplication window; \
                 they are not sent again: compare the provider's meter with Coffer's usage"
            );
        }
        let mut pushes: Vec<Push> = again.iter().filter_map(|c| resend(c, now)).collect();

        let mut more = !again.is_empty() && pushes.len() >= batch;
        if pushes.len() < batch {
            let reads = batch * READS_PER_BATCH;
            let open = store::open_for_push(
                &mut conn,
                tenant,
                name,
                now,
                time::Duration::try_from(self.config.grace).unwrap_or(time::Duration::HOUR),
                now - self.config.interval,
                reads as i64,
            )
            .await?;
            more |= open.len() == reads;
            let (mut ids, mut observed) = (Vec::new(), Vec::new());
            for cursor in &open {
                if pushes.len() >= batch {
                    // The rest are read by the next pass, which follows at once.
                    more = true;
                    break;
                }
                let Some(aggregation) = Aggregation::parse(&cursor.aggregation) else {
                    continue;
                };
                let mut total = period_total(&mut conn, tenant, cursor, aggregation).await?;
                if whole_units(account.kind) {
                    total = total.floor();
                }
                ids.push(cursor.id);
                observed.push(total.to_string());
                if let Some(push) = next_push(cursor, formula(aggregation), total, now) {
                    pushes.push(push);
                }
            }
            if !ids.is_empty() {
                store::observe(&mut conn, tenant, &ids, &observed).await?;
            }
        }
        if pushes.is_empty() {
            return Ok(more);
        }

        // Journal the batch and take its cursors, committed before anything is sent.
        let batch_id = Uuid::now_v7();
        let (op, pushes) = {
            let mut tx = conn.begin().await?;
            let op = match self
                .journal
                .begin(
                    &mut tx,
                    tenant,
                    &account.name,
                    OpKind::PushUsage,
                    batch_id,
                    None,
                )
                .await?
            {
                Started::Call(op) => op,
                Started::Existing(_) => {
                    return Err(AppError::internal("a new usage batch id was taken"));
                }
            };
            let taken = take(&mut tx, tenant, op.id, &pushes).await?;
            tx.commit()
                .await
                .map_err(|e| AppError::from_commit(e.into()))?;
            let pushes: Vec<Push> = pushes
                .into_iter()
                .filter(|p| taken.contains(&p.cursor))
                .collect();
            (op, pushes)
        };
        drop(conn);
        if pushes.is_empty() {
            return Ok(more);
        }

        let events: Vec<UsageEvent> = pushes.iter().map(|p| p.event.clone()).collect();
        let answer = self
            .journal
            .call(
                &op,
                account.kind,
                provider.push_usage(&account.name, &events),
            )
            .await;
        let results = match answer {
            Ok(results) if results.len() == pushes.len() => results,
            Ok(_) => {
                return Err(AppError::internal(
                    "the provider answered a different number of usage events",
                ));
            }
            Err(failed) => {
                // Nothing of the batch is known to have arrived: it stays in flight and is
                // sent again, unchanged, after `resend_after`.
                self.metrics
                    .count(account.kind, outcome(&failed.cause), pushes.len());
                return Ok(false);
            }
        };
        let (mut done, mut refused, mut why) = (Vec::new(), Vec::new(), Vec::new());
        for (push, result) in pushes.iter().zip(&results) {
            match result {
                Ok(()) => done.push(push.cursor),
                Err(ProviderError::Definitive { code, .. }) => {
                    refused.push(push.cursor);
                    why.push(format!("refused: {code}"));
                }
                Err(_) => {}
            }
        }
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        self.journal
            .pushed(&mut tx, &op, &batch_id.simple().to_string())
            .await?;
        store::complete_pushes(&mut tx, tenant, op.id, &done).await?;
        if !refused.is_empty() {
            store::fail_pushes(&mut tx, tenant, &refused, &why).await?;
        }
        tx.commit()
            .await
            .map_err(|e| AppError::from_commit(e.into()))?;
        for result in &results {
            self.metrics.count(
                account.kind,
                match result {
                    Ok(()) => "succeeded",
                    Err(e) => outcome(e),
                },
                1,
            );
        }
        if !refused.is_empty() {
            tracing::error!(
                account = name,
                cursors = refused.len(),
                "the provider refused usage pushes for good; those periods are pushed no more"
            );
        }
        Ok(more)
    }
}

fn outcome(e: &ProviderError) -> &'static str {
    match e {
        ProviderError::Retryable { .. } => "retryable",
        ProviderError::Unknown { .. } => "unknown",
        ProviderError::Definitive { .. } => "failed",
    }
}

/// Marks the batch `op`'s cursors in flight: new pushes with their values, and batches sent
/// again moved over from their previous operation. Returns the cursors taken.
async fn take(
    tx: &mut PgConnection,
    tenant: TenantId,
    op: Uuid,
    pushes: &[Push],
) -> Result<Vec<Uuid>, AppError> {
    let (fresh, again): (Vec<&Push>, Vec<&Push>) =
        pushes.iter().partition(|p| p.previous.is_none());
    let mut taken = Vec::with_capacity(pushes.len());
    if !fresh.is_empty() {
        let ids: Vec<Uuid> = fresh.iter().map(|p| p.cursor).collect();
        let values: Vec<String> = fresh.iter().map(|p| p.value.to_string()).collect();
        let totals: Vec<String> = fresh.iter().map(|p| p.total.to_string()).collect();
        let at: Vec<OffsetDateTime> = fresh.iter().map(|p| p.event.timestamp).collect();
        taken.extend(store::begin_pushes(tx, tenant, op, &ids, &values, &totals, &at).await?);
    }
    if !again.is_empty() {
        let ids: Vec<Uuid> = again.iter().map(|p| p.cursor).collect();
        let previous: Vec<Uuid> = again.iter().filter_map(|p| p.previous).collect();
        taken.extend(store::retake_pushes(tx, tenant, op, &ids, &previous).await?);
    }
    Ok(taken)
}

/// The period's total of `cursor`'s meter, as the meter aggregates: from the hourly rollups
/// and the partial hours at the ends, the same reading GetUsage makes.
async fn period_total(
    conn: &mut PgConnection,
    tenant: TenantId,
    cursor: &CursorRow,
    aggregation: Aggregation,
) -> Result<Units, AppError> {
    let customer = CustomerId::from_uuid(cursor.customer_id);
    let meter = MeterId::from_uuid(cursor.meter_id);
    let (from, to) = (cursor.period_start, cursor.period_end);
    let text = if aggregation == Aggregation::UniqueCount {
        crate::store::usage::unique_counts(
            conn,
            tenant,
            customer,
            meter,
            from,
            to,
            UsageWindow::None,
        )
        .await?
        .get(&None)
        .copied()
        .unwrap_or(0)
        .to_string()
    } else {
        let rows = crate::store::usage::usage_windows(
            conn,
            tenant,
            crate::store::usage::WindowsOf::Known(customer),
            meter,
            from,
            to,
            UsageWindow::None,
        )
        .await?
        .map(|w| w.rows)
        .unwrap_or_default();
        let Some(total) = rows.into_iter().find(|r| r.bucket.is_none()) else {
            return Ok(Units::ZERO);
        };
        match aggregation {
            Aggregation::Count => total.events.to_string(),
            Aggregation::Sum => total.total,
            Aggregation::Max => total.max_value,
            Aggregation::Latest => total.latest_value,
            Aggregation::UniqueCount => unreachable!("read above"),
        }
    };
    Units::parse(&text)
        .ok_or_else(|| AppError::internal(format!("a usage total does not read: {text}")))
}

/// The event a cursor's period sends, at `now` clamped into the period (a late total after
/// the period's end is sent as of its last second).
fn timestamp(cursor: &CursorRow, now: OffsetDateTime) -> OffsetDateTime {
    now.min(cursor.period_end - time::Duration::SECOND)
        .max(cursor.period_start)
        .replace_nanosecond(0)
        .unwrap_or(now)
}

fn event(cursor: &CursorRow, seq: i32, value: Units, at: OffsetDateTime) -> UsageEvent {
    UsageEvent {
        identifier: format!("{}-{seq}", cursor.id.simple()),
        customer: cursor.provider_customer.clone(),
        customer_reference: cursor.customer_id,
        event_name: meter_event_name(cursor.meter_id),
        value: value.to_string(),
        timestamp: at,
    }
}

/// What a cursor whose period total is now `total` sends, if anything: SUM meters the
/// increment over what was pushed, `last` meters the total when it changed (and at least a
/// second after the previous push, so the provider can tell which is newer).
fn next_push(
    cursor: &CursorRow,
    formula: MeterFormula,
    total: Units,
    now: OffsetDateTime,
) -> Option<Push> {
    let pushed = Units::parse(&cursor.pushed)?;
    let at = timestamp(cursor, now);
    let value = match formula {
        MeterFormula::Sum if total > pushed => total.saturating_sub(pushed),
        MeterFormula::Sum => return None,
        MeterFormula::Last if total == pushed && cursor.seq > 0 => return None,
        MeterFormula::Last if total.is_zero() && cursor.seq == 0 => return None,
        MeterFormula::Last => {
            if cursor.last_timestamp.is_some_and(|last| at <= last) {
                return None;
            }
            total
        }
    };
    Some(Push {
        cursor: cursor.id,
        previous: None,
        value,
        total,
        event: event(cursor, cursor.seq + 1, value, at),
    })
}

/// A batch in flight, sent again exactly as it was first sent.
fn resend(cursor: &CursorRow, _now: OffsetDateTime) -> Option<Push> {
    let value = Units::parse(cursor.pending_value.as_deref()?)?;
    let at = cursor.pending_timestamp?;
    Some(Push {
        cursor: cursor.id,
        previous: cursor.pending_op,
        value,
        // Not written again: the cursor keeps the total it was taken with.
        total: value,
        event: event(cursor, cursor.seq + 1, value, at),
    })
}

/// The push worker of a server: runs until `stop`.
pub async fn run(push: UsagePush, stop: CancellationToken) {
    push.run(stop).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(pushed: &str, seq: i32, last: Option<OffsetDateTime>) -> CursorRow {
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        CursorRow {
            id: Uuid::nil(),
            customer_id: Uuid::nil(),
            meter_id: Uuid::nil(),
            aggregation: "sum".into(),
            period_start: start,
            period_end: start + time::Duration::days(30),
            seq,
            pushed: pushed.into(),
            last_timestamp: last,
            provider_customer: "cus_1".into(),
            pending_op: None,
            pending_value: None,
            pending_timestamp: None,
            pending_since: None,
        }
    }

    fn u(s: &str) -> Units {
        Units::parse(s).unwrap()
    }

    #[test]
    fn sums_push_increments_and_lasts_push_totals() {
        let c = cursor("10", 2, None);
        let now = c.period_start + time::Duration::days(1);
        let p = next_push(&c, MeterFormula::Sum, u("12.5"), now).unwrap();
        assert_eq!((p.value, p.total), (u("2.5"), u("12.5")));
        assert_eq!(p.event.identifier, format!("{}-3", Uuid::nil().simple()));
        assert!(next_push(&c, MeterFormula::Sum, u("10"), now).is_none());
        let p = next_push(&c, MeterFormula::Last, u("7"), now).unwrap();
        assert_eq!((p.value, p.total), (u("7"), u("7")));
        assert!(next_push(&c, MeterFormula::Last, u("10"), now).is_none());
        assert!(next_push(&cursor("0", 0, None), MeterFormula::Last, u("0"), now).is_none());
    }

    #[test]
    fn a_last_total_waits_a_second_after_the_previous_push() {
        let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let now = start + time::Duration::days(1);
        let c = cursor("3", 1, Some(now.replace_nanosecond(0).unwrap()));
        assert!(next_push(&c, MeterFormula::Last, u("4"), now).is_none());
        let later = now + time::Duration::SECOND;
        assert!(next_push(&c, MeterFormula::Last, u("4"), later).is_some());
    }

    #[test]
    fn a_late_push_is_dated_inside_its_period() {
        let c = cursor("0", 0, None);
        let after = c.period_end + time::Duration::minutes(5);
        assert_eq!(timestamp(&c, after), c.period_end - time::Duration::SECOND);
    }
}
