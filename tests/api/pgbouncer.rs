//! Coffer behind a real PgBouncer: the server's pool goes through it as `--db-pooler` makes it,
//! the test keeps a direct pool (as `--database-direct-url` gives migrations), and the main
//! flows run through it. In `pool_mode = transaction` when the PgBouncer can track prepared
//! statements (1.21+, `max_prepared_statements`): CI builds 1.24.1 from Debian 13's source
//! package and names it in `COFFER_PGBOUNCER`. Debian 12's package (1.18) cannot; with only
//! that one the flows run in `pool_mode = session`, and the last test shows why on it.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use coffer::grpc::pb::{
    self, Aggregation, CheckoutMode, CheckoutSessionStatus, CreateCustomerRequest,
    CreateMeterRequest, GetUsageRequest, ListCustomersRequest, RecordUsageRequest, UsageEvent,
    UsageWindow,
};
use coffer::providers::sandbox::{Faults, SandboxConfig};
use coffer::store::pool::{self, PoolConfig, Pooler};
use prost_types::Timestamp;
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

use crate::checkout;
use crate::events::{Env, STRIPE_SECRET};
use crate::helpers::{TestApp, TestDb, by_id, idem, req, skip_or_fail, test_config};
use crate::webhooks::post_stripe;

/// Debian's `pgbouncer` binary, if installed.
fn debian_binary() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The PgBouncer the flows run through: `COFFER_PGBOUNCER` (CI sets it to a 1.21+ build, so
/// transaction pooling is what runs there), else Debian's. A `COFFER_PGBOUNCER` that is not
/// there is a mistake, not a reason to fall back.
fn binary() -> Option<PathBuf> {
    match std::env::var_os("COFFER_PGBOUNCER") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(
                p.exists(),
                "COFFER_PGBOUNCER={} does not exist",
                p.display()
            );
            Some(p)
        }
        _ => debian_binary(),
    }
}

/// Whether this PgBouncer tracks named prepared statements (`max_prepared_statements`, 1.21+),
/// which Coffer's statements need under transaction pooling.
fn tracks_prepared_statements(binary: &Path) -> bool {
    let out = Command::new(binary).arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // "PgBouncer 1.18.0"
    let version = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("pgbouncer --version said {text:?}"));
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (1, 21)
}

