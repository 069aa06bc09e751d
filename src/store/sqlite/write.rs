//! Writing a batch inside the writer's transaction: its users through the C API hot path
//! (`insert`), the holders of the values the unique indexes refused, its row errors, and the
//! import's progress. Also the removal of a failed import's users, by the rowid ranges its
//! batches recorded.

use std::collections::HashMap;
use std::time::SystemTime;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::insert;
use crate::domain::{AccountId, Column, ImportKey, RowError, UserBatch};
use crate::store::codec::{format_columns, micros};
use crate::store::conflicts::{
    Holder, HolderRow, holder_lookup, holders_by_value, looked_up, merge_by_row, refusals,
};
use crate::store::{BatchOutcome, BatchTarget, StoreError};

/// SQLite allows 32,766 bound values per statement; 7 per row error.
const ERRORS_PER_STATEMENT: usize = 1000;
const LOOKUPS_PER_STATEMENT: usize = 500;

/// A batch inside its transaction: users, row errors, then the progress, which also tells
/// whether the import still runs.
pub(super) async fn write_batch(
    conn: &mut SqliteConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
) -> Result<BatchOutcome, StoreError> {
    let now = micros(SystemTime::now());
    let (conflict_rows, conflicts) = insert_users(conn, target, batch, now).await?;
    let errors = merge_by_row(&batch.errors, conflicts);
    let stored = (errors.len() as u64).min(target.error_budget) as usize;
    insert_errors(conn, target.key, target.next_error_seq, &errors[..stored]).await?;
    let outcome = BatchOutcome {
        imported: batch.len() as u64 - conflict_rows,
        conflicts: conflict_rows,
        errors_stored: stored as u64,
        errors_omitted: (errors.len() - stored) as u64,
    };
    let progress = outcome.applied_to(target.progress);
    let (encoding, delimiter) = format_columns(target.format);
    let updated = sqlx::query(
        "UPDATE imports SET bytes_received = ?1, rows_processed = ?2, rows_imported = ?3, \
         rows_failed = ?4, row_errors_omitted = ?5, encoding = ?6, delimiter = ?7, \
         update_time = ?8 WHERE import_key = ?9 AND status = 'PROCESSING'",
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
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        return Err(StoreError::NotProcessing);
    }
    Ok(outcome)
}

/// Inserts the batch's users; returns how many the unique indexes refused, and the row
/// errors for held values (see `conflicts::refusals`), in row order.
async fn insert_users(
    conn: &mut SqliteConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    now: i64,
) -> Result<(u64, Vec<RowError>), StoreError> {
    let inserted = {
        let mut handle = conn.lock_handle().await?;
        let account = target.account_id.as_str();
        // A few milliseconds of SQLite work per thousand rows: tell the runtime, so that other
        // tasks move to another worker meanwhile. No `.await` between taking the handle and
        // finishing with it, so the handle cannot be released early by a cancellation.
        let mut insert = || insert::insert_users(&mut handle, account, target.key, now, batch);
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(insert),
            _ => insert(),
        }
        .map_err(|e| StoreError::from_sqlite_code(e.code, e))?
    };
    if let Some((first, last)) = inserted.rowids {
        sqlx::query(
            "INSERT INTO import_user_ranges (import_key, first_rowid, last_rowid) \
             VALUES (?1, ?2, ?3)",
        )
        .bind(target.key)
        .bind(first)
        .bind(last)
        .execute(&mut *conn)
        .await?;
    }
    conflicts(conn, target, batch, &inserted.refused).await
}

/// The row errors for the values the batch's rows found held, and how many users were
/// refused.
async fn conflicts(
    conn: &mut SqliteConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    refused: &[usize],
) -> Result<(u64, Vec<RowError>), StoreError> {
    if refused.is_empty() && batch.probes().len() == 0 {
        return Ok((0, Vec::new()));
    }
    let (emails, ids) = looked_up(batch, refused);
    let by_email = holders(&mut *conn, target.account_id, Column::Email, emails).await?;
    let by_id = holders(&mut *conn, target.account_id, Column::ExternalId, ids).await?;
    let errors = refusals(target.key, batch, refused, &by_email, &by_id);
    Ok((refused.len() as u64, errors))
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
