//! Prometheus metrics, served as text on the admin listener's `/metrics`. The gRPC families use
//! the go-grpc-prometheus names and labels, so existing dashboards work unchanged. Their labels
//! come from the policy table only: a path no service answers is counted under `unknown`, so
//! callers cannot add series, and labelling a call allocates nothing.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::grpc::policy::Policy;

/// The `grpc_type`, `grpc_service` and `grpc_method` of a path with no policy.
const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: &'static str,
    grpc_method: &'static str,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    handled: Family<HandledLabels, Counter>,
    handling: HistogramFamily,
    database_up: Gauge,
}

/// `coffer_log_lines_dropped_total`, read from the log writer at each scrape.
#[derive(Debug)]
struct DroppedLogLines;

impl Collector for DroppedLogLines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let dropped = ConstCounter::new(crate::telemetry::dropped_log_lines());
        // prometheus-client appends `_total` to counters.
        let metric = encoder.encode_descriptor(
            "coffer_log_lines_dropped",
            "Log lines dropped because stderr could not keep up with the log writer's queue",
            None,
            dropped.metric_type(),
        )?;
        dropped.encode(metric)
    }
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let handled = Family::<HandledLabels, Counter>::default();
        let handling: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let database_up = Gauge::default();
        // prometheus-client appends `_total` to counters.
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            handling.clone(),
        );
        registry.register(
            "coffer_database_up",
            "1 while the database answers the health check, 0 while it does not",
            database_up.clone(),
        );
        registry.register_collector(Box::new(DroppedLogLines));
        Self {
            registry,
            handled,
            handling,
            database_up,
        }
    }

    /// The registry, for families kept elsewhere (the webhook counters of `app::events`).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Counts one call of `policy`'s method (`None`: a path no service answers).
    pub fn observe_grpc(&self, policy: Option<&'static Policy>, code: i32, elapsed: Duration) {
        let method = policy.map_or(
            MethodLabels {
                grpc_type: UNKNOWN,
                grpc_service: UNKNOWN,
                grpc_method: UNKNOWN,
            },
            |p| MethodLabels {
                grpc_type: p.call_type.as_label(),
                grpc_service: p.service,
                grpc_method: p.method,
            },
        );
        self.handled
            .get_or_create(&HandledLabels {
                grpc_type: method.grpc_type,
                grpc_service: method.grpc_service,
                grpc_method: method.grpc_method,
                grpc_code: code_name(code),
            })
            .inc();
        self.handling
            .get_or_create(&method)
            .observe(elapsed.as_secs_f64());
    }

    pub fn set_database_up(&self, up: bool) {
        self.database_up.set(i64::from(up));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The names go-grpc-prometheus uses for codes (Go's `codes.Code.String()`).
fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}
