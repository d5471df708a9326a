//! CheckAccess and WatchSubscriptionEvents on a real server: the access policy over real
//! subscriptions, metered usage and credits; a change reaching a second server process
//! within a second; the change stream resumed without gap or repeat while writers commit out
//! of id order; CURSOR_EXPIRED; and a stream ended with UNAVAILABLE by SIGTERM.
//!
//! Subscriptions are made as a provider's state arrives: a SUBSCRIPTION checkout session on the
//! sandbox, then `apply_subscription` (what the inbox runs for a subscription event) in a
//! transaction of the test's own, so a test decides when each change commits.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use coffer::domain::ids::{CheckoutId, TenantId};
use coffer::domain::subscription::SubscriptionStatus;
use coffer::grpc::pb::check_access_request::Customer as Who;
use coffer::grpc::pb::subscriptions_client::SubscriptionsClient;
use coffer::grpc::pb::usage_event::Customer as UsageWho;
use coffer::grpc::pb::{
    AccessReason, Aggregation, CheckAccessRequest, CheckoutMode, CreateMeterRequest,
    CreatePlanRequest, Feature, GrantCreditsRequest, Interval, Price, RecordUsageRequest,
    SubscriptionEvent, SubscriptionEventType, UsageEvent, WatchSubscriptionEventsRequest,
};
use coffer::providers::ProviderSubscription;
use coffer::providers::sandbox::SandboxConfig;
use coffer::startup::ServerConfig;
use sqlx::PgPool;
use time::OffsetDateTime;
use tonic::Code;
use tonic::transport::Channel;

use crate::binary::{Served, TempDir};
use crate::checkout::{client, customer, item, session};
use crate::helpers::{TestApp, TestDb, details, eventually, req, test_config};

fn sandbox_config() -> ServerConfig {
    ServerConfig {
        sandbox: Some(SandboxConfig {
            public_url: "http://127.0.0.1:8089".into(),
            ..SandboxConfig::default()
        }),
        ..test_config()
    }
}

/// A server with the sandbox, the tenant's meter `calls` (COUNT) and plan `pro` (features
/// `reports`, a switch, and `api_calls`, 100 `calls` a period), and customer `dana`.
struct Env {
    app: TestApp,
    tenant: TenantId,
    price: String,
    dana: String,
}

impl Env {
    async fn spawn() -> Self {
        Self::spawn_with(sandbox_config()).await
    }

    async fn spawn_with(config: ServerConfig) -> Self {
        let db = TestDb::new().await;
        let pool = db.pool().await;
        let app = TestApp::spawn_on(db, pool.clone(), pool, config).await;
        Self::on(app).await
    }

