//! The gRPC surface: protobuf ⇄ domain conversion, `AppError` → `tonic::Status`, and the tower
//! layers every call passes through (telemetry, then the call limits, then authentication),
//! which read each method's policy from one table. Nothing else: the use cases live in `app`.

pub mod access;
pub mod auth;
pub mod checkout;
pub mod codec;
pub mod customers;
pub mod limits;
pub mod payments;
pub mod policy;
pub mod provider_events;
pub mod sandbox;
pub mod status;
pub mod subscriptions;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod usage;

use prost::Message;
use tonic::metadata::MetadataMap;

use crate::app::TenantCtx;
use crate::app::idempotency::{Done, Fingerprint, IdempotentCall};
use crate::domain::Violations;
use crate::domain::auth::{Caller, KeyOwner};
use crate::domain::idempotency::IdempotencyKey;

/// The generated protobuf types and service stubs of `coffer.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("coffer.v1");
}

/// The encoded descriptors of every Coffer proto (and the well-known types they import), served
/// by reflection so `grpcurl list` and `describe` work without the .proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("coffer_descriptor");

/// Metadata key of the caller's idempotency key.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response metadata set on a replayed response.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// The tenant a request acts for. The auth layer put the caller in the request's extensions
/// and checked its scope; only tenant keys reach tenant services (system keys hold no scope
/// they need).
pub fn tenant_ctx<T>(request: &tonic::Request<T>) -> Result<TenantCtx, tonic::Status> {
    match request.extensions().get::<Caller>() {
        Some(Caller {
            key_id,
            owner: KeyOwner::Tenant(tenant),
            ..
        }) => Ok(TenantCtx {
            tenant: *tenant,
            key: *key_id,
        }),
        // Unreachable through the auth layer; refuse rather than trust.
        _ => Err(status::unauthenticated("missing api key")),
    }
}

/// A mutating request, as far as its idempotency fingerprint goes: output-only fields (a
/// resource's create_time and update_time, say) are left out, so a caller that re-fetched the
/// resource and retries with it is still making the same request.
pub trait Fingerprinted: Message + Clone {
    /// Clears every output-only field.
    fn clear_output_only(&mut self) {}
}

/// Reads the optional `idempotency-key` of a mutating call and fingerprints the request.
pub fn idempotent_call<M: Fingerprinted>(
    metadata: &MetadataMap,
    method: &'static str,
    request: &M,
) -> Result<Option<IdempotentCall>, tonic::Status> {
    // The policy table says which methods honour idempotency keys; a handler that reads one
    // must be listed so (the descriptor test then keeps the table honest).
    debug_assert!(
        policy::of(method).is_some_and(|p| p.idempotent),
        "{method} reads an idempotency-key but its policy does not say so"
    );
    let Some(value) = metadata.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| crate::domain::Invalid::new("must be printable ASCII"))
        .and_then(IdempotencyKey::parse)
        .map_err(|e| status::invalid(&Violations::single(IDEMPOTENCY_KEY, e.0)))?;
    let mut input = request.clone();
    input.clear_output_only();
    Ok(Some(IdempotentCall {
        key,
        method,
        fingerprint: Fingerprint::of(&input.encode_to_vec()),
        encode_refusal: status::encode_refusal,
    }))
}

/// Wraps a mutation's result, marking replays with `idempotent-replayed: true`.
pub fn respond<T, M>(done: Done<T>, to_proto: impl FnOnce(T) -> M) -> tonic::Response<M> {
    let replayed = done.replayed;
    let mut response = tonic::Response::new(to_proto(done.value));
    if replayed {
        response
            .metadata_mut()
            .insert(IDEMPOTENT_REPLAYED, "true".parse().expect("static value"));
    }
    response
}

/// A stream fed by a bounded channel: the server's answers on a streaming RPC, or a client's
/// requests (the benchmark's).
pub struct ReceiverStream<T>(pub tokio::sync::mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// The RPCs, fields and enum values of `proto_file` without a comment (`grpcurl describe` shows
/// them, so each needs one); the service itself must have one.
#[cfg(test)]
pub(crate) fn undocumented(proto_file: &str) -> Vec<String> {
    use prost_types::FileDescriptorSet;
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    let file = set
        .file
        .iter()
        .find(|f| f.name() == proto_file)
        .expect("the proto is compiled in");
    let documented: std::collections::HashSet<Vec<i32>> = file
        .source_code_info
        .as_ref()
        .expect("source info is kept")
        .location
        .iter()
        .filter(|l| !l.leading_comments().trim().is_empty())
        .map(|l| l.path.clone())
        .collect();
    // Descriptor paths: 4 = message_type, 2 = field; 5 = enum_type, 2 = value;
    // 6 = service, 2 = method.
    let mut missing = Vec::new();
    for (m, message) in file.message_type.iter().enumerate() {
        for (f, field) in message.field.iter().enumerate() {
            if !documented.contains(&vec![4, m as i32, 2, f as i32]) {
                missing.push(format!("{}.{}", message.name(), field.name()));
            }
        }
    }
    for (e, en) in file.enum_type.iter().enumerate() {
        for (v, value) in en.value.iter().enumerate() {
            if !documented.contains(&vec![5, e as i32, 2, v as i32]) {
                missing.push(value.name().to_owned());
            }
        }
    }
    for (s, service) in file.service.iter().enumerate() {
        if !documented.contains(&vec![6, s as i32]) {
            missing.push(service.name().to_owned());
        }
        for (m, method) in service.method.iter().enumerate() {
            if !documented.contains(&vec![6, s as i32, 2, m as i32]) {
                missing.push(method.name().to_owned());
            }
        }
    }
    missing
}
