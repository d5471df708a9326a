//! The outbound HTTP client stack every provider adapter (Stripe, Polar, PayTabs) sends its
//! requests through; the sandbox makes no HTTP calls. One [`Outbound`] per provider account,
//! built at start, holds that account's connection pool, circuit breaker and bulkhead.
//!
//! # One logical call
//!
//! [`Outbound::send`] makes one logical call, which is one or more HTTP attempts:
//!
//! 1. **Bulkhead.** At most `max_concurrent` calls per account are under way (retries and
//!    their waits included); a call that finds none free within `bulkhead_wait` is refused as
//!    retryable, so one provider's outage fills its own account's slots and nothing else.
//! 2. **Breaker.** Each attempt asks the account's circuit breaker first ([`breaker`]); while it
//!    is open the attempt is refused at once, without touching the network, and the call ends
//!    with the time left of the cool-down as `retry_after` (gRPC: UNAVAILABLE,
//!    `PROVIDER_UNAVAILABLE`, with that RetryInfo).
//! 3. **Attempt.** Each attempt has `attempt_timeout` (connecting, sending, and reading the
//!    whole answer, at most `max_response_bytes`), of which connecting has `connect_timeout`;
//!    never more than what is left of the call's `deadline`.
//! 4. **Retry** per the table below, with exponential backoff and full jitter (a wait drawn
//!    uniformly from zero to `base_backoff · 2ⁿ`, at most `max_backoff`; `backon` makes the
//!    schedule), at most `max_attempts` attempts, and never past the deadline: a wait that
//!    would end past it (or leave the next attempt less than `min(attempt_timeout, 250 ms)`)
//!    ends the call instead. A `Retry-After` (seconds or an HTTP-date) is waited at least; one
//!    that ends past the deadline ends the call at once with it as `retry_after`.
//!
//! Every attempt of a write carries the caller's `Idempotency-Key`, the same on every attempt
//! (the journal's `{operation}-{generation}`), so the provider applies it once however often
//! it is sent.
//!
//! # Classification
//!
//! "Read" is a GET, HEAD or OPTIONS; every other method is a write. "Keyed" is a request with
//! an idempotency key. `Stripe-Should-Retry: true|false` on an answer, where present, decides
//! whether it is retried, whatever its status.
//!
//! | what came back | retried | if it is the last |
//! |---|---|---|
//! | 2xx, 3xx (redirects are not followed) | no | `Ok` |
//! | 4xx but 429 (and Stripe's 409) | no | `Ok`: the caller reads the provider's error |
//! | 429 | yes | `Retryable`, `retry_after` from `Retry-After` |
//! | 409 from a Stripe account (idempotency key in use by a request in flight), unless marked `Stripe-Should-Retry: false` | yes | read: `Retryable`; write: `Unknown` |
//! | 5xx | reads and keyed writes | read: `Retryable`; write: `Unknown` |
//! | connection refused, DNS, TLS (nothing was sent) | yes | `Retryable` |
//! | timeout, connection broken after it was made | reads and keyed writes | read: `Retryable`; write: `Unknown` |
//! | refused by the breaker | no | `Retryable`, `retry_after` the cool-down left |
//! | refused by the bulkhead | no | `Retryable` |
//!
//! A write one of whose attempts may have been applied (a 5xx, a timeout, a broken connection,
//! Stripe's 409) ends `Unknown` whatever its last attempt was, unless that last attempt got an
//! answer the table returns as `Ok` (which, under the same idempotency key, is the provider's
//! answer to the operation). A 503 on a write is `Unknown` too, not `Retryable`: a load
//! balancer answers 503 when its backend dropped a request it may already have applied, and
//! `Retryable` makes the journal call again under a new generation. `Unknown` costs one fetch
//! by Coffer's id; a wrong `Retryable` could charge or refund twice.
//!
//! # Defaults
//!
//! `connect_timeout` 3 s, `attempt_timeout` 10 s, `deadline` 15 s, `max_attempts` 4,
//! `base_backoff` 250 ms, `max_backoff` 4 s, `max_concurrent` 32, `bulkhead_wait` 100 ms,
//! `max_response_bytes` 4 MiB; the breaker ([`BreakerConfig`]): a 30 s window, opening at 50 %
//! failures over at least 10 attempts, a 15 s cool-down, 3 trial attempts. The deadline is
//! shorter than the work timeout of an idempotent call (20 s, `--work-timeout`), itself at most
//! half the idempotency lease (60 s, `--idempotency-lease`, `app::idempotency`), so a provider
//! call ends before the work around it is abandoned and long before another attempt under
//! the same key could claim it.
//!
//! # Telemetry
//!
//! Each attempt is a span (`provider_request`, OpenTelemetry HTTP client conventions):
//! `http.request.method`, `server.address`, `server.port`, `url.full` without its query,
//! `http.response.status_code`, `error.type`, `provider`, `operation`, `attempt`,
//! `http.request.resend_count`, and the provider's request id (`provider.request_id`, from
//! Stripe's `Request-Id` or an `X-Request-Id`). Never a header value, a body or a query
//! string: API keys, card data and personal data stay out. Metrics: [`OutboundMetrics`].
//!
//! TLS is rustls with the ring provider and Mozilla's roots (`webpki-roots`); a plain `http`
//! URL is refused unless its host is loopback (the tests' fake providers). Redirects are not
//! followed (an API that redirects is misconfigured, and the Authorization header must not
//! travel). Proxies come from the environment (`HTTPS_PROXY`, `NO_PROXY`), as egress often
//! requires.

