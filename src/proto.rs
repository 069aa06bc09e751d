//! Code generated from `proto/` by build.rs.

#[allow(clippy::all, clippy::pedantic)]
pub mod bulkimport {
    pub mod v1 {
        tonic::include_proto!("bulkimport.v1");
    }
}

pub use bulkimport::v1::*;

/// The encoded descriptors of the API, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/bulkimport_descriptor.bin"));
