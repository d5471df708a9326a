//! The plan catalogue's tables: `plans`, `plan_features` and `prices`.

use std::collections::HashMap;

use sqlx::PgConnection;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use super::{StoreError, corrupt};
use crate::domain::customer::DisplayName;
use crate::domain::ids::{PlanId, PriceId, TenantId};
use crate::domain::meter::MeterKey;
use crate::domain::money::{Currency, Money};
use crate::domain::plan::{Billing, Description, Feature, Interval, Plan, PlanKey, Price};

struct PlanRow {
    id: Uuid,
    key: String,
    name: String,
    description: Option<String>,
    created_at: OffsetDateTime,
    archived_at: Option<OffsetDateTime>,
    features: Vec<String>,
    /// Per feature, its meter's key, or "" for a switch.
    feature_meters: Vec<String>,
    /// Per feature, its limit per period, or -1 for a switch.
    feature_limits: Vec<i64>,
}

struct PriceRow {
    plan_id: Uuid,
    id: Uuid,
    amount: i64,
    currency: String,
    interval: String,
    interval_count: i16,
    trial_days: i16,
    created_at: OffsetDateTime,
    meter_key: Option<String>,
}

fn interval_name(billing: Billing) -> &'static str {
    match billing {
        Billing::OneTime => "one_time",
        Billing::Recurring {
            interval: Interval::Month,
            ..
        } => "month",
        Billing::Recurring {
            interval: Interval::Year,
            ..
        } => "year",
    }
}

impl PriceRow {
    fn into_domain(self) -> Result<Price, StoreError> {
        let currency = Currency::parse(&self.currency).map_err(|e| corrupt("price currency", e))?;
        let billing = match self.interval.as_str() {
            "one_time" => Billing::OneTime,
            other => {
                let interval = match other {
                    "month" => Interval::Month,
                    "year" => Interval::Year,
                    _ => return Err(corrupt("price interval", other)),
                };
                Billing::recurring(interval, self.interval_count.into(), self.trial_days.into())
                    .map_err(|(_, e)| corrupt("price billing", e))?
            }
        };
        Ok(Price {
            id: PriceId::from_uuid(self.id),
            money: Money::stored(self.amount, currency).map_err(|e| corrupt("price amount", e))?,
            billing,
            meter: self
                .meter_key
                .as_deref()
                .map(MeterKey::parse)
                .transpose()
                .map_err(|e| corrupt("price meter", e))?,
            created_at: self.created_at,
        })
    }
}

impl PlanRow {
    fn into_domain(self, prices: Vec<Price>) -> Result<Plan, StoreError> {
        Ok(Plan {
            id: PlanId::from_uuid(self.id),
            key: PlanKey::parse(&self.key).map_err(|e| corrupt("plan key", e))?,
            name: DisplayName::parse(&self.name).map_err(|e| corrupt("plan name", e))?,
            description: self
                .description
                .as_deref()
                .map(Description::parse)
                .transpose()
                .map_err(|e| corrupt("plan description", e))?,
            features: self
                .features
                .iter()
                .zip(&self.feature_meters)
                .zip(&self.feature_limits)
                .map(|((key, meter), limit)| {
                    Feature::parse(key, meter, if meter.is_empty() { 0 } else { *limit })
                        .map_err(|e| corrupt("plan feature", format!("{key}: {e:?}")))
                })
                .collect::<Result<_, _>>()?,
            prices,
            created_at: self.created_at,
            archived_at: self.archived_at,
        })
    }
}

