//! `coffer bench all`: every scenario at each concurrency level, each point next to its
//! baseline measured just before it, with the CPU the server, Postgres and the load generator
//! spent in each measured window; one table (`markdown_table`) and one plot per scenario.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use super::access::Subscribed;
use super::cpu::{Cpu, CpuProbe};
use super::mixed::Mixed;
use super::usage::{UsageQuery, UsageSetup};
use super::webhooks::{self, Deliveries};
use super::{BenchError, Grpc, Load, Measurement, bearer_of, customers, empty_rpc};
use crate::config::AllBenchArgs;
use crate::grpc::pb;

/// Customers subscribed for CheckAccess and the mixed blend.
const SUBSCRIBED: usize = 50;
/// Customers the usage scenarios spread their events over.
const USAGE_CUSTOMERS: usize = 100;

/// The suite's scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scenario {
    CheckAccess,
    UsageQuery,
    Customers,
    UsageStream,
    UsageBatch,
    Mixed,
    /// Deliveries to `serve` as it runs by default, its inbox workers in the process.
    Webhooks,
    /// Deliveries to a server run with `--inbox-workers 0`.
    WebhooksIngestOnly,
}

impl Scenario {
    pub const ALL: [Self; 8] = [
        Self::CheckAccess,
        Self::UsageQuery,
        Self::Customers,
        Self::UsageStream,
        Self::UsageBatch,
        Self::Mixed,
        Self::Webhooks,
        Self::WebhooksIngestOnly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::CheckAccess => "check-access",
            Self::UsageQuery => "usage-query",
            Self::Customers => "customers",
            Self::UsageStream => "usage-stream",
            Self::UsageBatch => "usage-batch",
            Self::Mixed => "mixed",
            Self::Webhooks => "webhooks",
            Self::WebhooksIngestOnly => "webhooks-ingest-only",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|c| c.name()).collect();
                format!("not a scenario; one of {}", names.join(", "))
            })
    }

    /// What "in flight" counts for it.
    pub fn in_flight(self) -> &'static str {
        match self {
            Self::UsageStream => "streams in flight (8 batches in flight each)",
            Self::UsageBatch => "RecordUsage calls in flight",
            Self::Webhooks | Self::WebhooksIngestOnly => "deliveries in flight",
            _ => "calls in flight",
        }
    }

    /// What its throughput counts.
    pub fn unit(self) -> &'static str {
        match self {
            Self::UsageStream | Self::UsageBatch => "events/s",
            Self::Webhooks | Self::WebhooksIngestOnly => "deliveries/s",
            _ => "req/s",
        }
    }
}

/// One point of a curve: a scenario at one concurrency, and its baseline at the same.
#[derive(Debug, Clone)]
pub struct Point {
    pub scenario: Scenario,
    pub concurrency: usize,
    pub op: Measurement,
    pub op_cpu: Cpu,
    pub baseline: Measurement,
    pub baseline_cpu: Cpu,
}

impl Point {
    /// The operation's throughput over its baseline's.
    pub fn ratio(&self) -> Option<f64> {
        ratio(self.op.item_rate(), self.baseline.item_rate())
    }
}

/// `a / b`, or none when `b` measured nothing.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && b.is_finite()).then(|| a / b)
}

/// CPU seconds per 1 000 operations (items: events for the usage scenarios).
fn per_1k(seconds: f64, items: u64) -> Option<f64> {
    (items > 0).then(|| seconds * 1_000.0 / items as f64)
}

/// `12345.6` as `12 346`.
pub(super) fn grouped(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

fn or_dash(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "–".into(), |x| format!("{x:.digits$}"))
}

