//! The Stripe adapter end to end: Coffer's gRPC API in front, a fake Stripe ([`fake`]) behind,
//! the fake's signed events through Coffer's sidecar into the inbox, whose workers fetch what
//! each event names from the fake and apply it.

mod create_subscription;
mod dunning;
mod fake;
mod meters;
mod plan_changes;

use std::time::Duration;

use coffer::app::inbox::{Handlers, InboxConfig};
use coffer::grpc::pb::{
    CancelSubscriptionRequest, PauseSubscriptionRequest, ResumeSubscriptionRequest,
    UndoCancelSubscriptionRequest,
};
use coffer::grpc::pb::{
    CheckoutMode, CheckoutPaymentStatus, CheckoutSession, CheckoutSessionStatus,
    ExpireCheckoutSessionRequest, GetSubscriptionRequest, ListSubscriptionsRequest, Payment,
    PaymentStatus, RefundPaymentRequest, RefundStatus, Subscription, SubscriptionStatus,
    VerifyCheckoutSessionRequest,
};
use coffer::providers::outbound::{BreakerConfig, OutboundConfig};
use coffer::providers::stripe::client::API_VERSION;
use http::Method;
use serde_json::Value;

use self::fake::{API_KEY, FakeStripe, Fault};
use crate::checkout::{client, customer, inline, item, plan, session};
use crate::helpers::{TestApp, details, eventually, idem, req};

const WHSEC: &str = "whsec_fake_stripe_current";
const WHSEC_OLD: &str = "whsec_fake_stripe_previous";
const ACCOUNT: &str = "acme-stripe";

