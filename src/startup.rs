//! Wiring: binds the gRPC and admin listeners, registers the services, health and reflection,
//! starts the background workers, and on shutdown drains them in order: report NOT_SERVING,
//! wait the grace period, stop accepting, finish in-flight calls, end what is still open at the
//! drain deadline, stop the workers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceBuilder;

use crate::admin::{self, Readiness};
use crate::app::accounts::{Accounts, AccountsError};
use crate::app::events::WebhookConfig;
use crate::app::inbox::{Inbox, InboxConfig};
use crate::app::providers::Providers;
use crate::app::{App, IdempotencyConfig, journal, sweeper};
use crate::domain::account::Account;
use crate::domain::cidr::Cidr;
use crate::grpc::FILE_DESCRIPTOR_SET;
use crate::grpc::auth::AuthLayer;
use crate::grpc::checkout::CheckoutService;
use crate::grpc::customers::CustomersService;
use crate::grpc::limits::{CallLimits, Incoming};
use crate::grpc::pb::checkout_server::CheckoutServer;
use crate::grpc::pb::customers_server::CustomersServer;
use crate::grpc::pb::provider_events_server::ProviderEventsServer;
use crate::grpc::pb::sandbox_server::SandboxServer;
use crate::grpc::pb::subscriptions_server::SubscriptionsServer;
use crate::grpc::pb::usage_server::UsageServer;
use crate::grpc::provider_events::{MAX_INGEST_BYTES, ProviderEventsService};
use crate::grpc::sandbox::SandboxService;
use crate::grpc::subscriptions::SubscriptionsService;
use crate::grpc::telemetry::TelemetryLayer;
use crate::grpc::tls::{ServerTls, TlsError, TlsFiles};
use crate::grpc::transport::{self, InProcess};
use crate::grpc::usage::UsageService;
use crate::metrics::Metrics;
use crate::providers::AdapterError;
use crate::providers::outbound::OutboundConfig;
use crate::providers::sandbox::delivery::Delivery;
use crate::providers::sandbox::{Sandbox, SandboxConfig};
use crate::settings::Settings;
use crate::shutdown::CancellationToken;
use crate::store::pool::Pinger;

/// Every service health reports on, besides the whole server (""), from the policy table.
pub const SERVICES: &[&str] = &crate::grpc::policy::HEALTH_REPORTED;

/// The health entry that says only "this process is alive and serving gRPC": SERVING from the
/// start to the exit, whatever the database does, for liveness probes (Kubernetes' `grpc`
/// probe with `service: liveness`). The whole-server entry (`""`) follows the database and
/// the drain: a readiness signal, which would restart every replica during a database outage
/// if used for liveness.
pub const LIVENESS: &str = "liveness";

