//! The gRPC face of the service: handlers of a few lines (parse, call the import layer,
//! convert), one error mapping, and page tokens.

pub mod convert;
pub mod error;
pub mod page_token;
pub mod service;

pub use service::ImportServiceImpl;
