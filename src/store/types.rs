//! The values that cross the store's trait: what a batch is written for and what writing it
//! did, how an import ends and what must still hold when that is stored, and the rows the
//! queries return. Both backends take and give exactly these, so the layers above never see a
//! backend's own types.

use std::time::{Duration, SystemTime};

use super::SeenValues;

use crate::domain::{
    AccountId, ConflictPolicy, Counters, Import, ImportKey, ImportStatus, InvitationState, Role,
    RowError, TextFormat, UserEventKind,
};

/// What writing one batch did.
///
/// Counts of this batch only, never totals: `applied_to` turns them into the import's counters. A
/// dry run counts what a real import would have written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Users inserted (a dry run: users that would have been).
    pub imported: u64,
    /// Valid rows refused by a uniqueness rule (DUPLICATE_IN_FILE or ALREADY_EXISTS).
    pub conflicts: u64,
    /// Rows whose user exists and was left alone (SKIP).
    pub skipped: u64,
    /// Rows whose user exists and was updated (UPDATE).
    pub updated: u64,
    /// Row errors stored, validation and conflict errors together.
    pub errors_stored: u64,
    /// Row errors left out because the import reached its cap.
    pub errors_omitted: u64,
}

impl BatchOutcome {
    /// The counters once this batch is written, from those before it: the one place where a
    /// write moves counters. The store applies it once per batch, to the progress it stores
    /// with the batch, and hands that progress back (`BatchWritten`).
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

/// A batch as committed: what it did, and the progress stored with it.
///
/// The pipeline keeps `progress` as the counters stored so far, and `outcome.errors_stored` to
/// number the next batch's errors. The live view of the upload shows exactly `progress`, so
/// that its counters add up and never go back, whichever replica answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchWritten {
    /// What this batch did, counted as the store counted it.
    pub outcome: BatchOutcome,
    /// `outcome.applied_to(target.progress)`, as stored: what other replicas now read.
    pub progress: Counters,
}

/// An account's key in the users table (`Store::account_key`): a small integer, which the
/// users' unique indexes compare and store in place of the account's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountKey(pub(crate) i32);

/// Where a batch goes, how its errors are numbered, and the progress stored with it.
///
/// Built by the pipeline's writer for each batch; the store reads it, never keeps it.
#[derive(Debug, Clone)]
pub struct BatchTarget<'a> {
    /// The import the batch belongs to.
    pub key: ImportKey,
    /// Its account: uniqueness is per account.
    pub account_id: &'a AccountId,
    /// The account's key (`Store::account_key`): what the batch's users are written and
    /// looked up with.
    pub account_key: AccountKey,
    /// Sequence number of the first row error this batch stores: errors are read back in
    /// this order, which is file order.
    pub next_error_seq: u64,
    /// How many more row errors may be stored for this import.
    pub error_budget: u64,
    /// The upload's counters before this batch's write (its rows are already read): the store
    /// saves `BatchOutcome::applied_to(progress)` with the batch, for readers elsewhere.
    pub progress: Counters,
    /// Where the file stands once the batch is stored: stored with it, in its transaction.
    pub committed: Committed<'a>,
    /// How the file's text is written, as far as the reader knew when the batch was cut.
    pub format: Option<TextFormat>,
    /// What becomes of a row whose user exists.
    pub on_conflict: ConflictPolicy,
    /// A dry run: every check, no user written.
    pub validate_only: bool,
    /// The values the import's planned batches took so far (a resumed upload's noted from the
    /// store first): most lookups of earlier rows' values are skipped. `None` for a plain
    /// import, which looks nothing up.
    pub seen: Option<&'a SeenValues>,
}

/// Where a file stands once a batch is stored: the end of its last row, and, for a resumable
/// upload, the reader's state there (`import::checkpoint`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Committed<'a> {
    /// The offset in the file just after the batch's last row (`Import.committed_bytes`).
    pub bytes: u64,
    /// Spreadsheet rows up to there.
    pub rows: u64,
    /// The reader's state there, as stored text; `None` for an upload that is not resumable.
    pub state: Option<&'a str>,
}

