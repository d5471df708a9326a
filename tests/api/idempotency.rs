//! Every mutating RPC is idempotent under an idempotency-key.

use std::sync::Arc;

use coffer::grpc::pb::{self, CreateCustomerRequest, DeleteCustomerRequest};
use tonic::Code;

use std::time::Duration;

use coffer::app::idempotency::{Done, IdempotencyConfig, IdempotentCall, Mutations};
use coffer::app::{AppError, TenantCtx};
use coffer::domain::customer::Customer;
use coffer::domain::idempotency::IdempotencyKey;
use coffer::startup::ServerConfig;
use coffer::store::pool::{self, PoolConfig};
use tokio_util::task::TaskTracker;

use crate::helpers::{
    CommitCutter, TestApp, TestDb, by_id, customer, details, eventually, hold_external_id, idem,
    one_session_waits_on_a_lock, req, test_config, update,
};

fn create(external_id: &str) -> CreateCustomerRequest {
    CreateCustomerRequest {
        external_id: external_id.into(),
        email: "a@example.com".into(),
        ..Default::default()
    }
}

fn replayed<T>(r: &tonic::Response<T>) -> bool {
    r.metadata()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true")
}

#[tokio::test]
async fn a_replay_returns_the_stored_response() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let first = c
        .create_customer(idem(create("user-1"), &app.key, "k-1"))
        .await
        .unwrap();
    assert!(!replayed(&first));
    let again = c
        .create_customer(idem(create("user-1"), &app.key, "k-1"))
        .await
        .unwrap();
    assert!(replayed(&again));
    assert_eq!(
        again.get_ref(),
        first.get_ref(),
        "byte-for-byte the first response"
    );
    assert_eq!(app.customer_rows().await, 1);

    // The same key with a different request is refused and changes nothing.
    let err = c
        .create_customer(idem(create("user-2"), &app.key, "k-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(details(&err).0, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.customer_rows().await, 1);

    // Keys are per method and per tenant.
    let id = first.get_ref().id.clone();
    let deleted = c
        .delete_customer(idem(
            DeleteCustomerRequest { id: id.clone() },
            &app.key,
            "k-1",
        ))
        .await
        .unwrap();
    assert!(!replayed(&deleted));
    let deleted_again = c
        .delete_customer(idem(DeleteCustomerRequest { id }, &app.key, "k-1"))
        .await
        .unwrap();
    assert!(
        replayed(&deleted_again),
        "a replayed delete answers as the first did, not NOT_FOUND"
    );
    let other = app.tenant("globex").await;
    let theirs = c
        .create_customer(idem(create("user-1"), &other, "k-1"))
        .await
        .unwrap();
    assert!(!replayed(&theirs));
}

#[tokio::test]
async fn updates_replay_and_the_callers_own_errors_are_stored() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    c.create_customer(idem(create("taken"), &app.key, "a"))
        .await
        .unwrap();
    let second = c
        .create_customer(idem(create("user-2"), &app.key, "b"))
        .await
        .unwrap()
        .into_inner();

    let rename = |name: &str| {
        update(
            pb::Customer {
                id: second.id.clone(),
                name: name.into(),
                ..Default::default()
            },
            &[],
        )
    };
    let first = c
        .update_customer(idem(rename("One"), &app.key, "u"))
        .await
        .unwrap();
    // Someone else changes the customer in between; the replay still answers as the first did.
    c.update_customer(idem(rename("Two"), &app.key, "u2"))
        .await
        .unwrap();
    let again = c
        .update_customer(idem(rename("One"), &app.key, "u"))
        .await
        .unwrap();
    assert!(replayed(&again));
    assert_eq!(again.get_ref().name, "One");
    assert_eq!(again.get_ref(), first.get_ref());

    // A conflict is the caller's own deterministic error: stored whole, as the encoded
    // google.rpc.Status with its details, and replayed byte for byte.
    let first = c
        .create_customer(idem(create("taken"), &app.key, "c"))
        .await
        .unwrap_err();
    assert_eq!(first.code(), Code::AlreadyExists);
    assert_eq!(details(&first).0, "CUSTOMER_EXTERNAL_ID_TAKEN");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT status FROM idempotency_keys WHERE key = 'c'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, first.details());
    let again = c
        .create_customer(idem(create("taken"), &app.key, "c"))
        .await
        .unwrap_err();
    assert_eq!(again.code(), first.code());
    assert_eq!(again.message(), first.message());
    assert_eq!(again.details(), first.details());
    // Even once the conflict is gone, the replay is the stored answer, not a new attempt.
    sqlx::query("UPDATE customers SET deleted_at = now() WHERE external_id = 'taken'")
        .execute(&app.pool)
        .await
        .unwrap();
    let later = c
        .create_customer(idem(create("taken"), &app.key, "c"))
        .await
        .unwrap_err();
    assert_eq!(later.details(), first.details());

    // A malformed request is not stored: the caller can fix it under the same key.
    let err = c
        .create_customer(idem(
            CreateCustomerRequest {
                email: "broken".into(),
                ..Default::default()
            },
            &app.key,
            "d",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE key = 'd'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(kept, 0);
}

#[tokio::test]
async fn fifty_concurrent_duplicates_create_exactly_one_customer() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    let key = Arc::new(app.key.clone());
    let mut calls = tokio::task::JoinSet::new();
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    for _ in 0..50 {
        let mut c = pb::customers_client::CustomersClient::new(channel.clone());
        let (key, barrier) = (key.clone(), barrier.clone());
        calls.spawn(async move {
            barrier.wait().await;
            c.create_customer(idem(create("user-1"), &key, "the-one"))
                .await
        });
    }
    let (mut created, mut replays, mut in_use) = (Vec::new(), 0, 0);
    while let Some(result) = calls.join_next().await {
        match result.unwrap() {
            Ok(response) => {
                if replayed(&response) {
                    replays += 1;
                }
                created.push(response.into_inner().id);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Aborted, "{status:?}");
                assert_eq!(details(&status).0, "IDEMPOTENCY_KEY_IN_USE");
                in_use += 1;
            }
        }
    }
    assert_eq!(created.len() + in_use, 50);
    assert_eq!(created.len() - replays, 1, "exactly one call did the work");
    created.dedup();
    assert_eq!(created.len(), 1, "every success names the same customer");
    assert_eq!(app.customer_rows().await, 1);
}

