//! The embedded default: one file, one replica, zero set-up.
//!
//! Concurrency: WAL lets readers run beside the writer, and every write transaction starts with
//! `BEGIN IMMEDIATE`, taking the write lock up front. A deferred transaction that reads and then
//! writes fails with "database is locked" whatever the busy timeout, because SQLite cannot
//! upgrade its read lock while another writer holds the lock; an immediate one just waits its
//! turn. Batches are short transactions, so two uploads interleave instead of queueing.
//!
//! Faults: every write goes through [`SqliteStore::write`], which closes the writer connection
//! when its transaction fails. After some errors (a full disk, an I/O error) SQLite has already
//! rolled the transaction back by itself; sqlx's own ROLLBACK then fails and would leave the
//! connection marked as inside a transaction, refusing every later `BEGIN`. A fresh connection
//! is opened for the next write instead.

mod capi;
mod lock;
mod write;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::SystemTime;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, SqliteConnection};

use super::codec::{ImportRow, format_columns, micros};
use super::error::FaultLatch;
use super::{
    BatchOutcome, BatchTarget, Batching, Conclusion, FailedCells, Fault, ImportCursor, OpenOptions,
    Reverted, Store, StoreError, StoredRowError, StoredUser, queries,
};
use crate::domain::{AccountId, Import, ImportId, ImportKey, NewImport, UserBatch};
use write::{delete_users, write_batch};

/// Page cache of the writing connection, in KiB: the hot part of the email index stays in
/// memory across batches. Bounded, so memory stays flat whatever the file size.
const WRITER_CACHE_KIB: i64 = 32 * 1024;

/// The write-ahead log is copied into the database file (a checkpoint, run by the commit
/// that crosses this size) every 16,384 pages, 64 MiB, instead of SQLite's 1,000. A file's
/// users reach the email index in no particular order, so every batch dirties pages all over
/// it: with small checkpoints the same index pages were copied again after nearly every
/// batch (perf: 15% of the writer's time). Measured on three 199 MiB files into one account:
/// 8.7, 10.3 and 11.4 s with the default, 8.7, 8.8 and 8.8 s with this; 65,536 pages gave no
/// more. The price is disk, not memory: the log file grows to about this size.
const WAL_CHECKPOINT_PAGES: i64 = 16 * 1024;
/// After a checkpoint, the log file is cut back to this size, so an idle server keeps no more.
const WAL_KEPT_BYTES: i64 = 64 * 1024 * 1024;

/// After a fault, the database takes batches again once this much can be written into it
/// (then rolled back)...
const PROBE_BYTES: i64 = 16 * 1024 * 1024;
/// ...and its filesystem has this much room, for the write-ahead log and its checkpoints.
const PROBE_DISK_ROOM: u64 = 64 * 1024 * 1024;

pub struct SqliteStore {
    /// One connection for every write. SQLite has one writer at a time anyway, and its page
    /// cache is per connection: writes spread over a pool would fill a large cache in each.
    writer: SqlitePool,
    /// Readers, with SQLite's small default cache; WAL lets them run beside the writer.
    pool: SqlitePool,
    /// The database file, whose filesystem's free space the write probe checks.
    path: PathBuf,
    faults: FaultLatch,
    /// This server's hold on the file, until `close`.
    lock: std::sync::Mutex<Option<lock::FileLock>>,
}

