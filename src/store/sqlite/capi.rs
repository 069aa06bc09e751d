//! The SQLite hot path: a batch's users inserted, updated and looked up through SQLite's C
//! API, on the handle of the sqlx connection that holds the write transaction.
//!
//! Why not sqlx here: sqlx binds every value through a fresh `Arc<String>` and hands each
//! statement to the connection's worker thread; for millions of rows, those allocations and
//! thread hand-offs were most of the CPU time (perf: malloc/free about 15%, memmove 7%, context
//! switches 7%). Here one prepared statement is stepped once per row with every text bound in
//! place (`SQLITE_STATIC`: no copy), the way `sqlite3 .import` does it, and `sqlite3_changes`
//! says at once whether `ON CONFLICT DO NOTHING` refused the row.
//!
//! Soundness rests on two borrows the types carry: the `LockedSqliteHandle` keeps sqlx's
//! worker off the connection while it is used here, and a `Statement<'data>` only accepts
//! text that lives for `'data`, which outlives the statement, so SQLite never reads a value
//! bound without a copy after it was freed.
//!
//! Errors come back as `SqliteFailure`, with SQLite's extended result code, and `on_handle`
//! classifies them like any other SQLite error (`StoreError::from_sqlite_code`): a full disk on
//! this path is the same `Fault` as on sqlx's.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::LazyLock;

use libsqlite3_sys as ffi;
use sqlx::sqlite::LockedSqliteHandle;

use crate::domain::{Column, UserBatch};
use crate::store::claims;
use crate::store::conflicts::Holder;
use crate::store::lookup::{self, ExistingRow, FileKeyRow, HolderRow, Match, Running, RunningRow};
use crate::store::plan::{self, Claim, Existing, FileKey, Lookups, Update};

use super::statement::{SqliteFailure, Statement};

/// One user; `ON CONFLICT DO NOTHING` lets the unique indexes refuse a row without failing the
/// statement, and `sqlite3_changes` then says 0. Positional `?N` parameters, bound by number
/// below.
const INSERT_USER: &str = "INSERT INTO users (account_key, email, first_name, last_name, role, \
    job_title, external_id, import_key, source_row, create_time) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING";

/// One user's update with its row's non-empty cells (an empty cell, bound as NULL, keeps the
/// stored value), keeping the values it replaces in the row's `old_*` columns for an import
/// that fails or is cancelled (`store::ending`): SQLite reads every right-hand side from the
/// row as it was. Only when the row changes something, so that 0 changes tells a row that
/// does not.
///
/// `OR FAIL`, not the default `ABORT`: a statement that may abort halfway makes SQLite keep a
/// statement journal, a copy of every page it touches, so that the failure could undo it; this
/// one changes at most one row (found by its rowid), and a failure fails the whole batch's
/// transaction anyway.
const UPDATE_USER: &str = "UPDATE OR FAIL users SET old_first_name = first_name, \
    old_last_name = last_name, old_role = role, old_job_title = job_title, \
    old_external_id = external_id, old_update_time = update_time, old_updated_by = updated_by, \
    first_name = coalesce(?3, first_name), last_name = coalesce(?4, last_name), \
    role = coalesce(?5, role), job_title = coalesce(?6, job_title), \
    external_id = coalesce(?7, external_id), update_time = ?8, updated_by = ?9 \
    WHERE rowid = ?10 AND account_key = ?1 AND email = ?2 \
    AND (first_name IS NOT coalesce(?3, first_name) OR last_name IS NOT coalesce(?4, last_name) \
         OR role IS NOT coalesce(?5, role) OR job_title IS NOT coalesce(?6, job_title) \
         OR external_id IS NOT coalesce(?7, external_id))";