/// Inserts a plan with its features and prices in one statement; `false`, writing nothing,
/// when the tenant has a plan with its key (an expected outcome, found with `ON CONFLICT DO
/// NOTHING`).
pub async fn insert_plan(
    conn: &mut PgConnection,
    tenant: TenantId,
    plan: &Plan,
) -> Result<bool, StoreError> {
    let features: Vec<String> = plan
        .features
        .iter()
        .map(|f| f.key.as_str().to_owned())
        .collect();
    // A switch's meter and limit are NULL: the arrays carry "" and -1 for them.
    let feature_meters: Vec<String> = plan
        .features
        .iter()
        .map(|f| {
            f.metered
                .as_ref()
                .map_or("", |m| m.meter.as_str())
                .to_owned()
        })
        .collect();
    let limits: Vec<i64> = plan
        .features
        .iter()
        .map(|f| f.metered.as_ref().map_or(-1, |m| m.limit as i64))
        .collect();
    let price_ids: Vec<Uuid> = plan.prices.iter().map(|p| p.id.as_uuid()).collect();
    let amounts: Vec<i64> = plan.prices.iter().map(|p| p.money.amount()).collect();
    let currencies: Vec<String> = plan
        .prices
        .iter()
        .map(|p| p.money.currency().code().to_owned())
        .collect();
    let intervals: Vec<String> = plan
        .prices
        .iter()
        .map(|p| interval_name(p.billing).to_owned())
        .collect();
    let counts: Vec<i16> = plan
        .prices
        .iter()
        .map(|p| p.billing.interval_count().into())
        .collect();
    let trials: Vec<i16> = plan
        .prices
        .iter()
        .map(|p| p.billing.trial_days() as i16)
        .collect();
    let price_meters: Vec<Option<String>> = plan
        .prices
        .iter()
        .map(|p| p.meter.as_ref().map(|m| m.as_str().to_owned()))
        .collect();
    // The children are inserted only when the plan was: they select from its RETURNING.
    let inserted = sqlx::query_scalar!(
        r#"WITH p AS (
               INSERT INTO plans (tenant_id, id, key, name, description, created_at)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (tenant_id, key) DO NOTHING
               RETURNING id),
           f AS (
               INSERT INTO plan_features (tenant_id, plan_id, key, position, meter_key,
                                          limit_per_period)
               SELECT $1, p.id, f.key, (f.ord - 1)::smallint, nullif(f.meter, ''),
                      nullif(f.lim, -1)
               FROM p, unnest($7::text[], $15::text[], $16::bigint[])
                       WITH ORDINALITY AS f (key, meter, lim, ord)),
           x AS (
               INSERT INTO prices (tenant_id, id, plan_id, position, amount, currency, interval,
                                   interval_count, trial_days, created_at, meter_key)
               SELECT $1, x.id, p.id, (x.ord - 1)::smallint, x.amount, x.currency, x.interval,
                      x.interval_count, x.trial_days, $6, x.meter_key
               FROM p, unnest($8::uuid[], $9::bigint[], $10::text[], $11::text[],
                              $12::smallint[], $13::smallint[], $14::text[])
                       WITH ORDINALITY AS x (id, amount, currency, interval, interval_count,
                                             trial_days, meter_key, ord))
           SELECT EXISTS (SELECT 1 FROM p) AS "inserted!""#,
        tenant.as_uuid(),
        plan.id.as_uuid(),
        plan.key.as_str(),
        plan.name.as_str(),
        plan.description.as_ref().map(Description::as_str),
        plan.created_at,
        &features,
        &price_ids,
        &amounts,
        &currencies,
        &intervals,
        &counts,
        &trials,
        &price_meters as &[Option<String>],
        &feature_meters,
        &limits,
    )
    .fetch_one(conn)
    .instrument(super::statement_span!("INSERT", "plans"))
    .await?;
    Ok(inserted)
}