mod breaker;
mod metrics;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable as _};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, StatusCode};
use tokio::sync::Semaphore;
use tracing::Instrument;
use tracing::field::Empty;

pub use breaker::{BreakerConfig, BreakerState};
pub use metrics::{OutboundMetrics, Outcome};

use self::breaker::{Breaker, Verdict};
use super::ProviderError;
use crate::domain::account::{AccountName, ProviderKind};

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const STRIPE_SHOULD_RETRY: HeaderName = HeaderName::from_static("stripe-should-retry");
/// Stripe's request id; other providers' load balancers tend to send `X-Request-Id`.
const REQUEST_ID: [HeaderName; 2] = [
    HeaderName::from_static("request-id"),
    HeaderName::from_static("x-request-id"),
];
/// The least time worth starting another attempt with (or its timeout, when shorter).
const MIN_ATTEMPT: Duration = Duration::from_millis(250);
/// `Retry-After` values past this are taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Timeouts, retries, breaker and bulkhead of one account's stack. The defaults are in the
/// module's documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundConfig {
    /// Connecting (TCP and TLS), within each attempt.
    pub connect_timeout: Duration,
    /// One attempt, from connecting to the answer's last byte.
    pub attempt_timeout: Duration,
    /// The whole logical call: every attempt and every wait between them.
    pub deadline: Duration,
    /// Attempts per logical call, the first included.
    pub max_attempts: u32,
    /// The ceiling of the first retry's wait; it doubles per retry, up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    pub breaker: BreakerConfig,
    /// Calls under way at once on the account (the bulkhead).
    pub max_concurrent: usize,
    /// How long a call waits for a free slot before it is refused.
    pub bulkhead_wait: Duration,
    /// A longer answer fails the attempt (as a broken connection).
    pub max_response_bytes: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(15),
            max_attempts: 4,
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
            breaker: BreakerConfig::default(),
            max_concurrent: 32,
            bulkhead_wait: Duration::from_millis(100),
            max_response_bytes: 4 << 20,
        }
    }
}

impl OutboundConfig {
    /// Checks the durations nest and the counts are positive.
    pub fn check(&self) -> Result<(), String> {
        if self.connect_timeout.is_zero()
            || self.attempt_timeout.is_zero()
            || self.deadline.is_zero()
        {
            return Err("the outbound timeouts and deadline must be positive".into());
        }
        if self.connect_timeout > self.attempt_timeout || self.attempt_timeout > self.deadline {
            return Err(format!(
                "the outbound timeouts must nest: connect ({:?}) <= attempt ({:?}) <= deadline ({:?})",
                self.connect_timeout, self.attempt_timeout, self.deadline
            ));
        }
        if self.max_attempts == 0 || self.max_concurrent == 0 || self.max_response_bytes == 0 {
            return Err(
                "the outbound attempts, concurrency and response size must be positive".into(),
            );
        }
        if self.base_backoff.is_zero() || self.max_backoff < self.base_backoff {
            return Err(format!(
                "the outbound backoff must be positive and base ({:?}) <= max ({:?})",
                self.base_backoff, self.max_backoff
            ));
        }
        self.breaker.check()
    }
}

