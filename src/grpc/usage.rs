//! The Usage service: protobuf ⇄ domain, nothing else.

use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::customers::{from_timestamp, timestamp};
use super::pb::usage_server::Usage;
use super::pb::{self, get_meter_request::Lookup};
use super::{Fingerprinted, ReceiverStream, idempotent_call, respond, status, tenant_ctx};
use crate::app::App;
use crate::app::idempotency::Replayable;
use crate::app::usage::Recorded;
use crate::domain::Violations;
use crate::domain::customer::{CustomerRef, DisplayName, ExternalId};
use crate::domain::ids::{CustomerId, GrantId, MeterId};
use crate::domain::meter::{Aggregation, Meter, MeterKey, MeterRef, NewMeter, Reading};
use crate::domain::page::PageSize;
use crate::domain::usage::{
    Balance, Grant, MAX_EVENTS_PER_BATCH, NewGrant, Properties, Quantity, RejectReason, Rejected,
    UsageEvent, UsageEventId, UsageQuery, UsageReport, UsageWindow,
};

// Full method names: idempotency keys are scoped per method.
const CREATE_METER: &str = "/coffer.v1.Usage/CreateMeter";
const GRANT_CREDITS: &str = "/coffer.v1.Usage/GrantCredits";

/// How many batches of one stream may be in flight (read, not yet answered). More waiting
/// batches are left unread, so HTTP/2 flow control slows the client instead of memory growing.
const STREAM_PIPELINE: usize = 8;

pub struct UsageService {
    app: App,
}

