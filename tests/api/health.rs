//! Health follows the database; the admin listener reports liveness, readiness and metrics;
//! shutdown reports NOT_SERVING and drains.

use std::time::Duration;

use coffer::grpc::pb::{CreateCustomerRequest, ListCustomersRequest};
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

    let (code, body) = http_get(app.admin_addr, "/metrics").await;
    assert_eq!(code, 200);
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
