//! Payments, refunds (on the Checkout service) and subscriptions (on Subscriptions):
//! protobuf ⇄ domain, nothing else. The service impls call these.

use prost::Message;
use tonic::{Request, Response, Status};

use super::customers::{from_timestamp, timestamp};
use super::pb::{self, list_subscriptions_request::Customer as Who};
use super::{Fingerprinted, idempotent_call, respond, status, tenant_ctx};
use crate::app::App;
use crate::app::idempotency::Replayable;
use crate::app::payments::{NewRefund, PaymentQuery};
use crate::app::subscriptions::SubscriptionQuery;
use crate::domain::Violations;
use crate::domain::customer::{CustomerRef, ExternalId};
use crate::domain::ids::{CustomerId, PaymentId, RefundId, SubscriptionId};
use crate::domain::money::Currency;
use crate::domain::page::PageSize;
use crate::domain::payment::{Payment, PaymentStatus, Refund, RefundReason, RefundStatus};
use crate::domain::subscription::{Subscription, SubscriptionStatus};

const REFUND: &str = "/coffer.v1.Checkout/RefundPayment";

pub async fn get_payment(
    app: &App,
    request: Request<pb::GetPaymentRequest>,
) -> Result<Response<pb::Payment>, Status> {
    let ctx = tenant_ctx(&request)?;
    let id = PaymentId::parse(&request.get_ref().id)
        .map_err(|e| status::invalid(&Violations::single("id", e.0)))?;
    let payment = app.payments.get(&ctx, id).await?;
    Ok(Response::new(payment_to_proto(&payment)))
}

pub async fn list_payments(
    app: &App,
    request: Request<pb::ListPaymentsRequest>,
) -> Result<Response<pb::ListPaymentsResponse>, Status> {
    let ctx = tenant_ctx(&request)?;
    let req = request.get_ref();
    let mut v = Violations::new();
    let page_size = v.check("page_size", PageSize::parse(req.page_size));
    let customer = if req.customer_id.is_empty() {
        Some(None)
    } else {
        v.check("customer_id", CustomerId::parse(&req.customer_id))
            .map(Some)
    };
    let status = match pb::PaymentStatus::try_from(req.status) {
        Ok(s) => Some(payment_status_from_proto(s)),
        Err(_) => {
            v.add("status", "unknown status");
            None
        }
    };
    let subscription = if req.subscription_id.is_empty() {
        Some(None)
    } else {
        v.check(
            "subscription_id",
            crate::domain::ids::SubscriptionId::parse(&req.subscription_id),
        )
        .map(Some)
    };
    v.finish().map_err(|v| status::invalid(&v))?;
    let query = PaymentQuery {
        customer: customer.expect("checked"),
        status: status.expect("checked"),
        subscription: subscription.expect("checked"),
        page_size: page_size.expect("checked"),
        page_token: Some(req.page_token.clone()),
    };
    let page = app.payments.list(&ctx, &query).await?;
    Ok(Response::new(pb::ListPaymentsResponse {
        payments: page.items.iter().map(payment_to_proto).collect(),
        next_page_token: page.next_page_token.unwrap_or_default(),
    }))
}

pub async fn refund_payment(
    app: &App,
    request: Request<pb::RefundPaymentRequest>,
) -> Result<Response<pb::Refund>, Status> {
    let ctx = tenant_ctx(&request)?;
    let call = idempotent_call(request.metadata(), REFUND, request.get_ref())?;
    let new = parse_refund(request.get_ref()).map_err(|v| status::invalid(&v))?;
    let done = app.payments.refund(&ctx, call, new).await?;
    Ok(respond(done, |r| refund_to_proto(&r)))
}

pub async fn get_subscription(
    app: &App,
    request: Request<pb::GetSubscriptionRequest>,
) -> Result<Response<pb::Subscription>, Status> {
    let ctx = tenant_ctx(&request)?;
    let id = SubscriptionId::parse(&request.get_ref().id)
        .map_err(|e| status::invalid(&Violations::single("id", e.0)))?;
    let sub = app.subscriptions.get_subscription(&ctx, id).await?;
    Ok(Response::new(subscription_to_proto(&sub)))
}

