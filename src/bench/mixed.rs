//! The `mixed` scenario of `bench all`: what a busy deployment sees at once. Each call picks
//! its operation from its sequence number, in these shares: reads (GetCustomer 30%,
//! ListCustomers 10%, GetUsage over 30 days 10%, CheckAccess 20%), creates (CreateCustomer
//! 10%), usage (RecordUsage of 10 events, 10%) and webhook deliveries (10%; CheckAccess
//! instead when no sidecar is given).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::access::Subscribed;
use super::usage::{METER, UsageQuery};
use super::webhooks::{Connections, Deliveries};
use super::{Grpc, Load, Measurement, customers, run_id, run_load};
use crate::grpc::pb::{self, customers_client::CustomersClient, usage_client::UsageClient};

/// Events per RecordUsage call of the blend.
const USAGE_BATCH: usize = 10;

/// What the blend calls.
#[derive(Clone)]
pub(super) struct Mixed {
    pub grpc: Grpc,
    pub subscribed: Subscribed,
    pub query: UsageQuery,
    /// External ids RecordUsage spreads its events over.
    pub usage_customers: Arc<Vec<String>>,
    pub deliveries: Option<Deliveries>,
}

/// What one call of the blend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    GetCustomer,
    ListCustomers,
    GetUsage,
    CheckAccess,
    CreateCustomer,
    RecordUsage,
    Webhook,
}

impl Op {
    /// The operation of call `seq`: the shares above, in twentieths.
    fn of(seq: u64) -> Self {
        match seq % 20 {
            0..=5 => Self::GetCustomer,
            6 | 7 => Self::ListCustomers,
            8 | 9 => Self::GetUsage,
            10..=13 => Self::CheckAccess,
            14 | 15 => Self::CreateCustomer,
            16 | 17 => Self::RecordUsage,
            _ => Self::Webhook,
        }
    }
}

type Call = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

impl Mixed {
    pub async fn load(&self, load: Load) -> Measurement {
        let this = self.clone();
        let run = run_id();
        let connections: Connections = Deliveries::connections(load.concurrency);
        run_load(
            "mixed: reads, creates, usage, webhooks",
            load.concurrency,
            load.warmup,
            load.duration,
            move |worker, seq| this.call(&connections, &run, worker, seq),
        )
        .await
    }

    fn call(&self, connections: &Connections, run: &str, worker: usize, seq: u64) -> Call {
        let grpc = &self.grpc;
        let customers = &self.subscribed.customers;
        let customer = customers[(seq as usize / 20) % customers.len()].clone();
        let status = |s: tonic::Status| s.to_string();
        match Op::of(seq) {
            Op::GetCustomer => {
                let mut client = CustomersClient::new(grpc.channel(worker));
                let request = grpc.request(pb::GetCustomerRequest {
                    lookup: Some(pb::get_customer_request::Lookup::Id(customer)),
                });
                Box::pin(async move {
                    client
                        .get_customer(request)
                        .await
                        .map(|_| ())
                        .map_err(status)
                })
            }
            Op::ListCustomers => {
                let mut client = CustomersClient::new(grpc.channel(worker));
                let request = grpc.request(pb::ListCustomersRequest {
                    page_size: 20,
                    ..Default::default()
                });
                Box::pin(async move {
                    client
                        .list_customers(request)
                        .await
                        .map(|_| ())
                        .map_err(status)
                })
            }
            Op::GetUsage => {
                let call = self.query.get(pb::UsageWindow::Day, worker);
                Box::pin(async move { call.await.map_err(status) })
            }
            Op::CreateCustomer => {
                let mut client = CustomersClient::new(grpc.channel(worker));
                let request = customers::create_request(grpc, run, seq);
                Box::pin(async move {
                    client
                        .create_customer(request)
                        .await
                        .map(|_| ())
                        .map_err(status)
                })
            }
            Op::RecordUsage => {
                let mut client = UsageClient::new(grpc.channel(worker));
                let now = prost_types::Timestamp::from(std::time::SystemTime::now());
                let names = &self.usage_customers;
                let events = (0..USAGE_BATCH)
                    .map(|i| pb::UsageEvent {
                        event_id: format!("mixed-{run}-{seq}-{i}"),
                        customer: Some(pb::usage_event::Customer::ExternalId(
                            names[(seq as usize + i) % names.len()].clone(),
                        )),
                        meter_key: METER.into(),
                        value: "1".into(),
                        occurred_at: Some(now),
                        properties: Default::default(),
                    })
                    .collect();
                let request = grpc.request(pb::RecordUsageRequest { events });
                Box::pin(async move {
                    client
                        .record_usage(request)
                        .await
                        .map(|_| ())
                        .map_err(status)
                })
            }
            Op::Webhook if self.deliveries.is_some() => {
                let deliveries = self.deliveries.clone().expect("checked");
                let (connections, run) = (connections.clone(), run.to_owned());
                Box::pin(async move { deliveries.deliver(&connections[worker], &run, seq).await })
            }
            Op::CheckAccess | Op::Webhook => {
                let call = self.subscribed.check(grpc, worker, seq);
                Box::pin(async move { call.await.map_err(status) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blend_has_its_shares() {
        let mut counts = std::collections::HashMap::new();
        for seq in 0..2_000 {
            *counts.entry(Op::of(seq)).or_insert(0) += 1;
        }
        assert_eq!(counts[&Op::GetCustomer], 600);
        assert_eq!(counts[&Op::ListCustomers], 200);
        assert_eq!(counts[&Op::GetUsage], 200);
        assert_eq!(counts[&Op::CheckAccess], 400);
        assert_eq!(counts[&Op::CreateCustomer], 200);
        assert_eq!(counts[&Op::RecordUsage], 200);
        assert_eq!(counts[&Op::Webhook], 200);
    }
}