/// The outbound stack as the tests run it: attempts of 700 ms, three per call, short
/// backoffs, and a breaker that opens after six attempts of which half failed and tries
/// again after three seconds. The margins are wide enough for a loaded 2-core machine: a
/// fault of 400-450 ms stays within an attempt, and a breaker opened by one call is still
/// open when the next call comes, however slowly the test runs.
fn outbound() -> OutboundConfig {
    OutboundConfig {
        connect_timeout: Duration::from_millis(300),
        attempt_timeout: Duration::from_millis(700),
        deadline: Duration::from_secs(4),
        max_attempts: 3,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        breaker: BreakerConfig {
            window: Duration::from_secs(10),
            failure_rate: 0.5,
            minimum_calls: 6,
            cool_down: Duration::from_secs(3),
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
        Self::spawn_with(fake, extra, "").await
    }

    /// With more settings of the tenant acme (`tenant`, lines of `[tenant.acme]`).
    async fn spawn_with_tenant(tenant: &str) -> Self {
        Self::spawn_with(FakeStripe::start().await, "", tenant).await
    }

    /// With more of coffer.toml (`extra`) and more of acme's settings (`tenant`).
    async fn spawn_with(fake: FakeStripe, extra: &str, tenant: &str) -> Self {
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
{tenant}
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
                // Usage pushed every 200 ms; a batch whose answer was lost is sent again
                // after 3 s.
                config.usage_push = coffer::app::usage_push::PushConfig {
                    interval: Duration::from_millis(200),
                    resend_after: Duration::from_secs(3),
                    ..Default::default()
                };
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
        self.app.checkout_session(id).await
    }

    async fn payment(&self, id: &str) -> Payment {
        self.app.payment(id).await
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
    assert_eq!(
        done.url, opened.url,
        "Stripe's null URL keeps the recorded one"
    );
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

impl Env {
    /// A customer and an open SUBSCRIPTION session of the monthly price (29.00 USD, with
    /// the plan's 14-day trial unless `trial_days` says otherwise).
    async fn open_subscription_session(&self, trial_days: Option<i64>) -> CheckoutSession {
        let bob = customer(&self.app, &self.app.key, "bob").await;
        let (_, [monthly, _, _]) = plan(&self.app, "pro").await;
        let mut request = session(&bob, CheckoutMode::Subscription, vec![item(&monthly, 1)]);
        request.trial_days = trial_days;
        client(&self.app)
            .await
            .create_checkout_session(req(request, &self.app.key))
            .await
            .unwrap()
            .into_inner()
    }

    async fn subscription(&self, id: &str) -> Subscription {
        self.app
            .subscriptions()
            .await
            .get_subscription(req(GetSubscriptionRequest { id: id.into() }, &self.app.key))
            .await
            .unwrap()
            .into_inner()
    }

    async fn subscriptions(&self) -> Vec<Subscription> {
        self.app
            .subscriptions()
            .await
            .list_subscriptions(req(ListSubscriptionsRequest::default(), &self.app.key))
            .await
            .unwrap()
            .into_inner()
            .subscriptions
    }

    /// Delivers `event_type` about `object` and waits for the inbox to process it.
    async fn apply(&self, event_type: &str, object: Value) {
        let event = self.deliver(event_type, object).await;
        assert!(
            self.settled(&event, "processed").await,
            "{event_type} processed: {:?}",
            self.event_row(event["id"].as_str().unwrap()).await
        );
    }
}

#[tokio::test]
async fn a_subscription_checkout_with_a_trial_makes_the_subscription() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let opened = env.open_subscription_session(None).await;
    assert_eq!(opened.trial_days, 14);
    assert!(opened.payment_id.is_empty(), "a trial collects nothing now");
    let cs = opened.provider_session_id.clone();
    let params = fake.session_params(&cs);
    let checkout = uuid_of(&opened.id);
    assert_eq!(params["mode"], "subscription");
    assert_eq!(params["subscription_data"]["trial_period_days"], "14");
    assert_eq!(
        params["subscription_data"]["metadata"]["coffer_checkout_id"],
        checkout
    );
    assert!(params.get("payment_intent_data").is_none());
    let price = fake.object(params["line_items"][0]["price"].as_str().unwrap());
    assert_eq!(price["recurring"]["interval"], "month");
    assert_eq!(price["unit_amount"], 2_900);

    let completed = fake.complete_session(&cs);
    env.apply("checkout.session.completed", completed).await;
    let done = env.session(&opened.id).await;
    assert_eq!(done.status, CheckoutSessionStatus::Complete as i32);
    assert_eq!(
        done.payment_status,
        CheckoutPaymentStatus::NoPaymentRequired as i32
    );
    assert!(!done.subscription_id.is_empty());
    let sub = env.subscription(&done.subscription_id).await;
    let stripe_sub = fake.object(&sub.provider_subscription_id);
    assert_eq!(stripe_sub["metadata"]["coffer_checkout_id"], checkout);
    assert_eq!(sub.status, SubscriptionStatus::Trialing as i32);
    assert_eq!(
        sub.trial_end.unwrap().seconds,
        stripe_sub["trial_end"].as_i64().unwrap()
    );

    // A renewal that fails, then one that is paid: the invoices name the subscription.
    let sub_id = sub.provider_subscription_id.clone();
    let invoice = fake.object(done_invoice(fake, &cs).as_str());
    fake.update(&sub_id, |s| s["status"] = "past_due".into());
    env.apply("invoice.payment_failed", invoice.clone()).await;
    assert_eq!(
        env.subscription(&done.subscription_id).await.status,
        SubscriptionStatus::PastDue as i32
    );
    fake.update(&sub_id, |s| s["status"] = "active".into());
    env.apply("invoice.paid", invoice).await;
    assert_eq!(
        env.subscription(&done.subscription_id).await.status,
        SubscriptionStatus::Active as i32
    );
    fake.update(&sub_id, |s| s["status"] = "canceled".into());
    let deleted = fake.object(&sub_id);
    env.apply("customer.subscription.deleted", deleted).await;
    assert_eq!(
        env.subscription(&done.subscription_id).await.status,
        SubscriptionStatus::Canceled as i32
    );
}

/// The invoice a completed subscription session made.
fn done_invoice(fake: &FakeStripe, cs: &str) -> String {
    fake.object(cs)["invoice"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn events_out_of_order_end_in_stripes_current_state() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let opened = env.open_subscription_session(Some(7)).await;
    let cs = opened.provider_session_id.clone();
    let completed = fake.complete_session(&cs);
    let sub_id = completed["subscription"].as_str().unwrap().to_owned();
    let created = fake.object(&sub_id);
    assert_eq!(created["status"], "trialing");
    // The trial ends and the first invoice is paid: the subscription is active now.
    fake.update(&sub_id, |s| {
        s["status"] = "active".into();
        s["trial_end"] = Value::Null;
    });
    let updated = fake.object(&sub_id);

    // `updated` comes first, about a subscription Coffer does not know yet: fetched, and
    // made from what Stripe says now.
    env.apply("customer.subscription.updated", updated.clone())
        .await;
    let subs = env.subscriptions().await;
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].status, SubscriptionStatus::Active as i32);
    assert_eq!(subs[0].provider_subscription_id, sub_id);
    // Then `created`, whose payload says trialing: Stripe's current state wins.
    env.apply("customer.subscription.created", created.clone())
        .await;
    // An old update delivered again after the newer one.
    env.apply("customer.subscription.updated", created).await;
    // The session's own completion, last.
    env.apply("checkout.session.completed", completed).await;
    let subs = env.subscriptions().await;
    assert_eq!(
        subs.len(),
        1,
        "one subscription row, however the events came"
    );
    assert_eq!(subs[0].status, SubscriptionStatus::Active as i32);
    assert_eq!(subs[0].trial_end, None);
    assert_eq!(
        env.session(&opened.id).await.status,
        CheckoutSessionStatus::Complete as i32
    );
    // Every event fetched the subscription from Stripe rather than reading its payload.
    assert!(
        fake.requests(Method::GET, &format!("/v1/subscriptions/{sub_id}"))
            .len()
            >= 3
    );
}

#[tokio::test]
async fn a_payment_coffer_does_not_know_is_fetched_and_found_by_its_checkout() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let opened = env.open_payment_session().await;
    let cs = opened.provider_session_id.clone();
    let paid = fake.complete_session(&cs);
    let pi = fake.object(paid["payment_intent"].as_str().unwrap());
    // Coffer has never seen pi_…: the payment intent's metadata names the checkout.
    env.apply("payment_intent.succeeded", pi.clone()).await;
    let payment = env.payment(&opened.payment_id).await;
    assert_eq!(payment.status, PaymentStatus::Succeeded as i32);
    assert_eq!(payment.provider_payment_id, pi["id"].as_str().unwrap());
    // A payment intent Coffer did not make (a renewal's, a payment link's) is ignored.
    let mut foreign = pi.clone();
    foreign["id"] = "pi_test_foreign".into();
    foreign["metadata"] = serde_json::json!({});
    let event = env.deliver("payment_intent.succeeded", foreign).await;
    assert!(env.settled(&event, "ignored").await);
    // And the session's completion still lands on the same payment.
    env.apply("checkout.session.completed", paid).await;
    assert_eq!(
        env.session(&opened.id).await.status,
        CheckoutSessionStatus::Complete as i32
    );
}

