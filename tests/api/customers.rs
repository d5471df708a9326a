//! Every Customers RPC's success path, soft delete, external_id conflicts and pagination.

use std::collections::BTreeMap;

use coffer::grpc::pb::{self, CreateCustomerRequest, DeleteCustomerRequest, ListCustomersRequest};
use tonic::Code;

use crate::helpers::{TestApp, by_external_id, by_id, details, req, update};

fn create(external_id: &str, email: &str) -> CreateCustomerRequest {
    CreateCustomerRequest {
        external_id: external_id.into(),
        email: email.into(),
        name: "Ada Lovelace".into(),
        metadata: BTreeMap::from([("plan".into(), "pro".into())]),
    }
}

#[tokio::test]
async fn create_then_get_by_id_and_external_id() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;

    let created = c
        .create_customer(req(create("user-1", "ada@example.com"), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert!(created.id.starts_with("customer_"), "{}", created.id);
    assert_eq!(created.id.len(), "customer_".len() + 26);
    assert_eq!(created.external_id, "user-1");
    assert_eq!(created.email, "ada@example.com");
    assert_eq!(created.name, "Ada Lovelace");
    assert_eq!(created.metadata["plan"], "pro");
    assert!(created.create_time.is_some());
    assert_eq!(created.create_time, created.update_time);
    assert!(created.delete_time.is_none());

    let got = c
        .get_customer(req(by_id(&created.id), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
    let got = c
        .get_customer(req(by_external_id("user-1"), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);

    // A customer needs no external id, email or name.
    let bare = c
        .create_customer(req(CreateCustomerRequest::default(), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bare.external_id, "");

    // The change is audited.
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'customer.created'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(audited, 2);
}

#[tokio::test]
async fn unknown_customer_is_not_found() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let missing = format!("customer_{}", "0".repeat(26));
    let err = c
        .get_customer(req(by_id(&missing), &app.key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(details(&err).0, "CUSTOMER_NOT_FOUND");
}

#[tokio::test]
async fn update_with_and_without_a_mask() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let created = c
        .create_customer(req(create("user-1", "ada@example.com"), &app.key))
        .await
        .unwrap()
        .into_inner();

    // No mask: every populated field is written, empty ones are left alone.
    let updated = c
        .update_customer(req(
            update(
                pb::Customer {
                    id: created.id.clone(),
                    name: "Ada King".into(),
                    ..Default::default()
                },
                &[],
            ),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "Ada King");
    assert_eq!(updated.email, "ada@example.com");
    assert_eq!(updated.metadata["plan"], "pro");
    let t = |c: &pb::Customer| c.update_time.map(|t| (t.seconds, t.nanos));
    assert!(t(&updated) > t(&created));

    // With a mask: exactly its paths; an empty value clears; metadata is replaced whole.
    let updated = c
        .update_customer(req(
            update(
                pb::Customer {
                    id: created.id.clone(),
                    email: String::new(),
                    name: "ignored: not in the mask".into(),
                    metadata: BTreeMap::from([("tier".into(), "gold".into())]),
                    ..Default::default()
                },
                &["email", "metadata"],
            ),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.email, "");
    assert_eq!(updated.name, "Ada King");
    assert_eq!(
        updated.metadata,
        BTreeMap::from([("tier".into(), "gold".into())])
    );

    let got = c
        .get_customer(req(by_id(&created.id), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, updated);
}

#[tokio::test]
async fn external_id_is_unique_among_live_customers() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let first = c
        .create_customer(req(create("user-1", "a@example.com"), &app.key))
        .await
        .unwrap()
        .into_inner();

    let err = c
        .create_customer(req(create("user-1", "b@example.com"), &app.key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(details(&err).0, "CUSTOMER_EXTERNAL_ID_TAKEN");

    // Taking it by update is refused too, and changes nothing.
    let second = c
        .create_customer(req(create("user-2", "b@example.com"), &app.key))
        .await
        .unwrap()
        .into_inner();
    let err = c
        .update_customer(req(
            update(
                pb::Customer {
                    id: second.id.clone(),
                    external_id: "user-1".into(),
                    name: "changed".into(),
                    ..Default::default()
                },
                &[],
            ),
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let unchanged = c
        .get_customer(req(by_id(&second.id), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unchanged, second);

    // A soft delete frees the external id.
    c.delete_customer(req(
        DeleteCustomerRequest {
            id: first.id.clone(),
        },
        &app.key,
    ))
    .await
    .unwrap();
    let again = c
        .create_customer(req(create("user-1", "c@example.com"), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(again.id, first.id);
}

#[tokio::test]
async fn delete_is_soft() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let created = c
        .create_customer(req(create("user-1", "a@example.com"), &app.key))
        .await
        .unwrap()
        .into_inner();

    let deleted = c
        .delete_customer(req(
            DeleteCustomerRequest {
                id: created.id.clone(),
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.id, created.id);
    assert!(deleted.delete_time.is_some());

    let err = c
        .get_customer(req(by_id(&created.id), &app.key))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let list = c
        .list_customers(req(ListCustomersRequest::default(), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert!(list.customers.is_empty());
    let err = c
        .delete_customer(req(
            DeleteCustomerRequest {
                id: created.id.clone(),
            },
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .update_customer(req(
            update(
                pb::Customer {
                    id: created.id.clone(),
                    name: "x".into(),
                    ..Default::default()
                },
                &[],
            ),
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The row and its history stay.
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM customers WHERE deleted_at IS NOT NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn list_pages_through_every_customer_once() {
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let email = if i % 5 == 0 {
            "Shared@Example.com".to_owned()
        } else {
            format!("u{i}@example.com")
        };
        let created = c
            .create_customer(req(create(&format!("user-{i}"), &email), &app.key))
            .await
            .unwrap()
            .into_inner();
        ids.push(created.id);
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .list_customers(req(
                ListCustomersRequest {
                    page_size: 10,
                    page_token: token.clone(),
                    email: String::new(),
                },
                &app.key,
            ))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.customers.len() <= 10);
        seen.extend(page.customers.into_iter().map(|c| c.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids, "every customer once, oldest first");

    // Default page size is 20; above 100 is clamped.
    let page = c
        .list_customers(req(ListCustomersRequest::default(), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.customers.len(), 20);
    let page = c
        .list_customers(req(
            ListCustomersRequest {
                page_size: 1000,
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.customers.len(), 25);
    assert!(page.next_page_token.is_empty());

    // The email filter is case-insensitive and its tokens are bound to it.
    let filtered = c
        .list_customers(req(
            ListCustomersRequest {
                page_size: 3,
                email: "shared@example.com".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.customers.len(), 3);
    assert!(
        filtered
            .customers
            .iter()
            .all(|c| c.email == "Shared@Example.com")
    );
    let rest = c
        .list_customers(req(
            ListCustomersRequest {
                page_size: 3,
                // A token made with one case of the filter works with another.
                email: "SHARED@EXAMPLE.COM".into(),
                page_token: filtered.next_page_token.clone(),
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.customers.len(), 2);
    assert!(rest.next_page_token.is_empty());

    let err = c
        .list_customers(req(
            ListCustomersRequest {
                page_size: 3,
                email: String::new(),
                page_token: filtered.next_page_token,
            },
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(details(&err).1, vec!["page_token"]);
}

/// Expected refusals — a taken external id, an idempotency replay, a key held by another
/// attempt — are found by statements that succeed, never by an insert that fails on purpose:
/// such a failure aborts a transaction and writes the key or the external id into the
/// database's error log on every refusal.
#[tokio::test]
async fn expected_refusals_abort_no_transaction() {
    use std::time::Duration;

    use crate::helpers::idem;
    let app = TestApp::spawn().await;
    let mut c = app.customers().await;
    c.create_customer(idem(create("taken", "a@example.com"), &app.key, "first"))
        .await
        .unwrap();
    // Another session holds the key "held" in flight.
    c.create_customer(req(create("other", "b@example.com"), &app.key))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, method, key, fingerprint, state, lease_id, locked_until)
         SELECT id, '/coffer.v1.Customers/CreateCustomer', 'held', $1, 'in_flight', gen_random_uuid(), now() + interval '1 minute'
         FROM tenants WHERE name = 'acme'",
    )
    .bind(
        coffer::app::idempotency::Fingerprint::of(&prost::Message::encode_to_vec(&create(
            "x",
            "d@example.com",
        )))
        .0
        .to_vec(),
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // Statistics reach pg_stat_database when a backend goes idle, at most once a second.
    let rollbacks = || async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sqlx::query_scalar::<_, i64>(
            "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let before = rollbacks().await;
    for i in 0..5 {
        // The external id is taken, with and without a key.
        let err = c
            .create_customer(idem(
                create("taken", "c@example.com"),
                &app.key,
                &format!("t{i}"),
            ))
            .await
            .unwrap_err();
        assert_eq!(details(&err).0, "CUSTOMER_EXTERNAL_ID_TAKEN");
        let err = c
            .create_customer(req(create("taken", "c@example.com"), &app.key))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        // A replay of the first create, and a key still held elsewhere.
        c.create_customer(idem(create("taken", "a@example.com"), &app.key, "first"))
            .await
            .unwrap();
        let err = c
            .create_customer(idem(create("x", "d@example.com"), &app.key, "held"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Aborted);
        // An update to an external id another customer has.
        let other = c
            .get_customer(req(by_external_id("other"), &app.key))
            .await
            .unwrap()
            .into_inner();
        let err = c
            .update_customer(req(
                update(
                    pb::Customer {
                        id: other.id,
                        external_id: "taken".into(),
                        ..Default::default()
                    },
                    &["external_id"],
                ),
                &app.key,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
    }
    let after = rollbacks().await;
    // The refused update's own transaction is rolled back on purpose (it wrote nothing), at
    // most once per refusal (the rollback is sent lazily); nothing else is. A statement that
    // failed on purpose would add one for each of the other twenty refusals.
    assert!(
        after - before <= 5,
        "refusals aborted {} transactions",
        after - before
    );
}
