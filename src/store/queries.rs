//! The read queries, the same SQL on both backends (SQLite accepts `$1` placeholders too), so
//! that `GetImport`, `ListImports` and row error pages cannot differ between them; only the
//! column list differs, since each backend stores times its own way.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use super::codec::{ImportRow, RowErrorColumns};
use super::{ImportCursor, StoreError, StoredRowError};
use crate::domain::{AccountId, Import, ImportId, ImportKey};

pub(crate) async fn get_import<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
    columns: &str,
    account_id: &AccountId,
    import_id: &ImportId,
) -> Result<Option<Import>, StoreError>
where
    for<'r> ImportRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    let sql = format!("SELECT {columns} FROM imports WHERE account_id = $1 AND import_id = $2");
    let row: Option<ImportRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(account_id.as_str())
        .bind(import_id.as_str())
        .fetch_optional(executor)
        .await?;
    row.map(Import::try_from).transpose()
}

/// The Imports list. `time_param` is how the backend writes a `create_time` from the cursor's
/// microseconds, bound as `$2`.
pub(crate) async fn list_imports<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
    columns: &str,
    time_param: &str,
    account_id: &AccountId,
    after: Option<&ImportCursor>,
    limit: u32,
) -> Result<Vec<Import>, StoreError>
where
    for<'r> ImportRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    let order = "ORDER BY create_time DESC, import_id DESC";
    let rows: Vec<ImportRow> = match after {
        None => {
            let sql =
                format!("SELECT {columns} FROM imports WHERE account_id = $1 {order} LIMIT $2");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(account_id.as_str())
                .bind(i64::from(limit))
                .fetch_all(executor)
                .await?
        }
        Some(cursor) => {
            let sql = format!(
                "SELECT {columns} FROM imports WHERE account_id = $1 \
                 AND (create_time, import_id) < ({time_param}, $3) {order} LIMIT $4"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(account_id.as_str())
                .bind(cursor.create_micros)
                .bind(cursor.import_id.as_str())
                .bind(i64::from(limit))
                .fetch_all(executor)
                .await?
        }
    };
    rows.into_iter().map(Import::try_from).collect()
}

pub(crate) async fn list_row_errors<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
    key: ImportKey,
    after: Option<u64>,
    limit: u32,
) -> Result<Vec<StoredRowError>, StoreError>
where
    for<'r> RowErrorColumns: FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    let rows: Vec<RowErrorColumns> = sqlx::query_as(
        "SELECT seq, row_number, column_name, code, message, value FROM import_row_errors \
         WHERE import_key = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(key)
    .bind(after.map_or(-1, |s| s as i64))
    .bind(i64::from(limit))
    .fetch_all(executor)
    .await?;
    rows.into_iter().map(StoredRowError::try_from).collect()
}
