//! `coffer bench customers`: CreateCustomer over gRPC, next to the same rows inserted straight
//! into Postgres one per transaction, and an empty gRPC call (health Check), all at the same
//! concurrency.

use std::path::Path;

use sqlx::PgPool;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

use super::{BenchError, Report, bearer, connect, run_load};
use crate::config::BenchArgs;
use crate::grpc::pb::CreateCustomerRequest;
use crate::grpc::pb::customers_client::CustomersClient;
use crate::store::bench as store;

pub async fn customers(
    args: &BenchArgs,
    state_dir: &Path,
    pool: &PgPool,
) -> Result<Report, BenchError> {
    let bearer = bearer(args, state_dir)?;
    let channels = connect(args).await?;
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
        notes: vec![],
    })
}
