//! The ProviderEvents service: protobuf ⇄ domain, nothing else.

use std::net::IpAddr;

use prost::Message;
use tonic::{Request, Response, Status};

use super::customers::{from_timestamp, timestamp};
use super::pb::provider_events_server::ProviderEvents;
use super::pb::{self};
use super::{Fingerprinted, idempotent_call, respond, status, tenant_ctx};
use crate::app::App;
use crate::app::idempotency::Replayable;
use crate::domain::Violations;
use crate::domain::account::{AccountName, ProviderKind};
use crate::domain::auth::{Caller, KeyOwner};
use crate::domain::event::{EventStatus, WebhookEvent};
use crate::domain::ids::EventId;
use crate::domain::page::PageSize;
use crate::providers::signature::Header;

// Full method names: idempotency keys are scoped per method.
const REPLAY_EVENT: &str = "/coffer.v1.ProviderEvents/ReplayEvent";

/// Largest IngestEvent message: a body of up to 1 MiB (the sidecar's limit) and its headers.
pub const MAX_INGEST_BYTES: usize = (1 << 20) + (128 << 10);

pub struct ProviderEventsService {
    app: App,
}

impl ProviderEventsService {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl ProviderEvents for ProviderEventsService {
    #[tracing::instrument(skip_all)]
    async fn ingest_event(
        &self,
        request: Request<pb::IngestEventRequest>,
    ) -> Result<Response<pb::IngestEventResponse>, Status> {
        // The policy gives this method to `events:ingest`, which only system keys hold; the
        // check here keeps it so should a tenant key ever get the scope.
        match request.extensions().get::<Caller>() {
            Some(Caller {
                owner: KeyOwner::System,
                ..
            }) => {}
            _ => {
                return Err(status::permission_denied(
                    "only system keys ingest events".to_owned(),
                ));
            }
        }
        let req = request.into_inner();
        // The sidecar sends an IP literal or nothing; anything else is a broken caller, not a
        // delivery to judge.
        let source = if req.source_address.is_empty() {
            None
        } else {
            Some(req.source_address.parse::<IpAddr>().map_err(|_| {
                status::invalid(&Violations::single(
                    "source_address",
                    "is not an IP address",
                ))
            })?)
        };
        let headers: Vec<Header> = req
            .headers
            .into_iter()
            .map(|h| Header {
                name: h.name,
                value: h.value,
            })
            .collect();
        let ingested = self
            .app
            .events
            .ingest(&req.account, source, &headers, req.body)
            .await?;
        Ok(Response::new(pb::IngestEventResponse {
            event_id: ingested.event_id.to_string(),
            duplicate: ingested.duplicate,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let ctx = tenant_ctx(&request)?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let size = v.check("page_size", PageSize::parse(req.page_size));
        let status_filter = match pb::EventStatus::try_from(req.status) {
            Ok(s) => status_from_proto(s),
            Err(_) => {
                v.add("status", "is not an EventStatus");
                None
            }
        };
        let account = if req.account.is_empty() {
            None
        } else {
            v.check("account", AccountName::parse(&req.account))
        };
        v.finish().map_err(|v| status::invalid(&v))?;
        let page = self
            .app
            .events
            .list_events(
                &ctx,
                status_filter,
                account.as_ref(),
                size.expect("checked"),
                Some(req.page_token.as_str()),
            )
            .await?;
        Ok(Response::new(pb::ListEventsResponse {
            events: page.items.iter().map(to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn replay_event(
        &self,
        request: Request<pb::ReplayEventRequest>,
    ) -> Result<Response<pb::WebhookEvent>, Status> {
        let ctx = tenant_ctx(&request)?;
        let call = idempotent_call(request.metadata(), REPLAY_EVENT, request.get_ref())?;
        let id = EventId::parse(&request.get_ref().id)
            .map_err(|e| status::invalid(&Violations::single("id", e.0)))?;
        let done = self.app.events.replay_event(&ctx, call, id).await?;
        Ok(respond(done, |e| to_proto(&e)))
    }
}

impl Fingerprinted for pb::ReplayEventRequest {}

fn status_from_proto(s: pb::EventStatus) -> Option<EventStatus> {
    Some(match s {
        pb::EventStatus::Unspecified => return None,
        pb::EventStatus::Pending => EventStatus::Pending,
        pb::EventStatus::Processing => EventStatus::Processing,
        pb::EventStatus::Processed => EventStatus::Processed,
        pb::EventStatus::Failed => EventStatus::Failed,
        pb::EventStatus::Dead => EventStatus::Dead,
        pb::EventStatus::Ignored => EventStatus::Ignored,
    })
}

fn status_to_proto(s: EventStatus) -> pb::EventStatus {
    match s {
        EventStatus::Pending => pb::EventStatus::Pending,
        EventStatus::Processing => pb::EventStatus::Processing,
        EventStatus::Processed => pb::EventStatus::Processed,
        EventStatus::Failed => pb::EventStatus::Failed,
        EventStatus::Dead => pb::EventStatus::Dead,
        EventStatus::Ignored => pb::EventStatus::Ignored,
    }
}

pub fn to_proto(e: &WebhookEvent) -> pb::WebhookEvent {
    pb::WebhookEvent {
        id: e.id.to_string(),
        account: e.account.as_str().to_owned(),
        provider: e.provider.as_str().to_owned(),
        provider_event_id: e.provider_event_id.clone(),
        r#type: e.event_type.clone(),
        status: status_to_proto(e.status) as i32,
        attempts: e.attempts,
        next_attempt_time: Some(timestamp(e.next_attempt_at)),
        last_error: e.last_error.clone().unwrap_or_default(),
        receive_time: Some(timestamp(e.received_at)),
        process_time: e.processed_at.map(timestamp),
        purge_time: e.payload_purged_at.map(timestamp),
    }
}

fn from_proto(p: &pb::WebhookEvent) -> Option<WebhookEvent> {
    Some(WebhookEvent {
        id: EventId::parse(&p.id).ok()?,
        account: AccountName::parse(&p.account).ok()?,
        provider: ProviderKind::parse(&p.provider).ok()?,
        provider_event_id: p.provider_event_id.clone(),
        event_type: p.r#type.clone(),
        status: status_from_proto(pb::EventStatus::try_from(p.status).ok()?)?,
        attempts: p.attempts,
        next_attempt_at: from_timestamp(p.next_attempt_time.as_ref()?)?,
        last_error: Some(p.last_error.clone()).filter(|s| !s.is_empty()),
        received_at: from_timestamp(p.receive_time.as_ref()?)?,
        processed_at: match &p.process_time {
            None => None,
            Some(t) => Some(from_timestamp(t)?),
        },
        payload_purged_at: match &p.purge_time {
            None => None,
            Some(t) => Some(from_timestamp(t)?),
        },
    })
}

/// A replay hands back exactly the event the first call returned, via its wire form.
impl Replayable for WebhookEvent {
    fn encode_replay(&self) -> Vec<u8> {
        to_proto(self).encode_to_vec()
    }

    fn decode_replay(bytes: &[u8]) -> Option<Self> {
        from_proto(&pb::WebhookEvent::decode(bytes).ok()?)
    }
}