/// The one-transaction path: a duplicate that arrives while the first attempt's transaction is
/// open waits on the key for that commit and replays its outcome; none is told IN_USE, and the
/// change is made once.
#[tokio::test]
async fn concurrent_duplicates_on_the_one_transaction_path_wait_and_replay() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    let key = Arc::new(app.key.clone());

    // Creates: fifty at once share batches; every one answers with the same customer.
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let mut c = pb::customers_client::CustomersClient::new(channel.clone());
        let (key, barrier) = (key.clone(), barrier.clone());
        calls.spawn(async move {
            barrier.wait().await;
            c.create_customer(idem(create("dup"), &key, "create-once"))
                .await
        });
    }
    let mut ids = Vec::new();
    let mut fresh = 0;
    while let Some(result) = calls.join_next().await {
        let response = result.unwrap().expect("a duplicate replays, never IN_USE");
        fresh += usize::from(!replayed(&response));
        ids.push(response.into_inner().id);
    }
    assert_eq!(fresh, 1, "exactly one call did the work");
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(app.customer_rows().await, 1);

    // An update whose transaction is held open (its customer row is locked elsewhere): the
    // duplicates wait on its key, then replay it once it commits.
    let id = ids.pop().unwrap();
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM customers WHERE external_id = 'dup' FOR UPDATE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let rename = update(
        pb::Customer {
            id: id.clone(),
            name: "Once".into(),
            ..Default::default()
        },
        &[],
    );
    let mut first = pb::customers_client::CustomersClient::new(channel.clone());
    let (k, r) = (key.clone(), rename.clone());
    let first = tokio::spawn(async move { first.update_customer(idem(r, &k, "u-once")).await });
    assert!(one_session_waits_on_a_lock(&app.pool).await);
    let mut dups = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let mut c = pb::customers_client::CustomersClient::new(channel.clone());
        let (k, r) = (key.clone(), rename.clone());
        dups.spawn(async move { c.update_customer(idem(r, &k, "u-once")).await });
    }
    // Every duplicate waits on the first attempt's uncommitted claim of the key.
    let waiting = eventually(Duration::from_secs(5), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE '%idempotency_keys%'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
            == 5
    })
    .await;
    assert!(waiting, "the duplicates wait on the key");
    let started = std::time::Instant::now();
    lock.rollback().await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert!(!replayed(&first));
    while let Some(result) = dups.join_next().await {
        let response = result.unwrap().expect("a duplicate replays, never IN_USE");
        assert!(replayed(&response));
        assert_eq!(response.get_ref(), first.get_ref(), "the same answer");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered as soon as the first commits"
    );
    let audits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'customer.updated'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(audits, 1, "updated once");
}

