//! The policy table as callers meet it: a path no service answers is UNIMPLEMENTED without a
//! key lookup and counted under `unknown`, so made-up names cannot grow `/metrics`; a call
//! that runs past its deadline, or whose client gives up, is still counted, once.

use std::str::FromStr;
use std::time::Duration;

use coffer::domain::auth::ApiKey;
use coffer::domain::ids::{KeyId, TenantId};
use coffer::grpc::pb::{CreateCustomerRequest, ListCustomersRequest};
use http::uri::PathAndQuery;
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{
    TestApp, eventually, hold_external_id, http_get, one_session_waits_on_a_lock, req,
};

/// A unary call with an empty message to any path.
async fn call(channel: Channel, path: &str, key: Option<&str>) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let request = match key {
        Some(key) => req((), key),
        None => tonic::Request::new(()),
    };
    grpc.unary::<(), (), _>(
        request,
        PathAndQuery::from_str(path).unwrap(),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .map(|_| ())
}

/// The value of the one `/metrics` sample line that starts with `family{` and has all `labels`.
fn sample(body: &str, family: &str, labels: &[&str]) -> Option<f64> {
    let lines: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && labels.iter().all(|x| l.contains(x)))
        .collect();
    assert!(lines.len() <= 1, "{lines:?}");
    lines.first()?.rsplit(' ').next()?.parse().ok()
}

async fn acme(app: &TestApp) -> TenantId {
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'acme'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    TenantId::from_uuid(id)
}

#[tokio::test]
async fn unknown_methods_are_unimplemented_without_a_key_lookup() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    // A well-formed key that does not exist: looking it up would answer UNAUTHENTICATED.
    let unknown_key = ApiKey::generate(KeyId::generate()).expose().to_owned();
    for path in [
        "/coffer.v1.Customers/DropAllCustomers",
        "/coffer.v1.Nothing/CreateCustomer",
        "/grpc.health.v1.Health/List",
        "/nope",
    ] {
        for key in [None, Some(app.key.as_str()), Some(unknown_key.as_str())] {
            let err = call(channel.clone(), path, key).await.unwrap_err();
            assert_eq!(err.code(), Code::Unimplemented, "{path} {key:?}: {err:?}");
        }
    }
    // Known methods still authenticate.
    let err = call(
        channel.clone(),
        "/coffer.v1.Customers/ListCustomers",
        Some(&unknown_key),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn made_up_method_names_do_not_grow_metrics() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    app.customers()
        .await
        .list_customers(req(ListCustomersRequest::default(), &app.key))
        .await
        .unwrap();
    let before = http_get(app.admin_addr, "/metrics").await.1;

    const CALLS: usize = 3_000;
    let long = "q".repeat(4096);
    let mut calls = JoinSet::new();
    for i in 0..CALLS {
        let path = match i % 3 {
            0 => format!("/made.up.Service{i}/Method{i}"),
            1 => format!("/coffer.v1.Customers/Invented{i}"),
            _ => format!("/coffer.v1.Customers/{long}{i}"),
        };
        let channel = channel.clone();
        // Answered UNIMPLEMENTED; the counters below say so.
        calls.spawn(async move { call(channel, &path, None).await });
        if calls.len() >= 64 {
            calls.join_next().await.unwrap().unwrap().unwrap_err();
        }
    }
    while let Some(done) = calls.join_next().await {
        done.unwrap().unwrap_err();
    }

    let (code, after) = http_get(app.admin_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        !after.contains("Invented") && !after.contains("made.up") && !after.contains("qqqq"),
        "no caller-chosen name is a label"
    );
    assert_eq!(
        sample(
            &after,
            "grpc_server_handled_total",
            &[
                "grpc_type=\"unknown\"",
                "grpc_service=\"unknown\"",
                "grpc_method=\"unknown\"",
                "grpc_code=\"Unimplemented\"",
            ],
        ),
        Some(CALLS as f64),
        "every made-up call is counted under unknown"
    );
    // One counter and one histogram more than before, whatever the number of names.
    assert!(
        after.len() < before.len() + 4_096,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
}

/// How many CreateCustomer calls `/metrics` counts with each of `codes`.
async fn creates_counted(app: &TestApp, codes: &[&str]) -> Vec<f64> {
    let body = http_get(app.admin_addr, "/metrics").await.1;
    codes
        .iter()
        .map(|code| {
            sample(
                &body,
                "grpc_server_handled_total",
                &[
                    "grpc_method=\"CreateCustomer\"",
                    &format!("grpc_code=\"{code}\""),
                ],
            )
            .unwrap_or(0.0)
        })
        .collect()
}

#[tokio::test]
async fn a_call_past_its_deadline_is_counted() {
    let app = TestApp::spawn().await;
    let holder = hold_external_id(&app.pool, acme(&app).await, "slow").await;
    let mut c = app.customers().await;

    let mut request = req(
        CreateCustomerRequest {
            external_id: "slow".into(),
            ..Default::default()
        },
        &app.key,
    );
    // Sent as `grpc-timeout`. Tonic's client enforces it too, and started first, so it gives
    // up (CANCELLED, "Timeout expired") and resets the stream at about the moment the server's
    // own timer ends the call: the server counts whichever came first. (The server's own
    // answer, DEADLINE_EXCEEDED, is what a caller sees when the server's limit is the shorter;
    // `grpc::telemetry`'s unit tests cover it.)
    request.set_timeout(Duration::from_millis(300));
    let err = c.create_customer(request).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{err:?}"
    );

    let counted = eventually(Duration::from_secs(5), || async {
        let counts = creates_counted(&app, &["DeadlineExceeded", "Canceled"]).await;
        counts.iter().sum::<f64>() == 1.0
    })
    .await;
    assert!(counted, "the timed-out call is counted once");
    holder.rollback().await.unwrap();
}

#[tokio::test]
async fn a_call_its_client_abandons_is_counted_as_cancelled() {
    let app = TestApp::spawn().await;
    let holder = hold_external_id(&app.pool, acme(&app).await, "slow").await;
    let mut c = app.customers().await;

    let key = app.key.clone();
    let create = tokio::spawn(async move {
        c.create_customer(req(
            CreateCustomerRequest {
                external_id: "slow".into(),
                ..Default::default()
            },
            &key,
        ))
        .await
    });
    // The client gives up once the create waits on the held row; dropping the call resets
    // its stream.
    assert!(one_session_waits_on_a_lock(&app.pool).await);
    create.abort();

    let counted = eventually(Duration::from_secs(5), || async {
        creates_counted(&app, &["Canceled"]).await == [1.0]
    })
    .await;
    assert!(counted, "the abandoned call is counted as Canceled");
    holder.rollback().await.unwrap();
}
