//! The public HTTP sidecar: `POST /webhooks/{account}`.
//!
//! It holds no secret and touches no table. It bounds the body (1 MiB, else 413), forwards the
//! raw bytes, every header as ordered name/value pairs (repeats kept), the address the delivery
//! came from and the trace context to `ProviderEvents.IngestEvent` over gRPC with a system key,
//! and maps the answer to HTTP:
//!
//! | core answer | HTTP |
//! |---|---|
//! | OK (stored, or a duplicate) | 200 |
//! | UNAUTHENTICATED `WEBHOOK_SIGNATURE_INVALID` (no signature header) | 401 `invalid signature` |
//! | INVALID_ARGUMENT `WEBHOOK_SIGNATURE_INVALID` (any other rejection) | 400 `invalid signature` |
//! | PERMISSION_DENIED `WEBHOOK_SOURCE_NOT_ALLOWED` (a source outside the account's list) | 403 `forbidden` |
//! | NOT_FOUND `ACCOUNT_NOT_FOUND` | 404 |
//! | UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, UNKNOWN, CANCELLED, or the core unreachable | 503 with `Retry-After` |
//! | the sidecar's own key refused | 503 with `Retry-After` (logged: an operator must fix it) |
//! | anything else | 500 |
//!
//! The sidecar bounds what it holds: at most [`MAX_IN_FLIGHT`] deliveries at once (more are
//! 503 at once, not queued) and [`REQUEST_TIMEOUT`] for each, body included (then 408). Its
//! listener ([`listener`]) bounds what a client holds before and between deliveries: open
//! connections, the time to send a request's headers, idle keep-alive, and a body that stops
//! arriving (408 too, counted as `timeout`).
//!
//! So 200 is said only once the core has committed the event (or found it already stored);
//! whatever else happens, the provider is told to retry or that the delivery is refused.
//!
//! With each delivery goes its source address (`source_address`), which the core checks
//! against the account's `webhook_source_cidrs`, if it has any: the TCP peer, or, when the
//! peer is one of the trusted proxies (`--webhook-trusted-proxies`, none by default), the
//! client address the proxies report in `X-Forwarded-For`, read as [`TrustedProxies::source`]
//! says: the right-most address that is not itself a trusted proxy. Left of it, addresses
//! are the client's own words and anyone can write them.
//!
//! Every refusal is logged (`webhook delivery rejected`) and counted in
//! `coffer_webhooks_rejected_total{provider,reason}` once, where it is decided: the core
//! counts what it refuses (`source`, the signature's reasons, `unparseable`,
//! `unknown_account`); the sidecar counts what it refuses before the core hears of it
//! ([`Refusals`]), with provider `unknown` since it holds no account table: `too_large`
//! (413), `headers_too_large` (431), `unreadable` (a body that could not be read, 400),
//! `timeout` (408), and `unknown_account` for a path that is no name at all (404). Inside
//! `coffer serve` these go to the core's own family, so the process exports one; the
//! standalone sidecar serves its own on its admin listener's `/metrics`.
//!
//! `coffer serve` runs it in-process against its own gRPC port with an ephemeral system key
//! ([`crate::app::auth::Authenticator::ephemeral_system_key`]); `coffer webhooks` runs it
//! alone ([`Standalone`]) with a system key from `COFFER_SYSTEM_KEY`, and with `/healthz`,
//! `/readyz` (ready while the upstream's health answers SERVING) and `/metrics` on its admin
//! listener.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use opentelemetry::propagation::Injector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tonic::metadata::{AsciiMetadataValue, MetadataKey, MetadataMap};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::domain::account::AccountName;
use crate::domain::auth::ApiKey;
use crate::domain::cidr::Cidr;
use crate::grpc::pb::provider_events_client::ProviderEventsClient;
use crate::grpc::pb::{Header, IngestEventRequest};
use crate::grpc::status::{
    REASON_ACCOUNT_NOT_FOUND, REASON_WEBHOOK_SIGNATURE_INVALID, REASON_WEBHOOK_SOURCE_NOT_ALLOWED,
};
use crate::shutdown::{CancellationToken, TaskTracker};
use crate::telemetry::HeaderExtractor;

pub mod listener;

pub use listener::{ListenerLimits, ListenerMetrics};

