//! Every mutating RPC is idempotent under an idempotency-key.

use std::sync::Arc;

use coffer::grpc::pb::{self, CreateCustomerRequest, DeleteCustomerRequest};
use tonic::Code;

use crate::helpers::{TestApp, details, idem, update};

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

    // A conflict is the caller's own deterministic error: stored and replayed.
    let err = c
        .create_customer(idem(create("taken"), &app.key, "c"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let stored: String =
        sqlx::query_scalar("SELECT error_reason FROM idempotency_keys WHERE key = 'c'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, "CUSTOMER_EXTERNAL_ID_TAKEN");
    let err = c
        .create_customer(idem(create("taken"), &app.key, "c"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(details(&err).0, "CUSTOMER_EXTERNAL_ID_TAKEN");

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
