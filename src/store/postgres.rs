//! PostgreSQL, for several replicas behind one Kubernetes Service.
//!
//! What several replicas need, and how this module gives it:
//!
//! - **Uniqueness across replicas**: the unique indexes on (email, account) and (external_id,
//!   account) decide, whichever replica writes; a `COPY` that meets a duplicate fails, and the
//!   batch goes through `INSERT ... ON CONFLICT DO NOTHING`, whose refused rows are reported as
//!   ALREADY_EXISTS (or DUPLICATE_IN_FILE when the holder is the same import). Two imports
//!   writing overlapping addresses can deadlock; the transaction is then retried.
//! - **Writes**: a batch's users go in by binary `COPY`, a large batch in two parts at once on
//!   two connections (split by address, so that two rows of one address stay in order in one
//!   part); then one short transaction stores its row errors and the import's counters. The
//!   import row is locked (`FOR KEY SHARE`) while users are written, so that an import ended
//!   by another replica never gets users after its end.
//! - **Progress everywhere**: every batch and every ending sends `NOTIFY bulk_import_changes,
//!   '<import key>'` in its transaction. Each replica listens (`PgListener`, which reconnects
//!   by itself) and wakes its watchers, which read the stored import: the database stays the
//!   source of truth, a missed notification only delays an update until the next poll.
//! - **Replica death**: each replica holds a session advisory lock on its own random owner
//!   number for as long as it lives, and stamps its running imports with it and with a
//!   heartbeat. Any replica ends an import whose owner's lock is gone (the process died: the
//!   lock goes with its connection at once) or whose heartbeat is older than the lease (the
//!   replica hangs or is cut off), deleting its users in the same transaction.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres, Transaction};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;

use super::queries;
use super::{
    BatchOutcome, BatchTarget, Batching, Conclusion, Holder, HolderRow, ImportRow, Store,
    StoreError, StoredRowError, format_columns, holder_lookup, holders_by_value, merge_by_row,
    refusals,
};
use crate::domain::batch::UserRef;
use crate::domain::{
    AccountId, Column, Import, ImportId, ImportKey, ImportStatus, NewImport, RowError, UserBatch,
};

/// The channel of change notifications; the payload is the import key.
const CHANNEL: &str = "bulk_import_changes";
/// First key of the advisory locks this service takes ("BIMP"), so that they do not collide
/// with other users of the database.
const LOCK_NAMESPACE: i64 = 0x4249_4D50;
/// How long an import may go without a heartbeat before another replica ends it.
pub const LEASE: Duration = Duration::from_secs(30);
/// How old the heartbeat of an import whose owner's lock is gone must be before it is ended:
/// a live replica heartbeats every few seconds, even while its lock is being taken again.
const LOCK_GRACE: Duration = Duration::from_secs(10);
/// How long a starting replica waits for the batch of a dead one to be aborted.
const REAP_WAIT: Duration = Duration::from_secs(5);
/// How often the owner lock's connection is checked.
const LOCK_CHECK: Duration = Duration::from_secs(5);
/// `COPY` data goes to the server in messages of this size.
const COPY_PIECE_BYTES: usize = 64 * 1024;
/// Rows per `INSERT ... unnest` statement, for the same reason.
const UNNEST_ROWS: usize = 2048;
/// Batches that skip the `COPY` fast path after one failed on a duplicate.
const COPY_BACKOFF_BATCHES: u32 = 8;
/// Users per batch from which a batch is written in two parts at once (see `write_batch`).
const PARALLEL_MIN_USERS: usize = 4096;
/// Deadlocks between two imports writing overlapping keys are retried this many times.
const MAX_ATTEMPTS: usize = 8;

