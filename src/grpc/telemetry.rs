//! The outermost layer: one span per call with OpenTelemetry's RPC attributes (`rpc.system`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code`), parented on the caller's
//! `traceparent`; the go-grpc-prometheus metrics `grpc_server_handled_total` and
//! `grpc_server_handling_seconds`; and the call's deadline.
//!
//! Names come from the policy table, so a made-up path adds no series and no span attribute
//! of the caller's choosing. Every call is counted exactly once: the deadline is enforced here,
//! inside the layer, rather than by tonic outside it, and a call dropped before it answered
//! (its client reset the stream or went away) is counted as CANCELLED.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use tokio::time::Instant;
use tonic::body::Body;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::policy::{self, CallType, Policy};
use super::status::DOMAIN;
use crate::metrics::Metrics;
use crate::telemetry::HeaderExtractor;

/// The longest a unary call may run, whatever deadline its caller sent.
pub const SERVER_DEADLINE: Duration = Duration::from_secs(30);

/// The reason of the DEADLINE_EXCEEDED this layer answers.
pub const REASON_DEADLINE_EXCEEDED: &str = "DEADLINE_EXCEEDED";

#[derive(Clone)]
pub struct TelemetryLayer {
    metrics: Arc<Metrics>,
    server_deadline: Duration,
}

impl TelemetryLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            server_deadline: SERVER_DEADLINE,
        }
    }

    /// Replaces [`SERVER_DEADLINE`].
    pub fn with_server_deadline(mut self, limit: Duration) -> Self {
        self.server_deadline = limit;
        self
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = TelemetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TelemetryService {
            inner,
            metrics: self.metrics.clone(),
            server_deadline: self.server_deadline,
        }
    }
}

#[derive(Clone)]
pub struct TelemetryService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    server_deadline: Duration,
}

impl<S> Service<Request<Body>> for TelemetryService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // Taken before anything else: tonic arms its own timer for the caller's `grpc-timeout`
        // right after this returns, and the deadline below must not come later than it, or
        // tonic would answer (CANCELLED) for a call this layer never sees end.
        let started = Instant::now();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let policy = policy::of(req.uri().path());
        let deadline = Deadline::of(req.headers(), policy, self.server_deadline)
            .map(|d| (started + d.after, d));

        let (service, method) = policy.map_or(("unknown", "unknown"), |p| (p.service, p.method));
        let span = tracing::info_span!(
            "grpc",
            otel.name = %format_args!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(req.headers()))
        });
        // Fails only when no OpenTelemetry layer is installed (some tests); the span still works.
        let _ = span.set_parent(parent);

        let mut observation = Observation {
            metrics: self.metrics.clone(),
            policy,
            started,
            span: span.clone(),
            done: false,
        };
        Box::pin(async move {
            let call = inner.call(req).instrument(span);
            let result = match deadline {
                Some((at, deadline)) => match tokio::time::timeout_at(at, call).await {
                    Ok(result) => result,
                    Err(_) => Ok(deadline.exceeded(policy).into_http()),
                },
                None => call.await,
            };
            // Unary errors are "trailers-only" responses, so grpc-status is in the headers; a
            // response without it started normally, and tonic reports its status in trailers.
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0),
                Err(_) => 2,
            };
            observation.finish(code);
            result
        })
    }
}

/// Records a call's outcome once: when it answers, or, if its future is dropped first (the
/// client reset the stream or the connection closed), as CANCELLED.
struct Observation {
    metrics: Arc<Metrics>,
    policy: Option<&'static Policy>,
    started: Instant,
    span: tracing::Span,
    done: bool,
}

impl Observation {
    fn finish(&mut self, code: i32) {
        self.done = true;
        // Set on the OpenTelemetry span directly rather than with `span.record`: the JSON
        // log layer answers a record by re-parsing and re-writing the span's fields, a
        // cost paid on every call for a value only traces use.
        self.span
            .set_attribute("rpc.grpc.status_code", i64::from(code));
        if is_server_error(code) {
            self.span
                .set_status(opentelemetry::trace::Status::error(code_description(code)));
        }
        let elapsed = self.started.elapsed();
        self.metrics.observe_grpc(self.policy, code, elapsed);
        tracing::debug!(parent: &self.span, code, elapsed_ms = elapsed.as_millis() as u64, "handled");
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        if !self.done {
            self.finish(Code::Cancelled as i32);
        }
    }
}

