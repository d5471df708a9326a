//! The Sandbox service (only with `serve --dev` / `--sandbox`): protobuf ⇄ domain, nothing
//! else.

use tonic::{Request, Response, Status};

use super::customers::{from_timestamp, timestamp};
use super::pb::sandbox_server::Sandbox;
use super::pb::{self};
use super::{Fingerprinted, idempotent_call, respond, status, tenant_ctx};
use crate::app::App;
use crate::domain::Violations;
use crate::domain::account::AccountName;

// Full method names: idempotency keys are scoped per method.
const ADVANCE_CLOCK: &str = "/coffer.v1.Sandbox/AdvanceClock";

pub struct SandboxService {
    app: App,
}

impl SandboxService {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl Sandbox for SandboxService {
    #[tracing::instrument(skip_all)]
    async fn advance_clock(
        &self,
        request: Request<pb::AdvanceClockRequest>,
    ) -> Result<Response<pb::AdvanceClockResponse>, Status> {
        let ctx = tenant_ctx(&request)?;
        let call = idempotent_call(request.metadata(), ADVANCE_CLOCK, request.get_ref())?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let account = if req.account.is_empty() {
            None
        } else {
            v.check("account", AccountName::parse(&req.account))
        };
        let to = match req.to.as_ref() {
            None => {
                v.add("to", "is required");
                None
            }
            Some(t) => {
                let to = from_timestamp(t);
                if to.is_none() {
                    v.add("to", "is not a valid time");
                }
                to
            }
        };
        v.finish().map_err(|v| status::invalid(&v))?;
        let done = crate::app::sandbox::advance_clock(
            &self.app,
            &ctx,
            call,
            account,
            to.expect("checked"),
        )
        .await?;
        Ok(respond(done, |moved| pb::AdvanceClockResponse {
            now: Some(timestamp(moved.now)),
        }))
    }
}

impl Fingerprinted for pb::AdvanceClockRequest {}

#[cfg(test)]
mod tests {
    #[test]
    fn every_rpc_and_field_is_documented() {
        let missing = crate::grpc::undocumented("coffer/v1/sandbox.proto");
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }
}
