//! The inbox workers, on real Postgres, with events stored through the real IngestEvent:
//! unknown types are ignored; a registered handler applies an event exactly once however often
//! it is delivered and however many workers run; failures back off and end `dead`, and
//! ReplayEvent brings them back; one provider object's events are never applied at once; the
//! workers stop promptly at shutdown; the gauges and counters reach /metrics; and the real
//! binary, killed after acknowledging an event, applies it after a restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer::app::inbox::{Handler, HandlerError, Handlers, Inbox, InboxConfig, InboxEvent};
use coffer::domain::account::ProviderKind;
use coffer::grpc::pb::{Header, IngestEventRequest, ReplayEventRequest};
use coffer::providers::signature::sign;
use coffer::shutdown::{CancellationToken, TaskTracker};
use coffer::startup::{Server, ServerConfig};
use futures_core::future::BoxFuture;
use sqlx::PgConnection;

use crate::binary::{Served, TempDir, acme};
use crate::events::{Env, SANDBOX_SECRET, STRIPE_SECRET, now, stripe_body};
use crate::helpers::{TestDb, eventually, idem, req, test_config};

/// The type the test handlers are registered for.
const HANDLED: &str = "test.handled";

/// Workers that poll often and back off in milliseconds, with `handlers`.
pub(crate) fn inbox(handlers: Handlers) -> InboxConfig {
    InboxConfig {
        workers: 2,
        batch: 8,
        poll: Duration::from_millis(20),
        backoff_base: Duration::from_millis(5),
        backoff_cap: Duration::from_millis(40),
        handler_timeout: Duration::from_secs(30),
        handlers,
        lease: Duration::from_secs(60),
    }
}

fn handling(handler: impl Handler + 'static) -> Handlers {
    Handlers::builtin().with(ProviderKind::Sandbox, HANDLED, handler)
}

async fn spawn(handlers: Handlers) -> Env {
    Env::spawn_with(|c| ServerConfig {
        inbox: inbox(handlers),
        ..c
    })
    .await
}

/// Another server with its own inbox workers on `env`'s database: a second replica.
struct Replica {
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<Result<(), coffer::startup::ServeError>>,
}

impl Replica {
    async fn spawn(env: &Env, inbox: InboxConfig) -> Self {
        let server = Server::bind(
            ServerConfig {
                inbox,
                ..test_config()
            },
            env.app.pool.clone(),
        )
        .await
        .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Self { stop, handle }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.handle.await.unwrap().unwrap();
    }
}

/// A sandbox delivery of message `id`, of `event_type`, about object `object`.
fn sandbox(id: &str, event_type: &str, object: &str) -> IngestEventRequest {
    let body = format!(r#"{{"type":"{event_type}","data":{{"object":{{"id":"{object}"}}}}}}"#);
    IngestEventRequest {
        account: "shop-sandbox".into(),
        headers: sign::standard(SANDBOX_SECRET, id, now(), body.as_bytes())
            .into_iter()
            .map(|h| Header {
                name: h.name,
                value: h.value,
            })
            .collect(),
        body: body.into_bytes(),
        source_address: String::new(),
    }
}

/// Ingests `delivery`; returns the stored event's id (`event_…`).
async fn ingest(env: &Env, delivery: IngestEventRequest) -> String {
    env.client()
        .await
        .ingest_event(req(delivery, &env.ingest_key))
        .await
        .unwrap()
        .into_inner()
        .event_id
}

/// The status, attempts and last error of every stored event of this provider event id.
async fn row(env: &Env, provider_event_id: &str) -> (String, i32, Option<String>) {
    sqlx::query_as(
        "SELECT status, attempts, last_error FROM webhook_events WHERE provider_event_id = $1",
    )
    .bind(provider_event_id)
    .fetch_one(&env.app.pool)
    .await
    .unwrap()
}

async fn settles_as(env: &Env, provider_event_id: &str, status: &str) -> bool {
    eventually(Duration::from_secs(10), || async {
        row(env, provider_event_id).await.0 == status
    })
    .await
}

/// Committed effects of the recording handler: one audit row per application.
pub(crate) async fn effects(env: &Env) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'test.applied'")
        .fetch_one(&env.app.pool)
        .await
        .unwrap()
}

/// Writes an audit row per application: an effect that commits with the event, or not at all.
pub(crate) struct Recorder;

