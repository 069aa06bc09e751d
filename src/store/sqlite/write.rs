//! Writing a batch inside the writer's transaction: its users through the C API hot path
//! (`insert`), the holders of the values the unique indexes refused, its row errors, and the
//! import's progress. Also the removal of a failed import's users, by the rowid ranges its
//! batches recorded.

use std::collections::HashMap;
use std::time::SystemTime;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use sqlx::sqlite::LockedSqliteHandle;

use super::capi;
use crate::domain::{AccountId, Column, ConflictPolicy, ImportKey, RowError, UserBatch};
use crate::store::codec::{format_columns, micros};
use crate::store::conflicts::{
    Holder, HolderRow, holder_lookup, holders_by_value, looked_up, merge_by_row, refusals,
};
use crate::store::{BatchOutcome, BatchTarget, StoreError};
use crate::store::{failed, policy};

/// SQLite allows 32,766 bound values per statement; 7 per row error.
const ERRORS_PER_STATEMENT: usize = 1000;
const LOOKUPS_PER_STATEMENT: usize = 500;

/// What writing a batch's users did, on either path.
struct Written {
    /// Users inserted (a dry run: that would have been).
    imported: u64,
    skipped: u64,
    updated: u64,
    /// Valid rows that failed on a conflict (indexes in the batch), in file order.
    conflicted: Vec<usize>,
    /// Their row errors and those of failed rows whose values are held, in file order.
    errors: Vec<RowError>,
}

/// A batch inside its transaction: users, row errors and failed rows' cells, then the
/// progress, which also tells whether the import still runs.
pub(super) async fn write_batch(
    conn: &mut SqliteConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
) -> Result<BatchOutcome, StoreError> {
    let now = micros(SystemTime::now());
    let written = match target.planned() {
        None => insert_users(conn, target, batch, now).await?,
        Some(mode) => write_planned(conn, target, mode, batch, now).await?,
    };
    let errors = merge_by_row(&batch.errors, written.errors);
    let stored = (errors.len() as u64).min(target.error_budget) as usize;
    insert_errors(conn, target.key, target.next_error_seq, &errors[..stored]).await?;
    let lines = failed::lines(batch, &written.conflicted, &errors[..stored]);
    insert_failed_rows(conn, target.key, &lines).await?;
    let outcome = BatchOutcome {
        imported: written.imported,
        conflicts: written.conflicted.len() as u64,
        skipped: written.skipped,
        updated: written.updated,
        errors_stored: stored as u64,
        errors_omitted: (errors.len() - stored) as u64,
    };
    let progress = outcome.applied_to(target.progress);
    let (encoding, delimiter) = format_columns(target.format);
    let updated = sqlx::query(
        "UPDATE imports SET bytes_received = ?1, rows_processed = ?2, rows_imported = ?3, \
         rows_failed = ?4, row_errors_omitted = ?5, encoding = ?6, delimiter = ?7, \
         update_time = ?8, rows_skipped = ?10, rows_updated = ?11 \
         WHERE import_key = ?9 AND status = 'PROCESSING'",
    )
    .bind(progress.bytes_received as i64)
    .bind(progress.rows_processed as i64)
    .bind(progress.rows_imported as i64)
    .bind(progress.rows_failed as i64)
    .bind(progress.row_errors_omitted as i64)
    .bind(encoding)
    .bind(delimiter)
    .bind(now)
    .bind(target.key)
    .bind(progress.rows_skipped as i64)
    .bind(progress.rows_updated as i64)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(StoreError::NotProcessing);
    }
    Ok(outcome)
}

/// Runs `work` on the connection's raw handle. A few milliseconds of SQLite work per thousand
/// rows: tell the runtime, so that other tasks move to another worker meanwhile. No `.await`
/// between taking the handle and finishing with it, so the handle cannot be released early by
/// a cancellation.
async fn on_handle<T>(
    conn: &mut SqliteConnection,
    work: impl FnOnce(&mut LockedSqliteHandle<'_>) -> Result<T, capi::SqliteFailure>,
) -> Result<T, StoreError> {
    let mut handle = conn.lock_handle().await?;
    let run = || work(&mut handle);
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
        _ => run(),
    }
    .map_err(|e| StoreError::from_sqlite_code(e.code, e))
}

