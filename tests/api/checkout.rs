//! Checkout sessions on the sandbox provider: create (with the lazily made provider customer
//! and the operations journal), validation by field, open redirects refused, idempotency,
//! tenancy, expiry, lists, and an unknown provider outcome settled by fetching.

use std::sync::Arc;
use std::time::Duration;

use coffer::grpc::pb::checkout_client::CheckoutClient;
use coffer::grpc::pb::checkout_line_item::Price as ItemPrice;
use coffer::grpc::pb::create_checkout_session_request::Customer as Who;
use coffer::grpc::pb::{
    ArchivePlanRequest, CheckoutLineItem, CheckoutMode, CheckoutPaymentStatus,
    CheckoutSessionStatus, CreateCheckoutSessionRequest, CreateCustomerRequest, CreatePlanRequest,
    ExpireCheckoutSessionRequest, GetCheckoutSessionRequest, InlinePrice, Interval,
    ListCheckoutSessionsRequest, Price,
};
use coffer::providers::sandbox::{Faults, SandboxConfig};
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{TestApp, details, eventually, http_get, idem, req};

const PUBLIC_URL: &str = "http://127.0.0.1:8089";

/// A server with the sandbox enabled (resolver every 100 ms) and coffer.toml `text`; the
/// handle to the sandbox's fault switches.
async fn spawn(text: &str) -> (TestApp, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let handle = faults.clone();
    let app = TestApp::spawn_configured(text, &[], move |config| {
        config.sandbox = Some(SandboxConfig {
            public_url: PUBLIC_URL.into(),
            faults: handle,
            ..SandboxConfig::default()
        });
        config.resolve_interval = Duration::from_millis(100);
    })
    .await;
    (app, faults)
}

pub async fn client(app: &TestApp) -> CheckoutClient<Channel> {
    CheckoutClient::new(app.channel().await)
}

