//! Usage ingestion, queries and credits, through real gRPC against real Postgres.

use std::collections::BTreeMap;
use std::time::Duration;

use coffer::grpc::pb::usage_client::UsageClient;
use coffer::grpc::pb::{
    self, Aggregation, CreateCustomerRequest, CreateMeterRequest, GetBalanceRequest,
    GetUsageRequest, GrantCreditsRequest, RecordUsageRequest, StreamUsageRequest, UsageEvent,
    UsageWindow,
};
use prost_types::Timestamp;
use time::OffsetDateTime;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{TestApp, by_external_id, details, idem, one_session_waits_on_a_lock, req};

const HOUR: i64 = 3_600;
const DAY: i64 = 24 * HOUR;

fn ts(unix: i64) -> Timestamp {
    Timestamp {
        seconds: unix,
        nanos: 0,
    }
}

/// A UTC midnight a few days back, so every event of a test is inside the 35-day window.
fn base() -> i64 {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    now - now.rem_euclid(DAY) - 3 * DAY
}

fn event(id: &str, customer: &str, meter: &str, value: &str, at: i64) -> UsageEvent {
    UsageEvent {
        event_id: id.into(),
        customer: Some(pb::usage_event::Customer::ExternalId(customer.into())),
        meter_key: meter.into(),
        value: value.into(),
        occurred_at: Some(ts(at)),
        properties: BTreeMap::new(),
    }
}

fn with_property(mut e: UsageEvent, k: &str, v: &str) -> UsageEvent {
    e.properties.insert(k.into(), v.into());
    e
}

