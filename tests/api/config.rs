//! Flags reach what they configure.

use std::time::Duration;

use clap::Parser;
use coffer::config::Cli;
use coffer::store::StoreError;
use coffer::store::pool;

use crate::helpers::TestDb;

#[tokio::test]
async fn pool_flags_reach_the_pool_and_the_server_session() {
    let db = TestDb::new().await;
    let cli = Cli::try_parse_from([
        "coffer",
        "--db-max-connections",
        "3",
        "--db-acquire-timeout",
        "700ms",
        "--db-statement-timeout",
        "300ms",
        "migrate",
    ])
    .unwrap();
    let pool = pool::pool(&db.options, &cli.global.db.pool_config());
    assert_eq!(pool.options().get_max_connections(), 3);
    assert_eq!(
        pool.options().get_acquire_timeout(),
        Duration::from_millis(700)
    );

    let (statement, idle): (String, String) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'),
                current_setting('idle_in_transaction_session_timeout')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((statement.as_str(), idle.as_str()), ("300ms", "900ms"));
    let slow = sqlx::query("SELECT pg_sleep(2)")
        .execute(&pool)
        .await
        .map_err(StoreError::from)
        .unwrap_err();
    // A statement ended by the timeout is retryable, never an internal error.
    assert!(slow.is_retryable());
    let StoreError::Timeout(sqlx::Error::Database(e)) = slow else {
        panic!("a cancelled statement is a timeout: {slow:?}");
    };
    assert_eq!(e.code().as_deref(), Some("57014"), "query_canceled");

    // Three connections held: a fourth acquire gives up after the acquire timeout.
    let held = [
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
        pool.acquire().await.unwrap(),
    ];
    let started = std::time::Instant::now();
    let timed_out = pool.acquire().await.map_err(StoreError::from).unwrap_err();
    assert!(matches!(
        timed_out,
        StoreError::Unavailable(sqlx::Error::PoolTimedOut)
    ));
    assert!(started.elapsed() >= Duration::from_millis(600));
    drop(held);
    pool.close().await;
}
