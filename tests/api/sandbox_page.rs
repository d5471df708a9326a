//! The sandbox's hosted checkout page over real HTTP on the public listener: what it shows,
//! what each test card does to the sandbox's tables and its queued events, the confirmation
//! step, closed sessions, double submits, and that no card number or CVC is kept anywhere.
//! Then a real browser (headless Chromium through chromedriver) pays with 4242.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coffer::domain::ids::CheckoutId;
use coffer::grpc::pb::{
    CheckoutMode, CheckoutSession, CreateCheckoutSessionRequest, ExpireCheckoutSessionRequest,
};
use coffer::providers::sandbox::SandboxConfig;
use reqwest::StatusCode;
use serde_json::Value;

use crate::checkout::{client, customer, inline, item, plan, session};
use crate::helpers::{TestApp, idem, req};

/// The test cards, as a person types them.
pub(crate) const PAYS: &str = "4242 4242 4242 4242";
pub(crate) const DECLINED: &str = "4000 0000 0000 0002";
pub(crate) const NO_FUNDS: &str = "4000 0000 0000 9995";
pub(crate) const ASKS: &str = "4000 0025 0000 3155";
pub(crate) const FAILS_LATER: &str = "4000 0000 0000 0341";
/// A CVC unlike any other text on the page or in the tables.
const CVC: &str = "7319";

pub(crate) struct Env {
    pub(crate) app: TestApp,
    /// The public listener: the webhook sidecar and the hosted page.
    pub(crate) http: SocketAddr,
    web: reqwest::Client,
    pub(crate) customer: String,
}

/// A server with the sandbox and its public listener, and a customer of tenant acme.
async fn spawn() -> Env {
    let app = TestApp::spawn_configured("", &[], |config| {
        config.http_addr = Some("127.0.0.1:0".parse().unwrap());
        config.sandbox = Some(SandboxConfig {
            public_url: "http://127.0.0.1:8089".into(),
            // The page itself must refuse a session past its expiry on the sandbox's clock,
            // before any sweep marks it: the sweeper stays out of these tests' way.
            expire_interval: Duration::from_secs(3600),
            ..SandboxConfig::default()
        });
    })
    .await;
    env_of(app).await
}

/// `app` (which runs the sandbox and its public listener) with a customer "alice" of tenant
/// acme and an HTTP client that follows no redirect.
pub(crate) async fn env_of(app: TestApp) -> Env {
    let http = app.http_addr.expect("the public listener runs");
    let customer = customer(&app, &app.key, "alice").await;
    let web = coffer::providers::outbound::client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    Env {
        app,
        http,
        web,
        customer,
    }
}

/// A page answer: status, `Location`, body.
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) location: Option<String>,
    pub(crate) body: String,
}

impl Env {
    pub(crate) async fn open(&self, r: CreateCheckoutSessionRequest) -> CheckoutSession {
        client(&self.app)
            .await
            .create_checkout_session(req(r, &self.app.key))
            .await
            .unwrap()
            .into_inner()
    }

    /// A PAYMENT session: 3 × 123.45 USD.
    pub(crate) async fn one_time(&self) -> CheckoutSession {
        self.open(session(
            &self.customer,
            CheckoutMode::Payment,
            vec![inline(12_345, "USD", 3)],
        ))
        .await
    }

    pub(crate) fn url(&self, s: &CheckoutSession, tail: &str) -> String {
        format!(
            "http://{}/sandbox/checkout/{}{tail}",
            self.http, s.provider_session_id
        )
    }

    async fn answer(response: reqwest::Response) -> Page {
        let status = response.status();
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        Page {
            status,
            location,
            body: response.text().await.unwrap(),
        }
    }

    pub(crate) async fn get(&self, s: &CheckoutSession) -> Page {
        Self::answer(self.web.get(self.url(s, "")).send().await.unwrap()).await
    }

