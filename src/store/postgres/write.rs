//! Writing a batch: its users by binary `COPY` (a large batch in two parts at once, on two
//! connections), then one short transaction for its row errors, the import's progress and a
//! change notification. Up to three transactions per batch, then: a failure between them
//! leaves users that the import's ending removes, since every failed write ends the import.
//!
//! Uniqueness across replicas: the unique indexes on email and on external id, per account,
//! decide whichever replica writes. A `COPY` that meets a duplicate fails, and that part goes
//! through `INSERT ... ON CONFLICT DO NOTHING`, whose refused rows become row errors.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use sqlx::{PgConnection, PgPool};
use tokio::sync::Semaphore;

use super::copy::copy_users;
use super::notify::notify;
use super::tx::{in_transaction, in_transaction_when, unique_violation};
use crate::domain::batch::UserRef;
use crate::domain::{AccountId, Column, ImportKey, RowError, UserBatch};
use crate::store::codec::format_columns;
use crate::store::conflicts::{
    Holder, HolderRow, holder_lookup, holders_by_value, looked_up, merge_by_row, refusals,
};
use crate::store::{BatchOutcome, BatchTarget, StoreError, failed, policy};

/// Rows per `INSERT ... unnest` statement, so that one statement's arrays stay small.
const UNNEST_ROWS: usize = 2048;
/// Batches that skip the `COPY` fast path after one failed on a duplicate.
const COPY_BACKOFF_BATCHES: u32 = 8;
/// Users per batch from which a batch is written in two parts at once.
const PARALLEL_MIN_USERS: usize = 4096;

/// The batch writer's state across batches and uploads.
pub(super) struct Writes {
    /// Per running import, how many more batches skip the `COPY` fast path: a file with
    /// duplicates would otherwise pay for a failed `COPY` in every batch.
    copy_backoff: Mutex<HashMap<ImportKey, u32>>,
    /// Second connections that batches may write with at once, across all uploads: one per
    /// core beyond the first. When uploads already keep the cores busy, batches go in one part.
    second_writers: Arc<Semaphore>,
}

impl Writes {
    pub(super) fn new() -> Self {
        Self {
            copy_backoff: Mutex::new(HashMap::new()),
            second_writers: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get().max(2) - 1),
            )),
        }
    }

    /// Writes a batch. A large batch is written in two parts at once, on two connections, when
    /// a second writer is free: one server process inserting rows and maintaining the unique
    /// indexes is what limits a single upload (with one writer the two cores were about 55%
    /// busy, with two about 90%).
    pub(super) async fn write_batch(
        &self,
        pool: &PgPool,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
    ) -> Result<BatchOutcome, StoreError> {
        if let Some(mode) = target.planned() {
            let args = (target, mode, batch);
            let outcome = in_transaction_when(
                pool,
                &args,
                |tx, &(target, mode, batch)| Box::pin(write_planned(tx, target, mode, batch)),
                unique_violation,
            )
            .await?;
            return outcome.ok_or(StoreError::NotProcessing);
        }
        let try_copy = self.copy_worth_trying(target.key);
        let second_writer = (batch.len() >= PARALLEL_MIN_USERS)
            .then(|| self.second_writers.clone().try_acquire_owned().ok())
            .flatten();
        let parts = split(batch, if second_writer.is_some() { 2 } else { 1 });
        let written = futures::future::join_all(parts.iter().map(|users| async move {
            let args = (target, batch, users.as_slice(), try_copy);
            in_transaction(pool, &args, |tx, &(target, batch, users, try_copy)| {
                Box::pin(write_users(tx, target, batch, users, try_copy))
            })
            .await
        }))
        .await;
        drop(second_writer);
        let mut refused = Vec::new();
        let mut copy_failed = false;
        for part in written {
            let part = part?.ok_or(StoreError::NotProcessing)?;
            refused.extend(part.refused);
            copy_failed |= part.copy_failed;
        }
        if copy_failed {
            self.lock_backoff().insert(target.key, COPY_BACKOFF_BATCHES);
        }
        // File order, for the row errors.
        refused.sort_unstable();
        let args = (target, batch, refused.as_slice());
        let outcome = in_transaction(pool, &args, |tx, &(target, batch, refused)| {
            Box::pin(record_batch(tx, target, batch, refused))
        })
        .await?;
        outcome.ok_or(StoreError::NotProcessing)
    }

    /// Forgets an import that ended.
    pub(super) fn forget(&self, key: ImportKey) {
        self.lock_backoff().remove(&key);
    }

    fn copy_worth_trying(&self, key: ImportKey) -> bool {
        match self.lock_backoff().get_mut(&key) {
            Some(0) | None => true,
            Some(skip) => {
                *skip -= 1;
                false
            }
        }
    }

    fn lock_backoff(&self) -> std::sync::MutexGuard<'_, HashMap<ImportKey, u32>> {
        self.copy_backoff.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Which of `parts` parts of a batch a user is written in: chosen by email, so that the rows
