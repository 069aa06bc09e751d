//! PostgreSQL's dialect of the shared steps (`store::steps`): the server's `now()`, arrays
//! bound with `= ANY` and `unnest`, the users of an import by its indexed `import_key`, the
//! guard of an abandoned import checked against its heartbeat and its owner's lock, and a
//! notification to the other replicas with every change.
//!
//! Times are the server's `now()`, the transaction's start time, so that every replica stamps
//! rows by one clock. Nothing here begins, commits or rolls back: `tx::in_transaction` does.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use sqlx::{PgConnection, Postgres};

use super::beside::{self, Beside};
use super::notify::notify;
use super::{IMPORT_COLUMNS, apply, liveness, record};
use crate::domain::{
    Column, Counters, Import, ImportKey, ImportStatus, RowError, TextFormat, UserBatch,
};
use crate::store::claims::{self, ClaimsSql, ClaimsTable};
use crate::store::codec::{ClaimedRow, ImportRow, format_columns};
use crate::store::conflicts::Holder;
use crate::store::failed::FailedLine;
use crate::store::lookup::{self, HolderRow, Match};
use crate::store::plan::{Existing, FileKey, Known, Lookups, Plan};
use crate::store::steps::{Dialect, Param, RevertState, Steps, wait_condition};
use crate::store::{AccountKey, BatchTarget, Committed, Conclusion, Guard, StoreError};

/// The steps on one transaction's connection.
///
/// Built only by `new`, inside a transaction that `tx::in_transaction` began and will end.
pub(crate) struct PgSteps<'c> {
    conn: &'c mut PgConnection,
    /// The events it wrote (`Steps::told`), counted by `in_transaction` once it commits.
    told: &'c AtomicU64,
    /// A planned batch's second connection for part of its file keys (`beside`), if it has one.
    beside: Option<&'c Beside<'c>>,
}

impl<'c> PgSteps<'c> {
    /// Steps on `conn`, which must be inside the transaction `tx::in_transaction` began.
    pub(super) fn new(conn: &'c mut PgConnection, told: &'c AtomicU64) -> Self {
        Self {
            conn,
            told,
            beside: None,
        }
    }

    /// These steps with part of a planned batch's file keys written beside (`Steps::apply`).
    pub(super) fn with_beside(mut self, beside: &'c Beside<'c>) -> Self {
        self.beside = Some(beside);
        self
    }

    /// The transaction's connection, for what only this backend does (`COPY`).
    pub(super) fn connection(&mut self) -> &mut PgConnection {
        self.conn
    }