impl Handler for Recorder {
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        event: &'a InboxEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            coffer::store::audit::insert_audit(
                conn,
                event.event.tenant,
                None,
                "test.applied",
                "webhook_event",
                event.event.id.as_uuid(),
            )
            .await?;
            Ok(())
        })
    }
}

/// Fails its first `failures` calls, then records like [`Recorder`].
struct Flaky {
    failures: u32,
    calls: AtomicU32,
}

impl Handler for Flaky {
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        event: &'a InboxEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
                // A write the failure must roll back.
                Recorder.apply(conn, event).await?;
                return Err(HandlerError::Failed("provider said no".into()));
            }
            Recorder.apply(conn, event).await
        })
    }
}

#[tokio::test]
async fn an_event_without_a_handler_is_ignored() {
    let env = spawn(handling(Recorder)).await;
    ingest(&env, sandbox("msg_1", "checkout.unknown", "cs_1")).await;
    assert!(settles_as(&env, "msg_1", "ignored").await);
    assert_eq!(row(&env, "msg_1").await, ("ignored".into(), 0, None));
    assert_eq!(effects(&env).await, 0);
    let processed_at: Option<time::OffsetDateTime> =
        sqlx::query_scalar("SELECT processed_at FROM webhook_events")
            .fetch_one(&env.app.pool)
            .await
            .unwrap();
    assert!(processed_at.is_some());
}

#[tokio::test]
async fn a_handled_event_is_applied_once_however_often_it_is_delivered_and_however_many_workers_run()
 {
    let env = spawn(handling(Recorder)).await;
    // A second server with its own workers on the same database: another replica.
    let other = Replica::spawn(&env, inbox(handling(Recorder))).await;

    let mut ids = Vec::new();
    for n in 0..20 {
        let msg = format!("msg_{n}");
        let first = ingest(&env, sandbox(&msg, HANDLED, &format!("cs_{n}"))).await;
        // Delivered again: the same stored event.
        assert_eq!(
            ingest(&env, sandbox(&msg, HANDLED, &format!("cs_{n}"))).await,
            first
        );
        ids.push(msg);
    }
    for msg in &ids {
        assert!(settles_as(&env, msg, "processed").await, "{msg}");
    }
    // Every worker had its chance at every event again.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(effects(&env).await, 20);
    let per_event: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'test.applied' GROUP BY object_id",
    )
    .fetch_all(&env.app.pool)
    .await
    .unwrap();
    assert_eq!(per_event, vec![1; 20]);
    other.stop().await;
}

#[tokio::test]
async fn a_failing_event_backs_off_dies_after_ten_attempts_and_replay_brings_it_back() {
    let env = spawn(handling(Flaky {
        failures: 10,
        calls: AtomicU32::new(0),
    }))
    .await;
    let id = ingest(&env, sandbox("msg_f", HANDLED, "cs_f")).await;
    // Nine times failed and due again after a backoff (counted below), then dead.
    assert!(settles_as(&env, "msg_f", "dead").await);
    let (_, attempts, error) = row(&env, "msg_f").await;
    assert_eq!(attempts, 10);
    assert_eq!(error.as_deref(), Some("provider said no"));
    // The failed attempts' writes were rolled back with them.
    assert_eq!(effects(&env).await, 0);
    // Dead stays dead.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(row(&env, "msg_f").await.1, 10);

    env.client()
        .await
        .replay_event(idem(ReplayEventRequest { id }, &env.shop_key, "replay-f"))
        .await
        .unwrap();
    assert!(settles_as(&env, "msg_f", "processed").await);
    assert_eq!(row(&env, "msg_f").await, ("processed".into(), 0, None));
    assert_eq!(effects(&env).await, 1);
    assert_eq!(
        env.metric(
            "coffer_inbox_events_handled_total{provider=\"sandbox\",type=\"test.handled\",outcome=\"dead\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        env.metric(
            "coffer_inbox_events_handled_total{provider=\"sandbox\",type=\"test.handled\",outcome=\"failed\"}"
        )
        .await,
        9.0
    );
}