/// Marks a live plan archived at `at`; `false` when no live plan of the tenant has that id
/// (unknown, or archived already).
pub async fn archive_plan(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: PlanId,
    at: OffsetDateTime,
) -> Result<bool, StoreError> {
    let done = sqlx::query!(
        "UPDATE plans SET archived_at = $3
         WHERE tenant_id = $1 AND id = $2 AND archived_at IS NULL",
        tenant.as_uuid(),
        id.as_uuid(),
        at,
    )
    .execute(conn)
    .instrument(super::statement_span!("UPDATE", "plans"))
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn find_plan_by_id(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: PlanId,
) -> Result<Option<Plan>, StoreError> {
    let row = sqlx::query_as!(
        PlanRow,
        r#"SELECT p.id, p.key, p.name, p.description, p.created_at, p.archived_at,
                  ARRAY(SELECT f.key FROM plan_features f
                        WHERE f.tenant_id = p.tenant_id AND f.plan_id = p.id
                        ORDER BY f.position) AS "features!",
                  ARRAY(SELECT coalesce(f.meter_key, '') FROM plan_features f
                        WHERE f.tenant_id = p.tenant_id AND f.plan_id = p.id
                        ORDER BY f.position) AS "feature_meters!",
                  ARRAY(SELECT coalesce(f.limit_per_period, -1) FROM plan_features f
                        WHERE f.tenant_id = p.tenant_id AND f.plan_id = p.id
                        ORDER BY f.position) AS "feature_limits!"
           FROM plans p WHERE p.tenant_id = $1 AND p.id = $2"#,
        tenant.as_uuid(),
        id.as_uuid(),
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(with_prices(conn, tenant, row.into_iter().collect())
        .await?
        .pop())
}

pub async fn find_plan_by_key(
    conn: &mut PgConnection,
    tenant: TenantId,
    key: &PlanKey,
) -> Result<Option<Plan>, StoreError> {
    let row = sqlx::query_as!(
        PlanRow,
        r#"SELECT p.id, p.key, p.name, p.description, p.created_at, p.archived_at,
                  ARRAY(SELECT f.key FROM plan_features f
                        WHERE f.tenant_id = p.tenant_id AND f.plan_id = p.id
                        ORDER BY f.position) AS "features!",
                  ARRAY(SELECT coalesce(f.meter_key, '') FROM plan_features f
                        WHERE f.tenant_id = p.tenant_id AND f.plan_id = p.id
                        ORDER BY f.position) AS "feature_meters!",
                  ARRAY(SELECT coalesce(f.limit_per_period, -1) FROM plan_features f
                        WHERE f.tenant_id = p.tenant_id AND f.plan_id = p.id
                        ORDER BY f.position) AS "feature_limits!"
           FROM plans p WHERE p.tenant_id = $1 AND p.key = $2"#,
        tenant.as_uuid(),
        key.as_str(),
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(with_prices(conn, tenant, row.into_iter().collect())
        .await?
        .pop())
}

/// One page of plans in id (creation) order after `after` (the nil id for the first page),
/// archived ones only when `with_archived`.
pub async fn list_plans(
    conn: &mut PgConnection,
    tenant: TenantId,
    with_archived: bool,
    after: Uuid,
    limit: i64,
) -> Result<Vec<Plan>, StoreError> {
    let rows = sqlx::query_as!(
        PlanRow,
        r#"SELECT p.id, p.key, p.name, p.description, p.created_at, p.archived_at,
                  ARRAY(SELECT f.key FROM plan_features f
                        WHERE f.tenant_id = p.tenant_id AND f.plan_id = p.id
                        ORDER BY f.position) AS "features!",
                  ARRAY(SELECT coalesce(f.meter_key, '') FROM plan_features f
                        WHERE f.tenant_id = p.tenant_id AND f.plan_id = p.id
                        ORDER BY f.position) AS "feature_meters!",
                  ARRAY(SELECT coalesce(f.limit_per_period, -1) FROM plan_features f
                        WHERE f.tenant_id = p.tenant_id AND f.plan_id = p.id
                        ORDER BY f.position) AS "feature_limits!"
           FROM plans p
           WHERE p.tenant_id = $1 AND p.id > $2 AND ($3 OR p.archived_at IS NULL)
           ORDER BY p.id
           LIMIT $4"#,
        tenant.as_uuid(),
        after,
        with_archived,
        limit,
    )
    .fetch_all(&mut *conn)
    .await?;
    with_prices(conn, tenant, rows).await
}

/// The plans of `rows` with their prices, read in one statement, in the rows' order.
async fn with_prices(
    conn: &mut PgConnection,
    tenant: TenantId,
    rows: Vec<PlanRow>,
) -> Result<Vec<Plan>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let prices = sqlx::query_as!(
        PriceRow,
        "SELECT plan_id, id, amount, currency, interval, interval_count, trial_days, created_at,
                meter_key
         FROM prices WHERE tenant_id = $1 AND plan_id = ANY($2)
         ORDER BY plan_id, position",
        tenant.as_uuid(),
        &ids,
    )
    .fetch_all(conn)
    .await?;
    let mut by_plan: HashMap<Uuid, Vec<Price>> = HashMap::new();
    for row in prices {
        by_plan
            .entry(row.plan_id)
            .or_default()
            .push(row.into_domain()?);
    }
    rows.into_iter()
        .map(|row| {
            let prices = by_plan.remove(&row.id).unwrap_or_default();
            row.into_domain(prices)
        })
        .collect()
}

/// A price found for a purchase: the price, its plan's name, and whether the plan is archived.
#[derive(Debug, Clone)]
pub struct PriceForSale {
    pub price: Price,
    pub plan_name: String,
    pub archived: bool,
}

/// The tenant's prices among `ids`, with their plans' names and states; unknown ids are absent.
pub async fn find_prices_for_sale(
    conn: &mut PgConnection,
    tenant: TenantId,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, PriceForSale>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT pr.id, pr.plan_id, pr.amount, pr.currency, pr.interval, pr.interval_count,
                  pr.trial_days, pr.created_at, pr.meter_key, p.name AS plan_name,
                  p.archived_at IS NOT NULL AS "archived!"
           FROM prices pr
           JOIN plans p ON p.tenant_id = pr.tenant_id AND p.id = pr.plan_id
           WHERE pr.tenant_id = $1 AND pr.id = ANY($2)"#,
        tenant.as_uuid(),
        ids,
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let price = PriceRow {
                plan_id: r.plan_id,
                id: r.id,
                amount: r.amount,
                currency: r.currency,
                interval: r.interval,
                interval_count: r.interval_count,
                trial_days: r.trial_days,
                created_at: r.created_at,
                meter_key: r.meter_key,
            }
            .into_domain()?;
            Ok((
                r.id,
                PriceForSale {
                    price,
                    plan_name: r.plan_name,
                    archived: r.archived,
                },
            ))
        })
        .collect()
}
