//! The plain import's batches on PostgreSQL (ERROR policy, not a dry run): the users by
//! binary `COPY` (`copy`) when the batch has no duplicates, else by `INSERT ... ON CONFLICT DO
//! NOTHING`; a large batch in two parts at once, on two connections (`parallel`); then one
//! short transaction for the batch's record (`store::record::plain`). Up to three
//! transactions per batch, then: a failure between them leaves users that the import's
//! ending removes, since every failed write ends the import.
//!
//! Uniqueness across replicas: the unique indexes on email and on external id, per account,
//! decide whichever replica writes. A `COPY` that meets a duplicate fails, and that part goes
//! through the insert that tolerates duplicates, whose refused rows become row errors.
//!
//! The record comes last, in its own transaction, once every part has committed and the refused
//! rows of all parts are known: its `NotProcessing` then means the import ended while the parts
//! were written, and that ending removed them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use sqlx::{PgConnection, PgPool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::copy::copy_users;
use super::parallel::split;
use super::steps::PgSteps;
use super::tx::{commit_lazily, in_transaction, only_conflicts};
use crate::domain::batch::UserRef;
use crate::domain::{ImportKey, UserBatch};
use crate::store::steps::Steps;
use crate::store::{BatchTarget, BatchWritten, StoreError, record};

/// Rows per `INSERT ... unnest` statement, so that one statement's arrays stay small.
///
/// Also the size of `apply`'s update statements, which bind the same kind of arrays.
pub(super) const UNNEST_ROWS: usize = 2048;
/// Batches that skip the `COPY` fast path after one failed on a duplicate.
///
/// A failed `COPY` costs the rows it sent before the duplicate and a rollback to its savepoint,
/// and then the part is inserted again the slower way.
const COPY_BACKOFF_BATCHES: u32 = 8;
/// Users per batch from which a batch is written in two parts at once.
///
/// Smaller batches (a file's last, or one flushed because the client was slow) go in one part.
const PARALLEL_MIN_USERS: usize = 4096;

/// The plain path's state across batches and uploads.
pub(super) struct PlainWrites {
    /// Per running import, how many more batches skip the `COPY` fast path: a file with
    /// duplicates would otherwise pay for a failed `COPY` in every batch.
    copy_backoff: Mutex<HashMap<ImportKey, u32>>,
    /// Second connections that batches may write with at once, across all uploads: one per
    /// core beyond the first. When uploads already keep the cores busy, batches go in one part.
    second_writers: Arc<Semaphore>,
}

/// What writing one part of a batch did.
struct Part {
    /// Indexes (in the batch) of the users the unique indexes refused.
    refused: Vec<usize>,
    /// The `COPY` fast path was tried and failed on a duplicate.
    copy_failed: bool,
}

