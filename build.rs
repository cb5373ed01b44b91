//! Generates the gRPC code for `proto/` without a system `protoc`: protox parses the protos in
//! Rust, tonic-prost-build writes the messages and services, and the encoded descriptor set is
//! kept for the reflection service.

use protox::prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/tally/v1/ledger.proto",
        "proto/tally/v1/audit.proto",
        "proto/tally/v1/ingest.proto",
        "proto/tally/v1/links.proto",
        "proto/tally/v1/identity.proto",
        "proto/tally/v1/deliveries.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("tally_descriptor.bin"), descriptors.encode_to_vec())?;
    // Messages know their full names, so that the codec can check a request against its
    // descriptor and refuse a field it does not know (src/api/strict.rs).
    let mut config = tonic_prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .codec_path("crate::api::strict::StrictCodec")
        // The ingest payload keeps a map's entries in wire order, so that a key sent twice
        // is refused instead of the last one winning (src/api/payload.rs).
        .extern_path(".google.protobuf.Struct", "crate::api::payload::PayloadStruct")
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}
