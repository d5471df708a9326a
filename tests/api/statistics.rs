//! Coffer keeps its tables' planner statistics without autovacuum: a table whose rows moved by
//! more than its size is analysed, and one that did not move is left alone.

use std::time::Duration;

use coffer::app::sweeper::analyze_moved;

use crate::helpers::{TestApp, eventually};

#[tokio::test]
async fn tables_whose_rows_moved_are_analysed_and_the_others_are_not() {
    let app = TestApp::spawn().await;
    let tenant: uuid::Uuid = sqlx::query_scalar("SELECT id FROM tenants WHERE name = 'acme'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO customers (tenant_id, id, external_id, created_at, updated_at)
         SELECT $1, gen_random_uuid(), 'c-' || i, now(), now() FROM generate_series(1, 500) i",
    )
    .bind(tenant)
    .execute(&app.pool)
    .await
    .unwrap();
    let analysed = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, f32>("SELECT reltuples FROM pg_class WHERE relname = 'customers'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    // The server's own loop or this call analyses it, once the counters show the rows.
    let done = eventually(Duration::from_secs(10), || async {
        analyze_moved(&app.app).await.unwrap();
        analysed(app.pool.clone()).await >= 500.0
    })
    .await;
    assert!(done, "customers analysed after 500 new rows");
    let again = analyze_moved(&app.app).await.unwrap();
    assert!(
        !again.iter().any(|t| t == "customers"),
        "not analysed again until its rows move by its size: {again:?}"
    );
}
