//! Generates the gRPC code from `proto/` with protox (pure Rust, so no system `protoc` is
//! needed) and writes the file descriptor set that server reflection serves.

use std::path::PathBuf;

use prost::Message as _;

const PROTOS: &[&str] = &[
    "proto/coffer/v1/common.proto",
    "proto/coffer/v1/customers.proto",
    "proto/coffer/v1/usage.proto",
    "proto/coffer/v1/subscriptions.proto",
    "proto/coffer/v1/provider_events.proto",
    "proto/coffer/v1/checkout.proto",
    "proto/coffer/v1/sandbox.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // sqlx::migrate!() embeds migrations/ but cannot tell cargo to watch it on stable Rust.
    println!("cargo:rerun-if-changed=migrations");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    // Source info keeps the proto comments, so `grpcurl describe` shows the documentation.
    let fds = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(out_dir.join("coffer_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // Maps as BTreeMap: encodings are deterministic, which idempotency fingerprints rely on.
        .btree_map(".")
        // A request that does not decode is the caller's mistake, not INTERNAL.
        .codec_path("crate::grpc::codec::CofferCodec")
        .compile_fds(fds)?;
    Ok(())
}
