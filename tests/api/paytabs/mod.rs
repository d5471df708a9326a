//! A PayTabs account end to end, through Coffer's gRPC API and its webhook sidecar, against a
//! fake PayTabs on loopback ([`fake`]) that follows PayTabs' wire format and signs its
//! callbacks as PayTabs does. The inbox workers run, so a callback is fetched (the transaction
//! query) and applied as it would be in production; the outbound stack is short, so retries
//! and timeouts take milliseconds.

mod fake;

use std::net::SocketAddr;
use std::time::Duration;

use coffer::app::inbox::{Handlers, InboxConfig};
use coffer::domain::ids::{CheckoutId, RefundId};
use coffer::grpc::pb::{
    CheckoutMode, CheckoutPaymentStatus, CheckoutSession, CheckoutSessionStatus, Payment,
    PaymentStatus, RefundPaymentRequest, RefundStatus, VerifyCheckoutSessionRequest,
};
use coffer::providers::outbound::{BreakerConfig, OutboundConfig};
use serde_json::{Value, json};
use tonic::Code;

use self::fake::{Endpoint, Fake, Fault, PROFILE_ID, SERVER_KEY};
use crate::checkout::{client, customer, inline, session};
use crate::helpers::{TestApp, details, eventually, idem, req};

const ACCOUNT: &str = "acme-paytabs";
// Generous: `eventually` returns as soon as the condition holds, and a loaded CI machine is slow.
const WAIT: Duration = Duration::from_secs(30);

struct Env {
    app: TestApp,
    fake: Fake,
    sidecar: SocketAddr,
}

/// The outbound stack of the tests: two attempts of 400 ms within 1.2 s, a breaker that
/// cools down in 200 ms.
fn outbound() -> OutboundConfig {
    OutboundConfig {
        connect_timeout: Duration::from_millis(200),
        attempt_timeout: Duration::from_millis(400),
        deadline: Duration::from_millis(1_200),
        max_attempts: 2,
        base_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        breaker: BreakerConfig {
            window: Duration::from_secs(2),
            cool_down: Duration::from_millis(200),
            ..BreakerConfig::default()
        },
        ..OutboundConfig::default()
    }
}

impl Env {
    /// A server whose tenant "acme" pays through a PayTabs account (its default) on the fake,
    /// with its sidecar, inbox workers and resolver running.
    async fn spawn() -> Self {
        let fake = Fake::start().await;
        let toml = format!(
            r#"
            [[account]]
            name = "{ACCOUNT}"
            tenant = "acme"
            provider = "paytabs"
            api_key_env = "PAYTABS_SERVER_KEY"
            profile_id = {PROFILE_ID}
            region = "ARE"
            api_base = "{}"

            [tenant.acme]
            default_account = "{ACCOUNT}"
            "#,
            fake.base()
        );
        let app = TestApp::spawn_configured(&toml, &[("PAYTABS_SERVER_KEY", SERVER_KEY)], |c| {
            c.http_addr = Some("127.0.0.1:0".parse().unwrap());
            c.resolve_interval = Duration::from_millis(100);
            c.outbound = outbound();
            c.inbox = InboxConfig {
                workers: 2,
                batch: 8,
                poll: Duration::from_millis(20),
                backoff_base: Duration::from_millis(5),
                backoff_cap: Duration::from_millis(40),
                handler_timeout: Duration::from_secs(30),
                handlers: Handlers::builtin(),
                lease: Duration::from_secs(30),
            };
        })
        .await;
        let sidecar = app.http_addr.expect("the sidecar runs");
        Self { app, fake, sidecar }
    }

