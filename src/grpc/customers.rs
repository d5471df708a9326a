//! The Customers service: protobuf ⇄ domain, nothing else.

use prost::Message;
use prost_types::Timestamp;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use super::pb::customers_server::Customers;
use super::pb::{
    self, create_portal_session_request::Customer as Who, get_customer_request::Lookup,
};
use super::{Fingerprinted, idempotent_call, respond, status, tenant_ctx};
use crate::app::App;
use crate::app::customers::CustomerQuery;
use crate::app::idempotency::Replayable;
use crate::app::portal::{NewPortalSession, PortalLink};
use crate::domain::Violations;
use crate::domain::customer::{
    Customer, CustomerPatch, CustomerRef, DisplayName, Email, ExternalId, Metadata, NewCustomer,
};
use crate::domain::ids::CustomerId;
use crate::domain::page::PageSize;

// Full method names: idempotency keys are scoped per method.
const CREATE: &str = "/coffer.v1.Customers/CreateCustomer";
const UPDATE: &str = "/coffer.v1.Customers/UpdateCustomer";
const DELETE: &str = "/coffer.v1.Customers/DeleteCustomer";
const PORTAL: &str = "/coffer.v1.Customers/CreatePortalSession";

pub struct CustomersService {
    app: App,
}

impl CustomersService {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl Customers for CustomersService {
    #[tracing::instrument(skip_all)]
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let ctx = tenant_ctx(&request)?;
        let call = idempotent_call(request.metadata(), CREATE, request.get_ref())?;
        let new = parse_new(request.get_ref()).map_err(|v| status::invalid(&v))?;
        let done = self.app.customers.create(&ctx, call, new).await?;
        Ok(respond(done, |c| to_proto(&c)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let ctx = tenant_ctx(&request)?;
        let mut v = Violations::new();
        let by = match &request.get_ref().lookup {
            Some(Lookup::Id(id)) => v.check("id", CustomerId::parse(id)).map(CustomerRef::Id),
            Some(Lookup::ExternalId(e)) => v
                .check("external_id", ExternalId::parse(e))
                .map(CustomerRef::External),
            None => {
                v.add("id", "set id or external_id");
                None
            }
        };
        v.finish().map_err(|v| status::invalid(&v))?;
        let by = by.expect("checked above");
        let customer = self.app.customers.get(&ctx, &by).await?;
        Ok(Response::new(to_proto(&customer)))
    }

    #[tracing::instrument(skip_all)]
    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let ctx = tenant_ctx(&request)?;
        let call = idempotent_call(request.metadata(), UPDATE, request.get_ref())?;
        let (id, patch) = parse_update(request.get_ref()).map_err(|v| status::invalid(&v))?;
        let done = self.app.customers.update(&ctx, call, id, patch).await?;
        Ok(respond(done, |c| to_proto(&c)))
    }

