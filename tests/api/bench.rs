//! `coffer bench webhooks` against a real server and its sidecar: signed deliveries over real
//! HTTP, each acknowledged only once its inbox row is committed, and the Postgres baseline in
//! a scratch table that is gone afterwards.

use std::time::Duration;

use coffer::bench;
use coffer::config::WebhooksBenchArgs;

use crate::events::{Env, SANDBOX_SECRET};

fn args(env: &Env, secret: Option<&str>) -> WebhooksBenchArgs {
    WebhooksBenchArgs {
        url: format!("http://{}", env.app.http_addr.expect("the sidecar runs")),
        account: "shop-sandbox".into(),
        webhook_secret: secret.map(str::to_owned),
        concurrency: 8,
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(100),
    }
}

async fn bench_rows(env: &Env) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events
         WHERE account = 'shop-sandbox' AND provider_event_id LIKE 'msg_bench_%'",
    )
    .fetch_one(&env.app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn bench_webhooks_counts_committed_deliveries_next_to_the_postgres_baseline() {
    let env = Env::spawn().await;
    let pool = env.app.pool.clone();

    // No secret given and none kept for the account: nothing is sent.
    let refused = bench::webhooks(&args(&env, None), &pool).await;
    let error = refused.err().expect("no secret").to_string();
    assert!(error.contains("COFFER_BENCH_WEBHOOK_SECRET"), "{error}");
    assert_eq!(env.rows().await, 0);

    // The wrong secret: every delivery is refused by the core, and counted as an error.
    let forged = bench::webhooks(&args(&env, Some("whsec_Zm9yZ2VkLXNlY3JldA==")), &pool)
        .await
        .unwrap();
    let delivered = &forged.measurements[0];
    assert_eq!(delivered.ok, 0, "{forged}");
    assert!(delivered.errors > 0, "{forged}");
    assert!(
        delivered
            .first_error
            .as_deref()
            .is_some_and(|e| e.contains("400") && e.contains("invalid signature")),
        "{forged}"
    );
    assert_eq!(env.rows().await, 0);

    // The secret the sandbox keeps for the account, as it does for `{tenant}-sandbox`.
    sqlx::query(
        "INSERT INTO sandbox_accounts (tenant_id, account, webhook_secret, created_at)
         SELECT id, 'shop-sandbox', $1, now() FROM tenants WHERE name = 'shop'",
    )
    .bind(SANDBOX_SECRET)
    .execute(&pool)
    .await
    .unwrap();
    let report = bench::webhooks(&args(&env, None), &pool).await.unwrap();
    let (delivered, inserted) = (&report.measurements[0], &report.measurements[1]);
    assert!(delivered.ok > 0 && delivered.errors == 0, "{report}");
    assert!(inserted.ok > 0 && inserted.errors == 0, "{report}");
    // Every acknowledged delivery is a committed row (the warm-up's too).
    assert!(bench_rows(&env).await >= delivered.ok as i64, "{report}");
    let printed = report.to_string();
    assert!(
        printed.contains("http POST /webhooks/shop-sandbox (signed)")
            && printed.contains("postgres INSERT webhook_event (1 row/tx)")
            && printed.contains("deliveries/s / Postgres insert rows/s: "),
        "{printed}"
    );
    let scratch: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('bench_baseline_webhook_events')::text")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(scratch, None, "the baseline's table is dropped");
}