pub async fn list_subscriptions(
    app: &App,
    request: Request<pb::ListSubscriptionsRequest>,
) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
    let ctx = tenant_ctx(&request)?;
    let req = request.get_ref();
    let mut v = Violations::new();
    let page_size = v.check("page_size", PageSize::parse(req.page_size));
    let customer = match &req.customer {
        None => Some(None),
        Some(Who::CustomerId(id)) => v
            .check("customer_id", CustomerId::parse(id))
            .map(|c| Some(CustomerRef::Id(c))),
        Some(Who::ExternalId(e)) => v
            .check("external_id", ExternalId::parse(e))
            .map(|e| Some(CustomerRef::External(e))),
    };
    let status = match pb::SubscriptionStatus::try_from(req.status) {
        Ok(s) => Some(subscription_status_from_proto(s)),
        Err(_) => {
            v.add("status", "unknown status");
            None
        }
    };
    v.finish().map_err(|v| status::invalid(&v))?;
    let query = SubscriptionQuery {
        customer: customer.expect("checked"),
        status: status.expect("checked"),
        page_size: page_size.expect("checked"),
        page_token: Some(req.page_token.clone()),
    };
    let page = app.subscriptions.list_subscriptions(&ctx, &query).await?;
    Ok(Response::new(pb::ListSubscriptionsResponse {
        subscriptions: page.items.iter().map(subscription_to_proto).collect(),
        next_page_token: page.next_page_token.unwrap_or_default(),
    }))
}

impl Fingerprinted for pb::RefundPaymentRequest {}

fn parse_refund(req: &pb::RefundPaymentRequest) -> Result<NewRefund, Violations> {
    let mut v = Violations::new();
    let payment = v.check("payment_id", PaymentId::parse(&req.payment_id));
    if let Some(a) = req.amount
        && a <= 0
    {
        v.add("amount", "must be more than 0 (unset for all that is left)");
    }
    let reason = match pb::RefundReason::try_from(req.reason) {
        Ok(r) => Some(reason_from_proto(r)),
        Err(_) => {
            v.add("reason", "unknown reason");
            None
        }
    };
    v.finish()?;
    Ok(NewRefund {
        payment: payment.expect("checked"),
        amount: req.amount,
        reason: reason.expect("checked"),
    })
}

fn payment_status_to_proto(s: PaymentStatus) -> pb::PaymentStatus {
    match s {
        PaymentStatus::Created => pb::PaymentStatus::Created,
        PaymentStatus::ProviderPending => pb::PaymentStatus::ProviderPending,
        PaymentStatus::Succeeded => pb::PaymentStatus::Succeeded,
        PaymentStatus::Failed => pb::PaymentStatus::Failed,
        PaymentStatus::Expired => pb::PaymentStatus::Expired,
        PaymentStatus::Canceled => pb::PaymentStatus::Canceled,
        PaymentStatus::Disputed => pb::PaymentStatus::Disputed,
    }
}

fn payment_status_from_proto(s: pb::PaymentStatus) -> Option<PaymentStatus> {
    PaymentStatus::ALL
        .into_iter()
        .find(|d| payment_status_to_proto(*d) == s)
}

pub(super) fn subscription_status_to_proto(s: SubscriptionStatus) -> pb::SubscriptionStatus {
    match s {
        SubscriptionStatus::Incomplete => pb::SubscriptionStatus::Incomplete,
        SubscriptionStatus::IncompleteExpired => pb::SubscriptionStatus::IncompleteExpired,
        SubscriptionStatus::Trialing => pb::SubscriptionStatus::Trialing,
        SubscriptionStatus::Active => pb::SubscriptionStatus::Active,
        SubscriptionStatus::PastDue => pb::SubscriptionStatus::PastDue,
        SubscriptionStatus::Canceled => pb::SubscriptionStatus::Canceled,
        SubscriptionStatus::Unpaid => pb::SubscriptionStatus::Unpaid,
        SubscriptionStatus::Paused => pb::SubscriptionStatus::Paused,
    }
}

fn subscription_status_from_proto(s: pb::SubscriptionStatus) -> Option<SubscriptionStatus> {
    SubscriptionStatus::ALL
        .into_iter()
        .find(|d| subscription_status_to_proto(*d) == s)
}

fn refund_status_to_proto(s: RefundStatus) -> pb::RefundStatus {
    match s {
        RefundStatus::Pending => pb::RefundStatus::Pending,
        RefundStatus::Succeeded => pb::RefundStatus::Succeeded,
        RefundStatus::Failed => pb::RefundStatus::Failed,
    }
}

fn reason_to_proto(r: RefundReason) -> pb::RefundReason {
    match r {
        RefundReason::Unspecified => pb::RefundReason::Unspecified,
        RefundReason::RequestedByCustomer => pb::RefundReason::RequestedByCustomer,
        RefundReason::Duplicate => pb::RefundReason::Duplicate,
        RefundReason::Fraudulent => pb::RefundReason::Fraudulent,
    }
}

fn reason_from_proto(r: pb::RefundReason) -> RefundReason {
    match r {
        pb::RefundReason::Unspecified => RefundReason::Unspecified,
        pb::RefundReason::RequestedByCustomer => RefundReason::RequestedByCustomer,
        pb::RefundReason::Duplicate => RefundReason::Duplicate,
        pb::RefundReason::Fraudulent => RefundReason::Fraudulent,
    }
}

