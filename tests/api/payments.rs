//! Payments, refunds and subscriptions on the sandbox, end to end from the sandbox's events:
//! each test changes the sandbox's own rows as its hosted page would, builds the event the
//! sandbox would send (`events::body`, to the contract), signs it with the tenant's sandbox
//! secret (Standard Webhooks) and delivers it through the real IngestEvent, and the inbox
//! workers running in the server apply it. Refunds go through RefundPayment and the real
//! `Sandbox::refund`; expiry through the server's sweeper.
//!
//! Each tenant's sandbox account is made before the server starts, with a secret the test
//! knows, where the sandbox keeps it (`sandbox_accounts`); IngestEvent verifies with it as it
//! does for the sandbox's own deliveries. The server has no HTTP listener, so the sandbox's
//! delivery worker sends nothing: every event here is the test's.

use std::sync::Arc;
use std::time::Duration;

use coffer::app::App;
use coffer::app::inbox::{Handlers, InboxConfig};
use coffer::app::tenants::KeyFor;
use coffer::domain::auth::TenantName;
use coffer::grpc::pb::list_subscriptions_request::Customer as SubscriptionsOf;
use coffer::grpc::pb::provider_events_client::ProviderEventsClient;
use coffer::grpc::pb::{
    CheckoutMode, CheckoutPaymentStatus, CheckoutSession, CheckoutSessionStatus,
    GetCheckoutSessionRequest, GetPaymentRequest, GetSubscriptionRequest, Header,
    IngestEventRequest, ListPaymentsRequest, ListSubscriptionsRequest, Payment, PaymentStatus,
    RefundPaymentRequest, RefundReason, RefundStatus, SubscriptionStatus,
    VerifyCheckoutSessionRequest,
};
use coffer::providers::sandbox::events::{EventType, body};
use coffer::providers::sandbox::{Faults, SandboxConfig};
use coffer::providers::signature::sign;
use coffer::startup::ServerConfig;
use serde_json::Value;
use sqlx::types::Json;
use tonic::Code;

use crate::checkout::{client, customer, inline, item, plan_of, session};
use crate::events::now;
use crate::helpers::{
    TestApp, TestDb, details, eventually, http_get, idem, req, sandbox_test_config, test_config,
};

const SHOP_SECRET: &str = "whsec_CIDVmpcN1wy5sTTCIMm7V5T3QOHMbcGZgb+aVYruOUo=";
const OTHER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A server with the sandbox and inbox workers, tenants "shop" and "other" with their sandbox
/// accounts and secrets, and their keys.
struct Env {
    app: TestApp,
    faults: Arc<Faults>,
    shop: String,
    other: String,
    ingest: String,
}

impl Env {
    async fn spawn() -> Self {
        Self::spawn_with(false).await
    }

    /// With `delivered`, the server also runs its HTTP listener and the sandbox delivers its
    /// own events to it (and expires sessions on its clock), as under `serve --dev`.
    async fn spawn_with(delivered: bool) -> Self {
        let db = TestDb::new().await;
        let pool = db.pool().await;
        let admin = App::new(pool.clone());
        let mut keys = Vec::new();
        for (name, secret) in [("shop", SHOP_SECRET), ("other", OTHER_SECRET)] {
            let (tenant, key) = admin
                .tenants
                .create_tenant(&TenantName::parse(name).unwrap())
                .await
                .unwrap();
            // The tenant's sandbox account with a secret the test knows, where the sandbox
            // keeps it (it makes one only when there is none).
            let account = format!("{name}-sandbox");
            sqlx::query(
                "INSERT INTO sandbox_accounts (tenant_id, account, webhook_secret, created_at)
                 VALUES ($1, $2, $3, now())",
            )
            .bind(tenant.as_uuid())
            .bind(&account)
            .bind(secret)
            .execute(&pool)
            .await
            .unwrap();
            keys.push(key.expose().to_owned());
        }
        let faults = Arc::new(Faults::default());
        let config = ServerConfig {
            sandbox: Some(SandboxConfig {
                public_url: "http://127.0.0.1:8089".into(),
                ..if delivered {
                    sandbox_test_config(faults.clone())
                } else {
                    SandboxConfig {
                        faults: faults.clone(),
                        ..SandboxConfig::default()
                    }
                }
            }),
            http_addr: delivered.then(|| "127.0.0.1:0".parse().unwrap()),
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
        let app = TestApp::spawn_on(db, pool.clone(), pool, config).await;
        let ingest = app.key(KeyFor::System, "events:ingest").await;
        let [shop, other] = keys.try_into().unwrap();
        Self {
            app,
            faults,
            shop,
            other,
            ingest,
        }
    }

    /// One row of SQL as JSON: the sandbox's objects, shaped as the contract says.
    async fn json(&self, sql: &'static str, id: &str) -> Value {
        let Json(v): Json<Value> = sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(&self.app.pool)
            .await
            .unwrap();
        v
    }

    async fn session_object(&self, provider_id: &str) -> Value {
        self.json(
            "SELECT json_build_object('id', s.id, 'client_reference_id', s.client_reference,
                 'customer', s.customer, 'mode', s.mode, 'status', s.status,
                 'payment_status', s.payment_status, 'amount_total', s.amount_total,
                 'currency', s.currency, 'expires_at', extract(epoch FROM s.expires_at)::bigint,
                 'payment', (SELECT id FROM sandbox_payments p
                             WHERE p.account = s.account AND p.session_id = s.id),
                 'subscription', (SELECT id FROM sandbox_subscriptions b
                                  WHERE b.account = s.account AND b.session_id = s.id),
                 'version', s.version)
             FROM sandbox_checkout_sessions s WHERE s.id = $1",
            provider_id,
        )
        .await
    }

