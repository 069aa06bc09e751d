//! PostgreSQL, for several replicas behind one Kubernetes Service.
//!
//! What several replicas need, and where each is done:
//!
//! - [`write`]: batches, with uniqueness decided by the unique indexes whichever replica writes;
//!   the users of a batch by [`copy`] (binary `COPY`) when it has no duplicates;
//! - [`notify`]: progress everywhere, through `LISTEN`/`NOTIFY`;
//! - [`liveness`]: an owner lock and heartbeats per replica, and the reaper that ends the
//!   imports of a replica that died;
//! - [`tx`]: transactions run again when they lose a deadlock to another import.

mod copy;
mod liveness;
mod notify;
mod tx;
mod write;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::codec::{ImportRow, format_columns};
use super::error::FaultLatch;
use super::{
    BatchOutcome, BatchTarget, Batching, Conclusion, FailedCells, Fault, ImportCursor, Reverted,
    Store, StoreError, StoredRowError, StoredUser, queries,
};
use crate::domain::{AccountId, Import, ImportId, ImportKey, NewImport, UserBatch};
use notify::{Changes, notify};
use tx::in_transaction;

const IMPORT_COLUMNS: &str = "import_key, account_id, import_id, type, filename, created_by, status, \
    bytes_received, rows_processed, rows_imported, rows_failed, row_errors_omitted, encoding, \
    delimiter, error_message, \
    (extract(epoch FROM create_time) * 1000000)::bigint AS create_time, \
    (extract(epoch FROM update_time) * 1000000)::bigint AS update_time, \
    (extract(epoch FROM complete_time) * 1000000)::bigint AS complete_time, validate_only, \
    on_conflict, rows_skipped, rows_updated, retry_of_import_id, \
    (extract(epoch FROM revert_time) * 1000000)::bigint AS revert_time, revert_note";

/// Text written (and rolled back) by the write probe: as much as a batch writes.
const PROBE_MIB: i32 = 16;

pub struct PostgresStore {
    pool: PgPool,
    /// This replica's number: its advisory lock, and the `owner` of the imports it runs.
    owner: i64,
    writes: write::Writes,
    changes: Arc<Changes>,
    faults: FaultLatch,
    /// The owner lock and the listener, stopped with the store.
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
        rekey_emails(&pool).await?.log();

