//! Wiring: binds the gRPC and admin listeners, registers the services, health and reflection,
//! starts the background workers, and on shutdown drains them in order: report NOT_SERVING,
//! wait the grace period, stop accepting, finish in-flight calls, stop the workers.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::ServiceBuilder;

use crate::admin::{self, Readiness};
use crate::app::{App, sweeper};
use crate::grpc::FILE_DESCRIPTOR_SET;
use crate::grpc::auth::AuthLayer;
use crate::grpc::customers::CustomersService;
use crate::grpc::pb::customers_server::CustomersServer;
use crate::grpc::telemetry::TelemetryLayer;
use crate::metrics::Metrics;
use crate::shutdown::CancellationToken;
use crate::store::pool::Pinger;

/// Every service health reports on, besides the whole server ("").
pub const SERVICES: &[&str] = &["coffer.v1.Customers"];

/// Largest request message accepted.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// How often the database is pinged for health.
    pub health_interval: Duration,
    /// How long to report NOT_SERVING before refusing new calls, so load balancers notice.
    pub shutdown_grace: Duration,
    /// How often expired idempotency keys are swept.
    pub sweep_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: ([127, 0, 0, 1], 50051).into(),
            admin_addr: ([127, 0, 0, 1], 9090).into(),
            health_interval: Duration::from_secs(1),
            shutdown_grace: Duration::ZERO,
            sweep_interval: Duration::from_secs(300),
        }
    }
}

/// A server whose listeners are bound and which is ready to run.
pub struct Server {
    config: ServerConfig,
    app: App,
    metrics: Arc<Metrics>,
    grpc: TcpListener,
    admin: TcpListener,
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
}

impl Server {
    pub async fn bind(config: ServerConfig, pool: PgPool) -> Result<Self, ServeError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })
        };
        Ok(Self {
            grpc: bind(config.grpc_addr).await?,
            admin: bind(config.admin_addr).await?,
            app: App::new(pool),
            metrics: Arc::new(Metrics::new()),
            config,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("bound listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener")
    }

    pub fn app(&self) -> &App {
        &self.app
    }

    /// Serves until `signal` completes, then drains and returns.
    pub async fn run(self, signal: impl Future<Output = ()> + Send) -> Result<(), ServeError> {
        let Server {
            config,
            app,
            metrics,
            grpc,
            admin,
        } = self;
        // The bound addresses: with port 0 in the config, only these say where to connect.
        let grpc_addr = grpc.local_addr().unwrap_or(config.grpc_addr);
        let admin_addr = admin.local_addr().unwrap_or(config.admin_addr);
        let readiness = Arc::new(Readiness::default());

        let (reporter, health_service) = tonic_health::server::health_reporter();
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
        app.tasks.spawn(sweeper::run(
            app.clone(),
            config.sweep_interval,
            workers.clone(),
        ));
        let admin_router = admin::router(metrics.clone(), readiness.clone());
        let admin_stop = workers.clone().cancelled_owned();
        let admin_server = app.tasks.spawn(async move {
            axum::serve(admin, admin_router)
                .with_graceful_shutdown(admin_stop)
                .await
        });

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .expect("the embedded descriptors are valid");
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .expect("the embedded descriptors are valid");
        let customers = CustomersServer::new(CustomersService::new(app.clone()))
            .max_decoding_message_size(MAX_REQUEST_BYTES);

        let layers = ServiceBuilder::new()
            .layer(TelemetryLayer::new(metrics.clone()))
            .layer(AuthLayer::new(app.auth.clone()));

        // Once `signal` fires: NOT_SERVING first, then after the grace period stop accepting;
        // tonic then lets in-flight calls finish before `serve` returns.
        let drain = {
            let health = health.clone();
            let grace = config.shutdown_grace;
            async move {
                signal.await;
                tracing::info!("shutting down: reporting NOT_SERVING and draining");
                health.drain().await;
                tokio::time::sleep(grace).await;
            }
        };

        let incoming = TcpIncoming::from(grpc).with_nodelay(Some(true));
        tracing::info!(grpc = %grpc_addr, admin = %admin_addr, "coffer is serving");
        let served = tonic::transport::Server::builder()
            .timeout(Duration::from_secs(30))
            .layer(layers)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(customers)
            .serve_with_incoming_shutdown(incoming, drain)
            .await;

        workers.cancel();
        app.tasks.close();
        // The workers stop as soon as they are told; work a caller left behind (a mutation
        // whose caller went away) finishes, up to its statement timeout.
        app.tasks.wait().await;
        served?;
        match admin_server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ServeError::Admin(e)),
            Err(e) => return Err(ServeError::Admin(std::io::Error::other(e))),
        }
        tracing::info!("drained; bye");
        Ok(())
    }
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
    draining: bool,
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
        if state.draining {
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
    async fn drain(&self) {
        let mut state = self.state.lock().await;
        state.draining = true;
        self.readiness.draining.store(true, Ordering::Relaxed);
        if state.status != Some(ServingStatus::NotServing) {
            set_all(&self.reporter, ServingStatus::NotServing).await;
            state.status = Some(ServingStatus::NotServing);
        }
    }
}

fn ping_timeout(every: Duration) -> Duration {
    every.max(Duration::from_secs(1))
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
            health.drain().await;
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
