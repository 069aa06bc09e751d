//! The steps each backend writes in its own dialect, inside one of its write transactions.
//!
//! What the steps are for, in which order they run and what each answer means is written once,
//! above the backends, generic over this trait:
//!
//! - `ending`: an import's ending (status first, then undo, then the file keys), its discard,
//!   a cancel request;
//! - `revert`: the users of a finished import removed, and the note it keeps;
//! - `record`: a batch's row errors, failed rows' cells and progress, and the row errors of
//!   the values the unique indexes refused;
//! - `planned`: dry runs, SKIP and UPDATE (lookups, `plan::decide`, writes), with the values
//!   their rows took in a table of each import's own (`claims`);
//! - `rekey`: the one-off rekeying of old email addresses;
//! - `retention`: a finished import's details removed, a step at a time.
//!
//! So both backends do the same things in the same order and give the same errors for the
//! same cases; what is left to each is what really differs: SQL dialects (times, arrays, `IN`
//! lists), `COPY` against SQLite's C API, rowid ranges against an index on `import_key`, and
//! PostgreSQL's notifications to other replicas.

use std::collections::HashMap;

use async_trait::async_trait;

use super::claims::{ClaimsSql, ClaimsTable};
use super::conflicts::Holder;
use super::failed::FailedLine;
use super::plan::{Known, Lookups, Plan};
use super::{AccountKey, BatchTarget, Committed, Conclusion, Guard, StoreError};
use crate::domain::{
    Column, Counters, Import, ImportKey, ImportStatus, RowError, TextFormat, UserBatch,
};

/// What a revert must know of its import first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RevertState {
    pub status: ImportStatus,
    /// An earlier revert set its `revert_time`.
    pub reverted: bool,
    /// A dry run, which wrote no user.
    pub dry_run: bool,
}

/// Which SQL a backend speaks, where a shared statement must differ (the current time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// Times as integer microseconds since the Unix epoch.
    Sqlite,
    /// Times as `timestamptz`.
    Postgres,
}

impl Dialect {
    /// The one of `sqlite` and `postgres` for this dialect: a flow's statements, built once
    /// per dialect.
    pub(crate) fn pick<T>(self, sqlite: &'static T, postgres: &'static T) -> &'static T {
        match self {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }

    /// The current time in microseconds since the Unix epoch, by the database's clock (the
    /// relay's lease).
    pub(crate) fn now_micros(self) -> &'static str {
        match self {
            Dialect::Sqlite => self.now(),
            Dialect::Postgres => "CAST(extract(epoch FROM clock_timestamp()) * 1000000 AS BIGINT)",
        }
    }

    /// The current time as the backend's time columns hold it.
    pub(crate) fn now(self) -> &'static str {
        match self {
            Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)",
            Dialect::Postgres => "now()",
        }
    }
}

/// The condition on an `imports` row that `guard` puts on waiting for a resume: an import that
/// waits is ended only under `Guard::Waiting` (a cancel, or its deadline), and never by the
/// guards of a running one, which are then about a server that no longer drives it.
pub(crate) fn wait_condition(guard: Guard, dialect: Dialect) -> &'static str {
    match guard {
        Guard::Processing | Guard::Abandoned(_) => "resume_deadline IS NULL",
        Guard::Waiting { expired: false } => "resume_deadline IS NOT NULL",
        Guard::Waiting { expired: true } => dialect.pick::<&str>(
            &"resume_deadline <= CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)",
            &"resume_deadline <= now()",
        ),
    }
}

/// A parameter of a statement both backends share.
///
/// Only the two types the shared statements need: each backend binds them its own way
/// (`Steps::execute`, `Steps::count`), so that a shared statement names no backend's types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Param<'a> {
    /// An integer, such as an import key.
    Int(i64),
    /// Text, such as an account id, an email address or a migration's name.
    Text(&'a str),
}

/// The statements one backend writes in its dialect, inside one of its write transactions. The
/// shared flows (`ending`, `revert`, `record`, `planned`, `rekey`) call them in their order; the
/// backend's transaction wrapper (`SqliteStore::write`, `tx::in_transaction`) begins before the
/// flow and commits after it, or rolls back when it fails.
///
/// An implementation holds the transaction's connection (`SqliteSteps`, `PgSteps`) and must not
/// commit, roll back or write anywhere else: a flow's steps are all or nothing. What an answer of
/// `false` or `None` means to the caller (mostly `NotProcessing`) is the flow's to say. `Send`,
/// because a flow's future is boxed and may move between the runtime's workers.
#[async_trait]
pub(crate) trait Steps: Send {
    // Endings.

