//! The read replica over real processes: a private primary, a streaming replica made from it
//! with `pg_basebackup -R` (both through `pg_local`), and the real binary with
//! `--database-url` on the primary and `--database-read-url` on the replica. With the
//! replica's replay paused, a List call shows it is served from the replica (stale, within the
//! bound), reads fall back to the primary once the lag passes the bound, and return to the
//! replica once it catches up; a Get stays on the primary throughout.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer::app::App;
use coffer::domain::auth::TenantName;
use coffer::grpc::pb::usage_client::UsageClient;
use coffer::grpc::pb::{
    Aggregation, CreateCustomerRequest, CreateMeterRequest, GetUsageRequest, ListCustomersRequest,
    UsageWindow, get_usage_request,
};
use coffer::pg_local::{self, LocateError};
use coffer::store::pool::{self, PoolConfig};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::binary::{Served, TempDir};
use crate::helpers::{by_id, eventually, http_get, idem, req, skip_or_fail};

/// Stops the private clusters of these directories when dropped, replicas first.
struct Clusters(Vec<PathBuf>);

impl Drop for Clusters {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            pg_local::stop_private(dir);
        }
    }
}

/// A URL the binary understands for a private cluster's socket.
fn socket_url(options: &PgConnectOptions, database: &str) -> String {
    let socket = options.get_socket().expect("a private cluster's socket");
    format!(
        "postgres://postgres@localhost/{database}?host={}&port={}&sslmode=disable",
        socket.display(),
        options.get_port()
    )
}

