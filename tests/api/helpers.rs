//! Test harness: each test gets its own database on the Postgres the suite finds the same way
//! `serve --dev` does, and a real server on ephemeral ports, called through real tonic clients.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer::app::App;
use coffer::app::tenants::KeyFor;
use coffer::domain::auth::{Scopes, TenantName};
use coffer::domain::ids::TenantId;
use coffer::grpc::pb::customers_client::CustomersClient;
use coffer::grpc::pb::get_customer_request::Lookup;
use coffer::grpc::pb::{self, GetCustomerRequest, UpdateCustomerRequest};
use coffer::startup::{ServeError, Server, ServerConfig};
use coffer::store::pool::{self, PoolConfig};
use prost_types::FieldMask;
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The repository's state directory, where a private test cluster lives if one is needed.
pub fn state_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".coffer")
}

/// A database of one test's own, dropped when the test ends (passing or not).
pub struct TestDb {
    pub options: PgConnectOptions,
    pub name: String,
}

impl TestDb {
    pub async fn new() -> Self {
        let located = coffer::pg_local::locate(&state_dir())
            .await
            .expect("finding a Postgres for the tests");
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let name = format!(
            "coffer_test_{stamp}_{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let options = located.options.database(&name);
        pool::create_database_if_missing(&options)
            .await
            .expect("creating the test database");
        Self { options, name }
    }

    pub async fn pool(&self) -> PgPool {
        let pool = pool::pool(&self.options, &PoolConfig::default());
        pool::migrate(&pool).await.expect("migrating");
        pool
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let options = self.options.clone();
        let name = self.name.clone();
        // Drop runs outside async context rules; a small runtime on its own thread does the work.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = pool::drop_database(&options, &name).await;
            });
        })
        .join();
    }
}

/// A running server with its own database and a tenant "acme" whose read,write,admin key is
/// `key`.
pub struct TestApp {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The webhook sidecar's address, when the config asked for one.
    pub http_addr: Option<SocketAddr>,
    pub pool: PgPool,
    pub app: App,
    pub key: String,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServeError>>>,
    /// Held so the database lives exactly as long as the server.
    _db: TestDb,
}

