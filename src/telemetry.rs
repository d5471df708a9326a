//! Logs and traces. Logs go to stderr (JSON by default) — stdout is kept for what commands
//! print for scripts, such as a new API key. A thread of its own writes them, so a slow stderr
//! never blocks the runtime; lines past its bounded queue are dropped and counted
//! ([`dropped_log_lines`], `coffer_log_lines_dropped_total`). Spans are exported over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the other
//! standard `OTEL_*` variables apply. The W3C `traceparent` of incoming calls is honoured.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

const DEFAULT_FILTER: &str = "info,sqlx=warn,h2=warn,hyper=warn,tower=warn,tonic=warn";

/// Log lines the writer thread may hold before new ones are dropped: about 10 MB of JSON.
const LOG_QUEUE_LINES: usize = 32_768;

/// The log writer's count of dropped lines, once [`init`] has installed it.
static LOG_ERRORS: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped because the writer thread's queue was full (stderr could not keep up).
pub fn dropped_log_lines() -> u64 {
    LOG_ERRORS
        .get()
        .map_or(0, |errors| errors.dropped_lines() as u64)
}

/// Flushes and shuts the exporter down, then writes out the queued log lines, when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    _log_writer: WorkerGuard,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("setting up telemetry: {0}")]
pub struct TelemetryError(String);

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()))
}

/// Installs the global subscriber. Call once, inside the Tokio runtime.
pub fn init(format: LogFormat) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let (writer, log_writer) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("coffer-log")
        .finish(std::io::stderr());
    // A second init (which fails below) keeps the first writer's counter.
    let _ = LOG_ERRORS.set(writer.error_counter());
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = match format {
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
        LogFormat::Pretty => fmt.compact().boxed(),
    };

    let provider = if otlp_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let service_name =
            std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "coffer".to_owned());
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(Resource::builder().with_service_name(service_name).build())
                .build(),
        )
    } else {
        None
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("coffer")));

    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError(e.to_string()))?;
    Ok(TelemetryGuard {
        provider,
        _log_writer: log_writer,
    })
}

/// The W3C `traceparent` of `span`, to be stored with work another process picks up later (an
/// inbox event) so that work's span can link back; `None` when the span is not traced (no
/// exporter configured). Only the trace context is carried, never baggage.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let mut carrier = std::collections::HashMap::new();
    // The propagator writes nothing for an invalid (untraced) context.
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove("traceparent")
}

/// The span context a stored `traceparent` names, for a link; `None` when it is malformed.
pub fn linked_context(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let linked = cx.span().span_context().clone();
    linked.is_valid().then_some(linked)
}

/// Reads W3C trace context from HTTP headers (gRPC metadata, or the webhook sidecar's).
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes a trace context into outgoing HTTP headers (the sandbox's deliveries, provider calls).
pub struct HeaderInjector<'a>(pub &'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_traceparent_names_the_span_to_link_to() {
        let linked =
            linked_context("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(
            linked.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(linked.span_id().to_string(), "00f067aa0ba902b7");
        assert!(linked.is_sampled());
        for malformed in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "x",
        ] {
            assert!(linked_context(malformed).is_none(), "{malformed:?}");
        }
        // No OpenTelemetry layer here: nothing is traced, so nothing is stored.
        assert_eq!(traceparent(&tracing::info_span!("untraced")), None);
    }
}