/// The largest body accepted; larger deliveries are answered 413.
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// The most header bytes (names and values) forwarded; more is answered 431. Keeps an
/// IngestEvent message within what the core decodes.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// How long the core has to answer one delivery.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one delivery may take, reading its body included, so a client that trickles
/// bytes cannot hold a connection and a place for ever. Past it: 408, and the provider
/// retries (if the core committed meanwhile, the retry is a duplicate).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Deliveries in flight at once; more are answered 503 at once rather than queued.
pub const MAX_IN_FLIGHT: usize = 1024;
/// `Retry-After` when the core gave no RetryInfo.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The `reason`s of the refusals the sidecar decides alone (see the module doc).
pub const REASON_TOO_LARGE: &str = "too_large";
pub const REASON_HEADERS_TOO_LARGE: &str = "headers_too_large";
pub const REASON_UNREADABLE: &str = "unreadable";
pub const REASON_TIMEOUT: &str = "timeout";
pub const REASON_UNKNOWN_ACCOUNT: &str = "unknown_account";
/// Their `provider`: the sidecar does not know the account's.
pub const UNKNOWN_PROVIDER: &str = "unknown";

/// Where the sidecar counts the refusals it decides alone. Cheap to clone.
#[derive(Clone)]
pub struct Refusals(Arc<dyn Fn(&'static str) + Send + Sync>);

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Refusals { .. }")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    provider: &'static str,
    reason: &'static str,
}

impl Refusals {
    /// Counts each refusal's reason with `count`: `coffer serve` passes the core's
    /// `coffer_webhooks_rejected` family, so one process exports one family of that name.
    pub fn new(count: impl Fn(&'static str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(count))
    }

    /// A `coffer_webhooks_rejected` family of the sidecar's own, with the core's labels,
    /// registered in `registry`: the standalone sidecar's.
    pub fn registered(registry: &mut Registry) -> Self {
        let family = Family::<RefusalLabels, Counter>::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "coffer_webhooks_rejected",
            "Webhook deliveries the sidecar refused before the core saw them, by reason (too_large, headers_too_large, unreadable, timeout, unknown_account)",
            family.clone(),
        );
        Self::new(move |reason| {
            family
                .get_or_create(&RefusalLabels {
                    provider: UNKNOWN_PROVIDER,
                    reason,
                })
                .inc();
        })
    }

    /// Logs and counts a refusal, and gives it back.
    fn refuse(
        &self,
        account: Option<&str>,
        reason: &'static str,
        error: WebhookError,
    ) -> WebhookError {
        // The path is the caller's text: logged only when it could be an account's name.
        let account = account.and_then(|a| AccountName::parse(a).ok());
        tracing::warn!(
            account = account.as_ref().map(AccountName::as_str),
            provider = UNKNOWN_PROVIDER,
            reason,
            status = error.status_code().as_u16(),
            "webhook delivery rejected"
        );
        (self.0)(reason);
        error
    }
}

/// The proxies whose `X-Forwarded-For` the sidecar believes. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Arc<[Cidr]>);

impl TrustedProxies {
    pub fn new(ranges: Vec<Cidr>) -> Self {
        Self(ranges.into())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The address a delivery from TCP peer `peer` came from, or `None` when it cannot be
    /// known.
    ///
    /// A peer that is not a trusted proxy is the source, whatever its headers say. From a
    /// trusted proxy, the `X-Forwarded-For` entries (every such header, in order, each split
    /// on commas) are read from the right, the end each proxy appends to: trusted proxies are
    /// skipped, and the first address that is not one is the source. Entries further left
    /// were written by that client and prove nothing. No header, nothing but trusted proxies,
    /// or an entry that is no address (`unknown`, a name, an empty entry, a header that is
    /// not ASCII) before an untrusted one gives `None`: the core then refuses the delivery
    /// for an account with a source list, and accepts it for one without. An entry may carry
    /// a port (`1.2.3.4:5678`, `[2600:1f18::1]:443`). IPv4-mapped IPv6 addresses are given as
    /// IPv4.
    pub fn source(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return Some(peer);
        }
        let mut entries = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            entries.extend(value.to_str().ok()?.split(','));
        }
        for entry in entries.into_iter().rev() {
            let ip = forwarded_address(entry.trim_matches([' ', '\t']))?;
            if !self.trusts(ip) {
                return Some(ip);
            }
        }
        None
    }
}

/// An `X-Forwarded-For` entry's address: a bare IP, or an IP with a port.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// What the sidecar's handler holds.
#[derive(Clone, Debug)]
struct Sidecar {
    upstream: Upstream,
    refusals: Refusals,
    proxies: TrustedProxies,
}

