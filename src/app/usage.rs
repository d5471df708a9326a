//! The Usage service's use cases: meters, event ingestion, usage queries, credits.
//!
//! Ingestion resolves a batch's customers and meters with one query each, refuses the events
//! at fault one by one, and hands the rest to group commit: batches that arrive together
//! (from RecordUsage calls and StreamUsage messages alike) share one statement and one commit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use sqlx::PgPool;

use crate::store::replica::ReadPool;
use time::OffsetDateTime;
use tokio_util::task::TaskTracker;

use super::group_commit::GroupCommit;
use super::idempotency::{self, Done, IdempotentCall, Keyed, Mutations, Written};
use super::page::{self, Page};
use super::{AppError, Rejection, RejectionKind, TenantCtx};
use crate::domain::Violations;
use crate::domain::customer::CustomerRef;
use crate::domain::ids::{CustomerId, GrantId, MeterId, TenantId};
use crate::domain::meter::{Aggregation, Meter, MeterKey, MeterRef, NewMeter};
use crate::domain::page::{FilterDigest, PageSize};
use crate::domain::usage::{
    self, Balance, Figure, Grant, GrantSpan, NewGrant, RejectReason, Rejected, Units, UsageEvent,
    UsageQuery, UsageReport, UsageWindow, WindowFigure,
};
use crate::store::meters::{self as store, MeterInsert};
use crate::store::usage::{
    self as usage_store, EventBatch, EventRow, GrantInsert, WindowRow, WindowsOf,
};

pub const REASON_METER_NOT_FOUND: &str = "METER_NOT_FOUND";
pub const REASON_METER_KEY_TAKEN: &str = "METER_KEY_TAKEN";
pub const REASON_CUSTOMER_NOT_FOUND: &str = "CUSTOMER_NOT_FOUND";
/// Credits are drawn by usage that adds up; a MAX, UNIQUE_COUNT or LATEST meter's does not.
pub const REASON_METER_NOT_ADDITIVE: &str = "METER_NOT_ADDITIVE";

/// The most events one ingestion statement carries: a few full client batches.
const MAX_EVENTS_PER_STATEMENT: usize = 8_000;
/// The most events waiting for a writer before a batch is refused as overload.
const MAX_EVENTS_QUEUED: usize = 64_000;
/// Meters never change once made and are never deleted, so a meter found stays valid; the
/// cache is only emptied when it grows past this.
const MAX_CACHED_METERS: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Usage events by outcome (`accepted`, `duplicate`, `rejected`): three series at most.
#[derive(Clone, Default)]
pub struct UsageMetrics {
    events: prometheus_client::metrics::family::Family<
        OutcomeLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl UsageMetrics {
    /// Adds the counter to the registry `/metrics` serves.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        // prometheus-client appends `_total` to counters.
        registry.register(
            "coffer_usage_events",
            "Usage events by outcome (accepted, duplicate, rejected)",
            self.events.clone(),
        );
    }

    fn count(&self, r: &Recorded) {
        for (outcome, n) in [
            ("accepted", r.accepted as u64),
            ("duplicate", r.duplicates as u64),
            ("rejected", r.rejected.len() as u64),
        ] {
            if n > 0 {
                self.events
                    .get_or_create(&OutcomeLabels { outcome })
                    .inc_by(n);
            }
        }
    }
}

/// What a batch of events came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Events stored by this batch.
    pub accepted: u32,
    /// Events whose id was already stored (by an earlier batch or earlier in this one).
    pub duplicates: u32,
    pub rejected: Vec<Rejected>,
}

/// How a batch of grants is written with the claims of their keys: one statement, in
/// autocommit ([`idempotency::claim_and_write`]). Nothing in it can be refused or raced, so it
/// always decides its batch alone, and the transactional form (the same statement, committed by
/// the caller) is never needed but kept for the mechanism's shape.
static GRANT_WRITES: idempotency::ClaimingWrites<GrantInsert> = idempotency::ClaimingWrites {
    at_once: |conn, rows, claims| {
        Box::pin(async move {
            usage_store::claim_and_insert_grants(conn, rows, claims)
                .await
                .map(Some)
        })
    },
    in_transaction: |conn, rows, claims| {
        Box::pin(usage_store::claim_and_insert_grants(conn, rows, claims))
    },
};

