//! A Polar account end to end, against a fake Polar on loopback that follows Polar's published
//! wire format ([`fake`]): checkouts through Coffer's gRPC API, Polar's signed webhooks through
//! the sidecar, fetched and applied by the inbox; refunds; an unknown outcome settled by
//! fetching; Polar's validation errors; events about objects Coffer has not seen; a provider
//! that fails while an event is applied; subscriptions and customer portal sessions.

mod fake;
mod lifecycle;
mod meters;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::Method;
use coffer::app::inbox::InboxConfig;
use coffer::domain::account::{Account, AccountName, ProviderKind, Secret};
use coffer::domain::ids::TenantId;
use coffer::domain::ids::{CheckoutId, CustomerId};
use coffer::domain::subscription::SubscriptionStatus as DomainSubscriptionStatus;
use coffer::grpc::pb::{
    CheckoutMode, CheckoutPaymentStatus, CheckoutSessionStatus, CreateCheckoutSessionRequest,
    CreateCustomerRequest, GetCheckoutSessionRequest, GetPaymentRequest, PaymentStatus,
    RefundPaymentRequest, RefundStatus,
};
use coffer::grpc::pb::{
    ListSubscriptionsRequest, SubscriptionStatus, VerifyCheckoutSessionRequest,
};
use coffer::providers::ProviderError;
use coffer::providers::outbound::{BreakerConfig, Outbound, OutboundConfig, OutboundMetrics};
use coffer::providers::polar::Polar;
use serde_json::json;
use tonic::Code;

use self::fake::{FakePolar, Fault, TOKEN, WEBHOOK_SECRET};
use crate::checkout::{client, inline, item, plan, session};
use crate::helpers::{TestApp, details, eventually, idem, req};

const ACCOUNT: &str = "polar-main";
const WAIT: Duration = Duration::from_secs(15);

/// Coffer with one Polar account on `fake`, the tenant's default, its sidecar and one inbox
/// worker running; a short outbound configuration (a 3 s attempt, quick retries, a breaker
/// that does not open in a test).
async fn spawn(fake: &FakePolar) -> (TestApp, SocketAddr) {
    spawn_waiting(fake, Duration::from_secs(3)).await
}

