//! `coffer bench check-access`: CheckAccess over gRPC for customers with an ACTIVE
//! subscription to a plan with a switch and a metered feature, next to an empty gRPC call
//! (health Check), at the same concurrency and on the same connections.
//!
//! The subscriptions are made as a provider's would arrive: a SUBSCRIPTION checkout session on
//! the sandbox (so the server must run with `--dev` or `--sandbox`), then the subscription
//! applied to it as the inbox applies a provider's event. The measurement is the warm path:
//! every customer's answer is cached after its first call.

use std::path::Path;

use sqlx::PgPool;
use time::OffsetDateTime;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use uuid::Uuid;

use super::{BenchError, Report, bearer, connect, run_load};
use crate::config::BenchArgs;
use crate::domain::ids::CheckoutId;
use crate::domain::subscription::SubscriptionStatus;
use crate::grpc::pb::checkout_client::CheckoutClient;
use crate::grpc::pb::checkout_line_item::Price as ItemPrice;
use crate::grpc::pb::customers_client::CustomersClient;
use crate::grpc::pb::subscriptions_client::SubscriptionsClient;
use crate::grpc::pb::usage_client::UsageClient;
use crate::grpc::pb::{
    Aggregation, CheckAccessRequest, CheckoutLineItem, CheckoutMode, CreateCheckoutSessionRequest,
    CreateCustomerRequest, CreateMeterRequest, CreatePlanRequest, Feature, Interval, Price,
    check_access_request, create_checkout_session_request,
};
use crate::providers::ProviderSubscription;

/// Customers the calls are spread over.
const CUSTOMERS: usize = 100;

pub async fn check_access(
    args: &BenchArgs,
    state_dir: &Path,
    pool: &PgPool,
) -> Result<Report, BenchError> {
    let bearer = bearer(args, state_dir)?;
    let channels = connect(args).await?;
    let channel = move |worker: usize| -> Channel { channels[worker % channels.len()].clone() };
    let run = Uuid::now_v7().simple().to_string()[20..].to_owned();
    let authed = Authed(bearer.clone());

    // Setup: a meter, a plan with a switch and a metered feature, customers subscribed.
    let ch = channel(0);
    let meter = format!("bench-calls-{run}");
    UsageClient::new(ch.clone())
        .create_meter(authed.of(CreateMeterRequest {
            key: meter.clone(),
            aggregation: Aggregation::Count as i32,
            ..Default::default()
        }))
        .await?;
    let plan = SubscriptionsClient::new(ch.clone())
        .create_plan(authed.of(CreatePlanRequest {
            key: format!("bench-{run}"),
            name: "Bench".into(),
            features: vec![
                Feature {
                    key: "reports".into(),
                    ..Default::default()
                },
                Feature {
                    key: "api_calls".into(),
                    meter_key: meter.clone(),
                    limit_per_period: 1_000_000,
                },
            ],
            prices: vec![Price {
                amount: 2_900,
                currency: "USD".into(),
                interval: Interval::Month as i32,
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await?
        .into_inner();
    let mut customers = Vec::with_capacity(CUSTOMERS);
    let start = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is valid");
    for i in 0..CUSTOMERS {
        let customer = CustomersClient::new(ch.clone())
            .create_customer(authed.of(CreateCustomerRequest {
                external_id: format!("bench-{run}-{i}"),
                ..Default::default()
            }))
            .await?
            .into_inner();
        let session = CheckoutClient::new(ch.clone())
            .create_checkout_session(authed.of(CreateCheckoutSessionRequest {
                customer: Some(create_checkout_session_request::Customer::CustomerId(
                    customer.id.clone(),
                )),
                mode: CheckoutMode::Subscription as i32,
                line_items: vec![CheckoutLineItem {
                    price: Some(ItemPrice::PriceId(plan.prices[0].id.clone())),
                    quantity: 1,
                    ..Default::default()
                }],
                success_url: "https://bench.example/ok".into(),
                cancel_url: "https://bench.example/cancel".into(),
                ..Default::default()
            }))
            .await?
            .into_inner();
        let session = CheckoutId::parse(&session.id)
            .map_err(|e| tonic::Status::internal(format!("session id: {}", e.0)))?;
        let tenant = crate::store::bench::session_tenant(pool, session.as_uuid()).await?;
        let mut tx = pool.begin().await.map_err(crate::store::StoreError::from)?;
        crate::app::subscriptions::apply_subscription(
            &mut tx,
            tenant,
            &ProviderSubscription {
                id: format!("sub_bench_{}", session.as_uuid().simple()),
                client_reference: session.as_uuid(),
                status: SubscriptionStatus::Active,
                current_period_start: start,
                current_period_end: start + time::Duration::days(30),
                trial_end: None,
                cancel_at_period_end: false,
                collection_paused: false,
                canceled_at: None,
                cancel_reason: String::new(),
                price: None,
                quantity: None,
                version: 1,
            },
        )
        .await
        .map_err(|e| tonic::Status::internal(format!("applying a subscription: {e}")))?;
        tx.commit().await.map_err(crate::store::StoreError::from)?;
        customers.push(customer.id);
    }

    // 1. The operation under test: both features for a customer, round robin.
    let check = {
        let channel = channel.clone();
        let bearer = bearer.clone();
        run_load(
            "grpc CheckAccess (switch + metered)",
            args.concurrency,
            args.warmup,
            args.duration,
            move |worker, seq| {
                let mut client = SubscriptionsClient::new(channel(worker));
                let mut request = tonic::Request::new(CheckAccessRequest {
                    customer: Some(check_access_request::Customer::CustomerId(
                        customers[seq as usize % customers.len()].clone(),
                    )),
                    features: vec!["reports".into(), "api_calls".into()],
                });
                request
                    .metadata_mut()
                    .insert("authorization", bearer.clone());
                async move {
                    let answer = client.check_access(request).await?.into_inner();
                    if answer.results.iter().all(|r| r.allowed) {
                        Ok(())
                    } else {
                        Err(tonic::Status::internal(format!("denied: {answer:?}")))
                    }
                }
            },
        )
        .await
    };

    // 2. Baseline: the cheapest gRPC call the server answers, on the same connections.
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
    let p99 = check.quantile_ms(0.99) / empty.quantile_ms(0.99).max(0.001);
    Ok(Report {
        title: format!(
            "coffer bench check-access: {} workers over {} gRPC connections, {} customers, {:?} each (after {:?} warm-up), {}",
            args.concurrency,
            args.connections.max(1),
            CUSTOMERS,
            args.duration,
            args.warmup,
            args.endpoint
        ),
        measurements: vec![check, empty],
        ratios: vec![("CheckAccess rate / empty RPC rate".into(), 0, 1)],
        notes: vec![format!("CheckAccess p99 / empty RPC p99: {p99:.2}")],
    })
}

/// Requests carrying the benchmark's key.
struct Authed(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl Authed {
    fn of<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut().insert("authorization", self.0.clone());
        r
    }
}