/// How a batch of meter creates is written with the claims of their keys: one statement in
/// autocommit, or, when a concurrent create of the same meter key aborted it, the transaction
/// that finds the conflict ([`idempotency::claim_and_write`]), as for customers.
static METER_WRITES: idempotency::ClaimingWrites<MeterInsert> = idempotency::ClaimingWrites {
    at_once: |conn, rows, claims| {
        Box::pin(store::claim_and_insert_meters_at_once(conn, rows, claims))
    },
    in_transaction: |conn, rows, claims| {
        Box::pin(store::claim_and_insert_meters(conn, rows, claims))
    },
};

/// The list a page token of ListMeters belongs to.
const LIST: &str = "coffer.v1.Usage/ListMeters";

/// The Usage service's use cases.
#[derive(Clone)]
pub struct Usage {
    pool: PgPool,
    /// Lag-tolerant reads (List*, GetUsage, GetBalance): the read replica while it is within
    /// its bound, else `pool`.
    reads: ReadPool,
    mutations: Mutations,
    /// Batches of events committed together.
    ingest: GroupCommit<EventBatch, u32>,
    /// Concurrent grants share a statement and a commit.
    grants: GroupCommit<Keyed<GrantInsert>, Option<Written>>,
    /// Concurrent meter creates share a statement and a commit.
    meter_inserts: GroupCommit<Keyed<MeterInsert>, Option<Written>>,
    meters: Arc<Mutex<HashMap<(TenantId, MeterKey), Meter>>>,
    metrics: UsageMetrics,
}

impl Usage {
    /// Sends lag-tolerant reads to `reads` (the app's [`ReadPool`]).
    pub(crate) fn set_reads(&mut self, reads: ReadPool) {
        self.reads = reads;
    }

    pub fn new(pool: PgPool, mutations: Mutations, tasks: TaskTracker) -> Self {
        let ingest = GroupCommit::new(
            "usage events",
            pool.clone(),
            tasks.clone(),
            |conn, batches| Box::pin(usage_store::insert_event_batches(conn, batches)),
            usage_store::order_batches,
        )
        .weighed(
            |b| b.rows.len().max(1),
            MAX_EVENTS_PER_STATEMENT,
            MAX_EVENTS_QUEUED,
        );
        let meter_inserts = GroupCommit::new(
            "meter inserts",
            pool.clone(),
            tasks.clone(),
            |conn, rows| Box::pin(idempotency::claim_and_write(conn, rows, &METER_WRITES)),
            |a, b| store::order_inserts(&a.row, &b.row),
        );
        let grants = GroupCommit::new(
            "credit grants",
            pool.clone(),
            tasks,
            |conn, rows| Box::pin(idempotency::claim_and_write(conn, rows, &GRANT_WRITES)),
            |a, b| usage_store::order_grants(&a.row, &b.row),
        );
        Self {
            reads: ReadPool::primary_only(pool.clone()),
            pool,
            mutations,
            ingest,
            grants,
            meter_inserts,
            meters: Arc::default(),
            metrics: UsageMetrics::default(),
        }
    }

    pub fn metrics(&self) -> &UsageMetrics {
        &self.metrics
    }

    /// Creates a meter. A key the tenant already uses is the statement finding the conflict
    /// before its insert (or, racing a concurrent create, the transaction after it), not a
    /// failed insert; the refusal is stored under the idempotency key like any outcome.
    pub async fn create_meter(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        new: NewMeter,
    ) -> Result<Done<Meter>, AppError> {
        let tenant = ctx.tenant;
        let meter = Meter {
            id: MeterId::generate(),
            key: new.key,
            name: new.name,
            reading: new.reading,
            created_at: super::customers::now_micros(),
        };
        // The one-statement use, group-committed with concurrent creates (decision 0037).
        self.mutations
            .run_statement(
                ctx,
                call,
                meter.clone(),
                Some(Rejection {
                    kind: RejectionKind::AlreadyExists,
                    reason: REASON_METER_KEY_TAKEN.to_owned(),
                    message: "the tenant already has a meter with this key".to_owned(),
                    metadata: Vec::new(),
                }),
                &self.meter_inserts,
                move |completion| MeterInsert {
                    tenant,
                    meter,
                    completion,
                },
            )
            .await
    }