pub fn test_config() -> ServerConfig {
    ServerConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        health_interval: Duration::from_millis(200),
        // No inbox workers unless a test asks for them (tests/api/inbox.rs): the others check
        // what ingestion stored, which the workers would move on.
        inbox: coffer::app::inbox::InboxConfig {
            workers: 0,
            ..Default::default()
        },
        ..ServerConfig::default()
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        let db = TestDb::new().await;
        let pool = db.pool().await;
        Self::spawn_on(db, pool.clone(), pool, test_config()).await
    }

    /// Serves with `server_pool` (which may go through a proxy) while the test keeps `pool`.
    pub async fn spawn_on(
        db: TestDb,
        pool: PgPool,
        server_pool: PgPool,
        config: ServerConfig,
    ) -> Self {
        let server = Server::bind(config, server_pool).await.expect("binding");
        let addr = server.grpc_addr();
        let admin_addr = server.admin_addr();
        let http_addr = server.http_addr();
        let app = App::new(pool.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        let (_, key) = app
            .tenants
            .create_tenant(&TenantName::parse("acme").unwrap())
            .await
            .expect("creating tenant acme");
        Self {
            addr,
            admin_addr,
            http_addr,
            pool,
            app,
            key: key.expose().to_owned(),
            stop: Some(stop),
            handle: Some(handle),
            _db: db,
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connecting to the test server")
    }

    pub async fn usage(&self) -> coffer::grpc::pb::usage_client::UsageClient<Channel> {
        coffer::grpc::pb::usage_client::UsageClient::new(self.channel().await)
    }

    pub async fn subscriptions(
        &self,
    ) -> coffer::grpc::pb::subscriptions_client::SubscriptionsClient<Channel> {
        coffer::grpc::pb::subscriptions_client::SubscriptionsClient::new(self.channel().await)
    }

    /// A server configured by the coffer.toml `text` (secrets from `env`), with tenant "acme"
    /// made first so the file can name it.
    pub async fn spawn_with_settings(text: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn_configured(text, env, |_| {}).await
    }

    /// As [`TestApp::spawn_with_settings`], with the server's config edited by `edit` too.
    pub async fn spawn_configured(
        text: &str,
        env: &[(&str, &str)],
        edit: impl FnOnce(&mut ServerConfig),
    ) -> Self {
        let db = TestDb::new().await;
        let pool = db.pool().await;
        let app = App::new(pool.clone());
        let (acme, key) = app
            .tenants
            .create_tenant(&TenantName::parse("acme").unwrap())
            .await
            .expect("creating tenant acme");
        let env: std::collections::HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let settings = coffer::settings::parse(std::path::Path::new("coffer.toml"), text, &|var| {
            env.get(var).cloned()
        })
        .expect("a valid coffer.toml")
        .resolve(&[("acme".to_owned(), acme)].into())
        .expect("its tenants exist");
        let mut config = ServerConfig {
            settings: Arc::new(settings),
            ..test_config()
        };
        edit(&mut config);
        let server = Server::bind(config, pool.clone()).await.expect("binding");
        let (addr, admin_addr) = (server.grpc_addr(), server.admin_addr());
        let http_addr = server.http_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin_addr,
            http_addr,
            pool,
            app,
            key: key.expose().to_owned(),
            stop: Some(stop),
            handle: Some(handle),
            _db: db,
        }
    }

    /// GetCheckoutSession `id` with the tenant's key.
    pub async fn checkout_session(&self, id: &str) -> coffer::grpc::pb::CheckoutSession {
        coffer::grpc::pb::checkout_client::CheckoutClient::new(self.channel().await)
            .get_checkout_session(req(
                coffer::grpc::pb::GetCheckoutSessionRequest { id: id.into() },
                &self.key,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    /// GetPayment `id` with the tenant's key.
    pub async fn payment(&self, id: &str) -> coffer::grpc::pb::Payment {
        coffer::grpc::pb::checkout_client::CheckoutClient::new(self.channel().await)
            .get_payment(req(
                coffer::grpc::pb::GetPaymentRequest { id: id.into() },
                &self.key,
            ))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn customers(&self) -> CustomersClient<Channel> {
        CustomersClient::new(self.channel().await)
    }

    /// A new tenant and its read,write,admin key.
    pub async fn tenant(&self, name: &str) -> String {
        let (_, key) = self
            .app
            .tenants
            .create_tenant(&TenantName::parse(name).unwrap())
            .await
            .unwrap();
        key.expose().to_owned()
    }

    pub async fn key(&self, owner: KeyFor, scopes: &str) -> String {
        let key = self
            .app
            .tenants
            .create_key(&owner, &Scopes::parse_list(scopes).unwrap())
            .await
            .unwrap();
        key.expose().to_owned()
    }

    /// How many customer rows exist, deleted or not, across tenants.
    pub async fn customer_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM customers")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Stops the server and waits for it to drain.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        let _ = self.stop.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap()
    }
}

/// Wraps `message` in a request carrying `key` (and an idempotency key when given).
pub fn req<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

pub fn idem<T>(message: T, key: &str, idempotency_key: &str) -> tonic::Request<T> {
    let mut r = req(message, key);
    r.metadata_mut()
        .insert("idempotency-key", idempotency_key.parse().unwrap());
    r
}

/// GetCustomer by Coffer's id.
pub fn by_id(id: &str) -> GetCustomerRequest {
    GetCustomerRequest {
        lookup: Some(Lookup::Id(id.into())),
    }
}

/// GetCustomer by the caller's own id.
pub fn by_external_id(external_id: &str) -> GetCustomerRequest {
    GetCustomerRequest {
        lookup: Some(Lookup::ExternalId(external_id.into())),
    }
}

/// UpdateCustomer of `customer.id` with `paths` as the mask; no paths means no mask (every
/// populated field).
pub fn update(customer: pb::Customer, paths: &[&str]) -> UpdateCustomerRequest {
    UpdateCustomerRequest {
        customer: Some(customer),
        update_mask: (!paths.is_empty()).then(|| FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    }
}

/// The ErrorInfo reason and the BadRequest fields of an error.
pub fn details(status: &tonic::Status) -> (String, Vec<String>) {
    use tonic_types::StatusExt;
    let d = status.get_error_details();
    let reason = d.error_info().map(|i| i.reason.clone()).unwrap_or_default();
    let fields = d
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default();
    if let Some(info) = d.error_info() {
        assert_eq!(info.domain, "coffer");
    }
    (reason, fields)
}

/// A plain HTTP/1.0 GET, enough for the admin endpoints: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let status = buf[9..12].parse().unwrap();
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A proxy in front of Postgres that a test can cut and restore, to lose the database without
/// touching the real server. Connect through it with [`Proxy::options`].
pub struct Proxy {
    listen: Listen,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// Where a proxy listens: on loopback TCP in front of a TCP server, or on a Unix socket in a
/// directory of its own in front of a private cluster, which takes no TCP connection and must
/// not be given one.
enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Either end of a proxied connection.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

enum Listener {
    Tcp(TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Box<dyn Io>> {
        Ok(match self {
            Listener::Tcp(l) => Box::new(l.accept().await?.0),
            Listener::Unix(l) => Box::new(l.accept().await?.0),
        })
    }
}

#[derive(Clone)]
enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    async fn connect(&self) -> std::io::Result<Box<dyn Io>> {
        Ok(match self {
            Target::Tcp(addr) => Box::new(TcpStream::connect(addr).await?),
            Target::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        })
    }
}

impl Proxy {
    /// A proxy in front of the server `db` reaches, over the same kind of socket.
    pub async fn to_db(db: &PgConnectOptions) -> Self {
        let socket_file = format!(".s.PGSQL.{}", db.get_port());
        let (listen, listener, target) = match db.get_socket() {
            Some(dir) => {
                let own = std::env::temp_dir()
                    .join(format!("coffer-proxy-{}", uuid::Uuid::now_v7().simple()));
                std::fs::create_dir(&own).unwrap();
                std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o700)).unwrap();
                let listener = tokio::net::UnixListener::bind(own.join(&socket_file)).unwrap();
                (
                    Listen::Unix(own),
                    Listener::Unix(listener),
                    Target::Unix(dir.join(&socket_file)),
                )
            }
            None => {
                let target = tokio::net::lookup_host((db.get_host(), db.get_port()))
                    .await
                    .unwrap()
                    .next()
                    .unwrap();
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                (
                    Listen::Tcp(listener.local_addr().unwrap()),
                    Listener::Tcp(listener),
                    Target::Tcp(target),
                )
            }
        };
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (cut2, conns2) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            loop {
                let Ok(mut client) = listener.accept().await else {
                    return;
                };
                if cut2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut upstream) = target.connect().await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                conns2.lock().await.push(task);
            }
        });
        Self { listen, cut, conns }
    }

    /// `db`'s options, going through this proxy.
    pub fn options(&self, db: &PgConnectOptions) -> PgConnectOptions {
        match &self.listen {
            Listen::Tcp(addr) => db.clone().host(&addr.ip().to_string()).port(addr.port()),
            Listen::Unix(dir) => db.clone().socket(dir),
        }
    }

    /// Refuses new connections and kills the open ones.
    pub async fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().await.drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Listen::Unix(dir) = &self.listen {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Inserts a live customer with `external_id` for `tenant` in a transaction left open: until it
/// ends, an insert of the same external id waits on it.
pub async fn hold_external_id(
    pool: &PgPool,
    tenant: TenantId,
    external_id: &str,
) -> Transaction<'static, Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO customers (tenant_id, id, external_id, created_at, updated_at)
         VALUES ($1, gen_random_uuid(), $2, now(), now())",
    )
    .bind(tenant.as_uuid())
    .bind(external_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx
}

/// Whether, within 10 s, exactly one session of `pool`'s database waits on a lock.
pub async fn one_session_waits_on_a_lock(pool: &PgPool) -> bool {
    eventually(Duration::from_secs(10), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        waiting == 1
    })
    .await
}

