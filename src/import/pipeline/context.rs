//! What an upload runs with: the import layer's settings, and what it shares with the rest of
//! the service.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::memory::BatchMemory;
use super::{admission, cancel};
use crate::import::ending::Endings;
use crate::import::parser;
use crate::import::progress::ProgressHub;
use crate::store::Store;

/// The import layer's settings, from the command line (`config::ServeArgs::import_config`).
#[derive(Debug, Clone)]
pub struct ImportConfig {
    /// The largest file taken, in bytes (`--max-upload-bytes`, 200 MiB by default). A file
    /// that crosses it is ended as soon as it does.
    pub max_upload_bytes: u64,
    /// Row errors stored per import; the counters stay exact beyond it.
    pub max_stored_row_errors: u64,
    /// Bounds on one record of the file; not a flag, the defaults serve every upload.
    pub record_limits: parser::Limits,
    /// Rows per batch instead of the store's choice: tests use small batches to show that
    /// batch boundaries change nothing.
    pub batch_rows: Option<usize>,
    /// Uploads running at once, on the server and per account.
    pub max_uploads: usize,
    /// Uploads of one account running at once on this server: so that one account's clients
    /// cannot take every place.
    pub max_uploads_per_account: usize,
    /// An upload that sends nothing for this long is ended.
    pub idle_timeout: Duration,
    /// `WatchImport` streams open at once.
    pub max_watchers: usize,
    /// `WatchImport` streams of one account open at once.
    pub max_watchers_per_account: usize,
    /// How long a resumable upload whose stream broke waits for its client before its import
    /// ends (`--resume-window`).
    pub resume_window: Duration,
}

impl Default for ImportConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 200 * 1024 * 1024,
            max_stored_row_errors: 100_000,
            record_limits: parser::Limits::default(),
            batch_rows: None,
            max_uploads: 8,
            max_uploads_per_account: 4,
            idle_timeout: Duration::from_secs(60),
            max_watchers: 256,
            max_watchers_per_account: 64,
            resume_window: Duration::from_secs(24 * 3600),
        }
    }
}

/// What an upload shares with the rest of the service.
pub struct Context {
    /// The open store: the import is created, written and ended in it.
    pub store: Arc<dyn Store>,
    /// Where the upload's live view is registered, for `GetImport` and `WatchImport`.
    pub hub: ProgressHub,
    /// The batch memory budget shared by all uploads.
    pub memory: BatchMemory,
    /// Cancelled when shutdown stops waiting: running uploads then end in ERROR_UNKNOWN.
    pub shutdown: CancellationToken,
    /// Endings that wait to be stored: an ending that cannot be stored now is kept here, and
    /// a retry's `AlreadyExists` answer reads the status from here first.
    pub endings: Endings,
    /// The limits on uploads running at once; the upload holds its place until it ends.
    pub admission: admission::Admission,
    /// Where the upload registers its cancel token, for `CancelImport` on this server.
    pub cancels: cancel::Cancels,
    /// Uploads running, bytes received, imports ended.
    pub metrics: crate::metrics::Metrics,
    /// The settings the upload runs with.
    pub config: ImportConfig,
}
