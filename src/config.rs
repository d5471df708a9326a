//! Command-line flags, each with an environment fallback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::domain::cidr::Cidr;
use crate::store::pool::{PoolConfig, Pooler};

#[derive(Debug, Parser)]
#[command(name = "coffer", version, about = "Payments and billing over gRPC")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Log format: json for machines, pretty for people.
    #[arg(long, env = "COFFER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
    /// Where `serve --dev` keeps its key and private Postgres.
    #[arg(
        long,
        env = "COFFER_STATE_DIR",
        default_value = ".coffer",
        global = true
    )]
    pub state_dir: PathBuf,
    /// Find or start the development database as `serve --dev` does (Postgres on
    /// localhost:5432 or a private cluster under the state directory). `serve`: also create
    /// the `dev` tenant and print its key. Without it, `serve` needs DATABASE_URL, and the
    /// other commands need it too unless the state directory records a private cluster.
    #[arg(long, env = "COFFER_DEV", global = true)]
    pub dev: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Postgres URL. Without it, `--dev` finds Postgres on localhost:5432 or a private
    /// cluster under the state directory.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// A Postgres URL that bypasses the pooler, for what a transaction pooler cannot carry:
    /// creating the database and migrating (sqlx's migrator holds a session advisory lock).
    /// Required with `--db-pooler transaction`; the same database as DATABASE_URL.
    #[arg(
        long,
        env = "COFFER_DATABASE_DIRECT_URL",
        hide_env_values = true,
        global = true
    )]
    pub database_direct_url: Option<String>,
    /// What DATABASE_URL points at: `none` (Postgres itself), `session` (PgBouncer in
    /// pool_mode = session) or `transaction` (PgBouncer 1.21+ in pool_mode = transaction with
    /// max_prepared_statements); see docs/operations.md.
    #[arg(
        long,
        env = "COFFER_DB_POOLER",
        value_enum,
        default_value_t = Pooler::None,
        global = true
    )]
    pub db_pooler: Pooler,
    /// Database name used when the server is found rather than given by URL.
    #[arg(
        long,
        env = "COFFER_DATABASE_NAME",
        default_value = "coffer",
        global = true
    )]
    pub database_name: String,
    /// Most connections in the pool.
    #[arg(
        long,
        env = "COFFER_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: u32,
    /// How long a call waits for a pooled connection (e.g. 3s, 500ms).
    #[arg(long, env = "COFFER_DB_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration, global = true)]
    pub db_acquire_timeout: Duration,
    /// Server-side limit on any one statement.
    #[arg(long, env = "COFFER_DB_STATEMENT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub db_statement_timeout: Duration,
}

impl DbArgs {
    /// The pool settings these flags give.
    pub fn pool_config(&self) -> PoolConfig {
        PoolConfig {
            max_connections: self.db_max_connections,
            acquire_timeout: self.db_acquire_timeout,
            statement_timeout: self.db_statement_timeout,
            pooler: self.db_pooler,
        }
    }
}