/// The event of a session completed while its create's answer is still on its way: the
/// inbox's fetch applies the completion first, the create's answer (asked earlier, so older)
/// does not move the session back to OPEN, and there is one session.
#[tokio::test]
async fn a_webhook_racing_the_create_updates_the_one_session() {
    let env = Env::spawn().await;
    let fake = FakeStripe::clone(&env.fake);
    // The session is made at once, but its answer takes 400 ms (within the attempt's time).
    fake.fail(
        Method::POST,
        "/v1/checkout/sessions",
        1,
        Fault::Slow(Duration::from_millis(400)),
    );
    let alice = customer(&env.app, &env.app.key, "alice").await;
    let (_, [_, _, once]) = plan(&env.app, "pro").await;
    let mut checkout = client(&env.app).await;
    let key = env.app.key.clone();
    let create = tokio::spawn(async move {
        checkout
            .create_checkout_session(req(
                session(&alice, CheckoutMode::Payment, vec![item(&once, 1)]),
                &key,
            ))
            .await
            .unwrap()
            .into_inner()
    });
    assert!(
        eventually(Duration::from_secs(5), || async {
            !fake.objects("cs_").is_empty()
        })
        .await
    );
    let cs = fake.objects("cs_")[0]["id"].as_str().unwrap().to_owned();
    let event = env
        .deliver("checkout.session.completed", fake.complete_session(&cs))
        .await;
    let opened = create.await.unwrap();
    assert_eq!(opened.provider_session_id, cs);
    assert!(env.settled(&event, "processed").await);
    assert_eq!(
        env.session(&opened.id).await.status,
        CheckoutSessionStatus::Complete as i32
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM checkout_sessions")
        .fetch_one(&env.app.pool)
        .await
        .unwrap();
    assert_eq!((rows, fake.objects("cs_").len()), (1, 1));
}

#[tokio::test]
async fn an_event_whose_fetch_fails_waits_for_stripe_and_is_applied() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let opened = env.open_payment_session().await;
    let paid = fake.complete_session(&opened.provider_session_id);
    fake.set_down(true);
    let event = env.deliver("checkout.session.completed", paid).await;
    let id = event["id"].as_str().unwrap().to_owned();
    // Retried while Stripe is down, never dead.
    assert!(
        eventually(Duration::from_secs(15), || async {
            env.event_row(&id).await.1 >= 3
        })
        .await
    );
    let (status, _) = env.event_row(&id).await;
    assert!(
        !["dead", "processed"].contains(&status.as_str()),
        "{status}"
    );
    assert_eq!(
        env.session(&opened.id).await.status,
        CheckoutSessionStatus::Open as i32
    );
    fake.set_down(false);
    assert!(env.settled(&event, "processed").await);
    assert_eq!(
        env.session(&opened.id).await.status,
        CheckoutSessionStatus::Complete as i32
    );
    assert_eq!(
        env.payment(&opened.payment_id).await.status,
        PaymentStatus::Succeeded as i32
    );
}

/// The ErrorInfo metadata of an error.
fn error_metadata(status: &tonic::Status) -> std::collections::HashMap<String, String> {
    use tonic_types::StatusExt;
    status
        .get_error_details()
        .error_info()
        .map(|i| i.metadata.clone())
        .unwrap_or_default()
}