    async fn payment_object(&self, session_id: &str) -> Value {
        self.json(
            "SELECT json_build_object('id', id, 'checkout_session', session_id,
                 'client_reference_id', client_reference, 'amount', amount, 'currency', currency,
                 'status', status, 'failure_code', failure_code,
                 'card', CASE WHEN card_brand IS NULL THEN NULL
                         ELSE json_build_object('brand', card_brand, 'last4', card_last4) END,
                 'amount_refunded', amount_refunded, 'version', version)
             FROM sandbox_payments WHERE session_id = $1",
            session_id,
        )
        .await
    }

    async fn subscription_object(&self, session_id: &str) -> Value {
        self.json(
            "SELECT json_build_object('id', id, 'checkout_session', session_id,
                 'client_reference_id', client_reference, 'customer', customer, 'status', status,
                 'current_period_start', extract(epoch FROM current_period_start)::bigint,
                 'current_period_end', extract(epoch FROM current_period_end)::bigint,
                 'trial_end', extract(epoch FROM trial_end)::bigint, 'version', version)
             FROM sandbox_subscriptions WHERE session_id = $1",
            session_id,
        )
        .await
    }

    /// A card attempt on the hosted page, as the sandbox records it: the session's payment
    /// (made on the first attempt) moves to `status`, bumping its version; a success completes
    /// the session. Returns the payment object.
    async fn attempt(
        &self,
        s: &CheckoutSession,
        status: &str,
        failure: Option<&str>,
        last4: &str,
    ) -> Value {
        sqlx::query(
            "INSERT INTO sandbox_payments AS p
                 (account, id, session_id, client_reference, amount, currency, status,
                  failure_code, card_brand, card_last4, version, created_at, updated_at)
             SELECT account, 'py_sbx_' || md5(id), id, client_reference, amount_total, currency,
                    $2, $3, 'visa', $4, 1, now(), now()
             FROM sandbox_checkout_sessions WHERE id = $1
             ON CONFLICT (account, session_id) WHERE subscription_id IS NULL DO UPDATE
                 SET status = $2, failure_code = $3, card_last4 = $4, version = p.version + 1,
                     updated_at = now()",
        )
        .bind(&s.provider_session_id)
        .bind(status)
        .bind(failure)
        .bind(last4)
        .execute(&self.app.pool)
        .await
        .unwrap();
        if status == "succeeded" {
            self.complete(s, "paid").await;
        }
        self.payment_object(&s.provider_session_id).await
    }

    async fn complete(&self, s: &CheckoutSession, payment_status: &str) {
        sqlx::query(
            "UPDATE sandbox_checkout_sessions
             SET status = 'complete', payment_status = $2, version = version + 1
             WHERE id = $1",
        )
        .bind(&s.provider_session_id)
        .bind(payment_status)
        .execute(&self.app.pool)
        .await
        .unwrap();
    }

    /// The subscription a completed SUBSCRIPTION session makes on the sandbox.
    async fn subscribe(&self, s: &CheckoutSession) -> Value {
        sqlx::query(
            "INSERT INTO sandbox_subscriptions
                 (account, id, session_id, client_reference, customer, status,
                  current_period_start, current_period_end, trial_end, version, created_at)
             SELECT account, 'sub_sbx_' || md5(id), id, client_reference, customer,
                    CASE WHEN trial_days > 0 THEN 'trialing' ELSE 'active' END,
                    now(), now() + CASE WHEN trial_days > 0 THEN make_interval(days => trial_days)
                                        ELSE interval '1 month' END,
                    CASE WHEN trial_days > 0 THEN now() + make_interval(days => trial_days) END,
                    1, now()
             FROM sandbox_checkout_sessions WHERE id = $1",
        )
        .bind(&s.provider_session_id)
        .execute(&self.app.pool)
        .await
        .unwrap();
        self.subscription_object(&s.provider_session_id).await
    }

    /// Delivers an event about `object` to `account` as the sandbox would: body built to the
    /// contract, signed with the account's secret, through IngestEvent. Returns its id.
    async fn send(&self, account: &str, t: EventType, object: &Value) -> String {
        let id = format!("msg_test_{}", uuid::Uuid::now_v7().simple());
        self.send_as(&id, account, t, object).await;
        id
    }

    async fn send_as(&self, id: &str, account: &str, t: EventType, object: &Value) {
        let secret = if account.starts_with("shop") {
            SHOP_SECRET
        } else {
            OTHER_SECRET
        };
        let at = time::OffsetDateTime::now_utc();
        let body = body(id, t, object, at);
        let headers = sign::standard(secret, id, now(), &body)
            .into_iter()
            .map(|h| Header {
                name: h.name,
                value: h.value,
            })
            .collect();
        ProviderEventsClient::new(self.app.channel().await)
            .ingest_event(req(
                IngestEventRequest {
                    account: account.into(),
                    headers,
                    body,
                    source_address: String::new(),
                },
                &self.ingest,
            ))
            .await
            .unwrap();
    }

    /// Delivers what the sandbox queued in its outbox (refund events), as its delivery would.
    async fn deliver_outbox(&self) -> usize {
        let rows: Vec<(String, String, Vec<u8>)> = sqlx::query_as(
            "SELECT account, webhook_id, body FROM sandbox_outbox WHERE status = 'pending'",
        )
        .fetch_all(&self.app.pool)
        .await
        .unwrap();
        for (account, id, body) in &rows {
            let v: Value = serde_json::from_slice(body).unwrap();
            let t = EventType::parse(v["type"].as_str().unwrap()).unwrap();
            self.send_as(id, account, t, &v["data"]["object"]).await;
        }
        rows.len()
    }

    /// Waits until every stored event is settled (processed or ignored).
    async fn settled(&self) -> bool {
        eventually(Duration::from_secs(10), || async {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_events WHERE status NOT IN ('processed', 'ignored')",
            )
            .fetch_one(&self.app.pool)
            .await
            .unwrap();
            open == 0
        })
        .await
    }

    async fn get(&self, key: &str, id: &str) -> CheckoutSession {
        client(&self.app)
            .await
            .get_checkout_session(req(GetCheckoutSessionRequest { id: id.into() }, key))
            .await
            .unwrap()
            .into_inner()
    }

    async fn payment(&self, key: &str, id: &str) -> Payment {
        client(&self.app)
            .await
            .get_payment(req(GetPaymentRequest { id: id.into() }, key))
            .await
            .unwrap()
            .into_inner()
    }

    /// An OPEN PAYMENT session of `amount` USD for a new customer of the shop.
    async fn payment_session(&self, external_id: &str, amount: i64) -> CheckoutSession {
        let who = customer(&self.app, &self.shop, external_id).await;
        client(&self.app)
            .await
            .create_checkout_session(req(
                session(&who, CheckoutMode::Payment, vec![inline(amount, "USD", 1)]),
                &self.shop,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// A PAYMENT session of `amount` paid with 4242: its payment SUCCEEDED.
    async fn paid(&self, external_id: &str, amount: i64) -> (CheckoutSession, Payment) {
        let s = self.payment_session(external_id, amount).await;
        let p = self.attempt(&s, "succeeded", None, "4242").await;
        self.send(&s.provider_account, EventType::PaymentSucceeded, &p)
            .await;
        assert!(self.settled().await);
        let payment = self.payment(&self.shop, &s.payment_id).await;
        assert_eq!(payment.status, PaymentStatus::Succeeded as i32);
        (s, payment)
    }

    async fn refund(
        &self,
        payment_id: &str,
        amount: Option<i64>,
        key: Option<&str>,
    ) -> Result<coffer::grpc::pb::Refund, tonic::Status> {
        let request = RefundPaymentRequest {
            payment_id: payment_id.into(),
            amount,
            reason: RefundReason::RequestedByCustomer as i32,
        };
        let request = match key {
            Some(k) => idem(request, &self.shop, k),
            None => req(request, &self.shop),
        };
        client(&self.app)
            .await
            .refund_payment(request)
            .await
            .map(|r| r.into_inner())
    }
}

#[tokio::test]
async fn a_paid_session_completes_and_its_payment_succeeds() {
    let env = Env::spawn().await;
    let s = env.payment_session("alice", 5_000).await;
    // The payment exists from the start, CREATED, with the session's total.
    assert!(s.payment_id.starts_with("payment_"), "{s:?}");
    let created = env.payment(&env.shop, &s.payment_id).await;
    assert_eq!(created.status, PaymentStatus::Created as i32);
    assert_eq!((created.amount, created.currency.as_str()), (5_000, "USD"));
    assert_eq!(created.checkout_session_id, s.id);

    let p = env.attempt(&s, "succeeded", None, "4242").await;
    env.send(&s.provider_account, EventType::PaymentSucceeded, &p)
        .await;
    let cs = env.session_object(&s.provider_session_id).await;
    env.send(&s.provider_account, EventType::CheckoutCompleted, &cs)
        .await;
    assert!(env.settled().await);

    let got = env.get(&env.shop, &s.id).await;
    assert_eq!(got.status, CheckoutSessionStatus::Complete as i32);
    assert_eq!(got.payment_status, CheckoutPaymentStatus::Paid as i32);
    let paid = env.payment(&env.shop, &s.payment_id).await;
    assert_eq!(paid.status, PaymentStatus::Succeeded as i32);
    assert_eq!(
        (paid.card_brand.as_str(), paid.card_last4.as_str()),
        ("visa", "4242")
    );
    assert_eq!(paid.provider_payment_id, p["id"].as_str().unwrap());
    assert!(paid.failure_code.is_empty());
    // The provider's payment id maps to Coffer's, once.
    let mapped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM provider_objects WHERE kind = 'payment' AND provider_id = $1",
    )
    .bind(&paid.provider_payment_id)
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!(mapped, 1);
    // Counted (at least: the families are per process).
    let (_, metrics) = http_get(env.app.admin_addr, "/metrics").await;
    for line in [
        "coffer_checkout_sessions_total{event=\"created\"}",
        "coffer_checkout_sessions_total{event=\"completed\"}",
        "coffer_payments_total{status=\"succeeded\"}",
    ] {
        let value: f64 = metrics
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or_else(|| panic!("{line} in /metrics"))
            .parse()
            .unwrap();
        assert!(value >= 1.0, "{line} {value}");
    }
}

#[tokio::test]
async fn a_declined_card_leaves_the_session_open_and_another_card_succeeds() {
    let env = Env::spawn().await;
    let s = env.payment_session("bob", 2_500).await;
    let declined = env
        .attempt(&s, "failed", Some("insufficient_funds"), "9995")
        .await;
    env.send(&s.provider_account, EventType::PaymentFailed, &declined)
        .await;
    assert!(env.settled().await);
    let failed = env.payment(&env.shop, &s.payment_id).await;
    assert_eq!(failed.status, PaymentStatus::Failed as i32);
    assert_eq!(failed.failure_code, "insufficient_funds");
    assert_eq!(failed.card_last4, "9995");
    let open = env.get(&env.shop, &s.id).await;
    assert_eq!(open.status, CheckoutSessionStatus::Open as i32);
    assert_eq!(open.payment_status, CheckoutPaymentStatus::Unpaid as i32);

    let ok = env.attempt(&s, "succeeded", None, "4242").await;
    env.send(&s.provider_account, EventType::PaymentSucceeded, &ok)
        .await;
    let cs = env.session_object(&s.provider_session_id).await;
    env.send(&s.provider_account, EventType::CheckoutCompleted, &cs)
        .await;
    assert!(env.settled().await);
    let paid = env.payment(&env.shop, &s.payment_id).await;
    assert_eq!(paid.status, PaymentStatus::Succeeded as i32);
    assert!(paid.failure_code.is_empty(), "cleared on success");
    assert_eq!(paid.card_last4, "4242");
    assert_eq!(
        env.get(&env.shop, &s.id).await.status,
        CheckoutSessionStatus::Complete as i32
    );
}

#[tokio::test]
async fn duplicated_and_out_of_order_events_end_in_the_newest_state() {
    let env = Env::spawn().await;
    let s = env.payment_session("carol", 4_000).await;
    let declined = env
        .attempt(&s, "failed", Some("card_declined"), "0002")
        .await;
    let paid = env.attempt(&s, "succeeded", None, "4242").await;
    let completed = env.session_object(&s.provider_session_id).await;
    // Newest first, then the older decline, then the same states again under new event ids
    // (a provider may send an object's state more than once).
    for (t, object) in [
        (EventType::CheckoutCompleted, &completed),
        (EventType::PaymentSucceeded, &paid),
        (EventType::PaymentFailed, &declined),
        (EventType::PaymentSucceeded, &paid),
        (EventType::CheckoutCompleted, &completed),
    ] {
        env.send(&s.provider_account, t, object).await;
    }
    // And one delivery twice under the same id: stored once.
    let id = env
        .send(&s.provider_account, EventType::PaymentFailed, &declined)
        .await;
    env.send_as(
        &id,
        &s.provider_account,
        EventType::PaymentFailed,
        &declined,
    )
    .await;
    assert!(env.settled().await);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    assert_eq!(events, 6);
    let payment = env.payment(&env.shop, &s.payment_id).await;
    assert_eq!(payment.status, PaymentStatus::Succeeded as i32);
    assert!(payment.failure_code.is_empty());
    assert_eq!(payment.card_last4, "4242");
    let got = env.get(&env.shop, &s.id).await;
    assert_eq!(got.status, CheckoutSessionStatus::Complete as i32);
    assert_eq!(got.payment_status, CheckoutPaymentStatus::Paid as i32);
}

#[tokio::test]
async fn a_subscription_checkout_makes_an_active_or_trialing_subscription() {
    let env = Env::spawn().await;
    let (plan, [monthly, yearly, _]) = plan_of(&env.app, &env.shop, "pro").await;
    let dana = customer(&env.app, &env.shop, "dana").await;
    let mut c = client(&env.app).await;

    // 14 trial days: nothing due, so no payment; TRIALING until trial_end.
    let trial = c
        .create_checkout_session(req(
            session(&dana, CheckoutMode::Subscription, vec![item(&monthly, 3)]),
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(trial.payment_id.is_empty());
    let sub = env.subscribe(&trial).await;
    env.complete(&trial, "no_payment_required").await;
    env.send(
        &trial.provider_account,
        EventType::SubscriptionCreated,
        &sub,
    )
    .await;
    let cs = env.session_object(&trial.provider_session_id).await;
    env.send(&trial.provider_account, EventType::CheckoutCompleted, &cs)
        .await;
    // Again: applied once.
    env.send(
        &trial.provider_account,
        EventType::SubscriptionCreated,
        &sub,
    )
    .await;
    assert!(env.settled().await);
    let done = env.get(&env.shop, &trial.id).await;
    assert_eq!(done.status, CheckoutSessionStatus::Complete as i32);
    assert!(done.subscription_id.starts_with("subscription_"));
    let mut subs = env.app.subscriptions().await;
    let trialing = subs
        .get_subscription(req(
            GetSubscriptionRequest {
                id: done.subscription_id.clone(),
            },
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(trialing.status, SubscriptionStatus::Trialing as i32);
    assert_eq!(trialing.customer_id, dana);
    assert_eq!(trialing.plan_id, plan);
    assert_eq!(trialing.price_id, monthly);
    assert_eq!(trialing.quantity, 3);
    assert_eq!(trialing.checkout_session_id, trial.id);
    assert_eq!(
        trialing.provider_subscription_id,
        sub["id"].as_str().unwrap()
    );
    let trial_end = trialing.trial_end.unwrap().seconds;
    assert!((trial_end - now() - 14 * 86_400).abs() < 120, "{trial_end}");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);

    // No trial: the money is due now, so the session has its payment; ACTIVE.
    let now_due = c
        .create_checkout_session(req(
            session(&dana, CheckoutMode::Subscription, vec![item(&yearly, 1)]),
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(now_due.payment_id.starts_with("payment_"));
    let p = env.attempt(&now_due, "succeeded", None, "4242").await;
    let sub = env.subscribe(&now_due).await;
    env.send(&now_due.provider_account, EventType::PaymentSucceeded, &p)
        .await;
    env.send(
        &now_due.provider_account,
        EventType::SubscriptionCreated,
        &sub,
    )
    .await;
    assert!(env.settled().await);
    let done = env.get(&env.shop, &now_due.id).await;
    let active = subs
        .get_subscription(req(
            GetSubscriptionRequest {
                id: done.subscription_id.clone(),
            },
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.status, SubscriptionStatus::Active as i32);
    assert!(active.trial_end.is_none());
    assert_eq!(
        env.payment(&env.shop, &now_due.payment_id).await.status,
        PaymentStatus::Succeeded as i32
    );

    // ListSubscriptions by external id and status, a page at a time.
    let list = |customer, status: SubscriptionStatus, token: String| ListSubscriptionsRequest {
        page_size: 1,
        page_token: token,
        customer,
        status: status as i32,
    };
    let first = subs
        .list_subscriptions(req(
            list(
                Some(SubscriptionsOf::ExternalId("dana".into())),
                SubscriptionStatus::Unspecified,
                String::new(),
            ),
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.subscriptions.len(), 1);
    assert_eq!(first.subscriptions[0].id, trialing.id);
    let second = subs
        .list_subscriptions(req(
            list(
                Some(SubscriptionsOf::ExternalId("dana".into())),
                SubscriptionStatus::Unspecified,
                first.next_page_token.clone(),
            ),
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.subscriptions[0].id, active.id);
    assert!(second.next_page_token.is_empty());
    let only_active = subs
        .list_subscriptions(req(
            list(None, SubscriptionStatus::Active, String::new()),
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_active.subscriptions.len(), 1);
    assert_eq!(only_active.subscriptions[0].id, active.id);
    let nobody = subs
        .list_subscriptions(req(
            list(
                Some(SubscriptionsOf::ExternalId("nobody".into())),
                SubscriptionStatus::Unspecified,
                String::new(),
            ),
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(nobody.subscriptions.is_empty());
    // Another tenant sees none of them.
    let e = subs
        .get_subscription(req(GetSubscriptionRequest { id: active.id }, &env.other))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(details(&e).0, "SUBSCRIPTION_NOT_FOUND");
}

#[tokio::test]
async fn refunds_partial_full_over_and_replayed() {
    let env = Env::spawn().await;
    let (_, payment) = env.paid("erin", 5_000).await;

    let partial = env
        .refund(&payment.id, Some(1_500), Some("refund-1"))
        .await
        .unwrap();
    assert_eq!(partial.status, RefundStatus::Succeeded as i32);
    assert_eq!((partial.amount, partial.currency.as_str()), (1_500, "USD"));
    assert!(partial.provider_refund_id.starts_with("re_sbx_"));
    assert_eq!(
        env.payment(&env.shop, &payment.id).await.amount_refunded,
        1_500
    );

    // The same key again: the same refund, nothing refunded twice.
    let replay = env
        .refund(&payment.id, Some(1_500), Some("refund-1"))
        .await
        .unwrap();
    assert_eq!(replay, partial);

    // More than the rest: refused, nothing written.
    let e = env
        .refund(&payment.id, Some(3_501), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(details(&e).0, "REFUND_EXCEEDS_PAYMENT");
    assert_eq!(
        e.message(),
        "amount: 3501 was asked for, but 3500 is left to refund of the payment's 5000 \
         (1500 refunded, 0 being refunded)"
    );

    // No amount: all that is left.
    let rest = env.refund(&payment.id, None, None).await.unwrap();
    assert_eq!(rest.amount, 3_500);
    assert_eq!(rest.status, RefundStatus::Succeeded as i32);
    let full = env.payment(&env.shop, &payment.id).await;
    assert_eq!(full.amount_refunded, 5_000);
    assert_eq!(full.status, PaymentStatus::Succeeded as i32);
    // Nothing left: the refusal names what was asked for and what is left, not "0".
    let e = env.refund(&payment.id, None, None).await.unwrap_err();
    assert_eq!(details(&e).0, "REFUND_EXCEEDS_PAYMENT");
    assert_eq!(
        e.message(),
        "amount: the whole rest was asked for, but 0 is left to refund of the payment's 5000 \
         (5000 refunded, 0 being refunded)"
    );
    let e = env.refund(&payment.id, Some(1), None).await.unwrap_err();
    assert!(
        e.message()
            .starts_with("amount: 1 was asked for, but 0 is left"),
        "{}",
        e.message()
    );

    // The sandbox's refund.succeeded events, delivered: already applied, applied once.
    assert_eq!(env.deliver_outbox().await, 2);
    assert!(env.settled().await);
    assert_eq!(
        env.payment(&env.shop, &payment.id).await.amount_refunded,
        5_000
    );
    let sandbox_refunded: i64 =
        sqlx::query_scalar("SELECT amount_refunded FROM sandbox_payments WHERE id = $1")
            .bind(&payment.provider_payment_id)
            .fetch_one(&env.app.pool)
            .await
            .unwrap();
    assert_eq!(sandbox_refunded, 5_000);

    // A payment that took no money cannot be refunded; a bad amount is named.
    let open = env.payment_session("frank", 1_000).await;
    let e = env
        .refund(&open.payment_id, Some(100), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(details(&e).0, "PAYMENT_NOT_REFUNDABLE");
    let e = env.refund(&payment.id, Some(-5), None).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(details(&e).1, ["amount"]);
    let refunds: i64 = sqlx::query_scalar("SELECT count(*) FROM refunds")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    assert_eq!(refunds, 2);
}

#[tokio::test]
async fn a_refund_whose_answer_is_lost_is_settled_by_fetching_never_made_twice() {
    let env = Env::spawn().await;
    let (_, payment) = env.paid("otto", 3_000).await;
    env.faults.lose_next_answers(1);
    let e = env
        .refund(&payment.id, Some(1_000), Some("lost-1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(details(&e).0, "PROVIDER_OUTCOME_UNKNOWN");
    // Pending, it holds its amount: only 2 000 are left meanwhile.
    let e = env
        .refund(&payment.id, Some(2_001), None)
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "REFUND_EXCEEDS_PAYMENT");
    // The retry under the same key settles it by asking the sandbox (or the resolver already
    // did): the one refund, succeeded.
    let settled = env
        .refund(&payment.id, Some(1_000), Some("lost-1"))
        .await
        .unwrap();
    assert_eq!(settled.status, RefundStatus::Succeeded as i32);
    assert_eq!(
        env.payment(&env.shop, &payment.id).await.amount_refunded,
        1_000
    );
    let (coffer, sandbox): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM refunds), (SELECT count(*) FROM sandbox_refunds)",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!((coffer, sandbox), (1, 1));
}

#[tokio::test]
async fn ten_concurrent_refunds_of_1000_against_5000_leave_exactly_five() {
    let env = Env::spawn().await;
    let (_, payment) = env.paid("gina", 5_000).await;
    let mut calls = Vec::new();
    for _ in 0..10 {
        let channel = env.app.channel().await;
        let key = env.shop.clone();
        let id = payment.id.clone();
        calls.push(tokio::spawn(async move {
            coffer::grpc::pb::checkout_client::CheckoutClient::new(channel)
                .refund_payment(req(
                    RefundPaymentRequest {
                        payment_id: id,
                        amount: Some(1_000),
                        reason: 0,
                    },
                    &key,
                ))
                .await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.into_inner().status, RefundStatus::Succeeded as i32);
                ok += 1;
            }
            Err(e) => {
                assert_eq!(details(&e).0, "REFUND_EXCEEDS_PAYMENT", "{e:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (5, 5));
    assert_eq!(
        env.payment(&env.shop, &payment.id).await.amount_refunded,
        5_000
    );
    let (rows, pending): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM refunds WHERE status = 'succeeded'),
                (SELECT amount_refund_pending FROM payments)",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!((rows, pending), (5, 0));
}

#[tokio::test]
async fn payments_list_by_customer_and_status_a_page_at_a_time_and_stay_in_their_tenant() {
    let env = Env::spawn().await;
    let (a, _) = env.paid("hana", 1_000).await;
    let b = env.payment_session("ivan", 2_000).await;
    let c = env.payment_session("hana-2", 3_000).await;
    let mut checkout = client(&env.app).await;
    let list = |customer_id: &str, status: PaymentStatus, token: &str| ListPaymentsRequest {
        page_size: 2,
        page_token: token.into(),
        customer_id: customer_id.into(),
        status: status as i32,
        subscription_id: String::new(),
    };
    let first = checkout
        .list_payments(req(list("", PaymentStatus::Unspecified, ""), &env.shop))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = first.payments.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, [a.payment_id.as_str(), b.payment_id.as_str()]);
    let second = checkout
        .list_payments(req(
            list("", PaymentStatus::Unspecified, &first.next_page_token),
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.payments.len(), 1);
    assert_eq!(second.payments[0].id, c.payment_id);
    assert!(second.next_page_token.is_empty());
    // A token is only good for the filters it was made with.
    let e = checkout
        .list_payments(req(
            list("", PaymentStatus::Created, &first.next_page_token),
            &env.shop,
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&e).1, ["page_token"]);
    let succeeded = checkout
        .list_payments(req(list("", PaymentStatus::Succeeded, ""), &env.shop))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(succeeded.payments.len(), 1);
    assert_eq!(succeeded.payments[0].id, a.payment_id);
    let of_ivan = checkout
        .list_payments(req(
            list(&b.customer_id, PaymentStatus::Unspecified, ""),
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(of_ivan.payments.len(), 1);
    assert_eq!(of_ivan.payments[0].id, b.payment_id);

    // The other tenant sees none of it, and cannot refund it.
    let theirs = checkout
        .list_payments(req(list("", PaymentStatus::Unspecified, ""), &env.other))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.payments.is_empty());
    let e = checkout
        .get_payment(req(
            GetPaymentRequest {
                id: a.payment_id.clone(),
            },
            &env.other,
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "PAYMENT_NOT_FOUND");
    let e = checkout
        .refund_payment(req(
            RefundPaymentRequest {
                payment_id: a.payment_id.clone(),
                amount: None,
                reason: 0,
            },
            &env.other,
        ))
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "PAYMENT_NOT_FOUND");
    // Nor can an event on its account touch the shop's objects: it fails, nothing changes.
    let declined = env
        .attempt(&b, "failed", Some("card_declined"), "0002")
        .await;
    env.send("other-sandbox", EventType::PaymentFailed, &declined)
        .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let failed: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_events WHERE status IN ('failed', 'dead')",
            )
            .fetch_one(&env.app.pool)
            .await
            .unwrap();
            failed == 1
        })
        .await
    );
    assert_eq!(
        env.payment(&env.shop, &b.payment_id).await.status,
        PaymentStatus::Created as i32
    );
}

#[tokio::test]
async fn verify_asks_the_provider_and_applies_what_it_says() {
    let env = Env::spawn().await;
    let s = env.payment_session("jon", 7_000).await;
    // Paid on the sandbox; no event has arrived.
    env.attempt(&s, "succeeded", None, "4242").await;
    assert_eq!(
        env.get(&env.shop, &s.id).await.status,
        CheckoutSessionStatus::Open as i32
    );
    let mut c = client(&env.app).await;
    let verified = c
        .verify_checkout_session(req(
            VerifyCheckoutSessionRequest { id: s.id.clone() },
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.status, CheckoutSessionStatus::Complete as i32);
    assert_eq!(verified.payment_status, CheckoutPaymentStatus::Paid as i32);
    let paid = env.payment(&env.shop, &s.payment_id).await;
    assert_eq!(paid.status, PaymentStatus::Succeeded as i32);
    assert_eq!(paid.card_last4, "4242");
    // The events arriving afterwards change nothing.
    let p = env.payment_object(&s.provider_session_id).await;
    env.send(&s.provider_account, EventType::PaymentSucceeded, &p)
        .await;
    assert!(env.settled().await);
    assert_eq!(env.payment(&env.shop, &s.payment_id).await, paid);
    // Another tenant cannot verify it.
    let e = c
        .verify_checkout_session(req(VerifyCheckoutSessionRequest { id: s.id }, &env.other))
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "CHECKOUT_SESSION_NOT_FOUND");
}

#[tokio::test]
async fn an_open_session_expires_at_expires_at_with_its_unpaid_payment() {
    let env = Env::spawn().await;
    let s = env.payment_session("kim", 1_200).await;
    let declined = env
        .attempt(&s, "failed", Some("card_declined"), "0002")
        .await;
    env.send(&s.provider_account, EventType::PaymentFailed, &declined)
        .await;
    let paid = env.payment_session("lea", 1_300).await;
    let p = env.attempt(&paid, "succeeded", None, "4242").await;
    env.send(&paid.provider_account, EventType::PaymentSucceeded, &p)
        .await;
    let cs = env.session_object(&paid.provider_session_id).await;
    env.send(&paid.provider_account, EventType::CheckoutCompleted, &cs)
        .await;
    assert!(env.settled().await);
    // Time passes: both sessions' expires_at is behind us.
    sqlx::query("UPDATE checkout_sessions SET expires_at = now() - interval '1 second'")
        .execute(&env.app.pool)
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            env.get(&env.shop, &s.id).await.status == CheckoutSessionStatus::Expired as i32
        })
        .await
    );
    let expired = env.payment(&env.shop, &s.payment_id).await;
    assert_eq!(expired.status, PaymentStatus::Expired as i32);
    assert!(expired.failure_code.is_empty());
    // The completed one is left alone.
    assert_eq!(
        env.get(&env.shop, &paid.id).await.status,
        CheckoutSessionStatus::Complete as i32
    );
    assert_eq!(
        env.payment(&env.shop, &paid.payment_id).await.status,
        PaymentStatus::Succeeded as i32
    );
    let e = env.refund(&s.payment_id, None, None).await.unwrap_err();
    assert_eq!(details(&e).0, "PAYMENT_NOT_REFUNDABLE");
}

#[tokio::test]
async fn a_confirmation_step_is_provider_pending_until_approved_or_failed() {
    let env = Env::spawn().await;
    let s = env.payment_session("pia", 3_300).await;
    let step = env.attempt(&s, "requires_action", None, "3155").await;
    env.send(&s.provider_account, EventType::PaymentFailed, &step)
        .await;
    assert!(env.settled().await);
    let pending = env.payment(&env.shop, &s.payment_id).await;
    assert_eq!(pending.status, PaymentStatus::ProviderPending as i32);
    let failed = env
        .attempt(&s, "failed", Some("authentication_failed"), "3155")
        .await;
    env.send(&s.provider_account, EventType::PaymentFailed, &failed)
        .await;
    assert!(env.settled().await);
    let failed = env.payment(&env.shop, &s.payment_id).await;
    assert_eq!(failed.status, PaymentStatus::Failed as i32);
    assert_eq!(failed.failure_code, "authentication_failed");
}

#[tokio::test]
async fn verify_makes_the_subscription_a_session_made() {
    let env = Env::spawn().await;
    let (_, [monthly, _, _]) = plan_of(&env.app, &env.shop, "team").await;
    let who = customer(&env.app, &env.shop, "quinn").await;
    let mut c = client(&env.app).await;
    let s = c
        .create_checkout_session(req(
            session(&who, CheckoutMode::Subscription, vec![item(&monthly, 1)]),
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    env.subscribe(&s).await;
    env.complete(&s, "no_payment_required").await;
    let verified = c
        .verify_checkout_session(req(
            VerifyCheckoutSessionRequest { id: s.id.clone() },
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.status, CheckoutSessionStatus::Complete as i32);
    assert!(verified.subscription_id.starts_with("subscription_"));
    let sub = env
        .app
        .subscriptions()
        .await
        .get_subscription(req(
            GetSubscriptionRequest {
                id: verified.subscription_id.clone(),
            },
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sub.status, SubscriptionStatus::Trialing as i32);
    // Verifying again, or the event arriving late, makes no second one.
    c.verify_checkout_session(req(VerifyCheckoutSessionRequest { id: s.id }, &env.shop))
        .await
        .unwrap();
    let object = env.subscription_object(&s.provider_session_id).await;
    env.send(&s.provider_account, EventType::SubscriptionCreated, &object)
        .await;
    assert!(env.settled().await);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn a_refund_the_provider_could_not_take_frees_its_amount_and_a_retry_asks_again() {
    let env = Env::spawn().await;
    let (_, payment) = env.paid("rosa", 2_000).await;
    env.faults.refuse_next(1);
    let e = env
        .refund(&payment.id, None, Some("busy-1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(details(&e).0, "PROVIDER_UNAVAILABLE");
    let (status, pending): (String, i64) = sqlx::query_as(
        "SELECT r.status, p.amount_refund_pending FROM refunds r JOIN payments p ON p.id = r.payment_id",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), pending), ("failed", 0));
    // The same key again: the same refund, asked for again, now taken.
    let refund = env.refund(&payment.id, None, Some("busy-1")).await.unwrap();
    assert_eq!(refund.status, RefundStatus::Succeeded as i32);
    assert_eq!(refund.amount, 2_000);
    assert_eq!(
        env.payment(&env.shop, &payment.id).await.amount_refunded,
        2_000
    );
    let (coffer, sandbox): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM refunds), (SELECT count(*) FROM sandbox_refunds)",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!((coffer, sandbox), (1, 1));
}

#[tokio::test]
async fn the_sandbox_expiring_a_session_on_its_clock_expires_it_here_through_real_delivery() {
    let env = Env::spawn_with(true).await;
    let s = env.payment_session("sam", 4_400).await;
    let declined = env
        .attempt(&s, "failed", Some("card_declined"), "0002")
        .await;
    env.send(&s.provider_account, EventType::PaymentFailed, &declined)
        .await;
    // A day and a minute later on the sandbox's clock: it expires the session and tells Coffer,
    // over HTTP through the sidecar, signed with the account's secret.
    let later =
        time::OffsetDateTime::now_utc() + time::Duration::hours(24) + time::Duration::minutes(1);
    coffer::grpc::pb::sandbox_client::SandboxClient::new(env.app.channel().await)
        .advance_clock(req(
            coffer::grpc::pb::AdvanceClockRequest {
                account: s.provider_account.clone(),
                to: Some(prost_types::Timestamp {
                    seconds: later.unix_timestamp(),
                    nanos: 0,
                }),
            },
            &env.shop,
        ))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            env.get(&env.shop, &s.id).await.status == CheckoutSessionStatus::Expired as i32
        })
        .await
    );
    let expired = env.payment(&env.shop, &s.payment_id).await;
    assert_eq!(expired.status, PaymentStatus::Expired as i32);
    let delivered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events
         WHERE event_type = 'checkout.session.expired' AND status = 'processed'",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!(delivered, 1);
}

/// A dispute's state as a provider's fetched dispute gives it, applied by the appliers the
/// inbox uses for triggers (`app::triggers::apply`): an open dispute makes the payment
/// DISPUTED (not refundable, listed under DISPUTED), an older state changes nothing, a won one
/// makes it SUCCEEDED again, a lost one leaves it DISPUTED with the amount lost.
#[tokio::test]
async fn a_dispute_marks_the_payment_disputed_and_its_close_settles_it() {
    use coffer::domain::ids::{CheckoutId, TenantId};
    use coffer::domain::payment::DisputeStatus::{self, Lost, Open, Won};
    use coffer::providers::{ProviderDispute, ProviderObject};

    let env = Env::spawn().await;
    let (s, payment) = env.paid("dora", 5_000).await;
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'shop'")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    let checkout = CheckoutId::parse(&s.id).unwrap().as_uuid();
    let apply = |id: &'static str, amount: i64, status: DisputeStatus, version: i64| {
        let pool = env.app.pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let dispute = ProviderDispute {
                id: id.into(),
                client_reference: checkout,
                // The session's own payment, which the sandbox names no differently.
                payment: String::new(),
                amount,
                currency: "USD".into(),
                status,
                reason: Some("fraudulent".into()),
                version,
            };
            coffer::app::triggers::apply(
                &mut tx,
                TenantId::from_uuid(tenant),
                &ProviderObject::Dispute(dispute),
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
        }
    };
    let now = || async { env.payment(&env.shop, &payment.id).await };

    apply("dp_1", 5_000, Open, 2).await;
    let p = now().await;
    assert_eq!(p.status, PaymentStatus::Disputed as i32);
    assert_eq!(p.amount_lost, 0);
    let listed = client(&env.app)
        .await
        .list_payments(req(
            ListPaymentsRequest {
                page_size: 10,
                page_token: String::new(),
                customer_id: String::new(),
                status: PaymentStatus::Disputed as i32,
                subscription_id: String::new(),
            },
            &env.shop,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.payments, std::slice::from_ref(&p));
    let e = env.refund(&payment.id, Some(100), None).await.unwrap_err();
    assert_eq!(details(&e).0, "PAYMENT_NOT_REFUNDABLE");

    // An older state of the dispute, fetched before and applied after: nothing changes.
    apply("dp_1", 5_000, Won, 1).await;
    assert_eq!(now().await.status, PaymentStatus::Disputed as i32);

    // Won: the money stays.
    apply("dp_1", 5_000, Won, 3).await;
    let p = now().await;
    assert_eq!(p.status, PaymentStatus::Succeeded as i32);
    assert_eq!(p.amount_lost, 0);

    // A second dispute, lost: DISPUTED for good, with what it took.
    apply("dp_2", 2_000, Open, 1).await;
    apply("dp_2", 2_000, Lost, 2).await;
    let p = now().await;
    assert_eq!(p.status, PaymentStatus::Disputed as i32);
    assert_eq!(p.amount_lost, 2_000);
    let disputes: i64 = sqlx::query_scalar("SELECT count(*) FROM disputes")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    assert_eq!(disputes, 2, "one row per provider dispute");
}
