//! The `coffer` binary: parse the command line, set up telemetry, run the command.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Parser;
use coffer::app::tenants::KeyFor;
use coffer::app::{App, IdempotencyConfig};
use coffer::config::{
    BenchCommand, Cli, Command, DbArgs, KeyCommand, ServeArgs, TenantCommand, WebhooksArgs,
};
use coffer::domain::auth::{Scopes, TenantName};
use coffer::domain::ids::KeyId;
use coffer::pg_local::{self, Located, Source};
use coffer::settings::{self, Settings};
use coffer::startup::{Server, ServerConfig};
use coffer::store::pool::{self, PoolConfig, Pooler};
use sqlx::PgPool;
use sqlx::postgres::PgConnectOptions;

/// mimalloc rather than glibc's malloc: see Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _telemetry = coffer::telemetry::init(cli.global.log_format)?;
    let state_dir = cli.global.state_dir.clone();
    let db = cli.global.db.clone();
    // Without --dev, serve needs a URL; the other commands may use the private cluster the
    // state directory records (the one `serve --dev` made), but never start or pick another.
    let find = match (&cli.command, cli.global.dev) {
        (_, true) => Find::Dev,
        (Command::Serve(_), false) => Find::Nothing,
        _ => Find::Recorded,
    };
    match cli.command {
        Command::Serve(args) => serve(args, find, &db, &state_dir).await,
        Command::Migrate => {
            // open_database applies the migrations.
            open_database(&db, &state_dir, find, Announce::Stderr)
                .await?
                .close()
                .await;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::Webhooks(args) => webhooks(args).await,
        Command::Tenant(cmd) => tenant(cmd, find, &db, &state_dir).await,
        Command::Key(cmd) => key(cmd, find, &db, &state_dir).await,
        Command::Bench(BenchCommand::Customers(args)) => {
            let database = open_database(&db, &state_dir, find, Announce::Stderr).await?;
            let report = coffer::bench::customers(&args, &state_dir, &database.pool).await;
            database.close().await;
            print!("{}", report.context("running the benchmark")?);
            Ok(())
        }
        Command::Bench(BenchCommand::CheckAccess(args)) => {
            let database = open_database(&db, &state_dir, find, Announce::Stderr).await?;
            let report = coffer::bench::check_access(&args, &state_dir, &database.pool).await;
            database.close().await;
            print!("{}", report.context("running the benchmark")?);
            Ok(())
        }
        Command::Bench(BenchCommand::UsageQuery(args)) => {
            let report = coffer::bench::usage_query(&args, &state_dir).await;
            print!("{}", report.context("running the benchmark")?);
            Ok(())
        }
        Command::Bench(BenchCommand::Webhooks(args)) => {
            let database = open_database(&db, &state_dir, find, Announce::Stderr).await?;
            let report = coffer::bench::webhooks(&args, &database.pool).await;
            database.close().await;
            print!("{}", report.context("running the benchmark")?);
            Ok(())
        }
        Command::Bench(BenchCommand::All(args)) => {
            let database = open_database(&db, &state_dir, find, Announce::Stderr).await?;
            let dev = find == Find::Dev;
            let measured = bench_all(&args, &state_dir, &db, dev, &database.pool).await;
            database.close().await;
            let (report, plots) = measured?;
            print!("{report}");
            eprintln!(
                "wrote {} and {} plots: {}",
                args.out.join("latest.md").display(),
                plots.len(),
                plots
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        Command::Bench(BenchCommand::Usage(args)) => {
            let database = open_database(&db, &state_dir, find, Announce::Stderr).await?;
            let report = coffer::bench::usage(&args, &state_dir, &database.pool).await;
            database.close().await;
            print!("{}", report.context("running the benchmark")?);
            Ok(())
        }
    }
}

/// `bench all`: with `--dev` and no `--server-pid`, against `serve --dev` servers of its own
/// (this binary, state directory and database); otherwise against the servers named.
async fn bench_all(
    args: &coffer::config::AllBenchArgs,
    state_dir: &Path,
    db: &DbArgs,
    dev: bool,
    pool: &PgPool,
) -> anyhow::Result<(String, Vec<std::path::PathBuf>)> {
    use coffer::bench::{Launcher, Servers, Target};
    let (servers, how) = if dev && args.server_pid.is_none() {
        let launcher = Launcher {
            exe: std::env::current_exe().context("finding this binary")?,
            state_dir: state_dir.to_owned(),
            database_name: db.database_name.clone(),
            log_dir: args.out.clone(),
        };
        (
            Servers::Start(launcher),
            format!(
                "against `serve --dev` servers started by the suite (database {})",
                db.database_name
            ),
        )
    } else {
        let servers = Servers::Running {
            default: Target {
                endpoint: args.endpoint.clone(),
                url: args.url.clone(),
                pid: args.server_pid,
            },
            ingest_only: args.ingest_only_url.as_ref().map(|url| Target {
                endpoint: args.endpoint.clone(),
                url: url.clone(),
                pid: args.ingest_only_pid,
            }),
        };
        (servers, format!("against the server at {}", args.endpoint))
    };
    let suite = coffer::bench::all(args, state_dir, pool, servers)
        .await
        .context("running the benchmark suite")?;
    Ok(coffer::bench::write_results(&suite, args, &how)?)
}

/// How long closing the pool may wait for connections still in use.
const POOL_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// An open database, and the private cluster this process started for it, if any.
struct Database {
    pool: PgPool,
    started_private: Option<std::path::PathBuf>,
}

impl Database {
    /// Closes the pool and stops a private cluster this process started. One that was already
    /// running may be serving a test run or another process, so it is left alone.
    async fn close(self) {
        // A task abandoned at the drain deadline may still hold a connection; closing waits for
        // every connection, so it is bounded too, and the rest are dropped with the process.
        if tokio::time::timeout(POOL_CLOSE_TIMEOUT, self.pool.close())
            .await
            .is_err()
        {
            tracing::warn!("database connections still busy: not waiting for them");
        }
        if let Some(dir) = self.started_private {
            tracing::info!(dir = %dir.display(), "stopping the private Postgres");
            let _ = tokio::task::spawn_blocking(move || pg_local::stop_private(&dir)).await;
        }
    }
}

/// `--database-direct-url`, which `--db-pooler transaction` requires.
fn direct_options(db: &DbArgs) -> anyhow::Result<Option<PgConnectOptions>> {
    match &db.database_direct_url {
        Some(url) if !url.is_empty() => Ok(Some(
            url.parse::<PgConnectOptions>()
                .context("--database-direct-url")?,
        )),
        _ if db.db_pooler == Pooler::Transaction => bail!(
            "--db-pooler transaction needs --database-direct-url (COFFER_DATABASE_DIRECT_URL): \
             creating the database and migrating need a session of their own, which a \
             transaction pooler does not keep"
        ),
        _ => Ok(None),
    }
}

/// Where a command looks for Postgres when it is given no URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Find {
    /// `--dev`: as `serve --dev` does (the recorded private cluster, localhost:5432, or a new
    /// private cluster).
    Dev,
    /// Only the private cluster the state directory records.
    Recorded,
    /// Nowhere: `serve` without `--dev` needs a URL.
    Nothing,
}

/// How the chosen database is announced: a line on stderr for a person at a shell, a log
/// event for the server (whose stderr is its log stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Announce {
    Stderr,
    Log,
}