pub async fn customer(app: &TestApp, key: &str, external_id: &str) -> String {
    app.customers()
        .await
        .create_customer(req(
            CreateCustomerRequest {
                external_id: external_id.into(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .id
}

/// A plan `key` with a monthly USD price (14 trial days), a yearly USD price and a one-time
/// USD price; their ids in that order.
pub async fn plan(app: &TestApp, key: &str) -> (String, [String; 3]) {
    plan_of(app, &app.key, key).await
}

/// [`plan`], made with the API key `api_key` (another tenant's).
pub async fn plan_of(app: &TestApp, api_key: &str, key: &str) -> (String, [String; 3]) {
    let price = |amount, interval: Interval, trial_days| Price {
        amount,
        currency: "USD".into(),
        interval: interval as i32,
        trial_days,
        ..Default::default()
    };
    let plan = app
        .subscriptions()
        .await
        .create_plan(req(
            CreatePlanRequest {
                key: key.into(),
                name: format!("Plan {key}"),
                prices: vec![
                    price(2_900, Interval::Month, 14),
                    price(29_000, Interval::Year, 0),
                    price(9_900, Interval::OneTime, 0),
                ],
                ..Default::default()
            },
            api_key,
        ))
        .await
        .unwrap()
        .into_inner();
    let ids = plan.prices.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    (plan.id, ids.try_into().unwrap())
}

pub fn item(price_id: &str, quantity: i64) -> CheckoutLineItem {
    CheckoutLineItem {
        price: Some(ItemPrice::PriceId(price_id.into())),
        quantity,
        ..Default::default()
    }
}

pub fn inline(amount: i64, currency: &str, quantity: i64) -> CheckoutLineItem {
    CheckoutLineItem {
        price: Some(ItemPrice::PriceData(InlinePrice {
            amount,
            currency: currency.into(),
            name: "Consulting hour".into(),
        })),
        quantity,
        ..Default::default()
    }
}

pub fn session(
    customer_id: &str,
    mode: CheckoutMode,
    items: Vec<CheckoutLineItem>,
) -> CreateCheckoutSessionRequest {
    CreateCheckoutSessionRequest {
        customer: Some(Who::CustomerId(customer_id.into())),
        mode: mode as i32,
        line_items: items,
        success_url: "https://shop.acme.example/ok?session={CHECKOUT_SESSION_ID}".into(),
        cancel_url: "https://shop.acme.example/cancel".into(),
        ..Default::default()
    }
}

async fn scalar(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

#[tokio::test]
async fn a_session_opens_on_the_sandbox_and_its_customer_is_made_once() {
    let (app, _) = spawn("").await;
    let mut checkout = client(&app).await;
    let alice = customer(&app, &app.key, "alice").await;
    let (_, [monthly, _, _]) = plan(&app, "pro").await;

    let first = checkout
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Subscription, vec![item(&monthly, 2)]),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(first.id.starts_with("checkout_"));
    assert_eq!(first.status, CheckoutSessionStatus::Open as i32);
    // A 14-day trial: nothing is due today.
    assert_eq!(
        first.payment_status,
        CheckoutPaymentStatus::NoPaymentRequired as i32
    );
    assert_eq!(first.trial_days, 14);
    assert_eq!(first.provider_account, "acme-sandbox");
    assert!(first.provider_session_id.starts_with("cs_sbx_"));
    assert_eq!(
        first.url,
        format!(
            "{PUBLIC_URL}/sandbox/checkout/{}",
            first.provider_session_id
        )
    );
    assert_eq!(first.amount_total, 5_800);
    assert_eq!(first.currency, "USD");
    assert_eq!(first.line_items[0].unit_amount, 2_900);
    assert_eq!(first.line_items[0].amount_total, 5_800);
    assert_eq!(first.line_items[0].name, "Plan pro");
    // The expiry is taken from the account's clock when the call begins, the create time
    // when the row is written a moment later: a second may tick between them.
    let expires = first.expires_at.unwrap().seconds - first.create_time.unwrap().seconds;
    assert!((24 * 3600 - 1..=24 * 3600).contains(&expires), "{expires}");

    // The journal: both operations written and succeeded, and the customer mapped.
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM provider_operations WHERE status = 'succeeded'"
        )
        .await,
        2
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM provider_objects WHERE kind = 'customer'"
        )
        .await,
        1
    );

    // A second session for alice, one-time and inline, reuses her sandbox customer.
    let second = checkout
        .create_checkout_session(req(
            CreateCheckoutSessionRequest {
                expires_in_seconds: Some(1800),
                ..session(
                    &alice,
                    CheckoutMode::Payment,
                    vec![inline(12_345, "USD", 3)],
                )
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.amount_total, 37_035);
    assert_eq!(second.payment_status, CheckoutPaymentStatus::Unpaid as i32);
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM provider_operations WHERE kind = 'create_customer'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM sandbox_customers").await,
        1
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM provider_objects WHERE kind = 'checkout_session'"
        )
        .await,
        2
    );

    let got = checkout
        .get_checkout_session(req(
            GetCheckoutSessionRequest {
                id: first.id.clone(),
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, first);

    // Provider calls are counted by provider, operation and outcome.
    let (_, metrics) = http_get(app.admin_addr, "/metrics").await;
    for line in [
        r#"coffer_provider_calls_total{provider="sandbox",operation="create_customer",outcome="succeeded"} 1"#,
        r#"coffer_provider_calls_total{provider="sandbox",operation="create_checkout_session",outcome="succeeded"} 2"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn each_invalid_field_is_named() {
    let (app, _) = spawn("").await;
    let mut checkout = client(&app).await;
    let alice = customer(&app, &app.key, "alice").await;
    let (_, [monthly, yearly, once]) = plan(&app, "pro").await;
    let pay = |items| session(&alice, CheckoutMode::Payment, items);
    let sub = |items| session(&alice, CheckoutMode::Subscription, items);

    let cases: Vec<(CreateCheckoutSessionRequest, &str)> = vec![
        (
            CreateCheckoutSessionRequest {
                mode: 0,
                ..pay(vec![item(&once, 1)])
            },
            "mode",
        ),
        (
            CreateCheckoutSessionRequest {
                customer: None,
                ..pay(vec![item(&once, 1)])
            },
            "customer_id",
        ),
        (pay(vec![]), "line_items"),
        (pay(vec![item(&once, 0)]), "line_items[0].quantity"),
        (
            pay(vec![item(&once, 1), item(&once, 1001)]),
            "line_items[1].quantity",
        ),
        (pay(vec![item("price_x", 1)]), "line_items[0].price_id"),
        (
            pay(vec![inline(0, "USD", 1)]),
            "line_items[0].price_data.amount",
        ),
        (
            pay(vec![inline(100, "usd", 1)]),
            "line_items[0].price_data.currency",
        ),
        (
            sub(vec![inline(1_000, "USD", 1)]),
            "line_items[0].price_data",
        ),
        (
            pay(vec![item(&once, 1), inline(1_000, "EUR", 1)]),
            "line_items[1]",
        ),
        (pay(vec![item(&monthly, 1)]), "line_items[0].price_id"),
        (sub(vec![item(&once, 1)]), "line_items[0].price_id"),
        (
            sub(vec![item(&monthly, 1), item(&yearly, 1)]),
            "line_items[1].price_id",
        ),
        (
            CreateCheckoutSessionRequest {
                success_url: "http://shop.acme.example/ok".into(),
                ..pay(vec![item(&once, 1)])
            },
            "success_url",
        ),
        (
            CreateCheckoutSessionRequest {
                success_url: "/ok".into(),
                ..pay(vec![item(&once, 1)])
            },
            "success_url",
        ),
        (
            CreateCheckoutSessionRequest {
                cancel_url: "https://shop.acme.example/{CHECKOUT_SESSION_ID}".into(),
                ..pay(vec![item(&once, 1)])
            },
            "cancel_url",
        ),
        (
            CreateCheckoutSessionRequest {
                expires_in_seconds: Some(1799),
                ..pay(vec![item(&once, 1)])
            },
            "expires_in_seconds",
        ),
        (
            CreateCheckoutSessionRequest {
                expires_in_seconds: Some(86_401),
                ..pay(vec![item(&once, 1)])
            },
            "expires_in_seconds",
        ),
        (
            CreateCheckoutSessionRequest {
                trial_days: Some(7),
                ..pay(vec![item(&once, 1)])
            },
            "trial_days",
        ),
        (
            CreateCheckoutSessionRequest {
                account: "Not An Account".into(),
                ..pay(vec![item(&once, 1)])
            },
            "account",
        ),
    ];
    for (request, field) in cases {
        let e = checkout
            .create_checkout_session(req(request.clone(), &app.key))
            .await
            .expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        let (reason, fields) = details(&e);
        assert_eq!(reason, "INVALID_REQUEST");
        assert!(fields.contains(&field.to_string()), "{field}: {fields:?}");
    }

    // Well-formed but unknown or unsellable.
    let unknown = coffer::domain::ids::PriceId::generate().to_string();
    let e = checkout
        .create_checkout_session(req(pay(vec![item(&unknown, 1)]), &app.key))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::NotFound, "PRICE_NOT_FOUND")
    );
    let nobody = coffer::domain::ids::CustomerId::generate().to_string();
    let e = checkout
        .create_checkout_session(req(
            session(&nobody, CheckoutMode::Payment, vec![item(&once, 1)]),
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::NotFound, "CUSTOMER_NOT_FOUND")
    );

    let (archived, [_, _, old]) = plan(&app, "legacy").await;
    app.subscriptions()
        .await
        .archive_plan(req(ArchivePlanRequest { id: archived }, &app.key))
        .await
        .unwrap();
    let e = checkout
        .create_checkout_session(req(pay(vec![item(&old, 1)]), &app.key))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::FailedPrecondition, "PLAN_ARCHIVED")
    );

    // Nothing reached the provider.
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM sandbox_checkout_sessions").await,
        0
    );
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM checkout_sessions").await,
        0
    );
}

