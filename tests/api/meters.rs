//! Usage meters: create, get by id and by key, list, validation, idempotency, tenancy.

use coffer::grpc::pb::get_meter_request::Lookup;
use coffer::grpc::pb::{Aggregation, CreateMeterRequest, GetMeterRequest, ListMetersRequest};
use tonic::Code;

use crate::helpers::{TestApp, details, idem, req};

fn meter(key: &str, aggregation: Aggregation, value_key: &str) -> CreateMeterRequest {
    CreateMeterRequest {
        key: key.into(),
        name: format!("Meter {key}"),
        aggregation: aggregation as i32,
        value_key: value_key.into(),
    }
}

fn by_key(key: &str) -> GetMeterRequest {
    GetMeterRequest {
        lookup: Some(Lookup::Key(key.into())),
    }
}

async fn meter_rows(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM meters")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn create_then_get_by_id_and_key_and_list() {
    let app = TestApp::spawn().await;
    let mut u = app.usage().await;
    let created = u
        .create_meter(req(meter("api_calls", Aggregation::Count, ""), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert!(created.id.starts_with("meter_"));
    assert_eq!(created.aggregation, Aggregation::Count as i32);
    assert_eq!(created.value_key, "");
    let tokens = u
        .create_meter(req(meter("tokens", Aggregation::Sum, "tokens"), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tokens.value_key, "tokens");

    let got = u
        .get_meter(req(
            GetMeterRequest {
                lookup: Some(Lookup::Id(created.id.clone())),
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
    let got = u
        .get_meter(req(by_key("tokens"), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, tokens);

    // Pages of one: both meters, oldest first, then an empty token.
    let first = u
        .list_meters(req(
            ListMetersRequest {
                page_size: 1,
                page_token: String::new(),
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.meters, vec![created]);
    let second = u
        .list_meters(req(
            ListMetersRequest {
                page_size: 1,
                page_token: first.next_page_token,
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.meters, vec![tokens]);
    assert!(second.next_page_token.is_empty());
}

#[tokio::test]
async fn bad_meters_are_refused_by_field_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let mut u = app.usage().await;
    let cases = [
        (meter("Bad Key", Aggregation::Count, ""), "key"),
        (meter("calls", Aggregation::Unspecified, ""), "aggregation"),
        (meter("calls", Aggregation::Sum, ""), "value_key"),
        (meter("calls", Aggregation::Count, "tokens"), "value_key"),
        (meter("calls", Aggregation::Max, "not ok"), "value_key"),
        (
            CreateMeterRequest {
                aggregation: 42,
                ..meter("calls", Aggregation::Count, "")
            },
            "aggregation",
        ),
    ];
    for (request, field) in cases {
        let err = u.create_meter(req(request, &app.key)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert_eq!(details(&err).1, vec![field.to_owned()], "{err:?}");
    }
    // A page token of another list is refused.
    let mut c = app.customers().await;
    for i in 0..2 {
        c.create_customer(req(
            coffer::grpc::pb::CreateCustomerRequest {
                external_id: format!("user-{i}"),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap();
    }
    let page = c
        .list_customers(req(
            coffer::grpc::pb::ListCustomersRequest {
                page_size: 1,
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let err = u
        .list_meters(req(
            ListMetersRequest {
                page_size: 1,
                page_token: page.next_page_token,
            },
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, vec!["page_token".to_owned()]);
    let err = u
        .get_meter(req(by_key("nope"), &app.key))
        .await
        .unwrap_err();
    assert_eq!(details(&err).0, "METER_NOT_FOUND");
    assert_eq!(meter_rows(&app).await, 0);
}

#[tokio::test]
async fn a_key_is_unique_per_tenant_and_creates_are_idempotent() {
    let app = TestApp::spawn().await;
    let mut u = app.usage().await;
    let first = u
        .create_meter(idem(
            meter("seats", Aggregation::Latest, "seats"),
            &app.key,
            "m1",
        ))
        .await
        .unwrap();
    let again = u
        .create_meter(idem(
            meter("seats", Aggregation::Latest, "seats"),
            &app.key,
            "m1",
        ))
        .await
        .unwrap();
    assert_eq!(again.metadata().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.get_ref(), first.get_ref());
    let err = u
        .create_meter(idem(
            meter("seats", Aggregation::Max, "seats"),
            &app.key,
            "m2",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(details(&err).0, "METER_KEY_TAKEN");

    // Another tenant may use the same key, and cannot see this tenant's meter.
    let other = app.tenant("globex").await;
    let err = u.get_meter(req(by_key("seats"), &other)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let theirs = u
        .create_meter(req(meter("seats", Aggregation::Max, "seats"), &other))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(theirs.id, first.get_ref().id);
    let err = u
        .get_meter(req(
            GetMeterRequest {
                lookup: Some(Lookup::Id(theirs.id)),
            },
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(meter_rows(&app).await, 2);
}

/// CreateMeter on the one-statement path: thirty concurrent calls under one key write one
/// meter, none is told IN_USE (a duplicate waits on the key for the batch's commit), exactly
/// one did the work, and every answer is byte for byte the replay's.
#[tokio::test]
async fn concurrent_duplicate_creates_under_one_key_write_one_meter_and_answer_alike() {
    use prost::Message as _;
    let app = TestApp::spawn().await;
    let u = app.usage().await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(30));
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..30 {
        let (mut u, key, barrier) = (u.clone(), app.key.clone(), barrier.clone());
        calls.spawn(async move {
            barrier.wait().await;
            let response = u
                .create_meter(idem(
                    meter("seats", Aggregation::Latest, "seats"),
                    &key,
                    "m-once",
                ))
                .await
                .expect("a duplicate waits and replays, never IN_USE");
            let replayed = response
                .metadata()
                .get("idempotent-replayed")
                .is_some_and(|v| v == "true");
            (replayed, response.into_inner().encode_to_vec())
        });
    }
    let (mut fresh, mut answers) = (0, Vec::new());
    while let Some(result) = calls.join_next().await {
        let (replayed, bytes) = result.unwrap();
        fresh += usize::from(!replayed);
        answers.push(bytes);
    }
    assert_eq!(fresh, 1, "exactly one call did the work");
    let replay = u
        .clone()
        .create_meter(idem(
            meter("seats", Aggregation::Latest, "seats"),
            &app.key,
            "m-once",
        ))
        .await
        .unwrap()
        .into_inner()
        .encode_to_vec();
    assert!(
        answers.iter().all(|a| *a == replay),
        "every answer is the replay's"
    );
    assert_eq!(meter_rows(&app).await, 1);
}

/// Concurrent creates of one meter key under different idempotency keys (batches holding the
/// key twice, and batches racing each other, both go through the transaction): one meter, one
/// success, every other call METER_KEY_TAKEN, and each key's answer stored, so a replay under
/// it is the same answer.
#[tokio::test]
async fn concurrent_creates_of_one_meter_key_get_one_winner_and_stored_refusals() {
    let app = TestApp::spawn().await;
    let u = app.usage().await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(12));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (mut u, key, barrier) = (u.clone(), app.key.clone(), barrier.clone());
        calls.spawn(async move {
            barrier.wait().await;
            let answer = u
                .create_meter(idem(
                    meter("tokens", Aggregation::Sum, "tokens"),
                    &key,
                    &format!("race-{i}"),
                ))
                .await
                .map(|r| r.into_inner().id)
                .map_err(|e| (e.code(), details(&e).0));
            (i, answer)
        });
    }
    let mut answers = Vec::new();
    while let Some(result) = calls.join_next().await {
        answers.push(result.unwrap());
    }
    let winners = answers.iter().filter(|(_, a)| a.is_ok()).count();
    assert_eq!(winners, 1, "{answers:?}");
    for (_, a) in &answers {
        if let Err(refusal) = a {
            assert_eq!(
                *refusal,
                (Code::AlreadyExists, "METER_KEY_TAKEN".to_string())
            );
        }
    }
    assert_eq!(meter_rows(&app).await, 1);
    let mut u = u.clone();
    for (i, first) in answers {
        let again = u
            .create_meter(idem(
                meter("tokens", Aggregation::Sum, "tokens"),
                &app.key,
                &format!("race-{i}"),
            ))
            .await
            .map(|r| r.into_inner().id)
            .map_err(|e| (e.code(), details(&e).0));
        assert_eq!(
            again, first,
            "the replay under race-{i} is its first answer"
        );
    }
}