/// of one address are always in the same part, written in file order, and the first is kept.
fn part_of(email: &str, parts: usize) -> usize {
    // FNV-1a: cheap, and spreads addresses evenly enough to balance the parts.
    let hash = email.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    (hash >> 8) as usize % parts
}

/// The users of a batch (their indexes), split into `parts` parts written at once. One part
/// when an external id is in two parts: the parts commit in no particular order, and of two
/// rows with one external id the first in the file must be the one kept.
fn split(batch: &UserBatch, parts: usize) -> Vec<Vec<usize>> {
    let all = || vec![(0..batch.len()).collect()];
    if parts <= 1 {
        return all();
    }
    let mut split = vec![Vec::with_capacity(batch.len() / parts + 1024); parts];
    let mut part_of_id: foldhash::HashMap<&str, usize> =
        foldhash::HashMapExt::with_capacity(batch.len());
    for (index, user) in batch.users().enumerate() {
        let part = part_of(user.email, parts);
        if let Some(id) = user.external_id
            && *part_of_id.entry(id).or_insert(part) != part
        {
            return all();
        }
        split[part].push(index);
    }
    split
}

/// Lets the transaction commit without waiting for its WAL to reach the disk. A batch need
/// not be durable before the next: if the server crashes, the import is PROCESSING and gets
/// ended anyway. Its ending commits synchronously, which flushes every earlier batch too.
async fn commit_lazily(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(conn)
        .await?;
    Ok(())
}

/// What writing one part of a batch did.
struct Written {
    /// Indexes (in the batch) of the users the unique indexes refused.
    refused: Vec<usize>,
    /// The `COPY` fast path was tried and failed on a duplicate.
    copy_failed: bool,
}

/// Writes some users of a batch (by index) in a transaction; `None` when the import is no
/// longer PROCESSING (another replica ended it), in which case nothing is written.
async fn write_users(
    conn: &mut PgConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    users: &[usize],
    try_copy: bool,
) -> Result<Option<Written>, sqlx::Error> {
    commit_lazily(conn).await?;
    // The import stays locked while its users are written: the reaper skips a locked import
    // (`FOR UPDATE SKIP LOCKED`), so it cannot end the import and delete its users while more
    // are being added; and an import it ended first gets no more users.
    if !lock_processing(conn, target.key).await? {
        return Ok(None);
    }
    if try_copy && copy_users(conn, target, batch, users).await? {
        return Ok(Some(Written {
            refused: Vec::new(),
            copy_failed: false,
        }));
    }
    let refused = insert_users(conn, target, batch, users).await?;
    Ok(Some(Written {
        refused,
        copy_failed: try_copy,
    }))
}