    async fn post(&self, url: String, body: String) -> Page {
        Self::answer(
            self.web
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub(crate) async fn pay(&self, s: &CheckoutSession, number: &str) -> Page {
        self.post(
            self.url(s, ""),
            form(&[
                ("number", number),
                ("expiry", "12 / 34"),
                ("cvc", CVC),
                ("name", "Ada Lovelace"),
            ]),
        )
        .await
    }

    pub(crate) async fn confirm(&self, s: &CheckoutSession, action: &str) -> Page {
        self.post(self.url(s, "/confirm"), form(&[("action", action)]))
            .await
    }

    async fn json(&self, sql: &'static str, id: &str) -> Option<Value> {
        sqlx::query_scalar(sql)
            .bind(id)
            .fetch_optional(&self.app.pool)
            .await
            .unwrap()
    }

    /// The sandbox's session row, as JSON.
    async fn session_row(&self, s: &CheckoutSession) -> Value {
        self.json(
            "SELECT to_jsonb(t) FROM sandbox_checkout_sessions t WHERE id = $1",
            &s.provider_session_id,
        )
        .await
        .unwrap()
    }

    async fn payment_row(&self, s: &CheckoutSession) -> Option<Value> {
        self.json(
            "SELECT to_jsonb(t) FROM sandbox_payments t WHERE session_id = $1",
            &s.provider_session_id,
        )
        .await
    }

    async fn subscription_row(&self, s: &CheckoutSession) -> Option<Value> {
        self.json(
            "SELECT to_jsonb(t) FROM sandbox_subscriptions t WHERE session_id = $1",
            &s.provider_session_id,
        )
        .await
    }

    /// Every queued event, oldest first: (type, body).
    async fn events(&self) -> Vec<(String, Value)> {
        let rows: Vec<(String, Vec<u8>, String)> =
            sqlx::query_as("SELECT event_type, body, account FROM sandbox_outbox ORDER BY id")
                .fetch_all(&self.app.pool)
                .await
                .unwrap();
        rows.into_iter()
            .map(|(t, body, account)| {
                assert_eq!(account, "acme-sandbox");
                let body: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(body["type"], t.as_str());
                assert!(body["id"].as_str().unwrap().starts_with("msg_sbx_"));
                assert_eq!(body["livemode"], false);
                (t, body)
            })
            .collect()
    }

    async fn types(&self) -> Vec<String> {
        self.events().await.into_iter().map(|(t, _)| t).collect()
    }

    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.app.pool)
            .await
            .unwrap()
    }
}

/// `application/x-www-form-urlencoded`, as a browser sends it.
pub(crate) fn form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                b => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

pub(crate) fn success_url(s: &CheckoutSession) -> String {
    format!("https://shop.acme.example/ok?session={}", s.id)
}

#[tokio::test]
async fn the_page_shows_the_items_and_the_total() {
    let env = spawn().await;
    let s = env.one_time().await;
    let page = env.get(&s).await;
    assert_eq!(page.status, StatusCode::OK);
    let b = &page.body;
    assert!(b.contains("<meta name=\"viewport\""), "{b}");
    assert!(b.contains("Consulting hour"));
    assert!(b.contains("123.45 USD"), "the unit price");
    assert!(
        b.contains("<td class=\"n\" id=\"total\">370.35 USD</td>"),
        "{b}"
    );
    assert!(b.contains("Pay 370.35 USD"));
    for field in ["number", "expiry", "cvc", "name"] {
        assert!(b.contains(&format!("<label for=\"{field}\">")), "{field}");
        assert!(b.contains(&format!("<input id=\"{field}\" name=\"{field}\"")));
    }
    assert!(b.contains("href=\"https://shop.acme.example/cancel\""));
    assert!(!b.contains("<script"), "no JavaScript");

    // Amounts follow the currency's exponent.
    let yen = env
        .open(session(
            &env.customer,
            CheckoutMode::Payment,
            vec![inline(1_500, "JPY", 2)],
        ))
        .await;
    let b = env.get(&yen).await.body;
    assert!(b.contains("1,500 JPY") && b.contains("3,000 JPY"), "{b}");
    let dinar = env
        .open(session(
            &env.customer,
            CheckoutMode::Payment,
            vec![inline(1_250, "KWD", 1)],
        ))
        .await;
    assert!(env.get(&dinar).await.body.contains("1.250 KWD"));

    // A trial: nothing due today, "Start trial".
    let (_, [monthly, yearly, _]) = plan(&env.app, &env.app.key).await;
    let trial = env
        .open(session(
            &env.customer,
            CheckoutMode::Subscription,
            vec![item(&monthly, 2)],
        ))
        .await;
    let b = env.get(&trial).await.body;
    assert!(b.contains("Start trial") && !b.contains("Pay 58.00"), "{b}");
    assert!(
        b.contains("Free for 14 days, then 58.00 USD per month"),
        "{b}"
    );
    assert!(b.contains("0.00 USD"));
    let year = env
        .open(session(
            &env.customer,
            CheckoutMode::Subscription,
            vec![item(&yearly, 1)],
        ))
        .await;
    let b = env.get(&year).await.body;
    assert!(
        b.contains("Pay 290.00 USD") && b.contains("per year"),
        "{b}"
    );

    // An unknown session.
    let missing = env
        .web
        .get(format!("http://{}/sandbox/checkout/cs_sbx_nope", env.http))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_good_card_pays_and_its_events_are_queued_with_the_documented_objects() {
    let env = spawn().await;
    let s = env.one_time().await;
    let page = env.pay(&s, PAYS).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert_eq!(page.location.as_deref(), Some(success_url(&s).as_str()));

    let p = env.payment_row(&s).await.expect("a payment");
    assert_eq!(p["status"], "succeeded");
    assert_eq!(p["amount"], 37_035);
    assert_eq!(p["currency"], "USD");
    assert_eq!(p["card_brand"], "visa");
    assert_eq!(p["card_last4"], "4242");
    assert_eq!(p["failure_code"], Value::Null);
    assert_eq!(p["fails_on_renewal"], false);
    assert_eq!(p["version"], 1);
    let row = env.session_row(&s).await;
    assert_eq!(row["status"], "complete");
    assert_eq!(row["payment_status"], "paid");
    assert_eq!(row["version"], 2);
    assert_eq!(
        env.count("SELECT count(*) FROM sandbox_subscriptions")
            .await,
        0
    );

    let events = env.events().await;
    let types: Vec<_> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["payment.succeeded", "checkout.session.completed"]);
    let payment = &events[0].1["data"]["object"];
    assert_eq!(
        *payment,
        serde_json::json!({
            "id": p["id"], "checkout_session": s.provider_session_id,
            "client_reference_id": CheckoutId::parse(&s.id).unwrap().as_uuid().to_string(),
            "amount": 37_035, "currency": "USD", "status": "succeeded", "failure_code": null,
            "card": {"brand": "visa", "last4": "4242"}, "amount_refunded": 0, "version": 1,
            "subscription": null, "period_start": null, "period_end": null,
        })
    );
    let done = &events[1].1["data"]["object"];
    assert_eq!(done["id"], s.provider_session_id.as_str());
    assert_eq!(done["client_reference_id"], payment["client_reference_id"]);
    assert_eq!(done["mode"], "payment");
    assert_eq!(done["status"], "complete");
    assert_eq!(done["payment_status"], "paid");
    assert_eq!(done["amount_total"], 37_035);
    assert_eq!(done["currency"], "USD");
    assert_eq!(done["payment"], p["id"]);
    assert_eq!(done["subscription"], Value::Null);
    assert_eq!(done["version"], 2);
    assert!(done["customer"].as_str().unwrap().starts_with("cus_sbx_"));
    assert_eq!(
        done["expires_at"].as_i64().unwrap(),
        s.expires_at.unwrap().seconds
    );
    assert!(events[1].1["created"].as_i64().unwrap() > 1_700_000_000);
}