/// The sidecar's way to the core: a gRPC channel and the system key it calls with.
#[derive(Clone)]
pub struct Upstream {
    client: ProviderEventsClient<Channel>,
    authorization: AsciiMetadataValue,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstream { .. }")
    }
}

impl Upstream {
    /// An upstream over `channel`, calling with `key` (a system key with `events:ingest`).
    pub fn new(channel: Channel, key: &ApiKey) -> Self {
        let mut authorization: AsciiMetadataValue = format!("Bearer {}", key.expose())
            .parse()
            .expect("an API key is printable ASCII");
        authorization.set_sensitive(true);
        Self {
            client: ProviderEventsClient::new(channel)
                .max_decoding_message_size(64 << 10)
                .max_encoding_message_size(MAX_BODY_BYTES + MAX_HEADER_BYTES + (16 << 10)),
            authorization,
        }
    }

    /// A lazily connected channel to `url` (`http://host:port`, or `https://` with `tls`):
    /// the sidecar starts whether or not the core is up yet, and a delivery while it is not is
    /// answered 503.
    pub fn channel(url: &str, tls: &UpstreamTls) -> Result<Channel, UpstreamError> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        if endpoint.uri().scheme_str() == Some("https") {
            endpoint = endpoint.tls_config(tls.client_config()?)?;
        } else if tls.ca.is_some() || tls.identity.is_some() {
            return Err(UpstreamError::Config(
                "the TLS options need an https:// --grpc-endpoint".into(),
            ));
        }
        Ok(endpoint.connect_lazy())
    }
}

/// The sidecar's routes; the refusals it decides alone are counted in `refusals`, and
/// `proxies` are believed about where a delivery came from. Serve it with [`listener::serve`],
/// which bounds what clients hold and gives each request its TCP peer (`ConnectInfo`): a
/// delivery is judged by it.
pub fn router(upstream: Upstream, refusals: Refusals, proxies: TrustedProxies) -> Router {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let timeouts = refusals.clone();
    Router::new()
        .route("/webhooks/{account}", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(move |request, next| {
            bounded(in_flight.clone(), timeouts.clone(), request, next)
        }))
        .with_state(Sidecar {
            upstream,
            refusals,
            proxies,
        })
}

/// Sheds what is over [`MAX_IN_FLIGHT`] and ends what runs past [`REQUEST_TIMEOUT`].
async fn bounded(
    in_flight: Arc<Semaphore>,
    refusals: Refusals,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Ok(_permit) = in_flight.try_acquire_owned() else {
        return WebhookError::Unavailable {
            retry_after: Duration::from_secs(1),
        }
        .into_response();
    };
    let account = request
        .uri()
        .path()
        .strip_prefix("/webhooks/")
        .map(str::to_owned);
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => refusals
            .refuse(account.as_deref(), REASON_TIMEOUT, WebhookError::Timeout)
            .into_response(),
    }
}

