//! `CheckAccess`: the hot read path of every internal service, answered from memory.
//!
//! A customer's subscriptions (with their plans' features) are read once and kept until the
//! change feed (`app::changes`) says one of them changed, so a committed change reaches every
//! replica's answers within the feed's poll (250 ms) or at once on a notification. A load that
//! raced an invalidation is answered but not kept. Usage of a metered feature's meter is read
//! from the rollups (exact to the second) and kept for [`USAGE_TTL`], since usage has no outbox; credits come
//! from the same computation as GetBalance. Each map is bounded and cleared when full.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use time::OffsetDateTime;

use super::{AppError, TenantCtx};
use crate::domain::access::{self, AccessPolicy, Decision, DisputedAccess, Holding, MeterUsage};
use crate::domain::customer::{CustomerRef, ExternalId};
use crate::domain::ids::{CustomerId, TenantId};
use crate::domain::meter::MeterKey;
use crate::domain::plan::FeatureKey;
use crate::domain::usage::Units;
use crate::settings::Settings;
use crate::store::{access as store, customers as customer_store};

pub const REASON_CUSTOMER_NOT_FOUND: &str = "CUSTOMER_NOT_FOUND";

/// How long a metered feature's usage and credits are reused.
pub const USAGE_TTL: Duration = Duration::from_secs(1);

/// How long an external id's customer is reused: an external id is freed by DeleteCustomer
/// and may be given to another customer, which has no outbox row.
const EXTERNAL_ID_TTL: Duration = Duration::from_secs(1);

/// Entries each map holds before it is cleared.
const MAX_ENTRIES: usize = 100_000;

/// The features one call may ask about.
pub const MAX_FEATURES: usize = 50;

type Key = (TenantId, CustomerId);

/// A customer's usage of a meter in the period that started at a time.
type UsageKey = (Key, MeterKey, OffsetDateTime);

#[derive(Default)]
struct Cache {
    /// A customer's holdings; `None` for a customer the tenant does not have.
    holdings: Mutex<HashMap<Key, Arc<Option<Vec<Holding>>>>>,
    /// Moves on every invalidation, so a load that began before one is not kept.
    generation: AtomicU64,
    /// Set once the change feed has its starting position: a load that began before could
    /// hold a change committed before that position, which the feed will never report, so
    /// until then nothing is kept.
    live: AtomicBool,
    external: Mutex<HashMap<(TenantId, ExternalId), (CustomerId, Instant)>>,
    usage: Mutex<HashMap<UsageKey, (MeterUsage, Instant)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bounded_insert<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, k: K, v: V) {
    if map.len() >= MAX_ENTRIES {
        map.clear();
    }
    map.insert(k, v);
}

/// The CheckAccess use case and its cache.
#[derive(Clone)]
pub struct Access {
    pool: PgPool,
    settings: Arc<Settings>,
    cache: Arc<Cache>,
}

impl Access {
    pub fn new(pool: PgPool, settings: Arc<Settings>) -> Self {
        Self {
            pool,
            settings,
            cache: Arc::default(),
        }
    }

    /// The change feed has its starting position: from now on a load may be kept, since every
    /// change committed after it began will reach [`Access::invalidate`].
    pub fn feed_started(&self) {
        self.cache.live.store(true, Ordering::SeqCst);
    }

    /// Forgets what is cached about a customer's subscriptions (the change feed calls this).
    pub fn invalidate(&self, tenant: TenantId, customer: CustomerId) {
        self.cache.generation.fetch_add(1, Ordering::SeqCst);
        lock(&self.cache.holdings).remove(&(tenant, customer));
    }

    fn policy(&self, tenant: TenantId) -> AccessPolicy {
        let t = self.settings.tenant(tenant);
        AccessPolicy {
            past_due_grace: t
                .past_due_grace
                .and_then(|d| time::Duration::try_from(d).ok())
                .unwrap_or(AccessPolicy::DEFAULT_GRACE),
            disputed: t.disputed_access.unwrap_or(DisputedAccess::Deny),
        }
    }