    /// Sets the ending of import `key` if it is PROCESSING and `guard` holds: the conclusion's
    /// status, counters, format and message as they are. The import as stored; `None` when it
    /// was not PROCESSING or the guard did not hold, with nothing changed.
    async fn set_ending(
        &mut self,
        key: ImportKey,
        conclusion: &Conclusion,
        guard: Guard,
    ) -> Result<Option<Import>, StoreError>;

    /// Deletes every user import `key` created.
    ///
    /// All of them, those another import has updated since included: an import that fails takes
    /// back everything it added (a revert keeps those, see `delete_reverted`). SQLite finds them
    /// by the rowid ranges its batches recorded, PostgreSQL by `import_key`.
    async fn delete_created(&mut self, key: ImportKey) -> Result<(), StoreError>;

    /// Runs a statement both backends share (`$1`, `$2`... bound from `params` in order);
    /// the number of rows it changed.
    ///
    /// `sql` is `'static`: a shared statement is a constant of a flow, never text built from
    /// data, so nothing bound can change what it does.
    async fn execute(&mut self, sql: &'static str, params: &[Param<'_>])
    -> Result<u64, StoreError>;

    /// The number a shared `SELECT count(*)` selects.
    async fn count(&mut self, sql: &'static str, params: &[Param<'_>]) -> Result<u64, StoreError>;

    /// The import keys a shared statement selects (one integer column).
    async fn import_keys(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<Vec<ImportKey>, StoreError>;

    /// Runs a statement on an import's file keys table (`claims`), which takes no parameter;
    /// the number of rows it changed.
    async fn execute_claims(&mut self, sql: &ClaimsSql) -> Result<u64, StoreError>;

    /// The number a `SELECT count(*)` on an import's file keys table selects.
    async fn count_claims(&mut self, sql: &ClaimsSql) -> Result<u64, StoreError>;

    /// Notes in `seen` each row a `SELECT email, external_id, released_external_id` on an
    /// import's file keys table selects, as they come (`claims::remember`).
    async fn remember_claims(
        &mut self,
        sql: &ClaimsSql,
        seen: &crate::store::SeenValues,
    ) -> Result<(), StoreError>;

    /// Whether the file keys table `table` (named by `claims`) exists, and of which kind
    /// (`claims::ensure`).
    async fn claims_table(&mut self, table: &str) -> Result<ClaimsTable, StoreError>;

    /// Tells the followers of these imports on other servers that they changed, once the
    /// transaction commits. Nothing to do where one server runs.
    async fn changed(&mut self, keys: &[ImportKey]) -> Result<(), StoreError>;

    /// The backend's dialect, for the few shared statements that must name the current time
    /// in a time column (`invitations`, `events`).
    fn dialect(&self) -> Dialect;

    /// Takes the user event feed's turn, until this transaction ends (`events`): on
    /// PostgreSQL an advisory lock, so that transactions that write events commit in the order
    /// of their events' `seq`; SQLite's one writer has that order already.
    async fn events_turn(&mut self) -> Result<(), StoreError>;

    /// Counts `events` written to the feed in this transaction: added to
    /// `Store::events_written` if it commits.
    fn told(&mut self, events: u64);

    // Reverts.

    /// The import's status and whether it was reverted before, held for this transaction;
    /// `None` when there is no such import.
    ///
    /// Held: PostgreSQL locks the row (`FOR UPDATE`), so that two reverts, or a revert and an
    /// ending, take turns; SQLite's write transaction holds the whole database anyway.
    async fn revert_state(&mut self, key: ImportKey) -> Result<Option<RevertState>, StoreError>;

    /// Of the users import `key` created, how many another import has updated since, and the
    /// id of an import among those that still runs.
    ///
    /// The count is what a revert keeps; a running updater makes the revert wait
    /// (`BeingUpdated`), since its ending decides whether those users keep its values.
    async fn updated_by_others(
        &mut self,
        key: ImportKey,
    ) -> Result<(u64, Option<String>), StoreError>;

    /// Deletes the users import `key` created that no other import has updated since and
    /// that did not accept their invitation; how many.
    async fn delete_reverted(&mut self, key: ImportKey) -> Result<u64, StoreError>;

    /// Sets the import's revert time and note, unless it has them from an earlier revert.
    async fn note_revert(&mut self, key: ImportKey, note: &str) -> Result<Import, StoreError>;

    // Batches.

    /// Holds import `key` for this transaction's writes if it is PROCESSING: another server
    /// cannot end it meanwhile. `false` when it is not PROCESSING.
    ///
    /// SQLite's `BEGIN IMMEDIATE` already holds the whole database, so this only reads the
    /// status; PostgreSQL takes a key share lock, which the parts of one batch written at once
    /// may all hold and which the reaper's `FOR UPDATE SKIP LOCKED` passes by.
    async fn lock_processing(&mut self, key: ImportKey) -> Result<bool, StoreError>;

    /// Who holds each of `values` in `column` (email or external_id) in the account.
    ///
    /// A value nobody holds is missing from the map: its holder may have gone between the insert
    /// that was refused and this lookup. Empty `values`, empty map, without a query.
    async fn holders(
        &mut self,
        account: AccountKey,
        column: Column,
        values: &[&str],
    ) -> Result<HashMap<String, Holder>, StoreError>;

    /// Stores the progress of import `key` and where its file stands (and renews its life
    /// sign); `false` when it is not PROCESSING or waits for a resume (its upload stopped
    /// here), with nothing changed.
    ///
    /// `record` runs it first: `false` means `NotProcessing`, and its transaction rolls back.
    async fn store_progress(
        &mut self,
        key: ImportKey,
        progress: &Counters,
        format: Option<TextFormat>,
        committed: &Committed<'_>,
    ) -> Result<bool, StoreError>;

    // Resumable uploads (`resume`).

    /// Makes a running import wait for its client, if `guard` holds (`Guard::Processing` or
    /// `Guard::Abandoned`): its deadline `window` from now, no owner, and its bytes received
    /// back at `committed_bytes`. `None`, with nothing changed, when it is not running.
    async fn set_waiting(
        &mut self,
        key: ImportKey,
        window: std::time::Duration,
        guard: Guard,
    ) -> Result<Option<Import>, StoreError>;

    /// Takes a waiting import for this server, if it waits and its `committed_bytes` is
    /// `offset`: no deadline, this server its owner. The import, the reader's state and the
    /// rows up to `committed_bytes`; `None`, with nothing changed, otherwise.
    async fn claim_waiting(
        &mut self,
        key: ImportKey,
        offset: u64,
    ) -> Result<Option<(Import, Option<String>, u64)>, StoreError>;

    /// Removes the users of import `key` past spreadsheet row `rows`: written by parts of a
    /// batch whose record never committed (PostgreSQL writes a batch's users and its record in
    /// separate transactions). Nothing on SQLite, whose batches are one transaction each.
    async fn drop_unrecorded(&mut self, key: ImportKey, rows: u64) -> Result<(), StoreError>;

    /// Stores row errors, numbered from `first_seq`.
    ///
    /// In the order given, which is file order; the caller has already cut them to the import's
    /// cap, so every one given is stored.
    async fn insert_row_errors(
        &mut self,
        key: ImportKey,
        first_seq: u64,
        errors: &[RowError],
    ) -> Result<(), StoreError>;

    /// Keeps the cells of failed rows, for the error report.
    async fn insert_failed_rows(
        &mut self,
        key: ImportKey,
        lines: &[FailedLine<'_>],
    ) -> Result<(), StoreError>;

    /// What a planned batch must know before it is decided: the account's users and the
    /// import's file keys that hold one of the values `lookups` lists (`plan::lookups`).
    async fn known(
        &mut self,
        target: &BatchTarget<'_>,
        lookups: &Lookups<'_>,
    ) -> Result<Known, StoreError>;

    /// Writes what a plan says, in this order: updates (an update may free an external id a
    /// later row takes), inserts, then the values rows took in the file. The batch indexes of
    /// the inserts the unique indexes refused.
    async fn apply(
        &mut self,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
        plan: &Plan<'_>,
    ) -> Result<Vec<usize>, StoreError>;

    // The rekeying of old addresses.

    /// The stored users whose address has a non-ASCII character (the only ones a new key
    /// form can change), oldest first: account and address.
    async fn non_ascii_emails(&mut self) -> Result<Vec<(String, String)>, StoreError>;

    // Retention.

    /// Whether this server may remove details now: on PostgreSQL one replica at a time (a lock
    /// of the transaction, so a step of two replicas never races); one server holds a SQLite
    /// file, so there always.
    async fn retention_turn(&mut self) -> Result<bool, StoreError>;

    /// Marks import `key`'s details removed: `details_removed_time` set to the transaction's
    /// time unless it was set before, and `details_left` set until the removal is over.
    /// `false`, with nothing changed, when the removal was over already: another replica
    /// finished it after this one listed the import.
    async fn details_removed(&mut self, key: ImportKey) -> Result<bool, StoreError>;
}
