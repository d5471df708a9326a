//! The sandbox's event delivery: rows of `sandbox_outbox` (queued by [`super::events::emit`])
//! sent over real HTTP to `{webhook_base}/webhooks/{account}`, the server's own sidecar, as a
//! provider would send them.
//!
//! At least once, with no transaction held across the network:
//!
//! 1. claim up to `batch` due rows with `FOR UPDATE SKIP LOCKED` in a short transaction that
//!    leases them (`attempts` + 1, `next_attempt_at` = now + `lease`) and commits, so workers
//!    of every replica share the queue and a worker that dies mid-send leaves its rows due
//!    again once the lease runs out;
//! 2. sign each at send time with Standard Webhooks (`webhook-id` is the row's, the same on
//!    every redelivery, so the inbox stores it once; `webhook-timestamp` is now, so a retry an
//!    hour later is not stale) and POST it, with `traceparent` from the delivery's span;
//! 3. mark it `delivered` on a 2xx, or schedule the next attempt after an exponential backoff
//!    with full jitter ([`crate::retry::backoff`]) with `last_error` (a status code or a
//!    network error; never the body or the secret). There is no last attempt: a provider
//!    keeps trying, and the sandbox's endpoint is the server itself.
//!
//! A row whose lease ran out before its turn in the batch is skipped (it is due again for any
//! worker), so a slow batch does not send what another worker may already be sending.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::Faults;
use crate::domain::account::Secret;
use crate::domain::ids::TenantId;
use crate::providers::sandbox::store::{self as store, ClaimedDelivery};
use crate::providers::signature::sign;
use crate::retry::{backoff, random_unit};
use crate::settings::Settings;
use crate::shutdown::CancellationToken;
use crate::store::StoreError;
use crate::telemetry::HeaderInjector;

/// How the delivery workers run.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Workers per process; 0 runs none (another replica delivers).
    pub workers: usize,
    /// Rows claimed per transaction.
    pub batch: u32,
    /// How long an idle worker waits before looking again.
    pub poll: Duration,
    /// How long a claimed row is kept from other workers while it is being sent.
    pub lease: Duration,
    /// The longest one HTTP request may take.
    pub timeout: Duration,
    /// The first retry's backoff ceiling; it doubles per failed attempt, up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            batch: 16,
            poll: Duration::from_millis(500),
            lease: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(600),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// `coffer_sandbox_deliveries_total{outcome}`: `delivered` or `retry`.
#[derive(Clone, Default)]
pub struct DeliveryMetrics {
    deliveries: Family<OutcomeLabels, Counter>,
}

impl DeliveryMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "coffer_sandbox_deliveries",
            "Sandbox event deliveries by outcome (delivered: answered 2xx; retry: anything else, rescheduled)",
            self.deliveries.clone(),
        );
    }

    fn outcome(&self, outcome: &'static str) {
        self.deliveries
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Delivered,
    /// Why not, for `last_error`.
    Failed(String),
}

/// The delivery workers of one process. Cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    pool: PgPool,
    settings: Arc<Settings>,
    /// `{base}/webhooks/`, the account name follows.
    endpoint: Arc<str>,
    client: reqwest::Client,
    config: Arc<DeliveryConfig>,
    faults: Arc<Faults>,
    metrics: DeliveryMetrics,
}

impl Delivery {
    pub fn new(
        pool: PgPool,
        settings: Arc<Settings>,
        webhook_base: &str,
        config: DeliveryConfig,
        faults: Arc<Faults>,
    ) -> Self {
        let client = crate::providers::outbound::client_builder()
            .timeout(config.timeout)
            // The endpoint is this server; a proxy from the environment has no business here.
            .no_proxy()
            .build()
            .expect("a plain HTTP client builds");
        Self {
            pool,
            settings,
            endpoint: format!("{}/webhooks/", webhook_base.trim_end_matches('/')).into(),
            client,
            config: Arc::new(DeliveryConfig {
                // A zero poll would spin.
                poll: config.poll.max(Duration::from_millis(10)),
                batch: config.batch.max(1),
                ..config
            }),
            faults,
            metrics: DeliveryMetrics::default(),
        }
    }

    pub fn metrics(&self) -> &DeliveryMetrics {
        &self.metrics
    }

    /// Spawns the workers on `tasks`. After `stop_claiming` (the shutdown signal) a worker
    /// claims nothing more; at `stop` it ends at once, and a row it was sending stays leased
    /// until the lease runs out, then is sent again (by this process after a restart, or by
    /// another replica).
    pub fn spawn(
        &self,
        tasks: &TaskTracker,
        stop_claiming: &CancellationToken,
        stop: &CancellationToken,
    ) {
        for worker in 0..self.config.workers {
            tasks.spawn(
                self.clone()
                    .work(worker, stop_claiming.clone(), stop.clone()),
            );
        }
    }

