//! Code generated from `proto/` by build.rs.

/// The `bulkimport.v1` package: its messages and services, as prost and tonic generate them
/// (their docs are the proto file's comments).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod bulkimport {
    /// Version 1 of the API.
    pub mod v1 {
        tonic::include_proto!("bulkimport.v1");
    }
}

pub use bulkimport::v1::*;

/// The encoded descriptors of the API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/bulkimport_descriptor.bin"));
