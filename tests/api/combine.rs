//! The write combiner against real Postgres: a row that finds a writer free is written at
//! once; rows that queue while every writer is busy go in one statement and one transaction;
//! a batch with a conflict writes nothing and hands every row back to be written alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use coffer::app::combine::{Combiner, Written};
use coffer::domain::customer::{Customer, ExternalId, Metadata};
use coffer::domain::idempotency::IdempotencyKey;
use coffer::domain::ids::{CustomerId, KeyId, TenantId};
use coffer::store::customers::{self, CustomerInsert, EXTERNAL_ID_INDEX};
use coffer::store::idempotency::NewOutcome;
use sqlx::{PgPool, Postgres, Transaction};
use time::OffsetDateTime;
use tokio::task::JoinHandle;

use crate::helpers::{TestDb, eventually, hold_external_id, one_session_waits_on_a_lock};

const WAIT: Duration = Duration::from_secs(10);

fn row(tenant: TenantId, external_id: &str) -> CustomerInsert {
    let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    CustomerInsert {
        tenant,
        by: KeyId::generate(),
        customer: Customer {
            id: CustomerId::generate(),
            external_id: Some(ExternalId::parse(external_id).unwrap()),
            email: None,
            name: None,
            metadata: Metadata::parse(&BTreeMap::new()).unwrap(),
            created_at: now,
            updated_at: now,
            deleted_at: None,
        },
        outcome: Some(NewOutcome {
            method: "/coffer.v1.Customers/CreateCustomer",
            key: IdempotencyKey::parse(&format!("key-{external_id}")).unwrap(),
            fingerprint: [7; 32],
            response: external_id.as_bytes().to_vec(),
        }),
    }
}

fn start(pool: &PgPool) -> Arc<Combiner<CustomerInsert>> {
    // One writer, so a blocked batch holds back everything submitted after it.
    let tasks = tokio_util::task::TaskTracker::new();
    Arc::new(Combiner::new(
        pool.clone(),
        tasks,
        1,
        "customers",
        |conn, rows| Box::pin(customers::insert_customers(conn, rows)),
    ))
}

fn submit(
    combiner: &Arc<Combiner<CustomerInsert>>,
    r: CustomerInsert,
) -> JoinHandle<Written<CustomerInsert>> {
    let combiner = combiner.clone();
    tokio::spawn(async move { combiner.submit(r).await })
}

/// One writer slot, taken by a row for external id "held" that waits on `blocker`, which
/// holds that id in an open transaction; `queued` were submitted behind it and wait in the
/// queue.
struct Blocked {
    pool: PgPool,
    combiner: Arc<Combiner<CustomerInsert>>,
    blocker: Transaction<'static, Postgres>,
    first: JoinHandle<Written<CustomerInsert>>,
    queued: Vec<JoinHandle<Written<CustomerInsert>>>,
    /// Last, so the database outlives everything that uses it.
    _db: TestDb,
}

async fn blocked(rows: impl FnOnce(TenantId) -> Vec<CustomerInsert>) -> Blocked {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let combiner = start(&pool);
    let tenant = TenantId::generate();
    let blocker = hold_external_id(&pool, tenant, "held").await;
    let first = submit(&combiner, row(tenant, "held"));
    assert!(
        one_session_waits_on_a_lock(&pool).await,
        "the first row's statement waits on the held one"
    );
    let rows = rows(tenant);
    let n = rows.len();
    let queued = rows.into_iter().map(|r| submit(&combiner, r)).collect();
    assert!(eventually(WAIT, || async { combiner.queued() == n }).await);
    Blocked {
        pool,
        combiner,
        blocker,
        first,
        queued,
        _db: db,
    }
}

/// The answer to a submitted row; a row left in the queue fails the test instead of hanging it.
async fn answer(call: JoinHandle<Written<CustomerInsert>>) -> Written<CustomerInsert> {
    tokio::time::timeout(WAIT, call)
        .await
        .expect("every submitted row is answered")
        .unwrap()
}