/// Why an [`Outbound`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid outbound configuration: {0}")]
    Config(String),
    #[error("the HTTP client could not be built")]
    Client(#[source] reqwest::Error),
}

/// One request of a provider's API.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    /// The metric and span label: a fixed name (`create_checkout_session`, ...).
    pub operation: &'static str,
    pub method: Method,
    /// Absolute; `https`, or `http` to a loopback host.
    pub url: String,
    /// Authorization, the provider's API version, ... Their values are never logged or traced.
    pub headers: Vec<(HeaderName, String)>,
    pub body: Option<OutboundBody>,
    /// Sent as `Idempotency-Key` on every attempt. Every write that has one must carry it.
    pub idempotency_key: Option<String>,
}

/// A request body, already encoded.
#[derive(Debug, Clone)]
pub enum OutboundBody {
    /// `application/x-www-form-urlencoded` (Stripe).
    Form(String),
    /// `application/json`.
    Json(Vec<u8>),
}

/// The provider's answer, for the adapter to read.
#[derive(Debug, Clone)]
pub struct OutboundResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The provider's id of the request (Stripe's `Request-Id`), for support tickets.
    pub request_id: Option<String>,
}

/// One provider account's client stack. Built once per account at start; cheap to clone
/// (clones share the pool, the breaker and the bulkhead).
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    config: OutboundConfig,
    provider: ProviderKind,
    account: AccountName,
    bulkhead: Arc<Semaphore>,
    breaker: Breaker,
    metrics: OutboundMetrics,
}

/// An HTTP client builder with Coffer's TLS: rustls on the ring provider, Mozilla's roots.
/// Every reqwest client in Coffer (and its tests) starts here: reqwest is built without a
/// crypto provider of its own, and its plain `Client::builder()` panics at `build` unless a
/// process-wide one was installed.
#[allow(clippy::disallowed_methods)]
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().tls_backend_preconfigured(tls_config())
}

fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Exponential backoff with full jitter: the n-th wait (from 0) is drawn uniformly from zero to
/// `base · 2ⁿ`, capped at `max`; `retries` waits at most. The spread keeps many callers that
/// failed together from retrying together.
pub fn full_jitter_backoff(base: Duration, max: Duration, retries: usize) -> impl backon::Backoff {
    ExponentialBuilder::new()
        .with_min_delay(base)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_max_times(retries)
        .build()
        .map(|ceiling| ceiling.mul_f64(unit_random()))
}

/// A uniform number in [0, 1) from the operating system's random source.
fn unit_random() -> f64 {
    let bits = getrandom::u64().unwrap_or(u64::MAX / 2);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// How an answer is treated, by [`policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The provider's answer to the request: `Ok`.
    Final,
    /// Rate limited before any work.
    RateLimited,
    /// May or may not have been applied.
    Ambiguous,
}

/// The classification table of the module docs, for one answer: how it is treated and
/// whether it is retried.
fn policy(
    provider: ProviderKind,
    status: StatusCode,
    should_retry: Option<bool>,
    read: bool,
    keyed: bool,
) -> (Answer, bool) {
    let (answer, retry) = if status == StatusCode::TOO_MANY_REQUESTS {
        (Answer::RateLimited, true)
    } else if status.is_server_error() {
        (Answer::Ambiguous, read || keyed)
    } else if status == StatusCode::CONFLICT
        && provider == ProviderKind::Stripe
        && should_retry != Some(false)
    {
        // Stripe's idempotency key in use by a request still in flight; its SDKs retry it.
        // Marked not to be retried, it is a conflict to read like any other 4xx.
        (Answer::Ambiguous, true)
    } else {
        (Answer::Final, false)
    };
    (answer, should_retry.unwrap_or(retry))
}

