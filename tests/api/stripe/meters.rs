//! Usage pushed to Stripe's billing meters: a subscription to a metered price has its usage
//! sent to the meter Coffer mirrored for it, in the background; the fake's totals (by the
//! meter's formula) must equal Coffer's, whatever is lost, refused or slowed on the way.

use std::collections::BTreeMap;
use std::time::Duration;

use coffer::grpc::pb::{
    Aggregation, CheckoutMode, CreateMeterRequest, CreatePlanRequest, Interval, Price,
    RecordUsageRequest, UsageEvent, usage_event,
};
use http::Method;

use super::Env;
use super::fake::Fault;
use crate::checkout::{client, customer, item, session};
use crate::helpers::{eventually, http_get, req};

const EVENTS: &str = "/v1/billing/meter_events";

/// A customer subscribed to a price metered by the meter `tokens` of `aggregation`.
struct Metered {
    customer: String,
    /// Stripe's customer id.
    stripe_customer: String,
    /// The event name of the meter on Stripe.
    event_name: String,
}

async fn subscribe(env: &Env, aggregation: Aggregation) -> Metered {
    let app = &env.app;
    let meter = app
        .usage()
        .await
        .create_meter(req(
            CreateMeterRequest {
                key: "tokens".into(),
                name: "Tokens".into(),
                aggregation: aggregation as i32,
                value_key: "tokens".into(),
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let plan = app
        .subscriptions()
        .await
        .create_plan(req(
            CreatePlanRequest {
                key: "usage".into(),
                name: "Pay as you go".into(),
                prices: vec![Price {
                    amount: 50,
                    currency: "USD".into(),
                    interval: Interval::Month as i32,
                    meter_key: "tokens".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.prices[0].meter_key, "tokens");
    let carol = customer(app, &app.key, "carol").await;
    let opened = client(app)
        .await
        .create_checkout_session(req(
            session(
                &carol,
                CheckoutMode::Subscription,
                vec![item(&plan.prices[0].id, 1)],
            ),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let cs = opened.provider_session_id.clone();
    // The price is Stripe's metered price of the meter Coffer made, and the line has no
    // quantity (Stripe refuses one for a metered price).
    let params = env.fake.session_params(&cs);
    assert!(params["line_items"][0].get("quantity").is_none());
    let price = env
        .fake
        .object(params["line_items"][0]["price"].as_str().unwrap());
    assert_eq!(price["recurring"]["usage_type"], "metered");
    let stripe_meter = env
        .fake
        .object(price["recurring"]["meter"].as_str().unwrap());
    let uuid = uuid::Uuid::parse_str(&super::uuid_of(&meter.id)).unwrap();
    assert_eq!(
        stripe_meter["event_name"],
        format!("coffer_{}", uuid.simple())
    );
    let completed = env.fake.complete_session(&cs);
    let stripe_customer = completed["customer"].as_str().unwrap().to_owned();
    env.apply("checkout.session.completed", completed).await;
    Metered {
        customer: carol,
        stripe_customer,
        event_name: stripe_meter["event_name"].as_str().unwrap().to_owned(),
    }
}

async fn record(env: &Env, who: &Metered, values: &[(&str, &str)]) {
    let now = time::OffsetDateTime::now_utc();
    let events = values
        .iter()
        .map(|(id, value)| UsageEvent {
            event_id: (*id).into(),
            customer: Some(usage_event::Customer::CustomerId(who.customer.clone())),
            meter_key: "tokens".into(),
            value: (*value).into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: now.unix_timestamp(),
                nanos: 0,
            }),
            properties: BTreeMap::new(),
        })
        .collect();
    let answer = env
        .app
        .usage()
        .await
        .record_usage(req(RecordUsageRequest { events }, &env.app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted as usize, values.len());
}

async fn total_reaches(env: &Env, who: &Metered, expected: i64) -> bool {
    eventually(Duration::from_secs(20), || async {
        env.fake.meter_total(&who.event_name, &who.stripe_customer) == expected
    })
    .await
}

/// Every identifier Stripe took is distinct: nothing counted twice.
fn identifiers_distinct(env: &Env) {
    let events = env.fake.meter_events();
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| e["identifier"].as_str().unwrap())
        .collect();
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "{events:?}");
}

/// The cursors' pushed totals and whether any batch is in flight.
async fn cursor_state(env: &Env) -> Vec<(String, bool)> {
    sqlx::query_as(
        "SELECT trim_scale(pushed)::text, pending_op IS NOT NULL FROM usage_push_cursors
         ORDER BY created_at",
    )
    .fetch_all(&env.app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn usage_on_a_metered_price_is_pushed_and_the_totals_agree() {
    let env = Env::spawn().await;
    let who = subscribe(&env, Aggregation::Sum).await;
    let meter = env.fake.objects("mtr_");
    assert_eq!(meter.len(), 1, "the meter is mirrored once");
    assert_eq!(meter[0]["default_aggregation"]["formula"], "sum");

    record(&env, &who, &[("e1", "3"), ("e2", "4.5"), ("e3", "2.5")]).await;
    assert!(
        total_reaches(&env, &who, 10).await,
        "{:?}",
        env.fake.meter_events()
    );
    // More usage is pushed as the increment; a fraction waits for a whole unit (Stripe's
    // values are whole numbers).
    record(&env, &who, &[("e4", "7"), ("e5", "0.5")]).await;
    assert!(
        total_reaches(&env, &who, 17).await,
        "{:?}",
        env.fake.meter_events()
    );
    record(&env, &who, &[("e6", "0.5")]).await;
    assert!(
        total_reaches(&env, &who, 18).await,
        "{:?}",
        env.fake.meter_events()
    );
    identifiers_distinct(&env);
    assert!(
        eventually(Duration::from_secs(5), || async {
            cursor_state(&env).await == vec![("18".to_owned(), false)]
        })
        .await
    );

    // The backlog drains to nothing, and every push is counted.
    let admin = env.app.admin_addr;
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (_, body) = http_get(admin, "/metrics").await;
            body.contains("coffer_usage_push_backlog_cursors 0")
                && body.contains(
                    r#"coffer_usage_pushes_total{provider="stripe",outcome="succeeded"} 3"#,
                )
        })
        .await,
        "{}",
        http_get(admin, "/metrics").await.1
    );
}

#[tokio::test]
async fn a_push_whose_answer_is_lost_is_sent_again_and_counted_once() {
    let env = Env::spawn().await;
    let who = subscribe(&env, Aggregation::Sum).await;
    // Stripe takes the event, and every answer (first attempt and retries) is lost: Coffer
    // cannot know it arrived, as after a crash between sending and recording.
    env.fake
        .fail(Method::POST, EVENTS, 3, Fault::Slow(Duration::from_secs(1)));
    record(&env, &who, &[("e1", "5"), ("e2", "6")]).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            let failed: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM provider_operations
                 WHERE kind = 'push_usage' AND status = 'unknown'",
            )
            .fetch_one(&env.app.pool)
            .await
            .unwrap();
            failed == 1
        })
        .await,
        "{:?}",
        sqlx::query_as::<_, (String, Option<String>)>(
            "SELECT status, failure FROM provider_operations WHERE kind = 'push_usage'"
        )
        .fetch_all(&env.app.pool)
        .await
        .unwrap()
    );
    assert_eq!(env.fake.meter_events().len(), 1, "Stripe has it once");
    assert_eq!(cursor_state(&env).await, vec![("0".to_owned(), true)]);
    // A day later Stripe no longer replays the idempotency key, but still knows the
    // identifier: the batch sent again is refused as a duplicate, which is its delivery.
    env.fake.forget_idempotency_keys();
    assert!(
        eventually(Duration::from_secs(15), || async {
            cursor_state(&env).await == vec![("11".to_owned(), false)]
        })
        .await,
        "{:?}",
        cursor_state(&env).await
    );
    let sends = env.fake.requests(Method::POST, EVENTS);
    assert!(sends.len() >= 4, "sent again: {sends:?}");
    assert_eq!(sends.last().unwrap().status, 400, "refused as a duplicate");
    assert_eq!(env.fake.meter_events().len(), 1);
    assert_eq!(
        env.fake.meter_total(&who.event_name, &who.stripe_customer),
        11
    );

    // The next usage is the next push, as if nothing happened.
    record(&env, &who, &[("e3", "4")]).await;
    assert!(total_reaches(&env, &who, 15).await);
    identifiers_distinct(&env);
}

#[tokio::test]
async fn a_rate_limit_slows_the_push_and_loses_nothing() {
    let env = Env::spawn().await;
    let who = subscribe(&env, Aggregation::Sum).await;
    env.fake
        .fail(Method::POST, EVENTS, 1, Fault::rate_limited(1));
    record(&env, &who, &[("e1", "9")]).await;
    assert!(total_reaches(&env, &who, 9).await);
    let sends = env.fake.requests(Method::POST, EVENTS);
    assert_eq!(
        sends.iter().map(|l| l.status).collect::<Vec<_>>(),
        vec![429, 200]
    );
    let waited = sends[1].at - sends[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "Retry-After: 1 was honoured: {waited:?}"
    );
    identifiers_distinct(&env);
}

#[tokio::test]
async fn a_max_meter_is_pushed_as_a_last_total() {
    let env = Env::spawn().await;
    let who = subscribe(&env, Aggregation::Max).await;
    assert_eq!(
        env.fake.objects("mtr_")[0]["default_aggregation"]["formula"],
        "last"
    );
    record(&env, &who, &[("e1", "3"), ("e2", "9"), ("e3", "5")]).await;
    assert!(
        total_reaches(&env, &who, 9).await,
        "{:?}",
        env.fake.meter_events()
    );
    record(&env, &who, &[("e4", "12"), ("e5", "2")]).await;
    assert!(
        total_reaches(&env, &who, 12).await,
        "{:?}",
        env.fake.meter_events()
    );
    // Totals, not increments: the values sent are the period's maximum each time.
    let sent: Vec<i64> = env
        .fake
        .meter_events()
        .iter()
        .map(|e| e["value"].as_i64().unwrap())
        .collect();
    assert_eq!(sent, vec![9, 12]);
    identifiers_distinct(&env);
}

/// A real crash: the `coffer serve` process is killed (SIGKILL) while Stripe holds the answer
/// to a push it has already taken; the next process sends the same batch again, and Stripe's
/// total is exact.
#[tokio::test]
async fn a_push_cut_by_a_crash_is_sent_again_by_the_next_process_and_counted_once() {
    use crate::binary::{Served, TempDir, acme};
    use coffer::grpc::pb::checkout_client::CheckoutClient;
    use coffer::grpc::pb::customers_client::CustomersClient;
    use coffer::grpc::pb::subscriptions_client::SubscriptionsClient;
    use coffer::grpc::pb::usage_client::UsageClient;

    let db = crate::helpers::TestDb::new().await;
    let (pool, _, key) = acme(&db).await;
    let fake = super::fake::FakeStripe::start().await;
    let state = TempDir::new();
    let config = state.0.join("coffer.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[account]]
name = "{}"
tenant = "acme"
provider = "stripe"
api_key_env = "COFFER_STRIPE_KEY"
webhook_secret_env = "COFFER_STRIPE_WHSEC"
api_base = "{}"

[tenant.acme]
allowed_redirect_origins = ["https://shop.acme.example"]
default_account = "{}"
"#,
            super::ACCOUNT,
            fake.base(),
            super::ACCOUNT
        ),
    )
    .unwrap();
    let env = [
        ("COFFER_STRIPE_KEY", super::fake::API_KEY.to_owned()),
        ("COFFER_STRIPE_WHSEC", super::WHSEC.to_owned()),
        ("COFFER_USAGE_PUSH_INTERVAL", "200ms".to_owned()),
        ("COFFER_USAGE_PUSH_RESEND_AFTER", "1s".to_owned()),
    ];
    let args = ["--config", config.to_str().unwrap()];
    let served = Served::start(&db, &state.0, &args, &env).await;

    let mut usage = UsageClient::connect(served.grpc.clone()).await.unwrap();
    usage
        .create_meter(req(
            CreateMeterRequest {
                key: "tokens".into(),
                aggregation: Aggregation::Sum as i32,
                value_key: "tokens".into(),
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap();
    let plan = SubscriptionsClient::connect(served.grpc.clone())
        .await
        .unwrap()
        .create_plan(req(
            CreatePlanRequest {
                key: "usage".into(),
                name: "Pay as you go".into(),
                prices: vec![Price {
                    amount: 50,
                    currency: "USD".into(),
                    interval: Interval::Month as i32,
                    meter_key: "tokens".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    let carol = CustomersClient::connect(served.grpc.clone())
        .await
        .unwrap()
        .create_customer(req(
            coffer::grpc::pb::CreateCustomerRequest {
                external_id: "carol".into(),
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap()
        .into_inner()
        .id;
    let opened = CheckoutClient::connect(served.grpc.clone())
        .await
        .unwrap()
        .create_checkout_session(req(
            session(
                &carol,
                CheckoutMode::Subscription,
                vec![item(&plan.prices[0].id, 1)],
            ),
            &key,
        ))
        .await
        .unwrap()
        .into_inner();
    let completed = fake.complete_session(&opened.provider_session_id);
    let stripe_customer = completed["customer"].as_str().unwrap().to_owned();
    let event = fake.event("checkout.session.completed", completed);
    let hook = format!("http://{}/webhooks/{}", served.http, super::ACCOUNT);
    assert_eq!(fake.deliver(&hook, super::WHSEC, &event).await, 200);
    let subscribed = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM subscriptions")
            .fetch_one(&pool)
            .await
            .unwrap()
            == 1
    };
    assert!(eventually(Duration::from_secs(15), subscribed).await);

    // Stripe takes the push and holds its answer; the process dies meanwhile.
    fake.fail(
        Method::POST,
        EVENTS,
        100,
        Fault::Slow(Duration::from_secs(60)),
    );
    let now = time::OffsetDateTime::now_utc();
    usage
        .record_usage(req(
            RecordUsageRequest {
                events: vec![UsageEvent {
                    event_id: "e1".into(),
                    customer: Some(usage_event::Customer::CustomerId(carol.clone())),
                    meter_key: "tokens".into(),
                    value: "42".into(),
                    occurred_at: Some(prost_types::Timestamp {
                        seconds: now.unix_timestamp(),
                        nanos: now.nanosecond() as i32,
                    }),
                    properties: BTreeMap::new(),
                }],
            },
            &key,
        ))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(15), || async {
            !fake.meter_events().is_empty()
        })
        .await
    );
    drop(served);
    fake.clear_faults();
    let in_flight: (String, bool) = sqlx::query_as(
        "SELECT trim_scale(pushed)::text, pending_op IS NOT NULL FROM usage_push_cursors",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_flight, ("0".to_owned(), true), "the batch was in flight");

    let _served = Served::start(&db, &state.0, &args, &env).await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            sqlx::query_as::<_, (String, bool)>(
                "SELECT trim_scale(pushed)::text, pending_op IS NOT NULL FROM usage_push_cursors",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                == ("42".to_owned(), false)
        })
        .await
    );
    let sends = fake.requests(Method::POST, EVENTS);
    assert!(sends.len() >= 2, "sent again after the crash: {sends:?}");
    assert_eq!(fake.meter_events().len(), 1, "Stripe took it once");
    let event_name = fake.objects("mtr_")[0]["event_name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fake.meter_total(&event_name, &stripe_customer), 42);
}