    pub async fn get_meter(&self, ctx: &TenantCtx, by: &MeterRef) -> Result<Meter, AppError> {
        let mut conn = self.pool.acquire().await?;
        let found = match by {
            MeterRef::Id(id) => store::find_meter_by_id(&mut conn, ctx.tenant, *id).await?,
            MeterRef::Key(key) => store::find_meter_by_key(&mut conn, ctx.tenant, key).await?,
        };
        found.ok_or_else(|| AppError::not_found(REASON_METER_NOT_FOUND, "meter not found"))
    }

    pub async fn list_meters(
        &self,
        ctx: &TenantCtx,
        size: PageSize,
        token: Option<&str>,
    ) -> Result<Page<Meter>, AppError> {
        let filters = FilterDigest::of(LIST, &[]);
        let after = page::start(token, filters)?.unwrap_or(uuid::Uuid::nil());
        let mut conn = self.reads.get().acquire().await?;
        let rows = store::list_meters(&mut conn, ctx.tenant, after, size.get() as i64 + 1).await?;
        Ok(Page::of(rows, size, filters, |m| m.id.as_uuid()))
    }
}

impl Usage {
    /// A meter by key, from the cache or the database.
    async fn meter_by_key(
        &self,
        tenant: TenantId,
        key: &MeterKey,
    ) -> Result<Option<Meter>, AppError> {
        if let Some(m) = self.cached_meter(tenant, key) {
            return Ok(Some(m));
        }
        let mut conn = self.pool.acquire().await?;
        let found = store::find_meter_by_key(&mut conn, tenant, key).await?;
        if let Some(m) = &found {
            self.cache_meter(tenant, m.clone());
        }
        Ok(found)
    }

    fn cached_meter(&self, tenant: TenantId, key: &MeterKey) -> Option<Meter> {
        let cache = self.meters.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(&(tenant, key.clone())).cloned()
    }

    fn cache_meter(&self, tenant: TenantId, meter: Meter) {
        let mut cache = self.meters.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED_METERS {
            cache.clear();
        }
        cache.insert((tenant, meter.key.clone()), meter);
    }

