//! Health follows the database, not the pool; it changes only when the database does; the admin
//! listener reports liveness, readiness and metrics; shutdown reports NOT_SERVING and drains.

use std::time::Duration;

use coffer::grpc::pb::{CreateCustomerRequest, DeleteCustomerRequest, ListCustomersRequest};
use coffer::store::pool::{self, PoolConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{Proxy, TestApp, TestDb, eventually, http_get, req, test_config};

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

async fn status(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
}

#[tokio::test]
async fn health_flips_with_the_database() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let proxy = Proxy::to_db(&db.options).await;
    let through_proxy = pool::pool(
        &proxy.options(&db.options),
        &PoolConfig {
            acquire_timeout: Duration::from_millis(500),
            ..PoolConfig::default()
        },
    );
    let app = TestApp::spawn_on(db, pool, through_proxy, test_config()).await;
    let mut health = HealthClient::new(app.channel().await);
    let mut customers = app.customers().await;

    assert_eq!(status(&mut health, "").await, SERVING);
    assert_eq!(status(&mut health, "coffer.v1.Customers").await, SERVING);
    assert_eq!(status(&mut health, "liveness").await, SERVING);
    assert_eq!(http_get(app.admin_addr, "/readyz").await.0, 200);

    proxy.cut().await;
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut h = health.clone();
            async move { status(&mut h, "").await == NOT_SERVING }
        })
        .await,
        "NOT_SERVING once the database is gone"
    );
    assert_eq!(
        status(&mut health, "coffer.v1.Customers").await,
        NOT_SERVING
    );
    assert_eq!(http_get(app.admin_addr, "/readyz").await.0, 503);
    assert_eq!(
        http_get(app.admin_addr, "/healthz").await.0,
        200,
        "alive all the same"
    );
    assert_eq!(
        status(&mut health, "liveness").await,
        SERVING,
        "the liveness entry does not follow the database"
    );
    // Calls fail as UNAVAILABLE (retryable), not INTERNAL.
    let err = customers
        .create_customer(req(CreateCustomerRequest::default(), &app.key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    proxy.restore();
    assert!(
        eventually(Duration::from_secs(5), || {
            let mut h = health.clone();
            async move { status(&mut h, "").await == SERVING }
        })
        .await,
        "SERVING again once the database returns"
    );
    assert_eq!(http_get(app.admin_addr, "/readyz").await.0, 200);
    customers
        .create_customer(req(CreateCustomerRequest::default(), &app.key))
        .await
        .unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_calls_by_service_method_and_code() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    c.list_customers(req(ListCustomersRequest::default(), &app.key))
        .await
        .unwrap();
    c.list_customers(req(ListCustomersRequest::default(), &app.key))
        .await
        .unwrap();
    let _ = c
        .create_customer(req(
            CreateCustomerRequest {
                email: "bad".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await;
    let _ = c
        .list_customers(tonic::Request::new(ListCustomersRequest::default()))
        .await;

    // An account's outbound stack, built on the process's shared families, reports its
    // breaker on this server's /metrics.
    let _stack = coffer::providers::outbound::Outbound::new(
        Default::default(),
        coffer::domain::account::ProviderKind::Stripe,
        &coffer::domain::account::AccountName::parse("health-outbound").unwrap(),
        coffer::providers::outbound::OutboundMetrics::shared().clone(),
    )
    .unwrap();

    let (code, body) = http_get(app.admin_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains(r#"coffer_provider_breaker_state{account="health-outbound"} 0"#));
    assert!(
        body.lines()
            .any(|l| l.starts_with("grpc_server_handled_total{")
                && l.contains("grpc_service=\"coffer.v1.Customers\"")
                && l.contains("grpc_method=\"ListCustomers\"")
                && l.contains("grpc_code=\"OK\"")
                && l.ends_with(" 2")),
        "{body}"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("grpc_server_handled_total{")
                && l.contains("grpc_method=\"CreateCustomer\"")
                && l.contains("grpc_code=\"InvalidArgument\""))
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("grpc_server_handled_total{")
                && l.contains("grpc_method=\"ListCustomers\"")
                && l.contains("grpc_code=\"Unauthenticated\""))
    );
    assert!(body.contains("grpc_server_handling_seconds_bucket{"));
    assert!(body.contains("coffer_database_up 1"));
    // The log writer's drop counter is read at each scrape (0 here: the tests' process has
    // no log writer).
    assert!(body.contains("# TYPE coffer_log_lines_dropped counter"));
    assert!(body.contains("coffer_log_lines_dropped_total 0"));
    assert!(!body.contains(&app.key[30..]), "no secrets in metrics");
}

#[tokio::test]
async fn shutdown_reports_not_serving_and_drains() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let config = coffer::startup::ServerConfig {
        shutdown_grace: Duration::from_millis(600),
        ..test_config()
    };
    let app = TestApp::spawn_on(db, pool.clone(), pool, config).await;
    let mut health = HealthClient::new(app.channel().await);
    let mut customers = app.customers().await;
    assert_eq!(status(&mut health, "").await, SERVING);

    let admin = app.admin_addr;
    let key = app.key.clone();
    let stopping = tokio::spawn(app.stop());
    // During the grace period health says NOT_SERVING while calls still succeed.
    assert!(
        eventually(Duration::from_secs(2), || {
            let mut h = health.clone();
            async move { status(&mut h, "").await == NOT_SERVING }
        })
        .await
    );
    assert_eq!(http_get(admin, "/readyz").await.0, 503);
    customers
        .list_customers(req(ListCustomersRequest::default(), &key))
        .await
        .unwrap();
    stopping.await.unwrap().unwrap();
    let gone = customers
        .list_customers(req(ListCustomersRequest::default(), &key))
        .await;
    assert!(gone.is_err(), "nothing answers after shutdown");
}

/// A Watch stream hears the current status, then only changes: nothing while the health ticks
/// (every 200 ms here) find the database as it was.
#[tokio::test]
async fn watch_hears_only_changes() {
    let app = TestApp::spawn().await;
    let mut health = HealthClient::new(app.channel().await);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut heard = Vec::new();
    let listening = tokio::time::timeout(Duration::from_millis(2200), async {
        while let Some(m) = stream.message().await.unwrap() {
            heard.push(m.status);
        }
    })
    .await;
    assert!(listening.is_err(), "the stream stays open");
    assert_eq!(heard, [SERVING], "one message over ten quiet ticks");
    drop(stream);
    app.stop().await.unwrap();
}

/// Readiness measures the database, not the pool's queue: with every pooled connection taken,
/// calls wait and fail, but health stays SERVING.
#[tokio::test]
async fn health_stays_serving_while_every_pooled_connection_is_busy() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let server_pool = pool::pool(
        &db.options,
        &PoolConfig {
            max_connections: 2,
            acquire_timeout: Duration::from_millis(300),
            ..PoolConfig::default()
        },
    );
    let app = TestApp::spawn_on(db, pool, server_pool.clone(), test_config()).await;
    let mut health = HealthClient::new(app.channel().await);
    let mut customers = app.customers().await;
    assert_eq!(status(&mut health, "").await, SERVING);

    let held = [
        server_pool.begin().await.unwrap(),
        server_pool.begin().await.unwrap(),
    ];
    let err = customers
        .list_customers(req(ListCustomersRequest::default(), &app.key))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unavailable,
        "the pool is exhausted"
    );
    // Ten health ticks with the pool exhausted.
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        assert_eq!(status(&mut health, "").await, SERVING);
        assert_eq!(http_get(app.admin_addr, "/readyz").await.0, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(held);
    customers
        .list_customers(req(ListCustomersRequest::default(), &app.key))
        .await
        .unwrap();
    app.stop().await.unwrap();
}

/// A mutation outlives its call (its caller may go away), and shutdown waits for it: the
/// server's `run` returns only once the work its callers left behind is done.
#[tokio::test]
async fn shutdown_waits_for_the_work_callers_left_behind() {
    let app = TestApp::spawn().await;
    let mut customers = app.customers().await;
    let created = customers
        .create_customer(req(
            CreateCustomerRequest {
                external_id: "locked".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();

    // Lock the row, so the delete waits; its caller gives up after 200 ms.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM customers WHERE external_id = 'locked' FOR UPDATE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let mut delete = req(DeleteCustomerRequest { id: created.id }, &app.key);
    delete.set_timeout(Duration::from_millis(200));
    let err = customers.delete_customer(delete).await.unwrap_err();
    assert!(
        matches!(
            err.code(),
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        "{err:?}"
    );

    let stopping = tokio::spawn(app.stop());
    // The delete cannot commit while the row is locked, so the server must still be waiting.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!stopping.is_finished(), "the server waits for the delete");
    lock.rollback().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("the server returns once the delete is done")
        .unwrap()
        .unwrap();
}
