//! `coffer bench usage`: usage events through StreamUsage (and, as a second line, RecordUsage
//! batches), with a share of repeated event ids, next to the same rows `COPY`ed straight into
//! a copy of the `usage_events` table (same keys, index and checks), at the same concurrency
//! and batch size.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{Mutex, Semaphore, mpsc};
use tonic::transport::Channel;
use uuid::Uuid;

use super::{Bearer, BenchError, Grpc, Load, Measurement, Report, run_id, run_load};
use crate::config::{UsageBenchArgs, UsageQueryBenchArgs};
use crate::grpc::ReceiverStream;
use crate::grpc::pb::customers_client::CustomersClient;
use crate::grpc::pb::usage_client::UsageClient;
use crate::grpc::pb::{
    self, Aggregation, CreateCustomerRequest, CreateMeterRequest, RecordUsageRequest,
    StreamUsageRequest, UsageEvent,
};
use crate::store::bench as store;

pub(super) const METER: &str = "bench_tokens";
/// Batches one stream keeps in flight (sent, not yet answered): the server's own pipeline.
const IN_FLIGHT: usize = 8;

fn authorized<T>(message: T, bearer: &Bearer) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert("authorization", bearer.clone());
    r
}

/// What a batch carries: `batch` events for the customers in turn, the first `repeats` of
/// them with the ids of the same positions in the worker's previous batch.
struct Batches {
    run: String,
    worker: usize,
    customers: Arc<Vec<String>>,
    batch: usize,
    repeats: usize,
}

impl Batches {
    fn events(&self, seq: u64) -> Vec<UsageEvent> {
        let now = prost_types::Timestamp::from(std::time::SystemTime::now());
        (0..self.batch)
            .map(|i| {
                let from = if i < self.repeats && seq > 0 {
                    seq - 1
                } else {
                    seq
                };
                UsageEvent {
                    event_id: format!("{}-{}-{from}-{i}", self.run, self.worker),
                    customer: Some(pb::usage_event::Customer::ExternalId(
                        self.customers[i % self.customers.len()].clone(),
                    )),
                    meter_key: METER.into(),
                    value: "1".into(),
                    occurred_at: Some(now),
                    properties: Default::default(),
                }
            })
            .collect()
    }
}

pub async fn usage(
    args: &UsageBenchArgs,
    state_dir: &Path,
    pool: &PgPool,
) -> Result<Report, BenchError> {
    let common = &args.common;
    let grpc = Grpc::of(common, state_dir).await?;
    let load = Load::of(common);
    let setup =
        UsageSetup::prepare(&grpc, args.customers, args.batch_size, args.repeat_share).await?;
    let streamed = setup.stream(load).await;
    let recorded = setup.record(load).await;
    let copied = setup.copy_baseline(pool, load).await?;
    Ok(Report {
        title: format!(
            "coffer bench usage: {} streams/workers over {} gRPC connections, {} events per batch, {:.0}% repeated ids, {} customers, {:?} each (after {:?} warm-up), {}",
            common.concurrency,
            common.connections.max(1),
            setup.batch,
            args.repeat_share * 100.0,
            args.customers.max(1),
            common.duration,
            common.warmup,
            common.endpoint
        ),
        measurements: vec![streamed, recorded, copied],
        ratios: vec![
            ("StreamUsage events/s / COPY rows/s".into(), 0, 2),
            ("RecordUsage events/s / COPY rows/s".into(), 1, 2),
        ],
        notes: vec![],
    })
}

/// The usage scenarios' customers and batches.
pub(super) struct UsageSetup {
    grpc: Grpc,
    names: Arc<Vec<String>>,
    batch: usize,
    repeats: usize,
}

impl UsageSetup {
    /// The meter (made once per database) and `customers` customers of this run; batches of
    /// `batch_size` events, `repeat_share` of them repeating the previous batch's ids.
    pub async fn prepare(
        grpc: &Grpc,
        customers: usize,
        batch_size: usize,
        repeat_share: f64,
    ) -> Result<Self, BenchError> {
        let run = run_id();
        let batch = batch_size.clamp(1, crate::domain::usage::MAX_EVENTS_PER_BATCH);
        let repeats = ((batch as f64) * repeat_share.clamp(0.0, 1.0)).round() as usize;
        ensure_meter(&grpc.channel(0), &grpc.bearer).await?;
        let mut client = CustomersClient::new(grpc.channel(0));
        let mut names = Vec::new();
        for i in 0..customers.max(1) {
            let external_id = format!("bench-usage-{run}-{i}");
            client
                .create_customer(grpc.request(CreateCustomerRequest {
                    external_id: external_id.clone(),
                    ..Default::default()
                }))
                .await?;
            names.push(external_id);
        }
        Ok(Self {
            grpc: grpc.clone(),
            names: Arc::new(names),
            batch,
            repeats,
        })
    }

