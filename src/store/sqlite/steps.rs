//! SQLite's dialect of the shared steps (`store::steps`), inside the writer's transaction:
//! times as microseconds bound by the server, `IN`-free point lookups and the hot inserts
//! through the C API (`capi`), the users of an import by their rowid ranges (`ranges`), and
//! no notifications, since one server runs.
//!
//! The statements here run through sqlx on the transaction's connection; the per-row work of a
//! batch (inserts, updates, lookups) goes through `capi` on the same connection's handle, inside
//! the same transaction. Nothing here begins, commits or rolls back: `SqliteStore::write` does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use super::{capi, ranges, statement};
use crate::domain::{
    Column, Counters, Import, ImportKey, ImportStatus, NewImport, RowError, TextFormat, UserBatch,
};
use crate::store::claims::{ClaimsSql, ClaimsTable};
use crate::store::codec::ClaimedRow;
use crate::store::codec::{ImportRow, format_columns, micros};
use crate::store::conflicts::Holder;
use crate::store::failed::FailedLine;
use crate::store::plan::{Known, Lookups, Plan};
use crate::store::steps::{Dialect, Param, RevertState, Steps, wait_condition};
use crate::store::{AccountKey, BatchTarget, Committed, Conclusion, Guard, StoreError};

/// SQLite allows 32,766 bound values per statement: 7 per row error, 9 per failed row.
///
/// 1,000 rows stay well below that with either (8,000 values at most).
const ROWS_PER_STATEMENT: usize = 1000;

/// The steps on the writer connection, inside its transaction.
pub(super) struct SqliteSteps<'c> {
    conn: &'c mut SqliteConnection,
    /// The transaction's time, in microseconds: every row it writes has the same.
    now: i64,
    /// The events it wrote (`Steps::told`), counted by the store once it commits.
    told: &'c AtomicU64,
}

impl<'c> SqliteSteps<'c> {
    /// Steps on `conn`, which must be inside a write transaction begun with `BEGIN IMMEDIATE`.
    /// Takes the transaction's time now, once.
    pub(super) fn new(conn: &'c mut SqliteConnection, told: &'c AtomicU64) -> Self {
        Self {
            conn,
            now: micros(SystemTime::now()),
            told,
        }
    }

    /// The plain import: inserts the batch's users and lets the unique indexes refuse; the
    /// batch indexes of the refused users.
    ///
    /// The rowids the inserts were given are recorded as one range (`ranges::record`), so that a
    /// failed import finds these users again without an index on `import_key`.
    pub(super) async fn insert_plain(
        &mut self,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
    ) -> Result<Vec<usize>, StoreError> {
        let at = self.target(target);
        let inserted = statement::on_handle(self.conn, |handle| {
            capi::insert_users(handle, at, batch, 0..batch.len())
        })
        .await?;
        ranges::record(self.conn, target.key, inserted.rowids).await?;
        Ok(inserted.refused)
    }

    /// What `capi` needs of a batch's target, with this transaction's time.
    fn target<'t>(&self, target: &'t BatchTarget<'_>) -> capi::Target<'t> {
        capi::Target {
            account_id: target.account_id.as_str(),
            account_key: target.account_key.0.into(),
            import_key: target.key,
            now: self.now,
        }
    }

    /// A shared statement with its parameters bound in order. SQLite accepts `$1`-style
    /// placeholders, so the shared SQL runs here as it is written.
    fn query<'q>(
        sql: &'q str,
        params: &[Param<'q>],
    ) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for param in params {
            query = match *param {
                Param::Int(value) => query.bind(value),
                Param::Text(value) => query.bind(value),
            };
        }
        query
    }
}

/// The `imports` columns as `codec::ImportRow` names them. SQLite stores times as integer
/// microseconds already, so they are selected as they are (PostgreSQL's list converts them).
pub(super) const IMPORT_COLUMNS: &str = concat!(
    "import_key, account_id, import_id, type, filename, created_by, status, \
    bytes_received, rows_processed, rows_imported, rows_failed, row_errors_omitted, encoding, \
    delimiter, error_message, create_time, update_time, complete_time, validate_only, \
    on_conflict, rows_skipped, rows_updated, retry_of_import_id, revert_time, revert_note, \
    details_removed_time, invitations, resumable, committed_bytes, resume_deadline, ",
    crate::store::codec::users_invited_column!()
);