/// A waiting import taken by a resume (`Store::claim_import`): what its upload goes on with.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The import, PROCESSING and no longer waiting, with the progress of its last batch.
    pub import: Import,
    /// The reader's state at `committed_bytes`; `None` when no batch was stored (the upload
    /// starts again from byte 0).
    pub state: Option<String>,
    /// Row errors stored so far: the next one's sequence number.
    pub errors_stored: u64,
}

/// How an import ends: decided once, by the import layer's ending (`import::ending`), and
/// stored as it is by `Store::conclude_import`, on either backend.
///
/// Built only by [`Conclusion::new`], which applies the one rule for the counters of an
/// ending (`Counters::ended_as`): what is stored, what the live view shows while the ending
/// waits, and what the metrics count are then the same numbers.
///
/// The fields are private so that no caller can store counters that disagree with the status.
#[derive(Debug, Clone, PartialEq)]
pub struct Conclusion {
    status: ImportStatus,
    counters: Counters,
    format: Option<TextFormat>,
    error_message: String,
}

impl Conclusion {
    /// The ending with `status`, from the counters the import reached.
    pub fn new(
        status: ImportStatus,
        reached: Counters,
        format: Option<TextFormat>,
        error_message: String,
    ) -> Self {
        Self {
            status,
            counters: reached.ended_as(status),
            format,
            error_message,
        }
    }

    /// The same ending, told with another message.
    pub fn with_message(self, error_message: String) -> Self {
        Self {
            error_message,
            ..self
        }
    }

    /// The terminal status.
    pub fn status(&self) -> ImportStatus {
        self.status
    }

    /// The counters as stored: see `Counters::ended_as`.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// How the file's text was written, when that was known.
    pub fn format(&self) -> Option<TextFormat> {
        self.format
    }

    /// Why the import did not complete; empty for a completion.
    pub fn error_message(&self) -> &str {
        &self.error_message
    }

    /// A status that is not a completion (ERROR_*, CANCELLED) removes the import's users and
    /// undoes its updates: nothing of a failed import stays.
    pub fn removes_users(&self) -> bool {
        !self.status.is_completed()
    }

    /// The import as it is once this ending is stored, from the import as it was.
    pub fn applied_to(&self, import: &Import, at: SystemTime) -> Import {
        Import {
            status: self.status,
            counters: self.counters,
            format: self.format,
            error_message: self.error_message.clone(),
            update_time: at,
            complete_time: Some(at),
            ..import.clone()
        }
    }
}

/// What must still hold for an ending to be stored.
///
/// The guard is checked in the same statement that sets the status, so that two servers that both
/// try to end an import cannot both succeed: the second gets `NotProcessing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// The server that runs the import ends it: it must still be PROCESSING.
    Processing,
    /// Another server ends it for a server that is gone: it must still be PROCESSING, show
    /// the life sign it showed when it was judged abandoned (a live server renews it), and not
    /// be in the middle of a write (which a live server would be doing).
    Abandoned(LifeSign),
    /// It waits for its client to resume its upload (no server drives it): it must still be
    /// waiting, and with `expired`, its deadline must have passed, so that a resume that took
    /// it meanwhile (and a new wait after it) keeps it.
    Waiting {
        /// Its deadline must have passed.
        expired: bool,
    },
}

/// What shows that a server still drives a PROCESSING import.
///
/// What `Guard::Abandoned` checks again when the ending is stored: the heartbeat must be the one
/// seen when the import was judged, and an owner lock that was gone then must still be gone, or
/// its server is alive after all and the ending is not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LifeSign {
    /// Its last heartbeat, in microseconds since the Unix epoch: the server that runs it
    /// renews it every few seconds, and with every batch. `None` where there is none (SQLite,
    /// whose one server holds the file's lock).
    pub heartbeat: Option<i64>,
    /// Whether the owner lock of the server that runs it is held (PostgreSQL): a dead
    /// process's lock goes with its connection at once.
    pub owner_alive: bool,
}

