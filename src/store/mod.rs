//! Persistence: one trait, one module and one migrations folder per backend, chosen by the
//! database URL's scheme (as atuin's server databases). The backends are private: the rest of
//! the service sees the trait, its types and the classified errors.
//!
//! The all-or-nothing rule lives here. Valid rows are written into the users table while the
//! upload runs, each tagged with its import; an import that ends in an ERROR_* status or is
//! cancelled (or was left PROCESSING by a server that stopped) has its users deleted, and the
//! users it updated given their old values back, in the same transaction that sets its status.
//! Uniqueness is the database's job: unique indexes on email and on external id, per account,
//! catch duplicates in the file and in the account alike, so the server keeps no set of seen
//! addresses and its memory stays flat whatever the file size.
//!
//! # One home per rule
//!
//! Each rule is written once, in the one place a reader would look for it:
//!
//! - [`Store`] is all the import layer sees: one call per thing an upload or a query needs,
//!   each with the errors it may give and what they mean to the caller;
//! - the flows above the backends (`ending`, `revert`, `record`, `planned`, `rekey`) say
//!   *what* is written and *in which order*, once, generic over the `Steps` trait, so that
//!   both backends end, revert and record imports the same way and give the same errors for
//!   the same cases; what they decide is decided by pure functions beside them (`plan`,
//!   `conflicts`), and the statements they look up with are built once (`lookup`);
//! - each backend implements `Steps` in its own dialect and keeps only what really differs:
//!   SQL dialects (times, arrays, `IN` lists), binary `COPY` against SQLite's C API, rowid
//!   ranges against an index on `import_key`, and PostgreSQL's `NOTIFY` to other replicas.
//!
//! So code in a backend is there because it is dialect; what could be shared belongs in the
//! flows above, where a fix reaches both backends at once.
//!
//! # Layout
//!
//! - `accounts`: an account's integer key in the users table, in place of its text;
//! - `types`: the values that cross the trait (re-exported here): batch targets and outcomes,
//!   an import's `Conclusion` and its `Guard`, life signs, cursors, the rows queries return;
//! - `steps`: the `Steps` trait, the statements a backend writes in its dialect inside one of
//!   its write transactions, and `Param`, the parameters of the statements both share;
//! - `ending`: an import's ending (status first, then undo, then its file keys), its discard,
//!   a cancel request;
//! - `revert`: `RevertImport`, the users of a finished import removed and the note it keeps;
//! - `record`: what a batch leaves besides its users (progress, row errors, failed rows'
//!   cells) and the plain import's conflicts;
//! - `planned`: a batch of a dry run or of the SKIP and UPDATE policies: lookup, plan, writes,
//!   record, in one transaction;
//! - `plan`: the pure decision of what each row of such a batch becomes;
//! - `lookup`: the lookup statements and row types both backends (and both of SQLite's paths)
//!   share;
//! - `conflicts`: rows the unique indexes refused, turned into row errors;
//! - `failed`: the failed rows' cells kept for the fix-up file;
//! - `codec`: domain values to columns and back; `queries`: the reads both backends share;
//! - `rekey`: the one-off rekeying of old email addresses to today's key form;
//! - `retention`: a step of removing a finished import's details (row errors, failed rows);
//! - `events`: the user feed's outbox, written in each change's transaction; `relay`: the
//!   NATS relay's lease and place; `resume`: a resumable upload's import made to wait, and
//!   taken by a resume (where its file stands is stored by each batch's record);
//! - [`error`]: the errors, classified once (an answer, an outage, a fault, a bug) with their
//!   plain words;
//! - `sqlite/`: the embedded default, one replica: `mod.rs` (the store, its one writer
//!   connection, the write probe), `steps.rs` (its dialect), `capi.rs` (the hot path through
//!   SQLite's C API), `ranges.rs` (an import's users by rowid range), `lock.rs` (one server
//!   per file);
//! - `postgres/`: several replicas: `mod.rs` (the store), `open.rs` (migrations, the owner
//!   lock, the pool whose connections carry the owner), `steps.rs` (its dialect),
//!   `plain.rs` (the plain import's batches), `parallel.rs` (a large batch in two parts at
//!   once), `apply.rs` (what a plan writes), `record.rs` (a batch's row errors and cells over
//!   arrays), `copy.rs` (binary `COPY` of users and of a planned batch's file keys),
//!   `liveness.rs` (owner locks and heartbeats), `notify.rs` (`LISTEN`/`NOTIFY`), `tx.rs`
//!   (transactions run again after a lost deadlock).

mod accounts;
mod claims;
mod codec;
mod conflicts;
mod ending;
pub mod error;
mod events;
mod failed;
mod invitations;
mod lookup;
mod plan;
mod planned;
mod postgres;
mod queries;
mod record;
mod rekey;
mod relay;
mod resume;
mod retention;
mod revert;
mod seen;
mod sqlite;
mod steps;
mod types;

