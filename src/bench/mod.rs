//! `coffer bench`: drives a running server the way a real client does (API key, idempotency
//! keys, real gRPC) and, in the same run, the machine's own baselines, so each result reads as
//! a ratio to what this machine can do at all.
//!
//! The frame is [`run_load`]: N workers call an operation in a loop for a fixed time and the
//! latencies are gathered into a [`Measurement`]. A scenario is a set of such operations: the
//! one under test and its baselines.

mod access;
mod cpu;
mod customers;
mod mixed;
mod plot;
mod suite;
mod usage;
mod webhooks;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use access::check_access;
pub use cpu::{Cpu, CpuProbe};
pub use customers::customers;
pub use suite::{
    Launcher, Point, Scenario, ServerProcess, Servers, Suite, SuiteError, Target, all,
    markdown_table, ratio, write_results,
};
pub use usage::{usage, usage_query};
pub use webhooks::webhooks;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("no API key: pass --key, set COFFER_API_KEY, or run `coffer serve --dev` first ({0})")]
    NoKey(String),
    #[error("connecting to {endpoint}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("preparing the benchmark")]
    Setup(#[from] tonic::Status),
    #[error("preparing the Postgres baseline")]
    Baseline(#[from] crate::store::StoreError),
    #[error("{0}")]
    Webhooks(String),
}

type Bearer = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// A scenario's load: operations in flight, and how long it is warmed up and then measured.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

impl Load {
    fn of(args: &crate::config::BenchArgs) -> Self {
        Self {
            concurrency: args.concurrency,
            warmup: args.warmup,
            duration: args.duration,
        }
    }
}

/// The gRPC side of a benchmark: its connections to the server and its key.
#[derive(Clone)]
pub struct Grpc {
    channels: Arc<Vec<tonic::transport::Channel>>,
    bearer: Bearer,
}

impl Grpc {
    /// `connections` gRPC connections to `endpoint`, calling with `bearer`.
    pub async fn connect(
        endpoint: &str,
        connections: usize,
        bearer: Bearer,
    ) -> Result<Self, BenchError> {
        let mut channels = Vec::new();
        for _ in 0..connections.max(1) {
            let failed = |source| BenchError::Connect {
                endpoint: endpoint.to_owned(),
                source,
            };
            let e = tonic::transport::Endpoint::from_shared(endpoint.to_owned()).map_err(failed)?;
            channels.push(e.tcp_nodelay(true).connect().await.map_err(failed)?);
        }
        Ok(Self {
            channels: Arc::new(channels),
            bearer,
        })
    }

    async fn of(
        args: &crate::config::BenchArgs,
        state_dir: &std::path::Path,
    ) -> Result<Self, BenchError> {
        Self::connect(&args.endpoint, args.connections, bearer(args, state_dir)?).await
    }

    /// The connection worker `worker` uses.
    fn channel(&self, worker: usize) -> tonic::transport::Channel {
        self.channels[worker % self.channels.len()].clone()
    }

    /// `message` as a request carrying the key.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut()
            .insert("authorization", self.bearer.clone());
        r
    }
}

/// A short id of its own for each measured run, so rows and keys never collide across runs.
fn run_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()[20..].to_owned()
}

/// The baseline of the gRPC reads: the cheapest call the server answers (health Check), on
/// the same connections.
pub async fn empty_rpc(grpc: &Grpc, load: Load) -> Measurement {
    let grpc = grpc.clone();
    run_load(
        "grpc health Check (empty RPC)",
        load.concurrency,
        load.warmup,
        load.duration,
        move |worker, _| {
            let mut client =
                tonic_health::pb::health_client::HealthClient::new(grpc.channel(worker));
            async move {
                client
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map(|_| ())
            }
        },
    )
    .await
}

/// The `authorization` value for the key given, or the one `serve --dev` keeps.
fn bearer(
    args: &crate::config::BenchArgs,
    state_dir: &std::path::Path,
) -> Result<Bearer, BenchError> {
    bearer_of(args.key.as_deref(), state_dir)
}

/// The `authorization` value for `key`, or for the one `serve --dev` keeps in `state_dir`.
fn bearer_of(key: Option<&str>, state_dir: &std::path::Path) -> Result<Bearer, BenchError> {
    let key = match key {
        Some(k) => k.to_owned(),
        None => {
            let path = state_dir.join("dev-key");
            std::fs::read_to_string(&path)
                .map_err(|e| BenchError::NoKey(format!("{}: {e}", path.display())))?
                .trim()
                .to_owned()
        }
    };
    format!("Bearer {key}")
        .parse()
        .map_err(|_| BenchError::NoKey("the key is not valid header text".into()))
}

/// Throughput and latency of one operation under load.
#[derive(Debug, Clone)]
pub struct Measurement {
    pub name: String,
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Sorted latencies of the successful calls, in microseconds.
    latencies_us: Vec<u32>,
    pub first_error: Option<String>,
    /// What the successful operations carried (rows, events): `ok` unless an operation
    /// carries several.
    pub items: u64,
}

impl Measurement {
    /// A measurement taken by a scenario's own loop (a stream, say), latencies in microseconds.
    pub fn from_parts(
        name: &str,
        ok: u64,
        errors: u64,
        elapsed: Duration,
        mut latencies_us: Vec<u32>,
        first_error: Option<String>,
        items: u64,
    ) -> Self {
        latencies_us.sort_unstable();
        Self {
            name: name.to_owned(),
            ok,
            errors,
            elapsed,
            latencies_us,
            first_error,
            items,
        }
    }