    /// Records a batch of events: `events[i]` is the i-th event as parsed, or why it could not
    /// be. Each event is stored, counted as a duplicate, or refused with its index and field;
    /// the answer comes once the stored ones are committed.
    pub async fn record(
        &self,
        ctx: &TenantCtx,
        events: Vec<Result<UsageEvent, Rejected>>,
    ) -> Result<Recorded, AppError> {
        let tenant = ctx.tenant;
        let now = super::customers::now_micros();
        let mut out = Recorded::default();

        // The meters and customers the batch names, one lookup each.
        let mut meter_keys: Vec<MeterKey> = Vec::new();
        let mut ids: Vec<uuid::Uuid> = Vec::new();
        let mut externals: Vec<&str> = Vec::new();
        for e in events.iter().flatten() {
            meter_keys.push(e.meter.clone());
            match &e.customer {
                CustomerRef::Id(id) => ids.push(id.as_uuid()),
                CustomerRef::External(x) => externals.push(x.as_str()),
            }
        }
        meter_keys.sort();
        meter_keys.dedup();
        let mut meters: HashMap<MeterKey, Meter> = HashMap::new();
        for key in meter_keys {
            if let Some(m) = self.meter_by_key(tenant, &key).await? {
                meters.insert(key, m);
            }
        }
        ids.sort();
        ids.dedup();
        externals.sort();
        externals.dedup();
        let (by_id, by_external) = if ids.is_empty() && externals.is_empty() {
            (HashSet::new(), HashMap::new())
        } else {
            let mut conn = self.pool.acquire().await?;
            let found = usage_store::resolve_customers(&mut conn, tenant, &ids, &externals).await?;
            let by_id: HashSet<uuid::Uuid> = found.iter().map(|(id, _)| *id).collect();
            let by_external: HashMap<String, uuid::Uuid> = found
                .into_iter()
                .filter_map(|(id, x)| x.map(|x| (x, id)))
                .collect();
            (by_id, by_external)
        };

        let mut rows: Vec<EventRow> = Vec::with_capacity(events.len());
        for (index, event) in events.into_iter().enumerate() {
            let event = match event {
                Ok(e) => e,
                Err(r) => {
                    out.rejected.push(r);
                    continue;
                }
            };
            let customer = match &event.customer {
                CustomerRef::Id(id) => by_id.get(&id.as_uuid()).copied(),
                CustomerRef::External(x) => by_external.get(x.as_str()).copied(),
            };
            let Some(customer) = customer else {
                let field = match event.customer {
                    CustomerRef::Id(_) => "customer_id",
                    CustomerRef::External(_) => "external_id",
                };
                out.rejected.push(Rejected::new(
                    index,
                    RejectReason::UnknownCustomer,
                    field,
                    "no live customer of the tenant has this id",
                ));
                continue;
            };
            let Some(meter) = meters.get(&event.meter) else {
                out.rejected.push(Rejected::new(
                    index,
                    RejectReason::UnknownMeter,
                    "meter_key",
                    "the tenant has no meter with this key",
                ));
                continue;
            };
            if !usage::within_window(event.occurred_at, now) {
                out.rejected.push(Rejected::new(
                    index,
                    RejectReason::OutOfWindow,
                    "occurred_at",
                    "must be at most 35 days ago and at most 5 minutes ahead",
                ));
                continue;
            }
            let (value, unique_key) = match usage::reading_of(&meter.reading, &event) {
                Ok(r) => r,
                Err((field, e)) => {
                    out.rejected.push(Rejected::new(
                        index,
                        RejectReason::MalformedValue,
                        &field,
                        e.0,
                    ));
                    continue;
                }
            };
            rows.push(EventRow {
                event_id: event.id.into_string(),
                customer,
                meter: meter.id.as_uuid(),
                occurred_at: event.occurred_at,
                value: value.as_str().to_owned(),
                unique_key,
                latest: meter.reading.aggregation() == Aggregation::Latest,
                properties: event.properties,
            });
        }
        out.rejected.sort_by_key(|r| r.index);

        // An id twice in one batch is stored once: the first copy counts.
        let valid = rows.len() as u32;
        let mut seen = HashSet::with_capacity(rows.len());
        rows.retain(|r| seen.insert(r.event_id.clone()));
        if !rows.is_empty() {
            rows.sort_by(|a, b| a.event_id.cmp(&b.event_id));
            out.accepted = self.ingest.write(EventBatch { tenant, rows }).await?;
        }
        out.duplicates = valid - out.accepted;
        self.metrics.count(&out);
        Ok(out)
    }

    /// A live customer of the tenant, by either id.
    async fn customer_id(
        &self,
        tenant: TenantId,
        by: &CustomerRef,
    ) -> Result<CustomerId, AppError> {
        let mut conn = self.pool.acquire().await?;
        let (ids, externals): (Vec<uuid::Uuid>, Vec<&str>) = match by {
            CustomerRef::Id(id) => (vec![id.as_uuid()], vec![]),
            CustomerRef::External(x) => (vec![], vec![x.as_str()]),
        };
        let found = usage_store::resolve_customers(&mut conn, tenant, &ids, &externals).await?;
        found
            .first()
            .map(|(id, _)| CustomerId::from_uuid(*id))
            .ok_or_else(customer_not_found)
    }

    async fn meter(&self, tenant: TenantId, key: &MeterKey) -> Result<Meter, AppError> {
        self.meter_by_key(tenant, key)
            .await?
            .ok_or_else(|| AppError::not_found(REASON_METER_NOT_FOUND, "meter not found"))
    }