/// The lookups, built once from the statements both backends share (`store::lookup`).
struct Statements {
    /// Existing users by email (`lookup::existing_users`): without their other values, then
    /// with them, indexed by `Lookups::user_values`.
    users_by_email: [String; 2],
    /// Existing users by external id, likewise.
    users_by_external_id: [String; 2],
    /// Holders of a refused email (`lookup::holders`).
    holders_by_email: String,
    /// Holders of a refused external id.
    holders_by_external_id: String,
}

/// Built on first use and kept: the statements are the same for every batch, only their
/// preparation is per batch.
static LOOKUPS: LazyLock<Statements> = LazyLock::new(|| Statements {
    users_by_email: [false, true]
        .map(|values| lookup::existing_users(Column::Email, Match::One, values)),
    users_by_external_id: [false, true]
        .map(|values| lookup::existing_users(Column::ExternalId, Match::One, values)),
    holders_by_email: lookup::holders(Column::Email, Match::One),
    holders_by_external_id: lookup::holders(Column::ExternalId, Match::One),
});

/// What inserting a batch did.
pub(super) struct Inserted {
    /// Indexes (in the batch) of the users the unique indexes refused.
    pub refused: Vec<usize>,
    /// The rowids given to the users inserted: consecutive, as this connection is the only
    /// writer while the transaction lasts.
    pub rowids: Option<(i64, i64)>,
}

/// The import a batch is written for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target<'a> {
    /// The account the users go into (`lookup::RUNNING_IMPORTS` reads its imports by it).
    pub account_id: &'a str,
    /// Its key in the users table (`store::accounts`).
    pub account_key: i64,
    /// The import that writes them.
    pub import_key: i64,
    /// Microseconds since the Unix epoch.
    pub now: i64,
}

/// Inserts the users of `batch` at `indexes`, in that order. The caller holds the write
/// transaction on this connection.
///
/// One statement prepared per call and stepped once per user. Rowids are followed from the first
/// user inserted to the last, for `ranges::record`.
pub(super) fn insert_users(
    handle: &mut LockedSqliteHandle<'_>,
    target: Target<'_>,
    batch: &UserBatch,
    indexes: impl Iterator<Item = usize>,
) -> Result<Inserted, SqliteFailure> {
    let db = handle.as_raw_handle();
    // SAFETY: the locked handle gives us the connection alone for as long as it is borrowed,
    // which covers every use of `db` and of the statement in this function.
    let mut statement = unsafe { Statement::prepare(db, INSERT_USER)? };
    let mut refused = Vec::new();
    let mut rowids: Option<(i64, i64)> = None;
    for index in indexes {
        let user = batch.user(index);
        statement.int(1, target.account_key)?;
        statement.text(2, user.email)?;
        statement.text(3, user.first_name)?;
        statement.text(4, user.last_name)?;
        statement.text(5, user.role.as_str())?;
        statement.text(6, user.job_title)?;
        statement.optional_text(7, user.external_id)?;
        statement.int(8, target.import_key)?;
        statement.int(9, user.row_number as i64)?;
        statement.int(10, target.now)?;
        if statement.execute()? {
            // SAFETY: `db` is valid and ours alone (see above).
            let rowid = unsafe { ffi::sqlite3_last_insert_rowid(db.as_ptr()) };
            rowids = Some(rowids.map_or((rowid, rowid), |(first, _)| (first, rowid)));
        } else {
            refused.push(index);
        }
    }
    Ok(Inserted { refused, rowids })
}

