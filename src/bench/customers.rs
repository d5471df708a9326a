//! `coffer bench customers`: CreateCustomer over gRPC, next to the same rows inserted straight
//! into Postgres one per transaction, and an empty gRPC call (health Check), all at the same
//! concurrency.

use std::path::Path;

use sqlx::PgPool;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

use super::{Report, run_load};
use crate::config::BenchArgs;
use crate::grpc::pb::CreateCustomerRequest;
use crate::grpc::pb::customers_client::CustomersClient;
use crate::store::bench as store;

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
    #[error("preparing the Postgres baseline")]
    Baseline(#[from] crate::store::StoreError),
}

pub async fn customers(
    args: &BenchArgs,
    state_dir: &Path,
    pool: &PgPool,
) -> Result<Report, BenchError> {
    let key = match &args.key {
        Some(k) => k.clone(),
        None => {
            let path = state_dir.join("dev-key");
            std::fs::read_to_string(&path)
                .map_err(|e| BenchError::NoKey(format!("{}: {e}", path.display())))?
                .trim()
                .to_owned()
        }
    };
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {key}")
        .parse()
        .map_err(|_| BenchError::NoKey("the key is not valid header text".into()))?;

    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let endpoint =
            Endpoint::from_shared(args.endpoint.clone()).map_err(|source| BenchError::Connect {
                endpoint: args.endpoint.clone(),
                source,
            })?;
        channels.push(
            endpoint
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|source| BenchError::Connect {
                    endpoint: args.endpoint.clone(),
                    source,
                })?,
        );
    }
    let channel = move |worker: usize| -> Channel { channels[worker % channels.len()].clone() };
    let run = Uuid::now_v7().simple().to_string()[20..].to_owned();

    // 1. The operation under test.
    let create = {
        let channel = channel.clone();
        let bearer = bearer.clone();
        let run = run.clone();
        run_load(
            "grpc CreateCustomer (idempotency key)",
            args.concurrency,
            args.warmup,
            args.duration,
            move |worker, seq| {
                let mut client = CustomersClient::new(channel(worker));
                let mut request = tonic::Request::new(CreateCustomerRequest {
                    external_id: format!("bench-{run}-{seq}"),
                    email: format!("bench-{seq}@example.com"),
                    name: format!("Bench Customer {seq}"),
                    metadata: Default::default(),
                });
                request
                    .metadata_mut()
                    .insert("authorization", bearer.clone());
                let idem = format!("bench-{run}-{seq}").parse().expect("ascii");
                request.metadata_mut().insert("idempotency-key", idem);
                async move { client.create_customer(request).await.map(|_| ()) }
            },
        )
        .await
    };

    // 2. Baseline: the same rows straight into a copy of the customers table, one per
    //    transaction, through a pool as large as the server's (--db-max-connections, the same
    //    flag and default `serve` uses), so both sides get the same number of connections.
    let baseline_pool = pool.clone();
    store::create_baseline_table(&baseline_pool).await?;
    let insert = {
        let pool = baseline_pool.clone();
        let run = run.clone();
        let tenant = Uuid::now_v7();
        run_load(
            "postgres INSERT customer (1 row/tx)",
            args.concurrency,
            args.warmup,
            args.duration,
            move |_, seq| {
                let pool = pool.clone();
                let external_id = format!("base-{run}-{seq}");
                async move {
                    store::insert_baseline_row(
                        &pool,
                        tenant,
                        &external_id,
                        &format!("bench-{seq}@example.com"),
                        &format!("Bench Customer {seq}"),
                    )
                    .await
                }
            },
        )
        .await
    };
    store::drop_baseline_table(&baseline_pool).await?;

    // 3. Baseline: the cheapest gRPC call the server answers, on the same connections.
    let empty = run_load(
        "grpc health Check (empty RPC)",
        args.concurrency,
        args.warmup,
        args.duration,
        move |worker, _| {
            let mut client = HealthClient::new(channel(worker));
            async move {
                client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map(|_| ())
            }
        },
    )
    .await;

    Ok(Report {
        title: format!(
            "coffer bench customers: {} workers over {} gRPC connections, {} Postgres connections for the baseline, {:?} each (after {:?} warm-up), {}",
            args.concurrency,
            args.connections.max(1),
            pool.options().get_max_connections(),
            args.duration,
            args.warmup,
            args.endpoint
        ),
        measurements: vec![create, insert, empty],
        ratios: vec![
            ("CreateCustomer rate / Postgres insert rate".into(), 0, 1),
            ("CreateCustomer rate / empty RPC rate".into(), 0, 2),
        ],
    })
}
