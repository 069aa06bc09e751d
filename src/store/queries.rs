//! The read queries, the same SQL on both backends (SQLite accepts `$1` placeholders too), so
//! that `GetImport`, `ListImports` and row error pages cannot differ between them; only the
//! column list differs, since each backend stores times its own way.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use super::codec::{ImportRow, RowErrorColumns, from_micros};
use super::{FailedCells, ImportCursor, StoreError, StoredRowError, StoredUser};
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

/// A user row as `list_users` selects it.
type UserColumns = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    i64,
);

/// The users of an account's completed imports, by email (byte order on both backends). The
/// backend says how its create and update times read as microseconds.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn list_users<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
    create_micros: &str,
    update_micros: &str,
    account_id: &AccountId,
    import: Option<ImportKey>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<StoredUser>, StoreError>
where
    for<'r> UserColumns: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    let sql = format!(
        "SELECT u.email, u.first_name, u.last_name, u.role, u.job_title, u.external_id, \
         i.import_id, {create_micros}, {update_micros} \
         FROM users u JOIN imports i ON i.import_key = u.import_key \
         WHERE u.account_id = $1 AND u.email > $2 AND ($3 < 0 OR u.import_key = $3) \
         AND i.status IN ('COMPLETED_SUCCESS', 'COMPLETED_PARTIAL', \
                          'COMPLETED_NOTHING_TO_IMPORT') \
         ORDER BY u.email LIMIT $4"
    );
    let rows: Vec<UserColumns> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(account_id.as_str())
        .bind(after.unwrap_or(""))
        .bind(import.unwrap_or(-1))
        .bind(i64::from(limit))
        .fetch_all(executor)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(email, first_name, last_name, role, job_title, external_id, import_id, c, u)| {
                StoredUser {
                    email,
                    first_name,
                    last_name,
                    role,
                    job_title,
                    external_id,
                    import_id,
                    create_time: from_micros(c),
                    update_time: from_micros(u),
                }
            },
        )
        .collect())
}

/// The cells of failed rows, in file order.
pub(crate) async fn failed_rows<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
    key: ImportKey,
    after: Option<u64>,
    limit: u32,
) -> Result<Vec<FailedCells>, StoreError>
where
    for<'r> (i64, String, String, String, String, String, String): FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    let rows: Vec<(i64, String, String, String, String, String, String)> = sqlx::query_as(
        "SELECT row_number, email, first_name, last_name, role, job_title, external_id \
         FROM import_failed_rows WHERE import_key = $1 AND row_number > $2 \
         ORDER BY row_number LIMIT $3",
    )
    .bind(key)
    .bind(after.map_or(-1, |r| r as i64))
    .bind(i64::from(limit))
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(row, email, first, last, role, title, external_id)| FailedCells {
                row_number: row as u64,
                cells: [email, first, last, role, title, external_id],
            },
        )
        .collect())
}
