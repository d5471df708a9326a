//! Checkout end to end through real sockets, every part running together as under
//! `serve --dev`: the tenant's gRPC calls, the sandbox's hosted page over HTTP, its signed
//! events delivered over HTTP through the sidecar into IngestEvent, the inbox workers applying
//! them, and the answers read back over gRPC. Nothing here signs, builds or inserts an event:
//! every state the tests wait for got there the way a customer's payment would.

use std::sync::Arc;
use std::time::Duration;

use coffer::app::inbox::{Handlers, InboxConfig};
use coffer::grpc::pb::list_subscriptions_request::Customer as SubscriptionsOf;
use coffer::grpc::pb::sandbox_client::SandboxClient;
use coffer::grpc::pb::{
    AdvanceClockRequest, CheckoutMode, CheckoutPaymentStatus, CheckoutSession,
    CheckoutSessionStatus, ExpireCheckoutSessionRequest, GetCheckoutSessionRequest,
    GetPaymentRequest, GetSubscriptionRequest, ListPaymentsRequest, ListSubscriptionsRequest,
    Payment, PaymentStatus, RefundPaymentRequest, RefundReason, RefundStatus, Subscription,
    SubscriptionStatus,
};
use coffer::providers::sandbox::Faults;
use coffer::startup::ServerConfig;
use reqwest::StatusCode;
use tonic::Code;

use crate::checkout::{client, item, plan, session};
use crate::helpers::{TestApp, TestDb, eventually, idem, req, sandbox_test_config, test_config};
use crate::sandbox_delivery::metric;
use crate::sandbox_page::{ASKS, DECLINED, Env, NO_FUNDS, PAYS, env_of, success_url};

/// How long a state may take to travel page → sandbox outbox → HTTP → sidecar → IngestEvent →
/// inbox worker → the RPC's answer. Tens of milliseconds when all is well.
pub(crate) const SETTLE: Duration = Duration::from_secs(15);

/// The server with everything on: the sandbox, its public listener (page and sidecar), its
/// delivery workers and expiry sweeper (`sandbox_test_config`), and inbox workers with a short
/// poll.
pub(crate) async fn spawn() -> (Env, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let config = ServerConfig {
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        sandbox: Some(sandbox_test_config(faults.clone())),
        resolve_interval: Duration::from_millis(100),
        sweep_interval: Duration::from_millis(100),
        inbox: InboxConfig {
            workers: 2,
            batch: 8,
            poll: Duration::from_millis(20),
            backoff_base: Duration::from_millis(5),
            backoff_cap: Duration::from_millis(40),
            handler_timeout: Duration::from_secs(30),
            handlers: Handlers::builtin(),
            lease: Duration::from_secs(60),
        },
        ..test_config()
    };
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let app = TestApp::spawn_on(db, pool.clone(), pool, config).await;
    (env_of(app).await, faults)
}