/// A new PAYMENT session request for a new customer `who`, of one inline 20.00 USD line.
async fn inline_session(env: &Env, who: &str) -> coffer::grpc::pb::CreateCheckoutSessionRequest {
    let id = customer(&env.app, &env.app.key, who).await;
    session(&id, CheckoutMode::Payment, vec![inline(2_000, "USD", 1)])
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_as_stripe_asks() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let request = inline_session(&env, "carol").await;
    fake.fail(
        Method::POST,
        "/v1/checkout/sessions",
        1,
        Fault::rate_limited(1),
    );
    let opened = client(&env.app)
        .await
        .create_checkout_session(req(request, &env.app.key))
        .await
        .unwrap()
        .into_inner();
    let tries = fake.requests(Method::POST, "/v1/checkout/sessions");
    assert_eq!(tries.len(), 2);
    assert_eq!(tries[0].status, 429);
    assert_eq!(tries[1].idempotency_key, tries[0].idempotency_key);
    assert!(
        tries[1].at - tries[0].at >= Duration::from_secs(1),
        "Retry-After: 1 was honoured ({:?})",
        tries[1].at - tries[0].at
    );
    assert_eq!(fake.objects("cs_").len(), 1);
    assert_eq!(opened.provider_session_id, fake.objects("cs_")[0]["id"]);
}

#[tokio::test]
async fn a_server_error_then_success_is_one_refund() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let opened = env.open_payment_session().await;
    env.apply(
        "checkout.session.completed",
        fake.complete_session(&opened.provider_session_id),
    )
    .await;
    fake.fail(Method::POST, "/v1/refunds", 1, Fault::status(500));
    let refund = client(&env.app)
        .await
        .refund_payment(req(
            RefundPaymentRequest {
                payment_id: opened.payment_id.clone(),
                amount: Some(1_000),
                ..Default::default()
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refund.status, RefundStatus::Succeeded as i32);
    let tries = fake.requests(Method::POST, "/v1/refunds");
    assert_eq!(
        tries.iter().map(|t| t.status).collect::<Vec<_>>(),
        [500, 200]
    );
    let key = tries[0].idempotency_key.clone().unwrap();
    assert_eq!(tries[1].idempotency_key.as_deref(), Some(key.as_str()));
    assert_eq!(fake.executions(&key), 1);
    assert_eq!(fake.objects("re_").len(), 1);
}

#[tokio::test]
async fn a_create_that_times_out_is_settled_by_finding_the_one_session() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let request = inline_session(&env, "dave").await;
    // Stripe makes the session, but every answer comes after the attempt's timeout.
    fake.fail(
        Method::POST,
        "/v1/checkout/sessions",
        usize::MAX,
        Fault::Slow(Duration::from_millis(900)),
    );
    let mut checkout = client(&env.app).await;
    let e = checkout
        .create_checkout_session(idem(request.clone(), &env.app.key, "timed-out"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), details(&e).0.as_str()),
        (tonic::Code::Unavailable, "PROVIDER_OUTCOME_UNKNOWN")
    );
    let tries = fake.requests(Method::POST, "/v1/checkout/sessions");
    assert!(tries.len() >= 2, "retried under its key: {tries:?}");
    let key = tries[0].idempotency_key.clone().unwrap();
    assert!(
        tries
            .iter()
            .all(|t| t.idempotency_key.as_deref() == Some(key.as_str()))
    );
    assert_eq!(fake.executions(&key), 1, "made once, replayed after");
    assert_eq!(fake.objects("cs_").len(), 1);
    fake.clear_faults();

    // The resolver finds it by Coffer's id among Stripe's recent sessions.
    assert!(
        eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, String>(
                "SELECT status FROM provider_operations WHERE kind = 'create_checkout_session'",
            )
            .fetch_one(&env.app.pool)
            .await
            .unwrap()
                == "succeeded"
        })
        .await
    );
    assert!(
        !fake
            .requests(Method::GET, "/v1/checkout/sessions")
            .is_empty()
    );
    let retried = checkout
        .create_checkout_session(idem(request, &env.app.key, "timed-out"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.provider_session_id, fake.objects("cs_")[0]["id"]);
    assert_eq!(retried.status, CheckoutSessionStatus::Open as i32);
    assert_eq!(
        fake.objects("cs_").len(),
        1,
        "exactly one session on Stripe"
    );
    assert_eq!(fake.executions(&key), 1);
}