    /// The customers' external ids.
    pub fn customers(&self) -> &Arc<Vec<String>> {
        &self.names
    }

    fn batches(&self, worker: usize, run: &str) -> Batches {
        Batches {
            run: run.to_owned(),
            worker,
            customers: self.names.clone(),
            batch: self.batch,
            repeats: self.repeats,
        }
    }

    /// StreamUsage: each worker one stream, [`IN_FLIGHT`] batches outstanding.
    pub async fn stream(&self, load: Load) -> Measurement {
        let warm = run_id();
        let _ = stream_load(&self.grpc, load.concurrency, load.warmup, |w| {
            self.batches(w, &warm)
        })
        .await;
        let run = run_id();
        let mut m = stream_load(&self.grpc, load.concurrency, load.duration, |w| {
            self.batches(w, &run)
        })
        .await;
        m.name = format!(
            "grpc StreamUsage ({}/batch, {} repeats)",
            self.batch, self.repeats
        );
        m
    }

    /// RecordUsage: one batch per call.
    pub async fn record(&self, load: Load) -> Measurement {
        let grpc = self.grpc.clone();
        let run = run_id();
        let makers: Arc<Vec<Batches>> = Arc::new(
            (0..load.concurrency)
                .map(|w| self.batches(w, &run))
                .collect(),
        );
        let seqs: Arc<Vec<std::sync::atomic::AtomicU64>> =
            Arc::new((0..load.concurrency).map(|_| 0.into()).collect());
        run_load(
            &format!(
                "grpc RecordUsage ({}/call, {} repeats)",
                self.batch, self.repeats
            ),
            load.concurrency,
            load.warmup,
            load.duration,
            move |worker, _| {
                let seq = seqs[worker].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let events = makers[worker].events(seq);
                let mut client = UsageClient::new(grpc.channel(worker));
                let request = grpc.request(RecordUsageRequest { events });
                async move { client.record_usage(request).await.map(|_| ()) }
            },
        )
        .await
        .items_per_op(self.batch as u64)
    }

    /// Baseline: the same rows COPYed into a plain copy of usage_events, a batch per COPY, at
    /// the same concurrency.
    pub async fn copy_baseline(
        &self,
        pool: &PgPool,
        load: Load,
    ) -> Result<Measurement, BenchError> {
        let batch = self.batch;
        store::create_usage_baseline_table(pool).await?;
        let copied = {
            let pool = pool.clone();
            let tenant = Uuid::now_v7();
            let meter = Uuid::now_v7();
            let customers: Arc<Vec<Uuid>> =
                Arc::new((0..self.names.len()).map(|_| Uuid::now_v7()).collect());
            let run = run_id();
            run_load(
                &format!("postgres COPY usage rows ({batch}/COPY)"),
                load.concurrency,
                load.warmup,
                load.duration,
                move |worker, seq| {
                    let pool = pool.clone();
                    let customers = customers.clone();
                    let run = run.clone();
                    async move {
                        store::copy_usage_baseline(
                            &pool, tenant, meter, &customers, &run, worker, seq, batch,
                        )
                        .await
                    }
                },
            )
            .await
            .items_per_op(batch as u64)
        };
        store::drop_usage_baseline_table(pool).await?;
        Ok(copied)
    }
}

