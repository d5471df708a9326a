//! API keys: missing, unknown, malformed or revoked keys are UNAUTHENTICATED; a key without the
//! method's scope is PERMISSION_DENIED; health and reflection are open; a flood of made-up keys
//! neither evicts real ones nor takes the database from real calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer::app::App;
use coffer::app::auth::{AuthError, Authenticator, LookupBudget};
use coffer::app::tenants::KeyFor;
use coffer::domain::auth::{ApiKey, TenantName};
use coffer::domain::ids::KeyId;
use coffer::grpc::pb::{CreateCustomerRequest, ListCustomersRequest};
use tokio::task::JoinSet;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{TestApp, TestDb, details, req};

#[tokio::test]
async fn calls_without_a_valid_key_are_unauthenticated() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;

    let err = c
        .list_customers(tonic::Request::new(ListCustomersRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(details(&err).0, "UNAUTHENTICATED");

    let forged = ApiKey::generate(KeyId::parse(&format!("key_{}", &app.key[3..29])).unwrap());
    for bad in [
        "ck_garbage".to_owned(),
        // The right key id with another secret.
        forged.expose().to_owned(),
        // A well-formed key that does not exist.
        ApiKey::generate(KeyId::generate()).expose().to_owned(),
    ] {
        let err = c
            .list_customers(req(ListCustomersRequest::default(), &bad))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{bad}");
        assert!(!err.message().contains(&bad[3..]), "the key is not echoed");
    }
    let mut r = tonic::Request::new(ListCustomersRequest::default());
    r.metadata_mut().insert(
        "authorization",
        format!("Basic {}", app.key).parse().unwrap(),
    );
    assert_eq!(
        c.list_customers(r).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

#[tokio::test]
async fn scopes_are_enforced() {
    let app = TestApp::spawn().await;
    let acme = || KeyFor::Tenant(TenantName::parse("acme").unwrap());
    let reader = app.key(acme(), "read").await;
    let writer = app.key(acme(), "write").await;
    let system = app.key(KeyFor::System, "events:ingest").await;
    let mut c = app.customers().await;

    c.list_customers(req(ListCustomersRequest::default(), &reader))
        .await
        .unwrap();
    let err = c
        .create_customer(req(CreateCustomerRequest::default(), &reader))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(details(&err).0, "SCOPE_MISSING");

    // write implies read.
    c.create_customer(req(CreateCustomerRequest::default(), &writer))
        .await
        .unwrap();
    c.list_customers(req(ListCustomersRequest::default(), &writer))
        .await
        .unwrap();

    // System keys belong to no tenant and reach no tenant data.
    for err in [
        c.list_customers(req(ListCustomersRequest::default(), &system))
            .await
            .unwrap_err(),
        c.create_customer(req(CreateCustomerRequest::default(), &system))
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    assert_eq!(
        app.customer_rows().await,
        1,
        "only the writer's customer exists"
    );
}

#[tokio::test]
async fn a_revoked_key_stops_working_within_a_second() {
    let app = TestApp::spawn().await;
    let key = app
        .key(KeyFor::Tenant(TenantName::parse("acme").unwrap()), "read")
        .await;
    let mut c = app.customers().await;
    c.list_customers(req(ListCustomersRequest::default(), &key))
        .await
        .unwrap();

    let id = ApiKey::parse(&key).unwrap().id();
    app.app.tenants.revoke_key(id).await.unwrap();
    let revoked_at = Instant::now();
    loop {
        // Judged by when each call was sent, so a slow machine cannot fail the test.
        let sent = revoked_at.elapsed();
        match c
            .list_customers(req(ListCustomersRequest::default(), &key))
            .await
        {
            Ok(_) => assert!(
                sent < Duration::from_secs(1),
                "still accepted a call sent {sent:?} after the revocation"
            ),
            Err(e) => {
                assert_eq!(e.code(), Code::Unauthenticated);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The tenant's other key is unaffected.
    c.list_customers(req(ListCustomersRequest::default(), &app.key))
        .await
        .unwrap();
}

#[tokio::test]
async fn health_and_reflection_need_no_key() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "coffer.v1.Customers".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");

    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"coffer.v1.Customers".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    // v1alpha too, for older clients.
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest as AlphaReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    let request = AlphaReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::FileContainingSymbol(
            "coffer.v1.Customers".into(),
        )),
    };
    let mut stream = AlphaClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        stream
            .message()
            .await
            .unwrap()
            .unwrap()
            .message_response
            .is_some()
    );
}

/// A well-formed key that does not exist.
fn made_up_key() -> String {
    ApiKey::generate(KeyId::generate()).expose().to_owned()
}

#[tokio::test]
async fn a_flood_of_unknown_keys_does_not_evict_a_known_one() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let (_, key) = App::new(pool.clone())
        .tenants
        .create_tenant(&TenantName::parse("acme").unwrap())
        .await
        .unwrap();
    let valid = format!("Bearer {}", key.expose());
    // Entries that outlive the test and no waiting limit, so what is measured is eviction;
    // a small negative cache, so the flood fills and empties it several times over.
    let auth = Authenticator::with_budget(
        pool.clone(),
        LookupBudget {
            ttl: Duration::from_secs(3600),
            concurrent: 4,
            wait: Duration::from_secs(3600),
            negatives: 1_000,
        },
    );
    auth.authenticate(Some(&valid)).await.unwrap().unwrap();

    const FLOOD: usize = 3_000;
    const WORKERS: usize = 16;
    let auth = Arc::new(auth);
    let mut workers = JoinSet::new();
    for _ in 0..WORKERS {
        let auth = auth.clone();
        workers.spawn(async move {
            for _ in 0..FLOOD / WORKERS {
                let header = format!("Bearer {}", made_up_key());
                assert_eq!(
                    auth.authenticate(Some(&header)).await.unwrap(),
                    Err(AuthError::Invalid)
                );
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }

    // With the database out of reach, only the cache can still answer for the known key.
    pool.close().await;
    let caller = auth.authenticate(Some(&valid)).await;
    assert!(
        matches!(caller, Ok(Ok(_))),
        "the known key was evicted: {caller:?}"
    );
    assert!(
        auth.authenticate(Some(&format!("Bearer {}", made_up_key())))
            .await
            .is_err(),
        "a new id needs the database"
    );
}

#[tokio::test]
async fn a_flood_of_unknown_keys_neither_starves_calls_nor_flips_health() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use crate::helpers::{eventually, http_get};

    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    c.list_customers(req(ListCustomersRequest::default(), &app.key))
        .await
        .unwrap();
    let mut health = HealthClient::new(app.channel().await);
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(app.channel().await);
    }
    let flood_call = |channel: tonic::transport::Channel| async move {
        let err = coffer::grpc::pb::customers_client::CustomersClient::new(channel)
            .list_customers(req(ListCustomersRequest::default(), &made_up_key()))
            .await
            .unwrap_err();
        assert!(
            matches!(err.code(), Code::Unauthenticated | Code::ResourceExhausted),
            "{err:?}"
        );
        if err.code() == Code::ResourceExhausted {
            use tonic_types::StatusExt;
            let d = err.get_error_details();
            assert_eq!(d.error_info().unwrap().reason, "KEY_LOOKUPS_EXHAUSTED");
            assert!(d.retry_info().is_some(), "{err:?}");
        }
        err.code()
    };

    // Lookups that cannot finish: with api_keys locked, each one holds a connection until the
    // lock goes. Only the budget's few (a quarter of the 16 connections) may start; the rest
    // are refused at once instead of queueing for the pool.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    const STUCK: usize = 400;
    let answered = Arc::new(AtomicUsize::new(0));
    let mut flood = JoinSet::new();
    for i in 0..STUCK {
        let (call, answered) = (flood_call(channels[i % 4].clone()), answered.clone());
        flood.spawn(async move {
            let code = call.await;
            answered.fetch_add(1, Ordering::SeqCst);
            code
        });
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            answered.load(Ordering::SeqCst) == STUCK - 4
        })
        .await,
        "all but the budget's lookups answered while the table is locked: {}",
        answered.load(Ordering::SeqCst)
    );
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(waiting, 4, "lookups holding a connection");
    for _ in 0..10 {
        assert_eq!(
            health
                .check(HealthCheckRequest::default())
                .await
                .unwrap()
                .into_inner()
                .status,
            1,
            "SERVING"
        );
        assert_eq!(http_get(app.admin_addr, "/readyz").await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lock.commit().await.unwrap();
    while let Some(code) = flood.join_next().await {
        code.unwrap();
    }

    // A flood that keeps coming while a real caller works.
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = JoinSet::new();
    for i in 0..64 {
        let (channel, stop) = (channels[i % 4].clone(), stop.clone());
        flood.spawn(async move {
            let mut calls = 0;
            while !stop.load(Ordering::SeqCst) {
                flood_call(channel.clone()).await;
                calls += 1;
            }
            calls
        });
    }
    // Long enough for the real key's cache entry to be refreshed a few times.
    for _ in 0..30 {
        c.list_customers(req(ListCustomersRequest::default(), &app.key))
            .await
            .expect("a real caller's call during the flood");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut calls = 0;
    while let Some(n) = flood.join_next().await {
        calls += n.unwrap();
    }
    assert!(calls > 64, "the flood ran: {calls} calls");
}
