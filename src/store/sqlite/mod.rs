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
//!
//! Files: `steps.rs` writes the shared steps in SQLite's dialect; `capi.rs` is the hot path
//! (users inserted, updated and looked up through the C API); `ranges.rs` finds an import's users
//! by the rowid ranges its batches were given; `lock.rs` keeps a second server off the file;
//! `room.rs` gives the room of removed rows back to the filesystem; `statement.rs` is the safe
//! face of the C API that `capi.rs` uses.
//! Every write runs on the one writer connection, through `write` (the write probe and the
//! start-up rekeying take it directly).

mod capi;
mod lock;
mod probe;
mod ranges;
mod room;
mod statement;
mod steps;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Sqlite, SqliteConnection};

use super::codec::{ImportRow, micros};
use super::error::FaultLatch;
use super::{
    AccountKey, BatchTarget, BatchWritten, Batching, Claimed, Conclusion, FailedCells, Fault,
    FeedRow, FeedState, Guard, ImportCursor, InvitedUser, Invitees, LeaseStep, LifeSign,
    OpenOptions, Processing, RelayLease, Removed, Reverted, SeenValues, Store, StoreError,
    StoredRowError, StoredUser, UserFilter, accounts, claims, ending, events, invitations, plan,
    planned, queries, record, rekey, relay, resume, retention, revert,
};
use crate::domain::{AccountId, Import, ImportId, ImportKey, NewImport, UserBatch};
use steps::{IMPORT_COLUMNS, SqliteSteps};

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

/// The embedded store: one writer connection, a few readers, and the file's lock.
///
/// Writes are serialised by the one writer connection (and by SQLite itself); reads run on the
/// reader pool beside them. Holds the file's lock from `open` to `close` (or to the end of the
/// process).
pub struct SqliteStore {
    /// One connection for every write. SQLite has one writer at a time anyway, and its page
    /// cache is per connection: writes spread over a pool would fill a large cache in each.
    writer: SqlitePool,
    /// Readers, with SQLite's small default cache; WAL lets them run beside the writer.
    pool: SqlitePool,
    /// The database file, whose filesystem's free space the write probe checks.
    path: PathBuf,
    /// The last write fault, until a write probe clears it (`Store::fault`).
    faults: FaultLatch,
    /// This server's hold on the file, until `close`.
    lock: std::sync::Mutex<Option<lock::FileLock>>,
    /// Events committed to the feed (`Store::events_written`).
    events_written: AtomicU64,
}