#[tokio::test]
async fn a_failure_is_retried_no_sooner_than_its_backoff() {
    let env = Env::spawn_with(|c| ServerConfig {
        inbox: InboxConfig {
            backoff_base: Duration::from_secs(3600),
            backoff_cap: Duration::from_secs(3600),
            ..inbox(handling(Flaky {
                failures: u32::MAX,
                calls: AtomicU32::new(0),
            }))
        },
        ..c
    })
    .await;
    ingest(&env, sandbox("msg_b", HANDLED, "cs_b")).await;
    assert!(settles_as(&env, "msg_b", "failed").await);
    // Due again somewhere in the next hour (full jitter), and not taken again before.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (attempts, wait): (i32, f64) = sqlx::query_as(
        "SELECT attempts, EXTRACT(EPOCH FROM next_attempt_at - now())::float8
         FROM webhook_events",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 1);
    assert!(wait <= 3600.0, "{wait}");
    assert_eq!(
        row(&env, "msg_b").await.2.as_deref(),
        Some("provider said no")
    );
    assert_eq!(
        effects(&env).await,
        0,
        "the failed attempt's write rolled back"
    );
}

/// Sleeps inside the apply and records how many applications of one object overlapped.
#[derive(Clone, Default)]
struct Overlap {
    running: Arc<Mutex<HashMap<String, u32>>>,
    most: Arc<AtomicU32>,
    applied: Arc<AtomicU32>,
}

impl Handler for Overlap {
    fn apply<'a>(
        &'a self,
        _conn: &'a mut PgConnection,
        event: &'a InboxEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let object = event.object.as_ref().unwrap().as_str().to_owned();
            let now = {
                let mut running = self.running.lock().unwrap();
                let n = running.entry(object.clone()).or_default();
                *n += 1;
                *n
            };
            self.most.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            *self.running.lock().unwrap().get_mut(&object).unwrap() -= 1;
            self.applied.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[tokio::test]
async fn one_objects_events_are_never_applied_at_once() {
    let overlap = Overlap::default();
    let config = |o: &Overlap| InboxConfig {
        workers: 3,
        // One event per batch, so each worker holds one object's lock at a time.
        batch: 1,
        ..inbox(handling(o.clone()))
    };
    let env = Env::spawn_with(|c| ServerConfig {
        inbox: config(&overlap),
        ..c
    })
    .await;
    let other = Replica::spawn(&env, config(&overlap)).await;
    // Twelve events about two objects, and six about six others: six workers in all.
    for n in 0..12 {
        ingest(
            &env,
            sandbox(&format!("msg_{n}"), HANDLED, &format!("cs_{}", n % 2)),
        )
        .await;
    }
    for n in 12..18 {
        ingest(
            &env,
            sandbox(&format!("msg_{n}"), HANDLED, &format!("cs_{n}")),
        )
        .await;
    }
    assert!(
        eventually(Duration::from_secs(15), || async {
            overlap.applied.load(Ordering::SeqCst) >= 18
        })
        .await
    );
    assert_eq!(
        overlap.most.load(Ordering::SeqCst),
        1,
        "no object overlapped"
    );
    other.stop().await;
}

/// Never finishes: the worker holding it is stuck until shutdown abandons it.
struct Stuck;

impl Handler for Stuck {
    fn apply<'a>(
        &'a self,
        _conn: &'a mut PgConnection,
        _event: &'a InboxEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(std::future::pending())
    }
}

/// Panics on `test.panics` (before its future) and `test.panics-later` (while it is polled),
/// times out on `test.hangs` (with a short timeout), records the
/// rest.
struct Broken;

impl Handler for Broken {
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        event: &'a InboxEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        match event.event.event_type.as_str() {
            "test.panics" => panic!("a handler bug"),
            "test.panics-later" => Box::pin(async { panic!("a handler bug, later") }),
            "test.hangs" => Box::pin(std::future::pending()),
            _ => Recorder.apply(conn, event),
        }
    }
}

