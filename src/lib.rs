//! bulk-import: a gRPC service that imports users into an account from CSV files.
//!
//! # Layout
//!
//! The modules follow the data of an upload:
//!
//! ```text
//!  gRPC stream ─► grpc::convert ─► import::chunk ─► import::parser ─► import::validator
//!                 (messages to      (size limit,     (records and      (header mapping,
//!                  domain events)    sniffing,        spreadsheet       NewUser or row
//!                                    checksum)        row numbers)      errors)
//!                                                                           │
//!            WatchImport ◄─ import::progress ◄─ import::pipeline ◄──────────┘
//!                           (live counters)      (batches to a writer task) ─► store (SQLite)
//! ```
//!
//! - [`domain`]: the vocabulary (imports, users, row errors), parsed once at the edge;
//! - [`import`]: the upload pipeline and the queries, independent of gRPC;
//! - [`store`]: persistence behind one trait, one module per backend;
//! - [`grpc`]: thin handlers, conversions, the one error mapping;
//! - [`app`]: the server, health, start-up and graceful shutdown;
//! - [`config`] and [`cli`]: flags, environment, and the service's own client.

pub mod app;
pub mod cli;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod import;
pub mod proto;
pub mod store;
