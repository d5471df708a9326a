//! CheckAccess and WatchSubscriptionEvents (served by the Subscriptions service): protobuf ⇄
//! domain, nothing else.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::customers::timestamp;
use super::payments::subscription_to_proto;
use super::pb::{self, check_access_request::Customer as Who};
use super::{status, tenant_ctx};
use crate::app::access::MAX_FEATURES;
use crate::app::{App, AppError};
use crate::domain::Violations;
use crate::domain::access::{Decision, Reason};
use crate::domain::customer::{CustomerRef, ExternalId};
use crate::domain::ids::CustomerId;
use crate::domain::plan::FeatureKey;
use crate::domain::subscription::{ChangeKind, EventCursor, SubscriptionEvent};

pub async fn check_access(
    app: &App,
    request: Request<pb::CheckAccessRequest>,
) -> Result<Response<pb::CheckAccessResponse>, Status> {
    let ctx = tenant_ctx(&request)?;
    let req = request.get_ref();
    let mut v = Violations::new();
    let customer = match &req.customer {
        Some(Who::CustomerId(id)) => v
            .check("customer_id", CustomerId::parse(id))
            .map(CustomerRef::Id),
        Some(Who::ExternalId(e)) => v
            .check("external_id", ExternalId::parse(e))
            .map(CustomerRef::External),
        None => {
            v.add("customer_id", "set customer_id or external_id");
            None
        }
    };
    if req.features.is_empty() || req.features.len() > MAX_FEATURES {
        v.add(
            "features",
            format!("must hold 1 to {MAX_FEATURES} feature keys"),
        );
    }
    let features: Vec<FeatureKey> = req
        .features
        .iter()
        .enumerate()
        .filter_map(|(i, f)| v.check(&format!("features[{i}]"), FeatureKey::parse(f)))
        .collect();
    v.finish().map_err(|v| status::invalid(&v))?;
    let customer = customer.expect("checked");
    let decisions = app.access.check(&ctx, &customer, &features).await?;
    Ok(Response::new(pb::CheckAccessResponse {
        results: features
            .iter()
            .zip(&decisions)
            .map(|(f, d)| result_to_proto(f, d))
            .collect(),
    }))
}

fn result_to_proto(feature: &FeatureKey, d: &Decision) -> pb::AccessResult {
    pb::AccessResult {
        feature: feature.as_str().to_owned(),
        allowed: d.allowed,
        reason: reason_to_proto(d.reason).into(),
        subscription_id: d.subscription.map(|s| s.to_string()).unwrap_or_default(),
        valid_until: d.valid_until.map(timestamp),
        remaining: d.remaining.map(|r| r.to_string()).unwrap_or_default(),
    }
}

fn reason_to_proto(r: Reason) -> pb::AccessReason {
    use pb::AccessReason as P;
    match r {
        Reason::Active => P::Active,
        Reason::Trialing => P::Trialing,
        Reason::PastDueGrace => P::PastDueGrace,
        Reason::CancelingAtPeriodEnd => P::CancelingAtPeriodEnd,
        Reason::NoSubscription => P::NoSubscription,
        Reason::FeatureNotInPlan => P::FeatureNotInPlan,
        Reason::PastDueGraceOver => P::PastDueGraceOver,
        Reason::SubscriptionCanceled => P::SubscriptionCanceled,
        Reason::SubscriptionUnpaid => P::SubscriptionUnpaid,
        Reason::SubscriptionIncomplete => P::SubscriptionIncomplete,
        Reason::SubscriptionPaused => P::SubscriptionPaused,
        Reason::PaymentDisputed => P::PaymentDisputed,
        Reason::LimitReached => P::LimitReached,
    }
}

fn kind_to_proto(k: ChangeKind) -> pb::SubscriptionEventType {
    use pb::SubscriptionEventType as P;
    match k {
        ChangeKind::Created => P::Created,
        ChangeKind::StatusChanged => P::StatusChanged,
        ChangeKind::EntitlementsChanged => P::EntitlementsChanged,
        ChangeKind::Updated => P::Updated,
    }
}

fn kind_from_proto(t: i32) -> Option<ChangeKind> {
    use pb::SubscriptionEventType as P;
    match P::try_from(t).ok()? {
        P::Unspecified => None,
        P::Created => Some(ChangeKind::Created),
        P::StatusChanged => Some(ChangeKind::StatusChanged),
        P::EntitlementsChanged => Some(ChangeKind::EntitlementsChanged),
        P::Updated => Some(ChangeKind::Updated),
    }
}

/// A WatchSubscriptionEvents stream: the app's events as protobuf; an error ends it.
pub struct Events(mpsc::Receiver<Result<SubscriptionEvent, AppError>>);

impl futures_core::Stream for Events {
    type Item = Result<pb::SubscriptionEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0
            .poll_recv(cx)
            .map(|next| next.map(|event| event.map(|e| event_to_proto(&e)).map_err(Status::from)))
    }
}

fn event_to_proto(e: &SubscriptionEvent) -> pb::SubscriptionEvent {
    pb::SubscriptionEvent {
        cursor: e.cursor.encode(),
        r#type: kind_to_proto(e.kind).into(),
        subscription: Some(subscription_to_proto(&e.subscription)),
        occur_time: Some(timestamp(e.occurred_at)),
    }
}

pub async fn watch_subscription_events(
    app: &App,
    request: Request<pb::WatchSubscriptionEventsRequest>,
) -> Result<Response<Events>, Status> {
    let ctx = tenant_ctx(&request)?;
    let req = request.get_ref();
    let mut v = Violations::new();
    let after = if req.after_cursor.is_empty() {
        None
    } else {
        v.check("after_cursor", EventCursor::decode(&req.after_cursor))
    };
    let mut kinds = Vec::new();
    for (i, t) in req.types.iter().enumerate() {
        match kind_from_proto(*t) {
            Some(k) => kinds.push(k),
            None => v.add(
                &format!("types[{i}]"),
                "must be a known type, not UNSPECIFIED",
            ),
        }
    }
    v.finish().map_err(|v| status::invalid(&v))?;
    let events = app.changes.watch(&ctx, after, kinds)?;
    Ok(Response::new(Events(events)))
}
