//! The sandbox's signed event delivery over real HTTP through the sidecar into the inbox: at
//! least once, retried while the core cannot take it, faults (duplicate, delay, reorder), a
//! restart mid-send; its clock (AdvanceClock) and session expiry; and accounts of tenants
//! created after the start.

use std::sync::Arc;
use std::time::Duration;

use coffer::domain::checkout::{Mode, PaymentStatus};
use coffer::domain::ids::TenantId;
use coffer::grpc::pb::sandbox_client::SandboxClient;
use coffer::grpc::pb::{AdvanceClockRequest, AdvanceClockResponse};
use coffer::providers::sandbox::events::{self, EventType};
use coffer::providers::sandbox::store as sandbox_store;
use coffer::providers::sandbox::{Faults, Sandbox, SandboxConfig};
use coffer::startup::{Server, ServerConfig};
use coffer::store::pool::{self, PoolConfig};
use serde_json::json;
use sqlx::PgPool;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

use crate::helpers::{
    Proxy, TestApp, TestDb, details, eventually, http_get, idem, req, sandbox_test_config,
    test_config,
};

/// A server with the sandbox and the sidecar, its delivery workers running.
fn config(faults: Arc<Faults>) -> ServerConfig {
    ServerConfig {
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        sandbox: Some(sandbox_test_config(faults)),
        ..test_config()
    }
}

async fn spawn() -> (TestApp, Arc<Faults>) {
    let faults = Arc::new(Faults::default());
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let app = TestApp::spawn_on(db, pool.clone(), pool, config(faults.clone())).await;
    (app, faults)
}

async fn tenant_id(pool: &PgPool, name: &str) -> TenantId {
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap();
    TenantId::from_uuid(id)
}

/// The tenant's sandbox account, made as the provider layer makes it.
async fn sandbox_account(pool: &PgPool, tenant: &str) -> String {
    let sandbox = Sandbox::new(pool.clone(), SandboxConfig::default());
    let (name, _) = sandbox
        .account_for(tenant_id(pool, tenant).await, None)
        .await
        .unwrap()
        .expect("the tenant exists");
    name.as_str().to_owned()
}