impl SqliteStore {
    /// Opens (creating when missing) the database file and applies `migrations/sqlite`.
    pub async fn open(url: &str, settings: OpenOptions) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("{url}: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL survives a crash of the process; only a power loss may lose the
            // last transactions, never corrupt the file.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(settings.busy_timeout)
            .foreign_keys(true)
            // Statement journals (a multi-row INSERT may need to undo itself) stay in memory.
            .pragma("temp_store", "MEMORY");
        let path = options.get_filename().to_owned();
        let in_memory = path.as_os_str() == ":memory:";
        // Before anything is read or written: a second server must not end the first one's
        // running imports as interrupted.
        let lock = (!in_memory)
            .then(|| lock::FileLock::acquire(&path))
            .transpose()?;
        let mut writer_options = options
            .clone()
            .pragma("cache_size", (-WRITER_CACHE_KIB).to_string())
            .pragma("wal_autocheckpoint", WAL_CHECKPOINT_PAGES.to_string())
            .pragma("journal_size_limit", WAL_KEPT_BYTES.to_string());
        if let Some(pages) = settings.max_pages {
            writer_options = writer_options.pragma("max_page_count", pages.to_string());
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // Kept open: the cache is the point of this connection.
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(writer_options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        rekey_emails(&writer).await?.log();
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Ok(Self {
            writer,
            pool,
            path,
            faults: FaultLatch::default(),
            lock: std::sync::Mutex::new(lock),
        })
    }

    /// See `Store::probe_write`.
    async fn probe(&self) -> Result<(), StoreError> {
        let dir = self.path.parent().unwrap_or(std::path::Path::new("."));
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        if let Ok(stat) = rustix::fs::statvfs(dir) {
            let room = stat.f_bavail.saturating_mul(stat.f_frsize);
            if room < PROBE_DISK_ROOM {
                return Err(StoreError::Fault {
                    fault: Fault::DiskFull,
                    source: format!("{room} bytes free beside {}", self.path.display()).into(),
                });
            }
        }
        let mut conn = self.writer().await?;
        let result = async {
            let mut tx = begin(&mut conn).await?;
            sqlx::query("INSERT INTO write_probe (data) VALUES (zeroblob(?1))")
                .bind(PROBE_BYTES)
                .execute(&mut *tx)
                .await?;
            tx.rollback().await?;
            Ok(())
        }
        .await;
        self.release(conn, result)
    }

    /// Takes the writer connection for one write transaction (see the module's doc): the
    /// caller runs its transaction on it, then hands it back with the result to `release`.
    async fn writer(&self) -> Result<PoolConnection<Sqlite>, StoreError> {
        Ok(self.writer.acquire().await?)
    }

    /// Returns the writer connection to the pool, or closes it when its transaction failed,
    /// so that it is never reused mid-transaction; notes a fault.
    fn release<T>(
        &self,
        mut conn: PoolConnection<Sqlite>,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if result.is_err() {
            conn.close_on_drop();
        }
        self.faults.observe(&result);
        result
    }
}

/// `BEGIN IMMEDIATE` on the writer connection: takes the write lock up front, and serialises
/// with other processes on the same file.
async fn begin(conn: &mut SqliteConnection) -> Result<sqlx::Transaction<'_, Sqlite>, StoreError> {
    Ok(conn.begin_with("BEGIN IMMEDIATE").await?)
}

const IMPORT_COLUMNS: &str = "import_key, account_id, import_id, type, filename, created_by, status, \
    bytes_received, rows_processed, rows_imported, rows_failed, row_errors_omitted, encoding, \
    delimiter, error_message, create_time, update_time, complete_time, validate_only, \
    on_conflict, rows_skipped, rows_updated, retry_of_import_id, revert_time, revert_note";

#[async_trait]
impl Store for SqliteStore {
    /// Large transactions: every commit writes each page it dirtied to the WAL, and random
    /// email-index inserts dirty a page per row or so, so committing every 4,096 rows wrote the
    /// same index pages to the WAL hundreds of times over. Progress comes from the live
    /// counters of this (only) replica; a batch is still written after a second when the
    /// client is slow, so that it does not hold its share of the batch memory (and the rows
    /// already read) while the client is quiet. (After 250 ms, 8 uploads at once made smaller
    /// batches and were 15–20% slower.)
    fn batching(&self) -> Batching {
        Batching {
            rows: 32 * 1024,
            flush_after: Some(std::time::Duration::from_secs(1)),
            shared: false,
        }
    }

