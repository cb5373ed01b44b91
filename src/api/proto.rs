//! Code generated from `proto/tally/v1/*.proto` at build time, and the encoded descriptors
//! the reflection service serves.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("tally.v1");

/// The encoded `FileDescriptorSet` of Tally's protos.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tally_descriptor.bin"));