#[tokio::test]
async fn card_errors_carry_their_decline_code_and_bad_requests_are_not_retried() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let mut checkout = client(&env.app).await;

    // 402 on a create: FAILED_PRECONDITION with the decline code, asked once.
    let request = inline_session(&env, "erin").await;
    fake.fail(
        Method::POST,
        "/v1/checkout/sessions",
        1,
        Fault::card_declined("do_not_honor"),
    );
    let e = checkout
        .create_checkout_session(req(request.clone(), &env.app.key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(details(&e).0, "PROVIDER_REJECTED");
    let metadata = error_metadata(&e);
    assert_eq!(metadata["decline_code"], "do_not_honor");
    assert_eq!(metadata["provider_code"], "card_declined");
    assert_eq!(
        fake.requests(Method::POST, "/v1/checkout/sessions").len(),
        1
    );

    // 400: refused, never sent again.
    fake.fail(Method::POST, "/v1/checkout/sessions", 1, Fault::status(400));
    let e = checkout
        .create_checkout_session(req(request.clone(), &env.app.key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(!error_metadata(&e).contains_key("decline_code"));
    assert_eq!(
        fake.requests(Method::POST, "/v1/checkout/sessions").len(),
        2
    );

    // A session that works, paid.
    let opened = checkout
        .create_checkout_session(req(request, &env.app.key))
        .await
        .unwrap()
        .into_inner();
    env.apply(
        "checkout.session.completed",
        fake.complete_session(&opened.provider_session_id),
    )
    .await;
    // 402 on a refund: the refund is FAILED with Stripe's code, its amount free again.
    fake.fail(
        Method::POST,
        "/v1/refunds",
        1,
        Fault::card_declined("expired_card"),
    );
    let refused = checkout
        .refund_payment(req(
            RefundPaymentRequest {
                payment_id: opened.payment_id.clone(),
                amount: Some(500),
                ..Default::default()
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(refused.status, RefundStatus::Failed as i32);
    assert_eq!(refused.failure_code, "card_declined");
    assert_eq!(fake.requests(Method::POST, "/v1/refunds").len(), 1);
    assert_eq!(fake.objects("re_").len(), 0);
    // The whole amount can still be refunded.
    let whole = checkout
        .refund_payment(req(
            RefundPaymentRequest {
                payment_id: opened.payment_id.clone(),
                amount: None,
                ..Default::default()
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (whole.status, whole.amount),
        (RefundStatus::Succeeded as i32, 2_000)
    );
}

#[tokio::test]
async fn the_breaker_opens_refuses_fast_and_closes_after_stripe_recovers() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let mut checkout = client(&env.app).await;
    // The customer exists on Stripe already, so each call below is one request.
    let request = inline_session(&env, "frank").await;
    checkout
        .create_checkout_session(req(request.clone(), &env.app.key))
        .await
        .unwrap();
    fake.set_down(true);
    let mut refused = None;
    // Only this call's own POSTs are counted: the journal's resolver may look for the lost
    // answers of the calls before it (GETs) at any moment, and one of those may be what opens
    // the breaker.
    let creates = || fake.requests(Method::POST, "/v1/checkout/sessions").len();
    for _ in 0..8 {
        let before = creates();
        let started = std::time::Instant::now();
        let e = checkout
            .create_checkout_session(req(request.clone(), &env.app.key))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        if details(&e).0 == "PROVIDER_UNAVAILABLE" {
            refused = Some((started.elapsed(), creates() - before));
            break;
        }
        assert_eq!(details(&e).0, "PROVIDER_OUTCOME_UNKNOWN");
    }
    let (took, sent) = refused.expect("the breaker opened");
    assert_eq!(sent, 0, "an open breaker sends nothing");
    assert!(took < Duration::from_millis(300), "refused fast: {took:?}");

    fake.set_down(false);
    assert!(
        eventually(Duration::from_secs(10), || async {
            client(&env.app)
                .await
                .create_checkout_session(req(request.clone(), &env.app.key))
                .await
                .is_ok()
        })
        .await,
        "the breaker closes once Stripe answers again"
    );
}

#[tokio::test]
async fn a_slow_stripe_account_leaves_another_accounts_calls_alone() {
    let slow = FakeStripe::start().await;
    let extra = format!(
        r#"
[[account]]
name = "acme-slow"
tenant = "acme"
provider = "stripe"
api_key_env = "COFFER_STRIPE_KEY"
webhook_secret_env = "COFFER_STRIPE_WHSEC"
api_base = "{}"
"#,
        slow.base()
    );
    let env = Env::spawn_on(FakeStripe::start().await, &extra).await;
    let mut fast_request = inline_session(&env, "grace").await;
    // Warm: grace's customer exists on the fast account.
    client(&env.app)
        .await
        .create_checkout_session(req(fast_request.clone(), &env.app.key))
        .await
        .unwrap();
    for path in ["/v1/customers", "/v1/checkout/sessions"] {
        slow.fail(
            Method::POST,
            path,
            usize::MAX,
            Fault::Slow(Duration::from_millis(450)),
        );
    }
    let mut calls = Vec::new();
    for i in 0..12 {
        let mut r = inline_session(&env, &format!("slow-{i}")).await;
        r.account = "acme-slow".into();
        let (app_key, channel) = (env.app.key.clone(), env.app.channel().await);
        calls.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = coffer::grpc::pb::checkout_client::CheckoutClient::new(channel)
                .create_checkout_session(req(r, &app_key))
                .await;
            (result.map(|_| ()), started.elapsed())
        }));
    }
    // While the slow account's slots are full, the other account answers at once.
    assert!(
        eventually(Duration::from_secs(5), || async {
            slow.all_requests().len() >= 4
        })
        .await
    );
    fast_request.account = ACCOUNT.into();
    let started = std::time::Instant::now();
    client(&env.app)
        .await
        .create_checkout_session(req(fast_request, &env.app.key))
        .await
        .unwrap();
    let fast = started.elapsed();
    // Had the accounts shared a bulkhead, this call would have been refused after its 200 ms
    // wait (the unwrap above) or have waited for a slot held 450 ms. The bound leaves room
    // for a machine loaded by the whole suite, where an unshared call has taken ~0.7 s.
    assert!(
        fast < Duration::from_millis(1_000),
        "the fast account took {fast:?}"
    );
    let mut refused = 0;
    for call in calls {
        let (result, took) = call.await.unwrap();
        match result {
            Ok(()) => assert!(took >= Duration::from_millis(900), "{took:?}"),
            Err(e) => {
                assert_eq!(details(&e).0, "PROVIDER_UNAVAILABLE", "{e:?}");
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 1,
        "the slow account's bulkhead refused the overflow"
    );
}

#[tokio::test]
async fn disputes_lost_and_won_show_on_the_payment() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let mut paid = Vec::new();
    for who in ["heidi", "ivan"] {
        let request = inline_session(&env, who).await;
        let opened = client(&env.app)
            .await
            .create_checkout_session(req(request, &env.app.key))
            .await
            .unwrap()
            .into_inner();
        let session = fake.complete_session(&opened.provider_session_id);
        env.apply("checkout.session.completed", session.clone())
            .await;
        paid.push((
            opened.payment_id,
            session["payment_intent"].as_str().unwrap().to_owned(),
        ));
    }

    // Lost: the payment stays DISPUTED and shows what the dispute took.
    let (payment, pi) = &paid[0];
    let dispute = fake.open_dispute(pi, 1_500, "fraudulent");
    env.apply("charge.dispute.created", dispute.clone()).await;
    assert_eq!(
        env.payment(payment).await.status,
        PaymentStatus::Disputed as i32
    );
    let id = dispute["id"].as_str().unwrap();
    let closed = fake.update(id, |d| d["status"] = "lost".into());
    env.apply("charge.dispute.closed", closed).await;
    let lost = env.payment(payment).await;
    assert_eq!(lost.status, PaymentStatus::Disputed as i32);
    assert_eq!(lost.amount_lost, 1_500);

    // Won: SUCCEEDED again, nothing lost.
    let (payment, pi) = &paid[1];
    let dispute = fake.open_dispute(pi, 2_000, "product_not_received");
    env.apply("charge.dispute.created", dispute.clone()).await;
    assert_eq!(
        env.payment(payment).await.status,
        PaymentStatus::Disputed as i32
    );
    let id = dispute["id"].as_str().unwrap();
    fake.update(id, |d| d["status"] = "under_review".into());
    env.apply("charge.dispute.updated", fake.object(id)).await;
    assert_eq!(
        env.payment(payment).await.status,
        PaymentStatus::Disputed as i32
    );
    let closed = fake.update(id, |d| d["status"] = "won".into());
    env.apply("charge.dispute.closed", closed).await;
    let won = env.payment(payment).await;
    assert_eq!(won.status, PaymentStatus::Succeeded as i32);
    assert_eq!(won.amount_lost, 0);
    // Each dispute was read from Stripe with its payment intent expanded.
    assert!(
        fake.requests(Method::GET, "/v1/disputes/")
            .iter()
            .all(|r| r.status == 200)
    );
}

#[tokio::test]
async fn a_rotated_webhook_secret_still_verifies_and_a_bad_api_key_is_unavailable() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let opened = env.open_payment_session().await;
    // Signed with the previous secret, still listed: accepted and applied.
    let event = fake.event(
        "checkout.session.completed",
        fake.complete_session(&opened.provider_session_id),
    );
    assert_eq!(
        fake.deliver(&env.webhook_url(ACCOUNT), WHSEC_OLD, &event)
            .await,
        200
    );
    assert!(env.settled(&event, "processed").await);
    assert_eq!(
        fake.deliver(&env.webhook_url(ACCOUNT), "whsec_someone_else", &event)
            .await,
        400
    );
    // Stripe refusing the key is the operator's problem: UNAVAILABLE, not the caller's fault.
    fake.fail(Method::POST, "/v1/customers", 1, Fault::status(401));
    let e = client(&env.app)
        .await
        .create_checkout_session(req(inline_session(&env, "judy").await, &env.app.key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(!e.message().contains(API_KEY));
}

#[tokio::test]
async fn a_declined_card_fails_the_payment_until_another_card_pays() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let opened = env.open_payment_session().await;
    let session = fake.decline_session(&opened.provider_session_id, "insufficient_funds");
    let pi = session["payment_intent"].as_str().unwrap().to_owned();
    env.apply("payment_intent.payment_failed", fake.object(&pi))
        .await;
    let failed = env.payment(&opened.payment_id).await;
    assert_eq!(failed.status, PaymentStatus::Failed as i32);
    assert_eq!(failed.failure_code, "insufficient_funds");
    assert_eq!(
        env.session(&opened.id).await.status,
        CheckoutSessionStatus::Open as i32
    );
    // The customer tries another card on Stripe's page; the same payment intent succeeds.
    let paid = fake.complete_session(&opened.provider_session_id);
    assert_eq!(paid["payment_intent"], pi.as_str());
    env.apply("payment_intent.succeeded", fake.object(&pi))
        .await;
    env.apply("checkout.session.completed", paid).await;
    let payment = env.payment(&opened.payment_id).await;
    assert_eq!(payment.status, PaymentStatus::Succeeded as i32);
    assert_eq!(payment.failure_code, "");
}

#[tokio::test]
async fn sessions_are_verified_and_expired_on_stripe() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let mut checkout = client(&env.app).await;

    // Verify reads the session from Stripe, without waiting for its event.
    let paid = env.open_payment_session().await;
    fake.complete_session(&paid.provider_session_id);
    let verified = checkout
        .verify_checkout_session(req(
            VerifyCheckoutSessionRequest {
                id: paid.id.clone(),
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.status, CheckoutSessionStatus::Complete as i32);
    assert_eq!(
        env.payment(&paid.payment_id).await.status,
        PaymentStatus::Succeeded as i32
    );

    // Expire asks Stripe to expire the session.
    let open = client(&env.app)
        .await
        .create_checkout_session(req(inline_session(&env, "kim").await, &env.app.key))
        .await
        .unwrap()
        .into_inner();
    let expired = checkout
        .expire_checkout_session(req(
            ExpireCheckoutSessionRequest {
                id: open.id.clone(),
            },
            &env.app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(expired.status, CheckoutSessionStatus::Expired as i32);
    assert_eq!(fake.object(&open.provider_session_id)["status"], "expired");
    let expire = fake.requests(
        Method::POST,
        &format!("/v1/checkout/sessions/{}/expire", open.provider_session_id),
    );
    assert_eq!(expire.len(), 1);
    assert!(expire[0].idempotency_key.is_some());
    assert_eq!(
        env.payment(&open.payment_id).await.status,
        PaymentStatus::Expired as i32
    );
    // Stripe's event for it changes nothing more.
    env.apply(
        "checkout.session.expired",
        fake.object(&open.provider_session_id),
    )
    .await;
    assert_eq!(
        env.session(&open.id).await.status,
        CheckoutSessionStatus::Expired as i32
    );
}

#[tokio::test]
async fn lost_answers_for_a_customer_and_a_price_are_found_by_coffers_ids() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let leo = customer(&env.app, &env.app.key, "leo").await;
    let (_, [_, _, once]) = plan(&env.app, "pro").await;
    let request = session(&leo, CheckoutMode::Payment, vec![item(&once, 1)]);
    let mut checkout = client(&env.app).await;
    for path in ["/v1/customers", "/v1/prices"] {
        fake.fail(
            Method::POST,
            path,
            usize::MAX,
            Fault::Slow(Duration::from_millis(900)),
        );
    }
    // The customer is made on Stripe, its answer lost.
    let e = checkout
        .create_checkout_session(req(request.clone(), &env.app.key))
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "PROVIDER_OUTCOME_UNKNOWN", "{e:?}");
    assert_eq!(fake.objects("cus_").len(), 1);
    fake.clear_faults();
    fake.fail(
        Method::POST,
        "/v1/prices",
        usize::MAX,
        Fault::Slow(Duration::from_millis(900)),
    );
    // Found by Search on its metadata; then the price is made, its answer lost too.
    let e = checkout
        .create_checkout_session(req(request.clone(), &env.app.key))
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "PROVIDER_OUTCOME_UNKNOWN", "{e:?}");
    assert!(
        !fake
            .requests(Method::GET, "/v1/customers/search")
            .is_empty()
    );
    fake.clear_faults();
    // Found by its lookup key; the session is made (once the breaker, opened by six
    // timed-out attempts, lets calls through again).
    let mut opened = None;
    for _ in 0..50 {
        match checkout
            .create_checkout_session(req(request.clone(), &env.app.key))
            .await
        {
            Ok(r) => {
                opened = Some(r.into_inner());
                break;
            }
            Err(e) => {
                assert_eq!(details(&e).0, "PROVIDER_UNAVAILABLE", "{e:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let opened = opened.expect("the session is made");
    assert!(!fake.requests(Method::GET, "/v1/prices").is_empty());
    assert_eq!(fake.objects("cus_").len(), 1, "one Stripe customer");
    assert_eq!(fake.objects("price_").len(), 1, "one Stripe price");
    assert_eq!(fake.objects("cs_").len(), 1);
    let params = fake.session_params(&opened.provider_session_id);
    assert_eq!(params["customer"], fake.objects("cus_")[0]["id"]);
    assert_eq!(
        params["line_items"][0]["price"],
        fake.objects("price_")[0]["id"]
    );
}

#[tokio::test]
async fn lifecycle_calls_go_to_stripe_and_answer_its_state() {
    let env = Env::spawn().await;
    let fake = &env.fake;
    let opened = env.open_subscription_session(None).await;
    let completed = fake.complete_session(&opened.provider_session_id);
    env.apply("checkout.session.completed", completed).await;
    let id = env.session(&opened.id).await.subscription_id;
    let sub_id = env.subscription(&id).await.provider_subscription_id;
    let path = format!("/v1/subscriptions/{sub_id}");
    let mut subs = env.app.subscriptions().await;
    let key = &env.app.key;

    let scheduled = subs
        .cancel_subscription(idem(
            CancelSubscriptionRequest {
                id: id.clone(),
                at_period_end: true,
                reason: String::new(),
            },
            key,
            "stripe-cancel-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(scheduled.cancel_at_period_end);
    assert_eq!(fake.object(&sub_id)["cancel_at_period_end"], true);
    let posts = fake.requests(Method::POST, &path);
    assert_eq!(posts.len(), 1);
    assert!(posts[0].idempotency_key.is_some(), "{:?}", posts[0]);
    let undone = subs
        .undo_cancel_subscription(req(UndoCancelSubscriptionRequest { id: id.clone() }, key))
        .await
        .unwrap()
        .into_inner();
    assert!(!undone.cancel_at_period_end);
    assert_eq!(fake.object(&sub_id)["cancel_at_period_end"], false);

    let paused = subs
        .pause_subscription(req(PauseSubscriptionRequest { id: id.clone() }, key))
        .await
        .unwrap()
        .into_inner();
    assert!(paused.collection_paused);
    assert_eq!(fake.object(&sub_id)["pause_collection"]["behavior"], "void");
    let resumed = subs
        .resume_subscription(req(ResumeSubscriptionRequest { id: id.clone() }, key))
        .await
        .unwrap()
        .into_inner();
    assert!(!resumed.collection_paused);
    assert_eq!(fake.object(&sub_id)["pause_collection"], Value::Null);

    let canceled = subs
        .cancel_subscription(req(
            CancelSubscriptionRequest {
                id: id.clone(),
                at_period_end: false,
                reason: String::new(),
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(canceled.status, SubscriptionStatus::Canceled as i32);
    assert_eq!(
        canceled.canceled_at.unwrap().seconds,
        fake.object(&sub_id)["canceled_at"].as_i64().unwrap()
    );
    assert_eq!(fake.requests(Method::DELETE, &path).len(), 1);
    // Refused by Coffer's own rules before Stripe is asked.
    let e = subs
        .pause_subscription(req(PauseSubscriptionRequest { id: id.clone() }, key))
        .await
        .unwrap_err();
    assert_eq!(details(&e).0, "ILLEGAL_SUBSCRIPTION_TRANSITION");
    assert_eq!(fake.requests(Method::POST, &path).len(), 4);
}

#[tokio::test]
async fn a_portal_session_opens_stripes_billing_portal_for_the_mirrored_customer() {
    use coffer::grpc::pb::CreatePortalSessionRequest;
    use coffer::grpc::pb::create_portal_session_request::Customer as Who;

    let env = Env::spawn().await;
    let fake = &env.fake;
    let key = &env.app.key;
    let alice = customer(&env.app, key, "alice").await;
    let mut customers = env.app.customers().await;
    let ask = |return_url: &str| CreatePortalSessionRequest {
        customer: Some(Who::ExternalId("alice".into())),
        return_url: return_url.into(),
    };
    let portal = customers
        .create_portal_session(idem(
            ask("https://shop.acme.example/account"),
            key,
            "portal-1",
        ))
        .await
        .unwrap()
        .into_inner();
    let made = fake.objects("bps_");
    assert_eq!(made.len(), 1);
    assert_eq!(portal.url, made[0]["url"].as_str().unwrap());
    assert_eq!(made[0]["return_url"], "https://shop.acme.example/account");
    // The customer was mirrored on Stripe first, with Coffer's id, and the session is its.
    let stripe_customers = fake.objects("cus_");
    assert_eq!(stripe_customers.len(), 1);
    assert_eq!(
        stripe_customers[0]["metadata"]["coffer_customer_id"],
        uuid_of(&alice)
    );
    assert_eq!(made[0]["customer"], stripe_customers[0]["id"]);
    let posts = fake.requests(Method::POST, "/v1/billing_portal/sessions");
    assert_eq!(posts.len(), 1);
    assert!(posts[0].idempotency_key.is_some(), "{:?}", posts[0]);
    assert_eq!(posts[0].stripe_version.as_deref(), Some(API_VERSION));
    let expires = portal.expire_time.unwrap().seconds;
    let created = made[0]["created"].as_i64().unwrap();
    assert_eq!(expires - created, 300, "Stripe's five minutes");

    // A retry under the same key answers the same link without asking Stripe again.
    let again = customers
        .create_portal_session(idem(
            ask("https://shop.acme.example/account"),
            key,
            "portal-1",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.url, portal.url);
    assert_eq!(
        fake.requests(Method::POST, "/v1/billing_portal/sessions")
            .len(),
        1
    );

    // A return URL off the tenant's allowed origins is refused before Stripe is asked.
    let e = customers
        .create_portal_session(req(ask("https://evil.example/account"), key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert_eq!(details(&e).1, vec!["return_url".to_owned()]);
    assert_eq!(fake.objects("bps_").len(), 1);
}