/// Runs `streams` StreamUsage calls for `duration`, each keeping [`IN_FLIGHT`] batches
/// outstanding; latency is from a batch's send to its answer.
async fn stream_load(
    grpc: &Grpc,
    streams: usize,
    duration: Duration,
    batches: impl Fn(usize) -> Batches,
) -> Measurement {
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..streams {
        let maker = batches(worker);
        let mut client = UsageClient::new(grpc.channel(worker));
        let bearer = grpc.bearer.clone();
        workers.spawn(async move {
            let (tx, rx) = mpsc::channel(IN_FLIGHT);
            let slots = Arc::new(Semaphore::new(IN_FLIGHT));
            let sent_at: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
            let sender = {
                let (slots, sent_at) = (slots.clone(), sent_at.clone());
                tokio::spawn(async move {
                    let mut seq = 0;
                    while Instant::now() < deadline {
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            return;
                        };
                        permit.forget();
                        let events = maker.events(seq);
                        seq += 1;
                        sent_at.lock().await.push_back(Instant::now());
                        if tx.send(StreamUsageRequest { events }).await.is_err() {
                            return;
                        }
                    }
                })
            };
            let mut latencies = Vec::new();
            let (mut events, mut errors, mut first_error) = (0u64, 0u64, None);
            match client
                .stream_usage(authorized(ReceiverStream(rx), &bearer))
                .await
            {
                Err(e) => {
                    errors += 1;
                    first_error = Some(e.to_string());
                }
                Ok(answers) => {
                    let mut answers = answers.into_inner();
                    loop {
                        match answers.message().await {
                            Ok(Some(a)) => {
                                if let Some(t) = sent_at.lock().await.pop_front() {
                                    latencies
                                        .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                                }
                                events += (a.accepted + a.duplicates) as u64;
                                if !a.rejected.is_empty() {
                                    errors += 1;
                                    first_error.get_or_insert_with(|| {
                                        format!("rejected: {:?}", a.rejected[0])
                                    });
                                }
                                slots.add_permits(1);
                            }
                            Ok(None) => break,
                            Err(e) => {
                                errors += 1;
                                first_error.get_or_insert_with(|| e.to_string());
                                break;
                            }
                        }
                    }
                }
            }
            slots.close();
            let _ = sender.await;
            (latencies, events, errors, first_error)
        });
    }
    let (mut latencies, mut events, mut errors, mut first_error) = (Vec::new(), 0, 0, None);
    while let Some(r) = workers.join_next().await {
        let (l, e, x, f) = r.expect("a stream worker panicked");
        latencies.extend(l);
        events += e;
        errors += x;
        first_error = first_error.or(f);
    }
    let batches = latencies.len() as u64;
    Measurement::from_parts(
        "grpc StreamUsage",
        batches,
        errors,
        started.elapsed(),
        latencies,
        first_error,
        events,
    )
}

/// `coffer bench usage-query`: loads `--events` events for one customer, spread evenly over
/// the last 30 days, then measures GetUsage over those 30 days (the total, per day and per
/// hour), with the range's ends off the hour so the partial hours are read from the events.
pub async fn usage_query(
    args: &UsageQueryBenchArgs,
    state_dir: &Path,
) -> Result<Report, BenchError> {
    let common = &args.common;
    let grpc = Grpc::of(common, state_dir).await?;
    let load = Load::of(common);
    let (query, loaded) = match &args.customer {
        Some(customer) => {
            let now = time::OffsetDateTime::now_utc();
            (UsageQuery::of(&grpc, customer.clone(), now), None)
        }
        None => {
            let (query, loaded) = UsageQuery::prepare(&grpc, args.events).await?;
            (query, Some(loaded))
        }
    };
    let events = loaded
        .as_ref()
        .map_or("an earlier run's".to_owned(), |l| l.items.to_string());
    let mut measurements: Vec<Measurement> = loaded.into_iter().collect();
    for window in [
        pb::UsageWindow::None,
        pb::UsageWindow::Day,
        pb::UsageWindow::Hour,
    ] {
        measurements.push(query.load(window, load).await);
    }
    Ok(Report {
        title: format!(
            "coffer bench usage-query: {} events for one customer over 30 days ({}); GetUsage from {} workers over {} connections, {:?} each (after {:?} warm-up), {}",
            events,
            query.customer,
            common.concurrency,
            common.connections.max(1),
            common.duration,
            common.warmup,
            common.endpoint
        ),
        measurements,
        ratios: Vec::new(),
        notes: Vec::new(),
    })
}

/// One customer with events over the last 30 days, and GetUsage over those 30 days.
#[derive(Clone)]
pub(super) struct UsageQuery {
    grpc: Grpc,
    customer: String,
    from: time::OffsetDateTime,
    to: time::OffsetDateTime,
}

/// How far back usage-query's events go, and so the range it reads.
const QUERY_SPAN: time::Duration = time::Duration::days(30);