#[tokio::test]
async fn redirects_only_to_the_tenants_origins() {
    let (app, _) = spawn(
        "[tenant.acme]\nallowed_redirect_origins = [\"https://shop.acme.example\", \"http://localhost:3000\"]\n",
    )
    .await;
    let mut checkout = client(&app).await;
    let alice = customer(&app, &app.key, "alice").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;
    for (success, cancel, bad) in [
        (
            "https://evil.example/ok",
            "https://shop.acme.example/c",
            Some("success_url"),
        ),
        (
            "https://shop.acme.example/ok",
            "https://shop.acme.example.evil.example/c",
            Some("cancel_url"),
        ),
        (
            "https://shop.acme.example:8443/ok",
            "https://shop.acme.example/c",
            Some("success_url"),
        ),
        (
            "https://user@shop.acme.example/ok",
            "https://shop.acme.example/c",
            Some("success_url"),
        ),
        (
            "http://localhost:3000/ok?id={CHECKOUT_SESSION_ID}",
            "https://shop.acme.example/c",
            None,
        ),
    ] {
        let result = checkout
            .create_checkout_session(req(
                CreateCheckoutSessionRequest {
                    success_url: success.into(),
                    cancel_url: cancel.into(),
                    ..session(&alice, CheckoutMode::Payment, vec![item(&once, 1)])
                },
                &app.key,
            ))
            .await;
        match bad {
            Some(field) => {
                let e = result.expect_err(success);
                assert_eq!(e.code(), Code::InvalidArgument);
                assert_eq!(details(&e).1, vec![field.to_string()], "{success} {cancel}");
            }
            None => {
                result.expect(success);
            }
        }
    }
}

