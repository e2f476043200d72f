//! Generated gRPC code for the `icae.v1` API (see `icae/v1/icae.proto`).

pub mod codec;
pub mod time;

/// The well-known types the messages hold (`Duration`, `Timestamp`).
pub use prost_types;

pub mod v1 {
    tonic::include_proto!("icae.v1");
}

/// The encoded `FileDescriptorSet` of the API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/icae_descriptor.bin"));

/// Full names of the two services (also their grpc.health.v1 names).
pub const ENCODER_SERVICE: &str = "icae.v1.EncoderService";
pub const DECODER_SERVICE: &str = "icae.v1.DecoderService";