pub fn payment_to_proto(p: &Payment) -> pb::Payment {
    pb::Payment {
        id: p.id.to_string(),
        customer_id: p.customer.to_string(),
        checkout_session_id: p
            .checkout_session
            .map(|c| c.to_string())
            .unwrap_or_default(),
        provider_account: p.account.clone(),
        amount: p.amount,
        currency: p.currency.code().to_owned(),
        status: payment_status_to_proto(p.status).into(),
        failure_code: p.failure_code.clone().unwrap_or_default(),
        card_brand: p.card_brand.clone().unwrap_or_default(),
        card_last4: p.card_last4.clone().unwrap_or_default(),
        amount_refunded: p.amount_refunded,
        amount_lost: p.amount_lost,
        provider_payment_id: p.provider_payment_id.clone().unwrap_or_default(),
        create_time: Some(timestamp(p.created_at)),
        update_time: Some(timestamp(p.updated_at)),
        subscription_id: p.subscription.map(|s| s.to_string()).unwrap_or_default(),
        period_start: p.period.map(|(start, _)| timestamp(start)),
        period_end: p.period.and_then(|(_, end)| end).map(timestamp),
    }
}

pub fn refund_to_proto(r: &Refund) -> pb::Refund {
    pb::Refund {
        id: r.id.to_string(),
        payment_id: r.payment.to_string(),
        amount: r.amount,
        currency: r.currency.code().to_owned(),
        reason: reason_to_proto(r.reason).into(),
        status: refund_status_to_proto(r.status).into(),
        failure_code: r.failure_code.clone().unwrap_or_default(),
        provider_refund_id: r.provider_refund_id.clone().unwrap_or_default(),
        create_time: Some(timestamp(r.created_at)),
    }
}

pub fn subscription_to_proto(s: &Subscription) -> pb::Subscription {
    pb::Subscription {
        id: s.id.to_string(),
        customer_id: s.customer.to_string(),
        plan_id: s.plan.map(|p| p.to_string()).unwrap_or_default(),
        price_id: s.price.map(|p| p.to_string()).unwrap_or_default(),
        quantity: s.quantity.into(),
        status: subscription_status_to_proto(s.status).into(),
        current_period_start: Some(timestamp(s.current_period_start)),
        current_period_end: Some(timestamp(s.current_period_end)),
        trial_end: s.trial_end.map(timestamp),
        provider_account: s.account.clone(),
        provider_subscription_id: s.provider_subscription_id.clone(),
        checkout_session_id: s
            .checkout_session
            .map(|c| c.to_string())
            .unwrap_or_default(),
        create_time: Some(timestamp(s.created_at)),
        cancel_at_period_end: s.cancel_at_period_end,
        collection_paused: s.collection_paused,
        canceled_at: s.canceled_at.map(timestamp),
        cancel_reason: s.cancel_reason.clone(),
    }
}

/// The refund a stored response describes: everything the response shows, so a replay is
/// byte for byte the first answer.
fn refund_from_proto(p: &pb::Refund) -> Option<Refund> {
    let optional = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Some(Refund {
        id: RefundId::parse(&p.id).ok()?,
        payment: PaymentId::parse(&p.payment_id).ok()?,
        amount: p.amount,
        currency: Currency::parse(&p.currency).ok()?,
        reason: reason_from_proto(pb::RefundReason::try_from(p.reason).ok()?),
        status: RefundStatus::ALL
            .into_iter()
            .find(|s| refund_status_to_proto(*s) as i32 == p.status)?,
        failure_code: optional(&p.failure_code),
        provider_refund_id: optional(&p.provider_refund_id),
        created_at: from_timestamp(p.create_time.as_ref()?)?,
    })
}

impl Replayable for Refund {
    fn encode_replay(&self) -> Vec<u8> {
        refund_to_proto(self).encode_to_vec()
    }

    fn decode_replay(bytes: &[u8]) -> Option<Self> {
        refund_from_proto(&pb::Refund::decode(bytes).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_new_rpc_field_and_value_is_documented() {
        let missing = crate::grpc::undocumented("coffer/v1/subscriptions.proto");
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }

    #[test]
    fn a_refund_replays_byte_for_byte() {
        let p = pb::Refund {
            id: RefundId::generate().to_string(),
            payment_id: PaymentId::generate().to_string(),
            amount: 1_000,
            currency: "USD".into(),
            reason: pb::RefundReason::Duplicate as i32,
            status: pb::RefundStatus::Succeeded as i32,
            provider_refund_id: "re_sbx_1".into(),
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000,
            }),
            ..Default::default()
        };
        let bytes = p.encode_to_vec();
        assert_eq!(
            Refund::decode_replay(&bytes).unwrap().encode_replay(),
            bytes
        );
    }

    #[test]
    fn refund_fields_are_checked_by_name() {
        let bad = pb::RefundPaymentRequest {
            payment_id: "pay_1".into(),
            amount: Some(0),
            reason: 9,
        };
        let v = parse_refund(&bad).unwrap_err();
        let fields: Vec<_> = v.list().iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["payment_id", "amount", "reason"]);
    }
}
