//! `coffer bench webhooks` against a real server and its sidecar: signed deliveries over real
//! HTTP, each acknowledged only once its inbox row is committed, and the Postgres baseline in
//! a scratch table that is gone afterwards.

use std::time::Duration;

use coffer::bench;
use coffer::config::{AllBenchArgs, WebhooksBenchArgs};
use coffer::providers::sandbox::SandboxConfig;

use crate::binary::TempDir;
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

#[tokio::test]
async fn bench_all_writes_the_table_and_a_plot_per_scenario() {
    let env = Env::spawn_with(|c| coffer::startup::ServerConfig {
        sandbox: Some(SandboxConfig {
            public_url: "http://127.0.0.1:8089".into(),
            ..SandboxConfig::default()
        }),
        ..c
    })
    .await;
    let pool = env.app.pool.clone();
    let dir = TempDir::new();
    let args = AllBenchArgs {
        endpoint: format!("http://{}", env.app.addr),
        url: format!("http://{}", env.app.http_addr.expect("the sidecar runs")),
        // The test server runs in this process.
        server_pid: Some(std::process::id() as i32),
        ingest_only_url: None,
        ingest_only_pid: None,
        key: Some(env.shop_key.clone()),
        account: "shop-sandbox".into(),
        webhook_secret: Some(SANDBOX_SECRET.into()),
        concurrency_levels: vec![1, 4],
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(50),
        connections: 2,
        scenarios: Vec::new(),
        events: 500,
        batch_size: 10,
        out: dir.0.join("results"),
        plots: Some(dir.0.join("plots")),
    };
    let suite = bench::all(
        &args,
        &dir.0,
        &pool,
        bench::Servers::Running {
            default: bench::Target {
                endpoint: args.endpoint.clone(),
                url: args.url.clone(),
                pid: args.server_pid,
            },
            ingest_only: None,
        },
    )
    .await
    .unwrap();
    let (report, plots) = bench::write_results(&suite, &args, "in the API test").unwrap();

    // Every scenario but the ingest-only one (no second server given) at both levels, each
    // next to its baseline, all calls answered, and the server's CPU counted.
    let ran: Vec<_> = bench::Scenario::ALL
        .into_iter()
        .filter(|s| *s != bench::Scenario::WebhooksIngestOnly)
        .collect();
    assert_eq!(suite.points.len(), ran.len() * 2, "{report}");
    for p in &suite.points {
        assert!(p.op.ok > 0 && p.op.errors == 0, "{report}");
        assert!(p.baseline.ok > 0 && p.baseline.errors == 0, "{report}");
        assert!(p.op_cpu.server.is_some_and(|s| s > 0.0), "{report}");
        assert!(p.ratio().is_some_and(|r| r > 0.0), "{report}");
    }
    assert!(suite.first_errors.is_empty(), "{report}");
    assert!(
        suite
            .skipped
            .iter()
            .any(|s| s.starts_with("webhooks-ingest-only")),
        "{report}"
    );

    let latest = std::fs::read_to_string(args.out.join("latest.md")).unwrap();
    assert_eq!(latest, report);
    for s in &ran {
        assert!(
            latest.contains(&format!("| {} | 4 |", s.name())),
            "{latest}"
        );
    }
    assert!(latest.contains("server CPU s/1k ops"), "{latest}");
    let mut names: Vec<_> = plots
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<_> = ran.iter().map(|s| format!("{}.png", s.name())).collect();
    expected.sort();
    assert_eq!(names, expected);
    for plot in &plots {
        assert!(plot.starts_with(dir.0.join("plots")));
        let bytes = std::fs::read(plot).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{}",
            plot.display()
        );
        assert!(
            bytes.len() > 10_000,
            "{}: {} bytes",
            plot.display(),
            bytes.len()
        );
    }
}