impl SqliteStore {
    /// Opens (creating when missing) the database file and applies `migrations/sqlite`.
    ///
    /// In this order: the file's lock first (a second server is refused before it reads
    /// anything), then the writer connection, the migrations and the one-off rekeying on it, then
    /// the readers. `Config` when the URL is bad or another server holds the file; an in-memory
    /// database (`sqlite::memory:`) takes no lock.
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
            // Statement journals (a multi-row INSERT may need to undo itself) stay in memory up
            // to 64 KiB (SQLITE_STMTJRNL_SPILL), then go to a temporary file: an ending that
            // writes an event per updated user (650,000 for a 50 MiB file) kept its whole
            // statement journal in memory with `MEMORY`, 300 MiB of peak RSS.
            .pragma("temp_store", "FILE");
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
            .pragma("journal_size_limit", WAL_KEPT_BYTES.to_string())
            // A new file gives back the room that removed rows leave (`room`).
            .auto_vacuum(SqliteAutoVacuum::Incremental);
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
        room::make_incremental(&writer).await;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let rekeyed = {
            let mut conn = writer.acquire().await?;
            let mut tx = begin(&mut conn).await?;
            let told = AtomicU64::new(0);
            let mut steps = SqliteSteps::new(&mut tx, &told);
            let rekeyed = rekey::rekey(&mut steps).await?;
            claims::adopt(&mut steps).await?;
            tx.commit().await?;
            rekeyed
        };
        rekeyed.log();
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
            events_written: AtomicU64::new(0),
        })
    }

    /// Runs `body` in one write transaction on the writer connection (see the module's doc),
    /// with the shared steps in SQLite's dialect; commits when it succeeds, rolls back when it
    /// fails. `body` gets its data as an argument rather than capturing it, so that its future
    /// borrows one lifetime and can be boxed.
    async fn write<D, T>(
        &self,
        data: &D,
        body: impl for<'c> FnOnce(SqliteSteps<'c>, &'c D) -> BoxFuture<'c, Result<T, StoreError>>,
    ) -> Result<T, StoreError>
    where
        D: Sync + ?Sized,
    {
        let mut conn = self.writer().await?;
        let told = AtomicU64::new(0);
        let result = async {
            let mut tx = begin(&mut conn).await?;
            let value = body(SqliteSteps::new(&mut tx, &told), data).await?;
            tx.commit().await?;
            self.events_written
                .fetch_add(told.into_inner(), Ordering::Relaxed);
            Ok(value)
        }
        .await;
        self.release(conn, result)
    }

    /// Takes the writer connection for one write transaction (see the module's doc): the
    /// caller runs its transaction on it, then hands it back with the result to `release`.
    async fn writer(&self) -> Result<PoolConnection<Sqlite>, StoreError> {
        Ok(self.writer.acquire().await?)
    }

    /// Returns the writer connection to the pool, or closes it when its transaction failed
    /// for any reason but an answer (see `StoreError::is_answer`), so that it is never reused
    /// mid-transaction; notes a fault.
    fn release<T>(
        &self,
        mut conn: PoolConnection<Sqlite>,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if result.as_ref().is_err_and(|e| !e.is_answer()) {
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

#[async_trait]
impl Store for SqliteStore {
    /// Large transactions: every commit writes each page it dirtied to the WAL, and random
    /// email-index inserts dirty a page per row or so, so committing every 4,096 rows wrote the
    /// same index pages to the WAL hundreds of times over. A batch is still written 250 ms
    /// after the last when the client is slow and the writer idle, so that it does not hold
    /// its share of the batch memory (and the rows already read) while the client is quiet, and
    /// so that the live view, which shows committed progress, moves at the 500 ms watchers are
    /// promised. Only while the writer is idle: uploads that keep it busy (8 at once) are never
    /// cut short by time, which once made their batches smaller and them 15–20% slower.
    fn batching(&self) -> Batching {
        Batching {
            rows: 32 * 1024,
            flush_after: Some(std::time::Duration::from_millis(250)),
        }
    }

    /// The writer connection and the readers together.
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

    /// On a reader: a busy writer does not make the database look down.
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn fault(&self) -> Option<Fault> {
        self.faults.get()
    }

    /// The connections first, then the lock: a server that takes the lock next finds no
    /// connection of this one still open on the file.
    async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
        let lock = self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(lock) = lock {
            lock.release();
        }
    }

    /// The probe's result also updates the latch: a success clears the fault.
    async fn probe_write(&self) -> Result<(), StoreError> {
        let result = probe::probe(self).await;
        self.faults.probed(&result);
        result
    }

    /// This server holds the file's lock (`lock`): no other server writes it.
    fn exclusive(&self) -> bool {
        true
    }

    /// No life signs on SQLite: one server holds the file, so every PROCESSING import found at
    /// start was left by a server that stopped (`exclusive`), and no sign is needed to tell.
    async fn processing(&self) -> Result<Vec<Processing>, StoreError> {
        let sql = format!("SELECT {IMPORT_COLUMNS} FROM imports WHERE status = 'PROCESSING'");
        let rows: Vec<ImportRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|row| {
                Ok(Processing {
                    import: Import::try_from(row)?,
                    sign: LifeSign {
                        heartbeat: None,
                        owner_alive: false,
                    },
                })
            })
            .collect()
    }

    async fn request_cancel(&self, key: ImportKey) -> Result<(), StoreError> {
        self.write(&key, |mut steps, &key| {
            Box::pin(async move { ending::request_cancel(&mut steps, key).await })
        })
        .await
    }

    /// `false` for an import that is not there.
    async fn cancel_requested(&self, key: ImportKey) -> Result<bool, StoreError> {
        let requested: Option<bool> =
            sqlx::query_scalar("SELECT cancel_requested FROM imports WHERE import_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(requested.unwrap_or(false))
    }

    /// Through `write`, so that its time and its fault handling are those of every other write.
    /// `AlreadyExists` from the unique index on `(account_id, import_id)`.
    async fn create_import(&self, new: &NewImport) -> Result<Import, StoreError> {
        self.write(new, |mut steps, new| {
            Box::pin(async move { steps.create_import(new).await })
        })
        .await
    }

    async fn account_key(&self, account: &AccountId) -> Result<AccountKey, StoreError> {
        self.write(account, |mut steps, account| {
            Box::pin(async move { accounts::key(&mut steps, account).await })
        })
        .await
    }

    async fn discard_import(&self, key: ImportKey) -> Result<(), StoreError> {
        self.write(&key, |mut steps, &key| {
            Box::pin(async move { ending::discard(&mut steps, key).await })
        })
        .await
    }

    async fn remember_file_keys(
        &self,
        key: ImportKey,
        seen: &SeenValues,
    ) -> Result<(), StoreError> {
        self.write(&(key, seen), |mut steps, &(key, seen)| {
            Box::pin(async move { claims::remember(&mut steps, key, seen).await })
        })
        .await
    }

    /// One transaction for the whole batch, whatever its path: the plain import inserts through
    /// the C API and lets the unique indexes refuse, a planned batch looks up, decides and
    /// writes. A batch that fails leaves nothing.
    async fn write_batch(
        &self,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
    ) -> Result<BatchWritten, StoreError> {
        self.write(&(target, batch), |mut steps, &(target, batch)| {
            Box::pin(async move {
                match plan::planned(target) {
                    Some(mode) => planned::write(&mut steps, target, mode, batch).await,
                    None => {
                        let refused = steps.insert_plain(target, batch).await?;
                        record::plain(&mut steps, target, batch, refused).await
                    }
                }
            })
        })
        .await
    }

    async fn conclude_import(
        &self,
        key: ImportKey,
        conclusion: &Conclusion,
        guard: Guard,
    ) -> Result<Import, StoreError> {
        self.write(
            &(key, conclusion, guard),
            |mut steps, &(key, conclusion, guard)| {
                Box::pin(async move { ending::conclude(&mut steps, key, conclusion, guard).await })
            },
        )
        .await
    }

    async fn park_import(
        &self,
        key: ImportKey,
        window: Duration,
        guard: Guard,
    ) -> Result<Import, StoreError> {
        self.write(&(key, window, guard), |mut steps, &(key, window, guard)| {
            Box::pin(async move { resume::park(&mut steps, key, window, guard).await })
        })
        .await
    }

    async fn claim_import(&self, key: ImportKey, offset: u64) -> Result<Claimed, StoreError> {
        self.write(&(key, offset), |mut steps, &(key, offset)| {
            Box::pin(async move { resume::claim(&mut steps, key, offset).await })
        })
        .await
    }

    async fn revert_import(&self, key: ImportKey) -> Result<Reverted, StoreError> {
        self.write(&key, |mut steps, &key| {
            Box::pin(async move { revert::revert(&mut steps, key).await })
        })
        .await
    }

    async fn send_invitations(
        &self,
        account_id: &AccountId,
        who: Invitees<'_>,
        resend: bool,
    ) -> Result<u64, StoreError> {
        self.write(
            &(account_id, who, resend),
            |mut steps, &(account_id, who, resend)| {
                Box::pin(
                    async move { invitations::send(&mut steps, account_id, who, resend).await },
                )
            },
        )
        .await
    }

    async fn accept_invitation(
        &self,
        account_id: &AccountId,
        email: &str,
    ) -> Result<bool, StoreError> {
        self.write(&(account_id, email), |mut steps, &(account_id, email)| {
            Box::pin(async move { invitations::accept(&mut steps, account_id, email).await })
        })
        .await
    }

    async fn user_events(
        &self,
        account: Option<&AccountId>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<FeedRow>, StoreError> {
        queries::user_events(&self.pool, |time| time.to_owned(), account, after, limit).await
    }

    async fn remove_events(
        &self,
        before: SystemTime,
        rows: u32,
    ) -> Result<Option<u64>, StoreError> {
        let before = micros(before);
        self.write(&(before, rows), |mut steps, &(before, rows)| {
            Box::pin(async move { events::remove_old(&mut steps, before, rows).await })
        })
        .await
    }

    async fn relay_lease(&self, step: LeaseStep<'_>) -> Result<Option<RelayLease>, StoreError> {
        self.write(&step, |mut steps, step| {
            Box::pin(async move { relay::step(&mut steps, step, true).await })
        })
        .await
    }

    fn events_written(&self) -> u64 {
        self.events_written.load(Ordering::Relaxed)
    }

    async fn feed_state(&self) -> Result<FeedState, StoreError> {
        queries::feed_state(&self.pool).await
    }

    async fn invited_at_commit(
        &self,
        key: ImportKey,
        after_row: i64,
        limit: u32,
    ) -> Result<Vec<(i64, InvitedUser)>, StoreError> {
        queries::invited_at_commit(&self.pool, |time| time.to_owned(), key, after_row, limit).await
    }

    /// `update_time` is NULL for a user never updated: it reads as its create time.
    async fn list_users(
        &self,
        account_id: &AccountId,
        filter: UserFilter<'_>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredUser>, StoreError> {
        queries::list_users(
            &self.pool,
            // Stored as microseconds already.
            |time| time.to_owned(),
            account_id,
            filter,
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

    /// The cursor's microseconds compare with the stored integers as they are.
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

    /// Times are stored as microseconds: the cut-offs compare as they are.
    async fn expired_details(
        &self,
        imports: Option<SystemTime>,
        dry_runs: Option<SystemTime>,
        limit: u32,
    ) -> Result<Vec<ImportKey>, StoreError> {
        queries::expired_details(
            &self.pool,
            |time| time.to_owned(),
            imports.map(micros),
            dry_runs.map(micros),
            limit,
        )
        .await
    }

    async fn remove_details(
        &self,
        key: ImportKey,
        rows: u32,
    ) -> Result<Option<Removed>, StoreError> {
        self.write(&(key, rows), |mut steps, &(key, rows)| {
            Box::pin(async move { retention::remove_some(&mut steps, key, rows).await })
        })
        .await
    }

    /// The file's pages (free ones included: `give_back_room` returns those).
    async fn size(&self) -> Result<u64, StoreError> {
        let (pages, page_size): (i64, i64) = sqlx::query_as(
            "SELECT page_count, page_size FROM pragma_page_count(), pragma_page_size()",
        )
        .fetch_one(&self.pool)
        .await?;
        // The write-ahead log takes disk too (up to about WAL_KEPT_BYTES on an idle server):
        // what an operator sizing the volume needs is both. None beside an in-memory database.
        let mut log = self.path.clone().into_os_string();
        log.push("-wal");
        let log = tokio::fs::metadata(&log).await.map_or(0, |m| m.len());
        Ok((pages * page_size) as u64 + log)
    }

    async fn give_back_room(&self) -> Result<u64, StoreError> {
        room::give_back(self).await
    }
}