/// Finds the database (`DATABASE_URL`, else as `find` says, with the database named by
/// `--database-name`), says which it is, creates it if missing and applies migrations.
async fn open_database(
    db: &DbArgs,
    state_dir: &Path,
    find: Find,
    announce: Announce,
) -> anyhow::Result<Database> {
    let located = match &db.database_url {
        Some(url) if !url.is_empty() => Located {
            options: url.parse::<PgConnectOptions>().context("DATABASE_URL")?,
            source: Source::DatabaseUrl,
        },
        _ => {
            let mut located = match find {
                Find::Dev => pg_local::locate(state_dir).await?,
                Find::Recorded => pg_local::recorded(state_dir).await?.with_context(|| {
                    format!(
                        "no database given: set DATABASE_URL (or --database-url), or pass --dev \
                         to use the one `serve --dev` uses (Postgres on 127.0.0.1:5432, or a \
                         private cluster under {})",
                        state_dir.display()
                    )
                })?,
                Find::Nothing => bail!(
                    "DATABASE_URL is not set (or run `coffer serve --dev` to find a local Postgres)"
                ),
            };
            located.options = located.options.database(&db.database_name);
            located
        }
    };
    match announce {
        Announce::Stderr => eprintln!("using {}", located.describe()),
        Announce::Log => tracing::info!(database = %located.describe(), "using the database"),
    }
    let private = match located.source {
        Source::Private {
            dir, started: true, ..
        } => Some(dir),
        _ => None,
    };
    let options = located.options;
    let opened = async {
        let direct = direct_options(db)?;
        pool::create_database_if_missing(direct.as_ref().unwrap_or(&options))
            .await
            .context("connecting to Postgres to create the database")?;
        let pool = pool::pool(&options, &db.pool_config());
        match &direct {
            // The migrator's session advisory lock needs a session of its own.
            Some(direct) => {
                let config = PoolConfig {
                    max_connections: 1,
                    pooler: Pooler::None,
                    ..db.pool_config()
                };
                let migrating = pool::pool(direct, &config);
                let migrated = pool::migrate(&migrating).await;
                migrating.close().await;
                migrated.context("applying migrations (--database-direct-url)")?;
            }
            None => pool::migrate(&pool).await.context("applying migrations")?,
        }
        anyhow::Ok(pool)
    }
    .await;
    match opened {
        Ok(pool) => Ok(Database {
            pool,
            started_private: private,
        }),
        Err(e) => {
            // Leave nothing running that this command started.
            if let Some(dir) = private {
                let _ = tokio::task::spawn_blocking(move || pg_local::stop_private(&dir)).await;
            }
            Err(e)
        }
    }
}

