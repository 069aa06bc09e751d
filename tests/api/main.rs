//! Integration tests: the real server, a temporary database, the generated client.

mod faults;
mod fixtures;
mod health;
mod helpers;
mod lifecycle;
mod memory;
mod queries;
mod rejections;
mod replicas;
mod store;
mod tools;
mod upload;
mod watch;

/// Shared with the benchmark: the server process, the upload client, the loaders, the
/// generator.
#[path = "../../benches/support/mod.rs"]
mod support;