/// Why a delivery was not acknowledged, as the provider is told.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("body over {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("headers over {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("the body could not be read")]
    BadBody,
    #[error("no signature header")]
    Unsigned,
    #[error("invalid signature")]
    InvalidSignature,
    #[error("unknown account")]
    UnknownAccount,
    /// The core refused the delivery's source address.
    #[error("source not allowed")]
    Forbidden,
    /// The core could not store it now; the provider should retry.
    #[error("the core is unavailable")]
    Unavailable { retry_after: Duration },
    #[error("the delivery took too long")]
    Timeout,
    #[error("unexpected answer from the core")]
    Internal,
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        // Refusals say no more than this: never which secret, header or check failed.
        let body = match &self {
            WebhookError::TooLarge => "payload too large",
            WebhookError::HeadersTooLarge => "headers too large",
            WebhookError::BadBody => "bad request",
            WebhookError::Unsigned | WebhookError::InvalidSignature => "invalid signature",
            WebhookError::UnknownAccount => "unknown account",
            WebhookError::Forbidden => "forbidden",
            WebhookError::Unavailable { .. } => "unavailable, retry later",
            WebhookError::Timeout => "request timeout",
            WebhookError::Internal => "internal error",
        };
        let mut response = (self.status_code(), body).into_response();
        match self {
            WebhookError::Unavailable { retry_after } => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after.as_secs().max(1)),
                );
            }
            // The rest of a body that stopped arriving is never read: the connection closes
            // after this answer rather than waiting for it.
            WebhookError::Timeout => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl WebhookError {
    /// The HTTP answer to a refusal from the core.
    fn from_status(status: &Status) -> Self {
        let details = status.get_error_details();
        let reason = details.error_info().map(|i| i.reason.as_str());
        let retry_after =
            details
                .retry_info()
                .and_then(|r| r.retry_delay)
                .map_or(DEFAULT_RETRY_AFTER, |d| {
                    // Whole seconds, rounded up: Retry-After has no fractions.
                    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
                });
        match (status.code(), reason) {
            (Code::Unauthenticated, Some(REASON_WEBHOOK_SIGNATURE_INVALID)) => {
                WebhookError::Unsigned
            }
            (_, Some(REASON_WEBHOOK_SIGNATURE_INVALID)) => WebhookError::InvalidSignature,
            (Code::NotFound, Some(REASON_ACCOUNT_NOT_FOUND)) => WebhookError::UnknownAccount,
            (Code::PermissionDenied, Some(REASON_WEBHOOK_SOURCE_NOT_ALLOWED)) => {
                WebhookError::Forbidden
            }
            (Code::OutOfRange, _) => WebhookError::TooLarge,
            (
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::ResourceExhausted
                | Code::Aborted
                | Code::Unknown
                | Code::Cancelled,
                _,
            ) => WebhookError::Unavailable { retry_after },
            (Code::Unauthenticated | Code::PermissionDenied, _) => {
                tracing::error!(
                    code = ?status.code(),
                    "the core refused the sidecar's system key: check COFFER_SYSTEM_KEY"
                );
                WebhookError::Unavailable {
                    retry_after: DEFAULT_RETRY_AFTER,
                }
            }
            _ => {
                tracing::error!(code = ?status.code(), message = status.message(), "unexpected answer from the core");
                WebhookError::Internal
            }
        }
    }
}

/// Writes trace context into gRPC metadata.
struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            AsciiMetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

async fn receive(
    State(Sidecar {
        upstream,
        refusals,
        proxies,
    }): State<Sidecar>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    account: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<&'static str, WebhookError> {
    let span = tracing::info_span!(
        "webhook",
        otel.name = "POST /webhooks/{account}",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/webhooks/{account}",
        http.response.status_code = tracing::field::Empty,
    );
    let parent =
        opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(&headers)));
    // Fails only when no OpenTelemetry layer is installed; the span still works.
    let _ = span.set_parent(parent);
    let source = proxies.source(peer.ip(), &headers);
    let result = forward(upstream, &refusals, account, source, headers, body)
        .instrument(span.clone())
        .await;
    let code = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status_code(),
    };
    span.record("http.response.status_code", code.as_u16());
    result
}

impl WebhookError {
    fn status_code(&self) -> StatusCode {
        match self {
            WebhookError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            WebhookError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            WebhookError::BadBody | WebhookError::InvalidSignature => StatusCode::BAD_REQUEST,
            WebhookError::Unsigned => StatusCode::UNAUTHORIZED,
            WebhookError::UnknownAccount => StatusCode::NOT_FOUND,
            WebhookError::Forbidden => StatusCode::FORBIDDEN,
            WebhookError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            WebhookError::Timeout => StatusCode::REQUEST_TIMEOUT,
            WebhookError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

async fn forward(
    mut upstream: Upstream,
    refusals: &Refusals,
    account: Result<Path<String>, PathRejection>,
    source: Option<IpAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<&'static str, WebhookError> {
    // A path that does not decode to a name cannot be an account's.
    let Ok(Path(account)) = account else {
        return Err(refusals.refuse(None, REASON_UNKNOWN_ACCOUNT, WebhookError::UnknownAccount));
    };
    let body = body.map_err(|e| {
        if listener::is_stalled(&e) {
            refusals.refuse(Some(&account), REASON_TIMEOUT, WebhookError::Timeout)
        } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            refusals.refuse(Some(&account), REASON_TOO_LARGE, WebhookError::TooLarge)
        } else {
            refusals.refuse(Some(&account), REASON_UNREADABLE, WebhookError::BadBody)
        }
    })?;
    // HeaderMap keeps every value of a name, in arrival order; names come lower-cased.
    let mut size = 0;
    let mut forwarded = Vec::with_capacity(headers.len());
    for (name, value) in &headers {
        size += name.as_str().len() + value.len();
        if size > MAX_HEADER_BYTES {
            return Err(refusals.refuse(
                Some(&account),
                REASON_HEADERS_TOO_LARGE,
                WebhookError::HeadersTooLarge,
            ));
        }
        forwarded.push(Header {
            name: name.as_str().to_owned(),
            value: value.as_bytes().to_vec(),
        });
    }
    let mut request = tonic::Request::new(IngestEventRequest {
        account,
        headers: forwarded,
        body: body.to_vec(),
        source_address: source.map(|ip| ip.to_string()).unwrap_or_default(),
    });
    request.set_timeout(UPSTREAM_TIMEOUT);
    let metadata = request.metadata_mut();
    metadata.insert("authorization", upstream.authorization.clone());
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&context, &mut MetadataInjector(metadata))
    });
    // Without an OpenTelemetry layer there is no span context to inject: pass the caller's
    // own trace context on as it came, so the core's span still joins the provider's trace.
    if !metadata.contains_key("traceparent") {
        for name in ["traceparent", "tracestate"] {
            if let Some(v) = headers
                .get(name)
                .and_then(|v| AsciiMetadataValue::try_from(v.as_bytes()).ok())
            {
                metadata.insert(name, v);
            }
        }
    }
    match upstream.client.ingest_event(request).await {
        Ok(_) => Ok("ok"),
        Err(status) => Err(WebhookError::from_status(&status)),
    }
}

