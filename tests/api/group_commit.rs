//! Group commit against real Postgres: a row that finds a writer free is written at once;
//! rows that queue while every writer is busy share one statement and one transaction, each
//! with its own result; the queue is bounded; a caller that gave up gets nothing written; a
//! writer that panics leaves no row behind.

use std::time::Duration;

use coffer::app::AppError;
use coffer::app::group_commit::GroupCommit;
use coffer::app::idempotency::Written;
use coffer::domain::customer::ExternalId;
use coffer::domain::ids::{KeyId, TenantId};
use coffer::store::StoreError;
use coffer::store::customers::{self, CustomerInsert};
use coffer::store::pool::{self, PoolConfig};
use futures_core::future::BoxFuture;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::helpers::{TestDb, customer, eventually, hold_external_id, one_session_waits_on_a_lock};

const WAIT: Duration = Duration::from_secs(10);

type Inserts = GroupCommit<CustomerInsert, Written>;

fn row(tenant: TenantId, external_id: &str) -> CustomerInsert {
    CustomerInsert {
        tenant,
        by: KeyId::generate(),
        customer: customer(external_id),
        completion: None,
    }
}

/// Inserts customers, but panics on a batch holding external id "boom".
fn insert_or_panic<'c>(
    conn: &'c mut PgConnection,
    rows: &'c [CustomerInsert],
) -> BoxFuture<'c, Result<Vec<Written>, StoreError>> {
    if rows
        .iter()
        .any(|r| r.customer.external_id.as_ref().map(ExternalId::as_str) == Some("boom"))
    {
        panic!("a writer bug");
    }
    insert(conn, rows)
}

/// Inserts customers without idempotency keys: CreateCustomer's batch statement with no claims,
/// committing on its own.
fn insert<'c>(
    conn: &'c mut PgConnection,
    rows: &'c [CustomerInsert],
) -> BoxFuture<'c, Result<Vec<Written>, StoreError>> {
    Box::pin(async move {
        let written = customers::claim_and_insert_customers(conn, rows, &[]).await?;
        // A row without a key has no key to find held.
        written
            .into_iter()
            .map(|w| {
                w.ok_or_else(|| StoreError::Corrupt {
                    what: "batch result",
                    detail: "an unkeyed row was not written".into(),
                })
            })
            .collect()
    })
}

/// One writer slot (a pool of 4 gives one), taken by a row for external id "held" that waits
/// on `blocker`, which holds that id in an open transaction.
struct Blocked {
    pool: PgPool,
    tenant: TenantId,
    inserts: Inserts,
    blocker: Transaction<'static, Postgres>,
    first: JoinHandle<Result<Written, AppError>>,
    /// Last, so the database outlives everything that uses it.
    _db: TestDb,
}

async fn blocked(max_queued: usize, panics: bool) -> Blocked {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let writers = pool::pool(
        &db.options,
        &PoolConfig {
            max_connections: 4,
            ..PoolConfig::default()
        },
    );
    let tenant = TenantId::generate();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'acme')")
        .bind(tenant.as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    let inserts = GroupCommit::new(
        "customer inserts",
        writers,
        TaskTracker::new(),
        if panics { insert_or_panic } else { insert },
        customers::order_inserts,
    )
    .with_max_queued(max_queued);
    let blocker = hold_external_id(&pool, tenant, "held").await;
    let first = submit(&inserts, row(tenant, "held"));
    assert!(
        one_session_waits_on_a_lock(&pool).await,
        "the first row's statement waits on the held one"
    );
    Blocked {
        pool,
        tenant,
        inserts,
        blocker,
        first,
        _db: db,
    }
}

fn submit(inserts: &Inserts, r: CustomerInsert) -> JoinHandle<Result<Written, AppError>> {
    let inserts = inserts.clone();
    tokio::spawn(async move { inserts.write(r).await })
}

/// The answer to a submitted row; a row left in the queue fails the test instead of hanging it.
async fn answer(call: JoinHandle<Result<Written, AppError>>) -> Result<Written, AppError> {
    tokio::time::timeout(WAIT, call)
        .await
        .expect("every submitted row is answered")
        .unwrap()
}