pub(crate) async fn get(env: &Env, id: &str) -> CheckoutSession {
    client(&env.app)
        .await
        .get_checkout_session(req(
            GetCheckoutSessionRequest { id: id.into() },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn payment(env: &Env, id: &str) -> Payment {
    client(&env.app)
        .await
        .get_payment(req(GetPaymentRequest { id: id.into() }, &env.app.key))
        .await
        .unwrap()
        .into_inner()
}

pub(crate) async fn subscription(env: &Env, id: &str) -> Subscription {
    env.app
        .subscriptions()
        .await
        .get_subscription(req(GetSubscriptionRequest { id: id.into() }, &env.app.key))
        .await
        .unwrap()
        .into_inner()
}

async fn subscriptions_of_customer(env: &Env) -> Vec<Subscription> {
    env.app
        .subscriptions()
        .await
        .list_subscriptions(req(
            ListSubscriptionsRequest {
                customer: Some(SubscriptionsOf::CustomerId(env.customer.clone())),
                ..Default::default()
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .subscriptions
}

async fn payments_of_customer(env: &Env) -> Vec<Payment> {
    client(&env.app)
        .await
        .list_payments(req(
            ListPaymentsRequest {
                customer_id: env.customer.clone(),
                ..Default::default()
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .payments
}

/// Waits until the session reads `status`/`payment_status`; the last answer.
async fn session_reaches(
    env: &Env,
    id: &str,
    status: CheckoutSessionStatus,
    payment_status: CheckoutPaymentStatus,
) -> CheckoutSession {
    let reached = eventually(SETTLE, || async {
        let s = get(env, id).await;
        s.status == status as i32 && s.payment_status == payment_status as i32
    })
    .await;
    let s = get(env, id).await;
    assert!(
        reached,
        "session {id} never reached {status:?}/{payment_status:?}: {s:?}"
    );
    s
}

/// Waits until the payment reads `status` with `failure_code`; the last answer.
async fn payment_reaches(
    env: &Env,
    id: &str,
    status: PaymentStatus,
    failure_code: &str,
) -> Payment {
    let reached = eventually(SETTLE, || async {
        let p = payment(env, id).await;
        p.status == status as i32 && p.failure_code == failure_code
    })
    .await;
    let p = payment(env, id).await;
    assert!(
        reached,
        "payment {id} never reached {status:?}/{failure_code:?}: {p:?}"
    );
    p
}

/// Inbox rows by status, and how many rows each provider event has at most.
async fn inbox(env: &Env) -> (Vec<(String, String, i64)>, i64) {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT event_type, status, count(*) FROM webhook_events
         GROUP BY event_type, status ORDER BY event_type, status",
    )
    .fetch_all(&env.app.pool)
    .await
    .unwrap();
    let most: Option<i64> = sqlx::query_scalar(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM webhook_events
                             GROUP BY account, provider_event_id) t",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    (rows, most.unwrap_or(0))
}

/// Every queued sandbox event has been delivered (a 2xx from the sidecar) and every inbox
/// row is processed.
pub(crate) async fn all_delivered_and_processed(env: &Env) -> bool {
    let (undelivered, unprocessed): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sandbox_outbox WHERE status <> 'delivered'),
                (SELECT count(*) FROM webhook_events WHERE status <> 'processed')",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    undelivered == 0 && unprocessed == 0
}

#[tokio::test]
async fn a_subscription_is_bought_on_the_hosted_page_and_becomes_active_or_trialing() {
    let (env, _) = spawn().await;
    let (_, [monthly, yearly, _]) = plan(&env.app, &env.app.key).await;

    // Yearly, no trial: money is due now.
    let s = env
        .open(session(
            &env.customer,
            CheckoutMode::Subscription,
            vec![item(&yearly, 1)],
        ))
        .await;
    assert_eq!(s.status, CheckoutSessionStatus::Open as i32);
    assert!(!s.payment_id.is_empty());
    assert!(
        s.url
            .ends_with(&format!("/sandbox/checkout/{}", s.provider_session_id)),
        "{}",
        s.url
    );
    let page = env.get(&s).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("<form"), "{}", page.body);
    let page = env.pay(&s, PAYS).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location.as_deref(), Some(success_url(&s).as_str()));

    let done = session_reaches(
        &env,
        &s.id,
        CheckoutSessionStatus::Complete,
        CheckoutPaymentStatus::Paid,
    )
    .await;
    let paid = payment_reaches(&env, &s.payment_id, PaymentStatus::Succeeded, "").await;
    assert_eq!((paid.amount, paid.currency.as_str()), (29_000, "USD"));
    assert_eq!(
        (paid.card_brand.as_str(), paid.card_last4.as_str()),
        ("visa", "4242")
    );
    assert_eq!(paid.checkout_session_id, s.id);
    // The session names its subscription once subscription.created and the completion are in.
    assert!(
        eventually(SETTLE, || async {
            !get(&env, &s.id).await.subscription_id.is_empty()
        })
        .await,
        "{done:?}"
    );
    let sub_id = get(&env, &s.id).await.subscription_id;
    assert!(
        eventually(SETTLE, || async {
            subscription(&env, &sub_id).await.status == SubscriptionStatus::Active as i32
        })
        .await,
        "{:?}",
        subscription(&env, &sub_id).await
    );
    let sub = subscription(&env, &sub_id).await;
    assert_eq!(sub.customer_id, env.customer);

    // Monthly with its 14 trial days: nothing is charged, the subscription is TRIALING.
    let t = env
        .open(session(
            &env.customer,
            CheckoutMode::Subscription,
            vec![item(&monthly, 1)],
        ))
        .await;
    assert!(t.payment_id.is_empty(), "a trial has no payment");
    let page = env.pay(&t, PAYS).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location.as_deref(), Some(success_url(&t).as_str()));
    session_reaches(
        &env,
        &t.id,
        CheckoutSessionStatus::Complete,
        CheckoutPaymentStatus::NoPaymentRequired,
    )
    .await;
    assert!(
        eventually(SETTLE, || async {
            let id = get(&env, &t.id).await.subscription_id;
            !id.is_empty()
                && subscription(&env, &id).await.status == SubscriptionStatus::Trialing as i32
        })
        .await,
        "{:?}",
        get(&env, &t.id).await
    );
    assert_eq!(subscriptions_of_customer(&env).await.len(), 2);
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
}

#[tokio::test]
async fn declined_cards_record_their_failure_and_a_good_card_then_pays() {
    let (env, _) = spawn().await;
    let (_, [_, yearly, _]) = plan(&env.app, &env.app.key).await;
    let s = env
        .open(session(
            &env.customer,
            CheckoutMode::Subscription,
            vec![item(&yearly, 1)],
        ))
        .await;

    for (card, code) in [
        (DECLINED, "card_declined"),
        (NO_FUNDS, "insufficient_funds"),
    ] {
        let page = env.pay(&s, card).await;
        assert_eq!(page.status, StatusCode::PAYMENT_REQUIRED, "{card}");
        let failed = payment_reaches(&env, &s.payment_id, PaymentStatus::Failed, code).await;
        assert_eq!(failed.card_last4, &card[card.len() - 4..]);
        let open = get(&env, &s.id).await;
        assert_eq!(open.status, CheckoutSessionStatus::Open as i32);
        assert_eq!(open.payment_status, CheckoutPaymentStatus::Unpaid as i32);
        assert!(open.subscription_id.is_empty());
        assert!(subscriptions_of_customer(&env).await.is_empty());
    }
    // Both failures went all the way through, and nothing else happened.
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    let (rows, _) = inbox(&env).await;
    assert_eq!(rows, [("payment.failed".into(), "processed".into(), 2)]);

    let page = env.pay(&s, PAYS).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    session_reaches(
        &env,
        &s.id,
        CheckoutSessionStatus::Complete,
        CheckoutPaymentStatus::Paid,
    )
    .await;
    let paid = payment_reaches(&env, &s.payment_id, PaymentStatus::Succeeded, "").await;
    assert_eq!(paid.card_last4, "4242");
    assert!(
        eventually(SETTLE, || async {
            let id = get(&env, &s.id).await.subscription_id;
            !id.is_empty()
                && subscription(&env, &id).await.status == SubscriptionStatus::Active as i32
        })
        .await
    );
    assert_eq!(
        payments_of_customer(&env).await.len(),
        1,
        "one payment, retried"
    );
}

#[tokio::test]
async fn the_confirmation_card_pays_when_approved_and_fails_when_not() {
    let (env, _) = spawn().await;

    let approved = env.one_time().await;
    let page = env.pay(&approved, ASKS).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Confirm the payment"), "{}", page.body);
    let page = env.confirm(&approved, "approve").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(
        page.location.as_deref(),
        Some(success_url(&approved).as_str())
    );
    session_reaches(
        &env,
        &approved.id,
        CheckoutSessionStatus::Complete,
        CheckoutPaymentStatus::Paid,
    )
    .await;
    let paid = payment_reaches(&env, &approved.payment_id, PaymentStatus::Succeeded, "").await;
    assert_eq!(paid.card_last4, "3155");

    let failed = env.one_time().await;
    assert_eq!(env.pay(&failed, ASKS).await.status, StatusCode::OK);
    let page = env.confirm(&failed, "fail").await;
    assert_eq!(page.status, StatusCode::PAYMENT_REQUIRED, "{}", page.body);
    payment_reaches(
        &env,
        &failed.payment_id,
        PaymentStatus::Failed,
        "authentication_failed",
    )
    .await;
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    let open = get(&env, &failed.id).await;
    assert_eq!(open.status, CheckoutSessionStatus::Open as i32);
    assert_eq!(open.payment_status, CheckoutPaymentStatus::Unpaid as i32);
}

#[tokio::test]
async fn an_expired_session_cannot_be_paid_whether_expired_by_rpc_or_by_time() {
    let (env, _) = spawn().await;

    // By the RPC.
    let s = env.one_time().await;
    let expired = client(&env.app)
        .await
        .expire_checkout_session(idem(
            ExpireCheckoutSessionRequest { id: s.id.clone() },
            &env.app.key,
            "expire-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expired.status, CheckoutSessionStatus::Expired as i32);
    let page = env.pay(&s, PAYS).await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);
    assert!(page.body.contains("expired"));
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    assert_eq!(
        get(&env, &s.id).await.status,
        CheckoutSessionStatus::Expired as i32
    );
    assert_ne!(
        payment(&env, &s.payment_id).await.status,
        PaymentStatus::Succeeded as i32
    );

    // By time: the sandbox's clock moved past expires_at.
    let late = env.one_time().await;
    let expires_at = late.expires_at.unwrap();
    SandboxClient::new(env.app.channel().await)
        .advance_clock(req(
            AdvanceClockRequest {
                account: late.provider_account.clone(),
                to: Some(prost_types::Timestamp {
                    seconds: expires_at.seconds + 60,
                    nanos: 0,
                }),
            },
            &env.app.key,
        ))
        .await
        .unwrap();
    let page = env.pay(&late, PAYS).await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);
    session_reaches(
        &env,
        &late.id,
        CheckoutSessionStatus::Expired,
        CheckoutPaymentStatus::Unpaid,
    )
    .await;
    // Still refused after the sweep, and no payment ever succeeded.
    assert_eq!(env.pay(&late, PAYS).await.status, StatusCode::CONFLICT);
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    assert_ne!(
        payment(&env, &late.payment_id).await.status,
        PaymentStatus::Succeeded as i32
    );
    let (rows, _) = inbox(&env).await;
    assert!(
        rows.iter().all(|(t, _, _)| t == "checkout.session.expired"),
        "{rows:?}"
    );
}

#[tokio::test]
async fn an_inline_payment_session_pays_once_and_is_refunded_to_its_amount() {
    let (env, _) = spawn().await;
    let s = env.one_time().await; // 3 × 123.45 USD, an inline price
    assert_eq!(s.amount_total, 37_035);

    assert_eq!(env.pay(&s, PAYS).await.status, StatusCode::SEE_OTHER);
    session_reaches(
        &env,
        &s.id,
        CheckoutSessionStatus::Complete,
        CheckoutPaymentStatus::Paid,
    )
    .await;
    // A second submit after completion takes nothing.
    let again = env.pay(&s, PAYS).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    let payments = payments_of_customer(&env).await;
    assert_eq!(payments.len(), 1, "{payments:?}");
    assert_eq!(payments[0].status, PaymentStatus::Succeeded as i32);
    assert_eq!(payments[0].amount, 37_035);
    let (rows, most) = inbox(&env).await;
    assert_eq!(
        rows,
        [
            ("checkout.session.completed".into(), "processed".into(), 1),
            ("payment.succeeded".into(), "processed".into(), 1),
        ]
    );
    assert_eq!(most, 1);

    let refund = |amount: Option<i64>, key: &'static str| {
        let env = &env;
        let id = s.payment_id.clone();
        async move {
            client(&env.app)
                .await
                .refund_payment(idem(
                    RefundPaymentRequest {
                        payment_id: id,
                        amount,
                        reason: RefundReason::RequestedByCustomer as i32,
                    },
                    &env.app.key,
                    key,
                ))
                .await
                .map(|r| r.into_inner())
        }
    };
    let partial = refund(Some(10_000), "refund-1").await.unwrap();
    assert_eq!(partial.status, RefundStatus::Succeeded as i32);
    assert_eq!(partial.amount, 10_000);
    assert_eq!(payment(&env, &s.payment_id).await.amount_refunded, 10_000);
    let rest = refund(None, "refund-2").await.unwrap();
    assert_eq!(rest.status, RefundStatus::Succeeded as i32);
    assert_eq!(rest.amount, 27_035);
    let p = payment(&env, &s.payment_id).await;
    assert_eq!(p.amount_refunded, p.amount);
    let over = refund(Some(1), "refund-3").await.unwrap_err();
    assert_eq!(over.code(), Code::FailedPrecondition, "{over:?}");
    assert_eq!(payment(&env, &s.payment_id).await.amount_refunded, 37_035);
    // The refunds' own events come back through the pipeline and change nothing more.
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);
    let p = payment(&env, &s.payment_id).await;
    assert_eq!(
        (p.status, p.amount_refunded),
        (PaymentStatus::Succeeded as i32, 37_035)
    );
}

#[tokio::test]
async fn reordered_and_duplicated_deliveries_end_in_the_newest_state() {
    let (env, faults) = spawn().await;
    let s = env.one_time().await;

    // Hold deliveries while the customer pays, then send the newest first, each twice.
    faults.hold();
    assert_eq!(env.pay(&s, PAYS).await.status, StatusCode::SEE_OTHER);
    let queued: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM sandbox_outbox ORDER BY id")
            .fetch_all(&env.app.pool)
            .await
            .unwrap();
    assert_eq!(queued, ["payment.succeeded", "checkout.session.completed"]);
    faults.duplicate_next(2);
    faults.release_newest_first();

    session_reaches(
        &env,
        &s.id,
        CheckoutSessionStatus::Complete,
        CheckoutPaymentStatus::Paid,
    )
    .await;
    let paid = payment_reaches(&env, &s.payment_id, PaymentStatus::Succeeded, "").await;
    assert_eq!(paid.card_last4, "4242");
    assert!(eventually(SETTLE, || all_delivered_and_processed(&env)).await);

    // The completion reached the inbox before the payment it names.
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM webhook_events ORDER BY received_at, provider_event_id",
    )
    .fetch_all(&env.app.pool)
    .await
    .unwrap();
    assert_eq!(order, ["checkout.session.completed", "payment.succeeded"]);
    // Each event arrived twice and is stored, and applied, once.
    let (rows, most) = inbox(&env).await;
    assert_eq!(
        rows,
        [
            ("checkout.session.completed".into(), "processed".into(), 1),
            ("payment.succeeded".into(), "processed".into(), 1),
        ]
    );
    assert_eq!(most, 1);
    assert_eq!(
        metric(
            &env.app,
            r#"coffer_webhooks_received_total{provider="sandbox",outcome="duplicate"}"#,
        )
        .await,
        2.0,
        "both events were sent twice"
    );
    let got = get(&env, &s.id).await;
    assert_eq!(got.status, CheckoutSessionStatus::Complete as i32);
    assert_eq!(got.payment_status, CheckoutPaymentStatus::Paid as i32);
}