/// Once a batch's users are written: its row errors (validation errors and the refusals of
/// the unique indexes, in file order), the import's progress and a change notification.
/// `None` when the import is no longer PROCESSING.
async fn record_batch(
    conn: &mut PgConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    refused: &[usize],
) -> Result<Option<BatchOutcome>, sqlx::Error> {
    commit_lazily(conn).await?;
    let conflicts = conflicts(conn, target, batch, refused, true).await?;
    let written = Outcome {
        imported: (batch.len() - refused.len()) as u64,
        skipped: 0,
        updated: 0,
        conflicted: refused.to_vec(),
        errors: conflicts,
    };
    finish_batch(conn, target, batch, written).await
}

/// What writing a batch's users did, on either path.
struct Outcome {
    /// Users inserted (a dry run: that would have been).
    imported: u64,
    skipped: u64,
    updated: u64,
    /// Valid rows that failed on a conflict (indexes in the batch), in file order.
    conflicted: Vec<usize>,
    /// Their row errors and those of failed rows whose values are held, in file order.
    errors: Vec<RowError>,
}

/// The row errors for the values that `refused` users (and, with `probes`, the batch's
/// failed rows) found held.
async fn conflicts(
    conn: &mut PgConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    refused: &[usize],
    probes: bool,
) -> Result<Vec<RowError>, sqlx::Error> {
    if refused.is_empty() && (!probes || batch.probes().len() == 0) {
        return Ok(Vec::new());
    }
    let (emails, ids) = looked_up(batch, refused, probes);
    let by_email = holders(conn, target.account_id, Column::Email, emails).await?;
    let by_id = holders(conn, target.account_id, Column::ExternalId, ids).await?;
    Ok(refusals(
        target.key, batch, refused, probes, &by_email, &by_id,
    ))
}

/// A batch's row errors, its failed rows' cells, the import's progress and a change
/// notification. `None` when the import is no longer PROCESSING.
async fn finish_batch(
    conn: &mut PgConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    written: Outcome,
) -> Result<Option<BatchOutcome>, sqlx::Error> {
    let errors = merge_by_row(&batch.errors, written.errors);
    let stored = (errors.len() as u64).min(target.error_budget) as usize;
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
        "UPDATE imports SET bytes_received = $1, rows_processed = $2, rows_imported = $3, \
         rows_failed = $4, row_errors_omitted = $5, encoding = $6, delimiter = $7, \
         rows_skipped = $9, rows_updated = $10, update_time = now(), heartbeat_time = now() \
         WHERE import_key = $8 AND status = 'PROCESSING'",
    )
    .bind(progress.bytes_received as i64)
    .bind(progress.rows_processed as i64)
    .bind(progress.rows_imported as i64)
    .bind(progress.rows_failed as i64)
    .bind(progress.row_errors_omitted as i64)
    .bind(encoding)
    .bind(delimiter)
    .bind(target.key)
    .bind(progress.rows_skipped as i64)
    .bind(progress.rows_updated as i64)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(None);
    }
    insert_errors(conn, target.key, target.next_error_seq, &errors[..stored]).await?;
    let lines = failed::lines(batch, &written.conflicted, &errors[..stored]);
    insert_failed_rows(conn, target.key, &lines).await?;
    notify(conn, &[target.key]).await?;
    Ok(Some(outcome))
}