impl PlainWrites {
    /// No backoff yet; as many second writers as the machine has cores beyond the first (at least
    /// one).
    pub(super) fn new() -> Self {
        Self {
            copy_backoff: Mutex::new(HashMap::new()),
            second_writers: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get().max(2) - 1),
            )),
        }
    }

    /// Writes a plain batch: its users, in two parts at once when it is large and a second
    /// writer is free, then its record. `NotProcessing` when the import ended meanwhile.
    ///
    /// The second writer is taken without waiting: when none is free, the batch goes in one part
    /// at once rather than queueing behind other uploads. A part that fails fails the batch; a
    /// part that committed stays, for the import's ending to remove.
    pub(super) async fn write(
        &self,
        pool: &PgPool,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
    ) -> Result<BatchWritten, StoreError> {
        let try_copy = self.copy_worth_trying(target.key);
        let second_writer = (batch.len() >= PARALLEL_MIN_USERS)
            .then(|| self.second_writer())
            .flatten();
        let parts = split(batch, if second_writer.is_some() { 2 } else { 1 });
        let written = futures::future::join_all(parts.iter().map(|users| async move {
            let args = (target, batch, users.as_slice(), try_copy);
            in_transaction(
                pool,
                &NOT_TOLD,
                &args,
                only_conflicts,
                |steps, &(target, batch, users, try_copy)| {
                    Box::pin(write_part(steps, target, batch, users, try_copy))
                },
            )
            .await
        }))
        .await;
        drop(second_writer);
        let mut refused = Vec::new();
        let mut copy_failed = false;
        for part in written {
            let part = part?;
            refused.extend(part.refused);
            copy_failed |= part.copy_failed;
        }
        if copy_failed {
            self.lock_backoff().insert(target.key, COPY_BACKOFF_BATCHES);
        }
        // File order, for the row errors.
        refused.sort_unstable();
        let args = (target, batch, refused);
        in_transaction(
            pool,
            &NOT_TOLD,
            &args,
            only_conflicts,
            |mut steps, (target, batch, refused)| {
                Box::pin(async move {
                    commit_lazily(steps.connection()).await?;
                    record::plain(&mut steps, target, batch, refused.clone()).await
                })
            },
        )
        .await
    }

    /// A second writer, if one is free: taken without waiting, so that a batch goes on alone
    /// rather than queue behind other uploads. Also a planned batch's, for its file keys
    /// (`beside`).
    pub(super) fn second_writer(&self) -> Option<OwnedSemaphorePermit> {
        self.second_writers.clone().try_acquire_owned().ok()
    }

    /// Forgets an import that ended.
    ///
    /// Its backoff only: nothing else here is kept per import.
    pub(super) fn forget(&self, key: ImportKey) {
        self.lock_backoff().remove(&key);
    }

    /// Whether this batch tries `COPY`: yes unless the import is in its backoff, which this
    /// counts down by one batch.
    fn copy_worth_trying(&self, key: ImportKey) -> bool {
        match self.lock_backoff().get_mut(&key) {
            Some(0) | None => true,
            Some(skip) => {
                *skip -= 1;
                false
            }
        }
    }

    /// A poisoned lock is taken anyway: the map holds plain counters.
    fn lock_backoff(&self) -> std::sync::MutexGuard<'_, HashMap<ImportKey, u32>> {
        self.copy_backoff.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Writes some users of a batch (by index) in a transaction; `NotProcessing`, with nothing
/// written, when the import ended (another replica took it for abandoned).
async fn write_part(
    mut steps: PgSteps<'_>,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    users: &[usize],
    try_copy: bool,
) -> Result<Part, StoreError> {
    commit_lazily(steps.connection()).await?;
    // The import stays held while its users are written: the reaper passes a held import
    // by, so it cannot end the import and delete its users while more are being added; and
    // an import it ended first gets no more users.
    if !steps.lock_processing(target.key).await? {
        return Err(StoreError::NotProcessing);
    }
    let conn = steps.connection();
    if try_copy && copy_users(conn, target, batch, users).await? {
        return Ok(Part {
            refused: Vec::new(),
            copy_failed: false,
        });
    }
    let refused = insert_users(conn, target, batch, users).await?;
    Ok(Part {
        refused,
        copy_failed: try_copy,
    })
}

/// The path for users with duplicates: `INSERT ... SELECT FROM unnest(...)` with every column
/// bound as an array, `ON CONFLICT DO NOTHING`. Returns the indexes of the users the unique
/// indexes refused. unnest yields the rows in array order and nothing in the plan reorders
/// them, so of two equal values in the file the first is the one kept (the row error tests
/// check it).
pub(super) async fn insert_users(
    conn: &mut PgConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    users: &[usize],
) -> Result<Vec<usize>, StoreError> {
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
) -> Result<Vec<usize>, StoreError> {
    let emails: Vec<&str> = users.iter().map(|(_, u)| u.email).collect();
    let first_names: Vec<&str> = users.iter().map(|(_, u)| u.first_name).collect();
    let last_names: Vec<&str> = users.iter().map(|(_, u)| u.last_name).collect();
    let roles: Vec<&str> = users.iter().map(|(_, u)| u.role.as_str()).collect();
    let job_titles: Vec<&str> = users.iter().map(|(_, u)| u.job_title).collect();
    let external_ids: Vec<Option<&str>> = users.iter().map(|(_, u)| u.external_id).collect();
    let rows: Vec<i64> = users.iter().map(|(_, u)| u.row_number as i64).collect();
    let inserted: HashSet<i64> = sqlx::query_scalar(
        "INSERT INTO users (account_key, email, first_name, last_name, role, job_title, \
         external_id, import_key, source_row) \
         SELECT $1, u.email, u.first_name, u.last_name, u.role, u.job_title, u.external_id, $2, \
                u.source_row \
         FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
                     $9::bigint[]) \
              AS u(email, first_name, last_name, role, job_title, external_id, source_row) \
         ON CONFLICT DO NOTHING \
         RETURNING source_row",
    )
    .bind(target.account_key.0)
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

/// A batch writes no event: the feed hears of an import at its commit.
static NOT_TOLD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