async fn setup(app: &TestApp, key: &str, customers: &[&str]) -> UsageClient<Channel> {
    let mut u = app.usage().await;
    for (k, aggregation, value_key) in [
        ("calls", Aggregation::Count, ""),
        ("tokens", Aggregation::Sum, "tokens"),
        ("peak", Aggregation::Max, "peak"),
        ("users", Aggregation::UniqueCount, "user"),
        ("seats", Aggregation::Latest, "seats"),
    ] {
        u.create_meter(req(
            CreateMeterRequest {
                key: k.into(),
                name: String::new(),
                aggregation: aggregation as i32,
                value_key: value_key.into(),
            },
            key,
        ))
        .await
        .unwrap();
    }
    let mut c = app.customers().await;
    for x in customers {
        c.create_customer(req(
            CreateCustomerRequest {
                external_id: (*x).into(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap();
    }
    u
}

async fn record(
    u: &mut UsageClient<Channel>,
    key: &str,
    events: Vec<UsageEvent>,
) -> pb::RecordUsageResponse {
    u.record_usage(req(RecordUsageRequest { events }, key))
        .await
        .unwrap()
        .into_inner()
}

async fn usage(
    u: &mut UsageClient<Channel>,
    key: &str,
    customer: &str,
    meter: &str,
    from: i64,
    to: i64,
    window: UsageWindow,
) -> pb::GetUsageResponse {
    u.get_usage(req(
        GetUsageRequest {
            customer: Some(pb::get_usage_request::Customer::ExternalId(customer.into())),
            meter_key: meter.into(),
            from: Some(ts(from)),
            to: Some(ts(to)),
            window: window as i32,
        },
        key,
    ))
    .await
    .unwrap()
    .into_inner()
}

fn total(r: &pb::GetUsageResponse) -> (String, i64) {
    let t = r.total.as_ref().unwrap();
    (t.value.clone(), t.events)
}

fn values(r: &pb::GetUsageResponse) -> Vec<String> {
    r.windows
        .iter()
        .map(|w| w.figure.as_ref().unwrap().value.clone())
        .collect()
}

/// Every aggregation on a small data set whose answers are worked out by hand, over a range
/// with partial hours at both ends (read from the events) and whole hours (read from the
/// rollups), per hour and per day.
#[tokio::test]
async fn every_aggregation_gives_the_hand_computed_answer() {
    let app = TestApp::spawn().await;
    let mut u = setup(&app, &app.key, &["ada"]).await;
    let b = base();
    // Day 0: 00:10, 00:50, 01:30, 05:00; day 1: 10:00, 10:00 (same instant, greater id wins
    // LATEST), 23:59:59.
    let at = [
        b + 600,
        b + 3_000,
        b + HOUR + 1_800,
        b + 5 * HOUR,
        b + DAY + 10 * HOUR,
        b + DAY + 10 * HOUR,
        b + 2 * DAY - 1,
    ];
    let tokens = ["5", "2.5", "10", "0.25", "1", "4", "7"];
    let users = ["u1", "u2", "u1", "u3", "u2", "u1", "u4"];
    let seats = ["3", "4", "5", "6", "9", "8", "2"];
    let mut events = Vec::new();
    for i in 0..7 {
        events.push(event(&format!("c{i}"), "ada", "calls", "", at[i]));
        events.push(event(&format!("t{i}"), "ada", "tokens", tokens[i], at[i]));
        // The value of a MAX meter may come from its value_key property.
        events.push(with_property(
            event(&format!("p{i}"), "ada", "peak", "", at[i]),
            "peak",
            tokens[i],
        ));
        events.push(with_property(
            event(&format!("u{i}"), "ada", "users", "", at[i]),
            "user",
            users[i],
        ));
        // "s5" and "s4" share an instant: the greater id, s5, is the latest.
        events.push(event(&format!("s{i}"), "ada", "seats", seats[i], at[i]));
    }
    let r = record(&mut u, &app.key, events).await;
    assert_eq!(
        (r.accepted, r.duplicates, r.rejected.len()),
        (35, 0, 0),
        "{r:?}"
    );

    // The whole two days.
    let (from, to) = (b, b + 2 * DAY);
    let k = &app.key;
    let n = UsageWindow::None;
    assert_eq!(
        total(&usage(&mut u, k, "ada", "calls", from, to, n).await),
        ("7".into(), 7)
    );
    assert_eq!(
        total(&usage(&mut u, k, "ada", "tokens", from, to, n).await).0,
        "29.75"
    );
    assert_eq!(
        total(&usage(&mut u, k, "ada", "peak", from, to, n).await).0,
        "10"
    );
    assert_eq!(
        total(&usage(&mut u, k, "ada", "users", from, to, n).await).0,
        "4"
    );
    assert_eq!(
        total(&usage(&mut u, k, "ada", "seats", from, to, n).await).0,
        "2"
    );

    // [00:30, 10:00 of day 1): partial first hour, whole hours, and an end on an hour.
    let (from, to) = (b + 1_800, b + DAY + 10 * HOUR);
    assert_eq!(
        total(&usage(&mut u, k, "ada", "calls", from, to, n).await).0,
        "3"
    );
    assert_eq!(
        total(&usage(&mut u, k, "ada", "tokens", from, to, n).await).0,
        "12.75"
    );
    assert_eq!(
        total(&usage(&mut u, k, "ada", "users", from, to, n).await).0,
        "3"
    );
    assert_eq!(
        total(&usage(&mut u, k, "ada", "seats", from, to, n).await).0,
        "6"
    );
    // [01:00, 10:00:01 of day 1): the end's partial hour holds both 10:00 events.
    let (from, to) = (b + HOUR, b + DAY + 10 * HOUR + 1);
    assert_eq!(
        total(&usage(&mut u, k, "ada", "seats", from, to, n).await).0,
        "8"
    );
    assert_eq!(
        total(&usage(&mut u, k, "ada", "peak", from, to, n).await).0,
        "10"
    );
    assert_eq!(
        total(&usage(&mut u, k, "ada", "tokens", from, to, n).await).0,
        "15.25"
    );

    // Per day: UNIQUE_COUNT is per window, and its total is distinct over the range.
    let (from, to) = (b, b + 2 * DAY);
    let d = UsageWindow::Day;
    let per_day = usage(&mut u, k, "ada", "users", from, to, d).await;
    assert_eq!(values(&per_day), ["3", "3"]);
    assert_eq!(total(&per_day).0, "4");
    assert_eq!(
        values(&usage(&mut u, k, "ada", "tokens", from, to, d).await),
        ["17.75", "12"]
    );
    assert_eq!(
        values(&usage(&mut u, k, "ada", "seats", from, to, d).await),
        ["6", "2"]
    );
    assert_eq!(
        values(&usage(&mut u, k, "ada", "peak", from, to, d).await),
        ["10", "7"]
    );

    // Per hour over [00:30, 02:15): three windows, clipped, the empty one as zero.
    let per_hour = usage(
        &mut u,
        k,
        "ada",
        "calls",
        b + 1_800,
        b + 2 * HOUR + 900,
        UsageWindow::Hour,
    )
    .await;
    assert_eq!(values(&per_hour), ["1", "1", "0"]);
    assert_eq!(per_hour.windows[0].start, Some(ts(b + 1_800)));
    assert_eq!(per_hour.windows[0].end, Some(ts(b + HOUR)));
    assert_eq!(per_hour.windows[2].end, Some(ts(b + 2 * HOUR + 900)));
    let hours = usage(
        &mut u,
        k,
        "ada",
        "tokens",
        b,
        b + 6 * HOUR,
        UsageWindow::Hour,
    )
    .await;
    assert_eq!(values(&hours), ["7.5", "10", "0", "0", "0", "0.25"]);

    // The sweeper folds past hours' rollup rows into one per hour; every answer stays.
    app.app.usage.maintain().await.unwrap();
    let unfolded: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_rollups WHERE shard <> 0")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(unfolded, 0);
    let (from, to) = (b, b + 2 * DAY);
    assert_eq!(
        total(&usage(&mut u, k, "ada", "tokens", from, to, n).await).0,
        "29.75"
    );
    assert_eq!(
        total(&usage(&mut u, k, "ada", "peak", from, to, n).await).0,
        "10"
    );
    assert_eq!(
        total(&usage(&mut u, k, "ada", "users", from, to, n).await).0,
        "4"
    );
    assert_eq!(
        values(&usage(&mut u, k, "ada", "seats", from, to, d).await),
        ["6", "2"]
    );
    let (from, to) = (b + HOUR, b + DAY + 10 * HOUR + 1);
    assert_eq!(
        total(&usage(&mut u, k, "ada", "seats", from, to, n).await).0,
        "8"
    );
}

/// 10 000 distinct events sent with 10 % repeats — inside a batch, across batches and across
/// concurrent streams — are counted exactly once each.
#[tokio::test]
async fn ten_thousand_events_with_repeats_count_exactly() {
    let app = TestApp::spawn().await;
    let mut u = setup(&app, &app.key, &["ada", "bob"]).await;
    let b = base();
    let ev = |i: usize| {
        let who = if i.is_multiple_of(2) { "ada" } else { "bob" };
        event(
            &format!("evt-{i}"),
            who,
            "tokens",
            "1.5",
            b + (i as i64 % 40) * HOUR,
        )
    };
    // Four streams, each with 2 500 distinct events plus 285 repeats: 100 inside its own
    // batches, 135 of its earlier batches, 50 of another stream's events.
    let mut tasks = Vec::new();
    for s in 0..4usize {
        let mut client = u.clone();
        let key = app.key.clone();
        let mut batches: Vec<Vec<UsageEvent>> = Vec::new();
        let mine: Vec<usize> = (s * 2_500..(s + 1) * 2_500).collect();
        for (n, chunk) in mine.chunks(250).enumerate() {
            let mut batch: Vec<UsageEvent> = chunk.iter().map(|&i| ev(i)).collect();
            batch.extend(chunk[..10].iter().map(|&i| ev(i))); // inside the batch
            if n > 0 {
                batch.extend(mine[..15].iter().map(|&i| ev(i + n))); // earlier batches
            }
            let other = (s + 1) % 4 * 2_500;
            batch.extend((0..5).map(|j| ev(other + n * 5 + j))); // another stream's
            batches.push(batch);
        }
        tasks.push(tokio::spawn(async move {
            let sent: usize = batches.iter().map(Vec::len).sum();
            let requests = tokio_stream::iter(
                batches
                    .into_iter()
                    .map(|events| StreamUsageRequest { events }),
            );
            let mut answers = client
                .stream_usage(req(requests, &key))
                .await
                .unwrap()
                .into_inner();
            let (mut accepted, mut duplicates, mut seq) = (0, 0, 0);
            while let Some(a) = answers.message().await.unwrap() {
                assert_eq!(a.sequence, seq, "answers come in order");
                assert!(a.rejected.is_empty(), "{a:?}");
                seq += 1;
                accepted += a.accepted;
                duplicates += a.duplicates;
            }
            assert_eq!(seq, 10);
            (accepted, duplicates, sent)
        }));
    }
    let (mut accepted, mut duplicates, mut sent) = (0, 0, 0);
    for t in tasks {
        let (a, d, s) = t.await.unwrap();
        accepted += a;
        duplicates += d;
        sent += s;
    }
    assert_eq!(accepted, 10_000);
    assert_eq!(duplicates as usize, sent - 10_000);
    assert!(sent >= 11_000, "at least 10 % repeats: {sent}");
    // And once more, all through RecordUsage: nothing new.
    for chunk in (0..10_000).collect::<Vec<_>>().chunks(1_000) {
        let r = record(&mut u, &app.key, chunk.iter().map(|&i| ev(i)).collect()).await;
        assert_eq!((r.accepted, r.duplicates), (0, 1_000));
    }
    let (from, to) = (b - DAY, b + 3 * DAY);
    let ada = usage(
        &mut u,
        &app.key,
        "ada",
        "tokens",
        from,
        to,
        UsageWindow::None,
    )
    .await;
    let bob = usage(
        &mut u,
        &app.key,
        "bob",
        "tokens",
        from,
        to,
        UsageWindow::None,
    )
    .await;
    assert_eq!(total(&ada), ("7500".into(), 5_000));
    assert_eq!(total(&bob), ("7500".into(), 5_000));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 10_000);
    // The counters saw the same.
    let (_, metrics) = crate::helpers::http_get(app.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("coffer_usage_events_total{outcome=\"accepted\"} 10000"),
        "{metrics}"
    );
}

/// Bad events are refused one by one, named by index and field; the good ones are stored.
#[tokio::test]
async fn a_batch_with_bad_events_stores_the_good_ones() {
    let app = TestApp::spawn().await;
    let mut u = setup(&app, &app.key, &["ada"]).await;
    let b = base();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut no_customer = event("e2", "ada", "calls", "", b);
    no_customer.customer = None;
    let events = vec![
        event("e0", "ada", "tokens", "3", b),
        event("e1", "nobody", "tokens", "3", b),
        no_customer,
        event("e3", "ada", "no_such_meter", "3", b),
        event("e4", "ada", "tokens", "3", now - 36 * DAY),
        event("e5", "ada", "tokens", "3", now + 600),
        event("e6", "ada", "tokens", "-3", b),
        event("e7", "ada", "tokens", "", b),
        with_property(event("e8", "ada", "peak", "", b), "peak", "lots"),
        event("e9", "ada", "users", "", b),
        event("", "ada", "tokens", "3", b),
        with_property(event("e11", "ada", "calls", "", b), "Bad Key", "x"),
        event("e12", "ada", "calls", "", b),
    ];
    let r = record(&mut u, &app.key, events).await;
    assert_eq!((r.accepted, r.duplicates), (2, 0));
    let got: Vec<(i32, &str, &str)> = r
        .rejected
        .iter()
        .map(|x| (x.index, x.reason.as_str(), x.field.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "UNKNOWN_CUSTOMER", "events[1].external_id"),
            (2, "INVALID_FIELD", "events[2].customer_id"),
            (3, "UNKNOWN_METER", "events[3].meter_key"),
            (4, "OUT_OF_WINDOW", "events[4].occurred_at"),
            (5, "OUT_OF_WINDOW", "events[5].occurred_at"),
            (6, "MALFORMED_VALUE", "events[6].value"),
            (7, "MALFORMED_VALUE", "events[7].value"),
            (8, "MALFORMED_VALUE", "events[8].properties[peak]"),
            (9, "MALFORMED_VALUE", "events[9].properties[user]"),
            (10, "INVALID_FIELD", "events[10].event_id"),
            (11, "INVALID_FIELD", "events[11].properties[Bad Key]"),
        ]
    );
    // A refused event's id is not claimed: fixed, it is accepted.
    let r = record(&mut u, &app.key, vec![event("e6", "ada", "tokens", "3", b)]).await;
    assert_eq!(r.accepted, 1);
    // The batch as a whole must be 1..=1000 events.
    for n in [0, 1_001] {
        let err = u
            .record_usage(req(
                RecordUsageRequest {
                    events: (0..n)
                        .map(|i| event(&format!("x{i}"), "ada", "calls", "", b))
                        .collect(),
                },
                &app.key,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(details(&err).1, ["events"]);
    }
}

/// A stream cut part-way leaves whole committed batches; resending everything gives the same
/// totals as one clean pass.
#[tokio::test]
async fn a_cut_stream_leaves_whole_batches_and_a_resend_gives_the_same_totals() {
    let app = TestApp::spawn().await;
    let mut u = setup(&app, &app.key, &["ada"]).await;
    let b = base();
    let batches: Vec<Vec<UsageEvent>> = (0..20)
        .map(|n| {
            (0..500)
                .map(|i| event(&format!("b{n}-{i}"), "ada", "tokens", "2", b + i))
                .collect()
        })
        .collect();
    // Send all 20 batches but hang up after the third answer.
    let (tx, rx) = tokio::sync::mpsc::channel(32);
    for batch in batches.clone() {
        tx.send(StreamUsageRequest { events: batch }).await.unwrap();
    }
    let mut answers = u
        .stream_usage(req(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        answers.message().await.unwrap().unwrap();
    }
    drop(answers);
    drop(tx);
    // Whatever was stored is whole batches of 500.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        stored >= 1_500 && (stored as u64).is_multiple_of(500),
        "{stored}"
    );
    let partial: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT split_part(event_id, '-', 1) AS batch, count(*) AS n
           FROM usage_events GROUP BY 1) b WHERE n <> 500",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(partial, 0, "no batch is stored in part");

    // Resend every batch on a new stream.
    let requests = tokio_stream::iter(
        batches
            .into_iter()
            .map(|events| StreamUsageRequest { events }),
    );
    let mut answers = u
        .stream_usage(req(requests, &app.key))
        .await
        .unwrap()
        .into_inner();
    let (mut accepted, mut duplicates) = (0i64, 0i64);
    while let Some(a) = answers.message().await.unwrap() {
        accepted += i64::from(a.accepted);
        duplicates += i64::from(a.duplicates);
    }
    assert_eq!(accepted + stored, 10_000);
    assert_eq!(duplicates, stored);
    let t = usage(
        &mut u,
        &app.key,
        "ada",
        "tokens",
        b - DAY,
        b + DAY,
        UsageWindow::None,
    )
    .await;
    assert_eq!(total(&t), ("20000".into(), 10_000));
}

/// A batch whose write fails — its connection lost mid-statement — leaves no id claimed: the
/// same events sent again are all accepted.
#[tokio::test]
async fn a_failed_write_leaves_no_event_id_claimed() {
    let app = TestApp::spawn().await;
    let mut u = setup(&app, &app.key, &["ada"]).await;
    let b = base();
    let batch: Vec<UsageEvent> = (0..1_000)
        .map(|i| event(&format!("f-{i:04}"), "ada", "calls", "", b + i))
        .collect();
    // Hold one id of the batch in an open transaction, so the batch's statement stops there
    // with half its events inserted, then lose its connection.
    let (holder, call) = hold_one_id_and_record(&app, &u, batch.clone(), "f-0500").await;
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Unknown),
        "a lost connection is retryable: {err:?}"
    );
    holder.rollback().await.unwrap();
    let claimed: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(claimed, 0, "the failed statement stored nothing");
    let r = record(&mut u, &app.key, batch).await;
    assert_eq!((r.accepted, r.duplicates), (1_000, 0));
}

/// Meters, events, usage and balances of one tenant are invisible to another, which may use
/// the same event ids and meter keys for its own.
#[tokio::test]
async fn tenants_never_see_each_others_usage() {
    let app = TestApp::spawn().await;
    let other = app.tenant("globex").await;
    let mut u = setup(&app, &app.key, &["ada"]).await;
    let b = base();
    record(
        &mut u,
        &app.key,
        vec![event("same-id", "ada", "tokens", "5", b)],
    )
    .await;
    // Globex has no meter "tokens" and no customer "ada" yet.
    let r = record(&mut u, &other, vec![event("x", "ada", "tokens", "5", b)]).await;
    assert_eq!(r.rejected[0].reason, "UNKNOWN_CUSTOMER");
    let err = u
        .get_usage(req(
            GetUsageRequest {
                customer: Some(pb::get_usage_request::Customer::ExternalId("ada".into())),
                meter_key: "tokens".into(),
                from: Some(ts(b - DAY)),
                to: Some(ts(b + DAY)),
                window: 0,
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // With its own meter and customer, the same event id is its own.
    setup(&app, &other, &["ada"]).await;
    let r = record(
        &mut u,
        &other,
        vec![event("same-id", "ada", "tokens", "7", b)],
    )
    .await;
    assert_eq!((r.accepted, r.duplicates), (1, 0));
    let mine = usage(
        &mut u,
        &app.key,
        "ada",
        "tokens",
        b - DAY,
        b + DAY,
        UsageWindow::None,
    )
    .await;
    let theirs = usage(
        &mut u,
        &other,
        "ada",
        "tokens",
        b - DAY,
        b + DAY,
        UsageWindow::None,
    )
    .await;
    assert_eq!(total(&mine).0, "5");
    assert_eq!(total(&theirs).0, "7");
    // Credits too.
    grant(&mut u, &app.key, "ada", "tokens", "100", None, "g1")
        .await
        .unwrap();
    assert_eq!(balance(&mut u, &other, "ada", "tokens").await.granted, "0");
}

async fn grant(
    u: &mut UsageClient<Channel>,
    key: &str,
    customer: &str,
    meter: &str,
    amount: &str,
    expires_at: Option<i64>,
    idempotency_key: &str,
) -> Result<pb::CreditGrant, tonic::Status> {
    u.grant_credits(idem(
        GrantCreditsRequest {
            customer: Some(pb::grant_credits_request::Customer::ExternalId(
                customer.into(),
            )),
            meter_key: meter.into(),
            amount: amount.into(),
            expires_at: expires_at.map(ts),
            reason: "welcome credit".into(),
        },
        key,
        idempotency_key,
    ))
    .await
    .map(|r| r.into_inner())
}

async fn balance(
    u: &mut UsageClient<Channel>,
    key: &str,
    customer: &str,
    meter: &str,
) -> pb::Balance {
    u.get_balance(req(
        GetBalanceRequest {
            customer: Some(pb::get_balance_request::Customer::ExternalId(
                customer.into(),
            )),
            meter_key: meter.into(),
        },
        key,
    ))
    .await
    .unwrap()
    .into_inner()
}

/// Credits are granted, drawn by usage soonest-expiry first, and left out once expired.
#[tokio::test]
async fn credits_are_granted_used_and_expire() {
    let app = TestApp::spawn().await;
    let mut u = setup(&app, &app.key, &["ada"]).await;
    let k = &app.key;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let lasting = grant(&mut u, k, "ada", "tokens", "100", None, "g-lasting")
        .await
        .unwrap();
    assert!(lasting.id.starts_with("grant_"));
    // Replayed under its key: the same grant, not a second one.
    let again = grant(&mut u, k, "ada", "tokens", "100", None, "g-lasting")
        .await
        .unwrap();
    assert_eq!(again, lasting);
    let err = grant(&mut u, k, "ada", "tokens", "999", None, "g-lasting")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    grant(&mut u, k, "ada", "tokens", "30", Some(now + 3), "g-lapsing")
        .await
        .unwrap();
    let b = balance(&mut u, k, "ada", "tokens").await;
    assert_eq!(
        (b.granted.as_str(), b.used.as_str(), b.remaining.as_str()),
        ("130", "0", "130")
    );

    // 45 tokens used now: 30 from the lapsing grant, 15 from the lasting one.
    let r = record(
        &mut u,
        k,
        vec![
            event("use-1", "ada", "tokens", "20", now),
            event("use-2", "ada", "tokens", "25", now),
        ],
    )
    .await;
    assert_eq!(r.accepted, 2);
    let b = balance(&mut u, k, "ada", "tokens").await;
    assert_eq!(
        (b.granted.as_str(), b.used.as_str(), b.remaining.as_str()),
        ("130", "45", "85")
    );

    // Once the lapsing grant has expired it is left out.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let b = balance(&mut u, k, "ada", "tokens").await;
    assert_eq!(
        (b.granted.as_str(), b.used.as_str(), b.remaining.as_str()),
        ("100", "15", "85")
    );

    // Refusals: a non-additive meter, a zero amount, an expiry in the past.
    let err = grant(&mut u, k, "ada", "seats", "5", None, "g-seats")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(details(&err).0, "METER_NOT_ADDITIVE");
    let err = grant(&mut u, k, "ada", "tokens", "0", None, "g-zero")
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, ["amount"]);
    let err = grant(&mut u, k, "ada", "tokens", "5", Some(now - 10), "g-past")
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, ["expires_at"]);
    let err = grant(&mut u, k, "nobody", "tokens", "5", None, "g-nobody")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// GetUsage names the field at fault.
#[tokio::test]
async fn get_usage_refuses_bad_ranges() {
    let app = TestApp::spawn().await;
    let mut u = setup(&app, &app.key, &["ada"]).await;
    let b = base();
    for (from, to, window, field) in [
        (b, b, UsageWindow::None, "to"),
        (b, b - 1, UsageWindow::None, "to"),
        (b - 40 * DAY, b, UsageWindow::Hour, "to"),
    ] {
        let err = u
            .get_usage(req(
                GetUsageRequest {
                    customer: Some(pb::get_usage_request::Customer::ExternalId("ada".into())),
                    meter_key: "calls".into(),
                    from: Some(ts(from)),
                    to: Some(ts(to)),
                    window: window as i32,
                },
                &app.key,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(details(&err).1, [field]);
    }
    let err = u
        .get_usage(req(GetUsageRequest::default(), &app.key))
        .await
        .unwrap_err();
    assert_eq!(details(&err).1, ["customer_id", "meter_key", "from", "to"]);
}

/// A stream left open does not hold the server up: shutdown answers what was sent, ends the
/// stream at the drain deadline and finishes.
#[tokio::test]
async fn shutdown_ends_an_open_stream() {
    let db = crate::helpers::TestDb::new().await;
    let pool = db.pool().await;
    let config = coffer::startup::ServerConfig {
        drain_timeout: Duration::from_secs(1),
        ..crate::helpers::test_config()
    };
    let app = TestApp::spawn_on(db, pool.clone(), pool, config).await;
    let mut u = setup(&app, &app.key, &["ada"]).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(StreamUsageRequest {
        events: vec![event("s-1", "ada", "calls", "", base())],
    })
    .await
    .unwrap();
    let mut answers = u
        .stream_usage(req(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answers.message().await.unwrap().unwrap().accepted, 1);
    // The client keeps the stream open and sends nothing more.
    let stopped = tokio::time::timeout(Duration::from_secs(8), app.stop()).await;
    assert!(matches!(stopped, Ok(Ok(()))), "{stopped:?}");
    drop(tx);
}

/// The database connection cut through a TCP proxy in the middle of a batch: whether or not
/// the statement went on to commit (Postgres may finish a statement whose client is gone),
/// resending the batch stores every event exactly once.
#[tokio::test]
async fn a_batch_cut_off_mid_write_and_resent_is_stored_exactly_once() {
    let db = crate::helpers::TestDb::new().await;
    let pool = db.pool().await;
    let proxy = crate::helpers::Proxy::to_db(&db.options).await;
    let through_proxy = coffer::store::pool::pool(
        &proxy.options(&db.options),
        &coffer::store::pool::PoolConfig::default(),
    );
    let app = TestApp::spawn_on(db, pool, through_proxy, crate::helpers::test_config()).await;
    let mut u = setup(&app, &app.key, &["ada"]).await;
    let b = base();
    let batch: Vec<UsageEvent> = (0..1_000)
        .map(|i| event(&format!("p-{i:04}"), "ada", "tokens", "1", b + i))
        .collect();
    // Hold one id so the batch's statement stops half-way, then cut the connection under it.
    let (holder, call) = hold_one_id_and_record(&app, &u, batch.clone(), "p-0500").await;
    proxy.cut().await;
    holder.rollback().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert!(
        matches!(err.code(), Code::Unavailable | Code::Unknown),
        "a lost connection is retryable: {err:?}"
    );
    proxy.restore();
    // Resend until the server has its database back.
    let mut answer = None;
    for _ in 0..50 {
        match u
            .record_usage(req(
                RecordUsageRequest {
                    events: batch.clone(),
                },
                &app.key,
            ))
            .await
        {
            Ok(r) => {
                answer = Some(r.into_inner());
                break;
            }
            Err(s) if s.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
    let r = answer.expect("the resend went through once the database was back");
    assert_eq!(r.accepted + r.duplicates, 1_000, "{r:?}");
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM usage_events WHERE event_id LIKE 'p-%'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, 1_000, "each event exactly once");
    let t = usage(
        &mut u,
        &app.key,
        "ada",
        "tokens",
        b - DAY,
        b + DAY,
        UsageWindow::None,
    )
    .await;
    assert_eq!(total(&t), ("1000".into(), 1_000));
}

/// Inserts `held` (an id of `batch`) in a transaction left open, then sends `batch`: its
/// statement stops at the held id, half-way through, until the transaction ends. Returns the
/// open transaction and the call, once the statement is waiting.
async fn hold_one_id_and_record(
    app: &TestApp,
    client: &UsageClient<Channel>,
    batch: Vec<UsageEvent>,
    held: &str,
) -> (
    sqlx::Transaction<'static, sqlx::Postgres>,
    tokio::task::JoinHandle<Result<tonic::Response<pb::RecordUsageResponse>, tonic::Status>>,
) {
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO usage_events (tenant_id, event_id, customer_id, meter_id, occurred_at, value)
         SELECT id, $1, gen_random_uuid(), gen_random_uuid(), now(), 1
         FROM tenants WHERE name = 'acme'",
    )
    .bind(held)
    .execute(&mut *holder)
    .await
    .unwrap();
    let mut client = client.clone();
    let key = app.key.clone();
    let call = tokio::spawn(async move {
        client
            .record_usage(req(RecordUsageRequest { events: batch }, &key))
            .await
    });
    assert!(
        one_session_waits_on_a_lock(&app.pool).await,
        "the batch waits on the held id"
    );
    (holder, call)
}

/// The answer GetUsage must give, worked out by a plain scan of the stored events: for each
/// bucket (`None` = the whole range) the figure's value and event count.
async fn scan(
    pool: &sqlx::PgPool,
    meter: &str,
    from: i64,
    to: i64,
    window: UsageWindow,
) -> BTreeMap<Option<i64>, (String, i64)> {
    let unit = match window {
        UsageWindow::Hour => "hour",
        UsageWindow::Day => "day",
        _ => "none",
    };
    let rows: Vec<(Option<i64>, bool, String, i64)> = sqlx::query_as(
        "SELECT extract(epoch FROM date_trunc($4, e.occurred_at, 'UTC'))::int8,
                grouping(date_trunc($4, e.occurred_at, 'UTC')) = 1,
                CASE m.aggregation
                    WHEN 'count' THEN count(*)::text
                    WHEN 'sum' THEN trim_scale(sum(e.value))::text
                    WHEN 'max' THEN trim_scale(max(e.value))::text
                    WHEN 'unique_count' THEN count(DISTINCT e.unique_key)::text
                    ELSE trim_scale((array_agg(e.value
                             ORDER BY e.occurred_at DESC, e.event_id DESC))[1])::text
                END,
                count(*)
         FROM usage_events e JOIN meters m ON m.tenant_id = e.tenant_id AND m.id = e.meter_id
         WHERE m.key = $1 AND e.occurred_at >= to_timestamp($2) AND e.occurred_at < to_timestamp($3)
         GROUP BY GROUPING SETS ((m.aggregation, date_trunc($4, e.occurred_at, 'UTC')),
                                 (m.aggregation))",
    )
    .bind(meter)
    .bind(from as f64)
    .bind(to as f64)
    .bind(if unit == "none" { "hour" } else { unit })
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .filter(|(_, is_total, _, _)| *is_total || unit != "none")
        .map(|(bucket, is_total, value, events)| {
            ((!is_total).then_some(bucket).flatten(), (value, events))
        })
        .collect()
}

/// GetUsage's answers equal a scan of the raw events over random ranges (ends on the second,
/// the minute, the hour or midnight; ranges of whole days, partial days and none), for every
/// aggregation and window, with the rollups part folded and part not, then all folded: the
/// day, hour and minute rollups and the events read at the edges add up to exactly what the
/// events say.
#[tokio::test]
async fn get_usage_equals_a_scan_of_the_events_over_random_ranges() {
    use proptest::prelude::{Just, Strategy, prop_oneof};
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let app = TestApp::spawn().await;
    let k = &app.key;
    let mut u = setup(&app, k, &["ada"]).await;
    let b = base();
    let mut runner = TestRunner::deterministic();
    // Events in a few busy minutes of a few hours over three days, some at the same instant.
    let instant = (
        0i64..72,
        prop_oneof![Just(0i64), Just(59), 0i64..60],
        0i64..60,
    )
        .prop_map(move |(h, m, s)| b + h * HOUR + m * 60 + s);
    let events = proptest::collection::vec((instant, 0u32..100_000, 0u32..12), 600);
    let events = events.new_tree(&mut runner).unwrap().current();
    let make = |i: usize, (at, hundredths, user): (i64, u32, u32)| {
        let value = format!("{}.{:02}", hundredths / 100, hundredths % 100);
        vec![
            event(&format!("c{i}"), "ada", "calls", "", at),
            event(&format!("t{i}"), "ada", "tokens", &value, at),
            event(&format!("p{i}"), "ada", "peak", &value, at),
            with_property(
                event(&format!("u{i}"), "ada", "users", "", at),
                "user",
                &format!("u{user}"),
            ),
            event(&format!("s{i}"), "ada", "seats", &value, at),
        ]
    };
    let all: Vec<UsageEvent> = events
        .iter()
        .enumerate()
        .flat_map(|(i, e)| make(i, *e))
        .collect();
    let (first, second) = all.split_at(all.len() / 2);
    for chunk in first.chunks(1_000) {
        record(&mut u, k, chunk.to_vec()).await;
    }
    // The first half folded into one row per hour and minute, the second half beside it.
    app.app.usage.maintain().await.unwrap();
    for chunk in second.chunks(1_000) {
        record(&mut u, k, chunk.to_vec()).await;
    }

    let edge = prop_oneof![
        0i64..3 * DAY + HOUR,
        (0i64..73 * 60).prop_map(|m| m * 60),
        (0i64..73).prop_map(|h| h * HOUR),
        (0i64..4).prop_map(|d| d * DAY),
    ];
    let ranges = proptest::collection::vec((edge.clone(), edge), 32)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    for pass in ["half folded", "all folded"] {
        for (x, y) in &ranges {
            let (from, to) = (b + x.min(y), b + x.max(y) + 1);
            for window in [UsageWindow::None, UsageWindow::Hour, UsageWindow::Day] {
                for meter in ["calls", "tokens", "peak", "users", "seats"] {
                    let expected = scan(&app.pool, meter, from, to, window).await;
                    let got = usage(&mut u, k, "ada", meter, from, to, window).await;
                    let t = got.total.unwrap();
                    let want = expected.get(&None).cloned().unwrap_or(("0".into(), 0));
                    assert_eq!(
                        (t.value, t.events),
                        want,
                        "{pass}: total of {meter} over [{from}, {to}) by {window:?}"
                    );
                    for w in &got.windows {
                        let start = w.start.unwrap().seconds;
                        let bucket = match window {
                            UsageWindow::Day => start - (start - b).rem_euclid(DAY),
                            _ => start - (start - b).rem_euclid(HOUR),
                        };
                        let f = w.figure.clone().unwrap();
                        let want = expected
                            .get(&Some(bucket))
                            .cloned()
                            .unwrap_or(("0".into(), 0));
                        assert_eq!(
                            (f.value, f.events),
                            want,
                            "{pass}: {meter} window at {start} of [{from}, {to}) by {window:?}"
                        );
                    }
                }
            }
        }
        app.app.usage.maintain().await.unwrap();
    }
    for grain in ["minute", "hour", "day"] {
        let unfolded: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM usage_rollups WHERE grain = $1 AND shard <> 0",
        )
        .bind(grain)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(unfolded, 0, "the sweeper folds past {grain}s");
    }
}

/// The fold never waits on a writer: a rollup row held by another transaction (as a writer's
/// statement holds its batch's rows) is left for a later pass, the rest of its period is
/// folded beside it, and the answers stay exact throughout.
#[tokio::test]
async fn the_fold_skips_rows_a_writer_holds_and_counts_them_later() {
    // The server's own fold stays out of the way: this test folds when it means to.
    let db = crate::helpers::TestDb::new().await;
    let pool = db.pool().await;
    let config = coffer::startup::ServerConfig {
        usage_fold_interval: Duration::from_secs(3_600),
        ..crate::helpers::test_config()
    };
    let app = TestApp::spawn_on(db, pool.clone(), pool, config).await;
    let k = &app.key;
    let mut u = setup(&app, k, &["ada"]).await;
    let b = base();
    for batch in 0..3 {
        let events = (0..40)
            .map(|i| {
                let at = b + (i % 4) * HOUR + i * 61;
                event(&format!("t{batch}-{i}"), "ada", "tokens", "2", at)
            })
            .collect();
        record(&mut u, k, events).await;
    }
    let (from, to) = (b, b + DAY);
    let want = usage(&mut u, k, "ada", "tokens", from, to, UsageWindow::Day)
        .await
        .total
        .unwrap();
    assert_eq!((want.value.as_str(), want.events), ("240", 120));

    // Hold one row of each level, as a writer's open statement would.
    let mut writer = app.pool.begin().await.unwrap();
    for grain in ["minute", "hour", "day"] {
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM usage_rollups
                                   WHERE grain = $1 AND shard <> 0 LIMIT 1 FOR UPDATE) x",
        )
        .bind(grain)
        .fetch_one(&mut *writer)
        .await
        .unwrap();
        assert_eq!(held, 1, "there is a {grain} shard row to hold");
    }
    let folded = tokio::time::timeout(Duration::from_secs(5), app.app.usage.maintain())
        .await
        .expect("the fold does not wait on the held rows")
        .unwrap();
    assert!(folded > 0, "the rows not held are folded");
    for window in [UsageWindow::None, UsageWindow::Day, UsageWindow::Hour] {
        let got = usage(&mut u, k, "ada", "tokens", from, to, window).await;
        let t = got.total.unwrap();
        assert_eq!((t.value.as_str(), t.events), ("240", 120), "{window:?}");
    }
    writer.commit().await.unwrap();

    app.app.usage.maintain().await.unwrap();
    for grain in ["minute", "hour", "day"] {
        let unfolded: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM usage_rollups WHERE grain = $1 AND shard <> 0",
        )
        .bind(grain)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(
            unfolded, 0,
            "{grain}s: the held rows are folded by the next pass"
        );
    }
    let got = usage(&mut u, k, "ada", "tokens", from, to, UsageWindow::Day).await;
    let t = got.total.unwrap();
    assert_eq!((t.value.as_str(), t.events), ("240", 120));
}

/// The rows a `SELECT count(*)` counts, read directly.
async fn rows_of(app: &TestApp, table: &'static str) -> i64 {
    let sql = match table {
        "credit_grants" => "SELECT count(*) FROM credit_grants",
        "meters" => "SELECT count(*) FROM meters",
        other => panic!("no count for {other}"),
    };
    sqlx::query_scalar(sql).fetch_one(&app.pool).await.unwrap()
}

/// GrantCredits on the one-statement path: thirty concurrent calls under one key write one
/// grant; every one is answered (none IN_USE: a duplicate waits on the key for the batch's
/// commit), exactly one did the work, and every answer is byte for byte the replay's. Calls
/// under other keys, in the same batches, each write their own grant.
#[tokio::test]
async fn concurrent_duplicate_grants_under_one_key_write_one_grant_and_answer_alike() {
    use prost::Message as _;
    let app = TestApp::spawn().await;
    let u = setup(&app, &app.key, &["ada"]).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(40));
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (mut u, key, barrier) = (u.clone(), app.key.clone(), barrier.clone());
        // Thirty under one key, ten under keys of their own.
        let idempotency_key = if i < 30 {
            "grant-once".to_string()
        } else {
            format!("grant-{i}")
        };
        calls.spawn(async move {
            barrier.wait().await;
            let response = u
                .grant_credits(idem(
                    GrantCreditsRequest {
                        customer: Some(pb::grant_credits_request::Customer::ExternalId(
                            "ada".into(),
                        )),
                        meter_key: "tokens".into(),
                        amount: "100".into(),
                        expires_at: None,
                        reason: "welcome credit".into(),
                    },
                    &key,
                    &idempotency_key,
                ))
                .await
                .expect("a duplicate waits and replays, never IN_USE");
            let replayed = response
                .metadata()
                .get("idempotent-replayed")
                .is_some_and(|v| v == "true");
            (i < 30, replayed, response.into_inner().encode_to_vec())
        });
    }
    let (mut fresh, mut answers) = (0, Vec::new());
    while let Some(result) = calls.join_next().await {
        let (under_one_key, replayed, bytes) = result.unwrap();
        if under_one_key {
            fresh += usize::from(!replayed);
            answers.push(bytes);
        } else {
            assert!(!replayed, "a key of its own is not a replay");
        }
    }
    assert_eq!(fresh, 1, "exactly one call did the work");
    let replay = grant(
        &mut u.clone(),
        &app.key,
        "ada",
        "tokens",
        "100",
        None,
        "grant-once",
    )
    .await
    .unwrap()
    .encode_to_vec();
    assert!(
        answers.iter().all(|a| *a == replay),
        "every answer is the replay's bytes"
    );
    assert_eq!(
        rows_of(&app, "credit_grants").await,
        11,
        "one grant per key"
    );
    assert_eq!(
        balance(&mut u.clone(), &app.key, "ada", "tokens")
            .await
            .granted,
        "1100"
    );
}

