//! PostgreSQL, for several replicas behind one Kubernetes Service.
//!
//! What several replicas need, and how this module gives it:
//!
//! - **Uniqueness across replicas**: the unique indexes on (account, email) and (account,
//!   external_id) decide, whichever replica writes; `INSERT ... ON CONFLICT DO NOTHING` makes
//!   the loser's rows come back as refused, reported as ALREADY_EXISTS. Two imports writing
//!   overlapping addresses can deadlock; the batch transaction is then retried.
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
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::queries;
use super::{
    BatchOutcome, BatchTarget, Batching, Conclusion, Holder, ImportRow, Store, StoreError,
    StoredRowError, format_columns, merge_by_row, refusals,
};
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
/// How often the owner lock's connection is checked.
const LOCK_CHECK: Duration = Duration::from_secs(5);
/// `COPY` data goes to the server in messages of this size.
const COPY_PIECE_BYTES: usize = 64 * 1024;
/// Rows per `INSERT ... unnest` statement, for the same reason.
const UNNEST_ROWS: usize = 2048;
/// Batches that skip the `COPY` fast path after one failed on a duplicate.
const COPY_BACKOFF_BATCHES: u32 = 8;
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
    async fn reap(&self, message: &str) -> Result<u64, StoreError> {
        let reaped: Vec<i64> = in_transaction!(self.pool, |tx| async {
            let keys: Vec<i64> = sqlx::query_scalar(
                "WITH dead AS ( \
                           SELECT import_key FROM imports i \
                           WHERE status = 'PROCESSING' AND ( \
                             heartbeat_time IS NULL \
                             OR heartbeat_time < now() - make_interval(secs => $1) \
                             OR NOT EXISTS ( \
                               SELECT 1 FROM pg_locks l \
                               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
                                 AND l.database = (SELECT oid FROM pg_database \
                                                   WHERE datname = current_database()) \
                                 AND l.classid = $2::oid AND l.objid = i.owner::oid)) \
                           FOR UPDATE SKIP LOCKED), \
                         gone AS (DELETE FROM users u USING dead d \
                                  WHERE u.import_key = d.import_key) \
                         UPDATE imports SET status = 'ERROR_UNKNOWN', error_message = $3, \
                           rows_imported = 0, update_time = now(), complete_time = now() \
                         FROM dead WHERE imports.import_key = dead.import_key \
                         RETURNING imports.import_key",
            )
            .bind(LEASE.as_secs_f64())
            .bind(LOCK_NAMESPACE)
            .bind(message)
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
    /// 199 MiB, 32,768 about 15), flushed at least every 250 ms while rows arrive: other
    /// replicas read progress from the stored counters, and watchers are promised an update
    /// every 500 ms.
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

    async fn recover_interrupted(&self, message: &str) -> Result<u64, StoreError> {
        self.reap(message).await
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
        self.reap(message).await
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
        let outcome = in_transaction!(self.pool, |tx| write_batch(
            &mut tx, target, batch, try_copy
        ))?;
        let outcome = outcome.ok_or(StoreError::NotProcessing)?;
        self.note_conflicts(target.key, try_copy && outcome.conflicts > 0);
        Ok(outcome)
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

/// One batch in one transaction; `None` when the import is no longer PROCESSING (another
/// replica ended it).
async fn write_batch(
    tx: &mut Transaction<'static, Postgres>,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    copy_worth_trying: bool,
) -> Result<Option<BatchOutcome>, sqlx::Error> {
    // A batch need not reach the disk before the next: if the server crashes, the import is
    // PROCESSING and gets ended anyway. Its ending commits synchronously, which flushes every
    // earlier batch too.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut **tx)
        .await?;
    let refused = if copy_worth_trying && copy_users(tx, target, batch).await? {
        Vec::new()
    } else {
        insert_users(tx, target, batch).await?
    };
    let mut conflicts = Vec::new();
    if !refused.is_empty() {
        let emails = refused.iter().map(|&i| batch.user(i).email);
        let by_email = holders(tx, target.account_id, Column::Email, emails).await?;
        let ids = refused.iter().filter_map(|&i| batch.user(i).external_id);
        let by_id = holders(tx, target.account_id, Column::ExternalId, ids).await?;
        conflicts = refusals(target.key, batch, &refused, &by_email, &by_id);
    }
    let conflict_rows = refused.len() as u64;
    let imported = batch.len() as u64 - conflict_rows;

    let errors = merge_by_row(&batch.errors, conflicts);
    let stored = (errors.len() as u64).min(target.error_budget) as usize;
    insert_errors(tx, target.key, target.next_error_seq, &errors[..stored]).await?;
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
    notify(tx, &[target.key]).await?;
    Ok(Some(BatchOutcome {
        imported,
        conflicts: conflict_rows,
        errors_stored: stored as u64,
        errors_omitted: omitted,
    }))
}

/// The fast path: `COPY` straight into the users table, which skips the per-row index probes
/// of `ON CONFLICT` and inserts pages at a time. Any duplicate fails the whole `COPY`; it then
/// rolls back to its savepoint and returns `false`, and the batch goes through `insert_users`.
async fn copy_users(
    tx: &mut Transaction<'static, Postgres>,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
) -> Result<bool, sqlx::Error> {
    if batch.users().len() == 0 {
        return Ok(true);
    }
    let mut data = Vec::with_capacity(batch.len() * 128);
    let account = target.account_id.as_str();
    let key = target.key.to_string();
    for user in batch.users() {
        for value in [
            account,
            user.email,
            user.first_name,
            user.last_name,
            user.role.as_str(),
            user.job_title,
        ] {
            copy_text(&mut data, value);
            data.push(b'\t');
        }
        match user.external_id {
            Some(id) => copy_text(&mut data, id),
            None => data.extend_from_slice(b"\\N"),
        }
        data.push(b'\t');
        data.extend_from_slice(key.as_bytes());
        data.push(b'\t');
        data.extend_from_slice(user.row_number.to_string().as_bytes());
        data.push(b'\n');
    }
    sqlx::query("SAVEPOINT copy_users")
        .execute(&mut **tx)
        .await?;
    let copied = async {
        let mut copy = tx
            .copy_in_raw(
                "COPY users (account_id, email, first_name, last_name, role, job_title, \
                 external_id, import_key, source_row) FROM STDIN",
            )
            .await?;
        // In pieces: sqlx buffers a message whole, and a connection keeps the capacity its
        // largest message needed.
        for piece in data.chunks(COPY_PIECE_BYTES) {
            copy.send(piece).await?;
        }
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

/// Escapes a value for `COPY`'s text format. Validation already refused control characters;
/// the backslash is the one that can remain.
fn copy_text(data: &mut Vec<u8>, value: &str) {
    for byte in value.bytes() {
        match byte {
            b'\\' => data.extend_from_slice(b"\\\\"),
            b'\t' => data.extend_from_slice(b"\\t"),
            b'\n' => data.extend_from_slice(b"\\n"),
            b'\r' => data.extend_from_slice(b"\\r"),
            _ => data.push(byte),
        }
    }
}

/// The path for batches with duplicates: one `INSERT ... SELECT FROM unnest(...)` with every
/// column bound as an array, `ON CONFLICT DO NOTHING`. Returns the indexes of the users the
/// unique indexes refused. unnest yields the rows in array order and nothing in the plan
/// reorders them, so of two equal values in the file the first is the one kept (the row error
/// tests check it).
async fn insert_users(
    tx: &mut Transaction<'static, Postgres>,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
) -> Result<Vec<usize>, sqlx::Error> {
    let all: Vec<_> = batch.users().collect();
    let mut refused = Vec::new();
    for (part, users) in all.chunks(UNNEST_ROWS).enumerate() {
        let offset = part * UNNEST_ROWS;
        let part_refused = insert_part(tx, target, users).await?;
        refused.extend(part_refused.into_iter().map(|i| offset + i));
    }
    Ok(refused)
}

/// `insert_users` for one statement's worth of users; returns indexes into `users`.
async fn insert_part(
    tx: &mut Transaction<'static, Postgres>,
    target: &BatchTarget<'_>,
    users: &[crate::domain::batch::UserRef<'_>],
) -> Result<Vec<usize>, sqlx::Error> {
    let emails: Vec<&str> = users.iter().map(|u| u.email).collect();
    let first_names: Vec<&str> = users.iter().map(|u| u.first_name).collect();
    let last_names: Vec<&str> = users.iter().map(|u| u.last_name).collect();
    let roles: Vec<&str> = users.iter().map(|u| u.role.as_str()).collect();
    let job_titles: Vec<&str> = users.iter().map(|u| u.job_title).collect();
    let external_ids: Vec<Option<&str>> = users.iter().map(|u| u.external_id).collect();
    let rows: Vec<i64> = users.iter().map(|u| u.row_number as i64).collect();
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
    Ok((0..users.len())
        .filter(|&i| !inserted.contains(&rows[i]))
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
    let sql = match column {
        Column::ExternalId => {
            "SELECT external_id, import_key, source_row FROM users \
             WHERE account_id = $1 AND external_id = ANY($2)"
        }
        _ => {
            "SELECT email, import_key, source_row FROM users \
             WHERE account_id = $1 AND email = ANY($2)"
        }
    };
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(sql)
        .bind(account_id.as_str())
        .bind(&values)
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(value, import_key, source_row)| {
            let holder = Holder {
                import_key,
                source_row: source_row as u64,
            };
            (value, holder)
        })
        .collect())
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
