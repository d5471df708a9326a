//! The Subscriptions service: protobuf ⇄ domain, nothing else. The plan catalogue here;
//! subscriptions read in `payments`; CheckAccess and the change stream in `access`.

use std::collections::HashMap;

use prost::Message;
use tonic::{Request, Response, Status};

use super::customers::{from_timestamp, timestamp};
use super::payments::{subscription_status_to_proto, subscription_to_proto};
use super::pb::subscriptions_server::Subscriptions;
use super::pb::{self, get_plan_request::Lookup};
use super::{Fingerprinted, idempotent_call, respond, status, tenant_ctx};
use crate::app::App;
use crate::app::idempotency::Replayable;
use crate::app::subscriptions::{NewSubscriptionAsk, PlanChangeAsk, PlanQuery};
use crate::domain::Violations;
use crate::domain::account::AccountName;
use crate::domain::customer::DisplayName;
use crate::domain::ids::{CheckoutId, CustomerId, PlanId, PriceId, SubscriptionId};
use crate::domain::meter::MeterKey;
use crate::domain::money::{Currency, CurrencyLimits, Money};
use crate::domain::page::PageSize;
use crate::domain::plan::{
    Billing, BillingField, Description, Feature, Interval, NewPlan, NewPrice, Plan, PlanKey,
    PlanRef, Price,
};
use crate::domain::proration::{Behavior, LineKind};
use crate::domain::subscription::{
    Change, Effective, MAX_CANCEL_REASON, MAX_TRIAL_DAYS, Subscription, SubscriptionStatus,
    TrialDays,
};

// Full method names: idempotency keys are scoped per method.
const CREATE_PLAN: &str = "/coffer.v1.Subscriptions/CreatePlan";
const ARCHIVE_PLAN: &str = "/coffer.v1.Subscriptions/ArchivePlan";
const CANCEL: &str = "/coffer.v1.Subscriptions/CancelSubscription";
const UNDO_CANCEL: &str = "/coffer.v1.Subscriptions/UndoCancelSubscription";
const PAUSE: &str = "/coffer.v1.Subscriptions/PauseSubscription";
const RESUME: &str = "/coffer.v1.Subscriptions/ResumeSubscription";
const CHANGE_PLAN: &str = "/coffer.v1.Subscriptions/ChangeSubscriptionPlan";
const CREATE_SUBSCRIPTION: &str = "/coffer.v1.Subscriptions/CreateSubscription";

pub struct SubscriptionsService {
    app: App,
}

