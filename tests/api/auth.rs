//! API keys: missing, unknown, malformed or revoked keys are UNAUTHENTICATED; a key without the
//! method's scope is PERMISSION_DENIED; health and reflection are open.

use std::time::{Duration, Instant};

use coffer::app::tenants::KeyFor;
use coffer::domain::auth::{ApiKey, TenantName};
use coffer::domain::ids::KeyId;
use coffer::grpc::pb::{CreateCustomerRequest, ListCustomersRequest};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{TestApp, details, req};

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
    app.app.revoke_key(id).await.unwrap();
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