/// `Stripe-Should-Retry`, where present and readable.
fn should_retry(headers: &HeaderMap) -> Option<bool> {
    let value = headers.get(STRIPE_SHOULD_RETRY)?.to_str().ok()?.trim();
    if value.eq_ignore_ascii_case("true") {
        Some(true)
    } else if value.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// `Retry-After` in seconds or as an HTTP-date (a date already past is zero), at most an hour.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Why an attempt did not end the call with `Ok`.
#[derive(Debug)]
struct Failure {
    kind: FailureKind,
    /// Whether the policy retries it.
    retry: bool,
    /// The least wait before the next attempt.
    retry_after: Option<Duration>,
    /// A write that may have been applied.
    applied: bool,
}

#[derive(Debug)]
enum FailureKind {
    /// An answer the policy treats as `answer` (`Final` only when retried at the provider's
    /// word and the retries ran out).
    Answer(Answer, OutboundResponse),
    /// Nothing was sent.
    Connect(String),
    Timeout,
    /// The connection broke, or the answer was unreadable or too long.
    Transport(String),
    BreakerOpen,
}

impl Failure {
    fn describe(&self) -> String {
        match &self.kind {
            FailureKind::Answer(_, response) => match &response.request_id {
                Some(id) => format!("the provider answered {} (request {id})", response.status),
                None => format!("the provider answered {}", response.status),
            },
            FailureKind::Connect(e) => format!("could not connect: {e}"),
            FailureKind::Timeout => "no answer in time".into(),
            FailureKind::Transport(e) => format!("the connection failed: {e}"),
            FailureKind::BreakerOpen => {
                "the account's circuit breaker is open after repeated failures".into()
            }
        }
    }
}

/// A request checked and encoded once, sent by every attempt.
struct Prepared {
    url: reqwest::Url,
    headers: HeaderMap,
    body: Option<Bytes>,
    /// The URL for the span: no user info, query or fragment.
    traced_url: String,
    host: String,
    port: Option<u16>,
}

fn invalid(message: String) -> ProviderError {
    ProviderError::Definitive {
        code: "invalid_outbound_request".into(),
        message,
        decline_code: None,
    }
}

impl Prepared {
    fn new(request: &OutboundRequest) -> Result<Self, ProviderError> {
        let url = reqwest::Url::parse(&request.url)
            .map_err(|e| invalid(format!("the provider URL does not parse: {e}")))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = bare.eq_ignore_ascii_case("localhost")
            || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            scheme => {
                return Err(invalid(format!(
                    "provider URLs must be https (http only to loopback), not {scheme}"
                )));
            }
        }
        let port = url.port_or_known_default();
        let mut traced = url.clone();
        traced.set_query(None);
        traced.set_fragment(None);
        // Neither fails on an http(s) URL with a host.
        let _ = traced.set_username("");
        let _ = traced.set_password(None);

        let mut headers = HeaderMap::with_capacity(request.headers.len() + 2);
        for (name, value) in &request.headers {
            let mut value = HeaderValue::from_str(value).map_err(|_| {
                invalid(format!("the {name} header's value cannot be sent in HTTP"))
            })?;
            // Keeps it out of hyper's debug output and HPACK tables.
            value.set_sensitive(true);
            headers.append(name.clone(), value);
        }
        if let Some(key) = &request.idempotency_key {
            let value = HeaderValue::from_str(key)
                .map_err(|_| invalid("the idempotency key cannot be sent in HTTP".into()))?;
            headers.insert(IDEMPOTENCY_KEY, value);
        }
        let body = request.body.as_ref().map(|body| {
            let (content_type, bytes) = match body {
                OutboundBody::Form(s) => (
                    "application/x-www-form-urlencoded",
                    Bytes::from(s.clone().into_bytes()),
                ),
                OutboundBody::Json(b) => ("application/json", Bytes::from(b.clone())),
            };
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            bytes
        });
        Ok(Self {
            traced_url: traced.to_string(),
            url,
            headers,
            body,
            host,
            port,
        })
    }
}

/// What one HTTP exchange failed with.
enum Exchange {
    Http(reqwest::Error),
    TooLong,
}