impl SubscriptionsService {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl Subscriptions for SubscriptionsService {
    #[tracing::instrument(skip_all)]
    async fn create_plan(
        &self,
        request: Request<pb::CreatePlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let ctx = tenant_ctx(&request)?;
        let call = idempotent_call(request.metadata(), CREATE_PLAN, request.get_ref())?;
        // Amounts are checked against the limits of the caller's tenant (coffer.toml).
        let limits = &self.app.settings.tenant(ctx.tenant).amount_limits;
        let new = parse_new(request.get_ref(), limits).map_err(|v| status::invalid(&v))?;
        let done = self.app.subscriptions.create_plan(&ctx, call, new).await?;
        Ok(respond(done, |p| to_proto(&p)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_plan(
        &self,
        request: Request<pb::GetPlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let ctx = tenant_ctx(&request)?;
        let by = match &request.get_ref().lookup {
            Some(Lookup::Id(id)) => PlanId::parse(id)
                .map(PlanRef::Id)
                .map_err(|e| Violations::single("id", e.0)),
            Some(Lookup::Key(key)) => PlanKey::parse(key)
                .map(PlanRef::Key)
                .map_err(|e| Violations::single("key", e.0)),
            None => Err(Violations::single("id", "set id or key")),
        }
        .map_err(|v| status::invalid(&v))?;
        let plan = self.app.subscriptions.get_plan(&ctx, &by).await?;
        Ok(Response::new(to_proto(&plan)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_plans(
        &self,
        request: Request<pb::ListPlansRequest>,
    ) -> Result<Response<pb::ListPlansResponse>, Status> {
        let ctx = tenant_ctx(&request)?;
        let req = request.get_ref();
        let page_size = PageSize::parse(req.page_size)
            .map_err(|e| status::invalid(&Violations::single("page_size", e.0)))?;
        let query = PlanQuery {
            show_archived: req.show_archived,
            page_size,
            page_token: Some(req.page_token.clone()),
        };
        let page = self.app.subscriptions.list_plans(&ctx, &query).await?;
        Ok(Response::new(pb::ListPlansResponse {
            plans: page.items.iter().map(to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn archive_plan(
        &self,
        request: Request<pb::ArchivePlanRequest>,
    ) -> Result<Response<pb::Plan>, Status> {
        let ctx = tenant_ctx(&request)?;
        let call = idempotent_call(request.metadata(), ARCHIVE_PLAN, request.get_ref())?;
        let id = PlanId::parse(&request.get_ref().id)
            .map_err(|e| status::invalid(&Violations::single("id", e.0)))?;
        let done = self.app.subscriptions.archive_plan(&ctx, call, id).await?;
        Ok(respond(done, |p| to_proto(&p)))
    }

    #[tracing::instrument(skip_all)]
    async fn create_subscription(
        &self,
        request: Request<pb::CreateSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let ctx = tenant_ctx(&request)?;
        let call = idempotent_call(request.metadata(), CREATE_SUBSCRIPTION, request.get_ref())?;
        let r = request.get_ref();
        let mut v = Violations::new();
        let customer = v.check("customer_id", CustomerId::parse(&r.customer_id));
        let price = v.check("price_id", PriceId::parse(&r.price_id));
        let quantity = match u32::try_from(r.quantity) {
            Ok(q @ 1..) => Some(q),
            _ => {
                v.add("quantity", "must be 1 or more");
                None
            }
        };
        let trial_days = match r.trial_days {
            None => Some(None),
            Some(days) => v
                .check(
                    "trial_days",
                    u32::try_from(days)
                        .map_err(|_| {
                            crate::domain::Invalid::new(format!(
                                "must be between 0 and {MAX_TRIAL_DAYS}"
                            ))
                        })
                        .and_then(TrialDays::parse),
                )
                .map(Some),
        };
        let account = if r.account.is_empty() {
            Some(None)
        } else {
            v.check("account", AccountName::parse(&r.account)).map(Some)
        };
        v.finish().map_err(|v| status::invalid(&v))?;
        let ask = NewSubscriptionAsk {
            customer: customer.expect("checked"),
            price: price.expect("checked"),
            quantity: quantity.expect("checked"),
            trial_days: trial_days.expect("checked"),
            account: account.expect("checked"),
        };
        let done = self.app.subscriptions.create(&ctx, call, ask).await?;
        Ok(respond(done, |s| subscription_to_proto(&s)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        super::payments::get_subscription(&self.app, request).await
    }

    #[tracing::instrument(skip_all)]
    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Result<Response<pb::ListSubscriptionsResponse>, Status> {
        super::payments::list_subscriptions(&self.app, request).await
    }

    #[tracing::instrument(skip_all)]
    async fn cancel_subscription(
        &self,
        request: Request<pb::CancelSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let req = request.get_ref();
        let mut v = Violations::new();
        let id = v.check("id", SubscriptionId::parse(&req.id));
        if req.reason.chars().count() > MAX_CANCEL_REASON {
            v.add(
                "reason",
                format!("must be at most {MAX_CANCEL_REASON} characters"),
            );
        }
        v.finish().map_err(|v| status::invalid(&v))?;
        let change = Change::Cancel {
            at_period_end: req.at_period_end,
            reason: req.reason.clone(),
        };
        self.change(&request, CANCEL, id.expect("checked"), change)
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn undo_cancel_subscription(
        &self,
        request: Request<pb::UndoCancelSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let id = parse_id(&request.get_ref().id)?;
        self.change(&request, UNDO_CANCEL, id, Change::UndoCancel)
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn pause_subscription(
        &self,
        request: Request<pb::PauseSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let id = parse_id(&request.get_ref().id)?;
        self.change(&request, PAUSE, id, Change::PauseCollection)
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn resume_subscription(
        &self,
        request: Request<pb::ResumeSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let id = parse_id(&request.get_ref().id)?;
        self.change(&request, RESUME, id, Change::ResumeCollection)
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn change_subscription_plan(
        &self,
        request: Request<pb::ChangeSubscriptionPlanRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let r = request.get_ref();
        let (id, ask) = parse_plan_change(PlanChangeFields {
            id: &r.id,
            price_id: &r.price_id,
            quantity: r.quantity,
            proration: r.proration,
            effective: r.effective,
            proration_time: r.proration_time.as_ref(),
        })?;
        let ctx = tenant_ctx(&request)?;
        let plan = self.app.subscriptions.plan_change(&ctx, id, ask).await?;
        self.change(&request, CHANGE_PLAN, id, Change::ChangePlan(plan))
            .await
    }

    #[tracing::instrument(skip_all)]
    async fn preview_plan_change(
        &self,
        request: Request<pb::PreviewPlanChangeRequest>,
    ) -> Result<Response<pb::PreviewPlanChangeResponse>, Status> {
        let r = request.get_ref();
        let (id, ask) = parse_plan_change(PlanChangeFields {
            id: &r.id,
            price_id: &r.price_id,
            quantity: r.quantity,
            proration: r.proration,
            effective: r.effective,
            proration_time: r.proration_time.as_ref(),
        })?;
        let ctx = tenant_ctx(&request)?;
        let plan = self.app.subscriptions.plan_change(&ctx, id, ask).await?;
        let p = self
            .app
            .subscriptions
            .preview_plan_change(&ctx, id, plan)
            .await?;
        Ok(Response::new(pb::PreviewPlanChangeResponse {
            amount_due: p.amount_due,
            currency: p.currency,
            lines: p
                .lines
                .iter()
                .map(|l| pb::PlanChangeLine {
                    amount: l.amount,
                    kind: match l.kind {
                        LineKind::UnusedTime => "unused_time",
                        LineKind::RemainingTime => "remaining_time",
                    }
                    .to_owned(),
                })
                .collect(),
            proration_time: Some(timestamp(p.proration_time)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn check_access(
        &self,
        request: Request<pb::CheckAccessRequest>,
    ) -> Result<Response<pb::CheckAccessResponse>, Status> {
        super::access::check_access(&self.app, request).await
    }

    type WatchSubscriptionEventsStream = super::access::Events;

    #[tracing::instrument(skip_all)]
    async fn watch_subscription_events(
        &self,
        request: Request<pb::WatchSubscriptionEventsRequest>,
    ) -> Result<Response<Self::WatchSubscriptionEventsStream>, Status> {
        super::access::watch_subscription_events(&self.app, request).await
    }
}

/// The fields ChangeSubscriptionPlan and PreviewPlanChange share.
struct PlanChangeFields<'a> {
    id: &'a str,
    price_id: &'a str,
    quantity: i64,
    proration: i32,
    effective: i32,
    proration_time: Option<&'a prost_types::Timestamp>,
}

/// A plan change's request, every field checked (each bad one named).
fn parse_plan_change(f: PlanChangeFields<'_>) -> Result<(SubscriptionId, PlanChangeAsk), Status> {
    let mut v = Violations::new();
    let id = v.check("id", SubscriptionId::parse(f.id));
    let price = v.check("price_id", PriceId::parse(f.price_id));
    let quantity = match u32::try_from(f.quantity) {
        Ok(q) if q >= 1 => Some(q),
        _ => {
            v.add("quantity", "must be between 1 and 4294967295");
            None
        }
    };
    let proration = match pb::Proration::try_from(f.proration) {
        Ok(pb::Proration::Prorate) => Some(Behavior::Prorate),
        Ok(pb::Proration::None) => Some(Behavior::None),
        Ok(pb::Proration::AlwaysInvoice) => Some(Behavior::AlwaysInvoice),
        _ => {
            v.add("proration", "must be PRORATE, NONE or ALWAYS_INVOICE");
            None
        }
    };
    let effective = match pb::PlanChangeEffective::try_from(f.effective) {
        Ok(pb::PlanChangeEffective::Now) => Some(Effective::Now),
        Ok(pb::PlanChangeEffective::PeriodEnd) => Some(Effective::PeriodEnd),
        _ => {
            v.add("effective", "must be NOW or PERIOD_END");
            None
        }
    };
    let proration_time = match f.proration_time {
        None => None,
        Some(t) => match from_timestamp(t) {
            Some(t) => Some(t),
            None => {
                v.add("proration_time", "is not a valid time");
                None
            }
        },
    };
    v.finish().map_err(|v| status::invalid(&v))?;
    Ok((
        id.expect("checked"),
        PlanChangeAsk {
            price: price.expect("checked"),
            quantity: quantity.expect("checked"),
            proration: proration.expect("checked"),
            effective: effective.expect("checked"),
            proration_time,
        },
    ))
}

impl SubscriptionsService {
    /// A lifecycle change, its request already valid.
    async fn change<T: Fingerprinted + Message>(
        &self,
        request: &Request<T>,
        method: &'static str,
        id: SubscriptionId,
        change: Change,
    ) -> Result<Response<pb::Subscription>, Status> {
        let ctx = tenant_ctx(request)?;
        let call = idempotent_call(request.metadata(), method, request.get_ref())?;
        let done = self
            .app
            .subscriptions
            .change(&ctx, call, id, change)
            .await?;
        Ok(respond(done, |s| subscription_to_proto(&s)))
    }
}

fn parse_id(id: &str) -> Result<SubscriptionId, Status> {
    SubscriptionId::parse(id).map_err(|e| status::invalid(&Violations::single("id", e.0)))
}

impl Fingerprinted for pb::CreateSubscriptionRequest {}
impl Fingerprinted for pb::CancelSubscriptionRequest {}
impl Fingerprinted for pb::UndoCancelSubscriptionRequest {}
impl Fingerprinted for pb::PauseSubscriptionRequest {}
impl Fingerprinted for pb::ResumeSubscriptionRequest {}
impl Fingerprinted for pb::ChangeSubscriptionPlanRequest {}

/// The subscription a stored response describes: everything the response shows, so a replay
/// is byte for byte the first answer.
fn subscription_from_proto(p: &pb::Subscription) -> Option<Subscription> {
    let optional_time = |t: &Option<prost_types::Timestamp>| match t {
        Some(t) => from_timestamp(t).map(Some),
        None => Some(None),
    };
    Some(Subscription {
        id: SubscriptionId::parse(&p.id).ok()?,
        customer: CustomerId::parse(&p.customer_id).ok()?,
        plan: match p.plan_id.as_str() {
            "" => None,
            id => Some(PlanId::parse(id).ok()?),
        },
        price: match p.price_id.as_str() {
            "" => None,
            id => Some(PriceId::parse(id).ok()?),
        },
        quantity: u32::try_from(p.quantity).ok()?,
        status: SubscriptionStatus::ALL
            .into_iter()
            .find(|s| subscription_status_to_proto(*s) as i32 == p.status)?,
        current_period_start: from_timestamp(p.current_period_start.as_ref()?)?,
        current_period_end: from_timestamp(p.current_period_end.as_ref()?)?,
        trial_end: optional_time(&p.trial_end)?,
        cancel_at_period_end: p.cancel_at_period_end,
        collection_paused: p.collection_paused,
        canceled_at: optional_time(&p.canceled_at)?,
        cancel_reason: p.cancel_reason.clone(),
        account: p.provider_account.clone(),
        provider_subscription_id: p.provider_subscription_id.clone(),
        checkout_session: match p.checkout_session_id.as_str() {
            "" => None,
            id => Some(CheckoutId::parse(id).ok()?),
        },
        created_at: from_timestamp(p.create_time.as_ref()?)?,
    })
}

/// A replay hands back exactly the subscription the first call returned, via its wire form.
impl Replayable for Subscription {
    fn encode_replay(&self) -> Vec<u8> {
        subscription_to_proto(self).encode_to_vec()
    }

    fn decode_replay(bytes: &[u8]) -> Option<Self> {
        subscription_from_proto(&pb::Subscription::decode(bytes).ok()?)
    }
}

impl Fingerprinted for pb::CreatePlanRequest {
    /// A price's id and create_time are output only: a caller retrying with prices copied
    /// from a response is making the same request.
    fn clear_output_only(&mut self) {
        for price in &mut self.prices {
            price.id.clear();
            price.create_time = None;
        }
    }
}

impl Fingerprinted for pb::ArchivePlanRequest {}

fn interval_from_proto(i: i32) -> Option<Option<Interval>> {
    match pb::Interval::try_from(i).ok()? {
        pb::Interval::Unspecified => None,
        pb::Interval::Month => Some(Some(Interval::Month)),
        pb::Interval::Year => Some(Some(Interval::Year)),
        pb::Interval::OneTime => Some(None),
    }
}

fn parse_new(req: &pb::CreatePlanRequest, limits: &CurrencyLimits) -> Result<NewPlan, Violations> {
    let mut v = Violations::new();
    let key = v.check("key", PlanKey::parse(&req.key));
    let name = if req.name.is_empty() {
        v.add("name", "is required");
        None
    } else {
        v.check("name", DisplayName::parse(&req.name))
    };
    let description = if req.description.is_empty() {
        Some(None)
    } else {
        v.check("description", Description::parse(&req.description))
            .map(Some)
    };

    let mut features = Vec::with_capacity(req.features.len());
    if req.features.len() > NewPlan::MAX_FEATURES {
        v.add(
            "features",
            format!("must have at most {} features", NewPlan::MAX_FEATURES),
        );
    } else {
        let mut first_at: HashMap<&str, usize> = HashMap::new();
        for (i, feature) in req.features.iter().enumerate() {
            let field = format!("features[{i}].key");
            match Feature::parse(&feature.key, &feature.meter_key, feature.limit_per_period) {
                Err(errors) => {
                    for (f, e) in errors {
                        v.add(&format!("features[{i}].{}", f.as_str()), e.0);
                    }
                }
                Ok(parsed) => match first_at.get(feature.key.as_str()) {
                    Some(j) => v.add(&field, format!("duplicates features[{j}].key")),
                    None => {
                        first_at.insert(&feature.key, i);
                        features.push(parsed);
                    }
                },
            }
        }
    }

    let mut prices = Vec::with_capacity(req.prices.len());
    if req.prices.is_empty() {
        v.add("prices", "at least one price is required");
    } else if req.prices.len() > NewPlan::MAX_PRICES {
        v.add(
            "prices",
            format!("must have at most {} prices", NewPlan::MAX_PRICES),
        );
    } else {
        for (i, price) in req.prices.iter().enumerate() {
            if let Some(price) = parse_price(&mut v, &format!("prices[{i}]"), price, limits) {
                prices.push(price);
            }
        }
    }
    v.finish()?;
    Ok(NewPlan {
        key: key.expect("checked"),
        name: name.expect("checked"),
        description: description.expect("checked"),
        features,
        prices,
    })
}

/// One price of a CreatePlan request; its violations are recorded under `at` (`prices[2]`).
fn parse_price(
    v: &mut Violations,
    at: &str,
    p: &pb::Price,
    limits: &CurrencyLimits,
) -> Option<NewPrice> {
    let money = v
        .check(&format!("{at}.currency"), Currency::parse(&p.currency))
        .and_then(|currency| {
            v.check(
                &format!("{at}.amount"),
                Money::new(p.amount, currency, limits),
            )
        });
    let billing = match interval_from_proto(p.interval) {
        None => {
            v.add(
                &format!("{at}.interval"),
                "must be one of MONTH, YEAR, ONE_TIME",
            );
            None
        }
        Some(None) => {
            let mut ok = true;
            if p.interval_count != 0 {
                v.add(&format!("{at}.interval_count"), "must be 0 for ONE_TIME");
                ok = false;
            }
            if p.trial_days != 0 {
                v.add(
                    &format!("{at}.trial_days"),
                    "must be 0 for ONE_TIME: only recurring prices have trials",
                );
                ok = false;
            }
            ok.then_some(Billing::OneTime)
        }
        Some(Some(interval)) => {
            // Unset means one interval per period.
            let count = if p.interval_count == 0 {
                1
            } else {
                p.interval_count
            };
            match Billing::recurring(interval, count.into(), p.trial_days.into()) {
                Ok(billing) => Some(billing),
                Err((field, e)) => {
                    let name = match field {
                        BillingField::IntervalCount => "interval_count",
                        BillingField::TrialDays => "trial_days",
                    };
                    v.add(&format!("{at}.{name}"), e.0);
                    None
                }
            }
        }
    };
    let meter = if p.meter_key.is_empty() {
        Some(None)
    } else if matches!(billing, Some(Billing::OneTime)) {
        v.add(
            &format!("{at}.meter_key"),
            "must be empty for ONE_TIME: only recurring prices are metered",
        );
        None
    } else {
        v.check(&format!("{at}.meter_key"), MeterKey::parse(&p.meter_key))
            .map(Some)
    };
    Some(NewPrice {
        money: money?,
        billing: billing?,
        meter: meter?,
    })
}

fn price_to_proto(p: &Price) -> pb::Price {
    let interval = match p.billing {
        Billing::OneTime => pb::Interval::OneTime,
        Billing::Recurring {
            interval: Interval::Month,
            ..
        } => pb::Interval::Month,
        Billing::Recurring {
            interval: Interval::Year,
            ..
        } => pb::Interval::Year,
    };
    pb::Price {
        id: p.id.to_string(),
        amount: p.money.amount(),
        currency: p.money.currency().code().to_owned(),
        interval: interval as i32,
        interval_count: p.billing.interval_count().into(),
        trial_days: p.billing.trial_days().into(),
        create_time: Some(timestamp(p.created_at)),
        meter_key: p
            .meter
            .as_ref()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default(),
    }
}

pub fn to_proto(p: &Plan) -> pb::Plan {
    pb::Plan {
        id: p.id.to_string(),
        key: p.key.as_str().to_owned(),
        name: p.name.as_str().to_owned(),
        description: p
            .description
            .as_ref()
            .map(|d| d.as_str().to_owned())
            .unwrap_or_default(),
        features: p
            .features
            .iter()
            .map(|f| pb::Feature {
                key: f.key.as_str().to_owned(),
                meter_key: f
                    .metered
                    .as_ref()
                    .map(|m| m.meter.as_str().to_owned())
                    .unwrap_or_default(),
                limit_per_period: f.metered.as_ref().map_or(0, |m| m.limit as i64),
            })
            .collect(),
        prices: p.prices.iter().map(price_to_proto).collect(),
        create_time: Some(timestamp(p.created_at)),
        archive_time: p.archived_at.map(timestamp),
    }
}

fn price_from_proto(p: &pb::Price) -> Option<Price> {
    let billing = match interval_from_proto(p.interval)? {
        None => Billing::OneTime,
        Some(interval) => {
            Billing::recurring(interval, p.interval_count.into(), p.trial_days.into()).ok()?
        }
    };
    Some(Price {
        id: PriceId::parse(&p.id).ok()?,
        money: Money::stored(p.amount, Currency::parse(&p.currency).ok()?).ok()?,
        billing,
        meter: if p.meter_key.is_empty() {
            None
        } else {
            Some(MeterKey::parse(&p.meter_key).ok()?)
        },
        created_at: from_timestamp(p.create_time.as_ref()?)?,
    })
}

fn from_proto(p: &pb::Plan) -> Option<Plan> {
    Some(Plan {
        id: PlanId::parse(&p.id).ok()?,
        key: PlanKey::parse(&p.key).ok()?,
        name: DisplayName::parse(&p.name).ok()?,
        description: Some(p.description.as_str())
            .filter(|s| !s.is_empty())
            .map(Description::parse)
            .transpose()
            .ok()?,
        features: p
            .features
            .iter()
            .map(|f| Feature::parse(&f.key, &f.meter_key, f.limit_per_period).ok())
            .collect::<Option<_>>()?,
        prices: p
            .prices
            .iter()
            .map(price_from_proto)
            .collect::<Option<_>>()?,
        created_at: from_timestamp(p.create_time.as_ref()?)?,
        archived_at: match &p.archive_time {
            Some(t) => Some(from_timestamp(t)?),
            None => None,
        },
    })
}

/// A replay hands back exactly the plan the first call returned, via its wire form.
impl Replayable for Plan {
    fn encode_replay(&self) -> Vec<u8> {
        to_proto(self).encode_to_vec()
    }

    fn decode_replay(bytes: &[u8]) -> Option<Self> {
        from_proto(&pb::Plan::decode(bytes).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(amount: i64, currency: &str, interval: pb::Interval) -> pb::Price {
        pb::Price {
            amount,
            currency: currency.into(),
            interval: interval as i32,
            ..Default::default()
        }
    }

    fn fields(req: &pb::CreatePlanRequest) -> Vec<String> {
        match parse_new(req, &CurrencyLimits::default()) {
            Ok(_) => Vec::new(),
            Err(v) => v.list().iter().map(|f| f.field.clone()).collect(),
        }
    }

    #[test]
    fn every_violation_names_its_field() {
        let good = pb::CreatePlanRequest {
            key: "pro".into(),
            name: "Pro".into(),
            features: vec![pb::Feature {
                key: "sso".into(),
                ..Default::default()
            }],
            prices: vec![price(1_000, "USD", pb::Interval::Month)],
            ..Default::default()
        };
        assert!(fields(&good).is_empty());
        let with_price = |p: pb::Price| pb::CreatePlanRequest {
            prices: vec![price(1_000, "USD", pb::Interval::Month), p],
            ..good.clone()
        };
        let cases: Vec<(pb::CreatePlanRequest, &str)> = vec![
            (
                pb::CreatePlanRequest {
                    key: "Pro".into(),
                    ..good.clone()
                },
                "key",
            ),
            (
                pb::CreatePlanRequest {
                    name: String::new(),
                    ..good.clone()
                },
                "name",
            ),
            (
                pb::CreatePlanRequest {
                    description: "a\u{0}".into(),
                    ..good.clone()
                },
                "description",
            ),
            (
                pb::CreatePlanRequest {
                    prices: vec![],
                    ..good.clone()
                },
                "prices",
            ),
            (
                pb::CreatePlanRequest {
                    prices: vec![price(1_000, "USD", pb::Interval::Month); 21],
                    ..good.clone()
                },
                "prices",
            ),
            (
                pb::CreatePlanRequest {
                    features: (0..51)
                        .map(|i| pb::Feature {
                            key: format!("f{i}"),
                            ..Default::default()
                        })
                        .collect(),
                    ..good.clone()
                },
                "features",
            ),
            (
                pb::CreatePlanRequest {
                    features: vec![
                        pb::Feature {
                            key: "sso".into(),
                            ..Default::default()
                        },
                        pb::Feature {
                            key: "sso".into(),
                            ..Default::default()
                        },
                    ],
                    ..good.clone()
                },
                "features[1].key",
            ),
            (
                with_price(price(49, "USD", pb::Interval::Month)),
                "prices[1].amount",
            ),
            (
                with_price(price(1_000, "usd", pb::Interval::Month)),
                "prices[1].currency",
            ),
            (
                with_price(price(1_000, "XYZ", pb::Interval::Month)),
                "prices[1].currency",
            ),
            (
                with_price(price(1_000, "USD", pb::Interval::Unspecified)),
                "prices[1].interval",
            ),
            (
                with_price(pb::Price {
                    interval: 9,
                    ..price(1_000, "USD", pb::Interval::Month)
                }),
                "prices[1].interval",
            ),
            (
                with_price(pb::Price {
                    interval_count: 13,
                    ..price(1_000, "USD", pb::Interval::Month)
                }),
                "prices[1].interval_count",
            ),
            (
                with_price(pb::Price {
                    interval_count: 4,
                    ..price(1_000, "USD", pb::Interval::Year)
                }),
                "prices[1].interval_count",
            ),
            (
                with_price(pb::Price {
                    interval_count: 1,
                    ..price(1_000, "USD", pb::Interval::OneTime)
                }),
                "prices[1].interval_count",
            ),
            (
                with_price(pb::Price {
                    trial_days: 7,
                    ..price(1_000, "USD", pb::Interval::OneTime)
                }),
                "prices[1].trial_days",
            ),
            (
                with_price(pb::Price {
                    trial_days: 731,
                    ..price(1_000, "USD", pb::Interval::Month)
                }),
                "prices[1].trial_days",
            ),
        ];
        for (req, field) in cases {
            assert_eq!(fields(&req), vec![field.to_owned()], "{req:?}");
        }
    }

    /// `grpcurl describe` shows proto comments: every RPC, field and enum value of the service
    /// has one.
    #[test]
    fn every_rpc_field_and_value_is_documented() {
        let missing = crate::grpc::undocumented("coffer/v1/subscriptions.proto");
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }

    #[test]
    fn an_unset_interval_count_is_one() {
        let req = pb::CreatePlanRequest {
            key: "pro".into(),
            name: "Pro".into(),
            prices: vec![price(100, "JPY", pb::Interval::Year)],
            ..Default::default()
        };
        let plan = parse_new(&req, &CurrencyLimits::default()).unwrap();
        assert_eq!(plan.prices[0].billing.interval_count(), 1);
    }
}
