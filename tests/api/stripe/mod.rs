//! The Stripe adapter end to end: Coffer's gRPC API in front, a fake Stripe ([`fake`]) behind,
//! the fake's signed events through Coffer's sidecar into the inbox, whose workers fetch what
//! each event names from the fake and apply it.

mod fake;

use std::time::Duration;

use coffer::app::inbox::{Handlers, InboxConfig};
use coffer::grpc::pb::{
    CheckoutMode, CheckoutPaymentStatus, CheckoutSession, CheckoutSessionStatus,
    GetCheckoutSessionRequest, GetPaymentRequest, Payment, PaymentStatus, RefundPaymentRequest,
    RefundStatus,
};
use coffer::providers::outbound::{BreakerConfig, OutboundConfig};
use coffer::providers::stripe::client::API_VERSION;
use http::Method;
use serde_json::Value;

use self::fake::{API_KEY, FakeStripe};
use crate::checkout::{client, customer, inline, item, plan, session};
use crate::helpers::{TestApp, eventually, idem, req};

const WHSEC: &str = "whsec_fake_stripe_current";
const WHSEC_OLD: &str = "whsec_fake_stripe_previous";
const ACCOUNT: &str = "acme-stripe";

/// The outbound stack as the tests run it: attempts of 500 ms, three per call, short
/// backoffs, and a breaker that opens after six attempts of which half failed and tries
/// again after a second.
fn outbound() -> OutboundConfig {
    OutboundConfig {
        connect_timeout: Duration::from_millis(300),
        attempt_timeout: Duration::from_millis(500),
        deadline: Duration::from_secs(4),
        max_attempts: 3,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        breaker: BreakerConfig {
            window: Duration::from_secs(10),
            failure_rate: 0.5,
            minimum_calls: 6,
            cool_down: Duration::from_secs(1),
            half_open_calls: 1,
        },
        max_concurrent: 8,
        bulkhead_wait: Duration::from_millis(200),
        max_response_bytes: 1 << 20,
    }
}

/// A server whose tenant "acme" pays through the Stripe account `acme-stripe` (its default),
/// served by `fake`, with inbox workers, the resolver every 100 ms and the sidecar.
struct Env {
    app: TestApp,
    fake: FakeStripe,
}

impl Env {
    async fn spawn() -> Self {
        let fake = FakeStripe::start().await;
        Self::spawn_on(fake, "").await
    }

    /// With more of coffer.toml (`extra`), e.g. another account.
    async fn spawn_on(fake: FakeStripe, extra: &str) -> Self {
        let toml = format!(
            r#"
[[account]]
name = "{ACCOUNT}"
tenant = "acme"
provider = "stripe"
api_key_env = "COFFER_STRIPE_KEY"
webhook_secret_env = ["COFFER_STRIPE_WHSEC", "COFFER_STRIPE_WHSEC_OLD"]
api_base = "{}"
{extra}
[tenant.acme]
allowed_redirect_origins = ["https://shop.acme.example"]
default_account = "{ACCOUNT}"
"#,
            fake.base()
        );
        let app = TestApp::spawn_configured(
            &toml,
            &[
                ("COFFER_STRIPE_KEY", API_KEY),
                ("COFFER_STRIPE_WHSEC", WHSEC),
                ("COFFER_STRIPE_WHSEC_OLD", WHSEC_OLD),
            ],
            |config| {
                config.http_addr = Some("127.0.0.1:0".parse().unwrap());
                config.resolve_interval = Duration::from_millis(100);
                config.outbound = outbound();
                config.inbox = InboxConfig {
                    workers: 2,
                    batch: 8,
                    poll: Duration::from_millis(20),
                    backoff_base: Duration::from_millis(20),
                    backoff_cap: Duration::from_millis(200),
                    handler_timeout: Duration::from_secs(30),
                    handlers: Handlers::builtin(),
                    lease: Duration::from_secs(30),
                };
            },
        )
        .await;
        Self { app, fake }
    }

    fn webhook_url(&self, account: &str) -> String {
        format!(
            "http://{}/webhooks/{account}",
            self.app.http_addr.expect("the sidecar runs")
        )
    }

    /// Stripe's event of `event_type` about `object`, signed with the current secret and
    /// delivered to the sidecar; it must be acknowledged.
    async fn deliver(&self, event_type: &str, object: Value) -> Value {
        let event = self.fake.event(event_type, object);
        let status = self
            .fake
            .deliver(&self.webhook_url(ACCOUNT), WHSEC, &event)
            .await;
        assert_eq!(status, 200, "the sidecar acknowledges {event_type}");
        event
    }

    /// The inbox row of Stripe's event `id`: (status, attempts).
    async fn event_row(&self, id: &str) -> (String, i32) {
        sqlx::query_as("SELECT status, attempts FROM webhook_events WHERE provider_event_id = $1")
            .bind(id)
            .fetch_one(&self.app.pool)
            .await
            .unwrap()
    }

    async fn settled(&self, event: &Value, status: &str) -> bool {
        let id = event["id"].as_str().unwrap().to_owned();
        eventually(Duration::from_secs(15), || async {
            self.event_row(&id).await.0 == status
        })
        .await
    }

