//! The rows a batch's record adds on PostgreSQL: its row errors and its failed rows' cells,
//! each in one statement with every column bound as an array (`unnest`).
//!
//! One statement whatever the count: each column is a single array parameter, so there is no
//! limit on bound values to cut around (SQLite's store inserts in parts of `ROWS_PER_STATEMENT`).

use sqlx::PgConnection;

use crate::domain::{Column, ImportKey, RowError};
use crate::store::StoreError;
use crate::store::failed::FailedLine;

/// Stores row errors, numbered from `first_seq`.
///
/// No statement when there are none.
pub(super) async fn insert_errors(
    conn: &mut PgConnection,
    key: ImportKey,
    first_seq: u64,
    errors: &[RowError],
) -> Result<(), StoreError> {
    if errors.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = (0..errors.len())
        .map(|i| (first_seq + i as u64) as i64)
        .collect();
    let rows: Vec<i64> = errors.iter().map(|e| e.row_number as i64).collect();
    let columns: Vec<&str> = errors
        .iter()
        .map(|e| e.column.map_or("", Column::name))
        .collect();
    let codes: Vec<&str> = errors.iter().map(|e| e.code.as_str()).collect();
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    let values: Vec<&str> = errors.iter().map(|e| e.value.as_str()).collect();
    sqlx::query(
        "INSERT INTO import_row_errors (import_key, seq, row_number, column_name, code, message, \
         value) \
         SELECT $1, * FROM unnest($2::bigint[], $3::bigint[], $4::text[], $5::text[], \
                                  $6::text[], $7::text[])",
    )
    .bind(key)
    .bind(&seqs)
    .bind(&rows)
    .bind(&columns)
    .bind(&codes)
    .bind(&messages)
    .bind(&values)
    .execute(conn)
    .await?;
    Ok(())
}

/// Keeps the cells of failed rows, for the error report.
///
/// No statement when there are none; one text array per template column.
pub(super) async fn insert_failed_rows(
    conn: &mut PgConnection,
    key: ImportKey,
    lines: &[FailedLine<'_>],
) -> Result<(), StoreError> {
    if lines.is_empty() {
        return Ok(());
    }
    let rows: Vec<i64> = lines.iter().map(|line| line.row_number as i64).collect();
    let column =
        |i: usize| -> Vec<&str> { lines.iter().map(|line| line.cells[i].as_ref()).collect() };
    let errors: Vec<&str> = lines.iter().map(|line| line.errors.as_str()).collect();
    sqlx::query(
        "INSERT INTO import_failed_rows (import_key, row_number, email, first_name, last_name, \
         role, job_title, external_id, errors) \
         SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                                  $7::text[], $8::text[], $9::text[])",
    )
    .bind(key)
    .bind(&rows)
    .bind(column(0))
    .bind(column(1))
    .bind(column(2))
    .bind(column(3))
    .bind(column(4))
    .bind(column(5))
    .bind(&errors)
    .execute(conn)
    .await?;
    Ok(())
}