    /// A meter's usage by a customer over `[from, to)`, in total and per window.
    pub async fn get_usage(
        &self,
        ctx: &TenantCtx,
        q: &UsageQuery,
    ) -> Result<UsageReport, AppError> {
        let mut violations = Violations::new();
        if q.from >= q.to {
            violations.add("to", "must be after from");
        } else if let Some(max) = q.window.max_range()
            && q.to - q.from > max
        {
            violations.add(
                "to",
                format!(
                    "a {} window covers at most {} days",
                    q.window.as_str(),
                    max.whole_days()
                ),
            );
        }
        violations.finish().map_err(AppError::Invalid)?;
        let meter = self.meter(ctx.tenant, &q.meter).await?;
        // The customer is found by the read itself: one round trip, not two. A replica may
        // not have a customer created a moment ago, so its "no such customer" is asked again
        // of the primary, the same read.
        let read = async |pool: &sqlx::PgPool| -> Result<_, AppError> {
            let mut conn = pool.acquire().await?;
            let found = usage_store::usage_windows(
                &mut conn,
                ctx.tenant,
                WindowsOf::Live(&q.customer),
                meter.id,
                q.from,
                q.to,
                q.window,
            )
            .await?;
            Ok((conn, found))
        };
        let (mut conn, found) = match read(self.reads.get()).await? {
            (_, None) if self.reads.on_replica() => read(&self.pool).await?,
            read => read,
        };
        let Some(usage_store::Windows { customer, rows }) = found else {
            return Err(customer_not_found());
        };
        let distinct = if meter.reading.aggregation() == Aggregation::UniqueCount {
            usage_store::unique_counts(
                &mut conn, ctx.tenant, customer, meter.id, q.from, q.to, q.window,
            )
            .await?
        } else {
            HashMap::new()
        };
        let aggregation = meter.reading.aggregation();
        let figure = |row: Option<&WindowRow>, bucket: Option<OffsetDateTime>| {
            let events = row.map_or(0, |r| r.events);
            let value = match (row, aggregation) {
                (None, _) => "0".to_owned(),
                (Some(r), Aggregation::Count) => r.events.to_string(),
                (Some(r), Aggregation::Sum) => r.total.clone(),
                (Some(r), Aggregation::Max) => r.max_value.clone(),
                (Some(r), Aggregation::Latest) => r.latest_value.clone(),
                (Some(_), Aggregation::UniqueCount) => {
                    distinct.get(&bucket).copied().unwrap_or(0).to_string()
                }
            };
            Figure { value, events }
        };
        let total = figure(rows.iter().find(|r| r.bucket.is_none()), None);
        let by_bucket: HashMap<OffsetDateTime, &WindowRow> = rows
            .iter()
            .filter_map(|r| r.bucket.map(|b| (b, r)))
            .collect();
        let windows = windows_of(q.from, q.to, q.window)
            .into_iter()
            .map(|(start, end, bucket)| WindowFigure {
                start,
                end,
                figure: figure(by_bucket.get(&bucket).copied(), Some(bucket)),
            })
            .collect();
        Ok(UsageReport {
            meter: meter.id,
            total,
            windows,
        })
    }

    /// Grants credits on an additive meter (COUNT or SUM).
    pub async fn grant_credits(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        new: NewGrant,
    ) -> Result<Done<Grant>, AppError> {
        let now = super::customers::now_micros();
        if let Some(expires) = new.expires_at
            && expires <= now
        {
            return Err(AppError::Invalid(Violations::single(
                "expires_at",
                "must be in the future",
            )));
        }
        let customer = self.customer_id(ctx.tenant, &new.customer).await?;
        let meter = self.meter(ctx.tenant, &new.meter).await?;
        if !matches!(
            meter.reading.aggregation(),
            Aggregation::Count | Aggregation::Sum
        ) {
            return Err(AppError::rejected(
                RejectionKind::FailedPrecondition,
                REASON_METER_NOT_ADDITIVE,
                "credits are drawn by COUNT and SUM meters only",
            ));
        }
        let grant = Grant {
            id: GrantId::generate(),
            customer,
            meter: meter.id,
            amount: new.amount,
            granted_at: now,
            expires_at: new.expires_at,
            reason: new.reason,
        };
        let tenant = ctx.tenant;
        // The one-statement use: the key claimed completed, the grant written, group-committed
        // with concurrent grants (decision 0037).
        self.mutations
            .run_statement(
                ctx,
                call,
                grant.clone(),
                None,
                &self.grants,
                move |completion| GrantInsert {
                    tenant,
                    grant,
                    completion,
                },
            )
            .await
    }

    /// A customer's credits on a meter: granted (by unexpired grants), used, remaining.
    pub async fn balance(
        &self,
        ctx: &TenantCtx,
        customer: &CustomerRef,
        meter: &MeterKey,
    ) -> Result<Balance, AppError> {
        let customer = self.customer_id(ctx.tenant, customer).await?;
        let meter = self.meter(ctx.tenant, meter).await?;
        let now = super::customers::now_micros();
        let mut conn = self.reads.get().acquire().await?;
        balance_at(&mut conn, ctx.tenant, customer, meter.id, now).await
    }

