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
use super::tx::in_transaction;
use crate::domain::batch::UserRef;
use crate::domain::{AccountId, Column, ImportKey, RowError, UserBatch};
use crate::store::codec::format_columns;
use crate::store::conflicts::{
    Holder, HolderRow, holder_lookup, holders_by_value, looked_up, merge_by_row, refusals,
};
use crate::store::{BatchOutcome, BatchTarget, StoreError};

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
    let processing: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM imports WHERE import_key = $1 AND status = 'PROCESSING' FOR KEY SHARE",
    )
    .bind(target.key)
    .fetch_optional(&mut *conn)
    .await?;
    if processing.is_none() {
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
    let mut conflicts = Vec::new();
    if !refused.is_empty() || batch.probes().len() > 0 {
        let (emails, ids) = looked_up(batch, refused);
        let by_email = holders(conn, target.account_id, Column::Email, emails).await?;
        let by_id = holders(conn, target.account_id, Column::ExternalId, ids).await?;
        conflicts = refusals(target.key, batch, refused, &by_email, &by_id);
    }
    let errors = merge_by_row(&batch.errors, conflicts);
    let stored = (errors.len() as u64).min(target.error_budget) as usize;
    let outcome = BatchOutcome {
        imported: (batch.len() - refused.len()) as u64,
        conflicts: refused.len() as u64,
        errors_stored: stored as u64,
        errors_omitted: (errors.len() - stored) as u64,
    };
    let progress = outcome.applied_to(target.progress);
    let (encoding, delimiter) = format_columns(target.format);
    let updated = sqlx::query(
        "UPDATE imports SET bytes_received = $1, rows_processed = $2, rows_imported = $3, \
         rows_failed = $4, row_errors_omitted = $5, encoding = $6, delimiter = $7, \
         update_time = now(), heartbeat_time = now() \
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
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(None);
    }
    insert_errors(conn, target.key, target.next_error_seq, &errors[..stored]).await?;
    notify(conn, &[target.key]).await?;
    Ok(Some(outcome))
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