    /// One decision per asked feature, in the order asked. An unknown customer is NOT_FOUND.
    pub async fn check(
        &self,
        ctx: &TenantCtx,
        customer: &CustomerRef,
        features: &[FeatureKey],
    ) -> Result<Vec<Decision>, AppError> {
        let tenant = ctx.tenant;
        let customer = self.customer_id(tenant, customer).await?;
        let holdings = self.holdings(tenant, customer).await?;
        let Some(holdings) = holdings.as_ref() else {
            return Err(not_found());
        };
        let now = super::customers::now_micros();
        let policy = self.policy(tenant);
        // The usage each metered feature needs, read (or found cached) before judging.
        let mut usage: HashMap<(MeterKey, OffsetDateTime), MeterUsage> = HashMap::new();
        for f in features {
            for h in holdings {
                let Some(m) = h
                    .features
                    .iter()
                    .find(|x| &x.key == f)
                    .and_then(|x| x.metered.as_ref())
                else {
                    continue;
                };
                let k = (m.meter.clone(), h.current_period_start);
                if usage.contains_key(&k) {
                    continue;
                }
                if let Some(u) = self
                    .usage(tenant, customer, &m.meter, h.current_period_start, now)
                    .await?
                {
                    usage.insert(k, u);
                }
            }
        }
        Ok(features
            .iter()
            .map(|f| {
                access::decide(f, holdings, now, &policy, |h, m| {
                    usage
                        .get(&(m.meter.clone(), h.current_period_start))
                        .copied()
                })
            })
            .collect())
    }

    async fn customer_id(
        &self,
        tenant: TenantId,
        customer: &CustomerRef,
    ) -> Result<CustomerId, AppError> {
        let external = match customer {
            CustomerRef::Id(id) => return Ok(*id),
            CustomerRef::External(e) => e,
        };
        let key = (tenant, external.clone());
        if let Some((id, at)) = lock(&self.cache.external).get(&key)
            && at.elapsed() < EXTERNAL_ID_TTL
        {
            return Ok(*id);
        }
        let mut conn = self.pool.acquire().await?;
        let found = customer_store::find_customer(&mut conn, tenant, customer)
            .await?
            .ok_or_else(not_found)?;
        bounded_insert(
            &mut lock(&self.cache.external),
            key,
            (found.id, Instant::now()),
        );
        Ok(found.id)
    }

    async fn holdings(
        &self,
        tenant: TenantId,
        customer: CustomerId,
    ) -> Result<Arc<Option<Vec<Holding>>>, AppError> {
        if let Some(h) = lock(&self.cache.holdings).get(&(tenant, customer)) {
            return Ok(h.clone());
        }
        let live = self.cache.live.load(Ordering::SeqCst);
        let generation = self.cache.generation.load(Ordering::SeqCst);
        let mut conn = self.pool.acquire().await?;
        let loaded = Arc::new(store::holdings(&mut conn, tenant, customer).await?);
        let mut cached = lock(&self.cache.holdings);
        if live && self.cache.generation.load(Ordering::SeqCst) == generation {
            bounded_insert(&mut cached, (tenant, customer), loaded.clone());
        }
        Ok(loaded)
    }

    /// A meter's usage in the period that started at `since`, and the customer's credits on
    /// it; `None` when the tenant has no such meter (which denies).
    async fn usage(
        &self,
        tenant: TenantId,
        customer: CustomerId,
        meter: &MeterKey,
        since: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<Option<MeterUsage>, AppError> {
        let key = ((tenant, customer), meter.clone(), since);
        if let Some((u, at)) = lock(&self.cache.usage).get(&key)
            && at.elapsed() < USAGE_TTL
        {
            return Ok(Some(*u));
        }
        let mut conn = self.pool.acquire().await?;
        let Some((meter_id, total)) =
            store::period_usage(&mut conn, tenant, customer, meter.as_str(), since).await?
        else {
            return Ok(None);
        };
        let used = Units::parse(&total).ok_or_else(|| {
            AppError::internal(format!("a usage total is not a decimal: {total:?}"))
        })?;
        let credits = super::usage::balance_at(&mut conn, tenant, customer, meter_id, now)
            .await?
            .remaining;
        let u = MeterUsage { used, credits };
        bounded_insert(&mut lock(&self.cache.usage), key, (u, Instant::now()));
        Ok(Some(u))
    }
}

fn not_found() -> AppError {
    AppError::not_found(REASON_CUSTOMER_NOT_FOUND, "customer not found")
}
