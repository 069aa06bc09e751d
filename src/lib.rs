//! bulk-import: a gRPC service that imports users into an account from CSV files.
//!
//! # Layout
//!
//! The modules follow the data of an upload:
//!
//! ```text
//!  gRPC stream ─► grpc::convert ─► import::reader ─────────────────────────────────► UserBatch
//!                 (messages to      chunk: size limit, sniffing, checksum, BOM            │
//!                  domain events)   decoder: UTF-8 / UTF-16 / Windows-1252 → UTF-8         │
//!                                   parser: csv-core, records across chunks, row numbers   │
//!                                   validator: header mapping, NewUser or row errors       │
//!                                                                                          ▼
//!            WatchImport ◄─ import::progress ◄─ import::pipeline ─► writer task ─► store::{sqlite,postgres}
//!                           (live counters)      (bounded queue,     (one batch at a time)
//!                                                 batch memory budget)
//! ```
//!
//! Each upload runs in a task of its own that owns the request stream, so that it ends its
//! import (terminal status, nothing imported on an error) however the handler ends. The
//! reader is synchronous and free of I/O: the property tests and the fuzzer run exactly it.
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