/// A dry run, or the SKIP and UPDATE policies, in one transaction: looks up who holds the
/// batch's values, decides every row (`policy::decide`), then writes what the plan says:
/// updates, then inserts (an update may free an external id a later row takes), then the
/// values the rows took in the file, the row errors and the progress. `None` when the import
/// is no longer PROCESSING.
///
/// Another replica may take a value between the lookup and the write: an insert is then
/// refused by the unique indexes, and gets its row error as in a plain import; an update fails
/// the transaction on the unique index, which runs again (`unique_violation`), its lookup
/// seeing the new holder.
async fn write_planned(
    conn: &mut PgConnection,
    target: &BatchTarget<'_>,
    mode: policy::Mode,
    batch: &UserBatch,
) -> Result<Option<BatchOutcome>, sqlx::Error> {
    commit_lazily(conn).await?;
    if !lock_processing(conn, target.key).await? {
        return Ok(None);
    }
    let (emails, ids) = policy::values(batch);
    let mut known = policy::Known::default();
    for (column, values) in [(Column::Email, &emails), (Column::ExternalId, &ids)] {
        if values.is_empty() {
            continue;
        }
        let sql = format!(
            "{}$1 AND u.{} = ANY($2)",
            policy::existing_lookup(),
            column.name()
        );
        let rows: Vec<policy::ExistingRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(target.account_id.as_str())
            .bind(values)
            .fetch_all(&mut *conn)
            .await?;
        known
            .users
            .extend(rows.into_iter().map(policy::Existing::from));
    }
    let rows: Vec<policy::FileKeyRow> = sqlx::query_as(
        "SELECT email, external_id, source_row, released_external_id FROM import_file_keys \
         WHERE import_key = $1 AND (email = ANY($2) OR external_id = ANY($3) \
                                    OR released_external_id = ANY($3))",
    )
    .bind(target.key)
    .bind(&emails)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    known.file_keys = rows.into_iter().map(policy::FileKey::from).collect();
    let plan = policy::decide(mode, batch, &known);
    update_users(conn, target, batch, &plan.updates, plan.releases).await?;
    let refused = insert_users(conn, target, batch, &plan.inserts).await?;
    insert_file_keys(conn, target.key, &plan.claims).await?;
    let refused_errors = conflicts(conn, target, batch, &refused, false).await?;
    let mut conflicted = plan.conflicted;
    conflicted.extend(&refused);
    conflicted.sort_unstable();
    let written = Outcome {
        imported: plan.would_insert - refused.len() as u64,
        skipped: plan.skipped,
        updated: plan.updated,
        conflicted,
        errors: merge_by_row(&plan.errors, refused_errors),
    };
    finish_batch(conn, target, batch, written).await
}

/// Locks the import while its batch is written, if it still runs: see `write_users`.
async fn lock_processing(conn: &mut PgConnection, key: ImportKey) -> Result<bool, sqlx::Error> {
    let processing: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM imports WHERE import_key = $1 AND status = 'PROCESSING' FOR KEY SHARE",
    )
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(processing.is_some())
}