        let owner = liveness::new_owner();
        let lock_task = liveness::hold_owner_lock(options, owner).await?;
        let changes = Arc::new(Changes::default());
        let listen_task = tokio::spawn(notify::listen(pool.clone(), changes.clone()));
        tracing::info!(owner, "postgres store ready");
        Ok(Self {
            pool,
            owner,
            writes: write::Writes::new(),
            changes,
            faults: FaultLatch::default(),
            tasks: vec![lock_task, listen_task],
        })
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
            shared: true,
        }
    }

    fn pool_stats(&self) -> crate::metrics::PoolStats {
        let idle = self.pool.num_idle() as u32;
        crate::metrics::PoolStats {
            in_use: self.pool.size().saturating_sub(idle),
            idle,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn fault(&self) -> Option<Fault> {
        self.faults.get()
    }

    async fn close(&self) {
        for task in &self.tasks {
            task.abort();
        }
        self.pool.close().await;
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        let result = async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO write_probe (data) \
                 SELECT repeat('x', 1024 * 1024) FROM generate_series(1, $1)",
            )
            .bind(PROBE_MIB)
            .execute(&mut *tx)
            .await?;
            tx.rollback().await?;
            Ok(())
        }
        .await;
        self.faults.probed(&result);
        result
    }

    /// At start, an import whose owner's lock is gone is ended at once: a replica that
    /// restarts ends what it (or a dead neighbour) left running.
    async fn recover_interrupted(&self, message: &str) -> Result<u64, StoreError> {
        match liveness::reap(&self.pool, message, Duration::ZERO, true).await {
            // Still locked after the wait: the upkeep ends it once the lock is gone.
            Err(e) if liveness::still_locked(&e) => {
                liveness::reap(&self.pool, message, Duration::ZERO, false).await
            }
            other => other,
        }
    }

    async fn maintain(&self, running: &[ImportKey], message: &str) -> Result<u64, StoreError> {
        liveness::heartbeat(&self.pool, running, self.owner).await?;
        liveness::reap(&self.pool, message, liveness::LOCK_GRACE, false).await
    }

    fn subscribe(&self, key: ImportKey) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe(key))
    }

    async fn request_cancel(&self, key: ImportKey) -> Result<(), StoreError> {
        let updated = in_transaction(&self.pool, &key, |tx, &key| {
            Box::pin(async move {
                let updated = sqlx::query(
                    "UPDATE imports SET cancel_requested = true \
                     WHERE import_key = $1 AND status = 'PROCESSING'",
                )
                .bind(key)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                notify(tx, &[key]).await?;
                Ok(updated)
            })
        })
        .await?;
        match updated {
            0 => Err(StoreError::NotProcessing),
            _ => Ok(()),
        }
    }

    async fn cancel_requested(&self, key: ImportKey) -> Result<bool, StoreError> {
        let requested: Option<bool> =
            sqlx::query_scalar("SELECT cancel_requested FROM imports WHERE import_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(requested.unwrap_or(false))
    }

    async fn create_import(&self, new: &NewImport) -> Result<Import, StoreError> {
        let sql = format!(
            "INSERT INTO imports (account_id, import_id, type, filename, created_by, status, \
             owner, heartbeat_time, validate_only, on_conflict, retry_of_import_id) \
             VALUES ($1, $2, $3, $4, $6, 'PROCESSING', $5, now(), $7, $8, $9) \
             RETURNING {IMPORT_COLUMNS}"
        );
        let row: Result<ImportRow, StoreError> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(new.account_id.as_str())
            .bind(new.import_id.as_str())
            .bind(new.kind.as_str())
            .bind(new.filename.as_str())
            .bind(self.owner)
            .bind(new.created_by.as_str())
            .bind(new.validate_only)
            .bind(new.on_conflict.as_str())
            .bind(new.retry_of.as_ref().map(|id| id.as_str()))
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::from);
        self.faults.observe(&row);
        row?.try_into()
    }

    async fn discard_import(&self, key: ImportKey) -> Result<(), StoreError> {
        let discarded = in_transaction(&self.pool, &key, |tx, &key| {
            Box::pin(async move {
                sqlx::query("DELETE FROM users WHERE import_key = $1")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM imports WHERE import_key = $1")
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
                Ok(())
            })
        })
        .await;
        self.faults.observe(&discarded);
        discarded?;
        self.writes.forget(key);
        Ok(())
    }

    async fn write_batch(
        &self,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
    ) -> Result<BatchOutcome, StoreError> {
        let written = self.writes.write_batch(&self.pool, target, batch).await;
        self.faults.observe(&written);
        written
    }

    async fn conclude_import(
        &self,
        key: ImportKey,
        conclusion: &Conclusion,
    ) -> Result<Import, StoreError> {
        let row = in_transaction(&self.pool, &(key, conclusion), |tx, &(key, conclusion)| {
            Box::pin(conclude(tx, key, conclusion))
        })
        .await;
        self.faults.observe(&row);
        let row = row?;
        self.writes.forget(key);
        row.ok_or(StoreError::NotProcessing)?.try_into()
    }

    async fn revert_import(&self, key: ImportKey) -> Result<Reverted, StoreError> {
        let (row, removed, kept) =
            in_transaction(&self.pool, &key, |tx, &key| Box::pin(revert(tx, key))).await??;
        Ok(Reverted {
            import: row.try_into()?,
            removed,
            kept,
        })
    }

    async fn list_users(
        &self,
        account_id: &AccountId,
        import: Option<ImportKey>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredUser>, StoreError> {
        queries::list_users(
            &self.pool,
            "(extract(epoch FROM u.create_time) * 1000000)::bigint",
            "(extract(epoch FROM coalesce(u.update_time, u.create_time)) * 1000000)::bigint",
            account_id,
            import,
            after,
            limit,
        )
        .await
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
        after: Option<&ImportCursor>,
        limit: u32,
    ) -> Result<Vec<Import>, StoreError> {
        let time = "(TIMESTAMPTZ 'epoch' + $2 * INTERVAL '1 microsecond')";
        queries::list_imports(&self.pool, IMPORT_COLUMNS, time, account_id, after, limit).await
    }

    async fn failed_rows(
        &self,
        key: ImportKey,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<FailedCells>, StoreError> {
        queries::failed_rows(&self.pool, key, after, limit).await
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

/// Stores an import's ending, in the caller's transaction; `None` when it had already ended,
/// in which case nothing is touched (its users belong to whatever ending it has).
async fn conclude(
    conn: &mut PgConnection,
    key: ImportKey,
    conclusion: &Conclusion,
) -> Result<Option<ImportRow>, sqlx::Error> {
    let removes_users = conclusion.removes_users();
    let c = &conclusion.counters;
    let (encoding, delimiter) = format_columns(conclusion.format);
    // The status first: only an import that was still PROCESSING loses its users here.
    let sql = format!(
        "UPDATE imports SET status = $1, error_message = $2, bytes_received = $3, \
         rows_processed = $4, rows_imported = $5, rows_failed = $6, row_errors_omitted = $7, \
         encoding = $8, delimiter = $9, rows_skipped = $11, rows_updated = $12, \
         update_time = now(), complete_time = now() \
         WHERE import_key = $10 AND status = 'PROCESSING' RETURNING {IMPORT_COLUMNS}"
    );
    let row: Option<ImportRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(conclusion.status.as_str())
        .bind(&conclusion.error_message)
        .bind(c.bytes_received as i64)
        .bind(c.rows_processed as i64)
        .bind(if removes_users {
            0
        } else {
            c.rows_imported as i64
        })
        .bind(c.rows_failed as i64)
        .bind(c.row_errors_omitted as i64)
        .bind(encoding)
        .bind(delimiter)
        .bind(key)
        .bind(if removes_users {
            0
        } else {
            c.rows_skipped as i64
        })
        .bind(if removes_users {
            0
        } else {
            c.rows_updated as i64
        })
        .fetch_optional(&mut *conn)
        .await?;
    if row.is_none() {
        return Ok(None);
    }
    if removes_users {
        write::undo_import(conn, key).await?;
    }
    write::forget_file_keys(conn, key).await?;
    notify(conn, &[key]).await?;
    Ok(row)
}

/// Removes the users of a finished import, except those another import updated since, and
/// notes it; nothing to remove when it was reverted before. `None` while it runs.
/// The revert in its transaction; the inner error is an answer (`StillRunning`,
/// `BeingUpdated`), with nothing changed.
async fn revert(
    conn: &mut PgConnection,
    key: ImportKey,
) -> Result<Result<(ImportRow, u64, u64), StoreError>, sqlx::Error> {
    let state: Option<(String, bool)> = sqlx::query_as(
        "SELECT status, revert_time IS NOT NULL FROM imports WHERE import_key = $1 FOR UPDATE",
    )
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    let (removed, kept) = match state {
        None => return Err(sqlx::Error::RowNotFound),
        Some((status, _)) if status == "PROCESSING" => return Ok(Err(StoreError::StillRunning)),
        Some((_, true)) => (0, 0),
        Some((_, false)) => {
            let (kept, updater): (i64, Option<String>) = sqlx::query_as(
                "SELECT count(u.updated_by), max(w.import_id) FROM users u \
                 LEFT JOIN imports w ON w.import_key = u.updated_by AND w.status = 'PROCESSING' \
                 WHERE u.import_key = $1 AND u.updated_by IS NOT NULL AND u.updated_by <> $1",
            )
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
            if let Some(import_id) = updater {
                return Ok(Err(StoreError::BeingUpdated(import_id)));
            }
            let removed = sqlx::query(
                "DELETE FROM users WHERE import_key = $1 \
                 AND (updated_by IS NULL OR updated_by = $1)",
            )
            .bind(key)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            (removed, kept as u64)
        }
    };
    let sql = format!(
        "UPDATE imports SET revert_time = coalesce(revert_time, now()), \
         revert_note = CASE WHEN revert_time IS NULL THEN $2 ELSE revert_note END \
         WHERE import_key = $1 RETURNING {IMPORT_COLUMNS}"
    );
    let row: ImportRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(key)
        .bind(super::revert_note(removed, kept))
        .fetch_one(&mut *conn)
        .await?;
    notify(conn, &[key]).await?;
    Ok(Ok((row, removed, kept)))
}

/// Brings old rows' email keys to today's form, once (see `store::rekey`). Replicas that
/// start together: the first to insert the marker does it, the others wait for its commit and
/// then find the marker.
async fn rekey_emails(pool: &PgPool) -> Result<super::rekey::Rekeyed, StoreError> {
    use super::rekey;
    let mut tx = pool.begin().await?;
    let first =
        sqlx::query("INSERT INTO data_migrations (name) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(rekey::NAME)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let mut done = rekey::Rekeyed::default();
    if first == 0 {
        return Ok(done);
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT account_id, email FROM users WHERE length(email) <> octet_length(email) \
         ORDER BY create_time, email",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (account_id, old) in rows {
        let Some(new) = crate::domain::email::rekeyed(&old) else {
            continue;
        };
        let moved = sqlx::query(
            "UPDATE users SET email = $1 WHERE account_id = $2 AND email = $3 \
             AND NOT EXISTS (SELECT 1 FROM users WHERE account_id = $2 AND email = $1)",
        )
        .bind(&new)
        .bind(&account_id)
        .bind(&old)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            rekey::clash(&account_id, &old, &new);
            done.clashes += 1;
        } else {
            done.changed += 1;
        }
    }
    tx.commit().await?;
    Ok(done)
}