/// A grant's refusals stay as they were: an unknown customer is NOT_FOUND, decided before the
/// key is claimed (so the key stays free for a corrected retry), and a grant on a meter that
/// does not add up is refused the same way; nothing is written.
#[tokio::test]
async fn grant_refusals_write_nothing_and_leave_the_key_free() {
    let app = TestApp::spawn().await;
    let mut u = setup(&app, &app.key, &["ada"]).await;
    let err = grant(&mut u, &app.key, "nobody", "tokens", "5", None, "g")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(details(&err).0, "CUSTOMER_NOT_FOUND");
    let err = grant(&mut u, &app.key, "ada", "peak", "5", None, "g2")
        .await
        .unwrap_err();
    assert_eq!(details(&err).0, "METER_NOT_ADDITIVE", "{err:?}");
    assert_eq!(rows_of(&app, "credit_grants").await, 0);
    // The same key, now with a request that can be granted: it runs.
    let g = grant(&mut u, &app.key, "ada", "tokens", "5", None, "g")
        .await
        .unwrap();
    assert_eq!(g.amount, "5");
    assert_eq!(rows_of(&app, "credit_grants").await, 1);
}

/// GetUsage finds its customer in the read itself: by external id and by id the same answer;
/// an unknown external id, an unknown id and a deleted customer are NOT_FOUND
/// `CUSTOMER_NOT_FOUND`, with a meter that exists and one that does not.
#[tokio::test]
async fn get_usage_finds_live_customers_by_either_reference_and_no_others() {
    let app = TestApp::spawn().await;
    let mut u = setup(&app, &app.key, &["ada", "bob"]).await;
    let b = base();
    record(
        &mut u,
        &app.key,
        vec![
            event("e1", "ada", "tokens", "5", b + 60),
            event("e2", "ada", "tokens", "7", b + 7200),
            event("e3", "bob", "tokens", "100", b + 60),
        ],
    )
    .await;
    let mut c = app.customers().await;
    let mut id_of = async |x: &str| {
        c.get_customer(req(by_external_id(x), &app.key))
            .await
            .unwrap()
            .into_inner()
            .id
    };
    let (ada, bob) = (id_of("ada").await, id_of("bob").await);
    let query = |customer: pb::get_usage_request::Customer| GetUsageRequest {
        customer: Some(customer),
        meter_key: "tokens".into(),
        from: Some(ts(b)),
        to: Some(ts(b + DAY)),
        window: UsageWindow::Hour as i32,
    };
    use pb::get_usage_request::Customer::{CustomerId as Id, ExternalId};
    let by_external = u
        .get_usage(req(query(ExternalId("ada".into())), &app.key))
        .await
        .unwrap()
        .into_inner();
    let by_id = u
        .get_usage(req(query(Id(ada.clone())), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(total(&by_external), ("12".to_owned(), 2));
    assert_eq!(by_external, by_id);

    let not_found = |r: Result<tonic::Response<pb::GetUsageResponse>, tonic::Status>| {
        let err = r.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert_eq!(details(&err).0, "CUSTOMER_NOT_FOUND");
    };
    not_found(
        u.get_usage(req(query(ExternalId("nobody".into())), &app.key))
            .await,
    );
    not_found(
        u.get_usage(req(
            query(Id("customer_01jd9x8k3ff3d9r6h2a7q4w5tz".into())),
            &app.key,
        ))
        .await,
    );
    c.delete_customer(req(pb::DeleteCustomerRequest { id: bob.clone() }, &app.key))
        .await
        .unwrap();
    not_found(
        u.get_usage(req(query(ExternalId("bob".into())), &app.key))
            .await,
    );
    not_found(u.get_usage(req(query(Id(bob)), &app.key)).await);
    // Another tenant's customer is no customer of this one.
    let other = app.tenant("globex").await;
    setup(&app, &other, &[]).await;
    not_found(u.get_usage(req(query(Id(ada)), &other)).await);
}