/// Runs `$body` (an async block using the transaction `$tx`) in a transaction, and again when it
/// loses a deadlock or a serialization conflict to another import. Evaluates to
/// `Result<T, StoreError>`.
macro_rules! in_transaction {
    ($pool:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut $tx = match $pool.begin().await {
                Ok(tx) => tx,
                Err(e) => break Err(StoreError::from(e)),
            };
            let result = match $body.await {
                Ok(value) => $tx.commit().await.map(|()| value),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if attempt < MAX_ATTEMPTS && is_retryable(&e) => {
                    tracing::debug!(error = %e, attempt, "retrying a transaction");
                    tokio::time::sleep(Duration::from_millis(10 * attempt as u64)).await;
                }
                other => break other.map_err(StoreError::from),
            }
        }
    }};
}

const IMPORT_COLUMNS: &str = "import_key, account_id, import_id, type, filename, status, \
    bytes_received, rows_processed, rows_imported, rows_failed, row_errors_omitted, encoding, \
    delimiter, error_message, \
    (extract(epoch FROM create_time) * 1000000)::bigint AS create_time, \
    (extract(epoch FROM update_time) * 1000000)::bigint AS update_time, \
    (extract(epoch FROM complete_time) * 1000000)::bigint AS complete_time";

pub struct PostgresStore {
    pool: PgPool,
    /// Per running import, how many more batches skip the `COPY` fast path: a file with
    /// duplicates would otherwise pay for a failed `COPY` in every batch.
    copy_backoff: Mutex<HashMap<ImportKey, u32>>,
    /// This replica's number: its advisory lock, and the `owner` of the imports it runs.
    owner: i64,
    changes: Arc<Changes>,
    /// Second connections that batches may write with at once, across all uploads: one per
    /// core beyond the first. When uploads already keep the cores busy, batches go in one part.
    second_writers: Arc<Semaphore>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl PostgresStore {
    /// Connects, applies `migrations/postgres` (sqlx's migrator takes a lock, so replicas that
    /// start together apply them once), takes this replica's owner lock and starts listening.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("{url}: {e}")))?
            .application_name("bulk-import");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // Requests fail fast with UNAVAILABLE while the database is away.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;

        let owner = i64::from(uuid::Uuid::new_v4().as_u128() as u32 & 0x7fff_ffff).max(1);
        let (locked, lock_taken) = oneshot::channel();
        let lock_task = tokio::spawn(hold_owner_lock(options, owner, Some(locked)));
        if lock_taken.await.is_err() {
            return Err(StoreError::Config("the owner lock task ended".into()));
        }
        let changes = Arc::new(Changes::default());
        let listen_task = tokio::spawn(listen(pool.clone(), changes.clone()));
        tracing::info!(owner, "postgres store ready");
        Ok(Self {
            pool,
            copy_backoff: Mutex::new(HashMap::new()),
            owner,
            changes,
            second_writers: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get().max(2) - 1),
            )),
            tasks: vec![lock_task, listen_task],
        })
    }

    fn copy_worth_trying(&self, key: ImportKey) -> bool {
        let mut backoff = self.copy_backoff.lock().unwrap_or_else(|e| e.into_inner());
        match backoff.get_mut(&key) {
            Some(0) | None => true,
            Some(skip) => {
                *skip -= 1;
                false
            }
        }
    }

    /// After a batch whose `COPY` failed on a duplicate, the next batches go straight to the
    /// slower path that tolerates duplicates.
    fn note_conflicts(&self, key: ImportKey, copy_failed: bool) {
        let mut backoff = self.copy_backoff.lock().unwrap_or_else(|e| e.into_inner());
        if copy_failed {
            backoff.insert(key, COPY_BACKOFF_BATCHES);
        }
    }

    /// Ends the imports whose replica is gone: no owner lock, or no heartbeat for a lease.
    ///
    /// An import whose owner's lock is gone is ended once its heartbeat is also `lock_grace`
    /// old: the lock's connection of a live replica may drop and be taken again, while its
    /// heartbeats go on.
    ///
    /// An import whose row is locked by a batch being written is skipped, unless `wait`:
    /// then the reaper waits (up to `REAP_WAIT`) for that transaction, which is what a replica
    /// that starts wants, as the batch of its dead predecessor is aborted once the server
    /// notices the lost connection.
    async fn reap(
        &self,
        message: &str,
        lock_grace: Duration,
        wait: bool,
    ) -> Result<u64, StoreError> {
        let locking = if wait {
            "FOR UPDATE"
        } else {
            "FOR UPDATE SKIP LOCKED"
        };
        let sql = format!(
            "WITH dead AS ( \
                           SELECT import_key FROM imports i \
                           WHERE status = 'PROCESSING' AND ( \
                             heartbeat_time IS NULL \
                             OR heartbeat_time < now() - make_interval(secs => $1) \
                             OR (heartbeat_time < now() - make_interval(secs => $4) \
                                 AND NOT EXISTS ( \
                               SELECT 1 FROM pg_locks l \
                               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
                                 AND l.database = (SELECT oid FROM pg_database \
                                                   WHERE datname = current_database()) \
                                 AND l.classid = $2::oid AND l.objid = i.owner::oid))) \
                           {locking}), \
                         gone AS (DELETE FROM users u USING dead d \
                                  WHERE u.import_key = d.import_key) \
                         UPDATE imports SET status = 'ERROR_UNKNOWN', error_message = $3, \
                           rows_imported = 0, update_time = now(), complete_time = now() \
                         FROM dead WHERE imports.import_key = dead.import_key \
                         RETURNING imports.import_key"
        );
        let reaped: Vec<i64> = in_transaction!(self.pool, |tx| async {
            if wait {
                let timeout = format!("SET LOCAL lock_timeout = {}", REAP_WAIT.as_millis());
                sqlx::query(sqlx::AssertSqlSafe(timeout))
                    .execute(&mut *tx)
                    .await?;
            }
            let keys: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(LEASE.as_secs_f64())
                .bind(LOCK_NAMESPACE)
                .bind(message)
                .bind(lock_grace.as_secs_f64())
                .fetch_all(&mut *tx)
                .await?;
            notify(&mut tx, &keys).await?;
            Ok::<_, sqlx::Error>(keys)
        })?;
        if !reaped.is_empty() {
            tracing::warn!(imports = ?reaped, "ended imports whose replica is gone");
        }
        Ok(reaped.len() as u64)
    }
}

