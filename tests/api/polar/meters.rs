//! Usage pushed to Polar's event ingestion: subscriptions to a metered product have their
//! usage sent as events to the meter Coffer mirrored, several customers in one request, each
//! event with an `external_id` Polar de-duplicates, so the fake's totals equal Coffer's.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::Method;
use coffer::grpc::pb::{
    Aggregation, CheckoutMode, CreateMeterRequest, CreatePlanRequest, Interval, Price,
    RecordUsageRequest, UsageEvent, usage_event,
};

use super::fake::{FakePolar, Fault};
use super::{WAIT, all_processed, customer, customer_uuid, events, hook, spawn_waiting};
use crate::checkout::{client, item, session};
use crate::helpers::{TestApp, eventually, req};

const INGEST: &str = "/v1/events/ingest";

/// A monthly price of 0.50 USD a unit of the SUM meter `tokens`; its id.
async fn metered_price(app: &TestApp) -> String {
    app.usage()
        .await
        .create_meter(req(
            CreateMeterRequest {
                key: "tokens".into(),
                name: "Tokens".into(),
                aggregation: Aggregation::Sum as i32,
                value_key: "tokens".into(),
            },
            &app.key,
        ))
        .await
        .unwrap();
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
    plan.prices[0].id.clone()
}

/// `who` subscribes to `price` through Polar's checkout and its webhooks.
async fn subscribe(app: &TestApp, fake: &FakePolar, url: &str, who: &str, price: &str) {
    let opened = client(app)
        .await
        .create_checkout_session(req(
            session(who, CheckoutMode::Subscription, vec![item(price, 1)]),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    let before = events(app).await.len();
    let (order, sub) = fake.pay(&opened.provider_session_id);
    for (event, data) in [
        (
            "checkout.updated",
            fake.object("checkouts", &opened.provider_session_id),
        ),
        ("order.created", fake.object("orders", &order)),
        (
            "subscription.created",
            fake.object("subscriptions", &sub.unwrap()),
        ),
    ] {
        assert_eq!(fake.deliver(url, event, data).await, 200, "{event}");
    }
    assert!(
        eventually(WAIT, || all_processed(app, before + 3)).await,
        "{:?}",
        events(app).await
    );
}

async fn record(app: &TestApp, usage: &[(&str, &str, &str)]) {
    // To the nanosecond: a subscription that began this second counts from its instant.
    let now = time::OffsetDateTime::now_utc();
    let events = usage
        .iter()
        .map(|(id, who, value)| UsageEvent {
            event_id: (*id).into(),
            customer: Some(usage_event::Customer::CustomerId((*who).into())),
            meter_key: "tokens".into(),
            value: (*value).into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: now.unix_timestamp(),
                nanos: now.nanosecond() as i32,
            }),
            properties: BTreeMap::new(),
        })
        .collect();
    let answer = app
        .usage()
        .await
        .record_usage(req(RecordUsageRequest { events }, &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.accepted as usize, usage.len());
}

#[tokio::test]
async fn usage_is_ingested_by_polar_in_one_batch_and_counted_once() {
    let fake = FakePolar::start().await;
    let (app, sidecar) = spawn_waiting(&fake, Duration::from_millis(500)).await;
    let url = hook(sidecar);
    let price = metered_price(&app).await;
    let alice = customer(&app, "alice", "alice@example.com").await;
    let bob = customer(&app, "bob", "bob@example.com").await;
    subscribe(&app, &fake, &url, &alice, &price).await;
    subscribe(&app, &fake, &url, &bob, &price).await;
    // The product is metered by the meter Coffer made for `tokens`.
    let meters = fake.all("meters");
    assert_eq!(meters.len(), 1);
    let meter = meters[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(meters[0]["aggregation"]["func"], "sum");
    let product = fake.all("products")[0].clone();
    assert_eq!(product["prices"][0]["amount_type"], "metered_unit");
    assert_eq!(product["prices"][0]["meter_id"], meter.as_str());

    record(
        &app,
        &[
            ("a1", &alice, "2.5"),
            ("a2", &alice, "4"),
            ("b1", &bob, "3"),
        ],
    )
    .await;
    let (a, b) = (customer_uuid(&alice), customer_uuid(&bob));
    assert!(
        eventually(WAIT, || async {
            fake.meter_total(&meter, &a) == 6.5 && fake.meter_total(&meter, &b) == 3.0
        })
        .await,
        "{:?}",
        fake.events()
    );
    assert_eq!(fake.count(Method::POST, INGEST), 1, "both in one request");

    // Polar takes the next batch, and every answer is lost: the outbound stack sends it
    // again, then the worker does; Polar skips what it has by external id.
    fake.fail(
        Method::POST,
        INGEST,
        3,
        Fault::Slow(Duration::from_millis(800)),
    );
    record(&app, &[("a3", &alice, "1")]).await;
    assert!(
        eventually(WAIT, || async {
            fake.count(Method::POST, INGEST) >= 5
                && sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM usage_push_cursors WHERE pending_op IS NOT NULL",
                )
                .fetch_one(&app.pool)
                .await
                .unwrap()
                    == 0
        })
        .await
    );
    assert_eq!(fake.meter_total(&meter, &a), 7.5);
    assert_eq!(fake.meter_total(&meter, &b), 3.0);
    let ids: std::collections::BTreeSet<String> = fake
        .events()
        .iter()
        .map(|e| e["external_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), fake.events().len(), "each push stored once");
}