    /// An OPEN PAYMENT session of one inline line of `amount` `currency` × `quantity`.
    async fn open(
        &self,
        external_id: &str,
        amount: i64,
        currency: &str,
        quantity: i64,
    ) -> CheckoutSession {
        let who = customer(&self.app, &self.app.key, external_id).await;
        client(&self.app)
            .await
            .create_checkout_session(req(
                session(
                    &who,
                    CheckoutMode::Payment,
                    vec![inline(amount, currency, quantity)],
                ),
                &self.app.key,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    async fn session(&self, id: &str) -> CheckoutSession {
        self.app.checkout_session(id).await
    }

    async fn payment(&self, id: &str) -> Payment {
        self.app.payment(id).await
    }

    /// The inbox's (status, attempts) of the callback event `tran_ref:status`.
    async fn event(&self, event_id: &str) -> Option<(String, i32)> {
        sqlx::query_as(
            "SELECT status, attempts FROM webhook_events WHERE account = $1 AND provider_event_id = $2",
        )
        .bind(ACCOUNT)
        .bind(event_id)
        .fetch_optional(&self.app.pool)
        .await
        .unwrap()
    }

    /// Waits until the callback event `event_id` is `status`.
    async fn event_becomes(&self, event_id: &str, status: &str) -> bool {
        eventually(WAIT, || async {
            self.event(event_id).await.is_some_and(|(s, _)| s == status)
        })
        .await
    }
}

fn cart_of(session: &CheckoutSession) -> String {
    // The cart id is Coffer's checkout id, as the API writes it.
    assert!(CheckoutId::parse(&session.id).is_ok());
    session.id.clone()
}

/// The full flow: CreateCheckoutSession makes a hosted page on PayTabs, the customer pays, the
/// signed callback is confirmed with the transaction query and completes the session; a
/// partial RefundPayment refunds on PayTabs, and its callback changes nothing more.
#[tokio::test]
async fn a_paid_page_completes_the_session_and_a_partial_refund_follows() {
    let env = Env::spawn().await;
    let s = env.open("alice", 2_500, "USD", 2).await;
    assert_eq!(s.status, CheckoutSessionStatus::Open as i32);
    assert_eq!(s.provider_account, ACCOUNT);
    assert!(s.provider_session_id.starts_with("TST"), "{s:?}");
    assert_eq!(
        s.url,
        format!(
            "https://secure.paytabs.com/payment/page/{}",
            s.provider_session_id
        )
    );

    // What PayTabs was asked for, exactly as its API documents it.
    let [page] = env.fake.seen(Endpoint::Request).try_into().unwrap();
    assert_eq!(page.authorization.as_deref(), Some(SERVER_KEY));
    assert_eq!(
        page.idempotency_key, None,
        "PayTabs has no idempotency keys"
    );
    let body = page.body;
    assert_eq!(body["profile_id"], json!(PROFILE_ID));
    assert_eq!(body["tran_type"], "sale");
    assert_eq!(body["tran_class"], "ecom");
    assert_eq!(body["cart_id"], cart_of(&s));
    assert_eq!(body["cart_currency"], "USD");
    assert_eq!(body["cart_amount"], "50.00");
    assert_eq!(body["cart_description"], "2 × Consulting hour");
    assert_eq!(
        body["return"],
        format!("https://shop.acme.example/ok?session={}", s.id)
    );
    assert_eq!(body["hide_shipping"], true);
    assert!(body.get("callback").is_none(), "the profile's IPN is used");
    let expires = body["user_defined"]["udf1"].as_str().unwrap();
    assert!(expires.ends_with('Z'), "{expires}");

    // The customer pays; PayTabs calls back.
    let tran_ref = s.provider_session_id.clone();
    env.fake.pay(&tran_ref, "A", "G84417");
    assert_eq!(
        env.fake.callback(env.sidecar, ACCOUNT, &tran_ref).await,
        200
    );
    assert!(
        env.event_becomes(&format!("{tran_ref}:A"), "processed")
            .await
    );
    let done = env.session(&s.id).await;
    assert_eq!(done.status, CheckoutSessionStatus::Complete as i32);
    assert_eq!(done.payment_status, CheckoutPaymentStatus::Paid as i32);
    assert_eq!(done.url, s.url, "the page's URL is kept");
    assert_eq!(done.expires_at, s.expires_at, "its expiry too");
    let paid = env.payment(&s.payment_id).await;
    assert_eq!(paid.status, PaymentStatus::Succeeded as i32);
    assert_eq!((paid.amount, paid.currency.as_str()), (5_000, "USD"));
    assert_eq!(paid.provider_payment_id, tran_ref);
    assert_eq!(
        (paid.card_brand.as_str(), paid.card_last4.as_str()),
        ("visa", "1111")
    );
    // Confirmed by the query before it was applied.
    assert!(
        env.fake
            .seen(Endpoint::Query)
            .iter()
            .any(|q| q.body["tran_ref"] == tran_ref.as_str())
    );

    // A partial refund.
    let refund = client(&env.app)
        .await
        .refund_payment(idem(
            RefundPaymentRequest {
                payment_id: s.payment_id.clone(),
                amount: Some(1_250),
                reason: 0,
            },
            &env.app.key,
            "refund-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refund.status, RefundStatus::Succeeded as i32);
    assert_eq!(refund.amount, 1_250);
    let [made] = env
        .fake
        .transactions(&refund.id, "Refund")
        .try_into()
        .unwrap();
    assert!(RefundId::parse(&refund.id).is_ok());
    assert_eq!(made["previous_tran_ref"], tran_ref.as_str());
    assert_eq!(made["cart_amount"], "12.50");
    assert_eq!(
        refund.provider_refund_id,
        made["tran_ref"].as_str().unwrap()
    );
    let asked = env.fake.seen(Endpoint::Request).pop().unwrap().body;
    assert_eq!(
        (asked["tran_type"].as_str(), asked["tran_class"].as_str()),
        (Some("refund"), Some("ecom"))
    );
    assert_eq!(asked["tran_ref"], tran_ref.as_str());
    assert_eq!(env.payment(&s.payment_id).await.amount_refunded, 1_250);

    // PayTabs' callback for the refund: fetched, applied, nothing more refunded.
    let refund_ref = made["tran_ref"].as_str().unwrap();
    assert_eq!(
        env.fake.callback(env.sidecar, ACCOUNT, refund_ref).await,
        200
    );
    assert!(
        env.event_becomes(&format!("{refund_ref}:A"), "processed")
            .await
    );
    assert!(
        env.fake
            .seen(Endpoint::Query)
            .iter()
            .any(|q| q.body["tran_ref"] == refund_ref)
    );
    let after = env.payment(&s.payment_id).await;
    assert_eq!(after.amount_refunded, 1_250);
    assert_eq!(after.status, PaymentStatus::Succeeded as i32);
    // The same callback again is the same event: stored once.
    assert_eq!(
        env.fake.callback(env.sidecar, ACCOUNT, refund_ref).await,
        200
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    assert_eq!(events, 2);
    env.app.stop().await.unwrap();
}

/// A callback not signed with the account's server key is refused before anything is read,
/// and changes nothing.
#[tokio::test]
async fn a_forged_callback_is_refused() {
    let env = Env::spawn().await;
    let s = env.open("bob", 2_500, "USD", 1).await;
    let tran_ref = s.provider_session_id.clone();
    let mut forged = env.fake.callback_body(&tran_ref);
    forged["payment_result"] = json!({"response_status": "A", "response_code": "G1"});
    for key in ["not-the-server-key", ""] {
        let status = env
            .fake
            .post_callback(env.sidecar, ACCOUNT, &forged, key)
            .await;
        assert_eq!(status, 400, "signed with {key:?}");
    }
    // Signed right, but a byte changed after signing.
    let raw = serde_json::to_vec(&forged).unwrap();
    let signature = coffer::providers::signature::sign::body_hex(SERVER_KEY, &raw);
    let tampered = String::from_utf8(raw).unwrap().replace("G1", "G2");
    let response = coffer::providers::outbound::client_builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{}/webhooks/{ACCOUNT}", env.sidecar))
        .header("signature", signature)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    assert_eq!(events, 0);
    assert!(env.fake.seen(Endpoint::Query).is_empty(), "nothing fetched");
    let still = env.session(&s.id).await;
    assert_eq!(still.status, CheckoutSessionStatus::Open as i32);
    assert_eq!(
        env.payment(&s.payment_id).await.status,
        PaymentStatus::Created as i32
    );
    env.app.stop().await.unwrap();
}

/// The callback's body is what PayTabs sent once; the query is what PayTabs holds. A callback
/// claiming a payment whose transaction the query says was declined is applied as declined.
#[tokio::test]
async fn a_callback_is_applied_as_the_query_says_not_as_it_claims() {
    let env = Env::spawn().await;
    let s = env.open("carol", 2_500, "USD", 1).await;
    let tran_ref = s.provider_session_id.clone();
    env.fake.pay(&tran_ref, "A", "G84417");
    let claims_paid = env.fake.callback_body(&tran_ref);
    // PayTabs has it declined (its signed callback body is stale, say).
    env.fake.pay(&tran_ref, "D", "831");
    assert_eq!(
        env.fake
            .post_callback(env.sidecar, ACCOUNT, &claims_paid, SERVER_KEY)
            .await,
        200
    );
    assert!(
        env.event_becomes(&format!("{tran_ref}:A"), "processed")
            .await
    );
    let p = env.payment(&s.payment_id).await;
    assert_eq!(p.status, PaymentStatus::Failed as i32);
    assert_eq!(p.failure_code, "831");
    let still = env.session(&s.id).await;
    assert_eq!(still.status, CheckoutSessionStatus::Open as i32);
    assert_eq!(still.payment_status, CheckoutPaymentStatus::Unpaid as i32);
    env.app.stop().await.unwrap();
}

/// While the transaction query fails, the callback's event is retried, never dead, and once
/// PayTabs answers again it is applied.
#[tokio::test]
async fn a_failing_query_retries_the_event_until_it_answers() {
    let env = Env::spawn().await;
    let s = env.open("dave", 2_500, "USD", 1).await;
    let tran_ref = s.provider_session_id.clone();
    env.fake.pay(&tran_ref, "A", "G84417");
    for _ in 0..200 {
        env.fake.fail_next(
            Endpoint::Query,
            Fault::Answer(500, json!({"code": 500, "message": "Internal error"})),
        );
    }
    assert_eq!(
        env.fake.callback(env.sidecar, ACCOUNT, &tran_ref).await,
        200
    );
    let id = format!("{tran_ref}:A");
    // Failed more times than an event may before it is dead, were PayTabs not down, and
    // waiting for its next attempt (between attempts it is `failed`; during one, `processing`).
    assert!(
        eventually(WAIT, || async {
            env.event(&id)
                .await
                .is_some_and(|(status, attempts)| status == "failed" && attempts >= 12)
        })
        .await
    );
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE status = 'dead'")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    assert_eq!(
        env.payment(&s.payment_id).await.status,
        PaymentStatus::Created as i32
    );
    env.fake.heal();
    assert!(env.event_becomes(&id, "processed").await);
    assert_eq!(
        env.payment(&s.payment_id).await.status,
        PaymentStatus::Succeeded as i32
    );
    env.app.stop().await.unwrap();
}

/// A validation error is PayTabs' refusal: FAILED_PRECONDITION with its code, asked once.
#[tokio::test]
async fn a_validation_error_is_definitive_and_not_retried() {
    let env = Env::spawn().await;
    env.fake.fail_next(
        Endpoint::Request,
        Fault::Answer(
            400,
            json!({"code": 206, "message": "Invalid currency code", "trace": "PMNT0401.X"}),
        ),
    );
    let who = customer(&env.app, &env.app.key, "erin").await;
    let e = client(&env.app)
        .await
        .create_checkout_session(req(
            session(&who, CheckoutMode::Payment, vec![inline(2_500, "USD", 1)]),
            &env.app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(details(&e).0, "PROVIDER_REJECTED");
    assert!(e.message().contains("206"), "{}", e.message());
    assert_eq!(
        env.fake.seen(Endpoint::Request).len(),
        1,
        "never sent again"
    );
    env.app.stop().await.unwrap();
}

/// A refused server key is not the request's fault: UNAVAILABLE, for an operator to fix.
#[tokio::test]
async fn a_refused_server_key_is_retryable() {
    let env = Env::spawn().await;
    env.fake.fail_next(
        Endpoint::Request,
        Fault::Answer(
            401,
            json!({"code": 1, "message": "Authentication failed. Check authentication header."}),
        ),
    );
    let who = customer(&env.app, &env.app.key, "frank").await;
    let e = client(&env.app)
        .await
        .create_checkout_session(req(
            session(&who, CheckoutMode::Payment, vec![inline(2_500, "USD", 1)]),
            &env.app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(!e.message().contains(SERVER_KEY));
    env.app.stop().await.unwrap();
}

/// KWD has three decimals and JPY none: amounts go to PayTabs and come back exactly.
#[tokio::test]
async fn three_decimal_and_zero_decimal_amounts_are_exact() {
    let env = Env::spawn().await;
    let kwd = env.open("gulf", 1_250, "KWD", 3).await;
    let jpy = env.open("tokyo", 1_500, "JPY", 1).await;
    let sent: Vec<Value> = env
        .fake
        .seen(Endpoint::Request)
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert_eq!(
        (
            sent[0]["cart_currency"].as_str(),
            sent[0]["cart_amount"].as_str()
        ),
        (Some("KWD"), Some("3.750"))
    );
    assert_eq!(
        (
            sent[1]["cart_currency"].as_str(),
            sent[1]["cart_amount"].as_str()
        ),
        (Some("JPY"), Some("1500"))
    );
    for s in [&kwd, &jpy] {
        env.fake.pay(&s.provider_session_id, "A", "G1");
        assert_eq!(
            env.fake
                .callback(env.sidecar, ACCOUNT, &s.provider_session_id)
                .await,
            200
        );
        assert!(
            env.event_becomes(&format!("{}:A", s.provider_session_id), "processed")
                .await
        );
    }
    let paid = env.payment(&kwd.payment_id).await;
    assert_eq!(paid.status, PaymentStatus::Succeeded as i32);
    assert_eq!((paid.amount, paid.currency.as_str()), (3_750, "KWD"));
    assert_eq!(env.payment(&jpy.payment_id).await.amount, 1_500);
    let refund = client(&env.app)
        .await
        .refund_payment(req(
            RefundPaymentRequest {
                payment_id: kwd.payment_id.clone(),
                amount: Some(125),
                reason: 0,
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refund.status, RefundStatus::Succeeded as i32);
    let [made] = env
        .fake
        .transactions(&refund.id, "Refund")
        .try_into()
        .unwrap();
    assert_eq!(made["cart_amount"], "0.125");
    assert_eq!(env.payment(&kwd.payment_id).await.amount_refunded, 125);
    env.app.stop().await.unwrap();
}

/// A page whose answer never came back (PayTabs made it, then answered too late) is found by
/// its cart id, not made again: exactly one page on PayTabs. Its URL reached nobody, so the
/// session is EXPIRED and the caller makes a new one.
#[tokio::test]
async fn a_lost_create_answer_is_settled_by_the_cart_id_with_one_page() {
    let env = Env::spawn().await;
    env.fake.fail_next(
        Endpoint::Request,
        Fault::Delay(Duration::from_millis(1_500)),
    );
    let who = customer(&env.app, &env.app.key, "gina").await;
    let request = session(&who, CheckoutMode::Payment, vec![inline(2_500, "USD", 1)]);
    let mut checkout = client(&env.app).await;
    let e = checkout
        .create_checkout_session(idem(request.clone(), &env.app.key, "create-1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // The caller's retry under the same key settles it by querying the cart id (ABORTED, a
    // conflict with the resolver settling it at the same moment, says retry).
    let mut settled = None;
    for _ in 0..5 {
        match checkout
            .create_checkout_session(idem(request.clone(), &env.app.key, "create-1"))
            .await
        {
            Ok(r) => {
                settled = Some(r.into_inner());
                break;
            }
            Err(e) if e.code() == Code::Aborted => continue,
            Err(e) => panic!("{e:?}"),
        }
    }
    let s = settled.expect("settled within five retries");
    let pages = env.fake.transactions(&s.id, "Sale");
    assert_eq!(pages.len(), 1, "one page: {pages:?}");
    assert_eq!(
        env.fake.seen(Endpoint::Request).len(),
        1,
        "never asked twice"
    );
    assert!(
        env.fake
            .seen(Endpoint::Query)
            .iter()
            .any(|q| q.body["cart_id"] == s.id.as_str())
    );
    assert_eq!(
        s.provider_session_id,
        pages[0]["tran_ref"].as_str().unwrap()
    );
    assert_eq!(s.status, CheckoutSessionStatus::Expired as i32);
    assert_eq!(
        env.payment(&s.payment_id).await.status,
        PaymentStatus::Expired as i32
    );
    env.app.stop().await.unwrap();
}

/// A callback for a page Coffer has not recorded yet (its create's answer is still unknown)
/// is fetched by its tran_ref and applied to the session its cart id names: one session,
/// recorded and paid, and the journal settles to the same page.
#[tokio::test]
async fn a_callback_racing_an_unknown_create_completes_the_one_session() {
    let env = Env::spawn().await;
    env.fake.fail_next(
        Endpoint::Request,
        Fault::Delay(Duration::from_millis(1_500)),
    );
    let who = customer(&env.app, &env.app.key, "hana").await;
    let e = client(&env.app)
        .await
        .create_checkout_session(req(
            session(&who, CheckoutMode::Payment, vec![inline(2_500, "USD", 1)]),
            &env.app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let [page] = env.fake.seen(Endpoint::Request).try_into().unwrap();
    let cart = page.body["cart_id"].as_str().unwrap().to_owned();
    let [made] = env.fake.transactions(&cart, "Sale").try_into().unwrap();
    let tran_ref = made["tran_ref"].as_str().unwrap().to_owned();
    env.fake.pay(&tran_ref, "A", "G84417");
    assert_eq!(
        env.fake.callback(env.sidecar, ACCOUNT, &tran_ref).await,
        200
    );
    assert!(
        env.event_becomes(&format!("{tran_ref}:A"), "processed")
            .await
    );
    let s = env.session(&cart).await;
    assert_eq!(s.status, CheckoutSessionStatus::Complete as i32);
    assert_eq!(s.provider_session_id, tran_ref);
    assert_eq!(
        env.payment(&s.payment_id).await.status,
        PaymentStatus::Succeeded as i32
    );
    // The resolver settles the operation with the same page.
    assert!(
        eventually(WAIT, || async {
            let status: String = sqlx::query_scalar(
                "SELECT status FROM provider_operations WHERE kind = 'create_checkout_session'",
            )
            .fetch_one(&env.app.pool)
            .await
            .unwrap();
            status == "succeeded"
        })
        .await
    );
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM checkout_sessions")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 1);
    assert_eq!(env.fake.transactions(&cart, "Sale").len(), 1);
    env.app.stop().await.unwrap();
}

/// A refund whose answer never came back is found by its cart id (the refund's id) when the
/// caller retries: applied once, never refunded twice.
#[tokio::test]
async fn a_lost_refund_answer_is_settled_by_the_cart_id_and_refunds_once() {
    let env = Env::spawn().await;
    let s = env.open("ivan", 4_000, "USD", 1).await;
    env.fake.pay(&s.provider_session_id, "A", "G1");
    assert_eq!(
        env.fake
            .callback(env.sidecar, ACCOUNT, &s.provider_session_id)
            .await,
        200
    );
    assert!(
        env.event_becomes(&format!("{}:A", s.provider_session_id), "processed")
            .await
    );
    env.fake.fail_next(
        Endpoint::Request,
        Fault::Delay(Duration::from_millis(1_500)),
    );
    let refund = |key: &'static str| {
        let payment_id = s.payment_id.clone();
        let api_key = env.app.key.clone();
        let app = &env.app;
        async move {
            client(app)
                .await
                .refund_payment(idem(
                    RefundPaymentRequest {
                        payment_id,
                        amount: Some(1_000),
                        reason: 0,
                    },
                    &api_key,
                    key,
                ))
                .await
        }
    };
    let e = refund("refund-lost").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    // The caller's retry under the same key settles it by querying the cart id. The journal's
    // resolver may be settling it at the same moment; a conflict between the two is ABORTED,
    // which says retry.
    let mut settled = None;
    for _ in 0..5 {
        match refund("refund-lost").await {
            Ok(r) => {
                settled = Some(r.into_inner());
                break;
            }
            Err(e) if e.code() == Code::Aborted => continue,
            Err(e) => panic!("{e:?}"),
        }
    }
    let settled = settled.expect("settled within five retries");
    assert_eq!(settled.status, RefundStatus::Succeeded as i32);
    let made = env.fake.transactions(&settled.id, "Refund");
    assert_eq!(made.len(), 1, "refunded once: {made:?}");
    assert_eq!(
        settled.provider_refund_id,
        made[0]["tran_ref"].as_str().unwrap()
    );
    let refunds = env
        .fake
        .seen(Endpoint::Request)
        .iter()
        .filter(|r| r.body["tran_type"] == "refund")
        .count();
    assert_eq!(refunds, 1, "never asked twice");
    assert_eq!(env.payment(&s.payment_id).await.amount_refunded, 1_000);
    env.app.stop().await.unwrap();
}

/// A success page asks Coffer instead of trusting the redirect: VerifyCheckoutSession queries
/// the transaction. Unpaid, the session stays OPEN with its page's URL (the query does not say
/// it, and Coffer keeps it); paid, it is COMPLETE before any callback came.
#[tokio::test]
async fn verifying_a_session_queries_paytabs_and_keeps_the_page() {
    let env = Env::spawn().await;
    let s = env.open("judy", 2_500, "USD", 1).await;
    let verify = || async {
        client(&env.app)
            .await
            .verify_checkout_session(req(
                VerifyCheckoutSessionRequest { id: s.id.clone() },
                &env.app.key,
            ))
            .await
            .unwrap()
            .into_inner()
    };
    let open = verify().await;
    assert_eq!(open.status, CheckoutSessionStatus::Open as i32);
    assert_eq!(open.url, s.url);
    assert_eq!(open.expires_at, s.expires_at);
    env.fake.pay(&s.provider_session_id, "A", "G1");
    let paid = verify().await;
    assert_eq!(paid.status, CheckoutSessionStatus::Complete as i32);
    assert_eq!(paid.payment_status, CheckoutPaymentStatus::Paid as i32);
    assert_eq!(
        env.payment(&s.payment_id).await.status,
        PaymentStatus::Succeeded as i32
    );
    let queried = env.fake.seen(Endpoint::Query);
    assert_eq!(queried.len(), 2);
    assert!(
        queried
            .iter()
            .all(|q| q.body["tran_ref"] == s.provider_session_id.as_str())
    );
    env.app.stop().await.unwrap();
}

#[tokio::test]
async fn a_portal_session_is_provider_unsupported_on_paytabs() {
    use coffer::grpc::pb::CreatePortalSessionRequest;
    use coffer::grpc::pb::create_portal_session_request::Customer as Who;

    let env = Env::spawn().await;
    let alice = customer(&env.app, &env.app.key, "alice").await;
    let e = env
        .app
        .customers()
        .await
        .create_portal_session(req(
            CreatePortalSessionRequest {
                customer: Some(Who::CustomerId(alice)),
                return_url: "https://shop.acme.example/account".into(),
            },
            &env.app.key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert_eq!(details(&e).0, "PROVIDER_UNSUPPORTED");
}