fn is_retryable(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// Sends a change notification for each key, delivered when the transaction commits.
async fn notify(tx: &mut Transaction<'static, Postgres>, keys: &[i64]) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, key::text) FROM unnest($2::bigint[]) AS key")
        .bind(CHANNEL)
        .bind(keys)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Holds this replica's advisory lock on a connection of its own for as long as the process
/// lives, taking it again after the connection is lost. `locked` is told the first time.
async fn hold_owner_lock(
    options: PgConnectOptions,
    owner: i64,
    mut locked: Option<oneshot::Sender<()>>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let attempt = async {
            let mut conn = PgConnection::connect_with(&options).await?;
            sqlx::query("SELECT pg_advisory_lock($1::int, $2::int)")
                .bind(LOCK_NAMESPACE)
                .bind(owner)
                .execute(&mut conn)
                .await?;
            Ok::<_, sqlx::Error>(conn)
        };
        match attempt.await {
            Ok(mut conn) => {
                delay = Duration::from_millis(100);
                if let Some(locked) = locked.take() {
                    let _ = locked.send(());
                }
                loop {
                    tokio::time::sleep(LOCK_CHECK).await;
                    if let Err(e) = sqlx::query("SELECT 1").execute(&mut conn).await {
                        tracing::warn!(error = %e, "lost the owner lock's connection; retaking it");
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the owner lock; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Watchers of imports, by key, woken by change notifications.
#[derive(Default)]
struct Changes {
    watchers: Mutex<HashMap<ImportKey, watch::Sender<u64>>>,
}

impl Changes {
    fn subscribe(&self, key: ImportKey) -> watch::Receiver<u64> {
        let mut watchers = self.lock();
        watchers.retain(|_, tx| tx.receiver_count() > 0);
        watchers
            .entry(key)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn poke(&self, key: ImportKey) {
        if let Some(tx) = self.lock().get(&key) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// After a lost connection notifications may have been missed: wake everyone to re-read.
    fn poke_all(&self) {
        for tx in self.lock().values() {
            tx.send_modify(|n| *n += 1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ImportKey, watch::Sender<u64>>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn listen(pool: PgPool, changes: Arc<Changes>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for changes; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %e, "cannot listen for changes; retrying");
            tokio::time::sleep(delay).await;
            continue;
        }
        delay = Duration::from_millis(100);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if let Ok(key) = notification.payload().parse() {
                        changes.poke(key);
                    }
                }
                // The connection was lost and is back: whatever happened meanwhile was missed.
                Ok(None) => changes.poke_all(),
                Err(e) => {
                    tracing::warn!(error = %e, "change notifications interrupted");
                    changes.poke_all();
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}

#[async_trait]
impl Store for PostgresStore {
    /// Batches of up to 32,768 rows (fewer, larger COPYs and commits: 4,096 took 16.9 s for
    /// 199 MiB, 32,768 about 15; 65,536 no faster), flushed at least every 250 ms while rows
    /// arrive: other replicas read progress from the stored counters, and watchers are
    /// promised an update every 500 ms.
    fn batching(&self) -> Batching {
        Batching {
            rows: 32 * 1024,
            flush_after: Some(Duration::from_millis(250)),
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// At start, an import whose owner's lock is gone is ended at once: a replica that
    /// restarts ends what it (or a dead neighbour) left running.
    async fn recover_interrupted(&self, message: &str) -> Result<u64, StoreError> {
        match self.reap(message, Duration::ZERO, true).await {
            // Still locked after the wait: the upkeep ends it once the lock is gone.
            Err(StoreError::Database(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some("55P03") =>
            {
                self.reap(message, Duration::ZERO, false).await
            }
            other => other,
        }
    }

    async fn maintain(&self, running: &[ImportKey], message: &str) -> Result<u64, StoreError> {
        if !running.is_empty() {
            sqlx::query(
                "UPDATE imports SET heartbeat_time = now() \
                 WHERE import_key = ANY($1) AND owner = $2 AND status = 'PROCESSING'",
            )
            .bind(running)
            .bind(self.owner)
            .execute(&self.pool)
            .await?;
        }
        self.reap(message, LOCK_GRACE, false).await
    }

    fn subscribe(&self, key: ImportKey) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe(key))
    }

    async fn create_import(&self, new: &NewImport) -> Result<Import, StoreError> {
        let sql = format!(
            "INSERT INTO imports (account_id, import_id, type, filename, status, owner, \
             heartbeat_time) VALUES ($1, $2, $3, $4, 'PROCESSING', $5, now()) \
             RETURNING {IMPORT_COLUMNS}"
        );
        let row: ImportRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(new.account_id.as_str())
            .bind(new.import_id.as_str())
            .bind(new.kind.as_str())
            .bind(new.filename.as_str())
            .bind(self.owner)
            .fetch_one(&self.pool)
            .await?;
        row.try_into()
    }

    async fn discard_import(&self, key: ImportKey) -> Result<(), StoreError> {
        in_transaction!(self.pool, |tx| async {
            sqlx::query("DELETE FROM users WHERE import_key = $1")
                .bind(key)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM imports WHERE import_key = $1")
                .bind(key)
                .execute(&mut *tx)
                .await?;
            Ok::<_, sqlx::Error>(())
        })
    }

    async fn write_batch(
        &self,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
    ) -> Result<BatchOutcome, StoreError> {
        let try_copy = self.copy_worth_trying(target.key);
        // A large batch is written in two parts at once, on two connections, when a second
        // writer is free: one server process inserting rows and maintaining the unique indexes
        // is what limits a single upload: with one writer the two cores were about 55% busy,
        // with two about 90%.
        let second_writer = (batch.len() >= PARALLEL_MIN_USERS)
            .then(|| self.second_writers.clone().try_acquire_owned().ok())
            .flatten();
        let parts = split(batch, if second_writer.is_some() { 2 } else { 1 });
        let written = futures::future::join_all(parts.iter().map(|users| async move {
            in_transaction!(self.pool, |tx| write_users(
                &mut tx, target, batch, users, try_copy
            ))
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
        self.note_conflicts(target.key, copy_failed);
        // File order, for the row errors.
        refused.sort_unstable();
        let outcome = in_transaction!(self.pool, |tx| record_batch(
            &mut tx, target, batch, &refused
        ))?;
        outcome.ok_or(StoreError::NotProcessing)
    }

    async fn conclude_import(
        &self,
        key: ImportKey,
        conclusion: &Conclusion,
    ) -> Result<Import, StoreError> {
        let failed = !matches!(
            conclusion.status,
            ImportStatus::CompletedSuccess
                | ImportStatus::CompletedPartial
                | ImportStatus::CompletedNothingToImport
        );
        let row = in_transaction!(self.pool, |tx| async {
            if failed {
                sqlx::query("DELETE FROM users WHERE import_key = $1")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
            let c = &conclusion.counters;
            let (encoding, delimiter) = format_columns(conclusion.format);
            let sql = format!(
                "UPDATE imports SET status = $1, error_message = $2, bytes_received = $3, \
                         rows_processed = $4, rows_imported = $5, rows_failed = $6, \
                         row_errors_omitted = $7, encoding = $8, delimiter = $9, \
                         update_time = now(), complete_time = now() \
                         WHERE import_key = $10 AND status = 'PROCESSING' \
                         RETURNING {IMPORT_COLUMNS}"
            );
            let row: Option<ImportRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(conclusion.status.as_str())
                .bind(&conclusion.error_message)
                .bind(c.bytes_received as i64)
                .bind(c.rows_processed as i64)
                .bind(if failed { 0 } else { c.rows_imported as i64 })
                .bind(c.rows_failed as i64)
                .bind(c.row_errors_omitted as i64)
                .bind(encoding)
                .bind(delimiter)
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
            if row.is_some() {
                notify(&mut tx, &[key]).await?;
            }
            Ok::<_, sqlx::Error>(row)
        })?;
        self.copy_backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        row.ok_or(StoreError::NotProcessing)?.try_into()
    }

    async fn get_import(
        &self,
        account_id: &AccountId,
        import_id: &ImportId,
    ) -> Result<Option<Import>, StoreError> {
        queries::get_import(&self.pool, IMPORT_COLUMNS, account_id, import_id).await
    }

    async fn list_imports(
        &self,
        account_id: &AccountId,
        before: Option<ImportKey>,
        limit: u32,
    ) -> Result<Vec<Import>, StoreError> {
        queries::list_imports(&self.pool, IMPORT_COLUMNS, account_id, before, limit).await
    }

    async fn list_row_errors(
        &self,
        key: ImportKey,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredRowError>, StoreError> {
        queries::list_row_errors(&self.pool, key, after, limit).await
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
async fn commit_lazily(tx: &mut Transaction<'static, Postgres>) -> Result<(), sqlx::Error> {
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut **tx)
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
    tx: &mut Transaction<'static, Postgres>,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    users: &[usize],
    try_copy: bool,
) -> Result<Option<Written>, sqlx::Error> {
    commit_lazily(tx).await?;
    // The import stays locked while its users are written: the reaper skips a locked import
    // (`FOR UPDATE SKIP LOCKED`), so it cannot end the import and delete its users while more
    // are being added; and an import it ended first gets no more users.
    let processing: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM imports WHERE import_key = $1 AND status = 'PROCESSING' FOR KEY SHARE",
    )
    .bind(target.key)
    .fetch_optional(&mut **tx)
    .await?;
    if processing.is_none() {
        return Ok(None);
    }
    if try_copy && copy_users(tx, target, batch, users).await? {
        return Ok(Some(Written {
            refused: Vec::new(),
            copy_failed: false,
        }));
    }
    let refused = insert_users(tx, target, batch, users).await?;
    Ok(Some(Written {
        refused,
        copy_failed: try_copy,
    }))
}

/// Once a batch's users are written: its row errors (validation errors and the refusals of
/// the unique indexes, in file order), the import's counters and a change notification.
/// `None` when the import is no longer PROCESSING.
async fn record_batch(
    tx: &mut Transaction<'static, Postgres>,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    refused: &[usize],
) -> Result<Option<BatchOutcome>, sqlx::Error> {
    commit_lazily(tx).await?;
    let mut conflicts = Vec::new();
    if !refused.is_empty() {
        let emails = refused.iter().map(|&i| batch.user(i).email);
        let by_email = holders(tx, target.account_id, Column::Email, emails).await?;
        let ids = refused.iter().filter_map(|&i| batch.user(i).external_id);
        let by_id = holders(tx, target.account_id, Column::ExternalId, ids).await?;
        conflicts = refusals(target.key, batch, refused, &by_email, &by_id);
    }
    let conflict_rows = refused.len() as u64;
    let imported = batch.len() as u64 - conflict_rows;
    let errors = merge_by_row(&batch.errors, conflicts);
    let stored = (errors.len() as u64).min(target.error_budget) as usize;
    let omitted = (errors.len() - stored) as u64;

    let (encoding, delimiter) = format_columns(target.format);
    let updated = sqlx::query(
        "UPDATE imports SET bytes_received = $1, rows_processed = rows_processed + $2, \
         rows_imported = rows_imported + $3, rows_failed = rows_failed + $4, \
         row_errors_omitted = row_errors_omitted + $5, encoding = $6, delimiter = $7, \
         update_time = now(), heartbeat_time = now() \
         WHERE import_key = $8 AND status = 'PROCESSING'",
    )
    .bind(target.bytes_received as i64)
    .bind(batch.rows_processed as i64)
    .bind(imported as i64)
    .bind((batch.rows_failed + conflict_rows) as i64)
    .bind(omitted as i64)
    .bind(encoding)
    .bind(delimiter)
    .bind(target.key)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(None);
    }
    insert_errors(tx, target.key, target.next_error_seq, &errors[..stored]).await?;
    notify(tx, &[target.key]).await?;
    Ok(Some(BatchOutcome {
        imported,
        conflicts: conflict_rows,
        errors_stored: stored as u64,
        errors_omitted: omitted,
    }))
}

/// The start of a binary `COPY` stream: signature, flags, no header extension.
const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Fields per row of the `COPY` into users.
const COPY_FIELDS: i16 = 9;

/// The fast path: a binary `COPY` straight into the users table, which skips the per-row index
/// probes of `ON CONFLICT`, inserts pages at a time, and leaves the server no text to parse.
/// Any duplicate fails the whole `COPY`; it then rolls back to its savepoint and returns
/// `false`, and the users go through `insert_users`.
async fn copy_users(
    tx: &mut Transaction<'static, Postgres>,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    users: &[usize],
) -> Result<bool, sqlx::Error> {
    if users.is_empty() {
        return Ok(true);
    }
    sqlx::query("SAVEPOINT copy_users")
        .execute(&mut **tx)
        .await?;
    let copied = async {
        let mut copy = tx
            .copy_in_raw(
                "COPY users (account_id, email, first_name, last_name, role, job_title, \
                 external_id, import_key, source_row) FROM STDIN (FORMAT binary)",
            )
            .await?;
        // Sent in pieces as the rows are encoded: the server starts on the first rows at once,
        // and neither side holds the whole batch in another form.
        let mut data = Vec::with_capacity(COPY_PIECE_BYTES + 4 * 1024);
        data.extend_from_slice(COPY_BINARY_HEADER);
        let account = target.account_id.as_str();
        for &index in users {
            copy_row(&mut data, account, target.key, &batch.user(index));
            if data.len() >= COPY_PIECE_BYTES {
                copy.send(data.as_slice()).await?;
                data.clear();
            }
        }
        data.extend_from_slice(&(-1_i16).to_be_bytes());
        copy.send(data.as_slice()).await?;
        copy.finish().await
    }
    .await;
    match copied {
        Ok(_) => {
            sqlx::query("RELEASE SAVEPOINT copy_users")
                .execute(&mut **tx)
                .await?;
            Ok(true)
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            sqlx::query("ROLLBACK TO SAVEPOINT copy_users")
                .execute(&mut **tx)
                .await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// One user as a row of a binary `COPY`: the field count, then each field's length and bytes
/// (text as UTF-8, bigints big-endian, -1 for NULL).
fn copy_row(data: &mut Vec<u8>, account: &str, import_key: ImportKey, user: &UserRef<'_>) {
    let text = |data: &mut Vec<u8>, value: &str| {
        // Record limits keep every value far below 2 GiB.
        data.extend_from_slice(&(value.len() as i32).to_be_bytes());
        data.extend_from_slice(value.as_bytes());
    };
    let bigint = |data: &mut Vec<u8>, value: i64| {
        data.extend_from_slice(&8_i32.to_be_bytes());
        data.extend_from_slice(&value.to_be_bytes());
    };
    data.extend_from_slice(&COPY_FIELDS.to_be_bytes());
    for value in [
        account,
        user.email,
        user.first_name,
        user.last_name,
        user.role.as_str(),
        user.job_title,
    ] {
        text(data, value);
    }
    match user.external_id {
        Some(id) => text(data, id),
        None => data.extend_from_slice(&(-1_i32).to_be_bytes()),
    }
    bigint(data, import_key);
    bigint(data, user.row_number as i64);
}

/// The path for users with duplicates: `INSERT ... SELECT FROM unnest(...)` with every column
/// bound as an array, `ON CONFLICT DO NOTHING`. Returns the indexes of the users the unique
/// indexes refused. unnest yields the rows in array order and nothing in the plan reorders
/// them, so of two equal values in the file the first is the one kept (the row error tests
/// check it).
async fn insert_users(
    tx: &mut Transaction<'static, Postgres>,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    users: &[usize],
) -> Result<Vec<usize>, sqlx::Error> {
    let all: Vec<(usize, UserRef<'_>)> = users.iter().map(|&i| (i, batch.user(i))).collect();
    let mut refused = Vec::new();
    for part in all.chunks(UNNEST_ROWS) {
        refused.extend(insert_part(tx, target, part).await?);
    }
    Ok(refused)
}

/// `insert_users` for one statement's worth of users.
async fn insert_part(
    tx: &mut Transaction<'static, Postgres>,
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
    .fetch_all(&mut **tx)
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
async fn holders<'v>(
    tx: &mut Transaction<'static, Postgres>,
    account_id: &AccountId,
    column: Column,
    values: impl Iterator<Item = &'v str>,
) -> Result<HashMap<String, Holder>, sqlx::Error> {
    let values: Vec<&str> = values.collect();
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
        .fetch_all(&mut **tx)
        .await?;
    Ok(holders_by_value(rows))
}

async fn insert_errors(
    tx: &mut Transaction<'static, Postgres>,
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
    .execute(&mut **tx)
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
