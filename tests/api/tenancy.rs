//! Tenants never see each other's data: another tenant's customer is NOT_FOUND, never
//! PERMISSION_DENIED, so ids do not leak.

use coffer::grpc::pb::{self, CreateCustomerRequest, DeleteCustomerRequest, ListCustomersRequest};
use tonic::Code;

use crate::helpers::{TestApp, by_external_id, by_id, req, update};

#[tokio::test]
async fn another_tenant_gets_not_found() {
    let app = TestApp::spawn().await;
    let other = app.tenant("globex").await;
    let mut c = app.customers().await;
    let acme_customer = c
        .create_customer(req(
            CreateCustomerRequest {
                external_id: "user-1".into(),
                email: "a@acme.test".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();

    let by_id = by_id(&acme_customer.id);
    let by_external = by_external_id("user-1");
    assert_eq!(
        c.get_customer(req(by_id.clone(), &other))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    assert_eq!(
        c.get_customer(req(by_external.clone(), &other))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let err = c
        .update_customer(req(
            update(
                pb::Customer {
                    id: acme_customer.id.clone(),
                    name: "hijacked".into(),
                    ..Default::default()
                },
                &[],
            ),
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .delete_customer(req(
            DeleteCustomerRequest {
                id: acme_customer.id.clone(),
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let list = c
        .list_customers(req(ListCustomersRequest::default(), &other))
        .await
        .unwrap()
        .into_inner();
    assert!(list.customers.is_empty());

    // The same external id is free in the other tenant, and lookups stay apart.
    let globex_customer = c
        .create_customer(req(
            CreateCustomerRequest {
                external_id: "user-1".into(),
                ..Default::default()
            },
            &other,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(globex_customer.id, acme_customer.id);
    let mine = c
        .get_customer(req(by_external, &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mine, acme_customer);

    // acme's customer is untouched.
    let still = c
        .get_customer(req(by_id, &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still, acme_customer);
}