/// Largest request message accepted.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The public webhook sidecar's address (`POST /webhooks/{account}`); none runs without
    /// one.
    pub http_addr: Option<SocketAddr>,
    /// Provider accounts beside those of `settings` (tests build them directly).
    pub accounts: Vec<Account>,
    /// How webhook signatures are checked (tolerance, clock).
    pub webhooks: WebhookConfig,
    /// Proxies in front of the sidecar whose `X-Forwarded-For` it believes about where a
    /// delivery came from (`--webhook-trusted-proxies`); none by default.
    pub webhook_trusted_proxies: Vec<Cidr>,
    /// What one client may hold on the public listener: connections, header, body-progress
    /// and idle timeouts (`--http-*`).
    pub http_limits: crate::webhooks::ListenerLimits,
    /// How often the database is pinged for health.
    pub health_interval: Duration,
    /// How long to report NOT_SERVING before refusing new calls, so load balancers notice.
    pub shutdown_grace: Duration,
    /// How often expired idempotency keys are swept.
    pub sweep_interval: Duration,
    /// How often the usage rollups' rows of past periods are folded ([`sweeper::fold_usage`]).
    pub usage_fold_interval: Duration,
    /// The inbox workers: how many, their batches and polling, retries, and the handlers.
    pub inbox: InboxConfig,
    /// Idempotency leases and the work timeout under them.
    pub idempotency: IdempotencyConfig,
    /// After the grace period, how long calls in flight have to finish. Then what is still open
    /// (streams, calls still running) is ended with UNAVAILABLE and `run` returns.
    pub drain_timeout: Duration,
    /// Unary calls in flight at once, server-wide; more are refused with RESOURCE_EXHAUSTED.
    pub max_calls: usize,
    /// Streams (Health/Watch, reflection) open at once, server-wide; a budget of their own.
    pub max_streams: usize,
    /// HTTP/2 streams one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_streams_per_connection: u32,
    /// Client connections open at once; more are accepted and closed at once.
    pub max_connections: usize,
    /// How long a new connection has to send the HTTP/2 preface before it is closed.
    pub handshake_timeout: Duration,
    /// How often an HTTP/2 PING checks that an open connection's peer is still there.
    pub http2_keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    pub http2_keepalive_timeout: Duration,
    /// Idle time before TCP keep-alive probes start, so dead peers' sockets are reclaimed.
    pub tcp_keepalive: Duration,
    /// coffer.toml, resolved: provider accounts and per-tenant settings.
    pub settings: Arc<Settings>,
    /// The sandbox provider (`serve --dev` / `--sandbox`); none runs without it.
    pub sandbox: Option<SandboxConfig>,
    /// How often the journal's resolver settles provider operations of unknown outcome.
    pub resolve_interval: Duration,
    /// The worker that pushes usage to Stripe's and Polar's meters.
    pub usage_push: crate::app::usage_push::PushConfig,
    /// Each configured provider account's HTTP client stack: timeouts, retries, breaker and
    /// bulkhead (one stack per account).
    pub outbound: OutboundConfig,
    /// A streaming replica for reads that tolerate a bounded lag (`--database-read-url`);
    /// without it every read goes to the primary.
    pub read_replica: Option<crate::store::replica::ReadReplica>,
    /// The subscription change stream: outbox retention, feed polling, streams open at once.
    pub changes: crate::app::changes::ChangesConfig,
    /// TLS on the gRPC listener (`--tls-cert`, `--tls-key`, `--tls-client-ca` for mTLS),
    /// reloaded on SIGHUP or when a file changes; plain HTTP/2 without it.
    pub tls: Option<TlsFiles>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: ([127, 0, 0, 1], 50051).into(),
            admin_addr: ([127, 0, 0, 1], 9090).into(),
            http_addr: None,
            accounts: Vec::new(),
            webhooks: WebhookConfig::default(),
            webhook_trusted_proxies: Vec::new(),
            http_limits: crate::webhooks::ListenerLimits::default(),
            health_interval: Duration::from_secs(1),
            shutdown_grace: Duration::ZERO,
            sweep_interval: Duration::from_secs(300),
            usage_fold_interval: sweeper::FOLD_EVERY,
            inbox: InboxConfig::default(),
            idempotency: IdempotencyConfig::default(),
            drain_timeout: Duration::from_secs(10),
            max_calls: 1024,
            max_streams: 1024,
            max_streams_per_connection: 100,
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            settings: Arc::default(),
            sandbox: None,
            resolve_interval: Duration::from_secs(5),
            usage_push: Default::default(),
            outbound: OutboundConfig::default(),
            read_replica: None,
            tls: None,
            changes: Default::default(),
        }
    }
}