/// The deadline of one call: the shorter of the caller's `grpc-timeout` and, for unary calls,
/// the server's limit. A streaming call may outlive the server's limit (a health Watch is
/// meant to), so only its caller's deadline bounds it; as with tonic's own timeout, what is
/// bounded is the wait for the response to start.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Deadline {
    after: Duration,
    /// Whether the server's limit, not the caller's deadline, is the shorter.
    server_limit: bool,
}

impl Deadline {
    fn of(headers: &HeaderMap, policy: Option<&Policy>, server: Duration) -> Option<Self> {
        let caller = grpc_timeout(headers);
        let server = match policy {
            Some(p) if p.call_type != CallType::Unary => None,
            _ => Some(server),
        };
        match (caller, server) {
            (Some(c), Some(s)) if s < c => Some(Deadline {
                after: s,
                server_limit: true,
            }),
            (Some(c), _) => Some(Deadline {
                after: c,
                server_limit: false,
            }),
            (None, Some(s)) => Some(Deadline {
                after: s,
                server_limit: true,
            }),
            (None, None) => None,
        }
    }

    fn exceeded(self, policy: Option<&Policy>) -> Status {
        let mut message = if self.server_limit {
            format!(
                "deadline exceeded: the server ends calls after {:?}",
                self.after
            )
        } else {
            "deadline exceeded: the caller's grpc-timeout passed".to_owned()
        };
        // A mutation runs on to its end when its call is abandoned (see `app::idempotency`).
        if policy.is_some_and(|p| p.idempotent) {
            message.push_str("; the change may still be made: retry with the same idempotency-key");
        }
        let mut details = ErrorDetails::new();
        details.set_error_info(REASON_DEADLINE_EXCEEDED, DOMAIN, HashMap::new());
        Status::with_error_details(Code::DeadlineExceeded, message, details)
    }
}

/// The caller's `grpc-timeout` (an integer of at most 8 digits and a unit, `H`, `M`, `S`,
/// `m`, `u` or `n`). Read exactly as tonic reads it, so that whenever tonic arms its timer
/// this layer arms one no later; a malformed value is ignored by both.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.is_empty() {
        return None;
    }
    let (amount, unit) = value.split_at(value.len() - 1);
    if amount.len() > 8 {
        return None;
    }
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 60 * 60),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn code_description(code: i32) -> &'static str {
    match code {
        2 => "UNKNOWN",
        4 => "DEADLINE_EXCEEDED",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        _ => "",
    }
}

