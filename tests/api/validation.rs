//! Bad input gets INVALID_ARGUMENT naming every bad field, and changes nothing.

use std::collections::BTreeMap;

use coffer::grpc::pb::{
    self, CreateCustomerRequest, DeleteCustomerRequest, GetCustomerRequest, ListCustomersRequest,
    UpdateCustomerRequest,
};
use tonic::Code;

use crate::helpers::{TestApp, by_external_id, by_id, details, idem, req, update};

#[tokio::test]
async fn create_names_each_bad_field() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let many_keys: BTreeMap<String, String> =
        (0..46).map(|i| (format!("k{i}"), "v".into())).collect();
    let cases: Vec<(CreateCustomerRequest, Vec<&str>)> = vec![
        (
            CreateCustomerRequest {
                email: "not-an-email".into(),
                ..Default::default()
            },
            vec!["email"],
        ),
        (
            CreateCustomerRequest {
                email: format!("{}@example.com", "a".repeat(250)),
                ..Default::default()
            },
            vec!["email"],
        ),
        (
            CreateCustomerRequest {
                name: "n".repeat(257),
                ..Default::default()
            },
            vec!["name"],
        ),
        (
            CreateCustomerRequest {
                external_id: "naïve".into(),
                ..Default::default()
            },
            vec!["external_id"],
        ),
        (
            CreateCustomerRequest {
                external_id: "x".repeat(256),
                ..Default::default()
            },
            vec!["external_id"],
        ),
        (
            CreateCustomerRequest {
                metadata: many_keys,
                ..Default::default()
            },
            vec!["metadata"],
        ),
        (
            CreateCustomerRequest {
                metadata: BTreeMap::from([("k".repeat(41), "v".into())]),
                ..Default::default()
            },
            vec!["metadata"],
        ),
        (
            CreateCustomerRequest {
                metadata: BTreeMap::from([("k".into(), "v".repeat(501))]),
                ..Default::default()
            },
            vec!["metadata"],
        ),
        // Every bad field at once, each named.
        (
            CreateCustomerRequest {
                external_id: "\u{7}".into(),
                email: "@".into(),
                name: "\u{0}".into(),
                metadata: BTreeMap::from([(String::new(), "v".into())]),
            },
            vec!["external_id", "email", "name", "metadata"],
        ),
    ];
    for (request, fields) in cases {
        let err = c
            .create_customer(req(request.clone(), &app.key))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}");
        let (reason, got) = details(&err);
        assert_eq!(reason, "INVALID_REQUEST");
        assert_eq!(got, fields, "{request:?}");
    }
    assert_eq!(app.customer_rows().await, 0, "nothing was written");
}

#[tokio::test]
async fn ids_are_checked_for_shape_and_prefix() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let wrong_prefix = format!("key_{}", "0".repeat(26));
    for (id, _why) in [
        ("", "empty"),
        ("customer_123", "short"),
        (wrong_prefix.as_str(), "wrong prefix"),
        ("customer_0000000000000000000000000U", "upper case"),
    ] {
        let err = c.get_customer(req(by_id(id), &app.key)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{id}");
        assert_eq!(details(&err).1, vec!["id"]);
        let err = c
            .delete_customer(req(DeleteCustomerRequest { id: id.into() }, &app.key))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{id}");
    }
    let err = c
        .get_customer(req(GetCustomerRequest { lookup: None }, &app.key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .get_customer(req(by_external_id(""), &app.key))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, vec!["external_id"]);
}

#[tokio::test]
async fn update_refuses_unknown_paths_and_bad_values() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let created = c
        .create_customer(req(
            CreateCustomerRequest {
                email: "a@example.com".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();

    let err = c
        .update_customer(req(
            update(
                pb::Customer {
                    id: created.id.clone(),
                    ..Default::default()
                },
                &["id"],
            ),
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(details(&err).1, vec!["update_mask"]);

    let err = c
        .update_customer(req(
            update(
                pb::Customer {
                    id: created.id.clone(),
                    email: "bad".into(),
                    ..Default::default()
                },
                &["email"],
            ),
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, vec!["customer.email"]);

    let err = c
        .update_customer(req(UpdateCustomerRequest::default(), &app.key))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, vec!["customer"]);

    let unchanged = c
        .get_customer(req(by_id(&created.id), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged, created);
}

#[tokio::test]
async fn list_and_metadata_arguments_are_checked() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let err = c
        .list_customers(req(
            ListCustomersRequest {
                page_size: -1,
                email: "nope".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(details(&err).1, vec!["page_size", "email"]);
    let err = c
        .list_customers(req(
            ListCustomersRequest {
                page_token: "not a token".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, vec!["page_token"]);

    // A malformed idempotency key is the caller's mistake too, and claims nothing.
    let err = c
        .create_customer(idem(
            CreateCustomerRequest::default(),
            &app.key,
            &"k".repeat(256),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(details(&err).1, vec!["idempotency-key"]);
    assert_eq!(app.customer_rows().await, 0);
}