/// How many transactions wrote the customers, audit rows and keys of `external_ids`.
async fn transactions(pool: &PgPool, external_ids: &[&str]) -> (i64, i64, i64, i64) {
    let keys: Vec<String> = external_ids.iter().map(|e| format!("key-{e}")).collect();
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM customers WHERE external_id = ANY($1)),
                (SELECT count(DISTINCT c.xmin::text) FROM customers c
                   JOIN audit_log a ON a.object_id = c.id AND a.xmin::text = c.xmin::text
                   JOIN idempotency_keys k ON k.lease_id = c.id AND k.xmin::text = c.xmin::text
                 WHERE c.external_id = ANY($1)),
                (SELECT count(*) FROM audit_log a JOIN customers c ON a.object_id = c.id
                 WHERE c.external_id = ANY($1)),
                (SELECT count(*) FROM idempotency_keys WHERE key = ANY($2))",
    )
    .bind(external_ids)
    .bind(&keys)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn rows_queued_behind_a_busy_writer_commit_in_one_transaction() {
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let b = blocked(|t| names.iter().map(|n| row(t, n)).collect()).await;

    b.blocker.rollback().await.unwrap(); // "held" is free again
    assert!(matches!(answer(b.first).await, Written::Stored));
    for call in b.queued {
        assert!(matches!(answer(call).await, Written::Stored));
    }
    // Eight customers, each with its audit row and stored outcome, from one transaction.
    assert_eq!(transactions(&b.pool, &names).await, (8, 1, 8, 8));
    assert_eq!(transactions(&b.pool, &["held"]).await, (1, 1, 1, 1));
}

#[tokio::test]
async fn a_conflict_refuses_the_whole_batch_and_each_row_is_then_written_alone() {
    // "p" twice, under different keys: the second conflicts with the first, inside one batch.
    let names = ["p", "q", "r", "s", "p"];
    let b = blocked(|t| {
        let mut rows: Vec<_> = names.iter().map(|n| row(t, n)).collect();
        rows[4].outcome.as_mut().unwrap().key = IdempotencyKey::parse("key-p-again").unwrap();
        rows
    })
    .await;

    b.blocker.commit().await.unwrap(); // "held" is taken now
    let Written::Failed(alone) = answer(b.first).await else {
        panic!("a row written alone reports its own conflict");
    };
    assert_eq!(alone.unique_violation(), Some(EXTERNAL_ID_INDEX));
    let mut refused = Vec::new();
    for call in b.queued {
        let Written::Refused(r) = answer(call).await else {
            panic!("every row of a refused batch comes back");
        };
        refused.push(r);
    }
    let written: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM customers) + (SELECT count(*) FROM audit_log)
              + (SELECT count(*) FROM idempotency_keys)",
    )
    .fetch_one(&b.pool)
    .await
    .unwrap();
    assert_eq!(written, 1, "only the blocker's own customer exists");

    let mut conn = b.pool.acquire().await.unwrap();
    let mut outcomes = Vec::new();
    for r in refused {
        outcomes.push(match b.combiner.insert_alone(&mut conn, r).await {
            Ok(()) => None,
            Err(e) => e.unique_violation().map(str::to_owned),
        });
    }
    let taken = Some(EXTERNAL_ID_INDEX.to_owned());
    assert_eq!(outcomes, [None, None, None, None, taken]);
    assert_eq!(transactions(&b.pool, &["p", "q", "r", "s"]).await.0, 4);
}

#[tokio::test]
async fn a_cancelled_writer_hands_its_slot_to_the_rows_queued_behind_it() {
    let names = ["x", "y", "z"];
    let b = blocked(|t| names.iter().map(|n| row(t, n)).collect()).await;

    // The caller writing "held" goes away while its statement still waits on the lock, which
    // `b.blocker` keeps holding.
    b.first.abort();
    for call in b.queued {
        assert!(matches!(answer(call).await, Written::Stored));
    }
    assert_eq!(transactions(&b.pool, &names).await, (3, 1, 3, 3));
}