/// An error and its sources, without the URL reqwest puts in its message (it may carry a
/// query string).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl Outbound {
    /// The stack of `provider`'s `account`. Builds its HTTP client (no connection is made yet).
    pub fn new(
        config: OutboundConfig,
        provider: ProviderKind,
        account: &AccountName,
        metrics: OutboundMetrics,
    ) -> Result<Self, BuildError> {
        config.check().map_err(BuildError::Config)?;
        let client = client_builder()
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("coffer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(BuildError::Client)?;
        let on_change = {
            let metrics = metrics.clone();
            let account = account.as_str().to_owned();
            Arc::new(move |state| metrics.breaker_state(&account, state))
        };
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                bulkhead: Arc::new(Semaphore::new(config.max_concurrent)),
                breaker: Breaker::new(config.breaker.clone(), on_change),
                config,
                provider,
                account: account.clone(),
                metrics,
            }),
        })
    }

    pub fn provider(&self) -> ProviderKind {
        self.inner.provider
    }

    pub fn account(&self) -> &AccountName {
        &self.inner.account
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// Sends one logical call with the retry policy of the module docs. `Ok` is the provider's
    /// answer to read (2xx, or a 4xx not retried); `Err` is no usable answer: `Retryable`
    /// (nothing happened), `Unknown` (a write that may have happened), or `Definitive` for a
    /// request that cannot be sent at all (a bad URL or header value).
    pub async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, ProviderError> {
        let inner = &*self.inner;
        let prepared = Prepared::new(&request)?;
        let deadline = Instant::now() + inner.config.deadline;
        let permit = tokio::time::timeout(
            inner.config.bulkhead_wait,
            inner.bulkhead.clone().acquire_owned(),
        )
        .await;
        let Ok(Ok(_permit)) = permit else {
            inner
                .metrics
                .count(inner.provider, request.operation, Outcome::BulkheadFull);
            return Err(ProviderError::Retryable {
                message: format!(
                    "too many calls to the provider account {} at once",
                    inner.account
                ),
                retry_after: None,
            });
        };

        let read = is_read(&request.method);
        let keyed = request.idempotency_key.is_some();
        let attempts = AtomicU32::new(0);
        let applied = AtomicBool::new(false);
        let floor = inner.config.attempt_timeout.min(MIN_ATTEMPT);
        let (attempts, applied, request, prepared) = (&attempts, &applied, &request, &prepared);
        let backoff = full_jitter_backoff(
            inner.config.base_backoff,
            inner.config.max_backoff,
            inner.config.max_attempts as usize - 1,
        );
        let result = (move || async move {
            let number = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            let result = self
                .attempt(request, prepared, number, deadline, read, keyed)
                .await;
            if let Err(f) = &result
                && f.applied
            {
                applied.store(true, Ordering::Relaxed);
            }
            result
        })
        .retry(backoff)
        .when(|f: &Failure| f.retry)
        .adjust(|f: &Failure, next: Option<Duration>| {
            let wait = next?.max(f.retry_after.unwrap_or_default());
            (Instant::now() + wait + floor <= deadline).then_some(wait)
        })
        .notify(|f: &Failure, wait: Duration| {
            tracing::info!(
                provider = inner.provider.as_str(),
                operation = request.operation,
                attempt = attempts.load(Ordering::Relaxed),
                wait_ms = wait.as_millis() as u64,
                reason = %f.describe(),
                "retrying a provider request"
            );
        })
        .await;

        match result {
            Ok(response) => Ok(response),
            Err(Failure {
                kind: FailureKind::Answer(Answer::Final, response),
                ..
            }) => Ok(response),
            Err(f) => {
                let message = match attempts.load(Ordering::Relaxed) {
                    1 => f.describe(),
                    n => format!("{} (after {n} attempts)", f.describe()),
                };
                if !read && applied.load(Ordering::Relaxed) {
                    Err(ProviderError::Unknown { message })
                } else {
                    Err(ProviderError::Retryable {
                        message,
                        retry_after: f.retry_after,
                    })
                }
            }
        }
    }

    /// One HTTP attempt, past the breaker, in a span of its own.
    async fn attempt(
        &self,
        request: &OutboundRequest,
        prepared: &Prepared,
        number: u32,
        deadline: Instant,
        read: bool,
        keyed: bool,
    ) -> Result<OutboundResponse, Failure> {
        let inner = &*self.inner;
        let (provider, operation) = (inner.provider, request.operation);
        let admitted = match inner.breaker.admit() {
            Ok(admitted) => admitted,
            Err(wait) => {
                inner
                    .metrics
                    .count(provider, operation, Outcome::BreakerOpen);
                return Err(Failure {
                    kind: FailureKind::BreakerOpen,
                    retry: false,
                    retry_after: Some(wait),
                    applied: false,
                });
            }
        };
        let span = tracing::info_span!(
            "provider_request",
            otel.name = %request.method,
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = %request.method,
            server.address = %prepared.host,
            server.port = prepared.port,
            url.full = %prepared.traced_url,
            http.response.status_code = Empty,
            http.request.resend_count = Empty,
            error.type = Empty,
            provider = provider.as_str(),
            operation,
            attempt = number,
            provider.request_id = Empty,
        );
        if number > 1 {
            span.record("http.request.resend_count", number - 1);
        }
        let timeout = inner
            .config
            .attempt_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        let started = Instant::now();
        let exchanged = tokio::time::timeout(timeout, self.exchange(request, prepared))
            .instrument(span.clone())
            .await;
        inner
            .metrics
            .observe(provider, operation, started.elapsed());

        // Sent but unanswered: a write may have been applied, and is only sent again under its
        // idempotency key.
        let unanswered = |kind| Failure {
            kind,
            retry: read || keyed,
            retry_after: None,
            applied: !read,
        };
        let (outcome, verdict, result) = match exchanged {
            Err(_) => (
                Outcome::Timeout,
                Verdict::Failure,
                Err(unanswered(FailureKind::Timeout)),
            ),
            Ok(Err(Exchange::Http(e))) if e.is_connect() => (
                Outcome::ConnectError,
                Verdict::Failure,
                Err(Failure {
                    kind: FailureKind::Connect(describe(e)),
                    retry: true,
                    retry_after: None,
                    applied: false,
                }),
            ),
            Ok(Err(Exchange::Http(e))) => (
                Outcome::TransportError,
                Verdict::Failure,
                Err(unanswered(FailureKind::Transport(describe(e)))),
            ),
            Ok(Err(Exchange::TooLong)) => (
                Outcome::TransportError,
                Verdict::Success,
                Err(Failure {
                    retry: false,
                    ..unanswered(FailureKind::Transport(format!(
                        "the answer is longer than {} bytes",
                        inner.config.max_response_bytes
                    )))
                }),
            ),
            Ok(Ok(response)) => {
                let status = response.status;
                let (answer, retry) = policy(
                    provider,
                    status,
                    should_retry(&response.headers),
                    read,
                    keyed,
                );
                let outcome = if status == StatusCode::TOO_MANY_REQUESTS {
                    Outcome::RateLimited
                } else if status.is_server_error() {
                    Outcome::ServerError
                } else if status.is_client_error() {
                    Outcome::ClientError
                } else {
                    Outcome::Success
                };
                let verdict = match outcome {
                    Outcome::RateLimited => Verdict::Neutral,
                    Outcome::ServerError => Verdict::Failure,
                    _ => Verdict::Success,
                };
                let result = if answer == Answer::Final && !retry {
                    Ok(response)
                } else {
                    Err(Failure {
                        retry,
                        retry_after: retry_after(&response.headers, SystemTime::now()),
                        applied: answer == Answer::Ambiguous && !read,
                        kind: FailureKind::Answer(answer, response),
                    })
                };
                (outcome, verdict, result)
            }
        };
        admitted.record(verdict);
        inner.metrics.count(provider, operation, outcome);
        match outcome {
            Outcome::Success => {}
            Outcome::ClientError | Outcome::RateLimited | Outcome::ServerError => {
                span.record("otel.status_code", "ERROR");
            }
            _ => {
                span.record("otel.status_code", "ERROR");
                span.record("error.type", outcome.as_str());
            }
        }
        result
    }

    /// Sends the request and reads the whole answer. Records the status on the current span.
    async fn exchange(
        &self,
        request: &OutboundRequest,
        prepared: &Prepared,
    ) -> Result<OutboundResponse, Exchange> {
        let mut builder = self
            .inner
            .client
            .request(request.method.clone(), prepared.url.clone())
            .headers(prepared.headers.clone());
        if let Some(body) = &prepared.body {
            builder = builder.body(body.clone());
        }
        let mut response = builder.send().await.map_err(Exchange::Http)?;
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let request_id = REQUEST_ID
            .iter()
            .find_map(|name| headers.get(name)?.to_str().ok())
            .map(str::to_owned);
        let span = tracing::Span::current();
        span.record("http.response.status_code", status.as_u16());
        if status.as_u16() >= 400 {
            span.record("error.type", status.as_str());
        }
        if let Some(id) = &request_id {
            span.record("provider.request_id", id.as_str());
        }
        let max = self.inner.config.max_response_bytes;
        if response.content_length().is_some_and(|n| n > max as u64) {
            return Err(Exchange::TooLong);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(Exchange::Http)? {
            if body.len() + chunk.len() > max {
                return Err(Exchange::TooLong);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(OutboundResponse {
            status,
            headers,
            body: body.into(),
            request_id,
        })
    }
}