/// [`spawn`] with each attempt given `attempt` (the deadline a second more).
async fn spawn_waiting(fake: &FakePolar, attempt: Duration) -> (TestApp, SocketAddr) {
    let toml = format!(
        r#"
[[account]]
name = "{ACCOUNT}"
tenant = "acme"
provider = "polar"
api_key_env = "POLAR_ACCESS_TOKEN"
webhook_secret_env = "POLAR_WEBHOOK_SECRET"
api_base = "http://{}"

[tenant.acme]
default_account = "{ACCOUNT}"
"#,
        fake.addr
    );
    let app = TestApp::spawn_configured(
        &toml,
        &[
            ("POLAR_ACCESS_TOKEN", TOKEN),
            ("POLAR_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ],
        |c| {
            c.http_addr = Some("127.0.0.1:0".parse().unwrap());
            c.resolve_interval = Duration::from_millis(100);
            c.usage_push = coffer::app::usage_push::PushConfig {
                interval: Duration::from_millis(200),
                resend_after: Duration::from_secs(2),
                ..Default::default()
            };
            c.inbox = InboxConfig {
                workers: 1,
                batch: 8,
                poll: Duration::from_millis(20),
                backoff_base: Duration::from_millis(20),
                backoff_cap: Duration::from_millis(200),
                ..InboxConfig::default()
            };
            c.outbound = OutboundConfig {
                connect_timeout: Duration::from_millis(500),
                attempt_timeout: attempt,
                deadline: attempt + Duration::from_secs(1),
                max_attempts: 3,
                base_backoff: Duration::from_millis(10),
                max_backoff: Duration::from_millis(50),
                breaker: BreakerConfig {
                    minimum_calls: 1_000_000,
                    ..BreakerConfig::default()
                },
                ..OutboundConfig::default()
            };
        },
    )
    .await;
    let sidecar = app.http_addr.expect("the sidecar runs");
    (app, sidecar)
}

fn hook(sidecar: SocketAddr) -> String {
    format!("http://{sidecar}/webhooks/{ACCOUNT}")
}

async fn customer(app: &TestApp, external_id: &str, email: &str) -> String {
    app.customers()
        .await
        .create_customer(req(
            CreateCustomerRequest {
                external_id: external_id.into(),
                email: email.into(),
                name: "Alice Liddell".into(),
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .id
}

/// The UUID behind Coffer's public customer id: what Polar's external id carries.
fn customer_uuid(id: &str) -> String {
    CustomerId::parse(id).unwrap().as_uuid().to_string()
}

/// The UUID behind Coffer's public checkout id: what Polar's metadata carries.
fn checkout_uuid(id: &str) -> String {
    CheckoutId::parse(id).unwrap().as_uuid().to_string()
}

/// The statuses of the stored Polar events, oldest first.
async fn events(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query_as("SELECT event_type, status FROM webhook_events ORDER BY received_at")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

async fn all_processed(app: &TestApp, n: usize) -> bool {
    let e = events(app).await;
    e.len() == n && e.iter().all(|(_, s)| s == "processed")
}

/// An OPEN PAYMENT checkout for a new customer "alice", of the "pro" plan's one-time price.
async fn open_payment_checkout(app: &TestApp) -> coffer::grpc::pb::CheckoutSession {
    let alice = customer(app, "alice", "alice@example.com").await;
    let (_, [_, _, once]) = plan(app, "pro").await;
    client(app)
        .await
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Payment, vec![item(&once, 1)]),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn get_session(app: &TestApp, id: &str) -> coffer::grpc::pb::CheckoutSession {
    client(app)
        .await
        .get_checkout_session(req(GetCheckoutSessionRequest { id: id.into() }, &app.key))
        .await
        .unwrap()
        .into_inner()
}

async fn get_payment(app: &TestApp, id: &str) -> coffer::grpc::pb::Payment {
    client(app)
        .await
        .get_payment(req(GetPaymentRequest { id: id.into() }, &app.key))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_checkout_is_paid_through_signed_events_and_refunded() {
    let fake = FakePolar::start().await;
    let (app, sidecar) = spawn(&fake).await;
    let alice = customer(&app, "alice", "alice@example.com").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;

    let created = client(&app)
        .await
        .create_checkout_session(req(
            CreateCheckoutSessionRequest {
                expires_in_seconds: Some(3_600),
                ..session(&alice, CheckoutMode::Payment, vec![item(&once, 1)])
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.status(), CheckoutSessionStatus::Open);
    assert_eq!(created.provider_account, ACCOUNT);
    // Polar keeps its checkout open a day; Coffer's session ends when the caller asked.
    let expires = created.expires_at.unwrap().seconds;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (now + 3_500..=now + 3_600).contains(&expires),
        "{expires} vs {now}"
    );

    // On Polar: the customer by Coffer's id, the price as a private product, the checkout
    // of that product carrying Coffer's reference — each made once, none with a key Polar
    // would ignore.
    let customers = fake.all("customers");
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0]["email"], "alice@example.com");
    assert_eq!(customers[0]["external_id"], customer_uuid(&alice).as_str());
    assert_eq!(customers[0]["metadata"]["coffer_external_id"], "alice");
    let products = fake.all("products");
    assert_eq!(products.len(), 1);
    assert_eq!(products[0]["visibility"], "private");
    assert_eq!(products[0]["is_recurring"], false);
    assert_eq!(products[0]["prices"][0]["price_amount"], 9_900);
    assert_eq!(products[0]["prices"][0]["price_currency"], "usd");
    assert_eq!(products[0]["prices"][0]["tax_behavior"], "exclusive");
    assert!(products[0]["metadata"]["coffer_price_id"].is_string());
    assert!(
        fake.seen().iter().any(|s| s.method == Method::GET
            && s.path == "/v1/products/"
            && s.query.contains("metadata%5Bcoffer_price_id%5D=")),
        "looked up by its metadata before it was made"
    );
    let checkouts = fake.all("checkouts");
    assert_eq!(checkouts.len(), 1);
    let polar_checkout = checkouts[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(created.provider_session_id, polar_checkout);
    assert_eq!(created.url, checkouts[0]["url"].as_str().unwrap());
    assert_eq!(checkouts[0]["customer_id"], customers[0]["id"]);
    assert_eq!(checkouts[0]["allow_discount_codes"], false);
    assert_eq!(
        checkouts[0]["return_url"],
        "https://shop.acme.example/cancel"
    );
    assert_eq!(
        checkouts[0]["metadata"]["coffer_checkout_id"],
        checkout_uuid(&created.id).as_str()
    );
    assert!(
        fake.seen()
            .iter()
            .filter(|s| s.method == Method::POST)
            .all(|s| s.idempotency_key.is_none()),
        "Polar takes no idempotency keys: creates are sent without one"
    );
    assert!(
        fake.seen()
            .iter()
            .all(|s| s.version.as_deref() == Some(coffer::providers::polar::client::API_VERSION)),
        "every request pins Polar's API version"
    );

    // The buyer pays; Polar signs and sends checkout.updated and order.paid.
    let (order, _) = fake.pay(&polar_checkout);
    let url = hook(sidecar);
    assert_eq!(
        fake.deliver(
            &url,
            "checkout.updated",
            fake.object("checkouts", &polar_checkout)
        )
        .await,
        200
    );
    assert_eq!(
        fake.deliver(&url, "order.paid", fake.object("orders", &order))
            .await,
        200
    );
    assert!(
        eventually(WAIT, || all_processed(&app, 2)).await,
        "{:?}",
        events(&app).await
    );
    let paid = get_session(&app, &created.id).await;
    assert_eq!(paid.status(), CheckoutSessionStatus::Complete);
    assert_eq!(paid.payment_status(), CheckoutPaymentStatus::Paid);
    assert_eq!(paid.expires_at.unwrap().seconds, expires);
    let payment = get_payment(&app, &created.payment_id).await;
    assert_eq!(payment.status(), PaymentStatus::Succeeded);
    assert_eq!(payment.provider_payment_id, order);
    assert_eq!((payment.amount, payment.currency.as_str()), (9_900, "USD"));

    // A refund of part of it, through Coffer.
    let refund = client(&app)
        .await
        .refund_payment(idem(
            RefundPaymentRequest {
                payment_id: created.payment_id.clone(),
                amount: Some(4_000),
                ..Default::default()
            },
            &app.key,
            "refund-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refund.status(), RefundStatus::Succeeded);
    let refunds = fake.all("refunds");
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0]["order_id"], order.as_str());
    assert_eq!(refunds[0]["amount"], 4_000);
    assert!(refunds[0]["metadata"]["coffer_refund_id"].is_string());
    assert_eq!(
        fake.object("orders", &order)["status"],
        "partially_refunded"
    );
    assert_eq!(
        get_payment(&app, &created.payment_id).await.amount_refunded,
        4_000
    );

    // Polar's events about the refund change nothing more, and Polar still has one refund.
    let refund_id = refunds[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        fake.deliver(&url, "refund.created", fake.object("refunds", &refund_id))
            .await,
        200
    );
    assert_eq!(
        fake.deliver(&url, "order.refunded", fake.object("orders", &order))
            .await,
        200
    );
    assert!(
        eventually(WAIT, || all_processed(&app, 4)).await,
        "{:?}",
        events(&app).await
    );
    assert_eq!(
        get_payment(&app, &created.payment_id).await.amount_refunded,
        4_000
    );
    assert_eq!(fake.creates("refunds"), 1);

    // An event Coffer does not follow is stored and ignored.
    assert_eq!(
        fake.deliver(&url, "customer.created", fake.all("customers")[0].clone())
            .await,
        200
    );
    assert!(
        eventually(WAIT, || async {
            events(&app).await.last().map(|e| e.1.clone()) == Some("ignored".into())
        })
        .await
    );
}

#[tokio::test]
async fn an_inline_line_is_sold_as_a_named_product_with_its_total() {
    let fake = FakePolar::start().await;
    let (app, _) = spawn(&fake).await;
    let alice = customer(&app, "alice", "alice@example.com").await;
    let mut checkout = client(&app).await;
    for _ in 0..2 {
        checkout
            .create_checkout_session(req(
                session(&alice, CheckoutMode::Payment, vec![inline(2_500, "USD", 3)]),
                &app.key,
            ))
            .await
            .unwrap();
    }
    let products = fake.all("products");
    assert_eq!(products.len(), 1, "found again by its name");
    assert_eq!(products[0]["name"], "Consulting hour");
    assert_eq!(
        products[0]["metadata"]["coffer_line_name"],
        "Consulting hour"
    );
    for c in fake.all("checkouts") {
        assert_eq!(c["amount"], 7_500);
        assert_eq!(c["product_price"]["source"], "ad_hoc");
    }
    // Polar sells one product per checkout.
    let e = checkout
        .create_checkout_session(req(
            session(
                &alice,
                CheckoutMode::Payment,
                vec![inline(2_500, "USD", 1), inline(100, "USD", 1)],
            ),
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::FailedPrecondition, "PROVIDER_REJECTED")
    );
    assert!(
        e.message().contains("unsupported_line_items"),
        "{}",
        e.message()
    );
    assert_eq!(fake.creates("checkouts"), 2);
}

#[tokio::test]
async fn a_lost_answer_to_a_create_is_settled_by_fetching_one_checkout() {
    let fake = FakePolar::start().await;
    let (app, _) = spawn(&fake).await;
    let alice = customer(&app, "alice", "alice@example.com").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;
    // Polar makes the checkout but its answer comes after Coffer stopped waiting.
    fake.fail(
        Method::POST,
        "/v1/checkouts/",
        1,
        Fault::Slow(Duration::from_secs(5)),
    );
    let request = session(&alice, CheckoutMode::Payment, vec![item(&once, 2)]);
    let e = client(&app)
        .await
        .create_checkout_session(idem(request.clone(), &app.key, "lost"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::Unavailable, "PROVIDER_OUTCOME_UNKNOWN"),
        "{e:?}"
    );
    assert_eq!(
        fake.count(Method::POST, "/v1/checkouts/"),
        1,
        "not sent twice"
    );

    let retried = client(&app)
        .await
        .create_checkout_session(idem(request, &app.key, "lost"))
        .await
        .unwrap()
        .into_inner();
    let checkouts = fake.all("checkouts");
    assert_eq!(checkouts.len(), 1, "exactly one checkout on Polar");
    assert_eq!(fake.creates("checkouts"), 1);
    assert_eq!(
        retried.provider_session_id,
        checkouts[0]["id"].as_str().unwrap()
    );
    assert_eq!(retried.url, checkouts[0]["url"].as_str().unwrap());
    assert_eq!(retried.amount_total, 19_800);
    assert_eq!(retried.status(), CheckoutSessionStatus::Open);
    // The ad-hoc price carries the quantity.
    assert_eq!(checkouts[0]["amount"], 19_800);
    let generation: i32 = sqlx::query_scalar(
        "SELECT generation FROM provider_operations WHERE idempotency_key = 'lost'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(generation, 1, "settled by fetching, not by calling again");
}

#[tokio::test]
async fn a_validation_error_is_failed_precondition_and_not_retried() {
    let fake = FakePolar::start().await;
    let (app, _) = spawn(&fake).await;
    let alice = customer(&app, "alice", "shared@example.com").await;
    // Polar's customers have unique emails; Coffer's need not.
    let bob = customer(&app, "bob", "shared@example.com").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;
    let mut checkout = client(&app).await;
    checkout
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Payment, vec![item(&once, 1)]),
            &app.key,
        ))
        .await
        .unwrap();
    let e = checkout
        .create_checkout_session(idem(
            session(&bob, CheckoutMode::Payment, vec![item(&once, 1)]),
            &app.key,
            "bob",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (Code::FailedPrecondition, "PROVIDER_REJECTED"),
        "{e:?}"
    );
    assert!(e.message().contains("validation_error"), "{}", e.message());
    assert!(e.message().contains("body.email"), "{}", e.message());
    assert!(
        !e.message().contains("shared@example.com"),
        "the input is never echoed"
    );
    assert_eq!(
        fake.count(Method::POST, "/v1/customers/"),
        2,
        "alice's, and bob's one refused attempt"
    );
    assert_eq!(fake.creates("checkouts"), 1);

    // A 422 on the checkout itself, likewise: sent once.
    fake.fail(
        Method::POST,
        "/v1/checkouts/",
        5,
        Fault::Answer(
            422,
            json!({"error": "RequestValidationError", "detail": [{"loc": ["body", "success_url"], "msg": "URL scheme not permitted", "type": "url_scheme", "input": "x"}]}),
        ),
    );
    let e = checkout
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Payment, vec![item(&once, 1)]),
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("body.success_url"), "{}", e.message());
    assert_eq!(fake.count(Method::POST, "/v1/checkouts/"), 2);
}

#[tokio::test]
async fn events_are_triggers_the_object_is_fetched_as_polar_has_it_now() {
    let fake = FakePolar::start().await;
    let (app, sidecar) = spawn(&fake).await;
    let created = open_payment_checkout(&app).await;
    // Stale copies, taken before the buyer paid: an order Coffer has never heard of, and a
    // checkout still open in the event's own copy.
    let stale_checkout = fake.object("checkouts", &created.provider_session_id);
    let (order, _) = fake.pay(&created.provider_session_id);
    let mut stale_order = fake.object("orders", &order);
    stale_order["status"] = json!("pending");
    stale_order["paid"] = json!(false);
    let url = hook(sidecar);
    assert_eq!(fake.deliver(&url, "order.created", stale_order).await, 200);
    assert_eq!(
        fake.deliver(&url, "checkout.updated", stale_checkout).await,
        200
    );
    assert!(
        eventually(WAIT, || all_processed(&app, 2)).await,
        "{:?}",
        events(&app).await
    );
    assert_eq!(
        get_payment(&app, &created.payment_id).await.status(),
        PaymentStatus::Succeeded
    );
    assert_eq!(
        get_session(&app, &created.id).await.status(),
        CheckoutSessionStatus::Complete
    );
    assert!(fake.count(Method::GET, &format!("/v1/orders/{order}")) >= 1);

    // An order Coffer did not make (a checkout link's) names nothing to fetch.
    let mut foreign = fake.object("orders", &order);
    foreign["id"] = json!(uuid::Uuid::now_v7().to_string());
    foreign["metadata"] = json!({});
    assert_eq!(fake.deliver(&url, "order.paid", foreign).await, 200);
    assert!(
        eventually(WAIT, || async {
            events(&app).await.last().map(|e| e.1.clone()) == Some("ignored".into())
        })
        .await
    );
}

#[tokio::test]
async fn a_fetch_that_fails_is_retried_and_applied_once_polar_recovers() {
    let fake = FakePolar::start().await;
    let (app, sidecar) = spawn(&fake).await;
    let created = open_payment_checkout(&app).await;
    let (order, _) = fake.pay(&created.provider_session_id);
    let path = format!("/v1/orders/{order}");
    fake.fail(
        Method::GET,
        &path,
        usize::MAX,
        Fault::Answer(500, json!({"detail": "Internal Server Error"})),
    );
    assert_eq!(
        fake.deliver(&hook(sidecar), "order.paid", fake.object("orders", &order))
            .await,
        200
    );
    let failed = || async {
        let row: Option<(String, i32, Option<String>)> =
            sqlx::query_as("SELECT status, attempts, last_error FROM webhook_events")
                .fetch_optional(&app.pool)
                .await
                .unwrap();
        matches!(row, Some((s, a, _)) if s == "failed" && a >= 2)
    };
    assert!(eventually(WAIT, failed).await, "{:?}", events(&app).await);
    assert_eq!(
        get_payment(&app, &created.payment_id).await.status(),
        PaymentStatus::Created
    );
    assert!(
        fake.count(Method::GET, &path) >= 2 * 3,
        "retried, by the stack and the inbox"
    );

    fake.recover();
    assert!(
        eventually(WAIT, || all_processed(&app, 1)).await,
        "{:?}",
        events(&app).await
    );
    assert_eq!(
        get_payment(&app, &created.payment_id).await.status(),
        PaymentStatus::Succeeded
    );
}

#[tokio::test]
async fn a_webhook_racing_the_create_updates_the_one_session() {
    let fake = FakePolar::start().await;
    // Polar's answer is held until the test has had its event applied.
    let (app, sidecar) = spawn_waiting(&fake, Duration::from_secs(20)).await;
    let alice = customer(&app, "alice", "alice@example.com").await;
    let (_, [_, _, once]) = plan(&app, "pro").await;
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    fake.fail(
        Method::POST,
        "/v1/checkouts/",
        1,
        Fault::Hold(release.clone()),
    );
    let mut checkout = client(&app).await;
    let key = app.key.clone();
    let create = tokio::spawn(async move {
        checkout
            .create_checkout_session(req(
                session(&alice, CheckoutMode::Payment, vec![item(&once, 1)]),
                &key,
            ))
            .await
    });
    assert!(eventually(WAIT, || async { !fake.all("checkouts").is_empty() }).await);
    let polar_checkout = fake.all("checkouts")[0].clone();
    assert_eq!(
        fake.deliver(&hook(sidecar), "checkout.created", polar_checkout.clone())
            .await,
        200
    );
    assert!(
        eventually(WAIT, || all_processed(&app, 1)).await,
        "{:?}",
        events(&app).await
    );
    // The event found Coffer's session by its reference and recorded Polar's checkout on it
    // while the create was still waiting for its answer.
    let recorded: Vec<Option<String>> =
        sqlx::query_scalar("SELECT provider_session_id FROM checkout_sessions")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        vec![Some(polar_checkout["id"].as_str().unwrap().to_owned())]
    );

    release.notify_one();
    let created = create.await.unwrap().unwrap().into_inner();
    assert_eq!(
        created.provider_session_id,
        polar_checkout["id"].as_str().unwrap()
    );
    assert_eq!(created.status(), CheckoutSessionStatus::Open);
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM checkout_sessions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 1, "one row");
    assert_eq!(fake.creates("checkouts"), 1);
}

/// Coffer's subscriptions of the tenant: (status, provider id).
async fn subscriptions(app: &TestApp) -> Vec<(SubscriptionStatus, String)> {
    app.subscriptions()
        .await
        .list_subscriptions(req(ListSubscriptionsRequest::default(), &app.key))
        .await
        .unwrap()
        .into_inner()
        .subscriptions
        .into_iter()
        .map(|s| (s.status(), s.provider_subscription_id))
        .collect()
}

/// The adapter itself on `fake`, for what Polar offers beyond the port.
fn adapter(fake: &FakePolar) -> Polar {
    let account = Account {
        name: AccountName::parse(ACCOUNT).unwrap(),
        tenant: TenantId::generate(),
        provider: ProviderKind::Polar,
        api_key: Some(Secret::new(TOKEN)),
        webhook_secrets: vec![Secret::new(WEBHOOK_SECRET)],
        api_base: Some(format!("http://{}", fake.addr)),
        livemode: false,
        hmac: None,
        paytabs: None,
        webhook_sources: None,
    };
    let outbound = Outbound::new(
        OutboundConfig::default(),
        ProviderKind::Polar,
        &account.name,
        OutboundMetrics::default(),
    )
    .unwrap();
    Polar::new(&account, outbound).unwrap()
}

#[tokio::test]
async fn subscriptions_start_change_and_end_as_polar_reports_them() {
    let fake = FakePolar::start().await;
    let (app, sidecar) = spawn(&fake).await;
    let url = hook(sidecar);
    let alice = customer(&app, "alice", "alice@example.com").await;
    let (_, [monthly, yearly, _]) = plan(&app, "pro").await;
    let mut checkout = client(&app).await;

    // A monthly price with a 14-day trial: a recurring product with Polar's trial in days;
    // Polar charges nothing now (a zero order), and the subscription is trialing.
    let trial = checkout
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Subscription, vec![item(&monthly, 1)]),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(trial.payment_id.is_empty(), "nothing is collected now");
    let product = fake.all("products")[0].clone();
    assert_eq!(product["recurring_interval"], "month");
    assert_eq!(product["recurring_interval_count"], 1);
    assert_eq!(
        (
            product["trial_interval"].clone(),
            product["trial_interval_count"].clone()
        ),
        (json!("day"), json!(14))
    );
    let polar_checkout = fake.object("checkouts", &trial.provider_session_id);
    assert_eq!(polar_checkout["allow_trial"], true);
    assert_eq!(polar_checkout["active_trial_interval_count"], 14);
    let (zero_order, sub) = fake.pay(&trial.provider_session_id);
    let sub = sub.unwrap();
    for (event, data) in [
        (
            "checkout.updated",
            fake.object("checkouts", &trial.provider_session_id),
        ),
        ("order.created", fake.object("orders", &zero_order)),
        ("subscription.created", fake.object("subscriptions", &sub)),
    ] {
        assert_eq!(fake.deliver(&url, event, data).await, 200, "{event}");
    }
    assert!(
        eventually(WAIT, || all_processed(&app, 3)).await,
        "{:?}",
        events(&app).await
    );
    let completed = get_session(&app, &trial.id).await;
    assert_eq!(completed.status(), CheckoutSessionStatus::Complete);
    assert_eq!(
        completed.payment_status(),
        CheckoutPaymentStatus::NoPaymentRequired
    );
    assert_eq!(
        subscriptions(&app).await,
        vec![(SubscriptionStatus::Trialing, sub.clone())]
    );

    // A yearly price without a trial: Polar charges now, and the first order is the payment.
    let paid = checkout
        .create_checkout_session(req(
            session(&alice, CheckoutMode::Subscription, vec![item(&yearly, 1)]),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        fake.object("checkouts", &paid.provider_session_id)["allow_trial"],
        false
    );
    let (order, yearly_sub) = fake.pay(&paid.provider_session_id);
    assert_eq!(
        fake.deliver(&url, "order.paid", fake.object("orders", &order))
            .await,
        200
    );
    assert!(
        eventually(WAIT, || all_processed(&app, 4)).await,
        "{:?}",
        events(&app).await
    );
    let payment = get_payment(&app, &paid.payment_id).await;
    assert_eq!(payment.status(), PaymentStatus::Succeeded);
    assert_eq!(payment.amount, 29_000);
    // VerifyCheckoutSession's fetch brings the session and its subscription.
    let verified = client(&app)
        .await
        .verify_checkout_session(req(
            VerifyCheckoutSessionRequest {
                id: paid.id.clone(),
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.status(), CheckoutSessionStatus::Complete);
    assert!(
        subscriptions(&app)
            .await
            .contains(&(SubscriptionStatus::Active, yearly_sub.unwrap()))
    );

    // What Polar offers beyond the port, on the adapter: cancel at the period's end (twice:
    // Polar's "already canceled" answers the subscription as it is), move to another
    // product, revoke now (twice, likewise).
    let polar = adapter(&fake);
    let canceled = polar.cancel_at_period_end(&sub, true).await.unwrap();
    assert_eq!(canceled.status, DomainSubscriptionStatus::Trialing);
    assert_eq!(
        fake.object("subscriptions", &sub)["cancel_at_period_end"],
        true
    );
    let again = polar.cancel_at_period_end(&sub, true).await.unwrap();
    assert_eq!(again.id, sub);
    let kept = polar.cancel_at_period_end(&sub, false).await.unwrap();
    assert!(kept.version > canceled.version);
    assert_eq!(
        fake.object("subscriptions", &sub)["cancel_at_period_end"],
        false
    );
    let yearly_product = fake.all("products")[1]["id"].as_str().unwrap().to_owned();
    polar
        .change_subscription_product(&sub, &yearly_product, None)
        .await
        .unwrap();
    assert_eq!(
        fake.object("subscriptions", &sub)["product_id"],
        yearly_product.as_str()
    );
    let revoked = polar.revoke_subscription(&sub).await.unwrap();
    assert_eq!(revoked.status, DomainSubscriptionStatus::Canceled);
    assert_eq!(
        polar.revoke_subscription(&sub).await.unwrap().status,
        DomainSubscriptionStatus::Canceled
    );
    for s in fake
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/v1/subscriptions/"))
    {
        if s.method == Method::PATCH || s.method == Method::DELETE {
            assert!(
                s.idempotency_key.is_some(),
                "idempotent writes may be retried"
            );
        }
    }
    assert!(matches!(
        polar
            .change_subscription_product("no-such", &yearly_product, None)
            .await,
        Err(ProviderError::Definitive { code, .. }) if code == "not_found"
    ));

    // Polar's revocation event makes Coffer's subscription CANCELED.
    assert_eq!(
        fake.deliver(
            &url,
            "subscription.revoked",
            fake.object("subscriptions", &sub)
        )
        .await,
        200
    );
    assert!(
        eventually(WAIT, || all_processed(&app, 5)).await,
        "{:?}",
        events(&app).await
    );
    assert!(
        subscriptions(&app)
            .await
            .contains(&(SubscriptionStatus::Canceled, sub.clone()))
    );

    // A customer portal session for Coffer's customer, found by its external id on Polar.
    let portal = polar
        .customer_portal(
            CustomerId::parse(&alice).unwrap().as_uuid(),
            Some("https://shop.acme.example/account".into()),
        )
        .await
        .unwrap();
    assert!(portal.url.contains("customer_session_token="));
    assert!(portal.expires_at > time::OffsetDateTime::now_utc());
    assert!(!format!("{portal:?}").contains("customer_session_token"));
    let sessions = fake.all("customer-sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(
        sessions[0]["return_url"],
        "https://shop.acme.example/account"
    );
}

#[tokio::test]
async fn create_portal_session_opens_a_polar_customer_session_by_coffers_id() {
    use coffer::grpc::pb::CreatePortalSessionRequest;
    use coffer::grpc::pb::create_portal_session_request::Customer as Who;

    let fake = FakePolar::start().await;
    let (app, _) = spawn(&fake).await;
    let alice = customer(&app, "alice", "alice@example.com").await;
    let portal = app
        .customers()
        .await
        .create_portal_session(idem(
            CreatePortalSessionRequest {
                customer: Some(Who::CustomerId(alice.clone())),
                return_url: "https://shop.acme.example/account".into(),
            },
            &app.key,
            "polar-portal-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        portal.url.contains("customer_session_token="),
        "the URL is Polar's customer_portal_url"
    );
    // The customer was made on Polar with Coffer's id as its external id, and the session
    // asked for by that id, with the return URL.
    let customers = fake.all("customers");
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0]["external_id"], customer_uuid(&alice));
    let sessions = fake.all("customer-sessions");
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["customer_id"], customers[0]["id"]);
    assert_eq!(
        sessions[0]["return_url"],
        "https://shop.acme.example/account"
    );
    assert!(
        portal.url.ends_with(sessions[0]["token"].as_str().unwrap()),
        "{}",
        portal.url
    );
    let expires = portal.expire_time.unwrap().seconds;
    assert!(expires > time::OffsetDateTime::now_utc().unix_timestamp() + 3000);

    // An unknown customer is NOT_FOUND, and Polar is not asked.
    let e = app
        .customers()
        .await
        .create_portal_session(req(
            CreatePortalSessionRequest {
                customer: Some(Who::ExternalId("nobody".into())),
                return_url: "https://shop.acme.example/account".into(),
            },
            &app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(details(&e).0, "CUSTOMER_NOT_FOUND");
    assert_eq!(fake.all("customer-sessions").len(), 1);
}