#[tokio::test]
async fn a_crashed_claim_expires_and_old_keys_are_swept() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;

    // A claim whose holder died: in flight, lease already run out.
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'acme'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, method, key, fingerprint, state, lease_id, locked_until)
         VALUES ($1, '/coffer.v1.Customers/CreateCustomer', 'stuck', $2, 'in_flight', gen_random_uuid(), now() - interval '1 second')",
    )
    .bind(tenant)
    .bind(vec![0u8; 32])
    .execute(&app.pool)
    .await
    .unwrap();
    let r = c
        .create_customer(idem(create("user-1"), &app.key, "stuck"))
        .await
        .unwrap();
    assert!(!replayed(&r));

    // A live claim is still respected.
    sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, method, key, fingerprint, state, lease_id, locked_until)
         VALUES ($1, '/coffer.v1.Customers/CreateCustomer', 'busy', $2, 'in_flight', gen_random_uuid(), now() + interval '1 minute')",
    )
    .bind(tenant)
    .bind(coffer::app::idempotency::Fingerprint::of(&prost::Message::encode_to_vec(&create("user-2"))).0.to_vec())
    .execute(&app.pool)
    .await
    .unwrap();
    let err = c
        .create_customer(idem(create("user-2"), &app.key, "busy"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);

    // Keys past 24 hours are swept; fresh ones stay.
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'stuck'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let swept = coffer::app::sweeper::sweep_once(&app.app).await.unwrap();
    assert_eq!(swept, 1);
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, vec!["busy"]);
}

#[tokio::test]
async fn concurrent_creates_racing_for_one_external_id_get_one_winner_and_stored_refusals() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    let key = Arc::new(app.key.clone());
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..20 {
        let mut c = pb::customers_client::CustomersClient::new(channel.clone());
        let (key, barrier) = (key.clone(), barrier.clone());
        calls.spawn(async move {
            barrier.wait().await;
            let k = format!("race-{i}");
            let first = c.create_customer(idem(create("contested"), &key, &k)).await;
            let again = c.create_customer(idem(create("contested"), &key, &k)).await;
            (first, again)
        });
    }
    let mut winners = Vec::new();
    while let Some(result) = calls.join_next().await {
        let (first, again) = result.unwrap();
        match (first, again) {
            (Ok(first), Ok(again)) => {
                assert!(!replayed(&first) && replayed(&again));
                assert_eq!(first.get_ref(), again.get_ref());
                winners.push(first.into_inner().id);
            }
            (Err(first), Err(again)) => {
                for status in [first, again] {
                    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
                    assert_eq!(details(&status).0, "CUSTOMER_EXTERNAL_ID_TAKEN");
                }
            }
            (first, again) => panic!("a replay differs: {first:?} then {again:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one call creates the customer");
    assert_eq!(app.customer_rows().await, 1);
    let (completed, audited): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM idempotency_keys WHERE state = 'completed'),
                (SELECT count(*) FROM audit_log WHERE object_type = 'customer')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (completed, audited),
        (20, 1),
        "every outcome stored, one change audited"
    );
}

