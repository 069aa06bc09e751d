//! PostgreSQL, for several replicas behind one Kubernetes Service.
//!
//! The shared steps (`store::steps`) in PostgreSQL's dialect are in [`steps`]; what only
//! several replicas need, and where each is done:
//!
//! - [`plain`]: the plain import's batches, with uniqueness decided by the unique indexes
//!   whichever replica writes; the users of a batch by [`copy`] (binary `COPY`) when it has no
//!   duplicates, a large batch in two parts at once ([`parallel`]);
//! - [`apply`] and [`record`]: what a plan and a batch's record write, over arrays; a planned
//!   batch's file keys in two parts at once, one on a second connection ([`beside`]);
//! - [`notify`]: progress everywhere, through `LISTEN`/`NOTIFY`;
//! - [`liveness`]: an owner lock and heartbeats per replica, the signs by which the reaper
//!   above the store judges an import abandoned;
//! - [`tx`]: transactions run again when they lose a deadlock to another import.
//!
//! Every write of more than one statement runs through `tx::in_transaction` on the shared pool;
//! the shared flows run there as on SQLite. What differs: the plain import's users may take up to
//! three transactions per batch (`plain`), batches commit without waiting for the disk
//! (`tx::commit_lazily`), and another replica may end an import whose server it judges gone,
//! guarded by that import's life sign (`Guard::Abandoned`).

mod apply;
mod beside;
mod copy;
mod liveness;
mod notify;
mod open;
mod parallel;
mod plain;
mod record;
mod steps;
mod tx;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::codec::ImportRow;
use super::codec::micros;
use super::error::FaultLatch;
use super::{
    AccountKey, BatchTarget, BatchWritten, Batching, Claimed, Conclusion, FailedCells, Fault,
    FeedRow, FeedState, Guard, ImportCursor, InvitedUser, Invitees, LeaseStep, Processing,
    RelayLease, Removed, Reverted, SeenValues, Store, StoreError, StoredRowError, StoredUser,
    UserFilter, accounts, claims, ending, events, invitations, plan, planned, queries, relay,
    resume, retention, revert,
};
use crate::domain::{AccountId, Import, ImportId, ImportKey, NewImport, UserBatch};
use beside::Beside;
use notify::Changes;
use std::time::SystemTime;
use tx::{in_transaction, only_conflicts, taken_meanwhile};

/// The `imports` columns as `codec::ImportRow` names them, times turned into integer microseconds
/// since the epoch (the stored `timestamptz` keeps microseconds, so nothing is lost).
pub(super) const IMPORT_COLUMNS: &str = concat!(
    "import_key, account_id, import_id, type, filename, created_by, status, \
    bytes_received, rows_processed, rows_imported, rows_failed, row_errors_omitted, encoding, \
    delimiter, error_message, \
    (extract(epoch FROM create_time) * 1000000)::bigint AS create_time, \
    (extract(epoch FROM update_time) * 1000000)::bigint AS update_time, \
    (extract(epoch FROM complete_time) * 1000000)::bigint AS complete_time, validate_only, \
    on_conflict, rows_skipped, rows_updated, retry_of_import_id, \
    (extract(epoch FROM revert_time) * 1000000)::bigint AS revert_time, revert_note, \
    (extract(epoch FROM details_removed_time) * 1000000)::bigint AS details_removed_time, \
    invitations, resumable, committed_bytes, \
    (extract(epoch FROM resume_deadline) * 1000000)::bigint AS resume_deadline, ",
    crate::store::codec::users_invited_column!()
);

/// Text written (and rolled back) by the write probe: as much as a batch writes.
const PROBE_MIB: i32 = 16;