    fn pool_stats(&self) -> crate::metrics::PoolStats {
        let (size, idle) = [&self.writer, &self.pool]
            .iter()
            .fold((0, 0), |(size, idle), pool| {
                (size + pool.size(), idle + pool.num_idle() as u32)
            });
        crate::metrics::PoolStats {
            in_use: size.saturating_sub(idle),
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
        self.writer.close().await;
        self.pool.close().await;
        let lock = self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(lock) = lock {
            lock.release();
        }
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        let result = self.probe().await;
        self.faults.probed(&result);
        result
    }

    async fn recover_interrupted(&self, message: &str) -> Result<u64, StoreError> {
        let now = micros(SystemTime::now());
        let mut conn = self.writer().await?;
        let result = async {
            let mut tx = begin(&mut conn).await?;
            let interrupted: Vec<i64> =
                sqlx::query_scalar("SELECT import_key FROM imports WHERE status = 'PROCESSING'")
                    .fetch_all(&mut *tx)
                    .await?;
            for key in interrupted {
                write::undo_import(&mut tx, key).await?;
                write::forget_file_keys(&mut tx, key).await?;
            }
            let ended = sqlx::query(
                "UPDATE imports SET status = 'ERROR_UNKNOWN', error_message = ?1, \
                 rows_imported = 0, rows_skipped = 0, rows_updated = 0, update_time = ?2, \
                 complete_time = ?2 WHERE status = 'PROCESSING'",
            )
            .bind(message)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(ended)
        }
        .await;
        self.release(conn, result)
    }

    async fn request_cancel(&self, key: ImportKey) -> Result<(), StoreError> {
        let mut conn = self.writer().await?;
        let result = async {
            let mut tx = begin(&mut conn).await?;
            let updated = sqlx::query(
                "UPDATE imports SET cancel_requested = 1 \
                 WHERE import_key = ?1 AND status = 'PROCESSING'",
            )
            .bind(key)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            match updated {
                0 => Err(StoreError::NotProcessing),
                _ => Ok(()),
            }
        }
        .await;
        match result {
            Err(StoreError::NotProcessing) => Err(StoreError::NotProcessing),
            other => self.release(conn, other),
        }
    }

    async fn cancel_requested(&self, key: ImportKey) -> Result<bool, StoreError> {
        let requested: Option<bool> =
            sqlx::query_scalar("SELECT cancel_requested FROM imports WHERE import_key = ?1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(requested.unwrap_or(false))
    }

    async fn create_import(&self, new: &NewImport) -> Result<Import, StoreError> {
        let now = micros(SystemTime::now());
        let sql = format!(
            "INSERT INTO imports (account_id, import_id, type, filename, created_by, status, \
             create_time, update_time, validate_only, on_conflict, retry_of_import_id) \
             VALUES (?1, ?2, ?3, ?4, ?6, 'PROCESSING', ?5, ?5, ?7, ?8, ?9) \
             RETURNING {IMPORT_COLUMNS}"
        );
        let mut conn = self.writer().await?;
        let result = async {
            let mut tx = begin(&mut conn).await?;
            let row: ImportRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(new.account_id.as_str())
                .bind(new.import_id.as_str())
                .bind(new.kind.as_str())
                .bind(new.filename.as_str())
                .bind(now)
                .bind(new.created_by.as_str())
                .bind(new.validate_only)
                .bind(new.on_conflict.as_str())
                .bind(new.retry_of.as_ref().map(|id| id.as_str()))
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Import::try_from(row)
        }
        .await;
        // A taken id is an answer, not a failure of the connection.
        match result {
            Err(StoreError::AlreadyExists) => Err(StoreError::AlreadyExists),
            other => self.release(conn, other),
        }
    }

    async fn discard_import(&self, key: ImportKey) -> Result<(), StoreError> {
        let mut conn = self.writer().await?;
        let result = async {
            let mut tx = begin(&mut conn).await?;
            delete_users(&mut tx, key).await?;
            sqlx::query("DELETE FROM imports WHERE import_key = ?1")
                .bind(key)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        self.release(conn, result)
    }

    async fn write_batch(
        &self,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
    ) -> Result<BatchOutcome, StoreError> {
        let mut conn = self.writer().await?;
        let result = async {
            let mut tx = begin(&mut conn).await?;
            let outcome = write_batch(&mut tx, target, batch).await?;
            tx.commit().await?;
            Ok(outcome)
        }
        .await;
        match result {
            // Nothing was written, and the transaction was rolled back cleanly.
            Err(StoreError::NotProcessing) => Err(StoreError::NotProcessing),
            other => self.release(conn, other),
        }
    }

    async fn conclude_import(
        &self,
        key: ImportKey,
        conclusion: &Conclusion,
    ) -> Result<Import, StoreError> {
        let now = micros(SystemTime::now());
        let removes_users = conclusion.removes_users();
        let mut conn = self.writer().await?;
        let result = async {
            let mut tx = begin(&mut conn).await?;
            // A completed import keeps its rowid ranges: a revert deletes its users by them.
            if removes_users {
                write::undo_import(&mut tx, key).await?;
            }
            write::forget_file_keys(&mut tx, key).await?;
            let c = &conclusion.counters;
            let (encoding, delimiter) = format_columns(conclusion.format);
            let sql = format!(
                "UPDATE imports SET status = ?1, error_message = ?2, bytes_received = ?3, \
                 rows_processed = ?4, rows_imported = ?5, rows_failed = ?6, update_time = ?7, \
                 rows_skipped = ?12, rows_updated = ?13, \
                 complete_time = ?7, row_errors_omitted = ?9, encoding = ?10, delimiter = ?11 \
                 WHERE import_key = ?8 AND status = 'PROCESSING' RETURNING {IMPORT_COLUMNS}"
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
                .bind(now)
                .bind(key)
                .bind(c.row_errors_omitted as i64)
                .bind(encoding)
                .bind(delimiter)
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
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                return Err(StoreError::NotProcessing);
            };
            tx.commit().await?;
            Import::try_from(row)
        }
        .await;
        match result {
            Err(StoreError::NotProcessing) => Err(StoreError::NotProcessing),
            other => self.release(conn, other),
        }
    }

    async fn revert_import(&self, key: ImportKey) -> Result<Reverted, StoreError> {
        let now = micros(SystemTime::now());
        let mut conn = self.writer().await?;
        let result = async {
            let mut tx = begin(&mut conn).await?;
            // `None`: reverted before, so nothing more to remove.
            let (removed, kept) = write::revert_users(&mut tx, key).await?.unwrap_or_default();
            let sql = format!(
                "UPDATE imports SET revert_time = coalesce(revert_time, ?2), \
                 revert_note = CASE WHEN revert_time IS NULL THEN ?3 ELSE revert_note END \
                 WHERE import_key = ?1 RETURNING {IMPORT_COLUMNS}"
            );
            let row: ImportRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(key)
                .bind(now)
                .bind(super::revert_note(removed, kept))
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Reverted {
                import: Import::try_from(row)?,
                removed,
                kept,
            })
        }
        .await;
        match result {
            // Answers, not failures of the connection.
            Err(e @ (StoreError::StillRunning | StoreError::BeingUpdated(_))) => Err(e),
            other => self.release(conn, other),
        }
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
            "u.create_time",
            "coalesce(u.update_time, u.create_time)",
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
        let time = "$2";
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

/// Brings old rows' email keys to today's form, once (see `store::rekey`).
async fn rekey_emails(writer: &SqlitePool) -> Result<super::rekey::Rekeyed, StoreError> {
    use super::rekey;
    let mut tx = writer.begin().await?;
    let first =
        sqlx::query("INSERT INTO data_migrations (name) VALUES (?1) ON CONFLICT DO NOTHING")
            .bind(rekey::NAME)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    let mut done = rekey::Rekeyed::default();
    if first == 0 {
        return Ok(done);
    }
    // Non-ASCII addresses: more bytes than characters.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT account_id, email FROM users WHERE length(email) <> length(CAST(email AS BLOB)) \
         ORDER BY create_time, user_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (account_id, old) in rows {
        let Some(new) = crate::domain::email::rekeyed(&old) else {
            continue;
        };
        let moved = sqlx::query(
            "UPDATE OR IGNORE users SET email = ?1 WHERE account_id = ?2 AND email = ?3",
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