#[tokio::test]
async fn a_replay_returns_the_same_session_from_one_operation() {
    let (app, _) = spawn("").await;
    let mut checkout = client(&app).await;
    let alice = customer(&app, &app.key, "alice").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;
    let request = session(&alice, CheckoutMode::Payment, vec![item(&once, 1)]);

    let first = checkout
        .create_checkout_session(idem(request.clone(), &app.key, "k1"))
        .await
        .unwrap();
    assert!(first.metadata().get("idempotent-replayed").is_none());
    let again = checkout
        .create_checkout_session(idem(request.clone(), &app.key, "k1"))
        .await
        .unwrap();
    assert_eq!(again.metadata().get("idempotent-replayed").unwrap(), "true");
    assert_eq!(again.get_ref(), first.get_ref());
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM provider_operations WHERE kind = 'create_checkout_session'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM sandbox_checkout_sessions").await,
        1
    );

    let other = CreateCheckoutSessionRequest {
        metadata: [("order".to_string(), "42".to_string())].into(),
        ..request
    };
    let e = checkout
        .create_checkout_session(idem(other, &app.key, "k1"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::FailedPrecondition, "IDEMPOTENCY_KEY_REUSED")
    );
}

#[tokio::test]
async fn a_concurrent_duplicate_is_aborted() {
    let (app, _) = spawn("").await;
    let alice = customer(&app, &app.key, "alice").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;
    let request = session(&alice, CheckoutMode::Payment, vec![item(&once, 1)]);

    // Hold the sandbox's sessions table, so the first call waits inside its provider call.
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE sandbox_checkout_sessions IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut first_client = client(&app).await;
    let first_request = idem(request.clone(), &app.key, "same");
    let first =
        tokio::spawn(async move { first_client.create_checkout_session(first_request).await });
    // Wait until the first attempt holds its key.
    assert!(
        eventually(Duration::from_secs(5), || async {
            scalar(&app, "SELECT count(*) FROM idempotency_keys").await == 1
        })
        .await
    );
    let e = client(&app)
        .await
        .create_checkout_session(idem(request, &app.key, "same"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::Aborted, "IDEMPOTENCY_KEY_IN_USE")
    );
    blocker.rollback().await.unwrap();
    let first = first.await.unwrap().unwrap().into_inner();
    assert_eq!(first.status, CheckoutSessionStatus::Open as i32);
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM sandbox_checkout_sessions").await,
        1
    );
}

#[tokio::test]
async fn concurrent_sessions_of_a_new_customer_share_one_provider_customer() {
    let (app, _) = spawn("").await;
    let alice = customer(&app, &app.key, "alice").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut checkout = client(&app).await;
        let request = req(
            session(&alice, CheckoutMode::Payment, vec![item(&once, 1)]),
            &app.key,
        );
        calls.push(tokio::spawn(async move {
            checkout.create_checkout_session(request).await
        }));
    }
    for call in calls {
        let s = call.await.unwrap().unwrap().into_inner();
        assert_eq!(s.status, CheckoutSessionStatus::Open as i32);
    }
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM sandbox_customers").await,
        1
    );
    assert_eq!(
        scalar(
            &app,
            "SELECT count(*) FROM provider_operations WHERE kind = 'create_customer'"
        )
        .await,
        1
    );
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM sandbox_checkout_sessions").await,
        8
    );
}