    async fn session(&self, id: &str) -> CheckoutSession {
        client(&self.app)
            .await
            .get_checkout_session(req(
                GetCheckoutSessionRequest { id: id.into() },
                &self.app.key,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    async fn payment(&self, id: &str) -> Payment {
        client(&self.app)
            .await
            .get_payment(req(GetPaymentRequest { id: id.into() }, &self.app.key))
            .await
            .unwrap()
            .into_inner()
    }

    /// A customer, and an open PAYMENT session of one 99.00 USD price and two 15.00 USD
    /// inline lines (129.00 USD).
    async fn open_payment_session(&self) -> CheckoutSession {
        let alice = customer(&self.app, &self.app.key, "alice").await;
        let (_, [_, _, once]) = plan(&self.app, "pro").await;
        client(&self.app)
            .await
            .create_checkout_session(req(
                session(
                    &alice,
                    CheckoutMode::Payment,
                    vec![item(&once, 1), inline(1_500, "USD", 2)],
                ),
                &self.app.key,
            ))
            .await
            .unwrap()
            .into_inner()
    }
}

/// Coffer's id's UUID (the TypeID's suffix), as Coffer sends it to Stripe.
fn uuid_of(typed: &str) -> String {
    let (_, suffix) = typed.split_once('_').unwrap();
    // Every TypeID encodes its UUID the same way, whatever its prefix.
    coffer::domain::ids::CheckoutId::parse(&format!("checkout_{suffix}"))
        .unwrap()
        .as_uuid()
        .to_string()
}

#[tokio::test]
async fn a_paid_checkout_then_refunds_partial_and_full() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let opened = env.open_payment_session().await;
    assert_eq!(opened.status, CheckoutSessionStatus::Open as i32);
    assert_eq!(opened.amount_total, 12_900);
    let cs = opened.provider_session_id.clone();
    assert!(cs.starts_with("cs_test_"), "{cs}");
    assert_eq!(
        opened.url,
        format!("https://checkout.stripe.com/c/pay/{cs}")
    );

    // What Stripe was asked: the customer with Coffer's id, the price mirrored with its
    // product, the session naming Coffer's checkout everywhere.
    let customers = fake.objects("cus_");
    assert_eq!(customers.len(), 1);
    assert_eq!(
        customers[0]["metadata"]["coffer_customer_id"],
        uuid_of(&opened.customer_id)
    );
    assert_eq!(customers[0]["metadata"]["coffer_external_id"], "alice");
    let prices = fake.objects("price_");
    assert_eq!(prices.len(), 1);
    assert_eq!(prices[0]["unit_amount"], 9_900);
    let mirrored = prices[0]["metadata"]["coffer_price_id"].as_str().unwrap();
    assert_eq!(prices[0]["lookup_key"], format!("coffer_{mirrored}"));
    let product = fake.object(prices[0]["product"].as_str().unwrap());
    assert_eq!(product["metadata"]["coffer_price_id"], mirrored);
    let checkout = uuid_of(&opened.id);
    let params = fake.session_params(&cs);
    assert_eq!(params["client_reference_id"], checkout);
    assert_eq!(params["metadata"]["coffer_checkout_id"], checkout);
    assert_eq!(
        params["payment_intent_data"]["metadata"]["coffer_checkout_id"],
        checkout
    );
    assert_eq!(params["customer"], customers[0]["id"]);
    assert_eq!(params["line_items"][0]["price"], prices[0]["id"]);
    assert_eq!(params["line_items"][1]["price_data"]["unit_amount"], "1500");
    assert_eq!(params["line_items"][1]["quantity"], "2");
    for r in fake.all_requests() {
        assert_eq!(r.stripe_version.as_deref(), Some(API_VERSION), "{r:?}");
        if r.method == Method::POST {
            assert!(r.idempotency_key.is_some(), "every write is keyed: {r:?}");
        }
    }

    // The customer pays; Stripe says so.
    let paid = fake.complete_session(&cs);
    let event = env.deliver("checkout.session.completed", paid).await;
    assert!(env.settled(&event, "processed").await);
    let done = env.session(&opened.id).await;
    assert_eq!(done.status, CheckoutSessionStatus::Complete as i32);
    assert_eq!(done.payment_status, CheckoutPaymentStatus::Paid as i32);
    let payment = env.payment(&opened.payment_id).await;
    assert_eq!(payment.status, PaymentStatus::Succeeded as i32);
    assert_eq!(
        (payment.card_brand.as_str(), payment.card_last4.as_str()),
        ("visa", "4242")
    );
    let pi = fake.object(&cs)["payment_intent"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(payment.provider_payment_id, pi);

    // A partial refund, then the rest.
    let mut checkout_client = client(&env.app).await;
    let first = checkout_client
        .refund_payment(idem(
            RefundPaymentRequest {
                payment_id: opened.payment_id.clone(),
                amount: Some(2_900),
                ..Default::default()
            },
            &env.app.key,
            "refund-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.status, RefundStatus::Succeeded as i32);
    assert_eq!(first.amount, 2_900);
    let re = fake.object(&first.provider_refund_id);
    assert_eq!(re["payment_intent"], pi.as_str());
    assert_eq!(re["amount"], 2_900);
    let refund_uuid = coffer::domain::ids::RefundId::parse(&first.id)
        .unwrap()
        .as_uuid()
        .to_string();
    assert_eq!(re["metadata"]["coffer_refund_id"], refund_uuid);
    let rest = checkout_client
        .refund_payment(idem(
            RefundPaymentRequest {
                payment_id: opened.payment_id.clone(),
                amount: None,
                ..Default::default()
            },
            &env.app.key,
            "refund-2",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rest.status, rest.amount),
        (RefundStatus::Succeeded as i32, 10_000)
    );
    let charge = fake.object(fake.object(&pi)["latest_charge"].as_str().unwrap());
    assert_eq!(charge["amount_refunded"], 12_900);
    assert_eq!(charge["refunded"], true);
    assert_eq!(
        env.payment(&opened.payment_id).await.amount_refunded,
        12_900
    );
    assert_eq!(
        fake.objects("re_").len(),
        2,
        "one Stripe refund per RefundPayment"
    );
}
