//! The gRPC face of the service: handlers of a few lines (parse, call the import layer,
//! convert), one error mapping, and page tokens.
//!
//! Everything that knows about prost's generated types or tonic's `Status` lives here; the
//! import layer below takes domain types and returns `ImportError`. A request goes:
//!
//! ```text
//!  tonic ─► auth::CheckToken ─► service (a handler) ─► auth::scoped ─► convert ─► Importer
//!           (token → Caller)                           (Caller + account → Scope)
//!  client ◄─ error (ImportError → Status, AIP-193) ◄────────── convert (domain → proto) ◄─┘
//! ```
//!
//! - [`auth`]: the token interceptor, and the account check every handler starts with;
//! - [`convert`]: arguments parsed into domain types, answers built from them;
//! - [`error`]: the one `ImportError` → `Status` mapping, with `ErrorInfo` reasons;
//! - [`page_token`]: AIP-158 page sizes and opaque tokens bound to their list; [`pages`]: one
//!   page of each list, for the handlers and the web console alike;
//! - [`service`]: the `ImportService` handlers;
//! - [`streams`] and [`pending`]: tower layers in front of every service that bound what a
//!   client holds before its token is checked (streams that need no token; requests whose
//!   message has not arrived).

pub mod auth;
pub mod convert;
pub mod error;
pub mod page_token;
pub mod pages;
pub mod pending;
pub mod service;
pub mod streams;

pub use service::ImportServiceImpl;

/// Largest request message the server decodes: chunks of up to 4 MiB plus framing. Clients
/// cut files into chunks (256 KiB is typical); a larger message is refused.
///
/// The limit bounds what one message costs the server before a byte of it is parsed: tonic
/// buffers a whole message before decoding it, so without a limit a client could make the
/// server hold a whole file at once, outside the pipeline's batch memory. tonic answers an
/// oversized message with OUT_OF_RANGE inside the stream; `convert::upload_event` turns that
/// into INVALID_ARGUMENT on the `chunk` field, with a message that names this limit. `app`
/// sets it on the `ImportService` only.
pub const MAX_MESSAGE_BYTES: usize = 5 * 1024 * 1024;
