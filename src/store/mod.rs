//! Persistence: one trait, one module and one migrations folder per backend, chosen by the
//! database URL's scheme (as atuin's server databases). The backends are private: the rest of
//! the service sees the trait, its types and the classified errors.
//!
//! The all-or-nothing rule lives here. Valid rows are written into the users table while the
//! upload runs, each tagged with its import; an import that ends in an ERROR_* status (or was
//! left PROCESSING by a server that stopped) has its users deleted in the same transaction that
//! sets its status. Uniqueness is the database's job: unique indexes on email and on external
//! id, per account, catch duplicates in the file and in the account alike, so the server keeps
//! no set of seen addresses and its memory stays flat whatever the file size.
//!
//! - [`error`]: the errors, classified once (outage, fault, bug) with their plain words;
//! - `conflicts`: rows the unique indexes refused, turned into row errors;
//! - `codec`: domain values to columns and back; `queries`: the reads both backends share;
//! - `sqlite`, `postgres`: the backends.

mod codec;
mod conflicts;
pub mod error;
mod failed;
mod policy;
mod postgres;
mod queries;
mod rekey;
mod sqlite;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::domain::{
    AccountId, ConflictPolicy, Counters, Import, ImportId, ImportKey, ImportStatus, NewImport,
    RowError, TextFormat, UserBatch,
};
pub use error::{Fault, Outage, StoreError};

/// What writing one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Users inserted (a dry run: users that would have been).
    pub imported: u64,
    /// Valid rows refused by a uniqueness rule (DUPLICATE_IN_FILE or ALREADY_EXISTS).
    pub conflicts: u64,
    /// Rows whose user exists, left alone (SKIP) or updated (UPDATE).
    pub skipped: u64,
    pub updated: u64,
    /// Row errors stored, validation and conflict errors together.
    pub errors_stored: u64,
    /// Row errors left out because the import reached its cap.
    pub errors_omitted: u64,
}

impl BatchOutcome {
    /// The counters once this batch is written, from those before it. The one place where a
    /// write moves counters: the upload's tally applies it when the batch committed, and the
    /// stores apply it to the progress they store with the batch.
    pub fn applied_to(&self, before: Counters) -> Counters {
        Counters {
            rows_imported: before.rows_imported + self.imported,
            rows_failed: before.rows_failed + self.conflicts,
            row_errors_omitted: before.row_errors_omitted + self.errors_omitted,
            rows_skipped: before.rows_skipped + self.skipped,
            rows_updated: before.rows_updated + self.updated,
            ..before
        }
    }
}

/// Where a batch goes, how its errors are numbered, and the progress stored with it.
#[derive(Debug, Clone)]
pub struct BatchTarget<'a> {
    pub key: ImportKey,
    pub account_id: &'a AccountId,
    /// Sequence number of the first row error this batch stores: errors are read back in
    /// this order, which is file order.
    pub next_error_seq: u64,
    /// How many more row errors may be stored for this import.
    pub error_budget: u64,
    /// The upload's counters before this batch's write (its rows are already read): the store
    /// saves `BatchOutcome::applied_to(progress)` with the batch, for readers elsewhere.
    pub progress: Counters,
    pub format: Option<TextFormat>,
    /// What becomes of a row whose user exists.
    pub on_conflict: ConflictPolicy,
    /// A dry run: every check, no user written.
    pub validate_only: bool,
}

impl BatchTarget<'_> {
    /// How rows are decided when the unique indexes alone cannot decide them: a dry run
    /// writes no user, and SKIP and UPDATE must know the user before writing. `None` for the
    /// plain import, which inserts and lets the indexes refuse.
    fn planned(&self) -> Option<policy::Mode> {
        (self.validate_only || self.on_conflict != ConflictPolicy::Error).then_some(policy::Mode {
            key: self.key,
            policy: self.on_conflict,
            dry_run: self.validate_only,
        })
    }
}

/// How an import ends.
#[derive(Debug, Clone, PartialEq)]
pub struct Conclusion {
    pub status: ImportStatus,
    pub counters: Counters,
    pub format: Option<TextFormat>,
    pub error_message: String,
}