// One value, parsed once at start: `serve`'s many flags make its variant large, and boxing it
// would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC server, the admin listener and the workers.
    Serve(ServeArgs),
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run the public webhook sidecar alone, in front of a `coffer serve` at --grpc-endpoint.
    Webhooks(WebhooksArgs),
    /// Load-test a running server next to the machine's own baselines.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "COFFER_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Admin HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long, env = "COFFER_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
    /// Public HTTP listen address of the webhook sidecar (POST /webhooks/{account}).
    #[arg(long, env = "COFFER_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Serve gRPC over TLS with this certificate chain (PEM, leaf first); needs --tls-key.
    /// Reloaded on SIGHUP and when the file changes, without dropping connections.
    #[arg(long, env = "COFFER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "COFFER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates chaining to these CA certificates (PEM): mutual TLS.
    #[arg(long, env = "COFFER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Enable the sandbox provider (always on with --dev): every tenant gets a
    /// `{tenant}-sandbox` account. For development and tests only.
    #[arg(long, env = "COFFER_SANDBOX")]
    pub sandbox: bool,
    /// The public listener's URL as browsers reach it (checkout pages link to it); default
    /// `http://{http_addr}`.
    #[arg(long, env = "COFFER_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Sandbox event delivery workers in this process (0: none; another replica delivers).
    #[arg(long, env = "COFFER_SANDBOX_DELIVERY_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub sandbox_delivery_workers: u32,
    /// Sandbox events a delivery worker claims (and leases) at once.
    #[arg(long, env = "COFFER_SANDBOX_DELIVERY_BATCH", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub sandbox_delivery_batch: u32,
    /// How long an idle sandbox delivery worker waits before looking for due events again.
    #[arg(long, env = "COFFER_SANDBOX_DELIVERY_POLL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub sandbox_delivery_poll: Duration,
    /// How often the sandbox expires open checkout sessions past their expiry on their
    /// account's clock, and applies the renewals and retries due by it (AdvanceClock applies
    /// them at once; this pass finishes what a crash interrupted).
    #[arg(long, env = "COFFER_SANDBOX_EXPIRE_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub sandbox_expire_interval: Duration,
    /// How far ahead of the wall clock Sandbox.AdvanceClock may move an account's clock (at
    /// most 100 years); a later `to` is INVALID_ARGUMENT.
    #[arg(long, env = "COFFER_SANDBOX_CLOCK_HORIZON", default_value = "3653days", value_parser = parse_clock_horizon)]
    pub sandbox_clock_horizon: Duration,
    /// The largest accepted distance between a webhook's signed timestamp and now: its age for
    /// Stripe, either way for the other schemes (as their SDKs check).
    #[arg(long, env = "COFFER_WEBHOOK_TOLERANCE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub webhook_tolerance: Duration,
    /// Proxies in front of the webhook sidecar (comma-separated addresses or CIDR ranges) whose
    /// X-Forwarded-For is believed: a delivery from one is checked against its account's
    /// webhook_source_cidrs by the right-most X-Forwarded-For address that is not itself a
    /// trusted proxy. Without it, a delivery's source is its TCP peer.
    #[arg(long, env = "COFFER_WEBHOOK_TRUSTED_PROXIES", value_parser = cidr_list)]
    pub webhook_trusted_proxies: Option<CidrList>,
    /// How long a processed, ignored or dead webhook event keeps its raw body, which may hold
    /// personal data; after it only the row remains (ListEvents, de-duplication), and the
    /// event can no longer be replayed. Pending and failed events keep theirs.
    #[arg(long, env = "COFFER_WEBHOOK_PAYLOAD_RETENTION", default_value = "90days", value_parser = humantime::parse_duration)]
    pub webhook_payload_retention: Duration,
    /// How often usage is pushed to Stripe's and Polar's meters (a pass that filled its
    /// batch is followed at once).
    #[arg(long, env = "COFFER_USAGE_PUSH_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub usage_push_interval: Duration,
    /// How long a usage batch whose answer was lost (a crash, a timeout, a 429) waits before
    /// it is sent again, unchanged.
    #[arg(long, env = "COFFER_USAGE_PUSH_RESEND_AFTER", default_value = "30s", value_parser = humantime::parse_duration)]
    pub usage_push_resend_after: Duration,
    /// How long the subscription change outbox (WatchSubscriptionEvents) keeps its rows; a
    /// stream resumed from an older cursor is refused with CURSOR_EXPIRED.
    #[arg(long, env = "COFFER_SUBSCRIPTION_EVENTS_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub subscription_events_retention: Duration,
    /// How often the database is checked for health.
    #[arg(long, env = "COFFER_HEALTH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,
    /// How long to report NOT_SERVING before refusing new calls on shutdown.
    #[arg(long, env = "COFFER_SHUTDOWN_GRACE", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// How long an idempotency key stays claimed by an attempt that crashed or hung.
    #[arg(long, env = "COFFER_IDEMPOTENCY_LEASE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idempotency_lease: Duration,
    /// The longest a mutation's database work may run before it is rolled back and its key
    /// released; at most half the lease, and at least the statement timeout.
    #[arg(long, env = "COFFER_WORK_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub work_timeout: Duration,
    /// After the grace period, how long calls in flight have to finish on shutdown; then open
    /// streams and calls still running end with UNAVAILABLE and the process exits.
    #[arg(long, env = "COFFER_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Inbox workers in this process (0: none; another replica applies the webhooks).
    #[arg(long, env = "COFFER_INBOX_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub inbox_workers: u32,
    /// Webhook events an inbox worker claims and applies in one transaction.
    #[arg(long, env = "COFFER_INBOX_BATCH", default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub inbox_batch: u32,
    /// How long an idle inbox worker waits before looking for due events again; also how
    /// often the inbox gauges are refreshed.
    #[arg(long, env = "COFFER_INBOX_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub inbox_poll: Duration,
    /// Unary calls in flight at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "COFFER_MAX_CALLS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_calls: u32,
    /// Streams (Health/Watch, reflection) open at once; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "COFFER_MAX_STREAMS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,
    /// HTTP/2 streams one client connection may have open at once.
    #[arg(long, env = "COFFER_MAX_STREAMS_PER_CONNECTION", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,
    /// Client connections open at once; more are closed as soon as they are accepted.
    #[arg(long, env = "COFFER_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How long a new connection has to send the HTTP/2 preface before it is closed.
    #[arg(long, env = "COFFER_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// How often an HTTP/2 PING checks that a client is still there.
    #[arg(long, env = "COFFER_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    #[arg(long, env = "COFFER_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,
    /// Idle time before TCP keep-alive probes start on a client connection.
    #[arg(long, env = "COFFER_TCP_KEEPALIVE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub tcp_keepalive: Duration,
    #[command(flatten)]
    pub http_limits: HttpLimitsArgs,
    /// A streaming replica of DATABASE_URL's database for reads that tolerate a bounded lag
    /// (List*, GetUsage, GetBalance), with the same pool settings; without it every read goes
    /// to the primary. See docs/configuration.md for the bound.
    #[arg(long, env = "COFFER_DATABASE_READ_URL", hide_env_values = true)]
    pub database_read_url: Option<String>,
    /// The most replay lag at which reads still go to the replica; above it they go to the
    /// primary until it catches up.
    #[arg(long, env = "COFFER_DATABASE_READ_MAX_LAG", default_value = "5s", value_parser = humantime::parse_duration)]
    pub database_read_max_lag: Duration,
    /// How often the replica's lag is measured.
    #[arg(long, env = "COFFER_DATABASE_READ_CHECK_INTERVAL", default_value = "1s", value_parser = positive_duration)]
    pub database_read_check_interval: Duration,
    /// coffer.toml: provider accounts and per-tenant settings, read once at start. Without
    /// it there are no configured accounts and every tenant has the default settings.
    #[arg(long, env = "COFFER_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    /// The core's gRPC endpoint, e.g. http://coffer:50051, or https://coffer:50051 when the
    /// core serves TLS.
    #[arg(long, env = "COFFER_GRPC_ENDPOINT")]
    pub grpc_endpoint: String,
    /// With an https endpoint: the CA certificate (PEM) the core's certificate chains to;
    /// Mozilla's roots without it.
    #[arg(long, env = "COFFER_GRPC_CA")]
    pub grpc_ca: Option<PathBuf>,
    /// With an https endpoint whose core requires client certificates (--tls-client-ca): the
    /// sidecar's certificate (PEM); needs --grpc-client-key.
    #[arg(long, env = "COFFER_GRPC_CLIENT_CERT", requires = "grpc_client_key")]
    pub grpc_client_cert: Option<PathBuf>,
    /// The key of --grpc-client-cert (PEM).
    #[arg(long, env = "COFFER_GRPC_CLIENT_KEY", requires = "grpc_client_cert")]
    pub grpc_client_key: Option<PathBuf>,
    /// Public HTTP listen address (POST /webhooks/{account}).
    #[arg(long, env = "COFFER_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Admin HTTP listen address (/healthz, /readyz).
    #[arg(long, env = "COFFER_ADMIN_ADDR", default_value = "127.0.0.1:9090")]
    pub admin_addr: SocketAddr,
    /// A system key with the events:ingest scope (`coffer key create --system --scopes
    /// events:ingest`). Give it in the environment: a flag shows in the process list.
    #[arg(long, env = "COFFER_SYSTEM_KEY", hide_env_values = true)]
    pub system_key: String,
    /// How long deliveries in flight have to finish on shutdown.
    #[arg(long, env = "COFFER_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Proxies in front of this sidecar (comma-separated addresses or CIDR ranges) whose
    /// X-Forwarded-For is believed: a delivery from one is checked against its account's
    /// webhook_source_cidrs by the right-most X-Forwarded-For address that is not itself a
    /// trusted proxy. Without it, a delivery's source is its TCP peer.
    #[arg(long, env = "COFFER_WEBHOOK_TRUSTED_PROXIES", value_parser = cidr_list)]
    pub webhook_trusted_proxies: Option<CidrList>,
    #[command(flatten)]
    pub http_limits: HttpLimitsArgs,
}

