//! Connecting: the pool, creating the database when it is missing, migrations, health pings.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use super::{MIGRATOR, StoreError};

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_connections: u32,
    /// How long a call waits for a free connection before failing UNAVAILABLE.
    pub acquire_timeout: Duration,
    /// Server-side cap on any one statement, so a runaway query cannot hold a connection.
    pub statement_timeout: Duration,
    /// What stands between Coffer and Postgres.
    pub pooler: Pooler,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(10),
            pooler: Pooler::None,
        }
    }
}

/// A connection pooler in front of Postgres (`--db-pooler`).
///
/// Either way Coffer sends no startup `options` and no `extra_float_digits` (PgBouncer refuses
/// startup parameters it does not know), so the session settings those carried belong on the
/// role: `ALTER ROLE ... SET statement_timeout = ...` (docs/operations.md). A session `SET`
/// would not do: under transaction pooling it lands on whichever server connection ran it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Pooler {
    /// Connections go straight to Postgres.
    #[default]
    None,
    /// PgBouncer in `pool_mode = session`: a server connection is the client's for as long as
    /// the client holds it, so everything works as without it. The only mode Debian 12's
    /// PgBouncer 1.18 serves Coffer in.
    Session,
    /// PgBouncer in `pool_mode = transaction`: a server connection is the client's for one
    /// transaction. Needs PgBouncer 1.21 or later with `max_prepared_statements` above 0: sqlx
    /// prepares every statement under a name of its own, one connection's names clash with
    /// another's on a shared server connection, and only PgBouncer's own tracking (1.21+)
    /// keeps them apart. A smaller statement cache does not help: sqlx 0.9 still names each
    /// statement, it just never reuses (or closes) them.
    Transaction,
}

/// A pool on `options`' database. Connections are opened lazily, so a pool exists even while
/// the database is down; health checks report that state.
pub fn pool(options: &PgConnectOptions, config: &PoolConfig) -> PgPool {
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        // No ping before every acquire: it is a round trip per call on the hot path. A dead
        // connection fails its query as UNAVAILABLE (retryable) and the pool drops it, and
        // the health watcher reports the outage.
        .test_before_acquire(false)
        .connect_lazy_with(connect_options(options, config))
}

/// `options` with Coffer's session settings, in the form `config.pooler` lets through.
pub fn connect_options(options: &PgConnectOptions, config: &PoolConfig) -> PgConnectOptions {
    let options = options.clone().application_name("coffer");
    if config.pooler != Pooler::None {
        return options.extra_float_digits(None);
    }
    let statement_ms = config.statement_timeout.as_millis();
    options.options([
        ("statement_timeout", format!("{statement_ms}ms")),
        // A client that opens a transaction and hangs cannot hold its locks (or an
        // idempotency claim) for long.
        (
            "idle_in_transaction_session_timeout",
            format!("{}ms", 3 * statement_ms),
        ),
        // Plan each prepared statement once. Postgres otherwise re-plans a statement for its
        // parameters on every execution until it trusts a generic plan, and the batch
        // statements' CTEs cost more to plan than to run (measured: +25% creates/s, see
        // BENCHMARKS.md). Statements are written for it: no predicate that only an optional
        // parameter's value could simplify (`$1 IS NULL OR ...`) — such a lookup is two
        // statements.
        ("plan_cache_mode", "force_generic_plan".to_owned()),
        // No JIT compilation. A generic plan's row estimates are guesses, so a statement that
        // touches a few hundred rows can be costed above `jit_above_cost` and compiled on
        // every execution: measured on GetUsage's statement, 60 ms of compiling for 1.5 ms of
        // work. Coffer's statements are all short; none gains from JIT.
        ("jit", "off".to_owned()),
    ])
}

/// The `statement_timeout` the pool's sessions start with (zero: none). Behind a pooler it comes
/// from the role or database, not from Coffer.
pub async fn session_statement_timeout(pool: &PgPool) -> Result<Duration, sqlx::Error> {
    let ms: i64 = sqlx::query_scalar(
        "SELECT (EXTRACT(epoch FROM current_setting('statement_timeout')::interval) * 1000)::int8",
    )
    .fetch_one(pool)
    .await?;
    Ok(Duration::from_millis(ms.max(0) as u64))
}

/// Creates `options`' database when it does not exist (through the `postgres` database).
pub async fn create_database_if_missing(options: &PgConnectOptions) -> Result<bool, StoreError> {
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let exists: bool = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS "e!""#,
        name
    )
    .fetch_one(&mut admin)
    .await?;
    if exists {
        return Ok(false);
    }
    let sql = format!("CREATE DATABASE {}", quote_ident(&name));
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await
    {
        Ok(_) => Ok(true),
        // Another process created it first (42P04 duplicate_database), or the catalog's unique
        // index caught the race (23505).
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P04" | "23505")) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Drops a database, closing its connections (used by tests and the benchmark's scratch data).
pub async fn drop_database(options: &PgConnectOptions, name: &str) -> Result<(), StoreError> {
    let mut admin = PgConnection::connect_with(&options.clone().database("postgres")).await?;
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await?;
    Ok(())
}

pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Pings the database for health on a connection of its own, outside the pool: readiness
/// measures whether the database answers, not whether the pool has a connection free. A busy
/// pool is load, which concurrency limits and acquire timeouts deal with; reporting it as
/// NOT_SERVING would make a load balancer drain every replica at once.
pub struct Pinger {
    options: PgConnectOptions,
    conn: Option<PgConnection>,
}

/// A pool of one connection of its own beside `pool`, with the same settings and named
/// `name`, for a session that holds its connection for good (the change feed's LISTEN), so
/// the calls' pool keeps all of its connections. It connects on first use.
pub fn side_pool(pool: &PgPool, name: &str) -> PgPool {
    let options = (*pool.connect_options()).clone().application_name(name);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options)
}

impl Pinger {
    /// A pinger for the database `pool` connects to, with the same settings. It connects on the
    /// first ping.
    pub fn new(pool: &PgPool) -> Self {
        let options = (*pool.connect_options())
            .clone()
            .application_name("coffer health");
        Self {
            options,
            conn: None,
        }
    }

    /// Whether the database answers within `timeout`, connecting again when the last connection
    /// failed.
    pub async fn ping(&mut self, timeout: Duration) -> bool {
        let conn = &mut self.conn;
        let check = async {
            let c = match conn {
                Some(c) => c,
                None => conn.insert(PgConnection::connect_with(&self.options).await?),
            };
            sqlx::query_scalar!("SELECT 1").fetch_one(c).await
        };
        let up = matches!(tokio::time::timeout(timeout, check).await, Ok(Ok(_)));
        if !up {
            // Broken, or cut off mid-query by the timeout: either way not to be used again.
            self.conn = None;
        }
        up
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behind_a_pooler_no_startup_options_are_sent() {
        let base = PgConnectOptions::new().host("127.0.0.1").database("coffer");
        let direct = connect_options(&base, &PoolConfig::default());
        let sent = direct.get_options().unwrap();
        assert!(sent.contains("statement_timeout=10000ms"), "{sent}");
        assert!(sent.contains("jit=off"), "{sent}");
        for pooler in [Pooler::Session, Pooler::Transaction] {
            let config = PoolConfig {
                pooler,
                ..PoolConfig::default()
            };
            let behind = connect_options(&base, &config);
            assert_eq!(behind.get_options(), None, "{pooler:?}");
            assert_eq!(behind.get_application_name(), Some("coffer"));
        }
    }
}