/// A server whose listeners are bound and which is ready to run.
pub struct Server {
    config: ServerConfig,
    app: App,
    inbox: Inbox,
    usage_push: crate::app::usage_push::UsagePush,
    /// The sandbox's event delivery, when the sandbox runs and has somewhere to deliver.
    delivery: Option<Delivery>,
    metrics: Arc<Metrics>,
    grpc: TcpListener,
    admin: TcpListener,
    http: Option<TcpListener>,
    /// The public listener's connection gauge and refusal counter, in `metrics`.
    http_connections: crate::webhooks::ListenerMetrics,
    tls: Option<ServerTls>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed")]
    Grpc(#[from] tonic::transport::Error),
    #[error("admin server failed")]
    Admin(#[source] std::io::Error),
    #[error("provider accounts")]
    Accounts(#[from] AccountsError),
    #[error("provider adapters")]
    Adapter(#[from] AdapterError),
    #[error("TLS")]
    Tls(#[from] TlsError),
}

impl Server {
    pub async fn bind(config: ServerConfig, pool: PgPool) -> Result<Self, ServeError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })
        };
        let http = match config.http_addr {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let mut config = config;
        // The sandbox delivers to this server's own sidecar unless told otherwise.
        if let Some(sandbox) = &mut config.sandbox
            && sandbox.webhook_base.is_none()
            && let Some(http) = &http
        {
            let addr = loopback(http.local_addr().map_err(|source| ServeError::Bind {
                addr: config.http_addr.expect("bound"),
                source,
            })?);
            sandbox.webhook_base = Some(format!("http://{addr}"));
        }
        // coffer.toml's accounts, and any a test built directly.
        let mut accounts = config.settings.accounts().to_vec();
        accounts.extend(config.accounts.iter().cloned());
        let mut accounts = Accounts::new(accounts)?;
        if config.sandbox.is_some() {
            accounts = accounts.with_sandbox(pool.clone(), config.settings.clone());
        }
        let mut app = App::with_settings(pool.clone(), config.idempotency, config.settings.clone())
            .with_webhooks(accounts, config.webhooks.clone())
            .with_changes(config.changes.clone());
        let mut delivery = None;
        let providers = Providers::new(
            config.settings.clone(),
            config.sandbox.as_ref().map(|sandbox| {
                Sandbox::new(pool.clone(), sandbox.clone()).with_settings(config.settings.clone())
            }),
        )
        .with_adapters(&config.outbound)?;
        app = app.with_providers(providers);
        if let Some(replica) = &config.read_replica {
            app = app.with_read_pool(crate::store::replica::ReadPool::with_replica(
                pool.clone(),
                replica.pool.clone(),
                replica.bound,
            ));
        }
        if let Some(sandbox) = &config.sandbox {
            delivery = sandbox.webhook_base.as_deref().map(|base| {
                Delivery::new(
                    pool.clone(),
                    config.settings.clone(),
                    base,
                    sandbox.delivery.clone(),
                    sandbox.faults.clone(),
                )
            });
        }
        let mut metrics = Metrics::new();
        if let Some(delivery) = &delivery {
            delivery.metrics().register(metrics.registry_mut());
        }
        app.events.metrics().register(metrics.registry_mut());
        app.reads().register(metrics.registry_mut());
        app.usage.metrics().register(metrics.registry_mut());
        app.checkout
            .journal()
            .metrics()
            .register(metrics.registry_mut());
        let inbox = Inbox::new(app.pool.clone(), config.inbox.clone()).with_triggers(
            crate::app::triggers::Triggers::new(
                app.checkout.providers().clone(),
                app.checkout.journal().clone(),
                app.subscriptions.clone(),
                app.settings.clone(),
            ),
        );
        inbox.metrics().register(metrics.registry_mut());
        let usage_push = crate::app::usage_push::UsagePush::new(
            app.pool.clone(),
            app.checkout.journal().clone(),
            app.checkout.providers().clone(),
            config.usage_push.clone(),
        );
        usage_push.metrics().register(metrics.registry_mut());
        crate::app::payments::metrics().register(metrics.registry_mut());
        crate::providers::outbound::OutboundMetrics::shared().register(metrics.registry_mut());
        let http_connections = crate::webhooks::ListenerMetrics::default();
        if http.is_some() {
            http_connections.register(metrics.registry_mut());
        }
        let tls = config.tls.clone().map(ServerTls::load).transpose()?;
        if let Some(tls) = &tls {
            tls.register(metrics.registry_mut());
        }
        Ok(Self {
            tls,
            delivery,
            grpc: bind(config.grpc_addr).await?,
            admin: bind(config.admin_addr).await?,
            http,
            http_connections,
            app,
            inbox,
            usage_push,
            metrics: Arc::new(metrics),
            config,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("bound listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener")
    }

    /// The webhook sidecar's bound address, when it runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener"))
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// Serves until `signal` completes, then drains and returns. From `signal` to the return
    /// takes at most the grace period plus the drain timeout, and a little over a second to
    /// let the last answers out and stop the workers.
    pub async fn run(self, signal: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let Server {
            config,
            app,
            inbox,
            usage_push,
            delivery,
            metrics,
            grpc,
            admin,
            http,
            http_connections,
            tls,
        } = self;
        // The bound addresses: with port 0 in the config, only these say where to connect.
        let grpc_addr = grpc.local_addr().unwrap_or(config.grpc_addr);
        let admin_addr = admin.local_addr().unwrap_or(config.admin_addr);
        let readiness = Arc::new(Readiness::default());

        let (reporter, health_service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status(LIVENESS, ServingStatus::Serving)
            .await;
        let health = Arc::new(Health::new(reporter, readiness.clone(), metrics.clone()));
        let mut pinger = Pinger::new(&app.pool);
        health
            .database(pinger.ping(ping_timeout(config.health_interval)).await)
            .await;

        // Every task is spawned on the app's tracker, which is closed and awaited at the end.
        let workers = CancellationToken::new();
        app.tasks.spawn(watch_database(
            pinger,
            health.clone(),
            config.health_interval,
            workers.clone(),
        ));
        // Routes lag-tolerant reads by the replica's lag; nothing without one.
        app.tasks.spawn(app.reads().clone().watch(workers.clone()));
        app.tasks.spawn(sweeper::run(
            app.clone(),
            config.sweep_interval,
            workers.clone(),
        ));
        app.tasks.spawn(sweeper::keep_statistics(
            app.clone(),
            sweeper::STATISTICS_EVERY,
            workers.clone(),
        ));
        app.tasks.spawn(sweeper::fold_usage(
            app.clone(),
            config.usage_fold_interval,
            workers.clone(),
        ));
        // The change feed: keeps CheckAccess's cache fresh and wakes the change streams.
        app.tasks.spawn(
            app.changes
                .clone()
                .run_feed(app.access.clone(), workers.clone()),
        );
        app.tasks.spawn(journal::run_resolver(
            app.checkout.journal().clone(),
            app.checkout.providers().clone(),
            config.resolve_interval,
            workers.clone(),
        ));
        // Usage pushed to provider meters; a pass in progress stops with the workers (what it
        // committed is sent again by the next start).
        app.tasks
            .spawn(crate::app::usage_push::run(usage_push, workers.clone()));
        // The inbox workers claim nothing after the signal; a batch in flight finishes while
        // calls drain, or is rolled back when the workers stop.
        let stop_claiming = CancellationToken::new();
        inbox.spawn(&app.tasks, &stop_claiming, &workers);
        // The sandbox's workers, like the inbox's: nothing new is claimed after the signal.
        if let Some(sandbox) = &config.sandbox {
            app.tasks
                .spawn(crate::providers::sandbox::clock::run_expirer(
                    app.pool.clone(),
                    sandbox.expire_interval,
                    crate::providers::sandbox::renewals::DunningTable::new(
                        sandbox.dunning,
                        Some(config.settings.clone()),
                    ),
                    stop_claiming.clone(),
                ));
        }
        if let Some(delivery) = &delivery {
            delivery.spawn(&app.tasks, &stop_claiming, &workers);
        }
        let admin_router = admin::router(metrics.clone(), readiness.clone());
        let admin_stop = workers.clone().cancelled_owned();
        let admin_server = app.tasks.spawn(async move {
            axum::serve(admin, admin_router)
                .with_graceful_shutdown(admin_stop)
                .await
        });

        let reflection_v1 = reflection(config.sandbox.is_some())
            .build_v1()
            .expect("the embedded descriptors are valid");
        let reflection_v1alpha = reflection(config.sandbox.is_some())
            .build_v1alpha()
            .expect("the embedded descriptors are valid");
        let customers = CustomersServer::new(CustomersService::new(app.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        let usage = UsageServer::new(UsageService::new(app.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        let subscriptions = SubscriptionsServer::new(SubscriptionsService::new(app.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        let checkout = CheckoutServer::new(CheckoutService::new(app.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES);
        let provider_events = ProviderEventsServer::new(ProviderEventsService::new(app.clone()))
            .max_decoding_message_size(MAX_INGEST_BYTES);
        // Only with the sandbox: elsewhere its RPCs are UNIMPLEMENTED.
        let sandbox = config.sandbox.is_some().then(|| {
            SandboxServer::new(SandboxService::new(app.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES)
        });

        // Limits before authentication, so a flood is refused before it costs a key lookup;
        // after telemetry, so refusals are counted.
        let limits = CallLimits::new(config.max_calls, config.max_streams);
        let layers = ServiceBuilder::new()
            .layer(TelemetryLayer::new(metrics.clone()))
            .layer(limits.clone())
            .layer(AuthLayer::new(app.auth.clone()));

        let stop_accepting = CancellationToken::new();
        let tcp = Incoming::new(
            TcpIncoming::from(grpc)
                .with_nodelay(Some(true))
                .with_keepalive(Some(config.tcp_keepalive)),
            config.max_connections,
            config.handshake_timeout,
        );
        if let Some(tls) = &tls {
            let watching = stop_accepting.clone();
            app.tasks.spawn(
                tls.clone()
                    .watch(crate::grpc::tls::WATCH_INTERVAL, watching),
            );
        }
        let (in_process, pipes) = InProcess::new();
        let incoming = transport::accept(tcp, tls, pipes, config.handshake_timeout);
        // The sidecar calls this server like any client, with a key that lives only in this
        // process's memory. It stops accepting with the gRPC server, and its deliveries in
        // flight finish (answered by the draining server) before the tasks are awaited.
        if let Some(http) = http {
            let key = app.auth.ephemeral_system_key();
            // In memory: the same gRPC call through every layer, without loopback TCP or TLS.
            let channel = in_process.channel();
            // The sidecar's own refusals go to the core's rejection counter: one family.
            let metrics = app.events.metrics().clone();
            let refusals = crate::webhooks::Refusals::new(move |reason| {
                metrics.refused_before_an_account(reason);
            });
            let mut router = crate::webhooks::router(
                crate::webhooks::Upstream::new(channel, &key),
                refusals,
                crate::webhooks::TrustedProxies::new(config.webhook_trusted_proxies.clone()),
            );
            // The sandbox's hosted checkout page shares the public listener; the sidecar's own
            // routes stay secretless and table-free, the page's are a router of their own.
            if config.sandbox.is_some() {
                router = router.merge(crate::providers::sandbox::page::router(app.pool.clone()));
                // The portal's changes go through the app's use cases, by the port it defines.
                router = router.merge(crate::providers::sandbox::portal::router(
                    app.pool.clone(),
                    std::sync::Arc::new(app.portal.clone()),
                ));
            }
            let stop = stop_accepting.clone().cancelled_owned();
            tracing::info!(http = %http.local_addr().unwrap_or(grpc_addr), "webhook sidecar is serving");
            app.tasks.spawn(crate::webhooks::listener::serve(
                http,
                router,
                config.http_limits,
                http_connections,
                stop,
            ));
        }
        tracing::info!(grpc = %grpc_addr, admin = %admin_addr, "coffer is serving");
        // No `.timeout(..)`: the telemetry layer enforces deadlines, so timed-out calls are
        // counted (`grpc::telemetry::SERVER_DEADLINE`). Returns once it stopped accepting and
        // every connection has closed.
        let serving = tonic::transport::Server::builder()
            .max_concurrent_streams(config.max_streams_per_connection)
            .http2_keepalive_interval(Some(config.http2_keepalive_interval))
            .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
            .layer(layers)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(customers)
            .add_service(usage)
            .add_service(subscriptions)
            .add_service(provider_events)
            .add_service(checkout)
            .add_optional_service(sandbox)
            .serve_with_incoming_shutdown(incoming, stop_accepting.clone().cancelled_owned());

        let signal = async move {
            signal.await;
            stop_claiming.cancel();
        };
        let draining = drain(signal, &config, &health, &limits, &stop_accepting);
        let served = tokio::select! {
            served = serving => served,
            () = draining => {
                tracing::warn!("connections still open after the drain deadline: closing them");
                Ok(())
            }
        };
        let deadline = health.deadline().await;

        workers.cancel();
        app.tasks.close();
        // Work left behind by callers has until the deadline; the workers stop as soon as they
        // are told, so past it they get only a moment.
        let tasks_deadline = (deadline + LAST_WORDS).max(Instant::now() + WORKERS_STOP);
        if tokio::time::timeout_at(tasks_deadline, app.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = app.tasks.len(),
                "background tasks still running at the drain deadline: abandoning them"
            );
        }
        served?;
        if admin_server.is_finished() {
            match admin_server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(ServeError::Admin(e)),
                Err(e) => return Err(ServeError::Admin(std::io::Error::other(e))),
            }
        }
        tracing::info!("drained; bye");
        Ok(())
    }
}

/// Reflection over every Coffer proto and health; it lists the services this server answers
/// (the Sandbox service only with the sandbox), while every message stays describable.
fn reflection(sandbox: bool) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    for service in crate::grpc::policy::SERVICES {
        let listed =
            service.name.starts_with("coffer.") || service.name.starts_with("grpc.health.");
        if listed && (sandbox || service.name != crate::grpc::policy::SANDBOX) {
            builder = builder.with_service_name(service.name);
        }
    }
    builder
}

/// The address to reach a listener bound to `addr` from this process: loopback for an
/// unspecified address (0.0.0.0 or ::).
fn loopback(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// How long, past the drain deadline, the last answers have to reach their clients.
const LAST_WORDS: Duration = Duration::from_secs(1);

/// How long the workers have to stop once told, when the deadline has passed.
const WORKERS_STOP: Duration = Duration::from_millis(200);

/// The shutdown sequence, from `signal` on. It completes only when connections are still open a
/// moment past the drain deadline; tonic's own drain usually finishes first.
async fn drain(
    signal: impl Future<Output = ()>,
    config: &ServerConfig,
    health: &Health,
    limits: &CallLimits,
    stop_accepting: &CancellationToken,
) {
    signal.await;
    let deadline = Instant::now() + config.shutdown_grace + config.drain_timeout;
    tracing::info!("shutting down: reporting NOT_SERVING and draining");
    health.drain(deadline).await;
    tokio::time::sleep(config.shutdown_grace).await;
    stop_accepting.cancel();
    // Unary calls end by themselves; streams such as Watch never do, so once the calls are done
    // (or the deadline passes) waiting any longer serves nobody.
    let _ = tokio::time::timeout_at(deadline, limits.drain()).await;
    if limits.calls_in_flight() > 0 {
        tracing::warn!(
            calls = limits.calls_in_flight(),
            "drain deadline passed: answering the calls still running with UNKNOWN"
        );
    }
    limits.end_open_calls();
    tokio::time::sleep_until(deadline + LAST_WORDS).await;
}

fn ping_timeout(every: Duration) -> Duration {
    every.max(Duration::from_secs(1))
}

async fn set_all(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for s in SERVICES {
        health.set_service_status(*s, status).await;
    }
}

/// Health as clients and orchestrators see it. The watcher's updates and the drain take one
/// lock, so once draining has begun no tick in progress can set SERVING again; and a status is
/// written only when it changes, since every write sends a message to every Watch stream.
struct Health {
    reporter: HealthReporter,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    state: tokio::sync::Mutex<Reported>,
}

#[derive(Default)]
struct Reported {
    /// The status last written; `None` before the first.
    status: Option<ServingStatus>,
    /// When the drain must end, once it has begun.
    draining_until: Option<Instant>,
}

impl Health {
    fn new(reporter: HealthReporter, readiness: Arc<Readiness>, metrics: Arc<Metrics>) -> Self {
        Self {
            reporter,
            readiness,
            metrics,
            state: tokio::sync::Mutex::default(),
        }
    }

    /// Records a ping's result; health follows it unless the server is draining.
    async fn database(&self, up: bool) {
        let mut state = self.state.lock().await;
        self.readiness.database_up.store(up, Ordering::Relaxed);
        self.metrics.set_database_up(up);
        if state.draining_until.is_some() {
            return;
        }
        let status = if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if state.status == Some(status) {
            return;
        }
        set_all(&self.reporter, status).await;
        state.status = Some(status);
        if up {
            tracing::info!("database reachable: SERVING");
        } else {
            tracing::warn!("database unreachable: NOT_SERVING");
        }
    }

    /// NOT_SERVING from now on, whatever the database does.
    async fn drain(&self, deadline: Instant) {
        let mut state = self.state.lock().await;
        state.draining_until = Some(deadline);
        self.readiness.draining.store(true, Ordering::Relaxed);
        if state.status != Some(ServingStatus::NotServing) {
            set_all(&self.reporter, ServingStatus::NotServing).await;
            state.status = Some(ServingStatus::NotServing);
        }
    }

    /// The drain deadline, or now if the server stopped without being told to (an error).
    async fn deadline(&self) -> Instant {
        self.state
            .lock()
            .await
            .draining_until
            .unwrap_or_else(Instant::now)
    }
}

/// Pings the database every `every` and keeps health and readiness in step with it.
async fn watch_database(
    mut pinger: Pinger,
    health: Arc<Health>,
    every: Duration,
    stop: CancellationToken,
) {
    let timeout = ping_timeout(every);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let up = tokio::select! {
            up = pinger.ping(timeout) => up,
            () = stop.cancelled() => return,
        };
        health.database(up).await;
    }
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_server::Health as _;
    use tonic_health::server::HealthService;

    use super::*;

    async fn reported(reporter: &HealthReporter) -> i32 {
        HealthService::from_health_reporter(reporter.clone())
            .check(tonic::Request::new(HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .status
    }

    /// A tick racing the drain never leaves SERVING behind it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_tick_sets_serving_once_the_drain_began() {
        let metrics = Arc::new(Metrics::new());
        for _ in 0..2000 {
            let (reporter, _) = tonic_health::server::health_reporter();
            let health = Arc::new(Health::new(
                reporter.clone(),
                Arc::default(),
                metrics.clone(),
            ));
            health.database(true).await;
            let ticks = {
                let health = health.clone();
                tokio::spawn(async move {
                    // Alternating, so every tick writes.
                    for i in 0..20 {
                        health.database(i % 2 == 1).await;
                    }
                })
            };
            tokio::task::yield_now().await;
            health.drain(Instant::now()).await;
            ticks.await.unwrap();
            assert_eq!(
                reported(&reporter).await,
                ServingStatus::NotServing as i32,
                "NOT_SERVING stays"
            );
            assert!(!health.readiness.is_ready());
        }
    }
}
