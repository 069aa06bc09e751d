//! Integration tests: the real server, a temporary database, the generated client.

mod account_keys;
mod backends;
mod chart;
mod claims;
mod cli;
mod cli_connect;
mod console;
mod correctness;
mod crashes;
mod faults;
mod features;
mod feed;
mod fixtures;
mod follow_up;
mod health;
mod helpers;
mod invitations;
mod lifecycle;
mod limits;
mod load;
mod mailboxes;
mod memory;
mod metrics;
mod proxy;
mod queries;
mod rejections;
mod relay;
mod replicas;
mod resume;
mod resume_planned;
mod resume_servers;
mod retention;
mod row_by_row;
mod saved_values;
mod security;
mod store;
mod tls;
mod tools;
mod upload;
mod watch;

/// The reference model of an import, shared with the fuzz target.
#[path = "../model/mod.rs"]
mod model;

/// Shared with the benchmark: the server process, the upload client, the loaders, the
/// generator.
#[path = "../../benches/support/mod.rs"]
mod support;