async fn serve(args: ServeArgs, find: Find, db: &DbArgs, state_dir: &Path) -> anyhow::Result<()> {
    // The configuration file is read before the database is opened, so a typo fails fast; its
    // tenants are found once the database is open.
    let draft = match &args.config {
        Some(path) => Some(settings::read(path, &|var| std::env::var(var).ok())?),
        None => None,
    };
    let database = open_database(db, state_dir, find, Announce::Log).await?;
    // Whatever happens next, close the database (and a private cluster this process started).
    let result = run_server(&args, db, find == Find::Dev, &database, state_dir, draft).await;
    database.close().await;
    result
}

async fn run_server(
    args: &ServeArgs,
    db: &DbArgs,
    dev: bool,
    database: &Database,
    state_dir: &Path,
    draft: Option<settings::Draft>,
) -> anyhow::Result<()> {
    let settings = match draft {
        None => Settings::default(),
        Some(draft) => {
            let tenants = App::new(database.pool.clone())
                .tenants
                .list_tenants()
                .await?;
            let by_name = tenants.into_iter().map(|t| (t.name, t.id)).collect();
            draft.resolve(&by_name)?
        }
    };
    tracing::info!(accounts = settings.accounts().len(), "configuration read");
    let idempotency = IdempotencyConfig {
        lease: args.idempotency_lease,
        work_timeout: args.work_timeout,
    };
    idempotency
        .check(db.db_statement_timeout)
        .map_err(|e| anyhow::anyhow!("--work-timeout / --idempotency-lease: {e}"))?;
    if db.db_pooler != Pooler::None {
        // Behind a pooler the timeout is the role's (docs/operations.md), not the flag's.
        match pool::session_statement_timeout(&database.pool).await {
            Ok(t) if t == db.db_statement_timeout => {}
            Ok(t) => tracing::warn!(
                role = %humantime::format_duration(t),
                flag = %humantime::format_duration(db.db_statement_timeout),
                "statement_timeout through the pooler differs from --db-statement-timeout \
                 (zero: none); set it on the role: ALTER ROLE ... SET statement_timeout"
            ),
            Err(e) => tracing::warn!(error = %e, "could not read statement_timeout"),
        }
    }
    let read_replica = match args.database_read_url.as_deref() {
        Some(url) if !url.is_empty() => {
            let options = url
                .parse::<PgConnectOptions>()
                .context("--database-read-url")?;
            Some(coffer::store::replica::ReadReplica {
                pool: pool::pool(&options, &db.pool_config()),
                bound: coffer::store::replica::ReplicaBound {
                    max_lag: args.database_read_max_lag,
                    check_interval: args.database_read_check_interval,
                },
            })
        }
        _ => None,
    };
    let config = ServerConfig {
        read_replica,
        grpc_addr: args.grpc_addr,
        admin_addr: args.admin_addr,
        http_addr: Some(args.http_addr),
        tls: args
            .tls_cert
            .clone()
            .zip(args.tls_key.clone())
            .map(|(cert, key)| coffer::grpc::tls::TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca.clone(),
            }),
        webhooks: coffer::app::events::WebhookConfig {
            tolerance: args.webhook_tolerance,
            payload_retention: args.webhook_payload_retention,
            ..Default::default()
        },
        webhook_trusted_proxies: args.webhook_trusted_proxies.clone().unwrap_or_default().0,
        http_limits: args.http_limits.limits(),
        changes: coffer::app::changes::ChangesConfig {
            retention: args.subscription_events_retention,
            ..Default::default()
        },
        health_interval: args.health_interval,
        shutdown_grace: args.shutdown_grace,
        idempotency,
        inbox: coffer::app::inbox::InboxConfig {
            workers: args.inbox_workers as usize,
            batch: args.inbox_batch,
            poll: args.inbox_poll,
            ..Default::default()
        },
        usage_push: coffer::app::usage_push::PushConfig {
            interval: args.usage_push_interval,
            resend_after: args.usage_push_resend_after,
            ..Default::default()
        },
        drain_timeout: args.drain_timeout,
        max_calls: args.max_calls as usize,
        max_streams: args.max_streams as usize,
        max_streams_per_connection: args.max_streams_per_connection,
        max_connections: args.max_connections as usize,
        handshake_timeout: args.handshake_timeout,
        http2_keepalive_interval: args.http2_keepalive_interval,
        http2_keepalive_timeout: args.http2_keepalive_timeout,
        tcp_keepalive: args.tcp_keepalive,
        settings: Arc::new(settings),
        sandbox: (dev || args.sandbox).then(|| coffer::providers::sandbox::SandboxConfig {
            public_url: args
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", args.http_addr))
                .trim_end_matches('/')
                .to_owned(),
            delivery: coffer::providers::sandbox::delivery::DeliveryConfig {
                workers: args.sandbox_delivery_workers as usize,
                batch: args.sandbox_delivery_batch,
                poll: args.sandbox_delivery_poll,
                ..Default::default()
            },
            expire_interval: args.sandbox_expire_interval,
            clock_horizon: args.sandbox_clock_horizon,
            ..Default::default()
        }),
        ..ServerConfig::default()
    };
    let server = Server::bind(config, database.pool.clone()).await?;
    if dev {
        let key = coffer::dev::ensure_dev_key(server.app(), state_dir).await?;
        eprintln!(
            "{}",
            coffer::dev::banner(&key, server.grpc_addr(), state_dir)
        );
    }
    Ok(server.run(coffer::shutdown::signal()).await?)
}