    async fn on(app: TestApp) -> Self {
        let tenant: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'acme'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
        app.usage()
            .await
            .create_meter(req(
                CreateMeterRequest {
                    key: "calls".into(),
                    aggregation: Aggregation::Count as i32,
                    ..Default::default()
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
                    key: "pro".into(),
                    name: "Pro".into(),
                    features: vec![
                        Feature {
                            key: "reports".into(),
                            ..Default::default()
                        },
                        Feature {
                            key: "api_calls".into(),
                            meter_key: "calls".into(),
                            limit_per_period: 100,
                        },
                    ],
                    prices: vec![Price {
                        amount: 2_900,
                        currency: "USD".into(),
                        interval: Interval::Month as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                &app.key,
            ))
            .await
            .unwrap()
            .into_inner();
        let dana = customer(&app, &app.key, "dana").await;
        Self {
            tenant: TenantId::from_uuid(tenant),
            price: plan.prices[0].id.clone(),
            dana,
            app,
        }
    }

    /// A SUBSCRIPTION checkout session of `customer` for the plan's price: what a
    /// subscription hangs on. Its Coffer id.
    async fn session(&self, customer: &str) -> CheckoutId {
        let s = client(&self.app)
            .await
            .create_checkout_session(req(
                session(
                    customer,
                    CheckoutMode::Subscription,
                    vec![item(&self.price, 1)],
                ),
                &self.app.key,
            ))
            .await
            .unwrap()
            .into_inner();
        CheckoutId::parse(&s.id).unwrap()
    }
}

/// The provider's state of the subscription made by `session`, version `version`: its period
/// starts `started` ago and lasts 30 days.
fn state(
    session: CheckoutId,
    status: SubscriptionStatus,
    started: time::Duration,
    version: i64,
) -> ProviderSubscription {
    let start = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - started;
    ProviderSubscription {
        id: format!("sub_sbx_{}", session.as_uuid().simple()),
        client_reference: session.as_uuid(),
        status,
        current_period_start: start,
        current_period_end: start + time::Duration::days(30),
        trial_end: None,
        cancel_at_period_end: false,
        collection_paused: false,
        canceled_at: None,
        cancel_reason: String::new(),
        price: None,
        quantity: None,
        retries_exhausted: false,
        version,
    }
}

/// Applies `s` as the inbox would, in a transaction committed at once.
async fn apply(pool: &PgPool, tenant: TenantId, s: &ProviderSubscription) {
    let mut tx = pool.begin().await.unwrap();
    coffer::app::subscriptions::apply_subscription(&mut tx, tenant, s)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn check(
    s: &mut SubscriptionsClient<Channel>,
    key: &str,
    customer: &str,
    features: &[&str],
) -> Result<Vec<coffer::grpc::pb::AccessResult>, tonic::Status> {
    s.check_access(req(
        CheckAccessRequest {
            customer: Some(Who::CustomerId(customer.into())),
            features: features.iter().map(|f| f.to_string()).collect(),
        },
        key,
    ))
    .await
    .map(|r| r.into_inner().results)
}

/// Polls CheckAccess for one feature until its reason is `want`; whether it was within `within`.
async fn reaches(
    s: &SubscriptionsClient<Channel>,
    key: &str,
    customer: &str,
    feature: &str,
    want: AccessReason,
    within: Duration,
) -> bool {
    eventually(within, || {
        let mut s = s.clone();
        async move {
            check(&mut s, key, customer, &[feature]).await.unwrap()[0].reason == want as i32
        }
    })
    .await
}

async fn record_calls(app: &TestApp, customer: &str, n: usize, tag: &str) {
    let events = (0..n)
        .map(|i| UsageEvent {
            event_id: format!("{tag}-{i}"),
            customer: Some(UsageWho::CustomerId(customer.into())),
            meter_key: "calls".into(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: OffsetDateTime::now_utc().unix_timestamp(),
                nanos: 0,
            }),
            ..Default::default()
        })
        .collect();
    let done = app
        .usage()
        .await
        .record_usage(req(RecordUsageRequest { events }, &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.accepted as usize, n, "{done:?}");
}

#[tokio::test]
async fn check_access_follows_the_policy_usage_and_credits() {
    let env = Env::spawn().await;
    let key = &env.app.key;
    let mut s = env.app.subscriptions().await;

    // No subscription yet; unknown customers and bad requests are errors.
    let r = check(&mut s, key, &env.dana, &["reports", "api_calls"])
        .await
        .unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].feature, "reports");
    assert!(!r[0].allowed);
    assert_eq!(r[0].reason, AccessReason::NoSubscription as i32);
    let err = check(
        &mut s,
        key,
        "customer_01jhz8k3m5n7p9q1r3s5t7v9w1",
        &["reports"],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = check(&mut s, key, &env.dana, &["Reports"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(details(&err).1, ["features[0]"]);
    let err = check(&mut s, key, &env.dana, &[]).await.unwrap_err();
    assert_eq!(details(&err).1, ["features"]);

    // ACTIVE: the switch is on, a feature the plan lacks is not, the meter is under its limit.
    let session = env.session(&env.dana).await;
    let active = state(
        session,
        SubscriptionStatus::Active,
        time::Duration::hours(1),
        1,
    );
    apply(&env.app.pool, env.tenant, &active).await;
    assert!(
        reaches(
            &s,
            key,
            &env.dana,
            "reports",
            AccessReason::Active,
            Duration::from_secs(1)
        )
        .await
    );
    let r = check(&mut s, key, &env.dana, &["reports", "sso", "api_calls"])
        .await
        .unwrap();
    assert!(r[0].allowed);
    assert!(r[0].subscription_id.starts_with("subscription_"));
    assert_eq!(
        r[0].valid_until.as_ref().unwrap().seconds,
        active.current_period_end.unix_timestamp()
    );
    assert_eq!(r[0].remaining, "");
    assert_eq!(
        (r[1].allowed, r[1].reason),
        (false, AccessReason::FeatureNotInPlan as i32)
    );
    assert_eq!((r[2].allowed, r[2].remaining.as_str()), (true, "100"));
    // The same by external id.
    let by_external = s
        .check_access(req(
            CheckAccessRequest {
                customer: Some(Who::ExternalId("dana".into())),
                features: vec!["reports".into()],
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(by_external.results[0].allowed);

    // Past the limit: denied; credits bring it back.
    record_calls(&env.app, &env.dana, 101, "a").await;
    assert!(
        reaches(
            &s,
            key,
            &env.dana,
            "api_calls",
            AccessReason::LimitReached,
            Duration::from_secs(3)
        )
        .await
    );
    let r = check(&mut s, key, &env.dana, &["api_calls", "reports"])
        .await
        .unwrap();
    assert_eq!((r[0].allowed, r[0].remaining.as_str()), (false, "0"));
    assert!(r[1].allowed, "a switch is not metered");
    env.app
        .usage()
        .await
        .grant_credits(req(
            GrantCreditsRequest {
                customer: Some(
                    coffer::grpc::pb::grant_credits_request::Customer::CustomerId(env.dana.clone()),
                ),
                meter_key: "calls".into(),
                amount: "1000".into(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap();
    assert!(
        reaches(
            &s,
            key,
            &env.dana,
            "api_calls",
            AccessReason::Active,
            Duration::from_secs(3)
        )
        .await
    );

    // PAST_DUE whose renewal failed ten days ago: past the default grace of three days.
    let past_due = state(
        session,
        SubscriptionStatus::PastDue,
        time::Duration::days(10),
        2,
    );
    apply(&env.app.pool, env.tenant, &past_due).await;
    assert!(
        reaches(
            &s,
            key,
            &env.dana,
            "reports",
            AccessReason::PastDueGraceOver,
            Duration::from_secs(1)
        )
        .await
    );
    // Recovered, then canceled.
    apply(
        &env.app.pool,
        env.tenant,
        &state(
            session,
            SubscriptionStatus::Active,
            time::Duration::days(1),
            3,
        ),
    )
    .await;
    assert!(
        reaches(
            &s,
            key,
            &env.dana,
            "reports",
            AccessReason::Active,
            Duration::from_secs(1)
        )
        .await
    );
    apply(
        &env.app.pool,
        env.tenant,
        &state(
            session,
            SubscriptionStatus::Canceled,
            time::Duration::days(1),
            4,
        ),
    )
    .await;
    assert!(
        reaches(
            &s,
            key,
            &env.dana,
            "reports",
            AccessReason::SubscriptionCanceled,
            Duration::from_secs(1)
        )
        .await
    );

    // Another tenant's customer is NOT_FOUND.
    let other = env.app.tenant("other").await;
    let err = check(&mut s, &other, &env.dana, &["reports"])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// A metered feature counts the usage since its period started to the second: events in the
/// same hour and the same minute before the start are not counted, those from the start on are
/// (read from the events, the minute rollups and the hour rollups).
#[tokio::test]
async fn metered_usage_counts_from_the_period_start_to_the_second() {
    let env = Env::spawn().await;
    let key = &env.app.key;
    let s = env.app.subscriptions().await;
    let session = env.session(&env.dana).await;
    // A start with seconds in it, so it cuts a minute and an hour.
    let active = state(
        session,
        SubscriptionStatus::Active,
        time::Duration::minutes(127) + time::Duration::seconds(13),
        1,
    );
    apply(&env.app.pool, env.tenant, &active).await;
    let start = active.current_period_start;
    let at = |offset: time::Duration, tag: &str| UsageEvent {
        event_id: tag.into(),
        customer: Some(UsageWho::CustomerId(env.dana.clone())),
        meter_key: "calls".into(),
        occurred_at: Some(prost_types::Timestamp {
            seconds: (start + offset).unix_timestamp(),
            nanos: 0,
        }),
        ..Default::default()
    };
    let events = vec![
        at(time::Duration::seconds(-1), "before-1s"),
        at(time::Duration::minutes(-10), "before-10m"),
        at(time::Duration::ZERO, "at-start"),
        at(time::Duration::seconds(30), "after-30s"),
        at(time::Duration::minutes(3), "after-3m"),
        at(time::Duration::minutes(61), "after-61m"),
    ];
    let done = env
        .app
        .usage()
        .await
        .record_usage(req(RecordUsageRequest { events }, key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.accepted, 6, "{done:?}");
    let counted = eventually(Duration::from_secs(3), || {
        let mut s = s.clone();
        let dana = env.dana.clone();
        async move {
            let r = check(&mut s, key, &dana, &["api_calls"]).await.unwrap();
            r[0].remaining == "96"
        }
    })
    .await;
    let r = check(&mut s.clone(), key, &env.dana, &["api_calls"])
        .await
        .unwrap();
    assert!(counted, "100 less the 4 events from the start on: {r:?}");
    assert!(r[0].allowed);
}

/// A change committed through one server (its cache warm on the old answer) is answered by a
/// second server process on the same database within a second.
#[tokio::test]
async fn a_change_reaches_a_second_server_process_within_a_second() {
    let db = TestDb::new().await;
    let second_db = TestDb {
        options: db.options.clone(),
        name: db.name.clone(),
    };
    let pool = db.pool().await;
    let app = TestApp::spawn_on(db, pool.clone(), pool, sandbox_config()).await;
    let env = Env::on(app).await;
    let state_dir = TempDir::new();
    let second = Served::start(&second_db, &state_dir.0, &[], &[]).await;
    let mut remote = SubscriptionsClient::new(
        Channel::from_shared(second.grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let key = env.app.key.clone();

    let session = env.session(&env.dana).await;
    // Both servers have answered (and cached) "no subscription".
    for _ in 0..3 {
        let r = check(&mut remote, &key, &env.dana, &["reports"])
            .await
            .unwrap();
        assert_eq!(r[0].reason, AccessReason::NoSubscription as i32);
    }
    apply(
        &env.app.pool,
        env.tenant,
        &state(
            session,
            SubscriptionStatus::Active,
            time::Duration::hours(1),
            1,
        ),
    )
    .await;
    let committed = Instant::now();
    assert!(
        reaches(
            &remote,
            &key,
            &env.dana,
            "reports",
            AccessReason::Active,
            Duration::from_secs(1)
        )
        .await,
        "not visible on the second server within a second:\n{}",
        second.logs()
    );
    let first_seen = committed.elapsed();
    // And a denial the same way.
    apply(
        &env.app.pool,
        env.tenant,
        &state(
            session,
            SubscriptionStatus::Canceled,
            time::Duration::days(20),
            2,
        ),
    )
    .await;
    assert!(
        reaches(
            &remote,
            &key,
            &env.dana,
            "reports",
            AccessReason::SubscriptionCanceled,
            Duration::from_secs(1)
        )
        .await
    );
    eprintln!("visible on the second server {first_seen:?} after the commit");
}

async fn watch(
    s: &mut SubscriptionsClient<Channel>,
    key: &str,
    after: &str,
) -> Result<tonic::Streaming<SubscriptionEvent>, tonic::Status> {
    s.watch_subscription_events(req(
        WatchSubscriptionEventsRequest {
            after_cursor: after.into(),
            types: vec![],
        },
        key,
    ))
    .await
    .map(|r| r.into_inner())
}

/// The next event within `wait`, or `None`.
async fn next(
    stream: &mut tonic::Streaming<SubscriptionEvent>,
    wait: Duration,
) -> Option<SubscriptionEvent> {
    match tokio::time::timeout(wait, stream.message()).await {
        Ok(m) => m.unwrap(),
        Err(_) => None,
    }
}

/// An event's identity: the subscription and its period end, which every change here moves.
fn identity(e: &SubscriptionEvent) -> (String, i64) {
    let s = e.subscription.as_ref().unwrap();
    (s.id.clone(), s.current_period_end.as_ref().unwrap().seconds)
}

#[tokio::test]
async fn the_stream_resumes_without_gap_or_repeat_while_writers_commit_out_of_order() {
    let env = Env::spawn().await;
    let key = env.app.key.clone();
    let mut s = env.app.subscriptions().await;
    let pool = env.app.pool.clone();

    let mut sessions = Vec::new();
    for _ in 0..4 {
        let session = env.session(&env.dana).await;
        apply(
            &pool,
            env.tenant,
            &state(session, SubscriptionStatus::Active, time::Duration::ZERO, 1),
        )
        .await;
        sessions.push(session);
    }
    let mut stream = watch(&mut s, &key, "").await.unwrap();
    let mut seen: Vec<(String, i64)> = Vec::new();
    for _ in 0..4 {
        let e = next(&mut stream, Duration::from_secs(5))
            .await
            .expect("a creation");
        assert_eq!(e.r#type, SubscriptionEventType::Created as i32);
        seen.push(identity(&e));
    }

    // Out of id order: the first transaction writes first (the lower xid) and commits last.
    // Until it commits, the second's change is not served either; then both, in xid order.
    let mut first = pool.begin().await.unwrap();
    let early = state(
        sessions[0],
        SubscriptionStatus::PastDue,
        time::Duration::hours(1),
        2,
    );
    coffer::app::subscriptions::apply_subscription(&mut first, env.tenant, &early)
        .await
        .unwrap();
    let late = state(
        sessions[1],
        SubscriptionStatus::PastDue,
        time::Duration::hours(2),
        2,
    );
    apply(&pool, env.tenant, &late).await;
    assert!(
        next(&mut stream, Duration::from_millis(800))
            .await
            .is_none(),
        "a change was served while an older transaction could still write before it"
    );
    first.commit().await.unwrap();
    let a = next(&mut stream, Duration::from_secs(3))
        .await
        .expect("the first change");
    let b = next(&mut stream, Duration::from_secs(3))
        .await
        .expect("the second change");
    assert_eq!(a.r#type, SubscriptionEventType::StatusChanged as i32);
    assert_eq!(
        a.subscription.as_ref().unwrap().status,
        coffer::grpc::pb::SubscriptionStatus::PastDue as i32
    );
    assert_eq!(identity(&a).0, seen[0].0);
    assert_eq!(identity(&b).0, seen[1].0);
    seen.push(identity(&a));
    seen.push(identity(&b));
    let mut cursor = b.cursor.clone();
    drop(stream);

    // Writers on every subscription commit concurrently, each change in a transaction that
    // stays open a random moment; meanwhile the consumer reads a few events at a time,
    // disconnects, and resumes from its cursor.
    const CHANGES: i64 = 12;
    let mut writers = Vec::new();
    for (w, session) in sessions.iter().copied().enumerate() {
        let pool = pool.clone();
        let tenant = env.tenant;
        writers.push(tokio::spawn(async move {
            for v in 0..CHANGES {
                let mut tx = pool.begin().await.unwrap();
                // Each change moves the period, so every event is told apart.
                let s = state(
                    session,
                    SubscriptionStatus::Active,
                    time::Duration::minutes(10 * v + w as i64 + 3),
                    3 + v,
                );
                coffer::app::subscriptions::apply_subscription(&mut tx, tenant, &s)
                    .await
                    .unwrap();
                let pause = (v * 7 + w as i64 * 13) % 40;
                tokio::time::sleep(Duration::from_millis(pause as u64)).await;
                tx.commit().await.unwrap();
            }
        }));
    }
    let expected = seen.len() + sessions.len() * CHANGES as usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < expected && Instant::now() < deadline {
        let mut stream = watch(&mut s, &key, &cursor).await.unwrap();
        for _ in 0..5 {
            let Some(e) = next(&mut stream, Duration::from_secs(2)).await else {
                break;
            };
            seen.push(identity(&e));
            cursor = e.cursor;
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    // Nothing more after the last cursor.
    let mut stream = watch(&mut s, &key, &cursor).await.unwrap();
    assert!(
        next(&mut stream, Duration::from_millis(700))
            .await
            .is_none()
    );
    assert_eq!(seen.len(), expected, "every change, once");
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no change twice");
    // Each subscription's changes arrive in the order they were made (period start moves
    // back with each version, so its end decreases).
    let mut by_sub: std::collections::HashMap<&str, Vec<i64>> = Default::default();
    for (sub, end) in &seen[6..] {
        by_sub.entry(sub).or_default().push(*end);
    }
    for ends in by_sub.values() {
        assert!(ends.windows(2).all(|w| w[0] > w[1]), "{ends:?}");
    }
}

#[tokio::test]
async fn a_cursor_past_the_retention_is_cursor_expired() {
    let mut config = sandbox_config();
    // Long enough that a loaded machine still reads and resumes before it runs out.
    config.changes.retention = Duration::from_secs(5);
    let env = Env::spawn_with(config).await;
    let key = env.app.key.clone();
    let mut s = env.app.subscriptions().await;
    let session = env.session(&env.dana).await;
    apply(
        &env.app.pool,
        env.tenant,
        &state(session, SubscriptionStatus::Active, time::Duration::ZERO, 1),
    )
    .await;
    let mut stream = watch(&mut s, &key, "").await.unwrap();
    let e = next(&mut stream, Duration::from_secs(10)).await.unwrap();
    // Fresh: accepted.
    watch(&mut s, &key, &e.cursor).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let err = watch(&mut s, &key, &e.cursor).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(details(&err).0, "CURSOR_EXPIRED");
    let err = watch(&mut s, &key, "not-a-cursor").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(details(&err).1, ["after_cursor"]);
}

/// SIGTERM ends an open change stream with UNAVAILABLE (so its client reconnects with its
/// cursor) and the process exits 0 within the drain deadline.
#[tokio::test]
async fn sigterm_ends_a_change_stream_with_unavailable() {
    let db = TestDb::new().await;
    let (_pool, _tenant, key) = crate::binary::acme(&db).await;
    let state_dir = TempDir::new();
    let env = [("COFFER_DRAIN_TIMEOUT", "3s".to_owned())];
    let served = Served::start(&db, &state_dir.0, &[], &env).await;
    let mut s = SubscriptionsClient::new(
        Channel::from_shared(served.grpc.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut stream = watch(&mut s, &key, "").await.unwrap();
    assert!(
        next(&mut stream, Duration::from_millis(300))
            .await
            .is_none()
    );
    let sent = Instant::now();
    served.sigterm();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the stream ends");
    let status = ended.expect_err("ended with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let (code, logs) = served.wait().await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(sent.elapsed() < Duration::from_millis(4_500), "{logs}");
}

/// `coffer bench check-access` against a real server: every call answered, all allowed, and
/// the empty-RPC baseline measured in the same run.
#[tokio::test]
async fn bench_check_access_measures_allowed_answers_next_to_the_empty_rpc() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let app = TestApp::spawn_on(db, pool.clone(), pool.clone(), sandbox_config()).await;
    let args = coffer::config::BenchArgs {
        endpoint: format!("http://{}", app.addr),
        key: Some(app.key.clone()),
        concurrency: 8,
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
        connections: 2,
    };
    let report = coffer::bench::check_access(&args, std::path::Path::new("/nonexistent"), &pool)
        .await
        .unwrap();
    let (check, empty) = (&report.measurements[0], &report.measurements[1]);
    assert!(check.ok > 0, "{report}");
    assert_eq!(check.errors, 0, "{report}");
    assert!(empty.ok > 0, "{report}");
    let printed = report.to_string();
    assert!(
        printed.contains("CheckAccess rate / empty RPC rate"),
        "{printed}"
    );
    assert!(
        printed.contains("CheckAccess p99 / empty RPC p99"),
        "{printed}"
    );
}