pub use invitations::Invitees;
pub use seen::SeenValues;

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use crate::domain::{AccountId, Import, ImportId, ImportKey, NewImport, UserBatch};
pub use error::{Fault, Outage, StoreError};
pub use types::{
    AccountKey, BatchOutcome, BatchTarget, BatchWritten, Batching, Claimed, Committed, Conclusion,
    FailedCells, FeedRow, FeedState, Guard, ImportCursor, InvitedUser, LeaseStep, LifeSign,
    OpenOptions, Processing, RelayLease, Removed, Reverted, StoredEvent, StoredRowError,
    StoredUser, UserFilter,
};

/// The store as the import layer sees it, behind an `Arc<dyn Store>` chosen by [`open`].
///
/// Calls may come from many tasks at once. Errors are classified (see [`StoreError`]): the
/// answers about the data (`AlreadyExists`, `NotProcessing`, `StillRunning`, `BeingUpdated`)
/// refuse a request for what the data is, and the database is fine; an outage (`Unavailable`) may
/// pass by itself; a fault needs someone to act; the others fail the request (see each variant).
/// A call that fails leaves nothing changed, except where it says otherwise (`write_batch`).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// How the pipeline should cut this store's batches: rows per batch, how long a batch that is
    /// not full may wait, and whether other replicas read the progress it stores. Constant for a
    /// store; each backend gives its figures, and what they were measured on, where it implements
    /// this.
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

    /// Whether this server is the only one that writes the database (SQLite, whose file this
    /// server holds locked): an import found PROCESSING at start was then left by a server
    /// that stopped, and can be ended at once.
    fn exclusive(&self) -> bool;

    /// Renews the life sign of the imports this server runs (see `LifeSign`), so that other
    /// servers do not take them for abandoned. Nothing to do for an exclusive store.
    async fn heartbeat(&self, running: &[ImportKey]) -> Result<(), StoreError> {
        let _ = running;
        Ok(())
    }

    /// Every PROCESSING import, with its life sign: what recovery at start and the reaper of
    /// abandoned imports judge (`import::ending::orphans`).
    async fn processing(&self) -> Result<Vec<Processing>, StoreError>;

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

    /// The key of the account in the users table, its row made on its first use: what an
    /// upload's batches are written and looked up with (`BatchTarget::account_key`). Asked once
    /// per upload, before its first batch; an account's key never changes.
    async fn account_key(&self, account: &AccountId) -> Result<AccountKey, StoreError>;

    /// Removes an import that was refused before anything was written.
    async fn discard_import(&self, key: ImportKey) -> Result<(), StoreError>;

    /// Writes a batch: its users (duplicates refused by the unique indexes and reported as
    /// row errors), its row errors, and the import's progress. `NotProcessing` when the import
    /// ended meanwhile: its record is not written, and no user of the batch remains (on
    /// PostgreSQL's plain path the parts may have committed users before the record found the
    /// import ended; the ending that ended it removes them, whoever stores it). After any other
    /// error part of the batch may be stored: the import then ends in an ERROR_* status, which
    /// removes its users.
    async fn write_batch(
        &self,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
    ) -> Result<BatchWritten, StoreError>;

    /// Notes in `seen` every value import `key`'s earlier rows took in its file (its file keys,
    /// `claims`): the filter of an upload that resumes a planned import, made before its first
    /// batch. `FileKeysLost` as a batch would get it.
    async fn remember_file_keys(&self, key: ImportKey, seen: &SeenValues)
    -> Result<(), StoreError>;

    /// Stores an import's ending, if `guard` still holds: the status, the counters and the
    /// message of the conclusion as they are; a conclusion that `removes_users` also removes
    /// the users the import created and restores those it updated, in the same transaction.
    /// `NotProcessing`, with nothing changed, when the import had already ended or the guard
    /// no longer holds. The one call that ends imports, whatever ended them.
    async fn conclude_import(
        &self,
        key: ImportKey,
        conclusion: &Conclusion,
        guard: Guard,
    ) -> Result<Import, StoreError>;

    /// The import with this id in the account, as stored; `None` when there is none. On PostgreSQL
    /// its counters are those of its last stored batch, which may be behind the live view of the
    /// replica that runs it.
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

    /// Makes a running resumable import wait `window` for its client to resume its upload (the
    /// stream broke, its server stopped or is gone), if `guard` holds (`Processing` or
    /// `Abandoned`): PROCESSING with a `resume_deadline`, no server driving it, its bytes
    /// received back at `committed_bytes`. `NotProcessing`, with nothing changed, when it is
    /// not running (any more) or the guard no longer holds.
    async fn park_import(
        &self,
        key: ImportKey,
        window: std::time::Duration,
        guard: Guard,
    ) -> Result<Import, StoreError>;

    /// Takes a waiting import for a resume at `offset` by this server: it runs again, with no
    /// deadline, and the reader's state where it stopped. `NotProcessing`, with nothing
    /// changed, when it does not wait (another resume took it, or it ended) or `offset` is not
    /// its `committed_bytes`.
    async fn claim_import(&self, key: ImportKey, offset: u64) -> Result<Claimed, StoreError>;

    /// Removes the users an import created, except those another import has updated since,
    /// and sets its `revert_time` and note; a second call removes nothing and keeps the first
    /// time. `StillRunning` for a PROCESSING import.
    async fn revert_import(&self, key: ImportKey) -> Result<Reverted, StoreError>;

    /// Invites the HELD users `who` names, now (with `resend`, the SENT ones again); how many.
    /// Users of imports that did not complete are left alone.
    async fn send_invitations(
        &self,
        account_id: &AccountId,
        who: Invitees<'_>,
        resend: bool,
    ) -> Result<u64, StoreError>;

    /// The user with this stored address accepted: SENT (or ACCEPTED) becomes ACCEPTED.
    /// `false`, with nothing changed, when there is no such user or it is in another state.
    async fn accept_invitation(
        &self,
        account_id: &AccountId,
        email: &str,
    ) -> Result<bool, StoreError>;

    /// The user feed's rows after `after` (a `seq`; 0 for all that are kept), in order, at
    /// most `limit`; only `account`'s when given.
    async fn user_events(
        &self,
        account: Option<&AccountId>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<FeedRow>, StoreError>;

    /// Removes at most `rows` of the feed's oldest events written before `before`, moving the
    /// feed's horizon past them; how many. `None` when another replica has the clean-up's turn.
    async fn remove_events(&self, before: SystemTime, rows: u32)
    -> Result<Option<u64>, StoreError>;

    /// The feed's name and bounds: a cursor of another feed, before the horizon (events
    /// after it were removed) or after the last event is not a place in this feed.
    async fn feed_state(&self) -> Result<FeedState, StoreError>;

    /// A step of the relay's lease (`relay`): taken, kept with the place moved, or given
    /// up; `Some` while this replica holds it.
    async fn relay_lease(&self, step: LeaseStep<'_>) -> Result<Option<RelayLease>, StoreError>;

    /// Events this store has committed to the feed since it opened (an INVITED_AT_COMMIT row
    /// counts the users it invites), for the metrics.
    fn events_written(&self) -> u64;

    /// The users import `key`'s commit invited (`FeedRow::InvitedAtCommit`), after file row
    /// `after_row`, in file order, at most `limit`, each with its row.
    async fn invited_at_commit(
        &self,
        key: ImportKey,
        after_row: i64,
        limit: u32,
    ) -> Result<Vec<(i64, InvitedUser)>, StoreError>;

    /// The account's users (of completed imports), by email, after `after`; only those the
    /// filter lets by.
    async fn list_users(
        &self,
        account_id: &AccountId,
        filter: UserFilter<'_>,
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

    // Retention (`import::retention`).

    /// Imports whose details' removal is under way (a server stopped mid-way), then finished
    /// imports whose details are still kept and that ended before their cut-off: `imports` for
    /// imports, `dry_runs` for dry runs (`None`: kept for ever), oldest first; at most `limit`.
    async fn expired_details(
        &self,
        imports: Option<SystemTime>,
        dry_runs: Option<SystemTime>,
        limit: u32,
    ) -> Result<Vec<ImportKey>, StoreError>;

    /// Marks import `key`'s details removed (`details_removed_time`, at the first call) and
    /// removes at most `rows` of its row errors and failed rows, in one short transaction;
    /// `done` once none remain (`gone_before` when another replica had finished). `None` when
    /// another replica has the clean-up's turn (PostgreSQL).
    async fn remove_details(
        &self,
        key: ImportKey,
        rows: u32,
    ) -> Result<Option<Removed>, StoreError>;

    /// The database's size in bytes: the file's pages and its write-ahead log on SQLite,
    /// `pg_database_size` on PostgreSQL.
    async fn size(&self) -> Result<u64, StoreError>;

    /// Gives the room removed rows left back to the filesystem, a little at a time; the
    /// bytes given back. SQLite's incremental vacuum; nothing on PostgreSQL, whose autovacuum
    /// makes the room reusable, which is enough there.
    async fn give_back_room(&self) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// The scheme of a database URL, which chooses the store.
fn scheme(url: &str) -> &str {
    url.split(':').next().unwrap_or_default()
}

/// Whether a database URL names the embedded store (SQLite): one writer in this process.
pub fn is_embedded(url: &str) -> bool {
    scheme(url) == "sqlite"
}

/// Opens the store a database URL names: `sqlite:` (the embedded default) or `postgres:`, and
/// applies its migrations. An error that `is_transient` is worth retrying (a PostgreSQL server
/// still starting); any other is a configuration to fix.
pub async fn open(url: &str, options: OpenOptions) -> Result<Arc<dyn Store>, StoreError> {
    match scheme(url) {
        "sqlite" => Ok(Arc::new(sqlite::SqliteStore::open(url, options).await?)),
        "postgres" | "postgresql" => {
            Ok(Arc::new(postgres::PostgresStore::open(url, options).await?))
        }
        scheme => Err(StoreError::Config(format!(
            "unsupported database url scheme '{scheme}:'; use sqlite://PATH or \
             postgres://USER@HOST/DATABASE"
        ))),
    }
}