#[tokio::test]
async fn tenants_see_only_their_own_sessions_and_accounts() {
    let (app, _) = spawn("").await;
    let mut checkout = client(&app).await;
    let alice = customer(&app, &app.key, "alice").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;
    let acme = checkout
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Payment, vec![item(&once, 1)]),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();

    // A tenant created after the server started gets its own sandbox account.
    let globex = app.tenant("globex").await;
    let e = checkout
        .get_checkout_session(req(
            GetCheckoutSessionRequest {
                id: acme.id.clone(),
            },
            &globex,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::NotFound, "CHECKOUT_SESSION_NOT_FOUND")
    );
    let listed = checkout
        .list_checkout_sessions(req(ListCheckoutSessionsRequest::default(), &globex))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.checkout_sessions.is_empty());
    // Acme's customer is not globex's.
    let e = checkout
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Payment, vec![inline(500, "USD", 1)]),
            &globex,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Nor is acme's account.
    let bob = customer(&app, &globex, "bob").await;
    let e = checkout
        .create_checkout_session(req(
            CreateCheckoutSessionRequest {
                account: "acme-sandbox".into(),
                ..session(&bob, CheckoutMode::Payment, vec![inline(500, "USD", 1)])
            },
            &globex,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::NotFound, "ACCOUNT_NOT_FOUND")
    );
    let own = checkout
        .create_checkout_session(req(
            session(&bob, CheckoutMode::Payment, vec![inline(500, "USD", 1)]),
            &globex,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(own.provider_account, "globex-sandbox");
    // Each sandbox account has its own signing secret, kept across restarts in the table.
    assert_eq!(
        scalar(
            &app,
            "SELECT count(DISTINCT webhook_secret) FROM sandbox_accounts"
        )
        .await,
        2
    );
}

#[tokio::test]
async fn only_open_sessions_expire() {
    let (app, _) = spawn("").await;
    let mut checkout = client(&app).await;
    let alice = customer(&app, &app.key, "alice").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;
    let open = checkout
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Payment, vec![item(&once, 1)]),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let expire = ExpireCheckoutSessionRequest {
        id: open.id.clone(),
    };
    let expired = checkout
        .expire_checkout_session(idem(expire.clone(), &app.key, "x1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expired.status, CheckoutSessionStatus::Expired as i32);
    assert_eq!(expired.id, open.id);
    // The provider's side too, with a newer version.
    let (status, version): (String, i64) =
        sqlx::query_as("SELECT status, version FROM sandbox_checkout_sessions")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), version), ("expired", 2));
    // ... and the sandbox queued the event reporting it, once, with that version.
    let events: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT event_type, body FROM sandbox_outbox ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(events.len(), 1, "one event: {events:?}");
    assert_eq!(events[0].0, "checkout.session.expired");
    let body: serde_json::Value = serde_json::from_slice(&events[0].1).unwrap();
    assert_eq!(body["data"]["object"]["status"], "expired");
    assert_eq!(body["data"]["object"]["version"], 2);
    // A replay under the same key answers the same; a new expiry is refused.
    let replay = checkout
        .expire_checkout_session(idem(expire.clone(), &app.key, "x1"))
        .await
        .unwrap();
    assert_eq!(replay.get_ref(), &expired);
    let e = checkout
        .expire_checkout_session(req(expire, &app.key))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::FailedPrecondition, "CHECKOUT_SESSION_NOT_OPEN")
    );
    let e = checkout
        .expire_checkout_session(req(
            ExpireCheckoutSessionRequest {
                id: coffer::domain::ids::CheckoutId::generate().to_string(),
            },
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn lists_filter_by_customer_and_status_and_page() {
    let (app, _) = spawn("").await;
    let mut checkout = client(&app).await;
    let alice = customer(&app, &app.key, "alice").await;
    let bob = customer(&app, &app.key, "bob").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;
    let mut alices = Vec::new();
    for who in [&alice, &bob, &alice, &alice] {
        let s = checkout
            .create_checkout_session(req(
                session(who, CheckoutMode::Payment, vec![item(&once, 1)]),
                &app.key,
            ))
            .await
            .unwrap()
            .into_inner();
        if *who == alice {
            alices.push(s.id);
        }
    }
    checkout
        .expire_checkout_session(req(
            ExpireCheckoutSessionRequest {
                id: alices[1].clone(),
            },
            &app.key,
        ))
        .await
        .unwrap();
    let list = |page_size, page_token: &str, customer_id: &str, status: CheckoutSessionStatus| {
        ListCheckoutSessionsRequest {
            page_size,
            page_token: page_token.into(),
            customer_id: customer_id.into(),
            status: status as i32,
        }
    };
    let first = checkout
        .list_checkout_sessions(req(
            list(2, "", &alice, CheckoutSessionStatus::Unspecified),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = first
        .checkout_sessions
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(ids, alices[..2]);
    assert!(!first.next_page_token.is_empty());
    let second = checkout
        .list_checkout_sessions(req(
            list(
                2,
                &first.next_page_token,
                &alice,
                CheckoutSessionStatus::Unspecified,
            ),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.checkout_sessions.len(), 1);
    assert_eq!(second.checkout_sessions[0].id, alices[2]);
    assert!(second.next_page_token.is_empty());

    let expired = checkout
        .list_checkout_sessions(req(
            list(0, "", "", CheckoutSessionStatus::Expired),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expired.checkout_sessions.len(), 1);
    assert_eq!(expired.checkout_sessions[0].id, alices[1]);
    let open = checkout
        .list_checkout_sessions(req(list(0, "", "", CheckoutSessionStatus::Open), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(open.checkout_sessions.len(), 3);

    // A token is bound to its filters.
    let e = checkout
        .list_checkout_sessions(req(
            list(
                2,
                &first.next_page_token,
                &bob,
                CheckoutSessionStatus::Unspecified,
            ),
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(details(&e).1, vec!["page_token".to_string()]);
}

#[tokio::test]
async fn a_lost_provider_answer_is_settled_by_fetching() {
    let (app, faults) = spawn("").await;
    let mut checkout = client(&app).await;
    let alice = customer(&app, &app.key, "alice").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;
    // A first session makes alice's sandbox customer, so the fault hits the session itself.
    checkout
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Payment, vec![item(&once, 1)]),
            &app.key,
        ))
        .await
        .unwrap();

    faults.lose_next_answers(1);
    let request = session(&alice, CheckoutMode::Payment, vec![item(&once, 2)]);
    let e = checkout
        .create_checkout_session(idem(request.clone(), &app.key, "lost"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::Unavailable, "PROVIDER_OUTCOME_UNKNOWN")
    );
    // The sandbox made the session; the resolver finds it by Coffer's id and records it.
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM sandbox_checkout_sessions").await,
        2
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            scalar(
                &app,
                "SELECT count(*) FROM provider_operations
                 WHERE kind = 'create_checkout_session' AND status = 'succeeded'",
            )
            .await
                == 2
        })
        .await,
        "the resolver settled the unknown operation"
    );
    let op: (i32, i32) = sqlx::query_as(
        "SELECT generation, resolve_attempts FROM provider_operations WHERE idempotency_key = 'lost'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(op.0, 1, "settled by fetching, not by calling again");
    assert!(op.1 >= 1);

    // The caller's retry under the same key gets the session the lost call made.
    let retried = checkout
        .create_checkout_session(idem(request, &app.key, "lost"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.amount_total, 19_800);
    assert_eq!(
        scalar(&app, "SELECT count(*) FROM sandbox_checkout_sessions").await,
        2
    );
    let session_ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT coffer_id FROM provider_operations WHERE idempotency_key = 'lost'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        coffer::domain::ids::CheckoutId::from_uuid(session_ids[0]).to_string(),
        retried.id
    );
}

#[tokio::test]
async fn a_retry_after_a_refused_call_is_a_new_generation() {
    let (app, faults) = spawn("").await;
    let mut checkout = client(&app).await;
    let alice = customer(&app, &app.key, "alice").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;
    checkout
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Payment, vec![item(&once, 1)]),
            &app.key,
        ))
        .await
        .unwrap();
    faults.refuse_next(1);
    let request = session(&alice, CheckoutMode::Payment, vec![item(&once, 3)]);
    let e = checkout
        .create_checkout_session(idem(request.clone(), &app.key, "refused"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::Unavailable, "PROVIDER_UNAVAILABLE")
    );
    let retried = checkout
        .create_checkout_session(idem(request, &app.key, "refused"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.status, CheckoutSessionStatus::Open as i32);
    let (generation, status): (i32, String) = sqlx::query_as(
        "SELECT generation, status FROM provider_operations WHERE idempotency_key = 'refused'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((generation, status.as_str()), (2, "succeeded"));
}

#[tokio::test]
async fn without_the_sandbox_there_is_no_account() {
    let app = TestApp::spawn().await;
    let alice = customer(&app, &app.key, "alice").await;
    let e = client(&app)
        .await
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Payment, vec![inline(500, "USD", 1)]),
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::FailedPrecondition, "NO_PROVIDER_ACCOUNT")
    );
}

/// The real binary: `serve --sandbox` gives acme its sandbox account, with URLs on
/// COFFER_PUBLIC_URL and a signing secret that survives a restart; without the flag there is
/// no account to check out on.
#[tokio::test]
async fn serve_sandbox_enables_the_sandbox_in_the_real_binary() {
    use crate::binary::{Served, TempDir, acme};
    let db = crate::helpers::TestDb::new().await;
    let state = TempDir::new();
    let (pool, _, key) = acme(&db).await;
    let env = [("COFFER_PUBLIC_URL", "https://pay.example.test/".to_string())];
    let open_one = |served: &Served, key: String| {
        let grpc = served.grpc.clone();
        async move {
            let channel = Channel::from_shared(grpc).unwrap().connect().await.unwrap();
            let alice = coffer::grpc::pb::customers_client::CustomersClient::new(channel.clone())
                .create_customer(req(CreateCustomerRequest::default(), &key))
                .await
                .unwrap()
                .into_inner()
                .id;
            CheckoutClient::new(channel)
                .create_checkout_session(req(
                    session(&alice, CheckoutMode::Payment, vec![inline(500, "USD", 1)]),
                    &key,
                ))
                .await
        }
    };

    let served = Served::start(&db, &state.0, &["--sandbox"], &env).await;
    let s = open_one(&served, key.clone()).await.unwrap().into_inner();
    assert_eq!(s.provider_account, "acme-sandbox");
    assert!(
        s.url
            .starts_with("https://pay.example.test/sandbox/checkout/cs_sbx_"),
        "{}",
        s.url
    );
    let secret: String = sqlx::query_scalar("SELECT webhook_secret FROM sandbox_accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(secret.starts_with("whsec_"));
    assert!(
        !served.logs().contains(&secret),
        "the secret is never logged"
    );
    served.sigterm();
    assert_eq!(served.wait().await.0, Some(0));

    // Restarted, the account and its secret are the same.
    let served = Served::start(&db, &state.0, &["--sandbox"], &env).await;
    open_one(&served, key.clone()).await.unwrap();
    let secrets: Vec<String> = sqlx::query_scalar("SELECT webhook_secret FROM sandbox_accounts")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(secrets, vec![secret]);
    served.sigterm();
    assert_eq!(served.wait().await.0, Some(0));

    let served = Served::start(&db, &state.0, &[], &env).await;
    let e = open_one(&served, key).await.unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::FailedPrecondition, "NO_PROVIDER_ACCOUNT")
    );
}