/// What one client may hold on the public (webhook) listener, for `serve` and `webhooks`
/// alike; see docs/configuration.md.
#[derive(Debug, Clone, Args)]
pub struct HttpLimitsArgs {
    /// How long a new connection has to send a complete request head, and a later request
    /// on it from its first byte; then the connection is closed.
    #[arg(long, env = "COFFER_HTTP_HEADER_TIMEOUT", default_value = "5s", value_parser = positive_duration)]
    pub http_header_timeout: Duration,
    /// How long a request body may bring no new bytes before it is cut (408); a slow but
    /// steady body is read to the end.
    #[arg(long, env = "COFFER_HTTP_BODY_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub http_body_timeout: Duration,
    /// How long a keep-alive connection may stay silent between requests.
    #[arg(long, env = "COFFER_HTTP_IDLE_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub http_idle_timeout: Duration,
    /// Connections open at once on the public listener; more are closed as soon as they are
    /// accepted (counted in coffer_public_connections_refused_total).
    #[arg(long, env = "COFFER_HTTP_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: u32,
    /// Connections open at once from one source address (the TCP peer); more from it are
    /// closed on accept (coffer_public_connections_refused_total{reason="source"}). 0 turns
    /// the limit off: behind a load balancer every connection has the balancer's address.
    #[arg(
        long,
        env = "COFFER_HTTP_MAX_CONNECTIONS_PER_SOURCE",
        default_value_t = 512
    )]
    pub http_max_connections_per_source: u32,
}

