//! The service's own client: manual imports from a shell, without proto files or grpcurl.
//!
//! - People get the help page's words (`Completed - Partial: 196,027 imported, 3,973 failed`),
//!   a progress bar on a terminal, and row errors as a table (`show`);
//! - scripts get `--json` (`json`) and exit codes: 0 for Completed - Success and Nothing to
//!   Import (and any other command that worked), 2 for Completed - Partial, 1 for Error -
//!   Parsing, Error - Unknown, Cancelled and any error;
//! - an error is one line: the gRPC code's name and the server's message, or what kept the
//!   client from the server and how to point it elsewhere.
//!
//! Layout, by job:
//!
//! - `connect`: the URL, TLS, a client certificate, the bearer token; `deadline`, how long
//!   a call may wait; `diagnose`, why a connection failed and what fixes it;
//! - `upload`: a file streamed as it is read, with a progress bar and the first row errors;
//!   `resume`: a resumable upload that reconnects and resumes by itself, and `resume` by hand;
//! - `commands`: the commands on imports that exist (`get`, `list`, `watch`, `template`,
//!   `errors`, `cancel`, `revert`, `users`, `invite`); `events`: the user event feed;
//! - `outcome`: exit codes, and errors in one line;
//! - `show` and `json`: an import and its row errors for people, and for scripts.
//!
//! A command runs the same way each time: clap parses its flags (`config`, with environment
//! fallbacks), `main` calls the command here, the command connects, makes its RPCs, prints,
//! and returns an `Outcome` or a `CliError`; `main` prints the error and exits with the code.
//! The client is the same binary as the server, so it always speaks the server's proto
//! version when both come from one release, and `template` needs no server at all.

mod commands;
mod connect;
mod deadline;
mod diagnose;
mod events;
mod outcome;
mod resume;
mod show;
mod upload;

use crate::json;

pub use commands::{cancel, errors, get, invite, list, revert, template, users, watch};
pub use connect::{Bearer, Client, connect};
pub use deadline::Deadline;
pub use events::events;
pub use outcome::{CliError, CliResult, Outcome, USAGE};
pub use resume::resume;
pub use upload::upload;