/// `coffer webhooks`: the sidecar alone. It needs no database and holds no secret but its
/// system key.
async fn webhooks(args: WebhooksArgs) -> anyhow::Result<()> {
    let key = coffer::domain::auth::ApiKey::parse(args.system_key.trim())
        .map_err(|_| anyhow::anyhow!("COFFER_SYSTEM_KEY is not an API key (ck_...)"))?;
    let config = coffer::webhooks::StandaloneConfig {
        grpc_endpoint: args.grpc_endpoint,
        upstream_tls: coffer::webhooks::UpstreamTls {
            ca: args.grpc_ca,
            identity: args.grpc_client_cert.zip(args.grpc_client_key),
        },
        http_addr: args.http_addr,
        admin_addr: args.admin_addr,
        drain_timeout: args.drain_timeout,
        trusted_proxies: args.webhook_trusted_proxies.unwrap_or_default().0,
        limits: args.http_limits.limits(),
    };
    let sidecar = coffer::webhooks::Standalone::bind(config, &key).await?;
    sidecar.run(coffer::shutdown::signal()).await;
    Ok(())
}

async fn tenant(
    cmd: TenantCommand,
    find: Find,
    db: &DbArgs,
    state_dir: &Path,
) -> anyhow::Result<()> {
    let database = open_database(db, state_dir, find, Announce::Stderr).await?;
    let result = tenant_command(cmd, &App::new(database.pool.clone())).await;
    database.close().await;
    result
}

