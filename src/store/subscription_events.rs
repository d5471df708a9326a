//! The outbox of subscription changes (`subscription_events`): written by
//! [`record_change`] in the transaction of each change, read in (xid, seq) order and only
//! below the reading snapshot's xmin, so no row can later appear behind one already served.

use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use tracing::Instrument;

use super::subscriptions::SubscriptionRow;
use super::{StoreError, corrupt};
use crate::domain::ids::{CustomerId, SubscriptionId, TenantId};
use crate::domain::subscription::{ChangeKind, EventCursor, SubscriptionEvent};

/// The channel the outbox's trigger notifies once per writing transaction.
const CHANNEL: &str = "coffer_subscription_events";

/// A LISTEN session on the outbox's channel, on a connection of `pool` it keeps.
pub async fn listen(pool: &PgPool) -> Result<PgListener, StoreError> {
    let mut l = PgListener::connect_with(pool).await?;
    l.listen(CHANNEL).await?;
    Ok(l)
}

/// Records a change of subscription `id`, with the row as it is now in this transaction.
/// Every write of a subscription calls this in its own transaction: the outbox invariant.
pub async fn record_change(
    conn: &mut PgConnection,
    tenant: TenantId,
    id: SubscriptionId,
    kind: ChangeKind,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO subscription_events
             (tenant_id, type, subscription_id, customer_id, subscription)
         SELECT s.tenant_id, $3, s.id, s.customer_id, to_jsonb(s)
         FROM subscriptions s WHERE s.tenant_id = $1 AND s.id = $2",
        tenant.as_uuid(),
        id.as_uuid(),
        kind.as_str(),
    )
    .execute(conn)
    .instrument(super::statement_span!("INSERT", "subscription_events"))
    .await?;
    Ok(())
}

/// The tenant's changes after `after`, of `kinds` (all when empty), oldest first, at most
/// `limit`, of transactions that have all ended.
pub async fn events_after(
    conn: &mut PgConnection,
    tenant: TenantId,
    after: EventCursor,
    kinds: &[ChangeKind],
    limit: i64,
) -> Result<Vec<SubscriptionEvent>, StoreError> {
    let kinds: Vec<String> = kinds.iter().map(|k| k.as_str().to_owned()).collect();
    let rows = sqlx::query!(
        r#"SELECT e.xid, e.seq, e.type, e.occurred_at,
                  s.id AS "id!", s.customer_id AS "customer_id!", s.plan_id, s.price_id,
                  s.quantity AS "quantity!", s.status AS "status!",
                  s.current_period_start AS "current_period_start!",
                  s.current_period_end AS "current_period_end!", s.trial_end,
                  -- Snapshots written before the lifecycle columns existed lack them.
                  coalesce(s.cancel_at_period_end, false) AS "cancel_at_period_end!",
                  coalesce(s.collection_paused, false) AS "collection_paused!",
                  s.canceled_at, coalesce(s.cancel_reason, '') AS "cancel_reason!",
                  s.account AS "account!",
                  s.provider_subscription_id AS "provider_subscription_id!",
                  s.checkout_session_id,
                  s.created_at AS "created_at!"
           FROM subscription_events e
           CROSS JOIN LATERAL jsonb_populate_record(NULL::subscriptions, e.subscription) s
           WHERE e.tenant_id = $1 AND (e.xid, e.seq) > ($2, $3)
             AND e.xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
             AND (cardinality($4::text[]) = 0 OR e.type = ANY($4))
           ORDER BY e.xid, e.seq
           LIMIT $5"#,
        tenant.as_uuid(),
        after.xid,
        after.seq,
        &kinds,
        limit,
    )
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let subscription = SubscriptionRow {
                id: r.id,
                customer_id: r.customer_id,
                plan_id: r.plan_id,
                price_id: r.price_id,
                quantity: r.quantity,
                status: r.status,
                current_period_start: r.current_period_start,
                current_period_end: r.current_period_end,
                trial_end: r.trial_end,
                cancel_at_period_end: r.cancel_at_period_end,
                collection_paused: r.collection_paused,
                canceled_at: r.canceled_at,
                cancel_reason: r.cancel_reason,
                account: r.account,
                provider_subscription_id: r.provider_subscription_id,
                checkout_session_id: r.checkout_session_id,
                created_at: r.created_at,
            }
            .into_domain()?;
            Ok(SubscriptionEvent {
                cursor: EventCursor {
                    xid: r.xid,
                    seq: r.seq,
                    at_micros: micros(r.occurred_at),
                },
                kind: ChangeKind::parse(&r.r#type)
                    .ok_or_else(|| corrupt("event type", &r.r#type))?,
                subscription,
                occurred_at: r.occurred_at,
            })
        })
        .collect()
}

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

/// A change as every replica's feed sees it: where it stands, whose access it touches, and
/// whether it is settled (its transaction is below the reading snapshot's xmin, so no row can
/// appear before it any more).
#[derive(Debug, Clone, Copy)]
pub struct FeedRow {
    pub xid: i64,
    pub seq: i64,
    pub tenant: TenantId,
    pub customer: CustomerId,
    pub settled: bool,
}

/// Every tenant's committed changes after (xid, seq), oldest first, at most `limit`: what a
/// replica's feed reads to keep its caches fresh. Settled rows come first (they have the
/// lowest xids); a cache may act on the others at once, while a stream must wait for them.
pub async fn feed_after(
    conn: &mut PgConnection,
    xid: i64,
    seq: i64,
    limit: i64,
) -> Result<Vec<FeedRow>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT e.xid, e.seq, e.tenant_id, e.customer_id, e.xid < x.xmin AS "settled!"
           FROM subscription_events e,
                (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin) x
           WHERE (e.xid, e.seq) > ($1, $2)
           ORDER BY e.xid, e.seq
           LIMIT $3"#,
        xid,
        seq,
        limit,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| FeedRow {
            xid: r.xid,
            seq: r.seq,
            tenant: TenantId::from_uuid(r.tenant_id),
            customer: CustomerId::from_uuid(r.customer_id),
            settled: r.settled,
        })
        .collect())
}

/// The last change of every tenant whose transaction has ended, as (xid, seq); (0, 0) when
/// there is none: where a replica's feed starts.
pub async fn feed_end(conn: &mut PgConnection) -> Result<(i64, i64), StoreError> {
    let row = sqlx::query!(
        "SELECT xid, seq FROM subscription_events
         WHERE xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
         ORDER BY xid DESC, seq DESC
         LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.map_or((0, 0), |r| (r.xid, r.seq)))
}

/// Deletes up to `limit` changes written before `before`; returns how many.
pub async fn prune_events(
    conn: &mut PgConnection,
    before: OffsetDateTime,
    limit: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query!(
        "DELETE FROM subscription_events WHERE ctid IN (
             SELECT ctid FROM subscription_events WHERE occurred_at < $1 LIMIT $2)",
        before,
        limit,
    )
    .execute(conn)
    .instrument(super::statement_span!("DELETE", "subscription_events"))
    .await?;
    Ok(done.rows_affected())
}