impl HttpLimitsArgs {
    pub fn limits(&self) -> crate::webhooks::ListenerLimits {
        crate::webhooks::ListenerLimits {
            header_timeout: self.http_header_timeout,
            body_timeout: self.http_body_timeout,
            idle_timeout: self.http_idle_timeout,
            max_connections: self.http_max_connections as usize,
            max_connections_per_source: std::num::NonZeroUsize::new(
                self.http_max_connections_per_source as usize,
            ),
        }
    }
}

/// A duration above zero: a zero timeout would close every connection at once.
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be above zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Address ranges given as one comma-separated value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrList(pub Vec<Cidr>);

/// Spaces around an entry (`a, b`) and empty entries are allowed, so an empty variable (as a
/// deployment template may leave it) is an empty list rather than an error.
fn cidr_list(s: &str) -> Result<CidrList, String> {
    s.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| Cidr::parse(entry).map_err(|e| e.0))
        .collect::<Result<_, _>>()
        .map(CidrList)
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and print its first key (read,write,admin) alone on stdout.
    Create { name: String },
    /// List tenants.
    List,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key and print it alone on stdout. It is shown once, never again.
    Create {
        /// The tenant the key belongs to.
        #[arg(
            long,
            env = "COFFER_KEY_TENANT",
            conflicts_with = "system",
            required_unless_present = "system"
        )]
        tenant: Option<String>,
        /// A system key (events:ingest only), which belongs to no tenant.
        #[arg(long, env = "COFFER_KEY_SYSTEM")]
        system: bool,
        /// Comma-separated: read, write, admin, events:ingest.
        #[arg(long, env = "COFFER_KEY_SCOPES")]
        scopes: String,
    },
    /// List keys (ids and scopes, never secrets).
    List,
    /// Revoke a key; it stops working within a second.
    Revoke {
        /// The key's id, `key_...`, as `coffer key list` shows it.
        key_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// CreateCustomer over gRPC, against Postgres single-row inserts and an empty gRPC call.
    Customers(BenchArgs),
    /// Usage events through StreamUsage and RecordUsage, against the same rows COPYed into
    /// Postgres.
    Usage(UsageBenchArgs),
    /// GetUsage over 30 days of a customer with many events (loaded first).
    UsageQuery(UsageQueryBenchArgs),
    /// Signed webhook deliveries through the sidecar to committed inbox rows, against the
    /// same rows inserted into Postgres one per transaction.
    Webhooks(WebhooksBenchArgs),
    /// CheckAccess (warm: answered from the server's cache) for subscribed customers, against
    /// an empty gRPC call. Needs a server with the sandbox (`serve --dev`).
    CheckAccess(BenchArgs),
    /// Every scenario at each concurrency level, each next to its baseline, with the CPU of
    /// the server, Postgres and the load generator: a table (stdout and `<out>/latest.md`)
    /// and plots. With `--dev` and no `--server-pid`, starts its own `serve --dev` servers.
    All(AllBenchArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AllBenchArgs {
    /// The server to load (ignored when `--dev` starts its own).
    #[arg(
        long,
        env = "COFFER_BENCH_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub endpoint: String,
    /// Its webhook sidecar's base URL (ignored when `--dev` starts its own).
    #[arg(
        long,
        env = "COFFER_BENCH_WEBHOOKS_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// The server's process id, for its CPU per operation. Given, the suite loads the server
    /// at --endpoint and --url; not given, `--dev` starts servers of its own (and knows
    /// theirs), and without `--dev` the server's CPU is not reported.
    #[arg(long, env = "COFFER_BENCH_SERVER_PID")]
    pub server_pid: Option<i32>,
    /// The sidecar of a second server run with `--inbox-workers 0`, for the ingest-only
    /// webhooks scenario when the suite does not start its own (skipped without it).
    #[arg(long, env = "COFFER_BENCH_INGEST_ONLY_URL")]
    pub ingest_only_url: Option<String>,
    /// That second server's process id.
    #[arg(long, env = "COFFER_BENCH_INGEST_ONLY_PID")]
    pub ingest_only_pid: Option<i32>,
    /// API key with the write scope; defaults to the key `serve --dev` keeps.
    #[arg(long, env = "COFFER_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// The webhook account the deliveries are for (a Standard Webhooks account).
    #[arg(long, env = "COFFER_BENCH_ACCOUNT", default_value = "dev-sandbox")]
    pub account: String,
    /// Its signing secret; without it, the one `sandbox_accounts` keeps for the account.
    #[arg(long, env = "COFFER_BENCH_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Operations in flight at each point of the curves.
    #[arg(
        long,
        env = "COFFER_BENCH_CONCURRENCY_LEVELS",
        value_delimiter = ',',
        default_value = "1,4,16,64,256"
    )]
    pub concurrency_levels: Vec<usize>,
    /// How long each point is measured (its baseline too).
    #[arg(long, env = "COFFER_BENCH_DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unmeasured load before each point.
    #[arg(long, env = "COFFER_BENCH_WARMUP", default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// gRPC connections the load is spread over.
    #[arg(long, env = "COFFER_BENCH_CONNECTIONS", default_value_t = 4)]
    pub connections: usize,
    /// Only these scenarios (comma-separated); all by default.
    #[arg(long, value_delimiter = ',', value_parser = crate::bench::Scenario::parse)]
    pub scenarios: Vec<crate::bench::Scenario>,
    /// Events loaded for usage-query's customer before measuring.
    #[arg(long, env = "COFFER_BENCH_EVENTS", default_value_t = 100_000)]
    pub events: u64,
    /// Events per batch of the usage scenarios (at most 1 000).
    #[arg(long, env = "COFFER_BENCH_BATCH_SIZE", default_value_t = 100)]
    pub batch_size: usize,
    /// Where `latest.md` (and the started servers' logs) go.
    #[arg(long, default_value = "bench-results")]
    pub out: PathBuf,
    /// Where the PNG plots go (one per scenario); `--out` by default.
    #[arg(long)]
    pub plots: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct WebhooksBenchArgs {
    /// The webhook sidecar's base URL (`serve`'s COFFER_HTTP_ADDR).
    #[arg(
        long,
        env = "COFFER_BENCH_WEBHOOKS_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// The account the deliveries are for: a Standard Webhooks account (provider `sandbox` or
    /// `polar`) the server knows.
    #[arg(long, env = "COFFER_BENCH_ACCOUNT", default_value = "dev-bench")]
    pub account: String,
    /// The account's signing secret (`whsec_…`); without it, the one `sandbox_accounts`
    /// keeps for the account. Give it in the environment: a flag shows in the process list.
    #[arg(long, env = "COFFER_BENCH_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Deliveries in flight at once, each on its own HTTP/1.1 connection.
    #[arg(long, env = "COFFER_BENCH_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// How long each measurement runs.
    #[arg(long, env = "COFFER_BENCH_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unmeasured load before each measurement.
    #[arg(long, env = "COFFER_BENCH_WARMUP", default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct UsageQueryBenchArgs {
    #[command(flatten)]
    pub common: BenchArgs,
    /// Events loaded for the one customer before measuring.
    #[arg(long, env = "COFFER_BENCH_EVENTS", default_value_t = 1_000_000)]
    pub events: u64,
    /// Measure a customer an earlier run loaded (the external id it printed) instead of loading
    /// a new one: repeated measurements of one data set without the load's minutes. The range
    /// is the 30 days before now, so reuse it within minutes of its load.
    #[arg(long)]
    pub customer: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct UsageBenchArgs {
    #[command(flatten)]
    pub common: BenchArgs,
    /// Events per batch (at most 1 000).
    #[arg(long, env = "COFFER_BENCH_BATCH_SIZE", default_value_t = 1_000)]
    pub batch_size: usize,
    /// Share of each batch whose ids repeat the previous batch's (0 to 1).
    #[arg(long, env = "COFFER_BENCH_REPEAT_SHARE", default_value_t = 0.1)]
    pub repeat_share: f64,
    /// Customers the events are spread over.
    #[arg(long, env = "COFFER_BENCH_CUSTOMERS", default_value_t = 100)]
    pub customers: usize,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The server to load.
    #[arg(
        long,
        env = "COFFER_BENCH_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub endpoint: String,
    /// API key with the write scope; defaults to the key `serve --dev` keeps.
    #[arg(long, env = "COFFER_API_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// Requests in flight at once.
    #[arg(long, env = "COFFER_BENCH_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,
    /// How long each measurement runs.
    #[arg(long, env = "COFFER_BENCH_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Unmeasured load before each measurement.
    #[arg(long, env = "COFFER_BENCH_WARMUP", default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// gRPC connections the load is spread over.
    #[arg(long, env = "COFFER_BENCH_CONNECTIONS", default_value_t = 4)]
    pub connections: usize,
}

/// A sandbox clock horizon: a positive duration of at most a century.
fn parse_clock_horizon(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() || d > crate::providers::sandbox::MAX_CLOCK_HORIZON {
        return Err("must be more than 0 and at most 100 years".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_name_their_unit() {
        let parse = |flag: &str| {
            Cli::try_parse_from(["coffer", "--db-acquire-timeout", flag, "migrate"])
                .map(|cli| cli.global.db.db_acquire_timeout)
        };
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        // A bare number hides its unit: refused rather than guessed.
        assert!(parse("7").is_err());
        assert!(parse("ten").is_err());
    }

    #[test]
    fn trusted_proxies_are_a_list_of_ranges() {
        let serve = |args: &[&str]| {
            Cli::try_parse_from([&["coffer", "serve"], args].concat()).map(|cli| {
                match cli.command {
                    Command::Serve(a) => a.webhook_trusted_proxies.unwrap_or_default().0,
                    _ => unreachable!(),
                }
            })
        };
        let shown = |v: Vec<Cidr>| v.iter().map(Cidr::to_string).collect::<Vec<_>>();
        assert!(serve(&[]).unwrap().is_empty(), "none by default");
        assert_eq!(
            shown(
                serve(&[
                    "--webhook-trusted-proxies",
                    "10.0.0.0/8, 127.0.0.1,fd00::/8"
                ])
                .unwrap()
            ),
            ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]
        );
        let e = serve(&["--webhook-trusted-proxies", "10.0.0.1/8"]).unwrap_err();
        assert!(e.to_string().contains("did you mean \"10.0.0.0/8\""), "{e}");
        let webhooks = Cli::try_parse_from([
            "coffer",
            "webhooks",
            "--grpc-endpoint",
            "http://core:50051",
            "--system-key",
            "k",
            "--webhook-trusted-proxies",
            "192.168.0.0/16",
        ])
        .unwrap();
        let Command::Webhooks(args) = webhooks.command else {
            unreachable!()
        };
        assert_eq!(
            shown(args.webhook_trusted_proxies.unwrap().0),
            ["192.168.0.0/16"]
        );
        // An empty value (an environment variable left empty) is no proxy.
        assert!(
            serve(&["--webhook-trusted-proxies", ""])
                .unwrap()
                .is_empty()
        );
        assert!(
            serve(&["--webhook-trusted-proxies", " , "])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_pooler_flag_names_its_modes() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["coffer"], args, &["migrate"]].concat()).map(|cli| cli.global.db)
        };
        let db = parse(&[]).unwrap();
        assert_eq!((db.db_pooler, db.database_direct_url), (Pooler::None, None));
        let db = parse(&[
            "--db-pooler",
            "transaction",
            "--database-direct-url",
            "postgres://x",
        ])
        .unwrap();
        assert_eq!(db.db_pooler, Pooler::Transaction);
        assert_eq!(db.database_direct_url.as_deref(), Some("postgres://x"));
        assert_eq!(
            parse(&["--db-pooler", "session"]).unwrap().db_pooler,
            Pooler::Session
        );
        assert!(parse(&["--db-pooler", "statement"]).is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