    /// A shared statement with its parameters bound in order.
    fn query<'q>(
        sql: &'q str,
        params: &[Param<'q>],
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
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

/// Holds import `$1` while it is PROCESSING, not waiting for its client, and this replica's
/// (`Steps::lock_processing`); also the hold of a planned batch's part beside (`beside`).
macro_rules! hold_processing {
    () => {
        "SELECT 1 FROM imports WHERE import_key = $1 AND status = 'PROCESSING' \
         AND resume_deadline IS NULL \
         AND owner = current_setting('bulk_import.owner', true)::bigint FOR KEY SHARE"
    };
}
pub(super) use hold_processing;

/// The import is this replica's: its `owner` is the owner number this replica's connections
/// carry (`bulk_import.owner`, set when the pool connects, see `PostgresStore::open`). What
/// fences a replica that lost an import (it was cut off, the reaper took it for dead, a resume
/// went on elsewhere) from writing to it when it comes back.
pub(super) const OWNED: &str = "owner = current_setting('bulk_import.owner', true)::bigint";

/// The `WHERE` of a statement that changes import `$n` only while it is PROCESSING and `guard`
/// holds. `Guard::Abandoned` also binds `$n+1` and `$n+2` (the life sign): the same heartbeat
/// as when it was judged abandoned, and, when its owner's lock was gone then, still gone; and
/// `SKIP LOCKED` passes an import a batch holds, whose server is therefore alive.
fn guarded(guard: Guard, n: usize) -> String {
    let waiting = wait_condition(guard, Dialect::Postgres);
    match guard {
        Guard::Abandoned(_) => format!(
            "import_key = (SELECT import_key FROM imports i \
               WHERE import_key = ${n} AND status = 'PROCESSING' AND {waiting} \
                 AND {heartbeat} IS NOT DISTINCT FROM ${} AND (${} OR NOT {alive}) \
               FOR UPDATE SKIP LOCKED)",
            n + 1,
            n + 2,
            heartbeat = liveness::HEARTBEAT_MICROS,
            alive = liveness::owner_alive(),
        ),
        // The upload's own: this replica must still own it (a resume on another replica took
        // it over, say, while this one was cut off from the database).
        Guard::Processing => {
            format!("import_key = ${n} AND status = 'PROCESSING' AND {waiting} AND {OWNED}")
        }
        Guard::Waiting { .. } => {
            format!("import_key = ${n} AND status = 'PROCESSING' AND {waiting}")
        }
    }
}

/// The assignments of an ending, `$1` to `$11`, and its key, `$12`.
///
/// Shared by both guards' statements, so that the columns an ending sets are listed once.
const SET_ENDING: &str = "status = $1, error_message = $2, bytes_received = $3, \
    rows_processed = $4, rows_imported = $5, rows_failed = $6, row_errors_omitted = $7, \
    encoding = $8, delimiter = $9, rows_skipped = $10, rows_updated = $11, \
    update_time = now(), complete_time = now(), resume_deadline = NULL, \
    committed_bytes = CASE WHEN $1 LIKE 'COMPLETED%' THEN $3 ELSE committed_bytes END";

#[async_trait]
impl Steps for PgSteps<'_> {
    /// `Guard::Processing` needs only the status. `Guard::Abandoned` also needs the life sign
    /// that made the import look abandoned: the same heartbeat, and the owner's lock still gone
    /// if it was gone then; and `SKIP LOCKED` passes an import a batch holds, whose server is
    /// therefore alive. Either way, `None` leaves the import as it was.
    async fn set_ending(
        &mut self,
        key: ImportKey,
        conclusion: &Conclusion,
        guard: Guard,
    ) -> Result<Option<Import>, StoreError> {
        let c = conclusion.counters();
        let (encoding, delimiter) = format_columns(conclusion.format());
        let sql = format!(
            "UPDATE imports SET {SET_ENDING} WHERE {} RETURNING {IMPORT_COLUMNS}",
            guarded(guard, 12)
        );
        let mut query = sqlx::query_as::<_, ImportRow>(sqlx::AssertSqlSafe(sql))
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
            .bind(key);
        if let Guard::Abandoned(sign) = guard {
            query = query.bind(sign.heartbeat).bind(sign.owner_alive);
        }
        let row = query.fetch_optional(&mut *self.conn).await?;
        row.map(Import::try_from).transpose()
    }

    /// By `import_key`, which a BRIN index serves: an import's users are written together.
    async fn delete_created(&mut self, key: ImportKey) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM users WHERE import_key = $1")
            .bind(key)
            .execute(&mut *self.conn)
            .await?;
        Ok(())
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

    /// Not prepared: a table made and dropped would leave a stale statement behind.
    async fn execute_claims(&mut self, sql: &ClaimsSql) -> Result<u64, StoreError> {
        Ok(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.as_str().to_owned()))
            .execute(&mut *self.conn)
            .await?
            .rows_affected())
    }

    /// Not prepared, as `execute_claims`.
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

    /// By the catalog, rather than `IF NOT EXISTS`, whose notice every batch would log; its
    /// persistence tells this version's unlogged tables from earlier versions' logged ones.
    async fn claims_table(&mut self, table: &str) -> Result<ClaimsTable, StoreError> {
        let persistence: Option<String> = sqlx::query_scalar(
            "SELECT relpersistence::text FROM pg_class WHERE oid = to_regclass($1)",
        )
        .bind(table)
        .fetch_optional(&mut *self.conn)
        .await?;
        Ok(match persistence.as_deref() {
            None => ClaimsTable::Missing,
            Some("u") => ClaimsTable::Unlogged,
            Some(_) => ClaimsTable::Durable,
        })
    }

    /// An advisory lock of the transaction, held to its commit: transactions that write
    /// events commit one after the other, so a later `seq` never commits first (`events`).
    async fn events_turn(&mut self) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock($1::int, $2::int)")
            .bind(super::liveness::LOCK_NAMESPACE)
            .bind(super::liveness::EVENTS_LOCK)
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }

    fn told(&mut self, events: u64) {
        self.told.fetch_add(events, Ordering::Relaxed);
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    /// A `NOTIFY` per key, delivered to every replica when the transaction commits.
    async fn changed(&mut self, keys: &[ImportKey]) -> Result<(), StoreError> {
        Ok(notify(self.conn, keys).await?)
    }

    async fn revert_state(&mut self, key: ImportKey) -> Result<Option<RevertState>, StoreError> {
        let state: Option<(String, bool, bool)> = sqlx::query_as(
            "SELECT status, revert_time IS NOT NULL, validate_only FROM imports \
             WHERE import_key = $1 \
             FOR UPDATE",
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

    /// One statement over the import's users by `import_key`.
    async fn updated_by_others(
        &mut self,
        key: ImportKey,
    ) -> Result<(u64, Option<String>), StoreError> {
        let (kept, updater): (i64, Option<String>) = sqlx::query_as(
            "SELECT count(u.updated_by), max(w.import_id) FROM users u \
             LEFT JOIN imports w ON w.import_key = u.updated_by AND w.status = 'PROCESSING' \
             WHERE u.import_key = $1 AND u.updated_by IS NOT NULL AND u.updated_by <> $1",
        )
        .bind(key)
        .fetch_one(&mut *self.conn)
        .await?;
        Ok((kept as u64, updater))
    }

    /// The import's users, except those another import updated since.
    async fn delete_reverted(&mut self, key: ImportKey) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "DELETE FROM users WHERE import_key = $1 AND (updated_by IS NULL OR updated_by = $1) \
             AND coalesce(invitation_state, '') <> 'ACCEPTED'",
        )
        .bind(key)
        .execute(&mut *self.conn)
        .await?
        .rows_affected())
    }

    async fn note_revert(&mut self, key: ImportKey, note: &str) -> Result<Import, StoreError> {
        let sql = format!(
            "UPDATE imports SET revert_time = coalesce(revert_time, now()), \
             revert_note = CASE WHEN revert_time IS NULL THEN $2 ELSE revert_note END \
             WHERE import_key = $1 RETURNING {IMPORT_COLUMNS}"
        );
        let row: ImportRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .bind(note)
            .fetch_one(&mut *self.conn)
            .await?;
        Import::try_from(row)
    }

    /// A key share lock: the parts of one batch, written at once, may all hold it, while the
    /// reaper's `FOR UPDATE SKIP LOCKED` passes the import by (see `Guard::Abandoned`).
    async fn lock_processing(&mut self, key: ImportKey) -> Result<bool, StoreError> {
        let processing: Option<i32> = sqlx::query_scalar(hold_processing!())
            .bind(key)
            .fetch_optional(&mut *self.conn)
            .await?;
        Ok(processing.is_some())
    }

    /// One query for all the values, bound as an array (`= ANY($2)`).
    async fn holders(
        &mut self,
        account: AccountKey,
        column: Column,
        values: &[&str],
    ) -> Result<HashMap<String, Holder>, StoreError> {
        if values.is_empty() {
            return Ok(HashMap::new());
        }
        let rows: Vec<HolderRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(lookup::holders(column, Match::Any)))
                .bind(account.0)
                .bind(values)
                .fetch_all(&mut *self.conn)
                .await?;
        Ok(lookup::holders_by_value(rows))
    }

    /// Also renews the heartbeat: a server that writes batches is alive, whatever its upkeep loop
    /// is doing.
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
             rows_skipped = $8, rows_updated = $9, update_time = now(), heartbeat_time = now(), \
             committed_bytes = $11, committed_rows = $12, resume_state = $13 \
             WHERE import_key = $10 AND status = 'PROCESSING' AND resume_deadline IS NULL \
               AND owner = current_setting('bulk_import.owner', true)::bigint",
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
        .bind(key)
        .bind(committed.bytes as i64)
        .bind(committed.rows as i64)
        .bind(committed.state)
        .execute(&mut *self.conn)
        .await?
        .rows_affected();
        Ok(updated > 0)
    }

    /// The deadline by the server's clock, as every replica reads it.
    async fn set_waiting(
        &mut self,
        key: ImportKey,
        window: std::time::Duration,
        guard: Guard,
    ) -> Result<Option<Import>, StoreError> {
        let sql = format!(
            "UPDATE imports SET resume_deadline = now() + $1 * interval '1 microsecond', \
             owner = NULL, heartbeat_time = NULL, bytes_received = committed_bytes, \
             update_time = now() WHERE {} RETURNING {IMPORT_COLUMNS}",
            guarded(guard, 2)
        );
        let mut query = sqlx::query_as::<_, ImportRow>(sqlx::AssertSqlSafe(sql))
            .bind(window.as_micros().min(i64::MAX as u128) as i64)
            .bind(key);
        if let Guard::Abandoned(sign) = guard {
            query = query.bind(sign.heartbeat).bind(sign.owner_alive);
        }
        let row = query.fetch_optional(&mut *self.conn).await?;
        row.map(Import::try_from).transpose()
    }

    /// This replica becomes the import's owner (its connections carry its number), so that its
    /// life sign is this replica's from the start.
    async fn claim_waiting(
        &mut self,
        key: ImportKey,
        offset: u64,
    ) -> Result<Option<(Import, Option<String>, u64)>, StoreError> {
        let sql = format!(
            "UPDATE imports SET resume_deadline = NULL, heartbeat_time = now(), \
             bytes_received = committed_bytes, update_time = now(), \
             owner = current_setting('bulk_import.owner', true)::bigint \
             WHERE import_key = $1 AND status = 'PROCESSING' AND resume_deadline IS NOT NULL \
               AND committed_bytes = $2 \
             RETURNING {IMPORT_COLUMNS}, resume_state, committed_rows"
        );
        let row: Option<ClaimedRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(key)
            .bind(offset as i64)
            .fetch_optional(&mut *self.conn)
            .await?;
        row.map(ClaimedRow::parts).transpose()
    }

    /// By the index on `(import_key, source_row)`.
    async fn drop_unrecorded(&mut self, key: ImportKey, rows: u64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM users WHERE import_key = $1 AND source_row > $2")
            .bind(key)
            .bind(rows as i64)
            .execute(&mut *self.conn)
            .await?;
        Ok(())
    }

    async fn insert_row_errors(
        &mut self,
        key: ImportKey,
        first_seq: u64,
        errors: &[RowError],
    ) -> Result<(), StoreError> {
        record::insert_errors(self.conn, key, first_seq, errors).await
    }

    async fn insert_failed_rows(
        &mut self,
        key: ImportKey,
        lines: &[FailedLine<'_>],
    ) -> Result<(), StoreError> {
        record::insert_failed_rows(self.conn, key, lines).await
    }

    /// At most five queries, each over its values as one array: users by email and by the
    /// external ids they do not hold (`plan::ids_not_found`), file keys by email, external id
    /// and released external id.
    async fn known(
        &mut self,
        target: &BatchTarget<'_>,
        lookups: &Lookups<'_>,
    ) -> Result<Known, StoreError> {
        if let Some(beside) = self.beside {
            beside.clear_leftovers(self, target.key).await?;
        }
        let mut known = Known::default();
        for column in [Column::Email, Column::ExternalId] {
            let values: Cow<'_, [&str]> = match column {
                Column::Email => Cow::Borrowed(&lookups.user_emails),
                _ => crate::store::plan::ids_not_found(&lookups.user_ids, &known.users).into(),
            };
            if values.is_empty() {
                continue;
            }
            let sql = lookup::existing_users(column, Match::Any, lookups.user_values);
            let rows: Vec<lookup::ExistingRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(target.account_key.0)
                .bind(&*values)
                .fetch_all(&mut *self.conn)
                .await?;
            known.users.extend(rows.into_iter().map(Existing::from));
        }
        if !known.users.is_empty() {
            // After the users, so that an import that still runs once they are read is named
            // (see `Existing::noting`).
            let running: lookup::Running =
                sqlx::query_as::<_, lookup::RunningRow>(lookup::RUNNING_IMPORTS)
                    .bind(target.account_id.as_str())
                    .fetch_all(&mut *self.conn)
                    .await?
                    .into_iter()
                    .collect();
            known.users = std::mem::take(&mut known.users)
                .into_iter()
                .map(|user| user.noting(&running))
                .collect();
        }
        let generations: Vec<i64> = lookups.generations.clone().collect();
        for (column, values) in lookups.of_file_keys() {
            let sql = claims::lookup(target.key, column, Match::Any);
            // Not prepared: the statement names a table that goes with its import.
            let rows: Vec<lookup::FileKeyRow> =
                sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str().to_owned()))
                    .persistent(false)
                    .bind(values)
                    .bind(&generations)
                    .fetch_all(&mut *self.conn)
                    .await?;
            known.file_keys.extend(rows.into_iter().map(FileKey::from));
        }
        Ok(known)
    }

    /// Updates (one at a time, in file order, when an update releases an external id), then
    /// inserts with `ON CONFLICT DO NOTHING` (`plain::insert_users`), then file keys; part of
    /// those on a second connection meanwhile, when the batch has one (`beside`).
    async fn apply(
        &mut self,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
        plan: &Plan<'_>,
    ) -> Result<Vec<usize>, StoreError> {
        beside::write_keys(self.conn, self.beside, target.key, plan, async |conn| {
            apply::update_users(conn, target, batch, &plan.updates, plan.releases).await?;
            super::plain::insert_users(conn, target, batch, &plan.inserts).await
        })
        .await
    }

    /// Non-ASCII addresses: more bytes than characters. Oldest first, so that of two rows that
    /// now share a key, the older keeps it.
    async fn non_ascii_emails(&mut self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT a.account_id, u.email FROM users AS u \
             JOIN accounts AS a ON a.account_key = u.account_key \
             WHERE length(u.email) <> octet_length(u.email) ORDER BY u.create_time, u.email",
        )
        .fetch_all(&mut *self.conn)
        .await?)
    }

    /// A lock of this transaction on the clean-up's key: a second replica's step finds it
    /// taken and waits for the next round, instead of removing the same rows at once.
    async fn retention_turn(&mut self) -> Result<bool, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1::int, $2::int)")
                .bind(super::liveness::LOCK_NAMESPACE)
                .bind(super::liveness::RETENTION_LOCK)
                .fetch_one(&mut *self.conn)
                .await?,
        )
    }

    async fn details_removed(&mut self, key: ImportKey) -> Result<bool, StoreError> {
        let marked = sqlx::query(
            "UPDATE imports SET details_removed_time = coalesce(details_removed_time, now()), \
             details_left = TRUE WHERE import_key = $1 \
             AND (details_removed_time IS NULL OR details_left)",
        )
        .bind(key)
        .execute(&mut *self.conn)
        .await?;
        Ok(marked.rows_affected() == 1)
    }
}