/// The suite's table, one row per point, as Markdown (which reads as well on a terminal).
pub fn markdown_table(points: &[Point]) -> String {
    let mut t = String::new();
    t.push_str(
        "| scenario | in flight | throughput | p50 ms | p99 ms | p999 ms | errors | server CPU s/1k ops | Postgres CPU s/1k ops | bench CPU s/1k ops | baseline | baseline throughput | baseline p99 ms | baseline Postgres CPU s/1k ops | ratio |\n",
    );
    t.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n");
    for p in points {
        let (op, base) = (&p.op, &p.baseline);
        let items = op.items;
        let _ = writeln!(
            t,
            "| {} | {} | {} {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} |",
            p.scenario.name(),
            p.concurrency,
            grouped(op.item_rate()),
            p.scenario.unit(),
            op.quantile_ms(0.50),
            op.quantile_ms(0.99),
            op.quantile_ms(0.999),
            op.errors,
            or_dash(p.op_cpu.server.and_then(|s| per_1k(s, items)), 3),
            or_dash(per_1k(p.op_cpu.postgres, items), 3),
            or_dash(per_1k(p.op_cpu.bench, items), 3),
            base.name,
            grouped(base.item_rate()),
            base.quantile_ms(0.99),
            or_dash(per_1k(p.baseline_cpu.postgres, base.items), 3),
            p.ratio().map_or_else(|| "–".into(), |r| format!("{r:.2}x")),
        );
    }
    t
}

/// The suite's report: how it ran, the table, errors and skips.
pub fn report(suite: &Suite, args: &AllBenchArgs, how: &str) -> String {
    let mut r = String::new();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        r,
        "# coffer bench all\n\n{} {}; {} s per point after {} s of warm-up, levels {:?}; {} cores, load average {} at the end.\n",
        time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        how,
        args.duration.as_secs_f64(),
        args.warmup.as_secs_f64(),
        args.concurrency_levels,
        cores,
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    r.push_str(
        "Each baseline is measured just before its point, at the same concurrency (for \
         usage-stream, as in `bench usage`: a stream keeps 8 batches in flight, a COPY worker \
         one). CPU is user + \
         system seconds per 1 000 operations (an operation: a call; an event for the usage \
         scenarios; a delivery for webhooks) in the measured window, from /proc/<pid>/stat: the \
         server, the Postgres backends of the bench database, and the load generator.\n\n",
    );
    r.push_str(&markdown_table(&suite.points));
    for e in &suite.first_errors {
        let _ = writeln!(r, "\nfirst error of {e}");
    }
    for s in &suite.skipped {
        let _ = writeln!(r, "\nskipped: {s}");
    }
    r
}

/// Writes `<out>/latest.md` and the plots (`--plots`, or `--out`); returns the report and
/// the plots written.
pub fn write_results(
    suite: &Suite,
    args: &AllBenchArgs,
    how: &str,
) -> Result<(String, Vec<PathBuf>), SuiteError> {
    let report = report(suite, args, how);
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("latest.md"), &report)?;
    let plots = super::plot::write(&suite.points, args.plots.as_ref().unwrap_or(&args.out))
        .map_err(SuiteError::Plot)?;
    Ok((report, plots))
}

/// A running server the suite loads.
#[derive(Debug, Clone)]
pub struct Target {
    /// gRPC, `http://host:port`.
    pub endpoint: String,
    /// The webhook sidecar, `http://host:port`.
    pub url: String,
    pub pid: Option<i32>,
}

/// What `bench all` measured.
pub struct Suite {
    pub points: Vec<Point>,
    /// The first error of each scenario that had any.
    pub first_errors: Vec<String>,
    /// Scenarios not run, and why.
    pub skipped: Vec<String>,
}

/// Starts `coffer serve --dev` processes for the suite: the same binary, state directory and
/// database, on free ports, logging to a file in `--out`.
pub struct Launcher {
    pub exe: PathBuf,
    pub state_dir: PathBuf,
    pub database_name: String,
    pub log_dir: PathBuf,
}

/// A server the suite started; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ServerProcess {
    child: Child,
    pub target: Target,
}