impl UsageService {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl Usage for UsageService {
    #[tracing::instrument(skip_all)]
    async fn create_meter(
        &self,
        request: Request<pb::CreateMeterRequest>,
    ) -> Result<Response<pb::Meter>, Status> {
        let ctx = tenant_ctx(&request)?;
        let call = idempotent_call(request.metadata(), CREATE_METER, request.get_ref())?;
        let new = parse_new(request.get_ref()).map_err(|v| status::invalid(&v))?;
        let done = self.app.usage.create_meter(&ctx, call, new).await?;
        Ok(respond(done, |m| to_proto(&m)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_meter(
        &self,
        request: Request<pb::GetMeterRequest>,
    ) -> Result<Response<pb::Meter>, Status> {
        let ctx = tenant_ctx(&request)?;
        let by = match &request.get_ref().lookup {
            Some(Lookup::Id(id)) => MeterId::parse(id)
                .map(MeterRef::Id)
                .map_err(|e| Violations::single("id", e.0)),
            Some(Lookup::Key(key)) => MeterKey::parse(key)
                .map(MeterRef::Key)
                .map_err(|e| Violations::single("key", e.0)),
            None => Err(Violations::single("id", "set id or key")),
        }
        .map_err(|v| status::invalid(&v))?;
        let meter = self.app.usage.get_meter(&ctx, &by).await?;
        Ok(Response::new(to_proto(&meter)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_meters(
        &self,
        request: Request<pb::ListMetersRequest>,
    ) -> Result<Response<pb::ListMetersResponse>, Status> {
        let ctx = tenant_ctx(&request)?;
        let req = request.get_ref();
        let size = PageSize::parse(req.page_size)
            .map_err(|e| status::invalid(&Violations::single("page_size", e.0)))?;
        let page = self
            .app
            .usage
            .list_meters(&ctx, size, Some(req.page_token.as_str()))
            .await?;
        Ok(Response::new(pb::ListMetersResponse {
            meters: page.items.iter().map(to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all, fields(coffer.events = request.get_ref().events.len()))]
    async fn record_usage(
        &self,
        request: Request<pb::RecordUsageRequest>,
    ) -> Result<Response<pb::RecordUsageResponse>, Status> {
        let ctx = tenant_ctx(&request)?;
        let events = parse_batch(&request.get_ref().events)?;
        let recorded = self.app.usage.record(&ctx, events).await?;
        Ok(Response::new(pb::RecordUsageResponse {
            accepted: recorded.accepted as i32,
            duplicates: recorded.duplicates as i32,
            rejected: rejected_to_proto(recorded.rejected),
        }))
    }

    type StreamUsageStream = Answers<pb::StreamUsageResponse>;

    #[tracing::instrument(skip_all)]
    async fn stream_usage(
        &self,
        request: Request<Streaming<pb::StreamUsageRequest>>,
    ) -> Result<Response<Self::StreamUsageStream>, Status> {
        let ctx = tenant_ctx(&request)?;
        let mut inbound = request.into_inner();
        // Batches in flight, in arrival order; each is recorded on its own task, so several
        // can share a commit, and answered in order.
        let (pending, mut in_flight) =
            mpsc::channel::<tokio::task::JoinHandle<Result<Recorded, Status>>>(STREAM_PIPELINE);
        let (answers, out) = mpsc::channel(STREAM_PIPELINE);
        let app = self.app.clone();
        let tasks = app.tasks.clone();
        let reader_answers = answers.clone();
        tasks.spawn(async move {
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(batch)) => batch,
                    // The client finished, or the stream broke: what was read is still
                    // answered if the client listens.
                    Ok(None) | Err(_) => return,
                };
                let events = match parse_batch(&batch.events) {
                    Ok(events) => events,
                    Err(status) => {
                        drop(pending);
                        // Answered after every batch before it.
                        let _ = reader_answers.send(Err(status)).await;
                        return;
                    }
                };
                let app = app.clone();
                let work = app.tasks.clone().spawn(async move {
                    app.usage.record(&ctx, events).await.map_err(Status::from)
                });
                if pending.send(work).await.is_err() {
                    return;
                }
            }
        });
        tasks.spawn(async move {
            let mut sequence = 0i64;
            while let Some(work) = in_flight.recv().await {
                let answer = match work.await {
                    Ok(Ok(r)) => Ok(pb::StreamUsageResponse {
                        sequence,
                        accepted: r.accepted as i32,
                        duplicates: r.duplicates as i32,
                        rejected: rejected_to_proto(r.rejected),
                    }),
                    Ok(Err(status)) => Err(status),
                    Err(_) => Err(Status::internal("internal error")),
                };
                sequence += 1;
                let failed = answer.is_err();
                if answers.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream(out)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let ctx = tenant_ctx(&request)?;
        let query = parse_query(request.get_ref()).map_err(|v| status::invalid(&v))?;
        let report = self.app.usage.get_usage(&ctx, &query).await?;
        Ok(Response::new(report_to_proto(&report)))
    }

    #[tracing::instrument(skip_all)]
    async fn grant_credits(
        &self,
        request: Request<pb::GrantCreditsRequest>,
    ) -> Result<Response<pb::CreditGrant>, Status> {
        let ctx = tenant_ctx(&request)?;
        let call = idempotent_call(request.metadata(), GRANT_CREDITS, request.get_ref())?;
        let new = parse_grant(request.get_ref()).map_err(|v| status::invalid(&v))?;
        let done = self.app.usage.grant_credits(&ctx, call, new).await?;
        Ok(respond(done, |g| grant_to_proto(&g)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let ctx = tenant_ctx(&request)?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let customer = customer_ref(
            &mut v,
            req.customer.as_ref().map(|c| match c {
                pb::get_balance_request::Customer::CustomerId(id) => (true, id.as_str()),
                pb::get_balance_request::Customer::ExternalId(x) => (false, x.as_str()),
            }),
        );
        let meter = v.check("meter_key", MeterKey::parse(&req.meter_key));
        v.finish().map_err(|v| status::invalid(&v))?;
        let (Some(customer), Some(meter)) = (customer, meter) else {
            unreachable!("checked above");
        };
        let balance: Balance = self.app.usage.balance(&ctx, &customer, &meter).await?;
        Ok(Response::new(pb::Balance {
            granted: balance.granted.to_string(),
            used: balance.used.to_string(),
            remaining: balance.remaining.to_string(),
        }))
    }
}

/// The answers of a StreamUsage call.
pub type Answers<T> = ReceiverStream<Result<T, Status>>;

impl Fingerprinted for pb::CreateMeterRequest {}
impl Fingerprinted for pb::GrantCreditsRequest {}

/// A customer named by Coffer's id (`true`) or the caller's; the violation names the field.
fn customer_ref(v: &mut Violations, given: Option<(bool, &str)>) -> Option<CustomerRef> {
    match given {
        Some((true, id)) => v
            .check("customer_id", CustomerId::parse(id))
            .map(CustomerRef::Id),
        Some((false, x)) => v
            .check("external_id", ExternalId::parse(x))
            .map(CustomerRef::External),
        None => {
            v.add("customer_id", "set customer_id or external_id");
            None
        }
    }
}

/// Parses a batch: the events one by one, each valid or refused with its field. Only the
/// batch as a whole (its size) can fail the call.
fn parse_batch(events: &[pb::UsageEvent]) -> Result<Vec<Result<UsageEvent, Rejected>>, Status> {
    if events.is_empty() || events.len() > MAX_EVENTS_PER_BATCH {
        return Err(status::invalid(&Violations::single(
            "events",
            format!("must hold 1 to {MAX_EVENTS_PER_BATCH} events"),
        )));
    }
    Ok(events
        .iter()
        .enumerate()
        .map(|(i, e)| parse_event(i, e))
        .collect())
}

fn parse_event(index: usize, e: &pb::UsageEvent) -> Result<UsageEvent, Rejected> {
    let invalid = |field: &str, message: String| {
        Rejected::new(index, RejectReason::InvalidField, field, message)
    };
    let id = UsageEventId::parse(&e.event_id).map_err(|x| invalid("event_id", x.0))?;
    let customer = match &e.customer {
        Some(pb::usage_event::Customer::CustomerId(id)) => CustomerId::parse(id)
            .map(CustomerRef::Id)
            .map_err(|x| invalid("customer_id", x.0))?,
        Some(pb::usage_event::Customer::ExternalId(x)) => ExternalId::parse(x)
            .map(CustomerRef::External)
            .map_err(|x| invalid("external_id", x.0))?,
        None => {
            return Err(invalid(
                "customer_id",
                "set customer_id or external_id".into(),
            ));
        }
    };
    let meter = MeterKey::parse(&e.meter_key).map_err(|x| invalid("meter_key", x.0))?;
    let value = if e.value.is_empty() {
        None
    } else {
        Some(
            Quantity::parse(&e.value)
                .map_err(|x| Rejected::new(index, RejectReason::MalformedValue, "value", x.0))?,
        )
    };
    let occurred_at = e
        .occurred_at
        .as_ref()
        .and_then(from_timestamp)
        .ok_or_else(|| invalid("occurred_at", "is required".into()))?;
    let properties = Properties::parse(e.properties.clone()).map_err(|(key, x)| match key {
        Some(k) => invalid(&format!("properties[{k}]"), x.0),
        None => invalid("properties", x.0),
    })?;
    Ok(UsageEvent {
        id,
        customer,
        meter,
        value,
        occurred_at,
        properties,
    })
}

fn rejected_to_proto(rejected: Vec<Rejected>) -> Vec<pb::RejectedEvent> {
    rejected
        .into_iter()
        .map(|r| pb::RejectedEvent {
            index: r.index as i32,
            reason: r.reason.as_str().to_owned(),
            field: r.field,
            description: r.description,
        })
        .collect()
}

fn parse_query(req: &pb::GetUsageRequest) -> Result<UsageQuery, Violations> {
    let mut v = Violations::new();
    let customer = customer_ref(
        &mut v,
        req.customer.as_ref().map(|c| match c {
            pb::get_usage_request::Customer::CustomerId(id) => (true, id.as_str()),
            pb::get_usage_request::Customer::ExternalId(x) => (false, x.as_str()),
        }),
    );
    let meter = v.check("meter_key", MeterKey::parse(&req.meter_key));
    let from = req.from.as_ref().and_then(from_timestamp);
    if from.is_none() {
        v.add("from", "is required");
    }
    let to = req.to.as_ref().and_then(from_timestamp);
    if to.is_none() {
        v.add("to", "is required");
    }
    let window = match pb::UsageWindow::try_from(req.window) {
        Ok(pb::UsageWindow::Unspecified | pb::UsageWindow::None) => Some(UsageWindow::None),
        Ok(pb::UsageWindow::Hour) => Some(UsageWindow::Hour),
        Ok(pb::UsageWindow::Day) => Some(UsageWindow::Day),
        Err(_) => {
            v.add("window", "must be NONE, HOUR or DAY");
            None
        }
    };
    v.finish()?;
    Ok(UsageQuery {
        customer: customer.expect("checked"),
        meter: meter.expect("checked"),
        from: from.expect("checked"),
        to: to.expect("checked"),
        window: window.expect("checked"),
    })
}

fn report_to_proto(r: &UsageReport) -> pb::GetUsageResponse {
    let figure = |f: &crate::domain::usage::Figure| pb::UsageFigure {
        value: f.value.clone(),
        events: f.events,
    };
    pb::GetUsageResponse {
        meter_id: r.meter.to_string(),
        total: Some(figure(&r.total)),
        windows: r
            .windows
            .iter()
            .map(|w| pb::UsageWindowFigure {
                start: Some(timestamp(w.start)),
                end: Some(timestamp(w.end)),
                figure: Some(figure(&w.figure)),
            })
            .collect(),
    }
}

fn parse_grant(req: &pb::GrantCreditsRequest) -> Result<NewGrant, Violations> {
    let mut v = Violations::new();
    let customer = customer_ref(
        &mut v,
        req.customer.as_ref().map(|c| match c {
            pb::grant_credits_request::Customer::CustomerId(id) => (true, id.as_str()),
            pb::grant_credits_request::Customer::ExternalId(x) => (false, x.as_str()),
        }),
    );
    let meter = v.check("meter_key", MeterKey::parse(&req.meter_key));
    let amount = v.check("amount", Quantity::parse(&req.amount));
    if amount.as_ref().is_some_and(Quantity::is_zero) {
        v.add("amount", "must be more than zero");
    }
    let expires_at = match &req.expires_at {
        None => Some(None),
        Some(t) => {
            let t = from_timestamp(t);
            if t.is_none() {
                v.add("expires_at", "is not a valid time");
            }
            t.map(Some)
        }
    };
    let reason = if req.reason.is_empty() {
        Some(None)
    } else if req.reason.chars().count() > 500 {
        v.add("reason", "at most 500 characters");
        None
    } else {
        v.check(
            "reason",
            crate::domain::validation::visible(
                &req.reason,
                crate::domain::validation::TextKind::Prose,
            ),
        )
        .map(|()| Some(req.reason.clone()))
    };
    v.finish()?;
    Ok(NewGrant {
        customer: customer.expect("checked"),
        meter: meter.expect("checked"),
        amount: amount.expect("checked"),
        expires_at: expires_at.expect("checked"),
        reason: reason.expect("checked"),
    })
}

fn grant_to_proto(g: &Grant) -> pb::CreditGrant {
    pb::CreditGrant {
        id: g.id.to_string(),
        customer_id: g.customer.to_string(),
        meter_id: g.meter.to_string(),
        amount: g.amount.as_str().to_owned(),
        grant_time: Some(timestamp(g.granted_at)),
        expires_at: g.expires_at.map(timestamp),
        reason: g.reason.clone().unwrap_or_default(),
    }
}

fn grant_from_proto(p: &pb::CreditGrant) -> Option<Grant> {
    Some(Grant {
        id: GrantId::parse(&p.id).ok()?,
        customer: CustomerId::parse(&p.customer_id).ok()?,
        meter: MeterId::parse(&p.meter_id).ok()?,
        amount: Quantity::parse(&p.amount).ok()?,
        granted_at: from_timestamp(p.grant_time.as_ref()?)?,
        expires_at: match &p.expires_at {
            None => None,
            Some(t) => Some(from_timestamp(t)?),
        },
        reason: Some(p.reason.clone()).filter(|r| !r.is_empty()),
    })
}

impl Replayable for Grant {
    fn encode_replay(&self) -> Vec<u8> {
        grant_to_proto(self).encode_to_vec()
    }

    fn decode_replay(bytes: &[u8]) -> Option<Self> {
        grant_from_proto(&pb::CreditGrant::decode(bytes).ok()?)
    }
}

fn aggregation_from_proto(a: i32) -> Option<Aggregation> {
    match pb::Aggregation::try_from(a).ok()? {
        pb::Aggregation::Unspecified => None,
        pb::Aggregation::Count => Some(Aggregation::Count),
        pb::Aggregation::Sum => Some(Aggregation::Sum),
        pb::Aggregation::Max => Some(Aggregation::Max),
        pb::Aggregation::UniqueCount => Some(Aggregation::UniqueCount),
        pb::Aggregation::Latest => Some(Aggregation::Latest),
    }
}

fn aggregation_to_proto(a: Aggregation) -> pb::Aggregation {
    match a {
        Aggregation::Count => pb::Aggregation::Count,
        Aggregation::Sum => pb::Aggregation::Sum,
        Aggregation::Max => pb::Aggregation::Max,
        Aggregation::UniqueCount => pb::Aggregation::UniqueCount,
        Aggregation::Latest => pb::Aggregation::Latest,
    }
}

fn parse_new(req: &pb::CreateMeterRequest) -> Result<NewMeter, Violations> {
    let mut v = Violations::new();
    let key = v.check("key", MeterKey::parse(&req.key));
    let name = if req.name.is_empty() {
        Some(None)
    } else {
        v.check("name", DisplayName::parse(&req.name)).map(Some)
    };
    let aggregation = aggregation_from_proto(req.aggregation);
    if aggregation.is_none() {
        v.add(
            "aggregation",
            "must be one of COUNT, SUM, MAX, UNIQUE_COUNT, LATEST",
        );
    }
    let value_key = if req.value_key.is_empty() {
        Some(None)
    } else {
        v.check("value_key", MeterKey::parse(&req.value_key))
            .map(Some)
    };
    let reading = match (aggregation, &value_key) {
        (Some(a), Some(value_key)) => v.check("value_key", Reading::new(a, value_key.clone())),
        _ => None,
    };
    v.finish()?;
    Ok(NewMeter {
        key: key.expect("checked"),
        name: name.expect("checked"),
        reading: reading.expect("checked"),
    })
}

pub fn to_proto(m: &Meter) -> pb::Meter {
    pb::Meter {
        id: m.id.to_string(),
        key: m.key.as_str().to_owned(),
        name: m
            .name
            .as_ref()
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
        aggregation: aggregation_to_proto(m.reading.aggregation()) as i32,
        value_key: m
            .reading
            .value_key()
            .map(|k| k.as_str().to_owned())
            .unwrap_or_default(),
        create_time: Some(timestamp(m.created_at)),
    }
}

fn from_proto(p: &pb::Meter) -> Option<Meter> {
    let value_key = Some(p.value_key.as_str())
        .filter(|s| !s.is_empty())
        .map(MeterKey::parse)
        .transpose()
        .ok()?;
    Some(Meter {
        id: MeterId::parse(&p.id).ok()?,
        key: MeterKey::parse(&p.key).ok()?,
        name: Some(p.name.as_str())
            .filter(|s| !s.is_empty())
            .map(DisplayName::parse)
            .transpose()
            .ok()?,
        reading: Reading::new(aggregation_from_proto(p.aggregation)?, value_key).ok()?,
        created_at: from_timestamp(p.create_time.as_ref()?)?,
    })
}

/// A replay hands back exactly the meter the first call returned, via its wire form.
impl Replayable for Meter {
    fn encode_replay(&self) -> Vec<u8> {
        to_proto(self).encode_to_vec()
    }

    fn decode_replay(bytes: &[u8]) -> Option<Self> {
        from_proto(&pb::Meter::decode(bytes).ok()?)
    }
}