/// A PgBouncer process of this test's own, stopped when dropped.
struct PgBouncer {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl PgBouncer {
    /// Starts PgBouncer (`pool_mode` as `mode` says) in front of `db`'s server.
    async fn start(binary: &Path, db: &PgConnectOptions, mode: Pooler, pool_size: u32) -> Self {
        let pool_mode = match mode {
            Pooler::Transaction => "transaction",
            _ => "session",
        };
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let dir = std::env::temp_dir().join(format!("coffer-pgbouncer-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        // PgBouncer will not run as root; as root it is started as `nobody`, who must be able
        // to read the files and write the log.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let user = db.get_username();
        // auth_type = trust still wants the user in the auth file.
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        let host = db.get_host();
        let ini = format!(
            "[databases]\n\
             * = host={host} port={port} user={user}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {dir}/users.txt\n\
             pool_mode = {pool_mode}\n\
             {prepared}\
             max_client_conn = 200\n\
             default_pool_size = {pool_size}\n\
             logfile = {dir}/pgbouncer.log\n\
             pidfile =\n\
             server_reset_query =\n",
            port = db.get_port(),
            listen = port,
            dir = dir.display(),
            // Before 1.21 the setting is unknown, and an unknown setting stops PgBouncer.
            prepared = if tracks_prepared_statements(binary) {
                "max_prepared_statements = 200\n"
            } else {
                ""
            },
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        let mut cmd = Command::new(binary);
        if running_as_root() {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting pgbouncer");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut bouncer = Self { child, addr, dir };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return bouncer;
            }
            if let Ok(Some(status)) = bouncer.child.try_wait() {
                panic!("pgbouncer exited ({status}): {}", bouncer.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("pgbouncer did not listen on {addr}: {}", bouncer.log());
    }

    /// `db` reached through PgBouncer.
    fn options(&self, db: &PgConnectOptions) -> PgConnectOptions {
        db.clone().host("127.0.0.1").port(self.addr.port())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A pool through `bouncer` as `--db-pooler {mode}` makes it.
fn through(bouncer: &PgBouncer, db: &PgConnectOptions, mode: Pooler) -> PgPool {
    pool::pool(
        &bouncer.options(db),
        &PoolConfig {
            pooler: mode,
            ..PoolConfig::default()
        },
    )
}

/// The session settings `--db-pooler transaction` cannot send, set where the docs say: on the
/// database (here) or the role, so every server connection PgBouncer opens starts with them.
async fn settings_on_the_database(pool: &PgPool, name: &str) {
    for (setting, value) in [
        ("statement_timeout", "10s"),
        ("idle_in_transaction_session_timeout", "30s"),
        ("plan_cache_mode", "force_generic_plan"),
        ("jit", "off"),
    ] {
        let sql = format!("ALTER DATABASE \"{name}\" SET {setting} = '{value}'");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
}

fn ts(unix: i64) -> Timestamp {
    Timestamp {
        seconds: unix,
        nanos: 0,
    }
}

#[tokio::test]
async fn the_main_flows_run_through_pgbouncer() {
    let Some(binary) = binary() else {
        return skip_or_fail("pgbouncer is not installed (apt-get install pgbouncer)");
    };
    let mode = mode_for(&binary);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    settings_on_the_database(&pool, &db.name).await;
    // Room for the whole pool and the health check's connection: in session mode a server
    // connection stays with its Coffer connection, and one more would wait for
    // --db-acquire-timeout and fail the call.
    let bouncer = PgBouncer::start(&binary, &db.options, mode, 20).await;
    let server_pool = through(&bouncer, &db.options, mode);

    // Connections through PgBouncer carry the database's settings.
    let timeout = pool::session_statement_timeout(&server_pool)
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", bouncer.log()));
    assert_eq!(timeout, Duration::from_secs(10));

    let mut config = test_config();
    config.sandbox = Some(SandboxConfig {
        public_url: "http://127.0.0.1:8089".into(),
        faults: Arc::new(Faults::default()),
        ..SandboxConfig::default()
    });
    config.resolve_interval = Duration::from_millis(100);
    let app = TestApp::spawn_on(db, pool, server_pool, config).await;

    // Customers: create, replay by idempotency key, get, list.
    let mut customers = app.customers().await;
    let create = |x: &str| CreateCustomerRequest {
        external_id: x.into(),
        email: format!("{x}@example.com"),
        ..Default::default()
    };
    let alice = customers
        .create_customer(idem(create("alice"), &app.key, "create-alice"))
        .await
        .unwrap()
        .into_inner();
    let replay = customers
        .create_customer(idem(create("alice"), &app.key, "create-alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replay, alice);
    for x in ["bob", "carol"] {
        customers
            .create_customer(idem(create(x), &app.key, &format!("create-{x}")))
            .await
            .unwrap();
    }
    let got = customers
        .get_customer(req(by_id(&alice.id), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, alice);
    let listed = customers
        .list_customers(req(ListCustomersRequest::default(), &app.key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.customers.len(), 3);
    assert_eq!(app.customer_rows().await, 3);

    // A sandbox checkout session, its provider customer made on the way.
    let mut sessions = checkout::client(&app).await;
    let (_, [monthly, _, _]) = checkout::plan(&app, "pro").await;
    let opened = sessions
        .create_checkout_session(idem(
            checkout::session(
                &alice.id,
                CheckoutMode::Subscription,
                vec![checkout::item(&monthly, 1)],
            ),
            &app.key,
            "checkout-alice",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.status, CheckoutSessionStatus::Open as i32);
    assert_eq!(opened.provider_account, "acme-sandbox");
    let replayed = sessions
        .create_checkout_session(idem(
            checkout::session(
                &alice.id,
                CheckoutMode::Subscription,
                vec![checkout::item(&monthly, 1)],
            ),
            &app.key,
            "checkout-alice",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replayed.id, opened.id);

    // Usage: a meter, events (one a duplicate), and the total back.
    let mut usage = app.usage().await;
    usage
        .create_meter(req(
            CreateMeterRequest {
                key: "tokens".into(),
                name: String::new(),
                aggregation: Aggregation::Sum as i32,
                value_key: "tokens".into(),
            },
            &app.key,
        ))
        .await
        .unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let event = |id: &str, value: &str| UsageEvent {
        event_id: id.into(),
        customer: Some(pb::usage_event::Customer::ExternalId("alice".into())),
        meter_key: "tokens".into(),
        value: value.into(),
        occurred_at: Some(ts(now - 60)),
        properties: Default::default(),
    };
    for events in [
        vec![event("e1", "5"), event("e2", "7")],
        vec![event("e2", "7"), event("e3", "1")],
    ] {
        usage
            .record_usage(req(RecordUsageRequest { events }, &app.key))
            .await
            .unwrap();
    }
    let total = usage
        .get_usage(req(
            GetUsageRequest {
                customer: Some(pb::get_usage_request::Customer::ExternalId("alice".into())),
                meter_key: "tokens".into(),
                from: Some(ts(now - 3_600)),
                to: Some(ts(now + 60)),
                window: UsageWindow::None as i32,
            },
            &app.key,
        ))
        .await
        .unwrap()
        .into_inner()
        .total
        .unwrap();
    assert_eq!((total.value.as_str(), total.events), ("13", 3));

    // PgBouncer carried it all: its log shows the server's logins and no refused parameter
    // or protocol error.
    let log = bouncer.log();
    assert!(log.contains("login attempt"), "{log}");
    assert!(
        !log.contains("unsupported startup parameter") && !log.contains("ERROR"),
        "{log}"
    );
}

/// The mode the flows run in: transaction pooling when this PgBouncer can carry it.
fn mode_for(binary: &Path) -> Pooler {
    if tracks_prepared_statements(binary) {
        Pooler::Transaction
    } else {
        eprintln!("pgbouncer before 1.21: pool_mode = session (transaction mode needs 1.21+)");
        Pooler::Session
    }
}

#[tokio::test]
async fn a_webhook_through_the_sidecar_is_stored_through_pgbouncer() {
    let Some(binary) = binary() else {
        return skip_or_fail("pgbouncer is not installed (apt-get install pgbouncer)");
    };
    let mode = mode_for(&binary);
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let bouncer = PgBouncer::start(&binary, &db.options, mode, 20).await;
    let server_pool = through(&bouncer, &db.options, mode);
    let env = Env::spawn_on(db, pool, server_pool, |c| c).await;
    let http = env.app.http_addr.expect("the sidecar runs");
    for _ in 0..2 {
        let (status, _, body) = post_stripe(http, "shop-stripe", "evt_1", STRIPE_SECRET).await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}: {}", bouncer.log());
    }
    assert_eq!(
        env.rows().await,
        1,
        "stored once, the duplicate acknowledged"
    );
}

/// Transaction pooling, many clients, two server connections: sqlx names every statement it
/// prepares (`sqlx_s_1`, ...), each connection counting from 1, and the statement must still be
/// there when it is bound. PgBouncer 1.21+ tracks the names and every statement gets its own
/// answer; before 1.21 the names clash on the shared server connections, which is why
/// `--db-pooler transaction` needs 1.21 and Debian 12's PgBouncer serves Coffer in session mode.
#[tokio::test]
async fn transaction_pooling_needs_pgbouncer_to_track_prepared_statements() {
    let mut binaries: Vec<PathBuf> = binary().into_iter().chain(debian_binary()).collect();
    binaries.dedup();
    if binaries.is_empty() {
        return skip_or_fail("pgbouncer is not installed (apt-get install pgbouncer)");
    }
    for binary in binaries {
        let tracks = tracks_prepared_statements(&binary);
        let wrong = shared_server_connections(&binary).await;
        if tracks {
            assert!(
                wrong.is_empty(),
                "{}: {} of 800 went wrong: {wrong:?}",
                binary.display(),
                wrong.len()
            );
        } else {
            assert!(
                wrong.iter().any(|w| w.contains("already exists")),
                "{}: PgBouncer before 1.21 no longer mixes up named statements? {wrong:?}",
                binary.display()
            );
        }
    }
}

/// 16 clients of two server connections in transaction pooling, 50 statements each; what went
/// wrong.
async fn shared_server_connections(binary: &Path) -> Vec<String> {
    let db = TestDb::new().await;
    let bouncer = PgBouncer::start(binary, &db.options, Pooler::Transaction, 2).await;
    let server_pool = through(&bouncer, &db.options, Pooler::Transaction);
    let mut tasks = Vec::new();
    for t in 0..16_i64 {
        let pool = server_pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut wrong = Vec::new();
            for i in 0..50_i64 {
                let n = t * 1_000 + i;
                let r = if i % 2 == 0 {
                    sqlx::query_scalar::<_, i64>("SELECT $1::int8 * 2")
                        .bind(n)
                        .fetch_one(&pool)
                        .await
                        .map(|v| v == n * 2)
                } else {
                    sqlx::query_scalar::<_, String>("SELECT $1::text || '!'")
                        .bind(n.to_string())
                        .fetch_one(&pool)
                        .await
                        .map(|v| v == format!("{n}!"))
                };
                match r {
                    Ok(true) => {}
                    Ok(false) => wrong.push(format!("{n}: another statement's result")),
                    Err(e) => wrong.push(format!("{n}: {e}")),
                }
            }
            wrong
        }));
    }
    let mut wrong = Vec::new();
    for t in tasks {
        wrong.extend(t.await.unwrap());
    }
    server_pool.close().await;
    wrong
}