    /// Folds the rollup rows of past minutes, hours and days into one per minute, hour and
    /// day; returns how many it folded.
    pub async fn maintain(&self) -> Result<u64, AppError> {
        let now = super::customers::now_micros();
        let mut conn = self.pool.acquire().await?;
        // Hours and minutes that ended more than a minute ago: their writers have mostly
        // moved on (a late event is folded in by a later pass).
        let hours_before = now - time::Duration::minutes(61);
        let minutes_before = now - time::Duration::minutes(2);
        let days_before = now - time::Duration::DAY - time::Duration::minutes(1);
        let mut folded = 0;
        for _ in 0..100 {
            let n = usage_store::fold_rollups(
                &mut conn,
                hours_before,
                minutes_before,
                days_before,
                1_000,
            )
            .await?;
            folded += n;
            if n == 0 {
                break;
            }
        }
        Ok(folded)
    }
}

/// A customer's credits on a meter at `now` (what GetBalance answers, and what CheckAccess
/// adds to a metered feature's limit).
pub(crate) async fn balance_at(
    conn: &mut sqlx::PgConnection,
    tenant: TenantId,
    customer: crate::domain::ids::CustomerId,
    meter: crate::domain::ids::MeterId,
    now: OffsetDateTime,
) -> Result<Balance, AppError> {
    let (grants, hours) = usage_store::balance_inputs(conn, tenant, customer, meter, now).await?;
    let units = |s: &str| {
        Units::parse(s)
            .ok_or_else(|| AppError::internal(format!("a stored quantity is not a decimal: {s:?}")))
    };
    let grants = grants
        .iter()
        .map(|g| {
            Ok(GrantSpan {
                amount: units(&g.amount)?,
                granted_at: g.granted_at,
                expires_at: g.expires_at,
            })
        })
        .collect::<Result<Vec<_>, AppError>>()?;
    let hours = hours
        .iter()
        .map(|(h, total)| Ok((*h, units(total)?)))
        .collect::<Result<Vec<_>, AppError>>()?;
    Ok(usage::balance(&grants, &hours, now))
}

fn customer_not_found() -> AppError {
    AppError::not_found(REASON_CUSTOMER_NOT_FOUND, "customer not found")
}

/// The windows of `[from, to)` as (start, end, bucket): each clipped to the range, the bucket
/// being the whole UTC hour or day it belongs to. A query with no window has none.
fn windows_of(
    from: OffsetDateTime,
    to: OffsetDateTime,
    window: UsageWindow,
) -> Vec<(OffsetDateTime, OffsetDateTime, OffsetDateTime)> {
    let step = match window {
        UsageWindow::None => return Vec::new(),
        UsageWindow::Hour => time::Duration::HOUR,
        UsageWindow::Day => time::Duration::DAY,
    };
    let from_utc = from.to_offset(time::UtcOffset::UTC);
    let hour =
        from_utc.replace_time(time::Time::from_hms(from_utc.hour(), 0, 0).expect("a valid hour"));
    let mut bucket = match window {
        UsageWindow::Day => from_utc.replace_time(time::Time::MIDNIGHT),
        _ => hour,
    };
    let mut out = Vec::new();
    while bucket < to {
        let next = bucket + step;
        out.push((bucket.max(from), next.min(to), bucket));
        bucket = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_clipped_utc_hours_and_days() {
        let t = |s: i64| OffsetDateTime::from_unix_timestamp(s).unwrap();
        let h = 3_600;
        let day0 = 1_793_491_200; // a UTC midnight
        let w = windows_of(t(day0 + 30 * 60), t(day0 + 2 * h + 60), UsageWindow::Hour);
        assert_eq!(
            w,
            vec![
                (t(day0 + 1_800), t(day0 + h), t(day0)),
                (t(day0 + h), t(day0 + 2 * h), t(day0 + h)),
                (t(day0 + 2 * h), t(day0 + 2 * h + 60), t(day0 + 2 * h)),
            ]
        );
        let d = windows_of(t(day0 + 5 * h), t(day0 + 30 * h), UsageWindow::Day);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0], (t(day0 + 5 * h), t(day0 + 24 * h), t(day0)));
        assert_eq!(d[1], (t(day0 + 24 * h), t(day0 + 30 * h), t(day0 + 24 * h)));
        assert!(windows_of(t(day0), t(day0 + h), UsageWindow::None).is_empty());
    }
}
