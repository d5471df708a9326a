//! The Usage service: protobuf ⇄ domain, nothing else. This version: meters.

use prost::Message;
use tonic::{Request, Response, Status};

use super::customers::{from_timestamp, timestamp};
use super::pb::usage_server::Usage;
use super::pb::{self, get_meter_request::Lookup};
use super::{Fingerprinted, idempotent_call, respond, status, tenant_ctx};
use crate::app::App;
use crate::app::idempotency::Replayable;
use crate::domain::Violations;
use crate::domain::customer::DisplayName;
use crate::domain::ids::MeterId;
use crate::domain::meter::{Aggregation, Meter, MeterKey, MeterRef, NewMeter, Reading};
use crate::domain::page::PageSize;

// Full method names: idempotency keys are scoped per method.
const CREATE_METER: &str = "/coffer.v1.Usage/CreateMeter";

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
}

impl Fingerprinted for pb::CreateMeterRequest {}

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
