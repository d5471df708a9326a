//! `coffer bench customers`: CreateCustomer over gRPC, next to the same rows inserted straight
//! into Postgres one per transaction, and an empty gRPC call (health Check), all at the same
//! concurrency.

use std::path::Path;

use sqlx::PgPool;
use uuid::Uuid;

use super::{BenchError, Grpc, Load, Measurement, Report, empty_rpc, run_id, run_load};
use crate::config::BenchArgs;
use crate::grpc::pb::CreateCustomerRequest;
use crate::grpc::pb::customers_client::CustomersClient;
use crate::store::bench as store;

pub async fn customers(
    args: &BenchArgs,
    state_dir: &Path,
    pool: &PgPool,
) -> Result<Report, BenchError> {
    let grpc = Grpc::of(args, state_dir).await?;
    let load = Load::of(args);
    let create = create_load(&grpc, load).await;
    let insert = insert_baseline(pool, load).await?;
    let empty = empty_rpc(&grpc, load).await;
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

/// The operation under test: CreateCustomer, each call a new customer under its own
/// idempotency key.
pub(super) async fn create_load(grpc: &Grpc, load: Load) -> Measurement {
    let grpc = grpc.clone();
    let run = run_id();
    run_load(
        "grpc CreateCustomer (idempotency key)",
        load.concurrency,
        load.warmup,
        load.duration,
        move |worker, seq| {
            let mut client = CustomersClient::new(grpc.channel(worker));
            let request = create_request(&grpc, &run, seq);
            async move { client.create_customer(request).await.map(|_| ()) }
        },
    )
    .await
}

/// CreateCustomer for customer `seq` of run `run`, under its own idempotency key.
pub(super) fn create_request(
    grpc: &Grpc,
    run: &str,
    seq: u64,
) -> tonic::Request<CreateCustomerRequest> {
    let mut request = grpc.request(CreateCustomerRequest {
        external_id: format!("bench-{run}-{seq}"),
        email: format!("bench-{seq}@example.com"),
        name: format!("Bench Customer {seq}"),
        metadata: Default::default(),
    });
    let idem = format!("bench-{run}-{seq}").parse().expect("ascii");
    request.metadata_mut().insert("idempotency-key", idem);
    request
}

/// Baseline: the same rows straight into a copy of the customers table, one per transaction,
/// through a pool as large as the server's (--db-max-connections, the same flag and default
/// `serve` uses), so both sides get the same number of connections.
pub(super) async fn insert_baseline(pool: &PgPool, load: Load) -> Result<Measurement, BenchError> {
    store::create_baseline_table(pool).await?;
    let measured = {
        let pool = pool.clone();
        let run = run_id();
        let tenant = Uuid::now_v7();
        run_load(
            "postgres INSERT customer (1 row/tx)",
            load.concurrency,
            load.warmup,
            load.duration,
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
    store::drop_baseline_table(pool).await?;
    Ok(measured)
}