impl Launcher {
    pub async fn start(&self, name: &str, extra: &[&str]) -> Result<ServerProcess, SuiteError> {
        let port = || -> Result<u16, SuiteError> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port())
        };
        let (grpc, http, admin) = (port()?, port()?, port()?);
        std::fs::create_dir_all(&self.log_dir)?;
        let log = std::fs::File::create(self.log_dir.join(format!("server-{name}.log")))?;
        let child = Command::new(&self.exe)
            .arg("--dev")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--database-name", &self.database_name, "serve"])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut server = ServerProcess {
            target: Target {
                endpoint: format!("http://127.0.0.1:{grpc}"),
                url: format!("http://127.0.0.1:{http}"),
                pid: Some(child.id() as i32),
            },
            child,
        };
        // Ready once it answers on the admin port and its dev key is written.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = server.child.try_wait()? {
                return Err(SuiteError::Server(format!(
                    "`serve --dev` exited ({status}); see {}",
                    self.log_dir.join(format!("server-{name}.log")).display()
                )));
            }
            let ready = tokio::net::TcpStream::connect(("127.0.0.1", admin))
                .await
                .is_ok()
                && tokio::net::TcpStream::connect(("127.0.0.1", grpc))
                    .await
                    .is_ok()
                && self.state_dir.join("dev-key").exists();
            if ready {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(SuiteError::Server(
                    "`serve --dev` not ready in 120 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl ServerProcess {
    /// SIGTERM, and the drain's time to exit; then SIGKILL.
    pub async fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error("starting a server: {0}")]
    Server(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("drawing the plots: {0}")]
    Plot(String),
}

impl From<tonic::Status> for SuiteError {
    fn from(s: tonic::Status) -> Self {
        Self::Bench(s.into())
    }
}

/// Where the servers come from.
pub enum Servers {
    /// Already running: the default one, and maybe one with `--inbox-workers 0`.
    Running {
        default: Target,
        ingest_only: Option<Target>,
    },
    /// Started by the suite.
    Start(Launcher),
}

/// Runs the suite, drawing a progress line on stderr (hidden when it is not a terminal).
pub async fn all(
    args: &AllBenchArgs,
    state_dir: &Path,
    pool: &PgPool,
    servers: Servers,
) -> Result<Suite, SuiteError> {
    let scenarios: Vec<Scenario> = if args.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        Scenario::ALL
            .into_iter()
            .filter(|s| args.scenarios.contains(s))
            .collect()
    };
    let levels: Vec<usize> = args
        .concurrency_levels
        .iter()
        .copied()
        .filter(|c| *c > 0)
        .collect();
    let progress = ProgressBar::new((scenarios.len() * levels.len() * 2) as u64);
    progress.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} points, ~{eta} left: {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    progress.enable_steady_tick(Duration::from_millis(500));
    let mut suite = Suite {
        points: Vec::new(),
        first_errors: Vec::new(),
        skipped: Vec::new(),
    };
    let run = Run {
        args,
        state_dir,
        pool,
        levels: &levels,
        progress: &progress,
    };

    let (first, ingest_only): (Vec<_>, Vec<_>) = scenarios
        .iter()
        .partition(|s| **s != Scenario::WebhooksIngestOnly);
    match servers {
        Servers::Running {
            default,
            ingest_only: second,
        } => {
            run.phase(&default, &first, &mut suite).await?;
            match (second, ingest_only.is_empty()) {
                (_, true) => {}
                (Some(second), false) => run.phase(&second, &ingest_only, &mut suite).await?,
                (None, false) => suite.skipped.push(
                    "webhooks-ingest-only: no --ingest-only-url (a server run with \
                     --inbox-workers 0)"
                        .into(),
                ),
            }
        }
        Servers::Start(launcher) => {
            if !first.is_empty() {
                progress.set_message("starting serve --dev");
                let server = launcher.start("default", &[]).await?;
                let measured = run.phase(&server.target, &first, &mut suite).await;
                server.stop().await;
                measured?;
            }
            if !ingest_only.is_empty() {
                progress.set_message("starting serve --dev --inbox-workers 0");
                let server = launcher
                    .start("ingest-only", &["--inbox-workers", "0"])
                    .await?;
                let measured = run.phase(&server.target, &ingest_only, &mut suite).await;
                server.stop().await;
                measured?;
            }
        }
    }
    progress.finish_and_clear();
    Ok(suite)
}

struct Run<'a> {
    args: &'a AllBenchArgs,
    state_dir: &'a Path,
    pool: &'a PgPool,
    levels: &'a [usize],
    progress: &'a ProgressBar,
}

/// What the scenarios of one server need, made once before its points.
struct Prepared {
    grpc: Grpc,
    subscribed: Option<Subscribed>,
    query: Option<UsageQuery>,
    usage: Option<UsageSetup>,
    deliveries: Option<Deliveries>,
}

