//! bulk-import: a gRPC service that imports users into an account from CSV files.
//!
//! # Layout
//!
//! The modules follow the data of an upload, chunk → parser → validator → store → progress,
//! and every way an import ends goes through one owner:
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
//!
//!  an upload's Cause ─┐
//!  start-up recovery ─┼─► import::ending::decide ─► Store::conclude_import ─► store::ending
//!  the reaper ────────┤   (one Conclusion, or a     (one call, a Guard)       (both backends)
//!  a resume window ───┘    resumable upload's wait: Store::park_import ─────► store::resume)
//! ```
//!
//! - [`domain`]: the vocabulary (imports, users, row errors, the checked `Scope` of a caller
//!   in an account), parsed once at the edge;
//! - [`import`]: the upload pipeline and the queries, independent of gRPC:
//!   - `chunk`, `decoder`, `delimiter`, `parser`, `validator`, composed by `reader`: bytes in,
//!     rows out, synchronous and free of I/O, so that the property tests and the fuzzer run
//!     exactly it; `checkpoint`: the reader's state at a row's end, stored with each batch of a
//!     resumable upload, from which another reader (on any replica) goes on;
//!   - `pipeline`: one upload's task (`mod.rs`), its messages (`events`), its counters
//!     (`tally`), the shared batch memory (`memory`), its writer task (`writer`), admission
//!     limits (`admission`) and the cancels asked of the uploads running here (`cancel`);
//!   - `ending`: the one owner of every import's ending: the pure decision (`decide`), an
//!     upload's ending stored while its client waits (`settle`), endings that wait for the
//!     database (`pending`), and imports no server drives any more (`orphans`: recovery at
//!     start, the reaper);
//!   - `progress` and `watch`: live views, and `WatchImport` streams; `report`: the fix-up
//!     file; `retention`: old details removed; `invitations`: `SendInvitations` and
//!     `AcceptInvitation`; `feed`: the user event feed (`WatchUserEvents`); `error`: the layer's errors, into which the store's are mapped
//!     once; `template`: the downloadable template;
//! - [`store`]: persistence behind one trait (`mod.rs`, `types`), its classified errors
//!   (`error`); the flows both backends follow, written once over the `Steps` each backend
//!   implements in its dialect (`steps`): endings (`ending`), reverts (`revert`), a batch's
//!   record (`record`), dry runs and the SKIP and UPDATE policies (`planned`, with the pure
//!   planner `plan`), lookups built once for every path (`lookup`), conflicts turned into row
//!   errors (`conflicts`), the failed rows' cells (`failed`), column codecs (`codec`), shared
//!   reads (`queries`), invitations (`invitations`, states read through `queries`), the user
//!   event feed's writes, in each change's transaction (`events`), the
//!   retention's steps (`retention`) and the one-off rekeying of old addresses (`rekey`); one private module
//!   per backend, `sqlite/` and `postgres/`, each with only what really differs;
//! - [`grpc`]: thin handlers that start from `auth::scoped`, conversions, the one error
//!   mapping, page tokens, and the layers in front of every service that bound what a client
//!   holds before its token is checked (`streams`, `pending`);
//! - [`auth`] and [`tls`]: bearer tokens scoped to accounts, and TLS, both read again from
//!   their files when those change; [`audit`]: the refusals of tokens and accounts, logged;
//! - [`app`]: the server and graceful shutdown (`mod.rs`), the connections it takes
//!   (`connections`), the database's start, recovery and upkeep (`database`), readiness
//!   (`readiness`), freed memory given back (`memory`);
//! - [`relay`]: the user event feed published to NATS JetStream (`--events-nats-url`), by
//!   one replica at a time, from its stored place; [`json`]: messages as JSON, for the
//!   CLI's `--json` and the relay's payloads;
//! - [`metrics`]: Prometheus metrics, and the HTTP listener with the probes beside them;
//! - [`config`] and [`cli`]: flags, environment, and the service's own client;
//! - [`console`]: the web console (`--console-listen`), one more client of the import layer,
//!   as thin as the gRPC handlers.
//!
//! Each upload runs in a task of its own that owns the request stream, so that it ends its
//! import however the handler ends; whatever stops it becomes one `Cause` into its ending.

// Every public item says what it is for: the build refuses one that does not.
#![deny(missing_docs)]

pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod config;
pub mod console;
pub mod domain;
pub mod grpc;
pub mod import;
pub mod json;
pub mod metrics;
pub mod proto;
pub mod relay;
pub mod store;
pub mod tls;
