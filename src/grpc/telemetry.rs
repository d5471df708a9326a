//! The outermost layer: one span per call with OpenTelemetry's RPC attributes (`rpc.system`,
//! `rpc.service`, `rpc.method`, `rpc.grpc.status_code`), parented on the caller's
//! `traceparent`, and the go-grpc-prometheus metrics `grpc_server_handled_total` and
//! `grpc_server_handling_seconds`. Names come from the policy table, so a made-up path adds no
//! series and no span attribute of the caller's choosing.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_core::future::BoxFuture;
use http::{HeaderMap, Request, Response};
use opentelemetry::propagation::Extractor;
use tonic::body::Body;
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::policy;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct TelemetryLayer {
    metrics: Arc<Metrics>,
}

impl TelemetryLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = TelemetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TelemetryService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct TelemetryService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
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
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();

        let policy = policy::of(req.uri().path());
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

        Box::pin(async move {
            let started = Instant::now();
            let result = inner.call(req).instrument(span.clone()).await;
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
            // Set on the OpenTelemetry span directly rather than with `span.record`: the JSON
            // log layer answers a record by re-parsing and re-writing the span's fields, a
            // cost paid on every call for a value only traces use.
            span.set_attribute("rpc.grpc.status_code", i64::from(code));
            if is_server_error(code) {
                span.set_status(opentelemetry::trace::Status::error(code_description(code)));
            }
            metrics.observe_grpc(policy, code, started.elapsed());
            tracing::debug!(parent: &span, code, elapsed_ms = started.elapsed().as_millis() as u64, "handled");
            result
        })
    }
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