impl Run<'_> {
    /// The `scenarios` against `target`, every level each.
    async fn phase(
        &self,
        target: &Target,
        scenarios: &[&Scenario],
        suite: &mut Suite,
    ) -> Result<(), SuiteError> {
        let args = self.args;
        let needs = |these: &[Scenario]| scenarios.iter().any(|s| these.contains(s));
        let bearer = bearer_of(args.key.as_deref(), self.state_dir)?;
        let grpc = Grpc::connect(&target.endpoint, args.connections, bearer).await?;
        let mut prepared = Prepared {
            grpc: grpc.clone(),
            subscribed: None,
            query: None,
            usage: None,
            deliveries: None,
        };
        if needs(&[Scenario::CheckAccess, Scenario::Mixed]) {
            self.progress
                .set_message(format!("setup: {SUBSCRIBED} subscribed customers"));
            prepared.subscribed = Some(Subscribed::prepare(&grpc, self.pool, SUBSCRIBED).await?);
        }
        if needs(&[Scenario::UsageQuery, Scenario::Mixed]) {
            self.progress
                .set_message(format!("setup: loading {} usage events", args.events));
            prepared.query = Some(UsageQuery::prepare(&grpc, args.events).await?.0);
        }
        if needs(&[Scenario::UsageStream, Scenario::UsageBatch, Scenario::Mixed]) {
            self.progress.set_message("setup: usage customers");
            prepared.usage =
                Some(UsageSetup::prepare(&grpc, USAGE_CUSTOMERS, args.batch_size, 0.1).await?);
        }
        if needs(&[
            Scenario::Webhooks,
            Scenario::WebhooksIngestOnly,
            Scenario::Mixed,
        ]) {
            prepared.deliveries = Some(
                Deliveries::prepare(
                    &target.url,
                    &args.account,
                    args.webhook_secret.as_deref(),
                    self.pool,
                )
                .await?,
            );
        }
        let mixed = match (&prepared.subscribed, &prepared.query, &prepared.usage) {
            (Some(subscribed), Some(query), Some(usage)) if needs(&[Scenario::Mixed]) => {
                Some(Mixed {
                    grpc: grpc.clone(),
                    subscribed: subscribed.clone(),
                    query: query.clone(),
                    usage_customers: usage.customers().clone(),
                    deliveries: prepared.deliveries.clone(),
                })
            }
            _ => None,
        };
        let probe = CpuProbe::new(target.pid, self.pool.clone());
        for &&scenario in scenarios {
            let mut first_error = None;
            for &concurrency in self.levels {
                let load = Load {
                    concurrency,
                    warmup: args.warmup,
                    duration: args.duration,
                };
                let at = format!("{} at {concurrency} in flight", scenario.name());
                self.progress.set_message(format!("{at}: baseline"));
                let before = probe.sample().await;
                let baseline = self.baseline(scenario, &prepared, load).await?;
                let baseline_cpu = probe.since(&before).await;
                self.progress.inc(1);
                self.progress.set_message(at);
                let before = probe.sample().await;
                let op = self.op(scenario, &prepared, mixed.as_ref(), load).await;
                let op_cpu = probe.since(&before).await;
                self.progress.inc(1);
                first_error = first_error.or_else(|| op.first_error.clone());
                let point = Point {
                    scenario,
                    concurrency,
                    op,
                    op_cpu,
                    baseline,
                    baseline_cpu,
                };
                self.progress.println(format!(
                    "{} at {}: {} {} ({} errors), p99 {:.2} ms; baseline {} {}: {}",
                    scenario.name(),
                    concurrency,
                    grouped(point.op.item_rate()),
                    scenario.unit(),
                    point.op.errors,
                    point.op.quantile_ms(0.99),
                    grouped(point.baseline.item_rate()),
                    scenario.unit(),
                    point
                        .ratio()
                        .map_or_else(|| "–".into(), |r| format!("{r:.2}x")),
                ));
                suite.points.push(point);
            }
            if let Some(e) = first_error {
                suite.first_errors.push(format!("{}: {e}", scenario.name()));
            }
        }
        Ok(())
    }

    async fn baseline(
        &self,
        scenario: Scenario,
        prepared: &Prepared,
        load: Load,
    ) -> Result<Measurement, SuiteError> {
        Ok(match scenario {
            Scenario::CheckAccess | Scenario::UsageQuery | Scenario::Mixed => {
                empty_rpc(&prepared.grpc, load).await
            }
            Scenario::Customers => customers::insert_baseline(self.pool, load).await?,
            Scenario::UsageStream | Scenario::UsageBatch => {
                prepared
                    .usage
                    .as_ref()
                    .expect("prepared")
                    .copy_baseline(self.pool, load)
                    .await?
            }
            Scenario::Webhooks | Scenario::WebhooksIngestOnly => {
                webhooks::insert_baseline(self.pool, &self.args.account, load).await?
            }
        })
    }

    async fn op(
        &self,
        scenario: Scenario,
        prepared: &Prepared,
        mixed: Option<&Mixed>,
        load: Load,
    ) -> Measurement {
        match scenario {
            Scenario::CheckAccess => {
                let subscribed = prepared.subscribed.as_ref().expect("prepared");
                subscribed.check_load(&prepared.grpc, load).await
            }
            Scenario::UsageQuery => {
                let query = prepared.query.as_ref().expect("prepared");
                query.load(pb::UsageWindow::None, load).await
            }
            Scenario::Customers => customers::create_load(&prepared.grpc, load).await,
            Scenario::UsageStream => {
                prepared
                    .usage
                    .as_ref()
                    .expect("prepared")
                    .stream(load)
                    .await
            }
            Scenario::UsageBatch => {
                prepared
                    .usage
                    .as_ref()
                    .expect("prepared")
                    .record(load)
                    .await
            }
            Scenario::Mixed => mixed.expect("prepared").load(load).await,
            Scenario::Webhooks | Scenario::WebhooksIngestOnly => {
                prepared
                    .deliveries
                    .as_ref()
                    .expect("prepared")
                    .load(load)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(name: &str, ok: u64, secs: u64, latencies_ms: &[u32], items: u64) -> Measurement {
        Measurement::from_parts(
            name,
            ok,
            0,
            Duration::from_secs(secs),
            latencies_ms.iter().map(|ms| ms * 1000).collect(),
            None,
            items,
        )
    }

    #[test]
    fn ratios_and_the_table() {
        assert_eq!(ratio(50.0, 100.0), Some(0.5));
        assert_eq!(ratio(50.0, 0.0), None);
        assert_eq!(grouped(1_234_567.4), "1 234 567");
        assert_eq!(grouped(999.0), "999");
        assert_eq!(per_1k(2.0, 4_000), Some(0.5));
        assert_eq!(per_1k(2.0, 0), None);

        let point = Point {
            scenario: Scenario::UsageStream,
            concurrency: 16,
            // 20 batches of 100 events in 2 s: 1 000 events/s.
            op: measured("grpc StreamUsage", 20, 2, &[10; 20], 2_000),
            op_cpu: Cpu {
                server: Some(1.0),
                postgres: 3.0,
                bench: 0.5,
            },
            // 4 000 rows/s.
            baseline: measured("postgres COPY", 80, 2, &[5; 80], 8_000),
            baseline_cpu: Cpu {
                server: None,
                postgres: 4.0,
                bench: 0.1,
            },
        };
        assert_eq!(point.ratio(), Some(0.25));
        let table = markdown_table(std::slice::from_ref(&point));
        let row = table.lines().nth(2).expect("a row");
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(
            cells[1..16],
            [
                "usage-stream",
                "16",
                "1 000 events/s",
                "10.00",
                "10.00",
                "10.00",
                "0",
                "0.500",
                "1.500",
                "0.250",
                "postgres COPY",
                "4 000",
                "5.00",
                "0.500",
                "0.25x",
            ]
        );
        // Without the server's pid, and with a baseline that measured nothing.
        let blind = Point {
            op_cpu: Cpu {
                server: None,
                ..point.op_cpu
            },
            baseline: measured("postgres COPY", 0, 2, &[], 0),
            ..point
        };
        let row = markdown_table(&[blind]);
        let cells: Vec<&str> = row
            .lines()
            .nth(2)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!((cells[8], cells[14], cells[15]), ("–", "–", "–"));
        assert_eq!(
            table.lines().next().unwrap().split('|').count(),
            table.lines().nth(2).unwrap().split('|').count()
        );
    }

    #[test]
    fn scenarios_by_name() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()), Ok(s));
        }
        assert!(Scenario::parse("nope").unwrap_err().contains("mixed"));
    }
}