async fn tenant_command(cmd: TenantCommand, app: &App) -> anyhow::Result<()> {
    match cmd {
        TenantCommand::Create { name } => {
            let name = TenantName::parse(&name).map_err(|e| anyhow::anyhow!("tenant name: {e}"))?;
            let (id, key) = app.tenants.create_tenant(&name).await?;
            eprintln!(
                "created tenant {} ({id}); its key, shown once:",
                name.as_str()
            );
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", key.expose())?;
        }
        TenantCommand::List => {
            for t in app.tenants.list_tenants().await? {
                println!("{}\t{}\t{}", t.id, t.name, t.created_at);
            }
        }
    }
    Ok(())
}

async fn key(cmd: KeyCommand, find: Find, db: &DbArgs, state_dir: &Path) -> anyhow::Result<()> {
    let database = open_database(db, state_dir, find, Announce::Stderr).await?;
    let result = key_command(cmd, &App::new(database.pool.clone())).await;
    database.close().await;
    result
}

async fn key_command(cmd: KeyCommand, app: &App) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Create {
            tenant,
            system,
            scopes,
        } => {
            let scopes =
                Scopes::parse_list(&scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
            let owner = match (tenant, system) {
                (_, true) => KeyFor::System,
                (Some(t), false) => KeyFor::Tenant(
                    TenantName::parse(&t).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?,
                ),
                (None, false) => bail!("give --tenant NAME or --system"),
            };
            let key = app.tenants.create_key(&owner, &scopes).await?;
            eprintln!("created key {} with scopes {scopes}; shown once:", key.id());
            writeln!(std::io::stdout().lock(), "{}", key.expose())?;
        }
        KeyCommand::List => {
            for k in app.tenants.list_keys().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.tenant_name.as_deref().unwrap_or("(system)"),
                    k.scopes.join(","),
                    k.created_at,
                    k.revoked_at
                        .map_or("active".to_owned(), |t| format!("revoked {t}")),
                );
            }
        }
        KeyCommand::Revoke { key_id } => {
            let id = KeyId::parse(&key_id).map_err(|e| anyhow::anyhow!("key id: {e}"))?;
            app.tenants.revoke_key(id).await?;
            eprintln!("revoked {id}");
        }
    }
    Ok(())
}