/// The external ids written, and in how many transactions.
async fn written(pool: &PgPool, tenant: TenantId) -> (Vec<String>, i64) {
    sqlx::query_as(
        "SELECT coalesce(array_agg(external_id ORDER BY external_id), '{}'),
                count(DISTINCT xmin::text)
         FROM customers WHERE tenant_id = $1 AND external_id <> 'held'",
    )
    .bind(tenant.as_uuid())
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn rows_queued_behind_a_busy_writer_share_one_statement_each_with_its_own_result() {
    let b = blocked(100, false).await;
    // A live customer already has "taken"; "dup" comes twice in the batch.
    sqlx::query(
        "INSERT INTO customers (tenant_id, id, external_id, created_at, updated_at)
         VALUES ($1, gen_random_uuid(), 'taken', now(), now())",
    )
    .bind(b.tenant.as_uuid())
    .execute(&b.pool)
    .await
    .unwrap();
    let names = ["f", "taken", "a", "dup", "c", "dup", "b"];
    let queued: Vec<_> = names
        .iter()
        .map(|n| submit(&b.inserts, row(b.tenant, n)))
        .collect();
    assert!(eventually(WAIT, || async { b.inserts.queued() == names.len() }).await);
    b.blocker.rollback().await.unwrap();
    assert!(answer(b.first).await.unwrap().applied);
    let mut applied = Vec::new();
    for (name, call) in names.iter().zip(queued) {
        if answer(call).await.unwrap().applied {
            applied.push(*name);
        }
    }
    applied.sort();
    // One of the two "dup" rows is applied; the conflicting rows fail nobody else.
    assert_eq!(applied, ["a", "b", "c", "dup", "f"]);
    let (ids, transactions) = written(&b.pool, b.tenant).await;
    assert_eq!(ids, ["a", "b", "c", "dup", "f", "taken"]);
    assert_eq!(
        transactions, 2,
        "the batch is one transaction (and 'taken' its own)"
    );
}

#[tokio::test]
async fn a_full_queue_refuses_at_once() {
    let b = blocked(2, false).await;
    let queued: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| submit(&b.inserts, row(b.tenant, n)))
        .collect();
    assert!(eventually(WAIT, || async { b.inserts.queued() == 2 }).await);
    let refused = answer(submit(&b.inserts, row(b.tenant, "c"))).await;
    assert!(
        matches!(refused, Err(AppError::Overloaded(_))),
        "{refused:?}"
    );
    b.blocker.rollback().await.unwrap();
    answer(b.first).await.unwrap();
    for call in queued {
        assert!(answer(call).await.unwrap().applied);
    }
    assert_eq!(written(&b.pool, b.tenant).await.0, ["a", "b"]);
}

#[tokio::test]
async fn nothing_is_written_for_a_caller_that_gave_up() {
    let b = blocked(100, false).await;
    let gone = submit(&b.inserts, row(b.tenant, "gone"));
    let kept = submit(&b.inserts, row(b.tenant, "kept"));
    assert!(eventually(WAIT, || async { b.inserts.queued() == 2 }).await);
    gone.abort();
    b.blocker.rollback().await.unwrap();
    answer(b.first).await.unwrap();
    assert!(answer(kept).await.unwrap().applied);
    assert_eq!(written(&b.pool, b.tenant).await.0, ["kept"]);
}

#[tokio::test]
async fn a_writer_that_panics_strands_no_row() {
    let b = blocked(100, true).await;
    let boom = submit(&b.inserts, row(b.tenant, "boom"));
    assert!(eventually(WAIT, || async { b.inserts.queued() == 1 }).await);
    b.blocker.rollback().await.unwrap();
    answer(b.first).await.unwrap();
    let err = answer(boom).await.unwrap_err();
    assert!(matches!(err, AppError::Internal(_)), "{err:?}");
    // The panicked writer's slot went back: later rows are written.
    assert!(
        answer(submit(&b.inserts, row(b.tenant, "after")))
            .await
            .unwrap()
            .applied
    );
    assert_eq!(written(&b.pool, b.tenant).await.0, ["after"]);
}