impl Conclusion {
    /// An ERROR_* ending removes the import's users: nothing of a failed import stays.
    pub fn removes_users(&self) -> bool {
        !self.status.is_completed()
    }
}

/// Where a page of the Imports list starts: after this import, in the list's order (newest
/// `create_time` first, ties by `import_id`, also descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportCursor {
    /// `create_time` in microseconds since the Unix epoch, as stored.
    pub create_micros: i64,
    pub import_id: String,
}

impl ImportCursor {
    /// The cursor of the page that follows `import`.
    pub fn after(import: &Import) -> Self {
        Self {
            create_micros: codec::micros(import.create_time),
            import_id: import.import_id.to_string(),
        }
    }
}

/// The note a revert leaves on its import, and says in its answer.
pub fn revert_note(removed: u64, kept: u64) -> String {
    match kept {
        0 => format!("reverted: {removed} users removed"),
        kept => format!(
            "reverted: {removed} users removed; {kept} kept, because another import has updated \
             them since"
        ),
    }
}

/// What `RevertImport` did.
#[derive(Debug, Clone, PartialEq)]
pub struct Reverted {
    /// The import, with its `revert_time` and note.
    pub import: Import,
    /// Users removed by this call: 0 when the import was reverted before.
    pub removed: u64,
    /// Users kept because another import updated them since.
    pub kept: u64,
}

/// A user of an account, as `ListUsers` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    /// As stored: the normalised address.
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub role: String,
    pub job_title: String,
    pub external_id: Option<String>,
    /// The import that created the user.
    pub import_id: String,
    pub create_time: std::time::SystemTime,
    pub update_time: std::time::SystemTime,
}

/// The cells of a failed row, in template column order, as the file had them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedCells {
    pub row_number: u64,
    pub cells: [String; 6],
}

/// A stored row error with its position, for paging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRowError {
    pub seq: u64,
    pub error: RowError,
}

/// How the pipeline should cut batches for a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Rows per batch, and so per write.
    pub rows: usize,
    /// A batch that is not full is still written this long after the writer took the last
    /// one: a quiet client must not hold batch memory, and other replicas read progress from
    /// the stored counters.
    pub flush_after: Option<Duration>,
    /// Other replicas answer for the same imports from the stored progress. The live view of
    /// an upload must then be what is stored, or a client polling both would see counters go
    /// back; with one replica it may show the rows as they are read.
    pub shared: bool,
}

