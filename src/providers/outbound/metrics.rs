//! The outbound stack's Prometheus families. Every label value is fixed: the provider kind's
//! name, the caller's `&'static str` operation, an [`Outcome`], and the account name, which
//! comes from coffer.toml (configured accounts only; the sandbox makes no HTTP calls).

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::breaker::BreakerState;
use crate::domain::account::ProviderKind;

/// What one attempt (or one refusal) came to: the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 1xx to 3xx.
    Success,
    /// 4xx other than 429.
    ClientError,
    /// 429.
    RateLimited,
    /// 5xx.
    ServerError,
    /// No answer within the attempt's time.
    Timeout,
    /// The connection could not be made; nothing was sent.
    ConnectError,
    /// The connection broke after it was made.
    TransportError,
    /// Refused by the account's open circuit breaker; nothing was sent.
    BreakerOpen,
    /// Refused by the account's full bulkhead; nothing was sent.
    BulkheadFull,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::RateLimited => "rate_limited",
            Outcome::ServerError => "server_error",
            Outcome::Timeout => "timeout",
            Outcome::ConnectError => "connect_error",
            Outcome::TransportError => "transport_error",
            Outcome::BreakerOpen => "breaker_open",
            Outcome::BulkheadFull => "bulkhead_full",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    provider: &'static str,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    provider: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    account: String,
}

type DurationFamily = Family<DurationLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 5 ms to about 20 s: a provider answers in tens to hundreds of milliseconds, and an
    // attempt is cut at its timeout (10 s by default).
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// `coffer_provider_requests_total{provider,operation,outcome}`: one per HTTP attempt, and one
/// per attempt refused before it was sent (`breaker_open`, `bulkhead_full`);
/// `coffer_provider_request_duration_seconds{provider,operation}`: each HTTP attempt's time,
/// from sending to the whole body read (or the failure);
/// `coffer_provider_breaker_state{account}`: 0 closed, 1 half-open, 2 open.
///
/// Cheap to clone: clones share the families.
#[derive(Clone)]
pub struct OutboundMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: DurationFamily,
    breaker: Family<AccountLabels, Gauge>,
}

impl Default for OutboundMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            breaker: Family::default(),
        }
    }
}

static SHARED: LazyLock<OutboundMetrics> = LazyLock::new(OutboundMetrics::default);

impl OutboundMetrics {
    /// The process's families, which the server registers on `/metrics`: give every
    /// account's [`super::Outbound`] a clone of these.
    pub fn shared() -> &'static OutboundMetrics {
        &SHARED
    }

    /// Adds the families to the registry `/metrics` serves.
    pub fn register(&self, registry: &mut Registry) {
        // prometheus-client appends `_total` to counters.
        registry.register(
            "coffer_provider_requests",
            "Outbound HTTP attempts to providers by provider, operation and outcome (success, client_error, rate_limited, server_error, timeout, connect_error, transport_error, breaker_open, bulkhead_full)",
            self.requests.clone(),
        );
        registry.register(
            "coffer_provider_request_duration_seconds",
            "Time of each outbound HTTP attempt to a provider, until its whole answer was read",
            self.duration.clone(),
        );
        registry.register(
            "coffer_provider_breaker_state",
            "Each provider account's circuit breaker: 0 closed, 1 half-open, 2 open",
            self.breaker.clone(),
        );
    }

    pub(super) fn count(&self, provider: ProviderKind, operation: &'static str, outcome: Outcome) {
        self.requests
            .get_or_create(&RequestLabels {
                provider: provider.as_str(),
                operation,
                outcome: outcome.as_str(),
            })
            .inc();
    }

    pub(super) fn observe(&self, provider: ProviderKind, operation: &'static str, took: Duration) {
        self.duration
            .get_or_create(&DurationLabels {
                provider: provider.as_str(),
                operation,
            })
            .observe(took.as_secs_f64());
    }

    pub(super) fn breaker_state(&self, account: &str, state: BreakerState) {
        self.breaker
            .get_or_create(&AccountLabels {
                account: account.to_owned(),
            })
            .set(state as i64);
    }
}