/// Updates the users of `updates` with their rows' non-empty cells, keeping the values they
/// replace. The caller holds the write transaction.
///
/// One statement per user (`UPDATE_USER`), which finds the user by the rowid its lookup read in
/// this transaction and checks that it is still the account's user of that address.
pub(super) fn update_users(
    handle: &mut LockedSqliteHandle<'_>,
    target: Target<'_>,
    batch: &UserBatch,
    updates: &[Update],
) -> Result<(), SqliteFailure> {
    let db = handle.as_raw_handle();
    // SAFETY: as in `insert_users`.
    let mut update = unsafe { Statement::prepare(db, UPDATE_USER)? };
    for &Update { index, row_id, .. } in updates {
        // SQLite's lookups always read it (`lookup::Match::row_id`): a plan without it is a bug,
        // told rather than written as an update that finds nothing.
        let row_id = row_id.ok_or_else(|| not_found("was looked up without its rowid"))?;
        let user = batch.user(index);
        let cells = plan::Cells::of(&user);
        update.int(1, target.account_key)?;
        update.text(2, user.email)?;
        update.optional_text(3, cells.first_name)?;
        update.optional_text(4, cells.last_name)?;
        update.optional_text(5, cells.role)?;
        update.optional_text(6, cells.job_title)?;
        update.optional_text(7, cells.external_id)?;
        update.int(8, target.now)?;
        update.int(9, target.import_key)?;
        update.int(10, row_id)?;
        // The plan lists only rows that change something (`plan::Existing::changed_by`, which
        // compares as this statement does, on values read in this transaction): an update that
        // finds nothing is a bug, told rather than counted as an update.
        if !update.execute()? {
            return Err(not_found("was not found again, or changes nothing"));
        }
    }
    Ok(())
}

/// An update's user not where its lookup found it: a bug, which fails the batch.
fn not_found(what: &str) -> SqliteFailure {
    SqliteFailure {
        code: ffi::SQLITE_INTERNAL,
        message: format!("an updated user {what}"),
    }
}