/// A crash between the journal's commit and the outcome's record leaves an operation pending;
/// once past its deadline the resolver settles it by fetching: found, the session is recorded;
/// never made, the operation fails (so a retry is a new generation).
#[tokio::test]
async fn stale_pending_operations_are_settled_by_the_resolver() {
    let (app, _) = spawn("").await;
    let mut checkout = client(&app).await;
    let alice = customer(&app, &app.key, "alice").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let s = checkout
            .create_checkout_session(req(
                session(&alice, CheckoutMode::Payment, vec![item(&once, 1)]),
                &app.key,
            ))
            .await
            .unwrap()
            .into_inner();
        ids.push(s.id);
    }
    // Rewind both to "written, then the process died": pending, past the deadline, the
    // session not yet recorded; and the provider never got the second.
    sqlx::query(
        "UPDATE provider_operations SET status = 'pending', provider_id = NULL,
                next_resolve_at = now() - interval '1 second'
         WHERE kind = 'create_checkout_session'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE checkout_sessions SET provider_session_id = NULL, url = NULL")
        .execute(&app.pool)
        .await
        .unwrap();
    let second = coffer::domain::ids::CheckoutId::parse(&ids[1]).unwrap();
    sqlx::query("DELETE FROM sandbox_checkout_sessions WHERE client_reference = $1")
        .bind(second.as_uuid())
        .execute(&app.pool)
        .await
        .unwrap();
    let e = checkout
        .get_checkout_session(req(
            GetCheckoutSessionRequest { id: ids[0].clone() },
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::NotFound,
        "unrecorded sessions are not shown"
    );

    assert!(
        eventually(Duration::from_secs(10), || async {
            scalar(
                &app,
                "SELECT count(*) FROM provider_operations
                 WHERE kind = 'create_checkout_session' AND status IN ('succeeded', 'failed')",
            )
            .await
                == 2
        })
        .await
    );
    let found = checkout
        .get_checkout_session(req(
            GetCheckoutSessionRequest { id: ids[0].clone() },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.status, CheckoutSessionStatus::Open as i32);
    let status: String =
        sqlx::query_scalar("SELECT status FROM provider_operations WHERE coffer_id = $1")
            .bind(second.as_uuid())
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(status, "failed");
}

/// The real binary with the sandbox, end to end: a card paid on the hosted page is delivered,
/// signed, over HTTP to the process's own sidecar and acknowledged by a process that runs no
/// inbox workers; SIGKILLed before anything applied it, the next process applies it: the
/// session is COMPLETE and PAID, its payment SUCCEEDED.
#[tokio::test]
async fn a_payment_acknowledged_by_a_killed_binary_is_applied_after_restart() {
    use coffer::grpc::pb::{
        CheckoutPaymentStatus, GetCheckoutSessionRequest, GetPaymentRequest, PaymentStatus,
    };

    use crate::binary::{Served, TempDir, acme};
    let db = crate::helpers::TestDb::new().await;
    let state = TempDir::new();
    let (pool, _, key) = acme(&db).await;
    let served = Served::start(&db, &state.0, &["--sandbox", "--inbox-workers", "0"], &[]).await;
    let channel = Channel::from_shared(served.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let alice = coffer::grpc::pb::customers_client::CustomersClient::new(channel.clone())
        .create_customer(req(CreateCustomerRequest::default(), &key))
        .await
        .unwrap()
        .into_inner()
        .id;
    let s = CheckoutClient::new(channel)
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Payment, vec![inline(1250, "USD", 1)]),
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    let paid = coffer::providers::outbound::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(&s.url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(crate::sandbox_page::form(&[
            ("number", "4242 4242 4242 4242"),
            ("expiry", "12 / 34"),
            ("cvc", "123"),
            ("name", "Ada Lovelace"),
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), 303, "{}", served.logs());

    // payment.succeeded and checkout.session.completed: delivered, so acknowledged, so stored;
    // nothing applied them.
    let delivered = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM sandbox_outbox WHERE status = 'delivered'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert!(
        eventually(Duration::from_secs(15), || async { delivered().await == 2 }).await,
        "{}",
        served.logs()
    );
    let inbox: Vec<String> = sqlx::query_scalar("SELECT status FROM webhook_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(inbox, ["pending", "pending"]);
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &served.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(served);

    let served = Served::start(
        &db,
        &state.0,
        &["--sandbox", "--inbox-workers", "2", "--inbox-poll", "50ms"],
        &[],
    )
    .await;
    let channel = Channel::from_shared(served.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut checkout = CheckoutClient::new(channel);
    let get = GetCheckoutSessionRequest { id: s.id.clone() };
    let applied = eventually(Duration::from_secs(15), || {
        let (mut checkout, get, key) = (checkout.clone(), get.clone(), key.clone());
        async move {
            checkout
                .get_checkout_session(req(get, &key))
                .await
                .unwrap()
                .into_inner()
                .status
                == CheckoutSessionStatus::Complete as i32
        }
    })
    .await;
    let got = checkout
        .get_checkout_session(req(get, &key))
        .await
        .unwrap()
        .into_inner();
    assert!(applied, "{got:?}\n{}", served.logs());
    assert_eq!(got.payment_status, CheckoutPaymentStatus::Paid as i32);
    let payment = checkout
        .get_payment(req(
            GetPaymentRequest {
                id: got.payment_id.clone(),
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(payment.status, PaymentStatus::Succeeded as i32);
    assert_eq!(
        (payment.amount, payment.card_last4.as_str()),
        (1250, "4242")
    );
    served.sigterm();
    let (code, logs) = served.wait().await;
    assert_eq!(code, Some(0), "{logs}");
}

/// A session's expiry is on its account's clock: after AdvanceClock moves a sandbox account a
/// day and more ahead, a new session ends 24 hours after the account's time (not the wall
/// clock's, which is already past), so Coffer and the hosted page agree it is open.
#[tokio::test]
async fn a_session_expires_on_its_accounts_clock() {
    use coffer::grpc::pb::AdvanceClockRequest;
    use coffer::grpc::pb::sandbox_client::SandboxClient;

    let app = TestApp::spawn_configured("", &[], |config| {
        config.sandbox = Some(SandboxConfig {
            public_url: PUBLIC_URL.into(),
            ..SandboxConfig::default()
        });
        config.http_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let ahead = time::OffsetDateTime::now_utc() + time::Duration::hours(30);
    SandboxClient::new(app.channel().await)
        .advance_clock(req(
            AdvanceClockRequest {
                account: String::new(),
                to: Some(prost_types::Timestamp {
                    seconds: ahead.unix_timestamp(),
                    nanos: 0,
                }),
            },
            &app.key,
        ))
        .await
        .unwrap();
    let alice = customer(&app, &app.key, "alice").await;
    let s = client(&app)
        .await
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Payment, vec![inline(2_500, "USD", 1)]),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let expires = s.expires_at.unwrap().seconds;
    let expected = (ahead + time::Duration::hours(24)).unix_timestamp();
    assert!(
        (expected - 5..=expected + 5).contains(&expires),
        "expires at {expires}, expected about {expected} (the account's time + 24 h)"
    );
    // The hosted page takes a card: it is open on the account's clock too.
    let path = s
        .url
        .split_once("/sandbox/")
        .map(|(_, p)| format!("/sandbox/{p}"))
        .unwrap();
    let (status, page) = http_get(app.http_addr.unwrap(), &path).await;
    assert_eq!(status, 200);
    assert!(!page.contains("This checkout has expired"), "{page}");
    app.stop().await.unwrap();
}