/// A PROCESSING import, as `Store::processing` finds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Processing {
    /// The import as stored, with the progress of its last batch.
    pub import: Import,
    /// Whether its server is alive, as far as the store can tell.
    pub sign: LifeSign,
}

/// Where a page of the Imports list starts: after this import, in the list's order (newest
/// `create_time` first, ties by `import_id`, also descending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportCursor {
    /// `create_time` in microseconds since the Unix epoch, as stored.
    pub create_micros: i64,
    /// The last import's id, for ties of `create_time`.
    pub import_id: String,
}

impl ImportCursor {
    /// The cursor of the page that follows `import`.
    pub fn after(import: &Import) -> Self {
        Self {
            create_micros: super::codec::micros(import.create_time),
            import_id: import.import_id.to_string(),
        }
    }
}

/// What one step of the retention removed of an import (`Store::remove_details`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    /// Row errors deleted.
    pub row_errors: u64,
    /// Failed rows' cells deleted.
    pub failed_rows: u64,
    /// None remain: the removal is over.
    pub done: bool,
    /// It was over before this step: another replica finished it after this one listed the
    /// import. Nothing was done, and nothing is to be counted.
    pub gone_before: bool,
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
    /// This call reverted the import; `false` when an earlier revert had (this one removed
    /// nothing, and the note is the first revert's).
    pub first: bool,
}

/// A user of an account, as `ListUsers` shows it.
///
/// Only users of completed imports are listed: those of a running import may yet go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    /// As stored: the normalised address.
    pub email: String,
    /// The first name as last written, by the creating import or a later update.
    pub first_name: String,
    /// The last name as last written.
    pub last_name: String,
    /// The role as last written.
    pub role: Role,
    /// The job title as last written; empty when none was given.
    pub job_title: String,
    /// The id in the account's own system, unique in the account when present; `None` when no row
    /// gave one.
    pub external_id: Option<String>,
    /// The import that created the user.
    pub import_id: String,
    /// When the creating import wrote the user.
    pub create_time: SystemTime,
    /// When an UPDATE import last changed the user; its `create_time` when none has.
    pub update_time: SystemTime,
    /// Where its invitation stands.
    pub invitation_state: InvitationState,
    /// When the last invitation went out; `None` while HELD.
    pub invite_time: Option<SystemTime>,
    /// Invitations sent: 1 once invited, one more per resend.
    pub invitations_sent: u32,
}

/// The cells of a failed row, in template column order, as the file had them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedCells {
    /// The row's spreadsheet number.
    pub row_number: u64,
    /// email, first_name, last_name, role, job_title, external_id.
    pub cells: [String; 6],
    /// Why it failed: every error of the row, as the fix-up file's `errors` column says them.
    pub errors: String,
}

/// A stored row error with its position, for paging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRowError {
    /// Its place among the import's stored errors, which is file order.
    pub seq: u64,
    /// The error as the import stored it: row, column, code, message and value.
    pub error: RowError,
}

/// How the pipeline should cut batches for a store.
///
/// Given by `Store::batching`: the figures are each backend's, measured where it says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Rows per batch, and so per write.
    pub rows: usize,
    /// A batch that is not full is still written this long after the writer took the last
    /// one: a quiet client must not hold batch memory, and other replicas read progress from
    /// the stored counters.
    pub flush_after: Option<Duration>,
}

/// Settings of the embedded backend that tests and operators may need; PostgreSQL ignores them.
///
/// The default waits 30 s for a lock and leaves the file unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// How long an SQLite write waits for a lock held by another process.
    pub busy_timeout: Duration,
    /// Caps the SQLite file at this many pages (`PRAGMA max_page_count`): past it, writes fail
    /// as on a full disk. For tests of that fault, and to bound the file.
    pub max_pages: Option<u64>,
    /// PostgreSQL: file keys per planned batch from which part of them go on a second
    /// connection (`postgres::beside`). For tests, which lower it so that small files exercise
    /// that path: no split may change an import's outcome.
    pub file_keys_beside_from: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(30),
            max_pages: None,
            file_keys_beside_from: 4096,
        }
    }
}