    /// Each successful operation carried `n` items.
    pub fn items_per_op(mut self, n: u64) -> Self {
        self.items = self.ok * n;
        self
    }

    pub fn item_rate(&self) -> f64 {
        self.items as f64 / self.elapsed.as_secs_f64()
    }

    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency below which `q` (0..1) of the calls completed, in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let idx = ((self.latencies_us.len() as f64 * q).ceil() as usize)
            .clamp(1, self.latencies_us.len())
            - 1;
        f64::from(self.latencies_us[idx]) / 1000.0
    }
}

/// Runs `op` from `concurrency` workers for `warmup` (unmeasured) and then `duration`.
/// `op(worker, seq)` is called with a worker index and a per-worker sequence number, so an
/// operation can make unique ids without coordination.
pub async fn run_load<F, Fut, E>(
    name: &str,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    op: F,
) -> Measurement
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: fmt::Display,
{
    let op = Arc::new(op);
    let seq = Arc::new(AtomicU64::new(0));
    // Warm-up: connections, caches, the planner.
    if !warmup.is_zero() {
        let _ = measure(&op, &seq, concurrency, warmup).await;
    }
    let (elapsed, results) = measure(&op, &seq, concurrency, duration).await;
    let mut latencies_us = Vec::new();
    let (mut ok, mut errors, mut first_error) = (0, 0, None);
    for r in results {
        ok += r.ok;
        errors += r.errors;
        latencies_us.extend(r.latencies_us);
        first_error = first_error.or(r.first_error);
    }
    latencies_us.sort_unstable();
    Measurement {
        name: name.to_owned(),
        ok,
        errors,
        elapsed,
        latencies_us,
        first_error,
        items: ok,
    }
}

#[derive(Default)]
struct WorkerResult {
    ok: u64,
    errors: u64,
    latencies_us: Vec<u32>,
    first_error: Option<String>,
}

async fn measure<F, Fut, E>(
    op: &Arc<F>,
    seq: &Arc<AtomicU64>,
    concurrency: usize,
    duration: Duration,
) -> (Duration, Vec<WorkerResult>)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: fmt::Display,
{
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let op = op.clone();
        let seq = seq.clone();
        workers.spawn(async move {
            let mut r = WorkerResult::default();
            while Instant::now() < deadline {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                match op(worker, n).await {
                    Ok(()) => {
                        r.ok += 1;
                        r.latencies_us
                            .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    Err(e) => {
                        r.errors += 1;
                        if r.first_error.is_none() {
                            r.first_error = Some(e.to_string());
                        }
                    }
                }
            }
            r
        });
    }
    let mut results = Vec::with_capacity(concurrency);
    while let Some(r) = workers.join_next().await {
        results.push(r.expect("a benchmark worker panicked"));
    }
    (started.elapsed(), results)
}

/// A benchmark's printed result: the measurements and the ratios that matter.
pub struct Report {
    pub title: String,
    pub measurements: Vec<Measurement>,
    /// (label, numerator index, denominator index) of item-rate ratios to print.
    pub ratios: Vec<(String, usize, usize)>,
    /// Further lines to print after the ratios (a latency ratio, say).
    pub notes: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.title)?;
        writeln!(
            f,
            "{:<44} {:>9} {:>7} {:>10} {:>11} {:>8} {:>8} {:>8}",
            "operation", "ok", "errors", "req/s", "items/s", "p50 ms", "p99 ms", "p999 ms"
        )?;
        for m in &self.measurements {
            writeln!(
                f,
                "{:<44} {:>9} {:>7} {:>10.0} {:>11.0} {:>8.2} {:>8.2} {:>8.2}",
                m.name,
                m.ok,
                m.errors,
                m.rate(),
                m.item_rate(),
                m.quantile_ms(0.50),
                m.quantile_ms(0.99),
                m.quantile_ms(0.999),
            )?;
        }
        for (label, a, b) in &self.ratios {
            let (a, b) = (&self.measurements[*a], &self.measurements[*b]);
            let ratio = if b.item_rate() > 0.0 {
                a.item_rate() / b.item_rate()
            } else {
                0.0
            };
            writeln!(f, "{label}: {ratio:.2}")?;
        }
        for note in &self.notes {
            writeln!(f, "{note}")?;
        }
        for m in &self.measurements {
            if let Some(e) = &m.first_error {
                writeln!(f, "first error of {}: {e}", m.name)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn run_load_counts_and_orders_latencies() {
        let m = run_load(
            "sleep",
            4,
            Duration::ZERO,
            Duration::from_millis(200),
            |_, seq| async move {
                tokio::time::sleep(Duration::from_millis(2)).await;
                if seq % 10 == 0 {
                    Err("every tenth fails")
                } else {
                    Ok(())
                }
            },
        )
        .await;
        assert!(m.ok > 50, "ok = {}", m.ok);
        assert!(m.errors > 0);
        assert!(m.quantile_ms(0.5) >= 2.0);
        assert!(m.quantile_ms(0.5) <= m.quantile_ms(0.99));
        assert_eq!(m.first_error.as_deref(), Some("every tenth fails"));
    }
}