async fn metric(admin: &str, series: &str) -> f64 {
    let (_, text) = http_get(admin.parse().unwrap(), "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(f64::NAN, |v| v.parse().unwrap())
}

async fn listed(served: &Served, key: &str) -> Vec<String> {
    served
        .customers()
        .await
        .list_customers(req(
            ListCustomersRequest {
                page_size: 100,
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .customers
        .into_iter()
        .map(|c| c.external_id)
        .collect()
}

async fn replay(replica: &PgConnectOptions, action: &str) {
    let mut conn = PgConnection::connect_with(replica).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "SELECT pg_wal_replay_{action}()"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_served_by_the_replica_within_its_lag_bound_and_by_the_primary_beyond_it() {
    let dir = TempDir::new();
    let (primary_dir, replica_dir) = (dir.0.join("primary"), dir.0.join("replica"));
    let started = {
        let primary_dir = primary_dir.clone();
        tokio::task::spawn_blocking(move || pg_local::start_private(&primary_dir))
            .await
            .unwrap()
    };
    let primary = match started {
        Ok((options, _)) => options,
        Err(LocateError::NoPostgres) => {
            return skip_or_fail(
                "no Postgres binaries on this machine (apt-get install postgresql; .ci/run does)",
            );
        }
        Err(e) => panic!("{e}"),
    };
    let mut clusters = Clusters(vec![primary_dir.clone()]);
    let db = primary.clone().database("coffer");
    pool::create_database_if_missing(&db).await.unwrap();
    let pool = pool::pool(&db, &PoolConfig::default());
    pool::migrate(&pool).await.unwrap();
    let (_, key) = App::new(pool.clone())
        .tenants
        .create_tenant(&TenantName::parse("acme").unwrap())
        .await
        .unwrap();
    let key = key.expose().to_owned();

    let replica = {
        let (replica_dir, primary) = (replica_dir.clone(), primary.clone());
        tokio::task::spawn_blocking(move || pg_local::start_private_replica(&replica_dir, &primary))
            .await
            .unwrap()
            .expect("a replica made by pg_basebackup")
            .0
    };
    clusters.0.push(replica_dir.clone());
    let replica_db = replica.clone().database("coffer");
    assert_ne!(replica.get_socket(), primary.get_socket(), "two servers");

    let max_lag = Duration::from_secs(3);
    let served = Served::start_on(
        &socket_url(&primary, "coffer"),
        &state(&dir.0),
        &[],
        &[
            ("COFFER_DATABASE_READ_URL", socket_url(&replica, "coffer")),
            ("COFFER_DATABASE_READ_MAX_LAG", "3s".into()),
            ("COFFER_DATABASE_READ_CHECK_INTERVAL", "100ms".into()),
        ],
    )
    .await;
    let admin = served.admin.clone();
    let in_use = "coffer_database_read_replica_in_use ";
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&admin, in_use).await == 1.0
        })
        .await,
        "reads go to the replica once it is caught up:\n{}",
        served.logs()
    );

    let mut customers = served.customers().await;
    let mut usage = UsageClient::connect(served.grpc.clone()).await.unwrap();
    usage
        .create_meter(req(
            CreateMeterRequest {
                key: "calls".into(),
                aggregation: Aggregation::Count as i32,
                ..Default::default()
            },
            &key,
        ))
        .await
        .unwrap();
    let create = |x: &str| CreateCustomerRequest {
        external_id: x.into(),
        email: format!("{x}@example.com"),
        ..Default::default()
    };
    // The replica's lag is the age of the last transaction it replayed: "first" (or a later
    // one) once replay is paused, so it passes the bound no sooner than max_lag after this.
    let before_first = tokio::time::Instant::now();
    customers
        .create_customer(idem(create("first"), &key, "create-first"))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            listed(&served, &key).await == ["first"]
        })
        .await,
        "replicated"
    );

    // Replay paused: the replica keeps what it has while the primary moves on.
    replay(&replica_db, "pause").await;
    let second = customers
        .create_customer(idem(create("second"), &key, "create-second"))
        .await
        .unwrap()
        .into_inner();
    let list = listed(&served, &key).await;
    assert!(
        before_first.elapsed() < max_lag,
        "still within the bound (else this machine is too slow for the test's bound)"
    );
    assert_eq!(
        list,
        ["first"],
        "a List within the bound is served by the (paused) replica"
    );
    let got = customers
        .get_customer(req(by_id(&second.id), &key))
        .await
        .expect("a Get reads the primary: it sees the caller's own write");
    assert_eq!(got.into_inner().external_id, "second");
    // GetUsage finds its customer in the replica's own read; one the replica does not have
    // yet is looked up on the primary and answered, not refused NOT_FOUND.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let usage_of = |x: &str| GetUsageRequest {
        customer: Some(get_usage_request::Customer::ExternalId(x.into())),
        meter_key: "calls".into(),
        from: Some(prost_types::Timestamp {
            seconds: now - 3600,
            nanos: 0,
        }),
        to: Some(prost_types::Timestamp {
            seconds: now + 60,
            nanos: 0,
        }),
        window: UsageWindow::Hour as i32,
    };
    let read = usage
        .get_usage(req(usage_of("second"), &key))
        .await
        .expect("a customer the replica has not replayed yet is found on the primary")
        .into_inner();
    assert_eq!(read.total.unwrap().events, 0);
    assert!(
        before_first.elapsed() < max_lag,
        "the replica was still in use for that read"
    );
    let unknown = usage
        .get_usage(req(usage_of("nobody"), &key))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

    // Past the bound, reads fall back to the primary, though replay is still paused.
    assert!(
        eventually(max_lag + Duration::from_secs(5), || async {
            metric(&admin, in_use).await == 0.0
        })
        .await,
        "the lag passes the bound"
    );
    assert!(before_first.elapsed() >= max_lag, "not before the bound");
    assert_eq!(listed(&served, &key).await, ["first", "second"]);
    assert!(metric(&admin, "coffer_database_read_replica_fallbacks_total").await >= 1.0);
    assert!(metric(&admin, "coffer_database_read_replica_lag_milliseconds").await >= 3000.0);

    // Replay resumed: the replica catches up and serves reads again.
    replay(&replica_db, "resume").await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&admin, in_use).await == 1.0
        })
        .await,
        "back on the replica"
    );
    assert_eq!(listed(&served, &key).await, ["first", "second"]);
    drop(served);
    pool.close().await;
}

fn state(dir: &Path) -> PathBuf {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    state
}