/// Settings of the embedded backend that tests and operators may need; PostgreSQL ignores them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// How long an SQLite write waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// Caps the SQLite file at this many pages (`PRAGMA max_page_count`): past it, writes fail
    /// as on a full disk. For tests of that fault, and to bound the file.
    pub max_pages: Option<u64>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(30),
            max_pages: None,
        }
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn batching(&self) -> Batching;

    /// Answers when the database does: readiness follows it.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Connections of the store's pools, in use and idle, for the metrics.
    fn pool_stats(&self) -> crate::metrics::PoolStats;

    /// The fault that made a write fail (a full disk, a failing disk, a read-only database),
    /// until `probe_write` shows it gone. Readiness and new uploads follow it.
    fn fault(&self) -> Option<Fault>;

    /// Lets go of the database at the end of a graceful shutdown: connections closed, and for
    /// SQLite the file's lock released, so that another server may open it.
    async fn close(&self);

    /// Whether the database can take a batch again after a fault: writes as much as a batch
    /// needs and rolls it back, and clears the fault when that works.
    async fn probe_write(&self) -> Result<(), StoreError>;

    /// Ends every import left PROCESSING by a server that stopped: ERROR_UNKNOWN with
    /// `message`, users deleted. Returns how many.
    async fn recover_interrupted(&self, message: &str) -> Result<u64, StoreError>;

    /// Periodic upkeep, every few seconds: keeps the leases of the imports running here and
    /// ends those whose replica is gone. Returns how many were ended. Nothing to do for a
    /// single-replica store, which ends interrupted imports at start.
    async fn maintain(&self, running: &[ImportKey], message: &str) -> Result<u64, StoreError> {
        let _ = (running, message);
        Ok(0)
    }

    /// Wakes when an import changes, whichever replica changed it. `None` when only this
    /// process writes (watchers then poll).
    fn subscribe(&self, key: ImportKey) -> Option<tokio::sync::watch::Receiver<u64>> {
        let _ = key;
        None
    }

    /// Asks the server that runs the import to cancel it: sets its `cancel_requested` and
    /// wakes its followers. `NotProcessing` when it had already ended.
    async fn request_cancel(&self, key: ImportKey) -> Result<(), StoreError>;

    /// Whether `CancelImport` asked to cancel the import.
    async fn cancel_requested(&self, key: ImportKey) -> Result<bool, StoreError>;

    /// Creates the import, PROCESSING. `AlreadyExists` when the id is taken in the account.
    async fn create_import(&self, new: &NewImport) -> Result<Import, StoreError>;

    /// Removes an import that was refused before anything was written.
    async fn discard_import(&self, key: ImportKey) -> Result<(), StoreError>;

    /// Writes a batch: its users (duplicates refused by the unique indexes and reported as
    /// row errors), its row errors, and the import's progress. `NotProcessing`, with nothing
    /// written, when the import ended. After any other error part of the batch may be stored:
    /// the import then ends in an ERROR_* status, which removes its users.
    async fn write_batch(
        &self,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
    ) -> Result<BatchOutcome, StoreError>;

    /// Sets the terminal status; an ERROR_* status deletes the import's users in the same
    /// transaction. `NotProcessing` when the import had already ended.
    async fn conclude_import(
        &self,
        key: ImportKey,
        conclusion: &Conclusion,
    ) -> Result<Import, StoreError>;

    async fn get_import(
        &self,
        account_id: &AccountId,
        import_id: &ImportId,
    ) -> Result<Option<Import>, StoreError>;

    /// The account's imports, newest first (by `create_time`, ties by `import_id`), after
    /// `after` when given.
    async fn list_imports(
        &self,
        account_id: &AccountId,
        after: Option<&ImportCursor>,
        limit: u32,
    ) -> Result<Vec<Import>, StoreError>;

    /// Removes the users an import created, except those another import has updated since,
    /// and sets its `revert_time` and note; a second call removes nothing and keeps the first
    /// time. `StillRunning` for a PROCESSING import.
    async fn revert_import(&self, key: ImportKey) -> Result<Reverted, StoreError>;

    /// The account's users (of completed imports), by email, after `after`; only those
    /// `import` created when given.
    async fn list_users(
        &self,
        account_id: &AccountId,
        import: Option<ImportKey>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredUser>, StoreError>;

    /// The cells of an import's failed rows (as many as its stored row errors cover), in file
    /// order, after row `after` when given.
    async fn failed_rows(
        &self,
        key: ImportKey,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<FailedCells>, StoreError>;

    /// Row errors in file order, after sequence number `after` when given.
    async fn list_row_errors(
        &self,
        key: ImportKey,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredRowError>, StoreError>;
}

/// Opens the store a database URL names: `sqlite:` (the embedded default) or `postgres:`, and
/// applies its migrations. An error that `is_transient` is worth retrying (a PostgreSQL server
/// still starting); any other is a configuration to fix.
pub async fn open(url: &str, options: OpenOptions) -> Result<Arc<dyn Store>, StoreError> {
    match url.split(':').next().unwrap_or_default() {
        "sqlite" => Ok(Arc::new(sqlite::SqliteStore::open(url, options).await?)),
        "postgres" | "postgresql" => Ok(Arc::new(postgres::PostgresStore::open(url).await?)),
        scheme => Err(StoreError::Config(format!(
            "unsupported database url scheme '{scheme}:'; use sqlite://PATH or \
             postgres://USER@HOST/DATABASE"
        ))),
    }
}
