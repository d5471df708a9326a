//! `coffer bench check-access`: CheckAccess over gRPC for customers with an ACTIVE
//! subscription to a plan with a switch and a metered feature, next to an empty gRPC call
//! (health Check), at the same concurrency and on the same connections.
//!
//! The subscriptions are made as a provider's would arrive: a SUBSCRIPTION checkout session on
//! the sandbox (so the server must run with `--dev` or `--sandbox`), then the subscription
//! applied to it as the inbox applies a provider's event. The measurement is the warm path:
//! every customer's answer is cached after its first call.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use sqlx::PgPool;
use time::OffsetDateTime;

use super::{BenchError, Grpc, Load, Measurement, Report, empty_rpc, run_id, run_load};
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
    let grpc = Grpc::of(args, state_dir).await?;
    let load = Load::of(args);
    let subscribed = Subscribed::prepare(&grpc, pool, CUSTOMERS).await?;
    let check = subscribed.check_load(&grpc, load).await;
    let empty = empty_rpc(&grpc, load).await;
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

/// Customers with an ACTIVE subscription to a plan with a switch (`reports`) and a metered
/// feature (`api_calls`).
#[derive(Clone)]
pub(super) struct Subscribed {
    pub customers: Arc<Vec<String>>,
}

impl Subscribed {
    /// A meter, a plan with a switch and a metered feature, and `n` customers subscribed.
    pub async fn prepare(grpc: &Grpc, pool: &PgPool, n: usize) -> Result<Self, BenchError> {
        let run = run_id();
        let ch = grpc.channel(0);
        let meter = format!("bench-calls-{run}");
        UsageClient::new(ch.clone())
            .create_meter(grpc.request(CreateMeterRequest {
                key: meter.clone(),
                aggregation: Aggregation::Count as i32,
                ..Default::default()
            }))
            .await?;
        let plan = SubscriptionsClient::new(ch.clone())
            .create_plan(grpc.request(CreatePlanRequest {
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
        let mut customers = Vec::with_capacity(n);
        let start = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("0 is valid");
        for i in 0..n {
            let customer = CustomersClient::new(ch.clone())
                .create_customer(grpc.request(CreateCustomerRequest {
                    external_id: format!("bench-{run}-{i}"),
                    ..Default::default()
                }))
                .await?
                .into_inner();
            let session = CheckoutClient::new(ch.clone())
                .create_checkout_session(grpc.request(CreateCheckoutSessionRequest {
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
                    retries_exhausted: false,
                    version: 1,
                },
            )
            .await
            .map_err(|e| tonic::Status::internal(format!("applying a subscription: {e}")))?;
            tx.commit().await.map_err(crate::store::StoreError::from)?;
            customers.push(customer.id);
        }
        Ok(Self {
            customers: Arc::new(customers),
        })
    }

    /// CheckAccess of both features for customer `seq` (round robin), failing unless both
    /// are allowed.
    pub fn check(
        &self,
        grpc: &Grpc,
        worker: usize,
        seq: u64,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send + 'static + use<> {
        let mut client = SubscriptionsClient::new(grpc.channel(worker));
        let request = grpc.request(CheckAccessRequest {
            customer: Some(check_access_request::Customer::CustomerId(
                self.customers[seq as usize % self.customers.len()].clone(),
            )),
            features: vec!["reports".into(), "api_calls".into()],
        });
        async move {
            let answer = client.check_access(request).await?.into_inner();
            if answer.results.iter().all(|r| r.allowed) {
                Ok(())
            } else {
                Err(tonic::Status::internal(format!("denied: {answer:?}")))
            }
        }
    }

    /// The operation under test: both features for a customer, round robin.
    pub async fn check_load(&self, grpc: &Grpc, load: Load) -> Measurement {
        let (this, grpc) = (self.clone(), grpc.clone());
        run_load(
            "grpc CheckAccess (switch + metered)",
            load.concurrency,
            load.warmup,
            load.duration,
            move |worker, seq| this.check(&grpc, worker, seq),
        )
        .await
    }
}