/// A caller that re-fetched the customer and retries its update with the fresh copy sends
/// other output-only fields (update_time), but the same request: it gets the replay.
#[tokio::test]
async fn an_update_retried_after_a_refetch_is_a_replay() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let created = c
        .create_customer(req(create("user-1"), &app.key))
        .await
        .unwrap()
        .into_inner();
    let rename = |mut customer: pb::Customer| {
        customer.name = "Ada".into();
        update(customer, &["name"])
    };
    let first = c
        .update_customer(idem(rename(created.clone()), &app.key, "rename"))
        .await
        .unwrap();
    assert!(!replayed(&first));
    let fetched = c
        .get_customer(req(by_id(&created.id), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(fetched.update_time, created.update_time);
    let retry = c
        .update_customer(idem(rename(fetched), &app.key, "rename"))
        .await
        .unwrap();
    assert!(replayed(&retry));
    assert_eq!(retry.get_ref(), first.get_ref());
    // A real difference under the same key is still refused.
    let mut other = created.clone();
    other.name = "Grace".into();
    let err = c
        .update_customer(idem(update(other, &["name"]), &app.key, "rename"))
        .await
        .unwrap_err();
    assert_eq!(details(&err).0, "IDEMPOTENCY_KEY_REUSED");
}

/// UNAVAILABLE (a statement timeout here) and INTERNAL are not outcomes: the key is released
/// and the caller's retry under the same key does the work.
#[tokio::test]
async fn an_attempt_that_times_out_or_fails_releases_its_key_for_the_retry() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let short = pool::pool(
        &db.options,
        &PoolConfig {
            statement_timeout: Duration::from_millis(300),
            ..PoolConfig::default()
        },
    );
    let app = TestApp::spawn_on(db, pool, short, test_config()).await;
    let mut c = app.customers().await;
    let created = c
        .create_customer(req(create("user-1"), &app.key))
        .await
        .unwrap()
        .into_inner();
    let rename = || {
        update(
            pb::Customer {
                id: created.id.clone(),
                name: "Ada".into(),
                ..Default::default()
            },
            &[],
        )
    };
    let keys = |key: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM idempotency_keys WHERE key = $1")
                .bind(key)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    // The row is locked elsewhere: the update waits, and the statement timeout ends it.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM customers WHERE external_id = 'user-1' FOR UPDATE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let err = c
        .update_customer(idem(rename(), &app.key, "slow"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(details(&err).0, "DATABASE_TIMEOUT");
    assert!(
        tonic_types::StatusExt::get_error_details(&err)
            .retry_info()
            .is_some()
    );
    assert_eq!(keys("slow").await, 0, "released");
    lock.rollback().await.unwrap();

    // A create waits on another session's uncommitted insert of the same external id.
    let tenant = coffer::domain::ids::TenantId::from_uuid(
        sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'acme'")
            .fetch_one(&app.pool)
            .await
            .unwrap(),
    );
    let held = hold_external_id(&app.pool, tenant, "held").await;
    let (mut waiting, key) = (c.clone(), app.key.clone());
    let call = tokio::spawn(async move {
        waiting
            .create_customer(idem(create("held"), &key, "h"))
            .await
    });
    assert!(one_session_waits_on_a_lock(&app.pool).await);
    let err = call.await.unwrap().unwrap_err();
    assert_eq!(details(&err).0, "DATABASE_TIMEOUT");
    held.rollback().await.unwrap();
    assert_eq!(keys("h").await, 0, "released");
    let retried = c
        .update_customer(idem(rename(), &app.key, "slow"))
        .await
        .unwrap();
    assert!(!replayed(&retried));
    assert_eq!(retried.get_ref().name, "Ada");

    // A row the domain refuses makes the use case fail INTERNAL; the key is released too.
    sqlx::query("UPDATE customers SET email = 'not an email' WHERE external_id = 'user-1'")
        .execute(&app.pool)
        .await
        .unwrap();
    let err = c
        .update_customer(idem(rename(), &app.key, "broken"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(keys("broken").await, 0, "released");
    sqlx::query("UPDATE customers SET email = 'a@example.com' WHERE external_id = 'user-1'")
        .execute(&app.pool)
        .await
        .unwrap();
    let retried = c
        .update_customer(idem(rename(), &app.key, "broken"))
        .await
        .unwrap();
    assert!(!replayed(&retried));
}

/// An attempt that outlives its lease loses the key to a retry; when it finally completes it
/// rolls back and is told ABORTED, so the request is applied once, by the new holder.
#[tokio::test]
async fn an_attempt_that_lost_its_lease_rolls_back() {
    let app = TestApp::spawn().await;
    let (tenant, key) = app
        .app
        .tenants
        .create_tenant(&coffer::domain::auth::TenantName::parse("lease").unwrap())
        .await
        .unwrap();
    let ctx = TenantCtx {
        tenant,
        key: key.id(),
    };
    // A short lease and a long work timeout, so the first attempt outlives its lease; the
    // server refuses such a configuration, which is why this drives the mechanism directly.
    let mutations = Mutations::new(
        app.pool.clone(),
        IdempotencyConfig {
            lease: Duration::from_millis(500),
            work_timeout: Duration::from_secs(10),
        },
        TaskTracker::new(),
    );
    let call = IdempotentCall {
        key: IdempotencyKey::parse("slow").unwrap(),
        method: "/test/Lease",
        fingerprint: coffer::app::idempotency::Fingerprint::of(b"the request"),
        encode_refusal: coffer::grpc::status::encode_refusal,
    };
    let attempt = |external_id: &'static str, wait: Duration| {
        let (mutations, call) = (mutations.clone(), call.clone());
        async move {
            mutations
                .run(&ctx, Some(call), move |conn| {
                    Box::pin(async move {
                        let customer = customer(external_id);
                        tokio::time::sleep(wait).await;
                        sqlx::query(
                            "INSERT INTO customers (tenant_id, id, external_id, created_at,
                                                    updated_at)
                             VALUES ($1, $2, $3, $4, $4)",
                        )
                        .bind(ctx.tenant.as_uuid())
                        .bind(customer.id.as_uuid())
                        .bind(external_id)
                        .bind(customer.created_at)
                        .execute(&mut *conn)
                        .await
                        .map_err(coffer::store::StoreError::from)?;
                        Ok(customer)
                    })
                })
                .await
        }
    };
    let first = tokio::spawn(attempt("first", Duration::from_millis(1500)));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let second: Done<Customer> = attempt("second", Duration::ZERO).await.unwrap();
    assert!(
        !second.replayed,
        "the lease ran out, so the retry took the key over"
    );
    let first = first.await.unwrap();
    let Err(AppError::Rejected(r)) = first else {
        panic!("the first attempt must be refused: {first:?}")
    };
    assert_eq!(r.reason, "IDEMPOTENCY_KEY_IN_USE");
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT external_id FROM customers WHERE tenant_id = $1 ORDER BY external_id",
    )
    .bind(tenant.as_uuid())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec!["second"],
        "applied once, by the holder of the key"
    );
    // And the key answers with the second attempt's outcome.
    let third: Done<Customer> = attempt("third", Duration::ZERO).await.unwrap();
    assert!(third.replayed);
    assert_eq!(third.value.id, second.value.id);
}