/// Queues an event of `event_type` about object `object_id` for `account`; its id.
async fn emit(pool: &PgPool, account: &str, event_type: EventType, object_id: &str) -> String {
    let mut tx = pool.begin().await.unwrap();
    let id = events::emit(
        &mut tx,
        account,
        event_type,
        &json!({"id": object_id, "version": 1}),
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

/// How many inbox rows hold provider event `id` for `account`.
async fn inbox_rows(pool: &PgPool, account: &str, id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events WHERE account = $1 AND provider_event_id = $2",
    )
    .bind(account)
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// (status, attempts, last_error) of the outbox row of event `id`.
async fn outbox(pool: &PgPool, id: &str) -> (String, i32, Option<String>) {
    sqlx::query_as("SELECT status, attempts, last_error FROM sandbox_outbox WHERE webhook_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn delivered(pool: &PgPool, id: &str) -> bool {
    outbox(pool, id).await.0 == "delivered"
}

/// The value of the metric line starting with `series` on `/metrics`, 0 when absent.
pub(crate) async fn metric(app: &TestApp, series: &str) -> f64 {
    let (_, body) = http_get(app.admin_addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_queued_event_is_delivered_over_http_and_lands_once() {
    let (app, _) = spawn().await;
    let account = sandbox_account(&app.pool, "acme").await;
    assert_eq!(account, "acme-sandbox");
    let id = emit(&app.pool, &account, EventType::PaymentSucceeded, "py_sbx_1").await;

    assert!(
        eventually(Duration::from_secs(10), || delivered(&app.pool, &id)).await,
        "delivered"
    );
    assert_eq!(inbox_rows(&app.pool, &account, &id).await, 1);
    let (_, attempts, last_error) = outbox(&app.pool, &id).await;
    assert_eq!((attempts, last_error), (1, None));
    // Stored for acme, as a sandbox event of its type, with the body byte for byte.
    let (tenant, provider, event_type, payload): (uuid::Uuid, String, String, Vec<u8>) =
        sqlx::query_as(
            "SELECT tenant_id, provider, event_type, payload FROM webhook_events
             WHERE provider_event_id = $1",
        )
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        TenantId::from_uuid(tenant),
        tenant_id(&app.pool, "acme").await
    );
    assert_eq!(
        (provider.as_str(), event_type.as_str()),
        ("sandbox", "payment.succeeded")
    );
    let body: Vec<u8> = sqlx::query_scalar("SELECT body FROM sandbox_outbox WHERE webhook_id = $1")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(payload, body);
    assert_eq!(
        metric(
            &app,
            r#"coffer_sandbox_deliveries_total{outcome="delivered"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &app,
            r#"coffer_webhooks_received_total{provider="sandbox",outcome="stored"}"#
        )
        .await,
        1.0
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_tenants_override_secret_signs_and_verifies() {
    let faults = Arc::new(Faults::default());
    let text = "[tenant.acme]\nsandbox_webhook_secret_env = \"ACME_SBX\"\n";
    let secret = "whsec_CIDVmpcN1wy5sTTCIMm7V5T3QOHMbcGZgb+aVYruOUo=";
    let app = TestApp::spawn_configured(text, &[("ACME_SBX", secret)], |c| {
        *c = ServerConfig {
            settings: c.settings.clone(),
            ..config(faults.clone())
        };
    })
    .await;
    let account = sandbox_account(&app.pool, "acme").await;
    let id = emit(&app.pool, &account, EventType::RefundSucceeded, "re_sbx_1").await;
    assert!(eventually(Duration::from_secs(10), || delivered(&app.pool, &id)).await);
    assert_eq!(inbox_rows(&app.pool, &account, &id).await, 1);
    app.stop().await.unwrap();
}

/// Starts a server on `pool` with `config`; a sender that stops it and its handle.
async fn start(
    config: ServerConfig,
    pool: PgPool,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), coffer::startup::ServeError>>,
) {
    let server = Server::bind(config, pool).await.expect("binding");
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    (stop, handle)
}

#[tokio::test]
async fn a_refused_delivery_is_retried_with_backoff_and_lands_later() {
    // The core (with the sidecar) reaches the database through a proxy the test cuts; the
    // sandbox delivering to it is a second server on the same database, directly connected,
    // as a real provider is independent of Coffer's database.
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let proxy = Proxy::to_db(&db.options).await;
    let through_proxy = pool::pool(
        &proxy.options(&db.options),
        &PoolConfig {
            acquire_timeout: Duration::from_millis(500),
            ..PoolConfig::default()
        },
    );
    let mut core = config(Arc::default());
    if let Some(sandbox) = &mut core.sandbox {
        sandbox.delivery.workers = 0;
    }
    let app = TestApp::spawn_on(db, pool.clone(), through_proxy, core).await;
    let mut provider = config(Arc::default());
    provider.http_addr = None;
    provider.admin_addr = "127.0.0.1:0".parse().unwrap();
    if let Some(sandbox) = &mut provider.sandbox {
        sandbox.webhook_base = Some(format!("http://{}", app.http_addr.unwrap()));
    }
    let (stop, running) = start(provider, pool.clone()).await;
    let account = sandbox_account(&pool, "acme").await;

    proxy.cut().await;
    let id = emit(&pool, &account, EventType::PaymentSucceeded, "py_sbx_1").await;
    // Refused (503) and rescheduled, more than once, while the core's database is away.
    assert!(
        eventually(Duration::from_secs(15), || async {
            let (status, attempts, error) = outbox(&pool, &id).await;
            status == "pending" && attempts >= 2 && error.as_deref() == Some("HTTP 503")
        })
        .await,
        "retried: {:?}",
        outbox(&pool, &id).await
    );
    proxy.restore();
    assert!(eventually(Duration::from_secs(15), || delivered(&pool, &id)).await);
    assert_eq!(
        inbox_rows(&pool, &account, &id).await,
        1,
        "nothing lost, stored once"
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_duplicated_delivery_is_stored_once() {
    let (app, faults) = spawn().await;
    let account = sandbox_account(&app.pool, "acme").await;
    faults.duplicate_next(1);
    let id = emit(
        &app.pool,
        &account,
        EventType::CheckoutCompleted,
        "cs_sbx_1",
    )
    .await;
    assert!(eventually(Duration::from_secs(10), || delivered(&app.pool, &id)).await);
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(
                &app,
                r#"coffer_webhooks_received_total{provider="sandbox",outcome="duplicate"}"#,
            )
            .await
                == 1.0
        })
        .await,
        "sent twice"
    );
    assert_eq!(inbox_rows(&app.pool, &account, &id).await, 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn held_events_are_released_newest_first() {
    let (app, faults) = spawn().await;
    let account = sandbox_account(&app.pool, "acme").await;
    faults.hold();
    let payment = emit(&app.pool, &account, EventType::PaymentSucceeded, "py_sbx_1").await;
    let completed = emit(
        &app.pool,
        &account,
        EventType::CheckoutCompleted,
        "cs_sbx_1",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        outbox(&app.pool, &payment).await,
        ("pending".into(), 0, None),
        "held"
    );
    assert_eq!(inbox_rows(&app.pool, &account, &payment).await, 0);

    faults.release_newest_first();
    assert!(eventually(Duration::from_secs(10), || delivered(&app.pool, &payment)).await);
    assert!(delivered(&app.pool, &completed).await);
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM webhook_events WHERE account = $1 ORDER BY received_at",
    )
    .bind(&account)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(order, ["checkout.session.completed", "payment.succeeded"]);

    // Later events flow in order again.
    let a = emit(&app.pool, &account, EventType::RefundSucceeded, "re_sbx_1").await;
    let b = emit(&app.pool, &account, EventType::PaymentFailed, "py_sbx_2").await;
    assert!(eventually(Duration::from_secs(10), || delivered(&app.pool, &b)).await);
    assert!(delivered(&app.pool, &a).await);
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM webhook_events WHERE account = $1 ORDER BY received_at",
    )
    .bind(&account)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(&order[2..], ["refund.succeeded", "payment.failed"]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_delay_holds_deliveries_for_its_duration() {
    let (app, faults) = spawn().await;
    let account = sandbox_account(&app.pool, "acme").await;
    let started = tokio::time::Instant::now();
    faults.hold_for(Duration::from_millis(800));
    let id = emit(&app.pool, &account, EventType::PaymentSucceeded, "py_sbx_1").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!delivered(&app.pool, &id).await, "held");
    assert!(eventually(Duration::from_secs(10), || delivered(&app.pool, &id)).await);
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(inbox_rows(&app.pool, &account, &id).await, 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_delivery_cut_short_by_a_stop_is_sent_after_the_restart() {
    // The first server sends into a peer that accepts and never answers, and is stopped
    // mid-send: the row stays leased. A new server on the same database sends it once the
    // lease has run out.
    let faults = Arc::new(Faults::default());
    faults.hold();
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let app = TestApp::spawn_on(db, pool.clone(), pool.clone(), config(faults.clone())).await;
    let account = sandbox_account(&pool, "acme").await;

    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let mut first = config(Arc::default());
    first.http_addr = None;
    if let Some(sandbox) = &mut first.sandbox {
        sandbox.webhook_base = Some(format!("http://{silent_addr}"));
        // Long enough that the stop always comes before the request gives up.
        sandbox.delivery.timeout = Duration::from_secs(6);
        sandbox.delivery.lease = Duration::from_secs(7);
    }
    let (stop, running) = start(first, pool.clone()).await;
    let id = emit(&pool, &account, EventType::PaymentSucceeded, "py_sbx_1").await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            outbox(&pool, &id).await.1 == 1
        })
        .await,
        "claimed and being sent"
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    holder.abort();
    assert_eq!(
        outbox(&pool, &id).await,
        ("pending".into(), 1, None),
        "leased, unsent"
    );

    faults.release();
    assert!(eventually(Duration::from_secs(15), || delivered(&pool, &id)).await);
    assert_eq!(outbox(&pool, &id).await.1, 2);
    assert_eq!(inbox_rows(&pool, &account, &id).await, 1);
    app.stop().await.unwrap();
}

async fn sandbox_client(app: &TestApp) -> SandboxClient<Channel> {
    SandboxClient::new(app.channel().await)
}

fn at(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    }
}

fn advance(account: &str, to: OffsetDateTime) -> AdvanceClockRequest {
    AdvanceClockRequest {
        account: account.into(),
        to: Some(at(to)),
    }
}

/// Inserts an open sandbox session of `account` expiring at `expires_at`; its id.
async fn session(pool: &PgPool, account: &str, expires_at: OffsetDateTime) -> String {
    let id = format!("cs_sbx_{}", uuid::Uuid::now_v7().simple());
    let mut conn = pool.acquire().await.unwrap();
    sandbox_store::upsert_session(
        &mut conn,
        sandbox_store::NewSession {
            account,
            id: &id,
            client_reference: uuid::Uuid::now_v7(),
            customer: "cus_sbx_1",
            mode: Mode::Payment,
            payment_status: PaymentStatus::Unpaid,
            line_items: json!([]),
            amount_total: 2_900,
            currency: "USD",
            trial_days: 0,
            success_url: "https://shop.example/ok",
            cancel_url: "https://shop.example/cancel",
            url: "http://127.0.0.1/sandbox/checkout/x",
            expires_at,
        },
    )
    .await
    .unwrap();
    id
}

/// (status, version) of a sandbox session.
async fn session_state(pool: &PgPool, id: &str) -> (String, i64) {
    sqlx::query_as("SELECT status, version FROM sandbox_checkout_sessions WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The bodies of the queued `checkout.session.expired` events.
async fn expired_events(pool: &PgPool) -> Vec<serde_json::Value> {
    let bodies: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT body FROM sandbox_outbox WHERE event_type = 'checkout.session.expired' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    bodies
        .iter()
        .map(|b| serde_json::from_slice(b).unwrap())
        .collect()
}

#[tokio::test]
async fn advance_clock_moves_forward_only_for_the_tenants_own_account() {
    let (app, _) = spawn().await;
    let mut client = sandbox_client(&app).await;
    let now = OffsetDateTime::now_utc();

    // The tenant's own account, by name or by default.
    let to = now + time::Duration::hours(1);
    let moved = client
        .advance_clock(req(advance("acme-sandbox", to), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.now.unwrap().seconds, to.unix_timestamp());
    let later = now + time::Duration::hours(2);
    let moved = client
        .advance_clock(req(advance("", later), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.now.unwrap().seconds, later.unix_timestamp());

    // Back is refused, naming `to`; so is no `to`.
    for request in [
        advance("", to),
        advance("", now - time::Duration::hours(1)),
        AdvanceClockRequest {
            account: String::new(),
            to: None,
        },
    ] {
        let e = client
            .advance_clock(req(request, &app.key))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(details(&e).1, ["to"]);
    }
    let offset: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM clock_offset)::float8 FROM sandbox_accounts WHERE account = 'acme-sandbox'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!((7_000.0..7_300.0).contains(&offset), "{offset}");

    // Another tenant's account, or one that does not exist, is not found.
    let other = app.tenant("other").await;
    for account in ["acme-sandbox", "nope-sandbox"] {
        let e = client
            .advance_clock(req(advance(account, later), &other))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{account}");
        assert_eq!(details(&e).0, "ACCOUNT_NOT_FOUND");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn advance_clock_replays_under_its_idempotency_key() {
    let (app, _) = spawn().await;
    let mut client = sandbox_client(&app).await;
    let to = OffsetDateTime::now_utc() + time::Duration::hours(1);
    let first = client
        .advance_clock(idem(advance("", to), &app.key, "clock-1"))
        .await
        .unwrap();
    assert!(first.metadata().get("idempotent-replayed").is_none());
    let first: AdvanceClockResponse = first.into_inner();
    // The clock moves on; the replay still answers the first move and moves nothing.
    let further = to + time::Duration::hours(1);
    client
        .advance_clock(req(advance("", further), &app.key))
        .await
        .unwrap();
    let replay = client
        .advance_clock(idem(advance("", to), &app.key, "clock-1"))
        .await
        .unwrap();
    assert_eq!(
        replay
            .metadata()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(replay.into_inner(), first);
    let e = client
        .advance_clock(idem(advance("", further), &app.key, "clock-1"))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "the key is for another request"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn advancing_the_clock_expires_due_sessions_and_queues_their_events() {
    let (app, _) = spawn().await;
    let account = sandbox_account(&app.pool, "acme").await;
    let now = OffsetDateTime::now_utc();
    let soon = session(&app.pool, &account, now + time::Duration::minutes(30)).await;
    let later = session(&app.pool, &account, now + time::Duration::hours(5)).await;

    sandbox_client(&app)
        .await
        .advance_clock(req(advance("", now + time::Duration::hours(1)), &app.key))
        .await
        .unwrap();
    assert_eq!(session_state(&app.pool, &soon).await, ("expired".into(), 2));
    assert_eq!(session_state(&app.pool, &later).await, ("open".into(), 1));
    let events = expired_events(&app.pool).await;
    assert_eq!(events.len(), 1);
    let object = &events[0]["data"]["object"];
    assert_eq!(object["id"], soon.as_str());
    assert_eq!(object["status"], "expired");
    assert_eq!(object["version"], 2);
    assert_eq!(object["amount_total"], 2_900);
    assert_eq!(object["payment"], serde_json::Value::Null);
    // The event is dated on the account's clock, and is delivered like any other.
    let created = events[0]["created"].as_i64().unwrap();
    assert!(created >= (now + time::Duration::hours(1)).unix_timestamp() - 5);
    let id = events[0]["id"].as_str().unwrap().to_owned();
    assert!(eventually(Duration::from_secs(10), || delivered(&app.pool, &id)).await);
    assert_eq!(inbox_rows(&app.pool, &account, &id).await, 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn sessions_expire_by_themselves_at_their_time() {
    let (app, _) = spawn().await;
    let account = sandbox_account(&app.pool, "acme").await;
    let past = session(&app.pool, &account, OffsetDateTime::now_utc()).await;
    let future = session(
        &app.pool,
        &account,
        OffsetDateTime::now_utc() + time::Duration::hours(1),
    )
    .await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            session_state(&app.pool, &past).await.0 == "expired"
        })
        .await
    );
    assert_eq!(expired_events(&app.pool).await.len(), 1, "one event, once");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(expired_events(&app.pool).await.len(), 1);
    assert_eq!(session_state(&app.pool, &future).await, ("open".into(), 1));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_tenant_created_after_the_start_gets_an_account_whose_deliveries_verify() {
    let (app, _) = spawn().await;
    let key = app.tenant("late-comer").await;
    // Its first sandbox call makes its account.
    sandbox_client(&app)
        .await
        .advance_clock(req(
            advance("", OffsetDateTime::now_utc() + time::Duration::minutes(1)),
            &key,
        ))
        .await
        .unwrap();
    let account = sandbox_account(&app.pool, "late-comer").await;
    assert_eq!(account, "late-comer-sandbox");
    let id = emit(&app.pool, &account, EventType::PaymentSucceeded, "py_sbx_9").await;
    assert!(eventually(Duration::from_secs(10), || delivered(&app.pool, &id)).await);
    let tenant: uuid::Uuid =
        sqlx::query_scalar("SELECT tenant_id FROM webhook_events WHERE provider_event_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        TenantId::from_uuid(tenant),
        tenant_id(&app.pool, "late-comer").await
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn without_the_sandbox_its_service_is_not_served() {
    let app = TestApp::spawn().await;
    let e = sandbox_client(&app)
        .await
        .advance_clock(req(advance("", OffsetDateTime::now_utc()), &app.key))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    app.stop().await.unwrap();
}

/// The services reflection lists.
async fn reflected(app: &TestApp) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(app.channel().await)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test]
async fn reflection_lists_the_sandbox_service_only_when_it_is_served() {
    let (app, _) = spawn().await;
    let names = reflected(&app).await;
    assert!(names.contains(&"coffer.v1.Sandbox".to_owned()), "{names:?}");
    assert!(
        names.contains(&"coffer.v1.Checkout".to_owned()),
        "{names:?}"
    );
    app.stop().await.unwrap();

    let app = TestApp::spawn().await;
    let names = reflected(&app).await;
    assert!(
        !names.contains(&"coffer.v1.Sandbox".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"coffer.v1.Customers".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    app.stop().await.unwrap();
}

/// Over the real binary's OTLP export: the sandbox's delivery is a client span whose context
/// travels in `traceparent`, so the sidecar's span is its child and IngestEvent the sidecar's.
#[tokio::test]
async fn a_delivery_is_one_trace_from_the_sandbox_through_the_sidecar() {
    use crate::binary::{Receiver, Served, TempDir, acme, hex};
    let (receiver, otlp_env) = Receiver::start().await;
    let db = TestDb::new().await;
    let (pool, _, _) = acme(&db).await;
    let state = TempDir::new();
    let served = Served::start(
        &db,
        &state.0,
        &["--sandbox", "--sandbox-delivery-poll", "50ms"],
        &otlp_env,
    )
    .await;
    let account = sandbox_account(&pool, "acme").await;
    let id = emit(&pool, &account, EventType::PaymentSucceeded, "py_sbx_1").await;
    assert!(eventually(Duration::from_secs(10), || delivered(&pool, &id)).await);
    served.sigterm();
    let (code, logs) = served.wait().await;
    assert_eq!(code, Some(0), "{logs}");

    let spans = receiver.spans();
    let names = || spans.iter().map(|s| s.name.as_str()).collect::<Vec<_>>();
    let find = |name: &str, kind: i32| {
        spans
            .iter()
            .find(|s| s.name == name && s.kind == kind)
            .unwrap_or_else(|| panic!("no {name} span of kind {kind} among {:?}", names()))
    };
    let delivery = find("POST /webhooks/{account}", 3);
    let sidecar = find("POST /webhooks/{account}", 2);
    let ingest = find("coffer.v1.ProviderEvents/IngestEvent", 2);
    assert_eq!(hex(&sidecar.trace_id), hex(&delivery.trace_id), "one trace");
    assert_eq!(sidecar.parent_span_id, delivery.span_id);
    assert_eq!(ingest.trace_id, delivery.trace_id);
    assert_eq!(ingest.parent_span_id, sidecar.span_id);
}

/// A target past the sandbox clock's horizon (ten years by default) is refused naming `to`,
/// and changes nothing: the account's clock and its sessions keep working. (Moved to
/// 9999-12-31, an account used to be broken for good: every time derived from its clock failed
/// to be read back.)
#[tokio::test]
async fn advance_clock_past_the_horizon_is_refused_and_the_account_keeps_working() {
    let (app, _) = spawn().await;
    let mut client = sandbox_client(&app).await;
    let now = OffsetDateTime::now_utc();
    let end_of_time = time::macros::datetime!(9999-12-31 23:59:59 UTC);
    for to in [end_of_time, now + time::Duration::days(3_700)] {
        let e = client
            .advance_clock(req(advance("", to), &app.key))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{to}");
        assert_eq!(details(&e).1, ["to"]);
        assert!(e.message().contains("horizon"), "{}", e.message());
    }
    let offset: Option<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM clock_offset)::float8 FROM sandbox_accounts WHERE account = 'acme-sandbox'",
    )
    .fetch_optional(&app.pool)
    .await
    .unwrap();
    assert!(offset.unwrap_or(0.0).abs() < 1.0, "{offset:?}");

    // Nine years ahead is inside the horizon, and a session's expiry a day later reads back.
    let to = now + time::Duration::days(9 * 365);
    let moved = client
        .advance_clock(req(advance("", to), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.now.unwrap().seconds, to.unix_timestamp());
    let later = to + time::Duration::hours(1);
    client
        .advance_clock(req(advance("", later), &app.key))
        .await
        .unwrap();
    app.stop().await.unwrap();
}
