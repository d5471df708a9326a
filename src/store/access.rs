//! What `CheckAccess` reads on a cache miss: a customer's subscriptions with their plans'
//! features, and a meter's usage in a period from the rollups (never more than a minute's events).

use sqlx::PgConnection;
use time::OffsetDateTime;
use tracing::Instrument;

use super::{StoreError, corrupt};
use crate::domain::access::Holding;
use crate::domain::ids::{CustomerId, MeterId, SubscriptionId, TenantId};
use crate::domain::plan::Feature;
use crate::domain::subscription::SubscriptionStatus;

/// The customer's subscriptions as the access policy sees them, or `None` when the tenant
/// has no live customer with that id.
pub async fn holdings(
    conn: &mut PgConnection,
    tenant: TenantId,
    customer: CustomerId,
) -> Result<Option<Vec<Holding>>, StoreError> {
    let exists = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM customers
                          WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL) AS "e!""#,
        tenant.as_uuid(),
        customer.as_uuid(),
    )
    .fetch_one(&mut *conn)
    .await?;
    if !exists {
        return Ok(None);
    }
    // A payment is a subscription's when it was made by the same checkout session, or names
    // the subscription (a renewal's, or a charge of one CreateSubscription made, which has no
    // session).
    let rows = sqlx::query!(
        r#"SELECT s.id, s.status, s.current_period_start, s.current_period_end, s.trial_end,
                  s.cancel_at_period_end,
                  (EXISTS (SELECT 1 FROM payments p
                           WHERE p.tenant_id = s.tenant_id
                             AND p.checkout_session_id = s.checkout_session_id
                             AND p.status = 'disputed')
                   OR EXISTS (SELECT 1 FROM payments p
                              WHERE p.tenant_id = s.tenant_id
                                AND p.subscription_id = s.id
                                AND p.status = 'disputed')) AS "disputed!",
                  ARRAY(SELECT f.key FROM plan_features f
                        WHERE f.tenant_id = s.tenant_id AND f.plan_id = s.plan_id
                        ORDER BY f.position) AS "features!",
                  ARRAY(SELECT coalesce(f.meter_key, '') FROM plan_features f
                        WHERE f.tenant_id = s.tenant_id AND f.plan_id = s.plan_id
                        ORDER BY f.position) AS "meters!",
                  ARRAY(SELECT coalesce(f.limit_per_period, -1) FROM plan_features f
                        WHERE f.tenant_id = s.tenant_id AND f.plan_id = s.plan_id
                        ORDER BY f.position) AS "limits!"
           FROM subscriptions s
           WHERE s.tenant_id = $1 AND s.customer_id = $2
           ORDER BY s.id"#,
        tenant.as_uuid(),
        customer.as_uuid(),
    )
    .fetch_all(conn)
    .instrument(super::statement_span!("SELECT", "subscriptions"))
    .await?;
    rows.into_iter()
        .map(|r| {
            let features = r
                .features
                .iter()
                .zip(&r.meters)
                .zip(&r.limits)
                .map(|((key, meter), limit)| {
                    Feature::parse(key, meter, if meter.is_empty() { 0 } else { *limit })
                        .map_err(|e| corrupt("plan feature", format!("{key}: {e:?}")))
                })
                .collect::<Result<_, _>>()?;
            Ok(Holding {
                subscription: SubscriptionId::from_uuid(r.id),
                status: SubscriptionStatus::parse(&r.status)
                    .ok_or_else(|| corrupt("subscription status", &r.status))?,
                current_period_start: r.current_period_start,
                current_period_end: r.current_period_end,
                trial_end: r.trial_end,
                cancel_at_period_end: r.cancel_at_period_end,
                disputed: r.disputed,
                features,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()
        .map(Some)
}

/// A meter's id and its customer's usage total since `since` (a COUNT or SUM meter: the sum
/// of its values), exactly: whole UTC days, the whole hours of the day `since` falls in and
/// the whole minutes of its hour from `usage_rollups`, and only the seconds before its first
/// whole minute from the events (`usage_range_parts`), so the cost
/// does not grow with the events (a month is about 30 day rows); `None` when the tenant has no
/// meter with that key.
pub async fn period_usage(
    conn: &mut PgConnection,
    tenant: TenantId,
    customer: CustomerId,
    meter: &str,
    since: OffsetDateTime,
) -> Result<Option<(MeterId, String)>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT m.id,
                  trim_scale(coalesce((
                      -- The parts of [since, forever), read as `usage::usage_windows` reads
                      -- them: rollup rows of whole days, hours and minutes, events of the
                      -- seconds before the first whole minute.
                      SELECT sum(x.total)
                      FROM usage_range_parts($4, 'infinity', true) p CROSS JOIN LATERAL (
                          SELECT r.total FROM usage_rollups r
                          WHERE r.tenant_id = $1 AND r.customer_id = $2
                            AND r.meter_id = m.id AND p.grain <> 'second'
                            AND r.grain = p.grain AND r.period >= p.lo AND r.period < p.hi
                          UNION ALL
                          SELECT e.value FROM usage_events e
                          WHERE e.tenant_id = $1 AND e.customer_id = $2
                            AND e.meter_id = m.id AND p.grain = 'second'
                            AND e.occurred_at >= p.lo AND e.occurred_at < p.hi) x), 0))::text
                      AS "total!"
           FROM meters m WHERE m.tenant_id = $1 AND m.key = $3"#,
        tenant.as_uuid(),
        customer.as_uuid(),
        meter,
        since,
    )
    .fetch_optional(conn)
    .instrument(super::statement_span!("SELECT", "usage_rollups"))
    .await?;
    Ok(row.map(|r| (MeterId::from_uuid(r.id), r.total)))
}
