//! How imports end: the one owner of every import's ending, whatever ends it.
//!
//! Every way an import can stop is a [`Cause`]: the causes of an upload (its finish message, a
//! size or checksum mismatch, an unreadable file, the size limit, content that is not CSV, a
//! stream that ends early or breaks, a malformed message, a stall, a cancel, shutdown, a failed
//! write, a panic) and those found by another part of the server (an import left PROCESSING by
//! a server that stopped, found at start; an import whose server is gone, found by the reaper).
//! Each cause becomes exactly one decision in [`decide`](decide::decide), a pure function:
//!
//! ```text
//!  Cause ─► decide ─► Decision: a Conclusion (status, counters by Counters::ended_as, message)
//!                     or the removal of an import refused at the door, and the client's answer
//!      ┌──────────────────────┬──────────────────┴──────────┐
//!  settle (an upload)     orphans (recovery, reaper)    pending (endings that wait)
//!      └──────────────────────┴──────────┬──────────────────┘
//!                              Store::conclude_import(key, conclusion, guard)
//!                              Metrics::import_ended, on the server that stored it
//! ```
//!
//! - [`settle`]: an upload's ending, stored while its client waits for the answer; what the
//!   client is told always agrees with what is finally stored;
//! - [`pending`]: endings that could not be stored when they happened (the database away or
//!   full), shown as decided meanwhile and stored by the upkeep;
//! - [`orphans`]: imports no server drives any more, ended at start (SQLite, whose file this
//!   server holds) or by the reaper once their life sign has stood still (PostgreSQL).
//!
//! A new way for an import to end is one more `Cause` and its arm in `decide`.
//!
//! Every ending is stored with `Store::conclude_import` behind a [`Guard`]: the one that
//! stores first wins, and the others get `NotProcessing` and defer to it. So an upload, its
//! pending ending and another server's reaper can race for one import and it still ends once.
//!
//! [`Guard`]: crate::store::Guard

pub mod decide;
pub mod orphans;
pub mod pending;
pub mod settle;

use std::time::Duration;

use crate::domain::ArgumentError;
use crate::import::chunk::IntakeError;
use crate::store::StoreError;

pub use orphans::Reaper;
pub use pending::Endings;
pub use settle::Ending;

/// The `error_message` of an import whose server stopped or died before it finished: the
/// ending of `Cause::Interrupted` and `Cause::Abandoned`, which no client waits for.
pub const INTERRUPTED: &str = "the server stopped before the import finished, so nothing was \
    imported; upload the file again";

/// Why an import stops. Each variant says how the import ends and what the uploading client is
/// told; `decide` is where that is written down.
#[derive(Debug)]
pub enum Cause {
    /// The finish message arrived and matched, and every row was read and written.
    /// `cancel_asked`: `CancelImport` asked meanwhile (here or on another replica), which
    /// wins: the import is PROCESSING until its ending is stored.
    /// Otherwise a COMPLETED_* status by the counters, and the client gets the import.
    Completed {
        /// Whether `CancelImport` had asked by the time every batch was written.
        cancel_asked: bool,
    },
    /// The finish message's size or checksum does not match what arrived: ERROR_UNKNOWN, and
    /// the client gets the import, whose message says what did not match.
    Mismatch(String),
    /// The file cannot be read: ERROR_PARSING with this message, and the client gets the
    /// import.
    Parsing(String),
    /// The file is larger than the server takes: ERROR_UNKNOWN, and RESOURCE_EXHAUSTED.
    TooLarge(IntakeError),
    /// The content is not CSV at all: refused at the door, before anything was written. The
    /// import is removed as if it never was, and the client gets INVALID_ARGUMENT.
    NotCsv(IntakeError),
    /// The stream ended without a finish message: ERROR_UNKNOWN, and INVALID_ARGUMENT.
    Incomplete,
    /// The stream broke: the client went away, or the network failed. ERROR_UNKNOWN; the
    /// answer (CANCELLED) has likely no one left to read it.
    Broken(String),
    /// A malformed message, or one out of order: ERROR_UNKNOWN, and INVALID_ARGUMENT naming
    /// the field.
    Protocol(ArgumentError),
    /// The server is shutting down and the grace period is over: ERROR_UNKNOWN, and
    /// UNAVAILABLE so that the client uploads again.
    ShuttingDown,
    /// Nothing arrived for this long: ERROR_UNKNOWN, and DEADLINE_EXCEEDED.
    Stalled(Duration),
    /// `CancelImport`: CANCELLED, and the uploading client gets CANCELLED too.
    Cancelled,
    /// A write failed: ERROR_UNKNOWN, and the store's error as the import layer maps it
    /// (UNAVAILABLE for an outage or a full disk).
    Store(StoreError),
    /// A bug: reading the file panicked. The import still ends (ERROR_UNKNOWN), and the client
    /// gets INTERNAL; the panic's message is only logged.
    Panicked(String),
    /// Found PROCESSING when this server started on a database no other server writes: the
    /// server that ran it stopped.
    Interrupted,
    /// Its server is gone: its life sign stood still for longer than a live server allows.
    Abandoned,
    /// A resumable upload waited for its client for this long (`--resume-window`), in vain:
    /// ERROR_UNKNOWN.
    NotResumed(Duration),
}

impl Cause {
    /// Whether the client or the server went away before the finish message: what leaves a
    /// resumable upload's import waiting for its client rather than ending it (`decide`).
    pub fn leaves_waiting(&self) -> bool {
        matches!(
            self,
            Cause::Incomplete
                | Cause::Broken(_)
                | Cause::ShuttingDown
                | Cause::Stalled(_)
                | Cause::Interrupted
                | Cause::Abandoned
        )
    }

    /// A name for the audit log, which never quotes the file (messages may: a header's
    /// columns, a value).
    pub fn kind(&self) -> &'static str {
        match self {
            Cause::Completed { .. } => "completed",
            Cause::Mismatch(_) => "size_or_checksum_mismatch",
            Cause::Parsing(_) => "unreadable_file",
            Cause::TooLarge(_) => "too_large",
            Cause::NotCsv(_) => "not_csv",
            Cause::Incomplete => "no_finish",
            Cause::Broken(_) => "stream_broke",
            Cause::Protocol(_) => "malformed_message",
            Cause::ShuttingDown => "shutdown",
            Cause::Stalled(_) => "stalled",
            Cause::Cancelled => "cancelled",
            Cause::Store(_) => "database",
            Cause::Panicked(_) => "internal",
            Cause::Interrupted => "interrupted",
            Cause::Abandoned => "abandoned",
            Cause::NotResumed(_) => "not_resumed",
        }
    }
}

/// A duration in the words an import's message uses: `24 h`, `90 min`, `3 s`, or as
/// `humantime` writes it when it is none of those.
pub fn duration_words(duration: Duration) -> String {
    let secs = duration.as_secs();
    if duration.subsec_nanos() != 0 || secs == 0 {
        humantime::format_duration(duration).to_string()
    } else if secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{secs} s")
    }
}

/// What a stalled upload is told, and what its import stores: the same words whether the
/// stall came before the metadata (no import yet) or during the upload.
pub fn stalled(idle: Duration) -> String {
    format!(
        "upload stalled: nothing arrived for {} s, so nothing was imported; upload the file \
         again",
        idle.as_secs()
    )
}