impl UsageQuery {
    /// Loads `events` events for a new customer, spread evenly over the last 30 days: one
    /// StreamUsage per connection, 1 000 events a batch, then waits for the server to fold
    /// their rollups. Returns the load's measurement too.
    pub async fn prepare(grpc: &Grpc, events: u64) -> Result<(Self, Measurement), BenchError> {
        let run = run_id();
        let customer = format!("bench-query-{run}");
        ensure_meter(&grpc.channel(0), &grpc.bearer).await?;
        CustomersClient::new(grpc.channel(0))
            .create_customer(grpc.request(CreateCustomerRequest {
                external_id: customer.clone(),
                ..Default::default()
            }))
            .await?;

        let now = time::OffsetDateTime::now_utc();
        let span = QUERY_SPAN;
        let total = events.max(1);
        let step_ns = span.whole_nanoseconds() / total as i128;
        let loaded = Instant::now();
        let streams = grpc.channels.len();
        let mut loaders = tokio::task::JoinSet::new();
        for s in 0..streams {
            let mut client = UsageClient::new(grpc.channel(s));
            let bearer = grpc.bearer.clone();
            let customer = customer.clone();
            let run = run.clone();
            loaders.spawn(async move {
                let (tx, rx) = mpsc::channel(IN_FLIGHT);
                let producer = tokio::spawn(async move {
                    let mine: Vec<u64> = (s as u64..total).step_by(streams).collect();
                    for chunk in mine.chunks(1_000) {
                        let events = chunk
                            .iter()
                            .map(|&i| {
                                let at = now - span
                                    + time::Duration::nanoseconds((step_ns * i as i128) as i64);
                                UsageEvent {
                                    event_id: format!("{run}-{i}"),
                                    customer: Some(pb::usage_event::Customer::ExternalId(
                                        customer.clone(),
                                    )),
                                    meter_key: METER.into(),
                                    value: "1".into(),
                                    occurred_at: Some(prost_types::Timestamp {
                                        seconds: at.unix_timestamp(),
                                        nanos: at.nanosecond() as i32,
                                    }),
                                    properties: Default::default(),
                                }
                            })
                            .collect();
                        if tx.send(StreamUsageRequest { events }).await.is_err() {
                            return;
                        }
                    }
                });
                let mut answers = client
                    .stream_usage(authorized(ReceiverStream(rx), &bearer))
                    .await?
                    .into_inner();
                let mut stored = 0u64;
                while let Some(a) = answers.message().await? {
                    stored += a.accepted as u64;
                }
                let _ = producer.await;
                Ok::<u64, tonic::Status>(stored)
            });
        }
        let mut stored = 0;
        while let Some(r) = loaders.join_next().await {
            stored += r.expect("a loader panicked")?;
        }
        let load = Measurement::from_parts(
            "load: StreamUsage, one customer over 30 days",
            stored.div_ceil(1_000),
            0,
            loaded.elapsed(),
            Vec::new(),
            None,
            stored,
        );
        // A customer's 30 days arrive over 30 days, and the server folds each past period's
        // per-connection rollup rows within seconds (`sweeper::FOLD_EVERY`); loaded in a
        // minute, they are folded just after. Wait for that, so the reads measured are the
        // steady state's and the fold's one-off work is not counted in their window.
        tokio::time::sleep(2 * crate::app::sweeper::FOLD_EVERY + Duration::from_secs(1)).await;
        Ok((Self::of(grpc, customer, now), load))
    }

    /// GetUsage of `customer`'s 30 days before `now`, both ends off the hour and the minute.
    pub fn of(grpc: &Grpc, customer: String, now: time::OffsetDateTime) -> Self {
        Self {
            grpc: grpc.clone(),
            customer,
            from: now - QUERY_SPAN + time::Duration::minutes(7),
            to: now - time::Duration::minutes(3),
        }
    }

    /// GetUsage over the 30 days in `window`s, failing unless it finds the events.
    pub fn get(
        &self,
        window: pb::UsageWindow,
        worker: usize,
    ) -> impl std::future::Future<Output = Result<(), tonic::Status>> + Send + 'static + use<> {
        let mut client = UsageClient::new(self.grpc.channel(worker));
        let request = self.grpc.request(pb::GetUsageRequest {
            customer: Some(pb::get_usage_request::Customer::ExternalId(
                self.customer.clone(),
            )),
            meter_key: METER.into(),
            from: Some(prost_types::Timestamp {
                seconds: self.from.unix_timestamp(),
                nanos: 0,
            }),
            to: Some(prost_types::Timestamp {
                seconds: self.to.unix_timestamp(),
                nanos: 0,
            }),
            window: window as i32,
        });
        async move {
            let r = client.get_usage(request).await?.into_inner();
            match r.total {
                Some(t) if t.events > 0 => Ok(()),
                _ => Err(tonic::Status::internal("no usage in the answer")),
            }
        }
    }

    /// GetUsage over the 30 days in `window`s under `load`.
    pub async fn load(&self, window: pb::UsageWindow, load: Load) -> Measurement {
        let label = match window {
            pb::UsageWindow::Day => "grpc GetUsage 30 days, per day",
            pb::UsageWindow::Hour => "grpc GetUsage 30 days, per hour",
            _ => "grpc GetUsage 30 days, total",
        };
        let this = self.clone();
        run_load(
            label,
            load.concurrency,
            load.warmup,
            load.duration,
            move |worker, _| this.get(window, worker),
        )
        .await
    }
}

/// Makes the benchmark's SUM meter, unless an earlier run did.
async fn ensure_meter(channel: &Channel, bearer: &Bearer) -> Result<(), BenchError> {
    match UsageClient::new(channel.clone())
        .create_meter(authorized(
            CreateMeterRequest {
                key: METER.into(),
                name: "coffer bench usage".into(),
                aggregation: Aggregation::Sum as i32,
                value_key: "tokens".into(),
            },
            bearer,
        ))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(s.into()),
    }
}