/// A commit whose answer is lost may have been applied: the caller is told UNKNOWN
/// (OUTCOME_UNKNOWN), never the "retry shortly" of UNAVAILABLE, and a retry under the same
/// key learns the outcome.
#[tokio::test]
async fn a_commit_whose_answer_was_lost_is_outcome_unknown() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let target = format!("{}:{}", db.options.get_host(), db.options.get_port());
    let cutter = CommitCutter::start(target.parse().unwrap()).await;
    let through = pool::pool(
        &db.options
            .clone()
            .host("127.0.0.1")
            .port(cutter.addr.port()),
        &PoolConfig::default(),
    );
    // No health pings during the test: the cutter must meet only the calls' own statements.
    let config = ServerConfig {
        health_interval: Duration::from_secs(3600),
        ..test_config()
    };
    let app = TestApp::spawn_on(db, pool, through, config).await;
    let mut c = app.customers().await;
    let created = c
        .create_customer(req(create("user-1"), &app.key))
        .await
        .unwrap()
        .into_inner();
    let rename = update(
        pb::Customer {
            id: created.id.clone(),
            name: "Ada".into(),
            ..Default::default()
        },
        &[],
    );

    cutter.arm();
    let err = c
        .update_customer(idem(rename.clone(), &app.key, "lost"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unknown, "{err:?}");
    assert_eq!(details(&err).0, "OUTCOME_UNKNOWN");
    assert!(err.message().contains("idempotency-key"));
    let name: String =
        sqlx::query_scalar("SELECT name FROM customers WHERE external_id = 'user-1'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(name, "Ada", "the commit went through");
    let retry = c
        .update_customer(idem(rename, &app.key, "lost"))
        .await
        .unwrap();
    assert!(replayed(&retry), "the retry learns the outcome");
    assert_eq!(retry.get_ref().name, "Ada");

    // Without a key the caller is told the same, so it does not blindly create a second one.
    // A create is one statement that commits on its own.
    cutter.arm_any();
    let err = c
        .create_customer(req(create("user-2"), &app.key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unknown, "{err:?}");
    // The client heard of the cut at once; the server may still be finishing the commit.
    let made = eventually(Duration::from_secs(5), || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM customers WHERE external_id = 'user-2'")
            .fetch_one(&app.pool)
            .await
            .unwrap()
            == 1
    })
    .await;
    assert!(made, "the commit went through");
}

/// What a refusal says, all of it: code, message and the encoded details.
fn refusal(status: &tonic::Status) -> (Code, String, Vec<u8>) {
    (
        status.code(),
        status.message().to_owned(),
        status.details().to_vec(),
    )
}

/// A create runs as one statement in autocommit, its refusal decided before the insert. An
/// external id another session commits after that statement's snapshot aborts the statement
/// (nothing written) and the batch is written again in a transaction: the caller is answered
/// exactly as a create that found the id taken beforehand, the key stores that refusal, and
/// the id still has one customer. Rolled back instead, the waiting create goes through.
#[tokio::test]
async fn a_create_racing_a_committed_external_id_falls_back_and_answers_the_same() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let tenant = coffer::domain::ids::TenantId::from_uuid(
        sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'acme'")
            .fetch_one(&app.pool)
            .await
            .unwrap(),
    );
    // The refusal when the id was taken before the create's statement began.
    c.create_customer(idem(create("taken"), &app.key, "t-1"))
        .await
        .unwrap();
    let before = c
        .create_customer(idem(create("taken"), &app.key, "t-2"))
        .await
        .unwrap_err();
    assert_eq!(details(&before).0, "CUSTOMER_EXTERNAL_ID_TAKEN");

    // The same id committed by another session while the create waits on it.
    let held = hold_external_id(&app.pool, tenant, "raced").await;
    let (mut waiting, key) = (c.clone(), app.key.clone());
    let call = tokio::spawn(async move {
        waiting
            .create_customer(idem(create("raced"), &key, "r-1"))
            .await
    });
    assert!(one_session_waits_on_a_lock(&app.pool).await);
    held.commit().await.unwrap();
    let raced = call.await.unwrap().unwrap_err();
    let (code, message, _) = refusal(&before);
    assert_eq!((raced.code(), raced.message()), (code, message.as_str()));
    assert_eq!(details(&raced), details(&before));
    let replay = c
        .create_customer(idem(create("raced"), &app.key, "r-1"))
        .await
        .unwrap_err();
    assert_eq!(refusal(&replay), refusal(&raced), "the stored refusal");
    let stored: (Option<Vec<u8>>, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT response, status FROM idempotency_keys WHERE key = 'r-1' AND state = 'completed'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(stored.0.is_none() && stored.1.is_some(), "{stored:?}");
    let raced_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM customers WHERE external_id = 'raced'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(raced_rows, 1, "only the other session's");

    // Rolled back: the waiting create inserts its customer and stores its response.
    let held = hold_external_id(&app.pool, tenant, "freed").await;
    let (mut waiting, key) = (c.clone(), app.key.clone());
    let call = tokio::spawn(async move {
        waiting
            .create_customer(idem(create("freed"), &key, "f-1"))
            .await
    });
    assert!(one_session_waits_on_a_lock(&app.pool).await);
    held.rollback().await.unwrap();
    let made = call.await.unwrap().unwrap();
    assert!(!replayed(&made));
    let again = c
        .create_customer(idem(create("freed"), &app.key, "f-1"))
        .await
        .unwrap();
    assert!(replayed(&again));
    assert_eq!(again.get_ref(), made.get_ref());
}

/// Concurrent duplicates of a create whose external id another session holds and then commits:
/// the first attempt's statement is aborted and its batch rewritten in a transaction while the
/// duplicates wait on the key; every call is answered with the same refusal, the key stores it
/// once, and no second customer appears. Then many creates of one external id under different
/// keys at once (batches holding the id twice go through the transaction; concurrent batches
/// race on the id): one customer, and every other call refused exactly as its replay says.
#[tokio::test]
async fn concurrent_creates_of_one_external_id_answer_as_one_transaction_would() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    let key = Arc::new(app.key.clone());
    let tenant = coffer::domain::ids::TenantId::from_uuid(
        sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'acme'")
            .fetch_one(&app.pool)
            .await
            .unwrap(),
    );
    let held = hold_external_id(&app.pool, tenant, "dup").await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut c = pb::customers_client::CustomersClient::new(channel.clone());
        let key = key.clone();
        calls.spawn(async move {
            c.create_customer(idem(create("dup"), &key, "same-key"))
                .await
        });
    }
    // At least the first statement waits on the held id (the others on it, or queued).
    assert!(
        eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap()
                >= 1
        })
        .await
    );
    held.commit().await.unwrap();
    let mut answers = Vec::new();
    while let Some(result) = calls.join_next().await {
        let err = result.unwrap().expect_err("the id is taken");
        answers.push(refusal(&err));
    }
    assert_eq!(details_of(&answers[0]), "CUSTOMER_EXTERNAL_ID_TAKEN");
    answers.dedup();
    assert_eq!(answers.len(), 1, "every duplicate answers the one refusal");
    let mut c = app.customers().await;
    let replay = c
        .create_customer(idem(create("dup"), &app.key, "same-key"))
        .await
        .unwrap_err();
    assert_eq!(refusal(&replay), answers[0]);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM customers WHERE external_id = 'dup'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);

    // One external id under forty keys at once.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..40 {
        let mut c = pb::customers_client::CustomersClient::new(channel.clone());
        let key = key.clone();
        calls.spawn(async move {
            let k = format!("many-{i}");
            let answer = c.create_customer(idem(create("one"), &key, &k)).await;
            (k, answer)
        });
    }
    let mut made = Vec::new();
    let mut refused = Vec::new();
    while let Some(result) = calls.join_next().await {
        match result.unwrap() {
            (k, Ok(response)) => made.push((k, response.into_inner())),
            (k, Err(status)) => refused.push((k, refusal(&status))),
        }
    }
    assert_eq!(made.len(), 1, "one create of the id succeeds");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM customers WHERE external_id = 'one'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let (made_key, customer) = &made[0];
    let again = c
        .create_customer(idem(create("one"), &app.key, made_key))
        .await
        .unwrap();
    assert!(replayed(&again));
    assert_eq!(again.get_ref(), customer);
    let first = refused[0].1.clone();
    assert_eq!(details_of(&first), "CUSTOMER_EXTERNAL_ID_TAKEN");
    for (k, answer) in &refused {
        assert_eq!(answer, &first, "every refusal is the same");
        let replay = c
            .create_customer(idem(create("one"), &app.key, k))
            .await
            .unwrap_err();
        assert_eq!(&refusal(&replay), answer, "the refusal {k} stored");
    }
}

/// The reason of an encoded refusal.
fn details_of(answer: &(Code, String, Vec<u8>)) -> String {
    details(&tonic::Status::with_details(
        answer.0,
        answer.1.clone(),
        answer.2.clone().into(),
    ))
    .0
}