/// The store for several replicas: one pool, this replica's owner number and lock, and the
/// listener that wakes its watchers.
///
/// Background tasks (the owner lock, the listener) are stopped by `close`, or when the store is
/// dropped.
pub struct PostgresStore {
    /// Every query and transaction, reads and writes alike (16 connections at most).
    pool: PgPool,
    /// This replica's number: its advisory lock, and the `owner` of the imports it runs.
    owner: i64,
    /// The plain path's state: `COPY` backoff and second writers.
    plain: plain::PlainWrites,
    /// File keys per planned batch from which part of them go beside (`OpenOptions`).
    beside_from: usize,
    /// The watchers of imports, woken by the listener's notifications.
    changes: Arc<Changes>,
    /// The last write fault, until a write probe clears it (`Store::fault`).
    faults: FaultLatch,
    /// The owner lock and the listener, stopped with the store.
    tasks: Vec<JoinHandle<()>>,
    /// Events committed to the feed (`Store::events_written`).
    events_written: AtomicU64,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A `timestamptz` column or expression as the microseconds `codec` reads.
fn micros_of(time: &str) -> String {
    format!("(extract(epoch FROM {time}) * 1000000)::bigint")
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

    /// The shared pool; the owner lock's and the listener's own connections are not counted.
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

    /// Stops the owner lock and the listener, then closes the pool. The owner lock goes with its
    /// connection; imports this replica still ran are then judged by their heartbeats.
    async fn close(&self) {
        for task in &self.tasks {
            task.abort();
        }
        self.pool.close().await;
    }

    /// Writes `PROBE_MIB` MiB into `write_probe` and rolls it back: as much as a batch writes.
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

    /// Other replicas run imports on the same database.
    fn exclusive(&self) -> bool {
        false
    }

    /// Only imports stamped with this replica's owner number, and still PROCESSING.
    async fn heartbeat(&self, running: &[ImportKey]) -> Result<(), StoreError> {
        liveness::heartbeat(&self.pool, running, self.owner).await
    }

    /// With each import's heartbeat and whether its owner's lock is held (`liveness`).
    async fn processing(&self) -> Result<Vec<Processing>, StoreError> {
        liveness::processing(&self.pool).await
    }

    /// Always `Some`: every change of an import, on any replica, sends a notification.
    fn subscribe(&self, key: ImportKey) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe(key))
    }

    async fn request_cancel(&self, key: ImportKey) -> Result<(), StoreError> {
        let asked = in_transaction(
            &self.pool,
            &self.events_written,
            &key,
            only_conflicts,
            |mut steps, &key| {
                Box::pin(async move { ending::request_cancel(&mut steps, key).await })
            },
        )
        .await;
        self.faults.observe(&asked);
        asked
    }

    async fn cancel_requested(&self, key: ImportKey) -> Result<bool, StoreError> {
        let requested: Option<bool> =
            sqlx::query_scalar("SELECT cancel_requested FROM imports WHERE import_key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(requested.unwrap_or(false))
    }

    /// One statement, outside `in_transaction`: nothing to run again. The import is stamped with
    /// this replica's owner number and a first heartbeat.
    async fn create_import(&self, new: &NewImport) -> Result<Import, StoreError> {
        let sql = format!(
            "INSERT INTO imports (account_id, import_id, type, filename, created_by, status, \
             owner, heartbeat_time, validate_only, on_conflict, retry_of_import_id, invitations, \
             resumable) \
             VALUES ($1, $2, $3, $4, $6, 'PROCESSING', $5, now(), $7, $8, $9, $10, $11) \
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
            .bind(new.invitations.as_str())
            .bind(new.resumable)
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::from);
        self.faults.observe(&row);
        row?.try_into()
    }

    async fn account_key(&self, account: &AccountId) -> Result<AccountKey, StoreError> {
        in_transaction(
            &self.pool,
            &self.events_written,
            account,
            only_conflicts,
            |mut steps, account| Box::pin(async move { accounts::key(&mut steps, account).await }),
        )
        .await
    }

    /// Also forgets the import's `COPY` backoff.
    async fn discard_import(&self, key: ImportKey) -> Result<(), StoreError> {
        let discarded = in_transaction(
            &self.pool,
            &self.events_written,
            &key,
            only_conflicts,
            |mut steps, &key| Box::pin(async move { ending::discard(&mut steps, key).await }),
        )
        .await;
        self.faults.observe(&discarded);
        discarded?;
        self.plain.forget(key);
        Ok(())
    }

    async fn remember_file_keys(
        &self,
        key: ImportKey,
        seen: &SeenValues,
    ) -> Result<(), StoreError> {
        in_transaction(
            &self.pool,
            &self.events_written,
            &(key, seen),
            only_conflicts,
            |mut steps, &(key, seen)| {
                Box::pin(async move { claims::remember(&mut steps, key, seen).await })
            },
        )
        .await
    }

    /// A planned batch is one transaction, run again when another replica took a value between
    /// its lookup and its write (`taken_meanwhile`), with part of its file keys in a second one
    /// when a second writer is free (`beside`); a plain batch goes through `plain`, in up to
    /// three transactions, whose failure between them leaves users for the import's ending to
    /// remove.
    async fn write_batch(
        &self,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
    ) -> Result<BatchWritten, StoreError> {
        let written = match plan::planned(target) {
            Some(mode) => {
                let beside = Beside::new(&self.pool, &self.plain, self.beside_from);
                let args = (target, mode, batch, beside);
                in_transaction(
                    &self.pool,
                    &self.events_written,
                    &args,
                    taken_meanwhile,
                    |steps, (target, mode, batch, beside)| {
                        let (target, mode, batch) = (*target, *mode, *batch);
                        let mut steps = steps.with_beside(beside);
                        Box::pin(async move {
                            tx::commit_lazily(steps.connection()).await?;
                            planned::write(&mut steps, target, mode, batch).await
                        })
                    },
                )
                .await
            }
            None => self.plain.write(&self.pool, target, batch).await,
        };
        self.faults.observe(&written);
        written
    }

    /// Endings commit synchronously (only batches commit lazily), which also makes every earlier
    /// batch of the import durable.
    async fn conclude_import(
        &self,
        key: ImportKey,
        conclusion: &Conclusion,
        guard: Guard,
    ) -> Result<Import, StoreError> {
        let args = (key, conclusion, guard);
        let import = in_transaction(
            &self.pool,
            &self.events_written,
            &args,
            only_conflicts,
            |mut steps, &(key, conclusion, guard)| {
                Box::pin(async move { ending::conclude(&mut steps, key, conclusion, guard).await })
            },
        )
        .await;
        self.faults.observe(&import);
        let import = import?;
        self.plain.forget(key);
        Ok(import)
    }

    async fn park_import(
        &self,
        key: ImportKey,
        window: std::time::Duration,
        guard: Guard,
    ) -> Result<Import, StoreError> {
        let parked = in_transaction(
            &self.pool,
            &self.events_written,
            &(key, window, guard),
            only_conflicts,
            |mut steps, &(key, window, guard)| {
                Box::pin(async move { resume::park(&mut steps, key, window, guard).await })
            },
        )
        .await;
        self.faults.observe(&parked);
        let parked = parked?;
        self.plain.forget(key);
        Ok(parked)
    }

    async fn claim_import(&self, key: ImportKey, offset: u64) -> Result<Claimed, StoreError> {
        let claimed = in_transaction(
            &self.pool,
            &self.events_written,
            &(key, offset),
            only_conflicts,
            |mut steps, &(key, offset)| {
                Box::pin(async move { resume::claim(&mut steps, key, offset).await })
            },
        )
        .await;
        self.faults.observe(&claimed);
        claimed
    }

    async fn revert_import(&self, key: ImportKey) -> Result<Reverted, StoreError> {
        let reverted = in_transaction(
            &self.pool,
            &self.events_written,
            &key,
            only_conflicts,
            |mut steps, &key| Box::pin(async move { revert::revert(&mut steps, key).await }),
        )
        .await;
        self.faults.observe(&reverted);
        reverted
    }

    async fn send_invitations(
        &self,
        account_id: &AccountId,
        who: Invitees<'_>,
        resend: bool,
    ) -> Result<u64, StoreError> {
        let sent = in_transaction(
            &self.pool,
            &self.events_written,
            &(account_id, who, resend),
            only_conflicts,
            |mut steps, &(account_id, who, resend)| {
                Box::pin(
                    async move { invitations::send(&mut steps, account_id, who, resend).await },
                )
            },
        )
        .await;
        self.faults.observe(&sent);
        sent
    }

    async fn accept_invitation(
        &self,
        account_id: &AccountId,
        email: &str,
    ) -> Result<bool, StoreError> {
        let accepted = in_transaction(
            &self.pool,
            &self.events_written,
            &(account_id, email),
            only_conflicts,
            |mut steps, &(account_id, email)| {
                Box::pin(async move { invitations::accept(&mut steps, account_id, email).await })
            },
        )
        .await;
        self.faults.observe(&accepted);
        accepted
    }

    async fn user_events(
        &self,
        account: Option<&AccountId>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<FeedRow>, StoreError> {
        queries::user_events(&self.pool, micros_of, account, after, limit).await
    }

    async fn remove_events(
        &self,
        before: SystemTime,
        rows: u32,
    ) -> Result<Option<u64>, StoreError> {
        let before = super::codec::micros(before);
        let removed = in_transaction(
            &self.pool,
            &self.events_written,
            &(before, rows),
            only_conflicts,
            |mut steps, &(before, rows)| {
                Box::pin(async move { events::remove_old(&mut steps, before, rows).await })
            },
        )
        .await;
        self.faults.observe(&removed);
        removed
    }

    async fn relay_lease(&self, step: LeaseStep<'_>) -> Result<Option<RelayLease>, StoreError> {
        let (told, pool) = (&self.events_written, &self.pool);
        in_transaction(pool, told, &step, only_conflicts, |mut steps, step| {
            Box::pin(async move { relay::step(&mut steps, step, false).await })
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
        queries::invited_at_commit(&self.pool, micros_of, key, after_row, limit).await
    }

    async fn list_users(
        &self,
        account_id: &AccountId,
        filter: UserFilter<'_>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<StoredUser>, StoreError> {
        queries::list_users(
            &self.pool,
            |time| format!("(extract(epoch FROM {time}) * 1000000)::bigint"),
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

    /// The cursor's microseconds become a `timestamptz` again, to compare with the stored times.
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

    /// The cut-offs become `timestamptz` again, to compare with the stored times.
    async fn expired_details(
        &self,
        imports: Option<SystemTime>,
        dry_runs: Option<SystemTime>,
        limit: u32,
    ) -> Result<Vec<ImportKey>, StoreError> {
        queries::expired_details(
            &self.pool,
            |time| format!("(TIMESTAMPTZ 'epoch' + {time} * INTERVAL '1 microsecond')"),
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
        let removed = in_transaction(
            &self.pool,
            &self.events_written,
            &(key, rows),
            only_conflicts,
            |mut steps, &(key, rows)| {
                Box::pin(async move { retention::remove_some(&mut steps, key, rows).await })
            },
        )
        .await;
        self.faults.observe(&removed);
        removed
    }

    async fn size(&self) -> Result<u64, StoreError> {
        let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(&self.pool)
            .await?;
        Ok(bytes as u64)
    }
}