    #[tracing::instrument(skip_all)]
    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let ctx = tenant_ctx(&request)?;
        let call = idempotent_call(request.metadata(), DELETE, request.get_ref())?;
        let id = CustomerId::parse(&request.get_ref().id)
            .map_err(|e| status::invalid(&Violations::single("id", e.0)))?;
        let done = self.app.customers.delete(&ctx, call, id).await?;
        Ok(respond(done, |c| to_proto(&c)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let ctx = tenant_ctx(&request)?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let email = if req.email.is_empty() {
            Some(None)
        } else {
            v.check("email", Email::parse(&req.email)).map(Some)
        };
        v.finish().map_err(|v| status::invalid(&v))?;
        let query = CustomerQuery {
            email: email.expect("checked above"),
            page_size: page_size.expect("checked above"),
            page_token: Some(req.page_token.clone()).filter(|t| !t.is_empty()),
        };
        let page = self.app.customers.list(&ctx, &query).await?;
        Ok(Response::new(pb::ListCustomersResponse {
            customers: page.items.iter().map(to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn create_portal_session(
        &self,
        request: Request<pb::CreatePortalSessionRequest>,
    ) -> Result<Response<pb::PortalSession>, Status> {
        let ctx = tenant_ctx(&request)?;
        let call = idempotent_call(request.metadata(), PORTAL, request.get_ref())?;
        let settings = self.app.settings.tenant(ctx.tenant);
        let new = parse_portal(request.get_ref(), settings).map_err(|v| status::invalid(&v))?;
        let done = self.app.portal.create(&ctx, call, new).await?;
        Ok(respond(done, |p| portal_to_proto(&p)))
    }
}

fn parse_portal(
    req: &pb::CreatePortalSessionRequest,
    settings: &crate::settings::TenantSettings,
) -> Result<NewPortalSession, Violations> {
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
    let return_url =
        super::checkout::redirect(&mut v, "return_url", &req.return_url, settings, false);
    v.finish()?;
    Ok(NewPortalSession {
        customer: customer.expect("checked"),
        return_url: return_url.expect("checked"),
    })
}

fn portal_to_proto(p: &PortalLink) -> pb::PortalSession {
    pb::PortalSession {
        url: p.url.clone(),
        expire_time: Some(timestamp(p.expires_at)),
    }
}

impl Fingerprinted for pb::CreatePortalSessionRequest {}

impl Replayable for PortalLink {
    fn encode_replay(&self) -> Vec<u8> {
        portal_to_proto(self).encode_to_vec()
    }

    fn decode_replay(bytes: &[u8]) -> Option<Self> {
        let p = pb::PortalSession::decode(bytes).ok()?;
        Some(PortalLink {
            url: p.url,
            expires_at: from_timestamp(p.expire_time.as_ref()?)?,
            works_for: None,
        })
    }

    fn lapse(&self) -> Option<crate::app::idempotency::Lapse> {
        PortalLink::lapse(self)
    }
}

impl Fingerprinted for pb::CreateCustomerRequest {}

impl Fingerprinted for pb::DeleteCustomerRequest {}

impl Fingerprinted for pb::UpdateCustomerRequest {
    fn clear_output_only(&mut self) {
        if let Some(c) = &mut self.customer {
            c.create_time = None;
            c.update_time = None;
            c.delete_time = None;
        }
    }
}

/// Reads an optional string field: empty means absent.
fn optional<T>(
    v: &mut Violations,
    field: &str,
    value: &str,
    parse: fn(&str) -> Result<T, crate::domain::Invalid>,
) -> Option<Option<T>> {
    if value.is_empty() {
        Some(None)
    } else {
        v.check(field, parse(value)).map(Some)
    }
}

fn parse_new(req: &pb::CreateCustomerRequest) -> Result<NewCustomer, Violations> {
    let mut v = Violations::new();
    let external_id = optional(&mut v, "external_id", &req.external_id, ExternalId::parse);
    let email = optional(&mut v, "email", &req.email, Email::parse);
    let name = optional(&mut v, "name", &req.name, DisplayName::parse);
    let metadata = v.check("metadata", Metadata::parse(&req.metadata));
    v.finish()?;
    Ok(NewCustomer {
        external_id: external_id.expect("checked"),
        email: email.expect("checked"),
        name: name.expect("checked"),
        metadata: metadata.expect("checked"),
    })
}

/// The mask paths UpdateCustomer accepts.
const UPDATABLE: [&str; 4] = ["external_id", "email", "name", "metadata"];

/// AIP-134: with a mask, exactly its paths (empty values clear); without one, every populated
/// field. An unknown path is INVALID_ARGUMENT.
fn parse_update(
    req: &pb::UpdateCustomerRequest,
) -> Result<(CustomerId, CustomerPatch), Violations> {
    let mut v = Violations::new();
    let Some(c) = &req.customer else {
        return Err(Violations::single("customer", "is required"));
    };
    let id = v.check("customer.id", CustomerId::parse(&c.id));
    let paths: Vec<&str> = match &req.update_mask {
        Some(mask) if !mask.paths.is_empty() => {
            for p in &mask.paths {
                if !UPDATABLE.contains(&p.as_str()) {
                    v.add(
                        "update_mask",
                        format!(
                            "unknown or read-only path {p:?} (external_id, email, name, metadata)"
                        ),
                    );
                }
            }
            mask.paths.iter().map(String::as_str).collect()
        }
        _ => UPDATABLE
            .into_iter()
            .filter(|p| match *p {
                "external_id" => !c.external_id.is_empty(),
                "email" => !c.email.is_empty(),
                "name" => !c.name.is_empty(),
                _ => !c.metadata.is_empty(),
            })
            .collect(),
    };
    let mut patch = CustomerPatch::default();
    for path in paths {
        match path {
            "external_id" => {
                patch.external_id = optional(
                    &mut v,
                    "customer.external_id",
                    &c.external_id,
                    ExternalId::parse,
                )
            }
            "email" => patch.email = optional(&mut v, "customer.email", &c.email, Email::parse),
            "name" => patch.name = optional(&mut v, "customer.name", &c.name, DisplayName::parse),
            "metadata" => {
                patch.metadata = v.check("customer.metadata", Metadata::parse(&c.metadata))
            }
            _ => {}
        }
    }
    v.finish()?;
    Ok((id.expect("checked"), patch))
}

pub(super) fn timestamp(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    }
}

pub(super) fn from_timestamp(t: &Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

pub fn to_proto(c: &Customer) -> pb::Customer {
    pb::Customer {
        id: c.id.to_string(),
        external_id: c
            .external_id
            .as_ref()
            .map(|e| e.as_str().to_owned())
            .unwrap_or_default(),
        email: c
            .email
            .as_ref()
            .map(|e| e.as_str().to_owned())
            .unwrap_or_default(),
        name: c
            .name
            .as_ref()
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
        metadata: c.metadata.as_map().clone(),
        create_time: Some(timestamp(c.created_at)),
        update_time: Some(timestamp(c.updated_at)),
        delete_time: c.deleted_at.map(timestamp),
    }
}

fn from_proto(p: &pb::Customer) -> Option<Customer> {
    fn opt(s: &str) -> Option<&str> {
        Some(s).filter(|s| !s.is_empty())
    }
    Some(Customer {
        id: CustomerId::parse(&p.id).ok()?,
        external_id: opt(&p.external_id)
            .map(ExternalId::parse)
            .transpose()
            .ok()?,
        email: opt(&p.email).map(Email::parse).transpose().ok()?,
        name: opt(&p.name).map(DisplayName::parse).transpose().ok()?,
        metadata: Metadata::parse(&p.metadata).ok()?,
        created_at: from_timestamp(p.create_time.as_ref()?)?,
        updated_at: from_timestamp(p.update_time.as_ref()?)?,
        deleted_at: match &p.delete_time {
            Some(t) => Some(from_timestamp(t)?),
            None => None,
        },
    })
}

/// A replay hands back exactly the customer the first call returned, via its wire form.
impl Replayable for Customer {
    fn encode_replay(&self) -> Vec<u8> {
        to_proto(self).encode_to_vec()
    }

    fn decode_replay(bytes: &[u8]) -> Option<Self> {
        from_proto(&pb::Customer::decode(bytes).ok()?)
    }
}