#[tokio::test]
async fn a_handler_that_panics_or_hangs_fails_its_event_and_the_workers_carry_on() {
    let handlers = ["test.panics", "test.panics-later", "test.hangs", HANDLED]
        .into_iter()
        .fold(Handlers::builtin(), |h, t| {
            h.with(ProviderKind::Sandbox, t, Broken)
        });
    let env = Env::spawn_with(|c| ServerConfig {
        inbox: InboxConfig {
            handler_timeout: Duration::from_millis(50),
            ..inbox(handlers)
        },
        ..c
    })
    .await;
    ingest(&env, sandbox("msg_p", "test.panics", "cs_p")).await;
    ingest(&env, sandbox("msg_l", "test.panics-later", "cs_l")).await;
    ingest(&env, sandbox("msg_h", "test.hangs", "cs_h")).await;
    assert!(settles_as(&env, "msg_p", "dead").await);
    assert!(settles_as(&env, "msg_l", "dead").await);
    assert!(settles_as(&env, "msg_h", "dead").await);
    assert_eq!(
        row(&env, "msg_p").await.2.as_deref(),
        Some("the handler panicked")
    );
    assert_eq!(
        row(&env, "msg_l").await.2.as_deref(),
        Some("the handler panicked")
    );
    assert_eq!(
        row(&env, "msg_h").await.2.as_deref(),
        Some("the handler timed out")
    );
    // Every worker is still there to apply the next event.
    ingest(&env, sandbox("msg_ok", HANDLED, "cs_ok")).await;
    assert!(settles_as(&env, "msg_ok", "processed").await);
    assert_eq!(effects(&env).await, 1);
}

#[tokio::test]
async fn shutdown_abandons_a_batch_in_flight_promptly_and_its_event_stays_pending() {
    // The test's own server has no workers; the replica's get stuck.
    let env = Env::spawn().await;
    let replica = Replica::spawn(&env, inbox(handling(Stuck))).await;
    ingest(&env, sandbox("msg_s", HANDLED, "cs_s")).await;
    // A worker holds it: its row is locked.
    assert!(
        eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM (SELECT 1 FROM webhook_events FOR UPDATE SKIP LOCKED) t",
            )
            .fetch_one(&env.app.pool)
            .await
            .unwrap()
                == 0
        })
        .await
    );
    let pool = env.app.pool.clone();
    let started = Instant::now();
    replica.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let (status, attempts): (String, i32) =
        sqlx::query_as("SELECT status, attempts FROM webhook_events")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), attempts), ("pending", 0));
}

#[tokio::test]
async fn metrics_show_outcomes_and_depth() {
    // A stuck worker: the event waits, still pending to everyone else, and the gauges say so.
    let env = spawn(handling(Stuck)).await;
    ingest(&env, sandbox("msg_m", HANDLED, "cs_m")).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            env.metric("coffer_inbox_events{status=\"pending\"}").await == 1.0
        })
        .await
    );
    assert_eq!(
        env.metric("coffer_inbox_events{status=\"dead\"}").await,
        0.0
    );
    let (_, body) = crate::helpers::http_get(env.app.admin_addr, "/metrics").await;
    assert!(
        body.contains("coffer_inbox_oldest_event_age_seconds{status=\"pending\"}"),
        "{body}"
    );

    // With workers, it is ignored, counted under `other`.
    let env = spawn(Handlers::builtin()).await;
    ingest(&env, sandbox("msg_m", "some.type", "cs_m")).await;
    assert!(settles_as(&env, "msg_m", "ignored").await);
    assert!(
        eventually(Duration::from_secs(5), || async {
            env.metric(
                "coffer_inbox_events_handled_total{provider=\"sandbox\",type=\"other\",outcome=\"ignored\"}",
            )
            .await
                == 1.0
        })
        .await
    );
}

/// The real binary: an event acknowledged by a process that is SIGKILLed before any worker took
/// it is applied by the next process; with workers running, SIGTERM still exits promptly.
#[tokio::test]
async fn the_real_binary_killed_after_acknowledging_applies_the_event_after_restart() {
    let db = TestDb::new().await;
    let (pool, _, _) = acme(&db).await;
    let dir = TempDir::new();
    let config = dir.0.join("coffer.toml");
    std::fs::write(
        &config,
        r#"
[[account]]
name = "acme-stripe"
tenant = "acme"
provider = "stripe"
api_key_env = "COFFER_TEST_STRIPE_KEY"
webhook_secret_env = "COFFER_TEST_STRIPE_WHSEC"
"#,
    )
    .unwrap();
    let env = [
        ("COFFER_TEST_STRIPE_KEY", "sk_test_x".to_owned()),
        ("COFFER_TEST_STRIPE_WHSEC", STRIPE_SECRET.to_owned()),
    ];
    let config = config.to_str().unwrap();
    // No workers: the event is acknowledged and nothing takes it.
    let served = Served::start(
        &db,
        &dir.0,
        &["--config", config, "--inbox-workers", "0"],
        &env,
    )
    .await;
    let body = stripe_body("evt_kill");
    let response = coffer::providers::outbound::client_builder()
        .build()
        .unwrap()
        .post(format!("http://{}/webhooks/acme-stripe", served.http))
        .header(
            "Stripe-Signature",
            sign::stripe(STRIPE_SECRET, now(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", served.logs());
    let status = || async {
        sqlx::query_scalar::<_, String>("SELECT status FROM webhook_events")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(status().await, "pending");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &served.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(served);

    let served = Served::start(
        &db,
        &dir.0,
        &[
            "--config",
            config,
            "--inbox-workers",
            "2",
            "--inbox-poll",
            "50ms",
        ],
        &env,
    )
    .await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            status().await == "ignored"
        })
        .await,
        "{}",
        served.logs()
    );
    let started = Instant::now();
    served.sigterm();
    let (code, logs) = served.wait().await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(started.elapsed() < Duration::from_secs(5), "{logs}");
}

/// Takes a while: long enough to be in flight when the shutdown signal comes.
struct Slow;

impl Handler for Slow {
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        event: &'a InboxEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Recorder.apply(conn, event).await
        })
    }
}

