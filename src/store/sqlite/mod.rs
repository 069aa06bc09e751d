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

mod insert;
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
    BatchOutcome, BatchTarget, Batching, Conclusion, Fault, ImportCursor, OpenOptions, Store,
    StoreError, StoredRowError, queries,
};
use crate::domain::{AccountId, Import, ImportId, ImportKey, NewImport, UserBatch};
use write::{delete_users, write_batch};

/// Page cache of the writing connection, in KiB: the hot part of the email index stays in
/// memory across batches. Bounded, so memory stays flat whatever the file size.
const WRITER_CACHE_KIB: i64 = 32 * 1024;

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
            .pragma("cache_size", (-WRITER_CACHE_KIB).to_string());
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
    delimiter, error_message, create_time, update_time, complete_time";

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
                delete_users(&mut tx, key).await?;
            }
            let ended = sqlx::query(
                "UPDATE imports SET status = 'ERROR_UNKNOWN', error_message = ?1, \
                 rows_imported = 0, update_time = ?2, complete_time = ?2 \
                 WHERE status = 'PROCESSING'",
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

    async fn create_import(&self, new: &NewImport) -> Result<Import, StoreError> {
        let now = micros(SystemTime::now());
        let sql = format!(
            "INSERT INTO imports (account_id, import_id, type, filename, created_by, status, \
             create_time, update_time) VALUES (?1, ?2, ?3, ?4, ?6, 'PROCESSING', ?5, ?5) \
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
            if removes_users {
                delete_users(&mut tx, key).await?;
            }
            sqlx::query("DELETE FROM import_user_ranges WHERE import_key = ?1")
                .bind(key)
                .execute(&mut *tx)
                .await?;
            let c = &conclusion.counters;
            let (encoding, delimiter) = format_columns(conclusion.format);
            let sql = format!(
                "UPDATE imports SET status = ?1, error_message = ?2, bytes_received = ?3, \
                 rows_processed = ?4, rows_imported = ?5, rows_failed = ?6, update_time = ?7, \
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

    async fn list_row_errors(
        &self,
        key: ImportKey,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredRowError>, StoreError> {
        queries::list_row_errors(&self.pool, key, after, limit).await
    }
}