impl SqliteSteps<'_> {
    /// Creates the import, PROCESSING, at the transaction's time. `AlreadyExists` from the
    /// unique index on `(account_id, import_id)`.
    pub(super) async fn create_import(&mut self, new: &NewImport) -> Result<Import, StoreError> {
        let sql = format!(
            "INSERT INTO imports (account_id, import_id, type, filename, created_by, status, \
             create_time, update_time, validate_only, on_conflict, retry_of_import_id, \
             invitations, resumable) \
             VALUES ($1, $2, $3, $4, $6, 'PROCESSING', $5, $5, $7, $8, $9, $10, $11) \
             RETURNING {IMPORT_COLUMNS}"
        );
        let row: ImportRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(new.account_id.as_str())
            .bind(new.import_id.as_str())
            .bind(new.kind.as_str())
            .bind(new.filename.as_str())
            .bind(self.now)
            .bind(new.created_by.as_str())
            .bind(new.validate_only)
            .bind(new.on_conflict.as_str())
            .bind(new.retry_of.as_ref().map(|id| id.as_str()))
            .bind(new.invitations.as_str())
            .bind(new.resumable)
            .fetch_one(&mut *self.conn)
            .await?;
        Import::try_from(row)
    }
}

#[async_trait]
impl Steps for SqliteSteps<'_> {
    /// One server holds the file, so the guard's life sign has nothing to add: the status, and
    /// whether the import waits for a resume, say whether it may end.
    async fn set_ending(
        &mut self,
        key: ImportKey,
        conclusion: &Conclusion,
        guard: Guard,
    ) -> Result<Option<Import>, StoreError> {
        let c = conclusion.counters();
        let (encoding, delimiter) = format_columns(conclusion.format());
        let sql = format!(
            "UPDATE imports SET status = $1, error_message = $2, bytes_received = $3, \
             rows_processed = $4, rows_imported = $5, rows_failed = $6, \
             row_errors_omitted = $7, encoding = $8, delimiter = $9, rows_skipped = $10, \
             rows_updated = $11, update_time = $12, complete_time = $12, \
             resume_deadline = NULL, \
             committed_bytes = CASE WHEN $1 LIKE 'COMPLETED%' THEN $3 ELSE committed_bytes END \
             WHERE import_key = $13 AND status = 'PROCESSING' AND {} RETURNING {IMPORT_COLUMNS}",
            wait_condition(guard, Dialect::Sqlite)
        );
        let row: Option<ImportRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(conclusion.status().as_str())
            .bind(conclusion.error_message())
            .bind(c.bytes_received as i64)
            .bind(c.rows_processed as i64)
            .bind(c.rows_imported as i64)
            .bind(c.rows_failed as i64)
            .bind(c.row_errors_omitted as i64)
            .bind(encoding)
            .bind(delimiter)
            .bind(c.rows_skipped as i64)
            .bind(c.rows_updated as i64)
            .bind(self.now)
            .bind(key)
            .fetch_optional(&mut *self.conn)
            .await?;
        row.map(Import::try_from).transpose()
    }

    /// By the rowid ranges its batches recorded (`ranges`), which it then forgets.
    async fn delete_created(&mut self, key: ImportKey) -> Result<(), StoreError> {
        ranges::delete_users(self.conn, key).await
    }

    async fn execute(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<u64, StoreError> {
        Ok(Self::query(sql, params)
            .execute(&mut *self.conn)
            .await?
            .rows_affected())
    }

    async fn count(&mut self, sql: &'static str, params: &[Param<'_>]) -> Result<u64, StoreError> {
        let mut query = sqlx::query_scalar::<_, i64>(sql);
        for param in params {
            query = match *param {
                Param::Int(value) => query.bind(value),
                Param::Text(value) => query.bind(value),
            };
        }
        Ok(query.fetch_one(&mut *self.conn).await? as u64)
    }

    async fn import_keys(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<Vec<ImportKey>, StoreError> {
        let rows = Self::query(sql, params).fetch_all(&mut *self.conn).await?;
        Ok(rows
            .iter()
            .map(|row| sqlx::Row::try_get::<i64, _>(row, 0))
            .collect::<Result<_, _>>()?)
    }

    /// Not cached: a table made and dropped would leave a stale statement behind.
    async fn execute_claims(&mut self, sql: &ClaimsSql) -> Result<u64, StoreError> {
        Ok(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str().to_owned()))
            .execute(&mut *self.conn)
            .await?
            .rows_affected())
    }

    /// Not cached, as `execute_claims`.
    async fn count_claims(&mut self, sql: &ClaimsSql) -> Result<u64, StoreError> {
        let row = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str().to_owned()))
            .fetch_one(&mut *self.conn)
            .await?;
        Ok(sqlx::Row::try_get::<i64, _>(&row, 0)? as u64)
    }

    async fn remember_claims(
        &mut self,
        sql: &ClaimsSql,
        seen: &crate::store::SeenValues,
    ) -> Result<(), StoreError> {
        crate::store::claims::note_rows(&mut *self.conn, sql, seen).await
    }

    /// SQLite's tables are all durable: what a batch committed survives a crash.
    async fn claims_table(&mut self, table: &str) -> Result<ClaimsTable, StoreError> {
        let found: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = $1",
        )
        .bind(table)
        .fetch_one(&mut *self.conn)
        .await?;
        Ok(match found {
            0 => ClaimsTable::Missing,
            _ => ClaimsTable::Durable,
        })
    }

    /// Nothing to wait for: the one writer orders the events already.
    async fn events_turn(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    fn told(&mut self, events: u64) {
        self.told.fetch_add(events, Ordering::Relaxed);
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    /// Nothing to tell: no other server runs on this file, and watchers here poll.
    async fn changed(&mut self, _keys: &[ImportKey]) -> Result<(), StoreError> {
        Ok(())
    }

    /// No row lock needed: `BEGIN IMMEDIATE` holds the database until the revert commits.
    async fn revert_state(&mut self, key: ImportKey) -> Result<Option<RevertState>, StoreError> {
        let state: Option<(String, bool, bool)> = sqlx::query_as(
            "SELECT status, revert_time IS NOT NULL, validate_only FROM imports \
             WHERE import_key = $1",
        )
        .bind(key)
        .fetch_optional(&mut *self.conn)
        .await?;
        state
            .map(|(status, reverted, dry_run)| {
                let status = ImportStatus::from_stored(&status).ok_or_else(|| {
                    StoreError::Corrupt(format!("import {key}: status '{status}'"))
                })?;
                Ok(RevertState {
                    status,
                    reverted,
                    dry_run,
                })
            })
            .transpose()
    }

    /// Range by range; see `ranges::updated_by_others`.
    async fn updated_by_others(
        &mut self,
        key: ImportKey,
    ) -> Result<(u64, Option<String>), StoreError> {
        ranges::updated_by_others(self.conn, key).await
    }

    /// Range by range, keeping users another import updated; the ranges are forgotten after.
    async fn delete_reverted(&mut self, key: ImportKey) -> Result<u64, StoreError> {
        ranges::delete_reverted(self.conn, key).await
    }

    /// `coalesce` and the `CASE` keep the first revert's time and note on a second revert.
    async fn note_revert(&mut self, key: ImportKey, note: &str) -> Result<Import, StoreError> {
        let sql = format!(
            "UPDATE imports SET revert_time = coalesce(revert_time, $2), \
             revert_note = CASE WHEN revert_time IS NULL THEN $3 ELSE revert_note END \
             WHERE import_key = $1 RETURNING {IMPORT_COLUMNS}"
        );
        let row: ImportRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .bind(self.now)
            .bind(note)
            .fetch_one(&mut *self.conn)
            .await?;
        Import::try_from(row)
    }

    /// The writer's `BEGIN IMMEDIATE` already holds the whole database.
    async fn lock_processing(&mut self, key: ImportKey) -> Result<bool, StoreError> {
        let running: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM imports WHERE import_key = $1 AND status = 'PROCESSING'",
        )
        .bind(key)
        .fetch_optional(&mut *self.conn)
        .await?;
        Ok(running.is_some())
    }

    /// A point lookup per value through the C API (`capi::holders`).
    async fn holders(
        &mut self,
        account: AccountKey,
        column: Column,
        values: &[&str],
    ) -> Result<HashMap<String, Holder>, StoreError> {
        if values.is_empty() {
            return Ok(HashMap::new());
        }
        statement::on_handle(self.conn, |handle| {
            capi::holders(handle, account.0.into(), column, values)
        })
        .await
    }

    /// `update_time` is the transaction's time; SQLite has no heartbeat to renew (one server).
    async fn store_progress(
        &mut self,
        key: ImportKey,
        progress: &Counters,
        format: Option<TextFormat>,
        committed: &Committed<'_>,
    ) -> Result<bool, StoreError> {
        let (encoding, delimiter) = format_columns(format);
        let updated = sqlx::query(
            "UPDATE imports SET bytes_received = $1, rows_processed = $2, rows_imported = $3, \
             rows_failed = $4, row_errors_omitted = $5, encoding = $6, delimiter = $7, \
             rows_skipped = $8, rows_updated = $9, update_time = $10, committed_bytes = $12, \
             committed_rows = $13, resume_state = $14 \
             WHERE import_key = $11 AND status = 'PROCESSING' AND resume_deadline IS NULL",
        )
        .bind(progress.bytes_received as i64)
        .bind(progress.rows_processed as i64)
        .bind(progress.rows_imported as i64)
        .bind(progress.rows_failed as i64)
        .bind(progress.row_errors_omitted as i64)
        .bind(encoding)
        .bind(delimiter)
        .bind(progress.rows_skipped as i64)
        .bind(progress.rows_updated as i64)
        .bind(self.now)
        .bind(key)
        .bind(committed.bytes as i64)
        .bind(committed.rows as i64)
        .bind(committed.state)
        .execute(&mut *self.conn)
        .await?
        .rows_affected();
        Ok(updated > 0)
    }

    /// A single server holds the file, so the guard adds nothing to the status.
    async fn set_waiting(
        &mut self,
        key: ImportKey,
        window: std::time::Duration,
        guard: Guard,
    ) -> Result<Option<Import>, StoreError> {
        let sql = format!(
            "UPDATE imports SET resume_deadline = $1 + $2, bytes_received = committed_bytes, \
             update_time = $1 WHERE import_key = $3 AND status = 'PROCESSING' AND {} \
             RETURNING {IMPORT_COLUMNS}",
            wait_condition(guard, Dialect::Sqlite)
        );
        let row: Option<ImportRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(self.now)
            .bind(window.as_micros().min(i64::MAX as u128 / 2) as i64)
            .bind(key)
            .fetch_optional(&mut *self.conn)
            .await?;
        row.map(Import::try_from).transpose()
    }

    async fn claim_waiting(
        &mut self,
        key: ImportKey,
        offset: u64,
    ) -> Result<Option<(Import, Option<String>, u64)>, StoreError> {
        let sql = format!(
            "UPDATE imports SET resume_deadline = NULL, bytes_received = committed_bytes, \
             update_time = $3 \
             WHERE import_key = $1 AND status = 'PROCESSING' AND resume_deadline IS NOT NULL \
               AND committed_bytes = $2 \
             RETURNING {IMPORT_COLUMNS}, resume_state, committed_rows"
        );
        let row: Option<ClaimedRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .bind(offset as i64)
            .bind(self.now)
            .fetch_optional(&mut *self.conn)
            .await?;
        row.map(ClaimedRow::parts).transpose()
    }

    /// A batch's users and its record commit in one transaction here: none to remove.
    async fn drop_unrecorded(&mut self, _key: ImportKey, _rows: u64) -> Result<(), StoreError> {
        Ok(())
    }

    /// In statements of `ROWS_PER_STATEMENT` rows, each numbered from where the last stopped.
    async fn insert_row_errors(
        &mut self,
        key: ImportKey,
        first_seq: u64,
        errors: &[RowError],
    ) -> Result<(), StoreError> {
        for (part_index, part) in errors.chunks(ROWS_PER_STATEMENT).enumerate() {
            let base = first_seq + (part_index * ROWS_PER_STATEMENT) as u64;
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO import_row_errors (import_key, seq, row_number, column_name, code, \
                 message, value) ",
            );
            query.push_values(part.iter().enumerate(), |mut row, (i, error)| {
                row.push_bind(key)
                    .push_bind((base + i as u64) as i64)
                    .push_bind(error.row_number as i64)
                    .push_bind(error.column.map_or("", Column::name))
                    .push_bind(error.code.as_str())
                    .push_bind(error.message.clone())
                    .push_bind(error.value.clone());
            });
            // Cached only in its full size: a statement per length would fill the cache.
            let persistent = part.len() == ROWS_PER_STATEMENT;
            query
                .build()
                .persistent(persistent)
                .execute(&mut *self.conn)
                .await?;
        }
        Ok(())
    }

    /// In statements of `ROWS_PER_STATEMENT` rows; a cell is copied only here, to be bound.
    async fn insert_failed_rows(
        &mut self,
        key: ImportKey,
        lines: &[FailedLine<'_>],
    ) -> Result<(), StoreError> {
        for part in lines.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO import_failed_rows (import_key, row_number, email, first_name, \
                 last_name, role, job_title, external_id, errors) ",
            );
            query.push_values(part, |mut row, line| {
                row.push_bind(key).push_bind(line.row_number as i64);
                for cell in &line.cells {
                    row.push_bind(cell.clone().into_owned());
                }
                row.push_bind(line.errors.clone());
            });
            let persistent = part.len() == ROWS_PER_STATEMENT;
            query
                .build()
                .persistent(persistent)
                .execute(&mut *self.conn)
                .await?;
        }
        Ok(())
    }

    /// Point lookups through the C API, each on an index: emails and external ids among the
    /// account's users, then the import's file keys.
    async fn known(
        &mut self,
        target: &BatchTarget<'_>,
        lookups: &Lookups<'_>,
    ) -> Result<Known, StoreError> {
        let account = self.target(target);
        statement::on_handle(self.conn, |handle| {
            Ok(Known {
                users: capi::existing_users(handle, account, lookups)?,
                file_keys: capi::file_keys(handle, target.key, lookups)?,
            })
        })
        .await
    }

    /// All through the C API, in the plan's order (updates, inserts, file keys), then the rowid
    /// range of the inserts recorded.
    async fn apply(
        &mut self,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
        plan: &Plan<'_>,
    ) -> Result<Vec<usize>, StoreError> {
        let at = self.target(target);
        let inserted = statement::on_handle(self.conn, |handle| {
            capi::update_users(handle, at, batch, &plan.updates)?;
            let inserted = capi::insert_users(handle, at, batch, plan.inserts.iter().copied())?;
            capi::insert_file_keys(handle, target.key, &plan.claims)?;
            Ok(inserted)
        })
        .await?;
        ranges::record(self.conn, target.key, inserted.rowids).await?;
        // The plan was made in this transaction, which no other writer shares: a refusal here
        // would be a bug, but it is still told as a row error rather than lost.
        Ok(inserted.refused)
    }

    /// Non-ASCII addresses: more bytes than characters.
    async fn non_ascii_emails(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT a.account_id, u.email FROM users AS u \
             JOIN accounts AS a ON a.account_key = u.account_key \
             WHERE length(u.email) <> length(CAST(u.email AS BLOB)) \
             ORDER BY u.create_time, u.rowid",
        )
        .fetch_all(&mut *self.conn)
        .await?)
    }

    /// One server holds the file: the turn is always this one's.
    async fn retention_turn(&mut self) -> Result<bool, StoreError> {
        Ok(true)
    }

    async fn details_removed(&mut self, key: ImportKey) -> Result<bool, StoreError> {
        let marked = sqlx::query(
            "UPDATE imports SET details_removed_time = coalesce(details_removed_time, $2), \
             details_left = TRUE WHERE import_key = $1 \
             AND (details_removed_time IS NULL OR details_left)",
        )
        .bind(key)
        .bind(self.now)
        .execute(&mut *self.conn)
        .await?;
        Ok(marked.rows_affected() == 1)
    }
}