#[tokio::test]
async fn once_told_to_stop_claiming_workers_finish_their_batch_and_take_nothing_more() {
    let env = Env::spawn().await;
    let inbox = Inbox::new(
        env.app.pool.clone(),
        InboxConfig {
            workers: 1,
            ..inbox(handling(Slow))
        },
    );
    let (tasks, stop_claiming, stop) = (
        TaskTracker::new(),
        CancellationToken::new(),
        CancellationToken::new(),
    );
    inbox.spawn(&tasks, &stop_claiming, &stop);
    ingest(&env, sandbox("msg_1", HANDLED, "cs_1")).await;
    let held = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM (SELECT 1 FROM webhook_events FOR UPDATE SKIP LOCKED) t",
        )
        .fetch_one(&env.app.pool)
        .await
        .unwrap()
            == 0
    };
    assert!(eventually(Duration::from_secs(10), held).await);
    stop_claiming.cancel();
    ingest(&env, sandbox("msg_2", HANDLED, "cs_2")).await;
    // The worker ends by itself once its batch committed: nothing else had to stop it.
    tasks.close();
    assert!(eventually(Duration::from_secs(5), || async { tasks.len() == 1 }).await);
    assert_eq!(row(&env, "msg_1").await.0, "processed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        row(&env, "msg_2").await.0,
        "pending",
        "claimed after the signal"
    );
    // The gauges' refresher stops with the rest.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(2), tasks.wait())
        .await
        .unwrap();
}

#[tokio::test]
async fn one_batch_settles_each_event_as_its_own_outcome() {
    // The test's own server has no workers: one batch, run by hand, takes every event.
    let env = Env::spawn().await;
    ingest(&env, sandbox("msg_a", HANDLED, "cs_a")).await;
    ingest(&env, sandbox("msg_b", "checkout.unknown", "cs_b")).await;
    ingest(&env, sandbox("msg_c", "test.refused", "cs_c")).await;
    ingest(&env, sandbox("msg_d", HANDLED, "cs_a")).await;
    ingest(&env, sandbox("msg_e", "checkout.unknown", "cs_e")).await;
    // Fails every time, after a write the failure must roll back.
    let refuses = Flaky {
        failures: u32::MAX,
        calls: AtomicU32::new(0),
    };
    let handlers = handling(Recorder).with(ProviderKind::Sandbox, "test.refused", refuses);
    let worker = Inbox::new(env.app.pool.clone(), inbox(handlers));
    assert_eq!(worker.run_once().await.unwrap(), 5);

    for (id, status, attempts) in [
        ("msg_a", "processed", 0),
        ("msg_b", "ignored", 0),
        ("msg_c", "failed", 1),
        ("msg_d", "processed", 0),
        ("msg_e", "ignored", 0),
    ] {
        let (s, a, _) = row(&env, id).await;
        assert_eq!((s.as_str(), a), (status, attempts), "{id}");
    }
    // The two applied events' writes committed; the refused one's rolled back.
    assert_eq!(effects(&env).await, 2);
    let unsettled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events
         WHERE status IN ('processed', 'ignored') AND processed_at IS NULL",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    assert_eq!(unsettled, 0);
    // Nothing is left to claim but the failed event, once its backoff has passed.
    assert!(
        eventually(Duration::from_secs(5), || async {
            worker.run_once().await.unwrap() == 1
        })
        .await
    );
}