/// `coffer webhooks`: the sidecar alone, in front of a core at `grpc_endpoint`.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    pub grpc_endpoint: String,
    /// How an `https` endpoint is trusted, and the sidecar's client certificate for mTLS.
    pub upstream_tls: UpstreamTls,
    pub http_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// How long deliveries in flight have to finish on shutdown.
    pub drain_timeout: Duration,
    /// Proxies whose `X-Forwarded-For` is believed (`--webhook-trusted-proxies`).
    pub trusted_proxies: Vec<Cidr>,
    /// What one client may hold on the public listener (`--http-*`).
    pub limits: ListenerLimits,
}

/// TLS to the core from a sidecar run alone: the CA its certificate chains to (Mozilla's roots
/// without one), and a client certificate and key where the core requires mTLS. PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    pub ca: Option<std::path::PathBuf>,
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl UpstreamTls {
    fn client_config(&self) -> Result<tonic::transport::ClientTlsConfig, UpstreamError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| UpstreamError::Config(format!("{}: {e}", path.display())))
        };
        let mut config = tonic::transport::ClientTlsConfig::new();
        config = match &self.ca {
            Some(ca) => config.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?)),
            None => config.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        Ok(config)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("{0}")]
    Config(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("--grpc-endpoint")]
    Endpoint(#[source] UpstreamError),
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A standalone sidecar whose listeners are bound.
pub struct Standalone {
    config: StandaloneConfig,
    channel: Channel,
    upstream: Upstream,
    /// Its own refusals' counter, served on the admin listener's `/metrics`.
    refusals: Refusals,
    connections: ListenerMetrics,
    registry: Arc<Registry>,
    http: TcpListener,
    admin: TcpListener,
}

impl Standalone {
    pub async fn bind(config: StandaloneConfig, key: &ApiKey) -> Result<Self, StandaloneError> {
        let channel = Upstream::channel(&config.grpc_endpoint, &config.upstream_tls)
            .map_err(StandaloneError::Endpoint)?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StandaloneError::Bind { addr, source })
        };
        let mut registry = Registry::default();
        let refusals = Refusals::registered(&mut registry);
        let connections = ListenerMetrics::default();
        connections.register(&mut registry);
        Ok(Self {
            upstream: Upstream::new(channel.clone(), key),
            refusals,
            connections,
            registry: Arc::new(registry),
            channel,
            http: bind(config.http_addr).await?,
            admin: bind(config.admin_addr).await?,
            config,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("bound listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr().expect("bound listener")
    }

    /// Serves until `signal`, then stops accepting, lets deliveries in flight finish (up to
    /// the drain timeout) and returns.
    pub async fn run(self, signal: impl std::future::Future<Output = ()> + Send) {
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        tracing::info!(
            http = %self.http_addr(),
            admin = %self.admin_addr(),
            upstream = %self.config.grpc_endpoint,
            "webhook sidecar is serving"
        );
        let registry = self.registry;
        let admin = Router::new()
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(move || metrics_text(registry.clone())))
            .with_state(self.channel);
        let proxies = TrustedProxies::new(self.config.trusted_proxies.clone());
        let public = router(self.upstream, self.refusals, proxies);
        tasks.spawn(listener::serve(
            self.http,
            public,
            self.config.limits,
            self.connections,
            stop.clone().cancelled_owned(),
        ));
        let admin_stop = stop.clone().cancelled_owned();
        tasks.spawn(async move {
            if let Err(e) = axum::serve(self.admin, admin)
                .with_graceful_shutdown(admin_stop)
                .await
            {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
        tasks.close();
        signal.await;
        tracing::info!("shutting down: draining deliveries in flight");
        stop.cancel();
        if tokio::time::timeout(self.config.drain_timeout, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("deliveries still in flight at the drain deadline: abandoning them");
        }
        tracing::info!("drained; bye");
    }
}

/// The standalone sidecar's metrics, in OpenMetrics text as the core's admin listener serves
/// its own.
async fn metrics_text(registry: Arc<Registry>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Ready while the core's health answers SERVING for the whole server.
async fn readyz(State(channel): State<Channel>) -> (StatusCode, &'static str) {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(Duration::from_secs(1));
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    match tokio::time::timeout(Duration::from_secs(2), health.check(request)).await {
        Ok(Ok(r)) if r.get_ref().status == serving => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "upstream not serving\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies::new(ranges.iter().map(|r| Cidr::parse(r).unwrap()).collect())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn source(trusted: &TrustedProxies, peer: &str, values: &[&str]) -> Option<String> {
        trusted
            .source(ip(peer), &xff(values))
            .map(|ip| ip.to_string())
    }

    #[test]
    fn an_untrusted_peer_is_the_source_whatever_its_headers_say() {
        let none = TrustedProxies::default();
        assert_eq!(
            source(&none, "127.0.0.1", &["3.18.12.63"]).as_deref(),
            Some("127.0.0.1")
        );
        let trusted = proxies(&["10.0.0.0/8"]);
        assert_eq!(
            source(&trusted, "203.0.113.7", &["3.18.12.63"]).as_deref(),
            Some("203.0.113.7")
        );
        // A dual-stack listener's IPv4 peer is given as IPv4.
        assert_eq!(
            source(&none, "::ffff:203.0.113.7", &[]).as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(
            source(&none, "2600:1f18::9", &[]).as_deref(),
            Some("2600:1f18::9")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_address_is_the_source() {
        let trusted = proxies(&["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"]);
        for (values, expected) in [
            (&["3.18.12.63"][..], Some("3.18.12.63")),
            // A left-most entry is the client's own claim: ignored.
            (&["1.2.3.4, 3.18.12.63"], Some("3.18.12.63")),
            (&["3.18.12.63, 1.2.3.4"], Some("1.2.3.4")),
            // Trusted hops on the right are skipped.
            (
                &["1.2.3.4, 3.18.12.63, 10.1.1.1, fd00::2"],
                Some("3.18.12.63"),
            ),
            // Several headers are one list, in order.
            (&["1.2.3.4", "3.18.12.63, 10.0.0.2"], Some("3.18.12.63")),
            (&["3.18.12.63", "1.2.3.4"], Some("1.2.3.4")),
            // Ports, brackets, tabs, mapped addresses.
            (&["3.18.12.63:5000"], Some("3.18.12.63")),
            (&["[2600:1f18::1]:443"], Some("2600:1f18::1")),
            (&["\t3.18.12.63 ,10.0.0.1"], Some("3.18.12.63")),
            (&["::ffff:3.18.12.63"], Some("3.18.12.63")),
            // No client address to be had: unknown, never the proxy's own.
            (&[], None),
            (&["10.0.0.3, 127.0.0.1"], None),
            (&["unknown"], None),
            (&["3.18.12.63, unknown"], None),
            (&["3.18.12.63,"], None),
            (&["3.18.12.63, example.com"], None),
            // Rubbish left of the source is never read.
            (&["not an address, 3.18.12.63"], Some("3.18.12.63")),
        ] {
            assert_eq!(
                source(&trusted, "127.0.0.1", values).as_deref(),
                expected,
                "{values:?}"
            );
        }
        // A header that is not ASCII is no list at all.
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"3.18.12.63, \xe9").unwrap(),
        );
        assert_eq!(trusted.source(ip("127.0.0.1"), &headers), None);
        // The trusted peer may be seen as mapped IPv6.
        assert_eq!(
            source(&trusted, "::ffff:127.0.0.1", &["3.18.12.63"]).as_deref(),
            Some("3.18.12.63")
        );
    }
}