/// Keeps the rowids an import's users were given: its ending, or a revert, deletes them by
/// these ranges.
async fn record_rowids(
    conn: &mut SqliteConnection,
    key: ImportKey,
    rowids: Option<(i64, i64)>,
) -> Result<(), StoreError> {
    if let Some((first, last)) = rowids {
        sqlx::query(
            "INSERT INTO import_user_ranges (import_key, first_rowid, last_rowid) \
             VALUES (?1, ?2, ?3)",
        )
        .bind(key)
        .bind(first)
        .bind(last)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The plain import: inserts the batch's users and lets the unique indexes refuse; the row
/// errors for held values come from who holds them (see `conflicts::refusals`).
async fn insert_users(
    conn: &mut SqliteConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    now: i64,
) -> Result<Written, StoreError> {
    let account_id = target.account_id.as_str();
    let at = capi::Target {
        account_id,
        import_key: target.key,
        now,
    };
    let inserted = on_handle(conn, |handle| {
        capi::insert_users(handle, at, batch, 0..batch.len())
    })
    .await?;
    record_rowids(conn, target.key, inserted.rowids).await?;
    let errors = conflicts(conn, target, batch, &inserted.refused, true).await?;
    Ok(Written {
        imported: (batch.len() - inserted.refused.len()) as u64,
        skipped: 0,
        updated: 0,
        conflicted: inserted.refused,
        errors,
    })
}

/// A dry run, or the SKIP and UPDATE policies: looks up who holds the batch's values, decides
/// every row (`policy::decide`), then writes what the plan says: updates, then inserts (an
/// update may free an external id a later row takes), then the values the rows took in the
/// file.
async fn write_planned(
    conn: &mut SqliteConnection,
    target: &BatchTarget<'_>,
    mode: policy::Mode,
    batch: &UserBatch,
    now: i64,
) -> Result<Written, StoreError> {
    let account_id = target.account_id.as_str();
    let (emails, ids) = policy::values(batch);
    let released = mode.policy == ConflictPolicy::Update;
    let known = on_handle(conn, |handle| {
        Ok(policy::Known {
            users: capi::existing_users(handle, account_id, &emails, &ids)?,
            file_keys: capi::file_keys(handle, target.key, &emails, &ids, released)?,
        })
    })
    .await?;
    let plan = policy::decide(mode, batch, &known);
    let at = capi::Target {
        account_id,
        import_key: target.key,
        now,
    };
    let inserted = on_handle(conn, |handle| {
        capi::update_users(handle, at, batch, &plan.updates)?;
        let inserted = capi::insert_users(handle, at, batch, plan.inserts.iter().copied())?;
        capi::insert_file_keys(handle, target.key, &plan.claims)?;
        Ok(inserted)
    })
    .await?;
    record_rowids(conn, target.key, inserted.rowids).await?;
    // The plan was made in this transaction, which no other writer shares: a refusal here
    // would be a bug, but it is still told as a row error rather than lost.
    let refused_errors = conflicts(conn, target, batch, &inserted.refused, false).await?;
    let mut conflicted = plan.conflicted;
    conflicted.extend(&inserted.refused);
    conflicted.sort_unstable();
    Ok(Written {
        imported: plan.would_insert - inserted.refused.len() as u64,
        skipped: plan.skipped,
        updated: plan.updated,
        conflicted,
        errors: merge_by_row(&plan.errors, refused_errors),
    })
}

/// The row errors for the values that `refused` users (and, with `probes`, the batch's
/// failed rows) found held.
async fn conflicts(
    conn: &mut SqliteConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    refused: &[usize],
    probes: bool,
) -> Result<Vec<RowError>, StoreError> {
    if refused.is_empty() && (!probes || batch.probes().len() == 0) {
        return Ok(Vec::new());
    }
    let (emails, ids) = looked_up(batch, refused, probes);
    let by_email = holders(&mut *conn, target.account_id, Column::Email, emails).await?;
    let by_id = holders(&mut *conn, target.account_id, Column::ExternalId, ids).await?;
    Ok(refusals(
        target.key, batch, refused, probes, &by_email, &by_id,
    ))
}

/// Keeps the cells of the batch's failed rows, for the error report.
async fn insert_failed_rows(
    conn: &mut SqliteConnection,
    key: ImportKey,
    lines: &[failed::FailedLine<'_>],
) -> Result<(), StoreError> {
    // 8 values a row, within SQLite's 32,766 per statement.
    for part in lines.chunks(ERRORS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO import_failed_rows (import_key, row_number, email, first_name, \
             last_name, role, job_title, external_id) ",
        );
        query.push_values(part, |mut row, (row_number, cells)| {
            row.push_bind(key).push_bind(*row_number as i64);
            for cell in cells {
                row.push_bind(cell.clone().into_owned());
            }
        });
        let persistent = part.len() == ERRORS_PER_STATEMENT;
        query
            .build()
            .persistent(persistent)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Deletes the users an import wrote, by the rowid ranges its batches recorded.
pub(super) async fn delete_users(
    conn: &mut SqliteConnection,
    key: ImportKey,
) -> Result<(), StoreError> {
    let ranges: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT first_rowid, last_rowid FROM import_user_ranges WHERE import_key = ?1",
    )
    .bind(key)
    .fetch_all(&mut *conn)
    .await?;
    for (first, last) in ranges {
        sqlx::query("DELETE FROM users WHERE rowid BETWEEN ?1 AND ?2")
            .bind(first)
            .bind(last)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query("DELETE FROM import_user_ranges WHERE import_key = ?1")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Who holds each of `values` in `column` (email or external_id) in the account.
async fn holders(
    conn: &mut SqliteConnection,
    account_id: &AccountId,
    column: Column,
    values: Vec<&str>,
) -> Result<HashMap<String, Holder>, StoreError> {
    let mut found = HashMap::with_capacity(values.len());
    for part in values.chunks(LOOKUPS_PER_STATEMENT) {
        let mut query = QueryBuilder::<Sqlite>::new(holder_lookup(column));
        query.push_bind(account_id.as_str().to_owned());
        query.push(format!(" AND u.{} IN (", column.name()));
        let mut list = query.separated(", ");
        for value in part {
            list.push_bind((*value).to_owned());
        }
        query.push(")");
        // Not cached: the statement's length varies with the number of values.
        let rows: Vec<HolderRow> = query
            .build_query_as()
            .persistent(false)
            .fetch_all(&mut *conn)
            .await?;
        found.extend(holders_by_value(rows));
    }
    Ok(found)
}

async fn insert_errors(
    conn: &mut SqliteConnection,
    key: ImportKey,
    first_seq: u64,
    errors: &[RowError],
) -> Result<(), StoreError> {
    for (part_index, part) in errors.chunks(ERRORS_PER_STATEMENT).enumerate() {
        let base = first_seq + (part_index * ERRORS_PER_STATEMENT) as u64;
        let mut query = QueryBuilder::<Sqlite>::new(
            "INSERT INTO import_row_errors (import_key, seq, row_number, column_name, code, \
             message, value) ",
        );
        let numbered = part.iter().enumerate();
        query.push_values(numbered, |mut row, (i, error)| {
            row.push_bind(key)
                .push_bind((base + i as u64) as i64)
                .push_bind(error.row_number as i64)
                .push_bind(error.column.map_or("", Column::name))
                .push_bind(error.code.as_str())
                .push_bind(error.message.clone())
                .push_bind(error.value.clone());
        });
        // Cached only in its full size: a statement per length would fill the cache.
        let persistent = part.len() == ERRORS_PER_STATEMENT;
        query
            .build()
            .persistent(persistent)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Removes the users of a finished import, except those another import updated since, by
/// the rowid ranges its batches recorded; `None` when it was reverted before (nothing to do).
/// `StillRunning` for a PROCESSING import.
pub(super) async fn revert_users(
    conn: &mut SqliteConnection,
    key: ImportKey,
) -> Result<Option<(u64, u64)>, StoreError> {
    let state: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT status, revert_time FROM imports WHERE import_key = ?1")
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
    match state {
        None => return Err(StoreError::Corrupt(format!("import {key} is gone"))),
        Some((status, _)) if status == "PROCESSING" => return Err(StoreError::StillRunning),
        Some((_, Some(_))) => return Ok(None),
        Some((_, None)) => {}
    }
    let ranges: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT first_rowid, last_rowid FROM import_user_ranges WHERE import_key = ?1",
    )
    .bind(key)
    .fetch_all(&mut *conn)
    .await?;
    // By the rowid ranges: the users table has no index on import_key.
    let mut kept = 0;
    for &(first, last) in &ranges {
        let (in_range, updater): (i64, Option<String>) = sqlx::query_as(
            "SELECT count(u.updated_by), max(w.import_id) FROM users u \
             LEFT JOIN imports w ON w.import_key = u.updated_by AND w.status = 'PROCESSING' \
             WHERE u.rowid BETWEEN ?1 AND ?2 AND u.import_key = ?3 \
             AND u.updated_by IS NOT NULL AND u.updated_by <> ?3",
        )
        .bind(first)
        .bind(last)
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
        if let Some(import_id) = updater {
            return Err(StoreError::BeingUpdated(import_id));
        }
        kept += in_range as u64;
    }
    let mut removed = 0;
    for (first, last) in ranges {
        removed += sqlx::query(
            "DELETE FROM users WHERE rowid BETWEEN ?1 AND ?2 AND import_key = ?3 \
             AND (updated_by IS NULL OR updated_by = ?3)",
        )
        .bind(first)
        .bind(last)
        .bind(key)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    sqlx::query("DELETE FROM import_user_ranges WHERE import_key = ?1")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(Some((removed, kept)))
}

/// Puts back what a failed or cancelled import changed: the users it created go, and the
/// users it updated get their values back.
///
/// In that order, and with the restored users' external ids cleared first: the unique index
/// checks row by row, and the import may have given an id one user released to another (or
/// to a user it created). An old id that another import took meanwhile cannot come back; the
/// user is restored without it, and the log says how many.
pub(super) async fn undo_import(
    conn: &mut SqliteConnection,
    key: ImportKey,
) -> Result<(), StoreError> {
    delete_users(conn, key).await?;
    sqlx::query(
        "UPDATE users SET external_id = NULL \
         FROM import_user_updates AS s \
         WHERE s.import_key = ?1 AND users.account_id = s.account_id AND users.email = s.email",
    )
    .bind(key)
    .execute(&mut *conn)
    .await?;
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM import_user_updates s WHERE s.import_key = ?1 \
         AND s.external_id IS NOT NULL AND EXISTS (SELECT 1 FROM users o \
             WHERE o.account_id = s.account_id AND o.external_id = s.external_id)",
    )
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE users SET first_name = s.first_name, last_name = s.last_name, role = s.role, \
         job_title = s.job_title, update_time = s.update_time, updated_by = s.updated_by, \
         external_id = CASE WHEN EXISTS (SELECT 1 FROM users o \
             WHERE o.account_id = s.account_id AND o.external_id = s.external_id) \
             THEN NULL ELSE s.external_id END \
         FROM import_user_updates AS s \
         WHERE s.import_key = ?1 AND users.account_id = s.account_id AND users.email = s.email",
    )
    .bind(key)
    .execute(&mut *conn)
    .await?;
    policy::lost_external_ids(key, lost as u64);
    Ok(())
}

/// What an ended import no longer needs: the values its rows held in the file, and the
/// values its updates replaced.
pub(super) async fn forget_file_keys(
    conn: &mut SqliteConnection,
    key: ImportKey,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM import_file_keys WHERE import_key = ?1")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM import_user_updates WHERE import_key = ?1")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