/// The payloads of every event of this provider event id: (bytes, purged).
async fn payload(env: &Env, provider_event_id: &str) -> (usize, bool) {
    let (bytes, purged): (i32, bool) = sqlx::query_as(
        "SELECT octet_length(payload), payload_purged_at IS NOT NULL
         FROM webhook_events WHERE provider_event_id = $1",
    )
    .bind(provider_event_id)
    .fetch_one(&env.app.pool)
    .await
    .unwrap();
    (bytes as usize, purged)
}

#[tokio::test]
async fn settled_payloads_past_their_retention_are_removed_and_the_rest_kept() {
    // No workers: the test settles a batch by hand, then leaves one event pending.
    let env = Env::spawn().await;
    let ignored = ingest(&env, sandbox("msg_old", "checkout.unknown", "cs_1")).await;
    ingest(&env, sandbox("msg_done", HANDLED, "cs_2")).await;
    let worker = Inbox::new(env.app.pool.clone(), inbox(handling(Recorder)));
    assert_eq!(worker.run_once().await.unwrap(), 2);
    ingest(&env, sandbox("msg_new", HANDLED, "cs_3")).await;

    // A retention of 90 days keeps everything; of none, removes what is settled.
    let purger = |retention| {
        coffer::app::App::new(env.app.pool.clone()).with_webhooks(
            coffer::app::accounts::Accounts::default(),
            coffer::app::events::WebhookConfig {
                payload_retention: retention,
                ..Default::default()
            },
        )
    };
    let kept = purger(coffer::app::events::DEFAULT_PAYLOAD_RETENTION);
    assert_eq!(kept.events.purge_payloads().await.unwrap(), 0);
    let none = purger(Duration::ZERO);
    assert_eq!(none.events.purge_payloads().await.unwrap(), 2);
    assert_eq!(payload(&env, "msg_old").await, (0, true));
    assert_eq!(payload(&env, "msg_done").await, (0, true));
    let (bytes, purged) = payload(&env, "msg_new").await;
    assert!(bytes > 0 && !purged, "a pending event keeps its payload");
    assert_eq!(none.events.purge_payloads().await.unwrap(), 0, "once");
    // The rows stay, with their statuses.
    assert_eq!(row(&env, "msg_old").await.0, "ignored");
    assert_eq!(row(&env, "msg_done").await.0, "processed");

    // ListEvents says when; a purged event cannot be replayed, and nothing changes.
    let listed = env
        .client()
        .await
        .list_events(req(
            coffer::grpc::pb::ListEventsRequest::default(),
            &env.shop_key,
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let old = listed.iter().find(|e| e.id == ignored).unwrap();
    assert!(old.purge_time.is_some());
    let new = listed
        .iter()
        .find(|e| e.provider_event_id == "msg_new")
        .unwrap();
    assert!(new.purge_time.is_none());
    let e = env
        .client()
        .await
        .replay_event(idem(
            ReplayEventRequest {
                id: ignored.clone(),
            },
            &env.shop_key,
            "replay-purged",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        crate::helpers::details(&e).0,
        "EVENT_PAYLOAD_PURGED",
        "{e:?}"
    );
    assert_eq!(row(&env, "msg_old").await.0, "ignored");

    // A redelivery is still a duplicate of the stored row.
    let again = env
        .client()
        .await
        .ingest_event(req(
            sandbox("msg_old", "checkout.unknown", "cs_1"),
            &env.ingest_key,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(again.duplicate);
    assert_eq!(again.event_id, ignored);
}

#[tokio::test]
async fn the_sweeper_removes_settled_payloads_past_the_configured_retention() {
    let env = Env::spawn_with(|c| ServerConfig {
        inbox: inbox(handling(Recorder)),
        webhooks: coffer::app::events::WebhookConfig {
            payload_retention: Duration::ZERO,
            ..c.webhooks
        },
        sweep_interval: Duration::from_millis(50),
        ..c
    })
    .await;
    ingest(&env, sandbox("msg_s", HANDLED, "cs_s")).await;
    assert!(settles_as(&env, "msg_s", "processed").await);
    assert!(
        eventually(Duration::from_secs(10), || async {
            payload(&env, "msg_s").await == (0, true)
        })
        .await
    );
    assert_eq!(effects(&env).await, 1);
}
