//! The gRPC face of the service: handlers of a few lines (parse, call the import layer,
//! convert), one error mapping, and page tokens.

pub mod auth;
pub mod convert;
pub mod error;
pub mod page_token;
pub mod service;

pub use service::ImportServiceImpl;

/// Largest request message the server decodes: chunks of up to 4 MiB plus framing. Clients
/// cut files into chunks (256 KiB is typical); a larger message is refused.
pub const MAX_MESSAGE_BYTES: usize = 5 * 1024 * 1024;