/// Records the values that rows not inserted as users took in the file, in the import's own
/// table (`claims`).
///
/// A file key already there fails the batch (`AlreadyExists`, from the table's unique keys):
/// the plan never claims a value twice, so that would be a bug.
pub(super) fn insert_file_keys(
    handle: &mut LockedSqliteHandle<'_>,
    import_key: i64,
    claims: &[Claim<'_>],
) -> Result<(), SqliteFailure> {
    let db = handle.as_raw_handle();
    let sql = claims::insert(import_key);
    // SAFETY: as in `insert_users`.
    let mut insert = unsafe { Statement::prepare(db, sql.as_str())? };
    // In the table's order (generation, then email): each insert lands beside the one before,
    // on a page still in the cache. Distinct values, so the order changes nothing else.
    let mut sorted: Vec<(i64, &Claim<'_>)> = claims
        .iter()
        .map(|claim| (claims::generation(claim.row_number), claim))
        .collect();
    sorted.sort_unstable_by_key(|&(generation, claim)| (generation, claim.email));
    for (generation, claim) in sorted {
        insert.int(1, generation)?;
        insert.text(2, claim.email)?;
        insert.optional_text(3, claim.external_id)?;
        insert.int(4, claim.row_number as i64)?;
        insert.optional_text(5, claim.released_external_id)?;
        insert.execute()?;
    }
    Ok(())
}

/// The account's users that hold one of `emails` or `external_ids`: a point lookup per value
/// on the unique indexes, cheaper than `IN` lists bound through sqlx.
///
/// External ids are looked up only when no user found by email holds them
/// (`plan::ids_not_found`); a user that holds an email of the batch and another row's external
/// id may still be found twice, which the plan copes with (`plan::Holders`).
pub(super) fn existing_users(
    handle: &mut LockedSqliteHandle<'_>,
    account: Target<'_>,
    lookups: &Lookups<'_>,
) -> Result<Vec<Existing>, SqliteFailure> {
    let db = handle.as_raw_handle();
    let with_values = usize::from(lookups.user_values);
    let mut found = Vec::new();
    for by_email in [true, false] {
        let (sql, values): (_, Cow<'_, [&str]>) = if by_email {
            (
                &LOOKUPS.users_by_email[with_values],
                Cow::Borrowed(&lookups.user_emails),
            )
        } else {
            (
                &LOOKUPS.users_by_external_id[with_values],
                plan::ids_not_found(&lookups.user_ids, &found).into(),
            )
        };
        // SAFETY: as in `insert_users`.
        let mut lookup = unsafe { Statement::prepare(db, sql)? };
        for value in values.iter() {
            lookup.int(1, account.account_key)?;
            lookup.text(2, value)?;
            lookup.rows(|row| {
                let columns: ExistingRow = (
                    row.text(0).unwrap_or_default(),
                    row.text(1),
                    row.int(2),
                    row.int(3),
                    row.optional_int(4),
                    row.optional_int(5),
                    row.text(6).unwrap_or_default(),
                    row.text(7).unwrap_or_default(),
                    row.text(8).unwrap_or_default(),
                    row.text(9).unwrap_or_default(),
                );
                found.push(Existing::from(columns));
            })?;
        }
    }
    if found.is_empty() {
        return Ok(found);
    }
    // After the users, as on PostgreSQL (`Existing::noting`); here the write transaction
    // holds the database, so nothing changes in between anyway.
    let running = running_imports(handle, account.account_id)?;
    Ok(found
        .into_iter()
        .map(|user| user.noting(&running))
        .collect())
}

/// The account's imports still running (`lookup::RUNNING_IMPORTS`).
fn running_imports(
    handle: &mut LockedSqliteHandle<'_>,
    account_id: &str,
) -> Result<Running, SqliteFailure> {
    let db = handle.as_raw_handle();
    // SAFETY: as in `insert_users`.
    let mut running = unsafe { Statement::prepare(db, lookup::RUNNING_IMPORTS)? };
    running.text(1, account_id)?;
    let mut imports = Running::default();
    running.rows(|row| {
        let (key, id): RunningRow = (row.int(0), row.text(1).unwrap_or_default());
        imports.insert(key, id);
    })?;
    Ok(imports)
}

/// Who holds each of `values` in `column` in the account: a point lookup per value.
pub(super) fn holders(
    handle: &mut LockedSqliteHandle<'_>,
    account_key: i64,
    column: Column,
    values: &[&str],
) -> Result<HashMap<String, Holder>, SqliteFailure> {
    let db = handle.as_raw_handle();
    // The unique values: email, or else external_id.
    let sql = if column == Column::Email {
        &LOOKUPS.holders_by_email
    } else {
        &LOOKUPS.holders_by_external_id
    };
    // SAFETY: as in `insert_users`.
    let mut lookup = unsafe { Statement::prepare(db, sql)? };
    let mut rows: Vec<HolderRow> = Vec::new();
    for value in values {
        lookup.int(1, account_key)?;
        lookup.text(2, value)?;
        lookup.rows(|row| {
            rows.push((
                row.text(0).unwrap_or_default(),
                row.int(1),
                row.int(2),
                row.text(3),
            ))
        })?;
    }
    Ok(lookup::holders_by_value(rows))
}

/// The file keys of import `import_key` that hold one of the claimed emails or external ids of
/// `lookups`, or released one of its released ids: a point lookup per value and generation.
pub(super) fn file_keys(
    handle: &mut LockedSqliteHandle<'_>,
    import_key: i64,
    lookups: &Lookups<'_>,
) -> Result<Vec<FileKey>, SqliteFailure> {
    let db = handle.as_raw_handle();
    let mut found = Vec::new();
    for (column, values) in lookups.of_file_keys() {
        let sql = claims::lookup(import_key, column, Match::One);
        // SAFETY: as in `insert_users`.
        let mut lookup = unsafe { Statement::prepare(db, sql.as_str())? };
        // Generation by generation, the values in order: each walks its part of the b-tree.
        for (generation, value) in lookups
            .generations
            .clone()
            .flat_map(|g| values.iter().map(move |value| (g, value)))
        {
            lookup.text(1, value)?;
            lookup.int(2, generation)?;
            lookup.rows(|row| {
                let columns: FileKeyRow = (
                    row.text(0).unwrap_or_default(),
                    row.text(1),
                    row.int(2),
                    row.text(3),
                );
                found.push(FileKey::from(columns));
            })?;
        }
    }
    Ok(found)
}
