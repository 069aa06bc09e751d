//! bulk-import: a gRPC service that imports users into an account from CSV files.
//!
//! # Layout
//!
//! The modules follow the data of an upload, chunk → parser → validator → store → progress:
//!
//! ```text
//!  gRPC stream ─► grpc::convert ─► import::reader ──────────────────────────────► UserBatch
//!                 (messages to      chunk: size limit, sniffing, checksum, BOM         │
//!                  events)          decoder: UTF-8 / UTF-16 / Windows-1252 → UTF-8      │
//!                                   delimiter: `,` `;` or tab, from the header line      │
//!                                   parser: csv-core, records across chunks, row numbers │
//!                                   validator: header mapping, NewUser or row errors     │
//!                                                                                        ▼
//!  WatchImport ◄─ import::progress ◄─ pipeline::tally ◄── pipeline ──► pipeline::writer ──► store
//!  GetImport      (live view)         (the counters)      (batches,    (one batch at a time)
//!                                                          memory)
//!                         any reason to stop ──► pipeline::ending: one ending, stored, answered
//! ```
//!
//! - [`domain`]: the vocabulary (imports, users, row errors), parsed once at the edge;
//! - [`import`]: the upload pipeline and the queries, independent of gRPC:
//!   - `chunk`, `decoder`, `delimiter`, `parser`, `validator`, composed by `reader`: bytes in,
//!     rows out, synchronous and free of I/O, so that the property tests and the fuzzer run
//!     exactly it;
//!   - `pipeline`: one upload's task (`mod.rs`), its messages (`events`), its counters
//!     (`tally`), the shared batch memory (`memory`), its writer task (`writer`), the
//!     state machine that owns its ending (`ending`), admission limits (`admission`) and the
//!     cancels asked of the uploads running here (`cancel`);
//!   - `progress`: live views for watchers; `report`: the fix-up file; `error`: the layer's
//!     errors, into which the store's are mapped once; `template`: the downloadable template;
//! - [`store`]: persistence behind one trait (`mod.rs`), its classified errors (`error`),
//!   conflict reporting (`conflicts`), the plan of dry runs and of the SKIP and UPDATE
//!   policies (`policy`), the failed rows' cells kept for the fix-up file (`failed`), column
//!   codecs (`codec`), shared reads (`queries`) and the one-off rekeying of old addresses
//!   (`rekey`); one private module per backend: `sqlite/` (`mod.rs`, `write.rs`, the C API
//!   hot path in `capi.rs`, the file lock in `lock.rs`) and `postgres/` (`mod.rs`,
//!   `write.rs`, `copy.rs`, `liveness.rs`, `notify.rs`, `tx.rs`);
//! - [`grpc`]: thin handlers, conversions, the one error mapping, page tokens;
//! - [`auth`] and [`tls`]: bearer tokens scoped to accounts, and TLS, both read again from
//!   their files when those change; `grpc::auth` checks the token of every call;
//! - [`app`]: the server, health, start-up, upkeep and graceful shutdown;
//! - [`metrics`]: Prometheus metrics, and the HTTP probes beside them;
//! - [`config`] and [`cli`]: flags, environment, and the service's own client.
//!
//! Each upload runs in a task of its own that owns the request stream, so that it ends its
//! import however the handler ends; whatever stops it becomes one event into its ending.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod import;
pub mod metrics;
pub mod proto;
pub mod store;
pub mod tls;