/// Which users `Store::list_users` returns: a page of them all, or of one import's, or of one
/// invitation state, or the one user with an address.
#[derive(Debug, Clone, Copy, Default)]
pub struct UserFilter<'a> {
    /// Only the users this import created.
    pub import: Option<ImportKey>,
    /// Only those whose invitation is in this state.
    pub state: Option<InvitationState>,
    /// Only the user with this stored address (a mailbox key).
    pub email: Option<&'a str>,
}

/// One event of the user feed (`Store::user_events`), with the user as the change left it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Its place in the feed: every later event has a larger one.
    pub seq: i64,
    /// The account of the user.
    pub account_id: String,
    /// The import that made the change (for an invitation sent or accepted, the user's).
    pub import_id: String,
    /// What happened.
    pub kind: UserEventKind,
    /// The user as the change left it (as it was, for a removal).
    pub user: StoredUser,
    /// When the change committed.
    pub event_time: SystemTime,
}

/// A row of the user feed as stored: an event, or a SEND import's commit, which stands for
/// one INVITED event per user it created (`Store::invited_at_commit` reads them).
#[derive(Debug, Clone, PartialEq)]
pub enum FeedRow {
    /// One event.
    Event(StoredEvent),
    /// A SEND import's commit.
    InvitedAtCommit {
        /// Its place in the feed.
        seq: i64,
        /// The import.
        import_key: ImportKey,
        /// Its account.
        account_id: String,
        /// Its id.
        import_id: String,
        /// When it committed: when its users were invited.
        event_time: SystemTime,
    },
}

/// A user an import's commit invited, as it is now (or was when a revert removed it).
#[derive(Debug, Clone, PartialEq)]
pub struct InvitedUser {
    /// As stored: the normalised address.
    pub email: String,
    /// The first name.
    pub first_name: String,
    /// The last name.
    pub last_name: String,
    /// The role.
    pub role: Role,
    /// The job title.
    pub job_title: String,
    /// The id in the account's own system.
    pub external_id: Option<String>,
    /// When the import wrote the user.
    pub create_time: SystemTime,
    /// When it last changed.
    pub update_time: SystemTime,
}

/// The user feed's name and bounds (`Store::feed_state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedState {
    /// This database's feed, named in every cursor and event id.
    pub feed: String,
    /// The highest `seq` the retention removed; 0 when none was.
    pub horizon: i64,
    /// The highest `seq` written (the horizon when none is kept).
    pub last: i64,
}

/// The relay's lease as its holder knows it (`Store::relay_lease`): the epoch it took, and the
/// feed's place up to which it has published (a cursor: `seq`, and within a commit's
/// invitations, `row`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLease {
    /// Taken with this epoch: its place is stored only while the epoch is still this one.
    pub epoch: i64,
    /// The feed's row up to which every event is published.
    pub seq: i64,
    /// Within a commit's invitations, the file row of the last user published.
    pub row: Option<i64>,
}

/// A step of the relay's lease (`Store::relay_lease`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStep<'a> {
    /// Take the lease for `lease`, if the last holder's ran out; the answer has its place.
    Take {
        /// This replica, as logs and the row name it.
        holder: &'a str,
        /// How long the lease lasts, by the database's clock.
        lease: std::time::Duration,
    },
    /// Keep the lease for `lease` more, with the place moved to `held`'s: `None` when
    /// another replica took it.
    Keep {
        /// The lease held, with the new place.
        held: RelayLease,
        /// How long the lease lasts from now.
        lease: std::time::Duration,
    },
    /// Give the lease up, for another replica to take at once.
    LetGo {
        /// The epoch it was taken with: a lease taken since by another is left alone.
        epoch: i64,
    },
}