    async fn work(self, worker: usize, stop_claiming: CancellationToken, stop: CancellationToken) {
        let claiming = crate::shutdown::Claiming {
            what: "sandbox delivery pass",
            worker,
            batch: self.config.batch as usize,
            poll: self.config.poll,
        };
        crate::shutdown::claim_batches(claiming, stop_claiming, stop, || self.run_once()).await;
    }

    /// One pass: claim a batch, send it, record each outcome. Returns how many rows were
    /// claimed (none while the faults hold deliveries).
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        if self.faults.holding() {
            return Ok(0);
        }
        let newest_first = self.faults.take_newest_first();
        let claimed_at = Instant::now();
        let rows = {
            let mut tx = self.pool.begin().await?;
            let rows = store::claim_deliveries(
                &mut tx,
                self.config.batch as i64,
                self.config.lease,
                newest_first,
            )
            .await?;
            // Held while this claim ran: a test that holds, then queues, needs its events to
            // stay queued, and this pass may have passed the check above before the hold.
            // Whatever the claim saw was queued before the hold began, or it sees the hold
            // here; rolled back, the rows stay due and unleased.
            if self.faults.holding() {
                tx.rollback().await?;
                return Ok(0);
            }
            tx.commit().await?;
            rows
        };
        // Leave a margin of one request's timeout: a send that starts later could still be
        // running when another worker takes the row.
        let lease_ends = claimed_at + self.config.lease.saturating_sub(self.config.timeout);
        for row in &rows {
            if Instant::now() > lease_ends {
                tracing::debug!(
                    webhook_id = %row.webhook_id,
                    "sandbox delivery lease ran out before its turn; leaving it due"
                );
                continue;
            }
            let times = if self.faults.take_duplicate() { 2 } else { 1 };
            for _ in 0..times {
                self.deliver(row).await?;
            }
        }
        Ok(rows.len())
    }

    /// Sends one row and records the outcome.
    async fn deliver(&self, row: &ClaimedDelivery) -> Result<(), StoreError> {
        let span = tracing::info_span!(
            "sandbox delivery",
            otel.name = "POST /webhooks/{account}",
            otel.kind = "client",
            http.request.method = "POST",
            account = %row.account,
            event_type = %row.event_type,
            webhook_id = %row.webhook_id,
            attempt = row.attempts,
            http.response.status_code = tracing::field::Empty,
        );
        let sent = self.send(row).instrument(span.clone()).await;
        let mut conn = self.pool.acquire().await?;
        match sent {
            Sent::Delivered => {
                store::mark_delivered(&mut conn, row.id).await?;
                self.metrics.outcome("delivered");
            }
            Sent::Failed(error) => {
                let retry_in = backoff(
                    row.attempts,
                    self.config.backoff_base,
                    self.config.backoff_cap,
                    random_unit(),
                );
                store::reschedule_delivery(&mut conn, row.id, retry_in, &error).await?;
                self.metrics.outcome("retry");
                let _entered = span.enter();
                tracing::warn!(
                    error = %error,
                    attempts = row.attempts,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "sandbox delivery failed; retrying later"
                );
            }
        }
        Ok(())
    }

    async fn send(&self, row: &ClaimedDelivery) -> Sent {
        let Some(secret) = self.secret(row) else {
            return Sent::Failed("the account has no signing secret".into());
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let Some(signed) = sign::standard_with(&secret, &row.webhook_id, now, &row.body) else {
            return Sent::Failed("the account's signing secret is not a whsec_ key".into());
        };
        let mut headers = http::HeaderMap::new();
        for h in signed {
            let (Ok(name), Ok(value)) = (
                http::header::HeaderName::from_bytes(h.name.as_bytes()),
                http::HeaderValue::from_bytes(&h.value),
            ) else {
                return Sent::Failed("a signature header is not a valid header".into());
            };
            headers.insert(name, value);
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        let context = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&context, &mut HeaderInjector(&mut headers))
        });
        let url = format!("{}{}", self.endpoint, row.account);
        let answer = self
            .client
            .post(url)
            .headers(headers)
            .body(row.body.clone())
            .send()
            .await;
        match answer {
            Ok(response) => {
                let status = response.status();
                tracing::Span::current().record("http.response.status_code", status.as_u16());
                if status.is_success() {
                    Sent::Delivered
                } else {
                    Sent::Failed(format!("HTTP {}", status.as_u16()))
                }
            }
            Err(e) if e.is_timeout() => Sent::Failed("timed out".into()),
            Err(e) if e.is_connect() => Sent::Failed("could not connect".into()),
            Err(_) => Sent::Failed("the request failed".into()),
        }
    }

    /// The secret the account signs with: the tenant's override from coffer.toml, else the
    /// stored one (as `Sandbox::account_for` and the ingest side both resolve it).
    fn secret(&self, row: &ClaimedDelivery) -> Option<Secret> {
        let tenant = TenantId::from_uuid(row.tenant?);
        match &self.settings.tenant(tenant).sandbox_webhook_secret {
            Some(secret) => Some(secret.clone()),
            None => row.secret.clone().map(Secret::new),
        }
    }
}