#[tokio::test]
async fn declined_cards_leave_the_session_open_and_another_card_then_pays() {
    let env = spawn().await;
    let s = env.one_time().await;

    let page = env.pay(&s, DECLINED).await;
    assert_eq!(page.status, StatusCode::PAYMENT_REQUIRED);
    assert!(
        page.body.contains("Your card was declined"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("<form"),
        "the form again, for another card"
    );
    assert!(
        page.body.contains("value=\"Ada Lovelace\""),
        "the name is kept"
    );
    let p = env.payment_row(&s).await.unwrap();
    assert_eq!(
        (
            &p["status"],
            &p["failure_code"],
            &p["card_last4"],
            &p["version"]
        ),
        (
            &"failed".into(),
            &"card_declined".into(),
            &"0002".into(),
            &1.into()
        )
    );
    assert_eq!(env.session_row(&s).await["status"], "open");

    let page = env.pay(&s, NO_FUNDS).await;
    assert_eq!(page.status, StatusCode::PAYMENT_REQUIRED);
    assert!(page.body.contains("insufficient funds"));
    let p = env.payment_row(&s).await.unwrap();
    assert_eq!(p["failure_code"], "insufficient_funds");
    assert_eq!(p["card_last4"], "9995");
    assert_eq!(p["version"], 2, "the same payment, moved on");
    assert_eq!(env.session_row(&s).await["status"], "open");
    assert_eq!(env.session_row(&s).await["version"], 1);

    let page = env.pay(&s, PAYS).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let p = env.payment_row(&s).await.unwrap();
    assert_eq!(p["status"], "succeeded");
    assert_eq!(p["failure_code"], Value::Null);
    assert_eq!(p["version"], 3);
    assert_eq!(env.count("SELECT count(*) FROM sandbox_payments").await, 1);

    let events = env.events().await;
    let seen: Vec<_> = events
        .iter()
        .map(|(t, b)| {
            let o = &b["data"]["object"];
            (
                t.as_str(),
                o["version"].as_i64().unwrap(),
                o["failure_code"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("payment.failed", 1, "card_declined".into()),
            ("payment.failed", 2, "insufficient_funds".into()),
            ("payment.succeeded", 3, Value::Null),
            ("checkout.session.completed", 2, Value::Null),
        ]
    );
}

#[tokio::test]
async fn the_confirmation_step_can_be_failed_then_approved() {
    let env = spawn().await;
    let s = env.one_time().await;

    let page = env.pay(&s, ASKS).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Confirm the payment"), "{}", page.body);
    assert!(page.body.contains("name=\"action\" value=\"approve\""));
    assert!(page.body.contains("name=\"action\" value=\"fail\""));
    let p = env.payment_row(&s).await.unwrap();
    assert_eq!(p["status"], "requires_action");
    assert_eq!(p["card_last4"], "3155");
    assert!(env.events().await.is_empty(), "no event while it waits");
    // The page opened again waits on the same step.
    assert!(env.get(&s).await.body.contains("Confirm the payment"));

    let page = env.confirm(&s, "fail").await;
    assert_eq!(page.status, StatusCode::PAYMENT_REQUIRED);
    assert!(page.body.contains("not confirmed"));
    let p = env.payment_row(&s).await.unwrap();
    assert_eq!(p["status"], "failed");
    assert_eq!(p["failure_code"], "authentication_failed");
    assert_eq!(p["version"], 2);
    assert_eq!(env.session_row(&s).await["status"], "open");
    // Nothing is left to confirm.
    assert_eq!(
        env.confirm(&s, "approve").await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(env.session_row(&s).await["status"], "open");

    assert_eq!(env.pay(&s, ASKS).await.status, StatusCode::OK);
    let page = env.confirm(&s, "approve").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some(success_url(&s).as_str()));
    let p = env.payment_row(&s).await.unwrap();
    assert_eq!(p["status"], "succeeded");
    assert_eq!(p["version"], 4);
    assert_eq!(env.session_row(&s).await["payment_status"], "paid");
    let events = env.events().await;
    let seen: Vec<_> = events
        .iter()
        .map(|(t, b)| (t.as_str(), b["data"]["object"]["version"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("payment.failed", 2),
            ("payment.succeeded", 4),
            ("checkout.session.completed", 2)
        ]
    );
    assert_eq!(
        events[0].1["data"]["object"]["failure_code"],
        "authentication_failed"
    );
    // A made-up action is refused.
    let bad = env.one_time().await;
    assert_eq!(
        env.confirm(&bad, "maybe").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn a_subscription_starts_active_or_trialing() {
    let env = spawn().await;
    let (_, [monthly, yearly, _]) = plan(&env.app, &env.app.key).await;

    // Yearly, no trial, with the card that will fail on renewal.
    let s = env
        .open(session(
            &env.customer,
            CheckoutMode::Subscription,
            vec![item(&yearly, 1)],
        ))
        .await;
    assert_eq!(env.pay(&s, FAILS_LATER).await.status, StatusCode::SEE_OTHER);
    let p = env.payment_row(&s).await.unwrap();
    assert_eq!(p["fails_on_renewal"], true);
    assert_eq!(p["amount"], 29_000);
    let sub = env.subscription_row(&s).await.unwrap();
    assert_eq!(sub["status"], "active");
    assert_eq!(sub["fails_on_renewal"], true);
    assert_eq!(sub["trial_end"], Value::Null);
    let events = env.events().await;
    let types: Vec<_> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "payment.succeeded",
            "subscription.created",
            "checkout.session.completed"
        ]
    );
    let o = &events[1].1["data"]["object"];
    assert_eq!(o["id"], sub["id"]);
    assert!(o["id"].as_str().unwrap().starts_with("sub_sbx_"));
    assert_eq!(o["checkout_session"], s.provider_session_id.as_str());
    assert_eq!(o["status"], "active");
    assert_eq!(o["version"], 1);
    assert_eq!(o["trial_end"], Value::Null);
    let (start, end) = (
        o["current_period_start"].as_i64().unwrap(),
        o["current_period_end"].as_i64().unwrap(),
    );
    let days = (end - start) / 86_400;
    assert!((365..=366).contains(&days), "a year: {days} days");
    let done = &events[2].1["data"]["object"];
    assert_eq!(done["subscription"], sub["id"]);
    assert_eq!(done["payment"], p["id"]);
    assert_eq!(done["mode"], "subscription");

    // Monthly with its 14-day trial: the card is taken, nothing is charged.
    let before = env.events().await.len();
    let t = env
        .open(session(
            &env.customer,
            CheckoutMode::Subscription,
            vec![item(&monthly, 2)],
        ))
        .await;
    // A refused card on a trial says so and writes nothing.
    let page = env.pay(&t, DECLINED).await;
    assert_eq!(page.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(env.events().await.len(), before);
    assert_eq!(env.pay(&t, PAYS).await.status, StatusCode::SEE_OTHER);
    assert!(
        env.payment_row(&t).await.is_none(),
        "a trial charges nothing"
    );
    let row = env.session_row(&t).await;
    assert_eq!(
        (&row["status"], &row["payment_status"]),
        (&"complete".into(), &"no_payment_required".into())
    );
    let sub = env.subscription_row(&t).await.unwrap();
    assert_eq!(sub["status"], "trialing");
    assert_eq!(sub["fails_on_renewal"], false);
    let events = env.events().await;
    let types: Vec<_> = events[before..].iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        ["subscription.created", "checkout.session.completed"]
    );
    let o = &events[before].1["data"]["object"];
    assert_eq!(o["status"], "trialing");
    let (start, trial_end) = (
        o["current_period_start"].as_i64().unwrap(),
        o["trial_end"].as_i64().unwrap(),
    );
    assert_eq!(trial_end - start, 14 * 86_400);
    assert_eq!(
        o["current_period_end"], o["trial_end"],
        "the first period is the trial"
    );
    let done = &events[before + 1].1["data"]["object"];
    assert_eq!(done["payment_status"], "no_payment_required");
    assert_eq!(done["payment"], Value::Null);
    assert_eq!(done["subscription"], sub["id"]);

    // A trial's confirmation step, approved.
    let a = env
        .open(session(
            &env.customer,
            CheckoutMode::Subscription,
            vec![item(&monthly, 1)],
        ))
        .await;
    assert_eq!(env.pay(&a, ASKS).await.status, StatusCode::OK);
    assert!(env.get(&a).await.body.contains("Confirm the payment"));
    assert_eq!(
        env.confirm(&a, "fail").await.status,
        StatusCode::PAYMENT_REQUIRED
    );
    assert!(env.subscription_row(&a).await.is_none());
    assert_eq!(env.pay(&a, ASKS).await.status, StatusCode::OK);
    assert_eq!(
        env.confirm(&a, "approve").await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        env.subscription_row(&a).await.unwrap()["status"],
        "trialing"
    );
}

#[tokio::test]
async fn expired_and_completed_sessions_take_no_payment() {
    let env = spawn().await;

    // Expired by the RPC.
    let s = env.one_time().await;
    client(&env.app)
        .await
        .expire_checkout_session(idem(
            ExpireCheckoutSessionRequest { id: s.id.clone() },
            &env.app.key,
            "expire-1",
        ))
        .await
        .unwrap();
    let page = env.get(&s).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("This checkout has expired"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<form"));
    let page = env.pay(&s, PAYS).await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.body.contains("expired"));
    assert!(env.payment_row(&s).await.is_none());

    // Expired by the sandbox's clock, before any sweeper marks it.
    let late = env.one_time().await;
    sqlx::query("UPDATE sandbox_accounts SET clock_offset = '25 hours'")
        .execute(&env.app.pool)
        .await
        .unwrap();
    assert!(
        env.get(&late)
            .await
            .body
            .contains("This checkout has expired")
    );
    assert_eq!(env.pay(&late, PAYS).await.status, StatusCode::CONFLICT);
    assert_eq!(
        env.confirm(&late, "approve").await.status,
        StatusCode::CONFLICT
    );
    assert!(env.payment_row(&late).await.is_none());
    assert_eq!(env.session_row(&late).await["version"], 1);
    sqlx::query("UPDATE sandbox_accounts SET clock_offset = '0'")
        .execute(&env.app.pool)
        .await
        .unwrap();
    // The only event is the one reporting the expiry by RPC; no attempt on either session made
    // one.
    assert_eq!(env.types().await, ["checkout.session.expired"]);

    // Completed.
    let paid = env.one_time().await;
    assert_eq!(env.pay(&paid, PAYS).await.status, StatusCode::SEE_OTHER);
    let page = env.get(&paid).await;
    assert!(
        page.body.contains("This checkout is complete"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("<form"));
    let before = (env.payment_row(&paid).await, env.events().await.len());
    for number in [PAYS, DECLINED] {
        let page = env.pay(&paid, number).await;
        assert_eq!(page.status, StatusCode::CONFLICT);
        assert!(page.body.contains("already been paid"));
    }
    assert_eq!(
        env.confirm(&paid, "approve").await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(
        (env.payment_row(&paid).await, env.events().await.len()),
        before,
        "nothing written"
    );
}

#[tokio::test]
async fn concurrent_submits_pay_once() {
    let env = spawn().await;
    let s = env.one_time().await;
    let answers = futures_join((0..8).map(|_| env.pay(&s, PAYS)).collect::<Vec<_>>()).await;
    let paid = answers
        .iter()
        .filter(|p| p.status == StatusCode::SEE_OTHER)
        .count();
    let refused = answers
        .iter()
        .filter(|p| p.status == StatusCode::CONFLICT)
        .count();
    assert_eq!((paid, refused), (1, 7));
    assert_eq!(env.count("SELECT count(*) FROM sandbox_payments").await, 1);
    assert_eq!(env.payment_row(&s).await.unwrap()["version"], 1);
    assert_eq!(
        env.types().await,
        ["payment.succeeded", "checkout.session.completed"]
    );
}

/// Runs the futures at once (on this task) and returns their outputs in order.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in set.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

/// The `value` of the input with `id` on a page.
fn input_value<'a>(page: &'a str, id: &str) -> &'a str {
    let at = page
        .find(&format!("<input id=\"{id}\""))
        .unwrap_or_else(|| panic!("no input {id}"));
    let rest = &page[at..];
    let rest = &rest[rest.find("value=\"").unwrap() + 7..];
    &rest[..rest.find('"').unwrap()]
}

#[tokio::test]
async fn bad_cards_are_refused_without_being_echoed_and_no_number_is_ever_stored() {
    let env = spawn().await;
    let s = env.one_time().await;

    let unknown = "5555 5555 5555 4444";
    let page = env.pay(&s, unknown).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.body
            .contains("not one of the sandbox&#39;s test cards")
    );
    for echo in [unknown, "5555555555554444"] {
        assert!(!page.body.contains(echo), "{echo} echoed");
    }
    // The number and CVC inputs come back empty; the last four are not shown either.
    assert_eq!(input_value(&page.body, "number"), "");
    assert_eq!(input_value(&page.body, "cvc"), "");
    assert_eq!(input_value(&page.body, "expiry"), "12 / 34");
    assert!(!page.body.contains(">4444<") && !page.body.contains(" 4444"));
    assert!(page.body.contains("aria-invalid=\"true\""));
    // Each field names its own problem.
    let page = env
        .post(
            env.url(&s, ""),
            form(&[
                ("number", PAYS),
                ("expiry", "13/99"),
                ("cvc", "1"),
                ("name", " "),
            ]),
        )
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    for id in ["expiry-error", "cvc-error", "name-error"] {
        assert!(page.body.contains(id), "{id}");
    }
    assert!(!page.body.contains("number-error"));
    assert!(!page.body.contains("4242424242424242"));
    // A body that is no form, and a huge one.
    let not_a_form = env
        .web
        .post(env.url(&s, ""))
        .header("content-type", "application/json")
        .body(format!("{{\"number\": \"{PAYS}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(not_a_form.status(), StatusCode::BAD_REQUEST);
    assert!(!not_a_form.text().await.unwrap().contains(PAYS));
    let page = env
        .post(env.url(&s, ""), format!("name={}", "a".repeat(64 << 10)))
        .await;
    assert!(page.status.is_client_error());
    assert!(env.payment_row(&s).await.is_none());
    assert!(env.events().await.is_empty());

    // Every card, through every path that writes.
    let (_, [monthly, yearly, _]) = plan(&env.app, &env.app.key).await;
    for card in [DECLINED, NO_FUNDS, ASKS, FAILS_LATER] {
        let s = env.one_time().await;
        env.pay(&s, card).await;
    }
    env.pay(&s, ASKS).await;
    env.confirm(&s, "approve").await;
    let sub = env
        .open(session(
            &env.customer,
            CheckoutMode::Subscription,
            vec![item(&yearly, 1)],
        ))
        .await;
    env.pay(&sub, PAYS).await;
    let trial = env
        .open(session(
            &env.customer,
            CheckoutMode::Subscription,
            vec![item(&monthly, 1)],
        ))
        .await;
    env.pay(&trial, FAILS_LATER).await;
    assert_eq!(env.count("SELECT count(*) FROM sandbox_payments").await, 6);
    assert!(env.count("SELECT count(*) FROM sandbox_outbox").await >= 9);

    // No table of the sandbox, nor any queued event, holds a number or the CVC.
    let everything: String = sqlx::query_scalar(
        "SELECT concat_ws(' ',
             (SELECT string_agg(to_jsonb(t)::text, ' ') FROM sandbox_payments t),
             (SELECT string_agg(to_jsonb(t)::text, ' ') FROM sandbox_checkout_sessions t),
             (SELECT string_agg(to_jsonb(t)::text, ' ') FROM sandbox_subscriptions t),
             (SELECT string_agg(to_jsonb(t)::text, ' ') FROM sandbox_refunds t),
             (SELECT string_agg(to_jsonb(t)::text, ' ') FROM sandbox_customers t),
             (SELECT string_agg(to_jsonb(t)::text, ' ') FROM sandbox_accounts t),
             (SELECT string_agg(to_jsonb(t)::text || convert_from(body, 'UTF8'), ' ')
                FROM sandbox_outbox t))",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert!(
        everything.contains("\"card_last4\": \"3155\""),
        "the scan sees the rows"
    );
    for number in [PAYS, DECLINED, NO_FUNDS, ASKS, FAILS_LATER, unknown] {
        let digits: String = number.chars().filter(|c| *c != ' ').collect();
        assert!(!everything.contains(&digits), "{digits} stored");
        assert!(!everything.contains(number), "{number} stored");
        // Nor the first twelve digits, on their own.
        assert!(!everything.contains(&digits[..12]));
    }
    // Four digits turn up inside ids and timestamps by chance; the CVC as a value does not.
    for cvc in [format!("\"{CVC}\""), format!(": {CVC}"), format!(":{CVC}")] {
        assert!(!everything.contains(&cvc), "the CVC stored");
    }
}

/// Everything written through it, for reading back.
#[derive(Clone, Default)]
struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line and span of the server, at TRACE, while cards are typed: the submit's span is
/// there with its outcome, and no number or CVC is. (The test runtime has one thread, so the
/// server's tasks run under this thread's subscriber.)
#[tokio::test]
async fn no_card_number_or_cvc_reaches_a_log_line_or_a_span() {
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // From here on: the migrations, applied at the start, name the test cards in comments.
    let env = spawn().await;
    let (_, [monthly, _, _]) = plan(&env.app, &env.app.key).await;
    // While one dispatcher is alive in the process, tracing-core takes a shortcut: a callsite
    // first hit on another thread (another test's server) has its interest computed from
    // that thread's default alone, none, and cached as "never" for every thread. A second
    // live dispatcher turns the shortcut off, so every callsite asks this one too.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests of this process, on other threads, may have hit a callsite for the first time
    // while this subscriber was being registered; its interest, computed without it, would
    // stay "never". Computed again now, every callsite registered so far asks it.
    tracing::callsite::rebuild_interest_cache();
    let unknown = "5555 5555 5555 4444";
    for card in [DECLINED, NO_FUNDS, ASKS, unknown, FAILS_LATER] {
        let s = env.one_time().await;
        env.pay(&s, card).await;
    }
    let s = env.one_time().await;
    env.pay(&s, ASKS).await;
    env.confirm(&s, "approve").await;
    let trial = env
        .open(session(
            &env.customer,
            CheckoutMode::Subscription,
            vec![item(&monthly, 1)],
        ))
        .await;
    assert_eq!(env.pay(&trial, PAYS).await.status, StatusCode::SEE_OTHER);

    // A span is written when it closes, and the submit's span lives on in the delivery it
    // starts: on a loaded machine that can end after the redirect is answered.
    let read = || String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    let closed = crate::helpers::eventually(Duration::from_secs(10), || async {
        let logged = read();
        logged.contains("sandbox.checkout.submit") && logged.contains(&trial.provider_session_id)
    })
    .await;
    assert!(closed, "the submit is traced");
    let logged = read();
    assert!(logged.contains("outcome=\"completed\"") || logged.contains("outcome=completed"));
    assert!(logged.contains("card_declined") && logged.contains("requires_action"));
    for number in [PAYS, DECLINED, NO_FUNDS, ASKS, FAILS_LATER, unknown] {
        let digits: String = number.chars().filter(|c| *c != ' ').collect();
        assert!(!logged.contains(&digits), "{digits} logged");
        let at = logged
            .find(number)
            .map(|i| &logged[i.saturating_sub(600)..i + 50]);
        assert!(at.is_none(), "{number} logged: {at:?}");
    }
    // Four digits turn up in timestamps by chance; the CVC as a field does not.
    for cvc in [
        format!("cvc={CVC}"),
        format!("cvc: \"{CVC}\""),
        format!("cvc=\"{CVC}\""),
    ] {
        assert!(!logged.contains(&cvc), "{cvc} logged");
    }
}

// ---- A real browser.

/// chromedriver on a free loopback port, ended when dropped.
pub(crate) struct Driver {
    child: std::process::Child,
    pub(crate) url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn find_binary(names: &[&str]) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

pub(crate) async fn chromedriver() -> Driver {
    let binary = find_binary(&["chromedriver"]).expect(
        "chromedriver is not installed: apt-get install -y chromium chromium-driver (.ci/run does)",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(binary)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let status = format!("{}/status", driver.url);
    let ready = crate::helpers::eventually(Duration::from_secs(20), || async {
        coffer::providers::outbound::client_builder()
            .build()
            .unwrap()
            .get(&status)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(ready, "chromedriver did not start");
    driver
}

/// Where the test keeps its screenshots: `$CARGO_TARGET_DIR/artefacts/`, found from the test
/// binary's own path (target/debug/deps/api-…) when the variable is not set.
pub(crate) fn artefacts() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().unwrap();
            exe.ancestors().nth(3).unwrap().to_path_buf()
        });
    let dir = target.join("artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The shop's success page: a tiny server that says which session came back.
async fn shop() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let (seen, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let router = axum::Router::new().route(
        "/ok",
        axum::routing::get(move |uri: axum::http::Uri| {
            let seen = seen.clone();
            async move {
                let query = uri.query().unwrap_or_default().to_owned();
                let _ = seen.send(query.clone());
                axum::response::Html(format!(
                    "<!doctype html><html><head><meta name=\"viewport\" \
                     content=\"width=device-width, initial-scale=1\"><title>Thank you</title>\
                     </head><body style=\"font:18px system-ui;padding:2rem\">\
                     <h1>Thank you!</h1><p>The shop got back <code style=\"word-break:break-all\">{query}</code>.</p>\
                     </body></html>"
                ))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, arrivals)
}

#[tokio::test]
async fn a_browser_pays_with_4242_and_lands_on_the_success_page() {
    use fantoccini::{ClientBuilder, Locator};

    let chromium = find_binary(&["chromium", "chromium-browser"]).expect(
        "Chromium is not installed: apt-get install -y chromium chromium-driver (.ci/run does)",
    );
    let env = spawn().await;
    let (shop, mut arrivals) = shop().await;
    let s = env
        .open(CreateCheckoutSessionRequest {
            success_url: format!("http://{shop}/ok?session={{CHECKOUT_SESSION_ID}}"),
            cancel_url: format!("http://{shop}/cancel"),
            ..session(
                &env.customer,
                CheckoutMode::Payment,
                vec![inline(12_345, "USD", 3)],
            )
        })
        .await;

    let again = env
        .open(CreateCheckoutSessionRequest {
            success_url: format!("http://{shop}/ok?session={{CHECKOUT_SESSION_ID}}"),
            cancel_url: format!("http://{shop}/cancel"),
            ..session(
                &env.customer,
                CheckoutMode::Payment,
                vec![inline(4_900, "EUR", 1)],
            )
        })
        .await;

    let driver = chromedriver().await;
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": chromium,
            // A phone-sized window: the page must read there.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=412,1000"],
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");
    let dir = artefacts();
    let result = async {
        browser.goto(&env.url(&s, "")).await?;
        assert_eq!(browser.title().await?, "Pay 370.35 USD · Coffer sandbox");
        for (id, text) in [
            ("number", PAYS),
            ("expiry", "12 / 34"),
            ("cvc", "123"),
            ("name", "Ada Lovelace"),
        ] {
            browser.find(Locator::Id(id)).await?.send_keys(text).await?;
        }
        let filled = dir.join("sandbox-checkout-filled.png");
        std::fs::write(&filled, browser.screenshot().await?).unwrap();
        println!("screenshot: {}", filled.display());
        browser
            .find(Locator::Css("button[type=submit]"))
            .await?
            .click()
            .await?;
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::XPath("//h1[text()='Thank you!']"))
            .await?;
        let landed = browser.current_url().await?;
        let result = dir.join("sandbox-checkout-success.png");
        std::fs::write(&result, browser.screenshot().await?).unwrap();
        println!("screenshot: {}", result.display());

        // Another session: declined, then the confirmation step, approved.
        browser.goto(&env.url(&again, "")).await?;
        for (id, text) in [
            ("number", DECLINED),
            ("expiry", "12 / 34"),
            ("cvc", "123"),
            ("name", "Ada Lovelace"),
        ] {
            browser.find(Locator::Id(id)).await?.send_keys(text).await?;
        }
        browser
            .find(Locator::Css("button[type=submit]"))
            .await?
            .click()
            .await?;
        let alert = browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("[role=alert]"))
            .await?;
        assert!(alert.text().await?.contains("declined"));
        // The number and CVC are typed again; the expiry and name were kept.
        let number = browser.find(Locator::Id("number")).await?;
        assert_eq!(number.prop("value").await?.as_deref(), Some(""));
        let declined = dir.join("sandbox-checkout-declined.png");
        std::fs::write(&declined, browser.screenshot().await?).unwrap();
        println!("screenshot: {}", declined.display());
        number.send_keys(ASKS).await?;
        browser
            .find(Locator::Id("cvc"))
            .await?
            .send_keys("123")
            .await?;
        browser
            .find(Locator::Css("button[type=submit]"))
            .await?
            .click()
            .await?;
        let approve = browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("button[value=approve]"))
            .await?;
        let confirm = dir.join("sandbox-checkout-confirm.png");
        std::fs::write(&confirm, browser.screenshot().await?).unwrap();
        println!("screenshot: {}", confirm.display());
        approve.click().await?;
        browser
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::XPath("//h1[text()='Thank you!']"))
            .await?;
        let landed_again = browser.current_url().await?;
        Ok::<_, fantoccini::error::CmdError>((landed, landed_again))
    }
    .await;
    let _ = browser.close().await;
    let (landed, landed_again) = result.expect("the browser paid");
    assert_eq!(
        landed.as_str(),
        format!("http://{shop}/ok?session={}", s.id)
    );
    assert_eq!(arrivals.recv().await.unwrap(), format!("session={}", s.id));
    assert_eq!(env.payment_row(&s).await.unwrap()["status"], "succeeded");
    assert_eq!(env.session_row(&s).await["status"], "complete");
    assert_eq!(
        landed_again.as_str(),
        format!("http://{shop}/ok?session={}", again.id)
    );
    assert_eq!(
        arrivals.recv().await.unwrap(),
        format!("session={}", again.id)
    );
    let p = env.payment_row(&again).await.unwrap();
    // Declined (1), waiting on the step (2), approved (3).
    assert_eq!(
        (&p["status"], &p["version"]),
        (&"succeeded".into(), &3.into())
    );
    drop(driver);
}