/// A TCP proxy in front of Postgres that, once armed, passes on the next `COMMIT` a client
/// sends (or, armed for any statement, the next message at all) and then cuts that connection
/// before the server's answer comes back: the commit happens, and the client never learns it
/// did.
pub struct CommitCutter {
    pub addr: SocketAddr,
    armed: Arc<AtomicBool>,
    any: Arc<AtomicBool>,
}

impl CommitCutter {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(AtomicBool::new(false));
        let any = Arc::new(AtomicBool::new(false));
        let (armed2, any2) = (armed.clone(), any.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (armed, any) = (armed2.clone(), any2.clone());
                tokio::spawn(async move {
                    let Ok(upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_r, mut client_w) = client.into_split();
                    let (mut up_r, mut up_w) = upstream.into_split();
                    let answers =
                        tokio::spawn(
                            async move { tokio::io::copy(&mut up_r, &mut client_w).await },
                        );
                    let mut buf = vec![0u8; 64 * 1024];
                    // Whether this connection executed a statement since the cutter was armed.
                    let mut executed = false;
                    loop {
                        let n = match client_r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        let commit = if !armed.load(Ordering::SeqCst) {
                            false
                        } else if any.load(Ordering::SeqCst) {
                            // A statement outside a transaction runs at its Execute of the
                            // unnamed portal (`E`, length 9, the portal's empty name) and commits
                            // at the Sync after it (`S`, length 4); the Parse, the Execute and
                            // the Sync may each come in a write of their own.
                            let execute: &[u8] = b"E\0\0\0\x09\0";
                            let sync: &[u8] = b"S\0\0\0\x04";
                            let from = chunk.windows(execute.len()).position(|w| w == execute);
                            executed |= from.is_some();
                            executed
                                && chunk[from.unwrap_or(0)..]
                                    .windows(sync.len())
                                    .any(|w| w == sync)
                        } else {
                            chunk.windows(6).any(|w| w == b"COMMIT")
                        };
                        if commit && armed.swap(false, Ordering::SeqCst) {
                            // Stop the answers first, so none of the reply reaches the client.
                            answers.abort();
                            let _ = up_w.write_all(chunk).await;
                            let _ = up_w.flush().await;
                            // Give the server the time to read it before the connection goes.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            return;
                        }
                        if up_w.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                    answers.abort();
                });
            }
        });
        Self { addr, armed, any }
    }

    /// Cuts the connection that sends the next `COMMIT`, right after passing it on.
    pub fn arm(&self) {
        self.any.store(false, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Cuts the connection that next executes a statement, right after passing it on: for a
    /// statement that commits on its own.
    pub fn arm_any(&self) {
        self.any.store(true, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }
}

/// A customer with `external_id` and nothing else, for tests that write to the store directly.
pub fn customer(external_id: &str) -> coffer::domain::customer::Customer {
    use coffer::domain::customer::{Customer, ExternalId, Metadata};
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    Customer {
        id: coffer::domain::ids::CustomerId::generate(),
        external_id: Some(ExternalId::parse(external_id).unwrap()),
        email: None,
        name: None,
        metadata: Metadata::parse(&Default::default()).unwrap(),
        created_at: now,
        updated_at: now,
        deleted_at: None,
    }
}

/// The sandbox as tests run it: deliveries flow within tens of milliseconds (one worker, a
/// 50 ms poll, retries from 100 ms), sessions expire within 200 ms of their time, and
/// `faults` is the test's handle on the sandbox's fault switches.
pub fn sandbox_test_config(
    faults: Arc<coffer::providers::sandbox::Faults>,
) -> coffer::providers::sandbox::SandboxConfig {
    coffer::providers::sandbox::SandboxConfig {
        faults,
        delivery: coffer::providers::sandbox::delivery::DeliveryConfig {
            workers: 1,
            batch: 16,
            poll: Duration::from_millis(50),
            lease: Duration::from_secs(4),
            timeout: Duration::from_secs(3),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(1),
        },
        expire_interval: Duration::from_millis(200),
        ..Default::default()
    }
}

/// What a test does when this machine lacks something it needs (Postgres binaries, root): it
/// fails, naming what is missing, unless `COFFER_ALLOW_SKIP=1` says a skip is expected here; then
/// it says so on stderr and the caller returns. CI never sets the variable, so a test can never
/// pass there by not running.
pub fn skip_or_fail(missing: &str) {
    if std::env::var("COFFER_ALLOW_SKIP").as_deref() == Ok("1") {
        eprintln!("skipped: {missing}, and COFFER_ALLOW_SKIP=1");
    } else {
        panic!("{missing}; set COFFER_ALLOW_SKIP=1 to skip this test knowingly");
    }
}