/// OpenTelemetry's RPC conventions mark a server span as an error for these codes only; the
/// caller's mistakes (INVALID_ARGUMENT, NOT_FOUND, ...) are not the server's errors.
fn is_server_error(code: i32) -> bool {
    // UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
    matches!(code, 2 | 4 | 12 | 13 | 14 | 15)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::HeaderValue;
    use tower::util::BoxCloneService;

    use super::*;

    type Slow = TelemetryService<BoxCloneService<Request<Body>, Response<Body>, Infallible>>;

    /// A service that answers OK after `delay`, behind the layer with a server limit of 100 ms.
    fn slow(metrics: &Arc<Metrics>, delay: Duration) -> Slow {
        let inner = tower::service_fn(move |_: Request<Body>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(Response::new(Body::empty()))
        });
        TelemetryLayer::new(metrics.clone())
            .with_server_deadline(Duration::from_millis(100))
            .layer(BoxCloneService::new(inner))
    }

    fn request(path: &str, grpc_timeout: Option<&str>) -> Request<Body> {
        let mut r = Request::builder().uri(path).body(Body::empty()).unwrap();
        if let Some(t) = grpc_timeout {
            r.headers_mut()
                .insert("grpc-timeout", HeaderValue::from_str(t).unwrap());
        }
        r
    }

    /// The `grpc_server_handled_total` sample of `method` and `code`.
    fn handled(metrics: &Metrics, method: &str, code: &str) -> Option<String> {
        metrics
            .encode()
            .lines()
            .find(|l| {
                l.starts_with("grpc_server_handled_total{")
                    && l.contains(&format!("grpc_method=\"{method}\""))
                    && l.contains(&format!("grpc_code=\"{code}\""))
            })
            .and_then(|l| l.rsplit(' ').next().map(str::to_owned))
    }

    async fn code_of(svc: &mut Slow, r: Request<Body>) -> Status {
        let response = svc.call(r).await.unwrap();
        Status::from_header_map(response.headers()).unwrap_or_else(|| Status::ok(""))
    }

    #[tokio::test]
    async fn a_unary_call_past_the_server_limit_is_answered_deadline_exceeded_and_counted() {
        let metrics = Arc::new(Metrics::new());
        let mut svc = slow(&metrics, Duration::from_secs(60));
        let started = Instant::now();
        let status = code_of(
            &mut svc,
            request("/coffer.v1.Customers/CreateCustomer", None),
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            status.message().contains("server ends calls after 100ms"),
            "{status:?}"
        );
        assert!(status.message().contains("idempotency-key"), "{status:?}");
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            REASON_DEADLINE_EXCEEDED
        );
        assert_eq!(
            handled(&metrics, "CreateCustomer", "DeadlineExceeded").as_deref(),
            Some("1")
        );
    }

    #[tokio::test]
    async fn the_shorter_of_the_callers_deadline_and_the_server_limit_applies() {
        let metrics = Arc::new(Metrics::new());
        let mut svc = slow(&metrics, Duration::from_secs(60));
        // The caller's 20 ms is shorter than the server's 100 ms.
        let status = code_of(
            &mut svc,
            request("/coffer.v1.Customers/GetCustomer", Some("20m")),
        )
        .await;
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert!(
            status.message().contains("caller's grpc-timeout"),
            "{status:?}"
        );
        assert!(
            !status.message().contains("idempotency-key"),
            "reads need no key"
        );
        // The server's 100 ms is shorter than the caller's hour.
        let status = code_of(
            &mut svc,
            request("/coffer.v1.Customers/GetCustomer", Some("1H")),
        )
        .await;
        assert!(status.message().contains("server ends calls"), "{status:?}");
        assert_eq!(
            handled(&metrics, "GetCustomer", "DeadlineExceeded").as_deref(),
            Some("2")
        );
    }

    #[tokio::test]
    async fn streams_are_bounded_by_their_callers_deadline_only() {
        let metrics = Arc::new(Metrics::new());
        let mut svc = slow(&metrics, Duration::from_millis(300));
        let watch = "/grpc.health.v1.Health/Watch";
        assert_eq!(
            code_of(&mut svc, request(watch, None)).await.code(),
            Code::Ok
        );
        assert_eq!(
            code_of(&mut svc, request(watch, Some("20m"))).await.code(),
            Code::DeadlineExceeded
        );
        let labels = metrics.encode();
        assert!(labels.contains("grpc_type=\"server_stream\""), "{labels}");
    }

    #[tokio::test]
    async fn a_call_dropped_before_it_answers_is_counted_as_cancelled() {
        let metrics = Arc::new(Metrics::new());
        let mut svc = slow(&metrics, Duration::from_secs(60));
        let call = svc.call(request("/coffer.v1.Customers/ListCustomers", None));
        assert!(
            tokio::time::timeout(Duration::from_millis(20), call)
                .await
                .is_err()
        );
        assert_eq!(
            handled(&metrics, "ListCustomers", "Canceled").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn grpc_timeout_is_read_as_tonic_reads_it() {
        let parse = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            grpc_timeout(&h)
        };
        assert_eq!(parse("3H"), Some(Duration::from_secs(3 * 3600)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("30000000u"), Some(Duration::from_secs(30)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "5", "5s", "123456789S", "-5S", "5.0S", "5 S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}