/// Updates the users of `updates` with their rows' non-empty cells (an empty cell, bound as
/// NULL, keeps the stored value), keeping the values they replace for an import that fails.
async fn update_users(
    conn: &mut PgConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    updates: &[policy::Update],
    in_order: bool,
) -> Result<(), sqlx::Error> {
    // A statement checks the unique indexes row by row, in no particular order: when an
    // update frees an external id that a later one takes, they go one at a time, in file order.
    let rows = if in_order { 1 } else { UNNEST_ROWS };
    for part in updates.chunks(rows) {
        let users: Vec<UserRef<'_>> = part.iter().map(|u| batch.user(u.index)).collect();
        let given = |value: &'_ str| (!value.is_empty()).then_some(value.to_owned());
        let emails: Vec<&str> = users.iter().map(|u| u.email).collect();
        let first_names: Vec<Option<String>> = users.iter().map(|u| given(u.first_name)).collect();
        let last_names: Vec<Option<String>> = users.iter().map(|u| given(u.last_name)).collect();
        let roles: Vec<Option<&str>> = users
            .iter()
            .map(|u| u.role_given.then(|| u.role.as_str()))
            .collect();
        let job_titles: Vec<Option<String>> = users.iter().map(|u| given(u.job_title)).collect();
        let external_ids: Vec<Option<&str>> = users.iter().map(|u| u.external_id).collect();
        // One pass over the users: each row found once, updated by its tuple id, and its old
        // values, as the statement's snapshot has them, kept from its RETURNING. Only the
        // rows that change something (the plan holds no other, but a concurrent change may
        // have made one a no-op since its lookup): a row that changes nothing writes
        // nothing, and the user keeps its update time. A row another transaction changed
        // meanwhile has another tuple id: neither updated nor kept.
        sqlx::query(
            "WITH n AS (SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], \
                                             $7::text[], $8::text[]) \
                        AS n(email, first_name, last_name, role, job_title, external_id)), \
             updated AS ( \
               UPDATE users u SET first_name = coalesce(o.new_first_name, u.first_name), \
                 last_name = coalesce(o.new_last_name, u.last_name), \
                 role = coalesce(o.new_role, u.role), \
                 job_title = coalesce(o.new_job_title, u.job_title), \
                 external_id = coalesce(o.new_external_id, u.external_id), \
                 update_time = now(), updated_by = $2 \
               FROM (SELECT v.ctid AS tid, v.account_id, v.email, v.first_name, v.last_name, \
                            v.role, v.job_title, v.external_id, v.update_time, v.updated_by, \
                            n.first_name AS new_first_name, n.last_name AS new_last_name, \
                            n.role AS new_role, n.job_title AS new_job_title, \
                            n.external_id AS new_external_id \
                     FROM n JOIN users v ON v.account_id = $1 AND v.email = n.email \
                     WHERE v.first_name IS DISTINCT FROM coalesce(n.first_name, v.first_name) \
                        OR v.last_name IS DISTINCT FROM coalesce(n.last_name, v.last_name) \
                        OR v.role IS DISTINCT FROM coalesce(n.role, v.role) \
                        OR v.job_title IS DISTINCT FROM coalesce(n.job_title, v.job_title) \
                        OR v.external_id IS DISTINCT FROM \
                           coalesce(n.external_id, v.external_id)) o \
               WHERE u.ctid = o.tid \
               RETURNING o.account_id, o.email, o.first_name, o.last_name, o.role, \
                         o.job_title, o.external_id, o.update_time, o.updated_by) \
             INSERT INTO import_user_updates (import_key, account_id, email, first_name, \
               last_name, role, job_title, external_id, update_time, updated_by) \
             SELECT $2, * FROM updated",
        )
        .bind(target.account_id.as_str())
        .bind(target.key)
        .bind(&emails)
        .bind(&first_names)
        .bind(&last_names)
        .bind(&roles)
        .bind(&job_titles)
        .bind(&external_ids)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Records the values that rows not inserted as users took in the file.
async fn insert_file_keys(
    conn: &mut PgConnection,
    key: ImportKey,
    claims: &[policy::Claim<'_>],
) -> Result<(), sqlx::Error> {
    for part in claims.chunks(UNNEST_ROWS * 4) {
        let emails: Vec<&str> = part.iter().map(|c| c.email).collect();
        let ids: Vec<Option<&str>> = part.iter().map(|c| c.external_id).collect();
        let rows: Vec<i64> = part.iter().map(|c| c.row_number as i64).collect();
        let released: Vec<Option<&str>> = part.iter().map(|c| c.released_external_id).collect();
        sqlx::query(
            "INSERT INTO import_file_keys (import_key, email, external_id, source_row, \
             released_external_id) \
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[])",
        )
        .bind(key)
        .bind(&emails)
        .bind(&ids)
        .bind(&rows)
        .bind(&released)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Keeps the cells of the batch's failed rows, for the error report.
async fn insert_failed_rows(
    conn: &mut PgConnection,
    key: ImportKey,
    lines: &[failed::FailedLine<'_>],
) -> Result<(), sqlx::Error> {
    if lines.is_empty() {
        return Ok(());
    }
    let rows: Vec<i64> = lines.iter().map(|(row, _)| *row as i64).collect();
    let column =
        |i: usize| -> Vec<&str> { lines.iter().map(|(_, cells)| cells[i].as_ref()).collect() };
    sqlx::query(
        "INSERT INTO import_failed_rows (import_key, row_number, email, first_name, last_name, \
         role, job_title, external_id) \
         SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                                  $7::text[], $8::text[])",
    )
    .bind(key)
    .bind(&rows)
    .bind(column(0))
    .bind(column(1))
    .bind(column(2))
    .bind(column(3))
    .bind(column(4))
    .bind(column(5))
    .execute(conn)
    .await?;
    Ok(())
}

/// The path for users with duplicates: `INSERT ... SELECT FROM unnest(...)` with every column
/// bound as an array, `ON CONFLICT DO NOTHING`. Returns the indexes of the users the unique
/// indexes refused. unnest yields the rows in array order and nothing in the plan reorders
/// them, so of two equal values in the file the first is the one kept (the row error tests
/// check it).
async fn insert_users(
    conn: &mut PgConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    users: &[usize],
) -> Result<Vec<usize>, sqlx::Error> {
    let all: Vec<(usize, UserRef<'_>)> = users.iter().map(|&i| (i, batch.user(i))).collect();
    let mut refused = Vec::new();
    for part in all.chunks(UNNEST_ROWS) {
        refused.extend(insert_part(conn, target, part).await?);
    }
    Ok(refused)
}

/// `insert_users` for one statement's worth of users.
async fn insert_part(
    conn: &mut PgConnection,
    target: &BatchTarget<'_>,
    users: &[(usize, UserRef<'_>)],
) -> Result<Vec<usize>, sqlx::Error> {
    let emails: Vec<&str> = users.iter().map(|(_, u)| u.email).collect();
    let first_names: Vec<&str> = users.iter().map(|(_, u)| u.first_name).collect();
    let last_names: Vec<&str> = users.iter().map(|(_, u)| u.last_name).collect();
    let roles: Vec<&str> = users.iter().map(|(_, u)| u.role.as_str()).collect();
    let job_titles: Vec<&str> = users.iter().map(|(_, u)| u.job_title).collect();
    let external_ids: Vec<Option<&str>> = users.iter().map(|(_, u)| u.external_id).collect();
    let rows: Vec<i64> = users.iter().map(|(_, u)| u.row_number as i64).collect();
    let inserted: HashSet<i64> = sqlx::query_scalar(
        "INSERT INTO users (account_id, email, first_name, last_name, role, job_title, \
         external_id, import_key, source_row) \
         SELECT $1, u.email, u.first_name, u.last_name, u.role, u.job_title, u.external_id, $2, \
                u.source_row \
         FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
                     $9::bigint[]) \
              AS u(email, first_name, last_name, role, job_title, external_id, source_row) \
         ON CONFLICT DO NOTHING \
         RETURNING source_row",
    )
    .bind(target.account_id.as_str())
    .bind(target.key)
    .bind(&emails)
    .bind(&first_names)
    .bind(&last_names)
    .bind(&roles)
    .bind(&job_titles)
    .bind(&external_ids)
    .bind(&rows)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    Ok(users
        .iter()
        .zip(&rows)
        .filter(|(_, row)| !inserted.contains(row))
        .map(|((index, _), _)| *index)
        .collect())
}

/// Who holds each of `values` in `column` (email or external_id) in the account.
async fn holders(
    conn: &mut PgConnection,
    account_id: &AccountId,
    column: Column,
    values: Vec<&str>,
) -> Result<HashMap<String, Holder>, sqlx::Error> {
    if values.is_empty() {
        return Ok(HashMap::new());
    }
    let sql = format!(
        "{}$1 AND u.{} = ANY($2)",
        holder_lookup(column),
        column.name()
    );
    let rows: Vec<HolderRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(account_id.as_str())
        .bind(&values)
        .fetch_all(&mut *conn)
        .await?;
    Ok(holders_by_value(rows))
}

async fn insert_errors(
    conn: &mut PgConnection,
    key: ImportKey,
    first_seq: u64,
    errors: &[RowError],
) -> Result<(), sqlx::Error> {
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

/// Puts back what a failed or cancelled import changed: the users it created go, and the
/// users it updated get their values back.
///
/// In that order, and with the restored users' external ids cleared first: the unique index
/// checks row by row, and the import may have given an id one user released to another (or
/// to a user it created). An old id that another import took meanwhile cannot come back; the
/// user is restored without it, and the log says how many.
pub(super) async fn undo_import(
    conn: &mut PgConnection,
    key: ImportKey,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM users WHERE import_key = $1")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE users u SET external_id = NULL FROM import_user_updates s \
         WHERE s.import_key = $1 AND u.account_id = s.account_id AND u.email = s.email \
         AND u.external_id IS NOT NULL",
    )
    .bind(key)
    .execute(&mut *conn)
    .await?;
    let lost: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM import_user_updates s WHERE s.import_key = $1 \
         AND s.external_id IS NOT NULL AND EXISTS (SELECT 1 FROM users o \
             WHERE o.account_id = s.account_id AND o.external_id = s.external_id)",
    )
    .bind(key)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE users u SET first_name = s.first_name, last_name = s.last_name, role = s.role, \
         job_title = s.job_title, update_time = s.update_time, updated_by = s.updated_by, \
         external_id = CASE WHEN EXISTS (SELECT 1 FROM users o \
             WHERE o.account_id = s.account_id AND o.external_id = s.external_id) \
             THEN NULL ELSE s.external_id END \
         FROM import_user_updates s \
         WHERE s.import_key = $1 AND u.account_id = s.account_id AND u.email = s.email",
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
    conn: &mut PgConnection,
    key: ImportKey,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM import_file_keys WHERE import_key = $1")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM import_user_updates WHERE import_key = $1")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Email, NewUser, Role};

    fn batch(rows: &[(&str, Option<&str>)]) -> UserBatch {
        let mut batch = UserBatch::with_capacity(rows.len());
        for (i, (email, external_id)) in rows.iter().enumerate() {
            let user = NewUser {
                email: Email::parse(email).unwrap(),
                first_name: "",
                last_name: "",
                role: Role::Member,
                role_given: false,
                job_title: "",
                external_id: *external_id,
            };
            batch.push_user(i as u64 + 2, &user);
        }
        batch
    }

    #[test]
    fn a_batch_splits_by_address_in_file_order() {
        let emails: Vec<String> = (0..1000).map(|i| format!("u{i}@example.com")).collect();
        let mut rows: Vec<(&str, Option<&str>)> =
            emails.iter().map(|e| (e.as_str(), None)).collect();
        rows.push(("U7@example.com", None));
        let batch = batch(&rows);
        let parts = split(&batch, 2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].len() + parts[1].len(), 1001);
        // Balanced enough to keep both writers busy.
        assert!(parts[0].len().abs_diff(parts[1].len()) < 100, "{parts:?}");
        for part in &parts {
            assert!(part.windows(2).all(|w| w[0] < w[1]), "file order");
        }
        // Both rows of one address are in one part.
        let part_of_row = |i| parts.iter().position(|p| p.contains(&i)).unwrap();
        assert_eq!(part_of_row(7), part_of_row(1000));
        assert_eq!(split(&batch, 1), vec![(0..1001).collect::<Vec<_>>()]);
    }

    #[test]
    fn an_external_id_in_two_parts_keeps_the_batch_whole() {
        let emails: Vec<String> = (0..100).map(|i| format!("u{i}@example.com")).collect();
        let mut rows: Vec<(&str, Option<&str>)> =
            emails.iter().map(|e| (e.as_str(), Some("E-1"))).collect();
        assert_eq!(split(&batch(&rows), 2).len(), 1);
        rows.iter_mut().enumerate().for_each(|(i, row)| {
            row.1 = (i % 2 == 0).then_some("E-2");
        });
        // One external id on rows of both parts.
        assert_eq!(split(&batch(&rows), 2).len(), 1);
        rows.iter_mut().for_each(|row| row.1 = None);
        assert_eq!(split(&batch(&rows), 2).len(), 2);
    }
}
