//! Replica death: each replica holds a session advisory lock on its own random owner number for
//! as long as it lives, and stamps its running imports with it and with a heartbeat. Any
//! replica ends an import whose owner's lock is gone (the process died: the lock goes with its
//! connection at once) or whose heartbeat is older than the lease (the replica hangs or is cut
//! off), deleting its users in the same transaction.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::notify::notify;
use super::tx::in_transaction;
use super::write::{forget_file_keys, undo_import};
use crate::domain::ImportKey;
use crate::store::StoreError;

/// First key of the advisory locks this service takes ("BIMP"), so that they do not collide
/// with other users of the database.
const LOCK_NAMESPACE: i64 = 0x4249_4D50;
/// How long an import may go without a heartbeat before another replica ends it.
pub const LEASE: Duration = Duration::from_secs(30);
/// How old the heartbeat of an import whose owner's lock is gone must be before it is ended:
/// a live replica heartbeats every few seconds, even while its lock is being taken again.
pub(super) const LOCK_GRACE: Duration = Duration::from_secs(10);
/// How long a starting replica waits for the batch of a dead one to be aborted.
const REAP_WAIT: Duration = Duration::from_secs(5);
/// How often the owner lock's connection is checked.
const LOCK_CHECK: Duration = Duration::from_secs(5);

/// A new replica's owner number: random, positive, and an `int4` as advisory locks want.
pub(super) fn new_owner() -> i64 {
    i64::from(uuid::Uuid::new_v4().as_u128() as u32 & 0x7fff_ffff).max(1)
}

/// Takes this replica's advisory lock on a connection of its own and keeps it for as long as
/// the returned task runs, taking it again (after a backoff) whenever its connection is lost.
/// Returns once the lock is first held.
pub(super) async fn hold_owner_lock(
    options: PgConnectOptions,
    owner: i64,
) -> Result<JoinHandle<()>, StoreError> {
    let (locked, mut lock_taken) = watch::channel(false);
    let task = tokio::spawn(async move {
        let (options, locked) = (&options, &locked);
        let session = move || async move {
            let mut conn = PgConnection::connect_with(options).await?;
            sqlx::query("SELECT pg_advisory_lock($1::int, $2::int)")
                .bind(LOCK_NAMESPACE)
                .bind(owner)
                .execute(&mut conn)
                .await?;
            locked.send_replace(true);
            loop {
                tokio::time::sleep(LOCK_CHECK).await;
                sqlx::query("SELECT 1").execute(&mut conn).await?;
            }
        };
        let ended: Result<std::convert::Infallible, sqlx::Error> = session
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(5))
                    .without_max_times(),
            )
            .notify(|e, delay| {
                tracing::warn!(error = %e, ?delay, "lost or cannot take the owner lock; retrying")
            })
            .await;
        let Err(e) = ended;
        {
            tracing::error!(error = %e, "gave up the owner lock");
        }
    });
    if lock_taken.wait_for(|held| *held).await.is_err() {
        return Err(StoreError::Database(
            "the owner lock task ended before taking the lock".into(),
        ));
    }
    Ok(task)
}

/// Renews the heartbeat of the imports this replica runs.
pub(super) async fn heartbeat(
    pool: &PgPool,
    running: &[ImportKey],
    owner: i64,
) -> Result<(), StoreError> {
    if running.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE imports SET heartbeat_time = now() \
         WHERE import_key = ANY($1) AND owner = $2 AND status = 'PROCESSING'",
    )
    .bind(running)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// Ends the imports whose replica is gone: no owner lock, or no heartbeat for a lease.
///
/// An import whose owner's lock is gone is ended once its heartbeat is also `lock_grace`
/// old: the lock's connection of a live replica may drop and be taken again, while its
/// heartbeats go on.
///
/// An import whose row is locked by a batch being written is skipped, unless `wait`: then the
/// reaper waits (up to `REAP_WAIT`) for that transaction, which is what a replica that starts
/// wants, as the batch of its dead predecessor is aborted once the server notices the lost
/// connection. Still locked after the wait: `lock_not_available` (55P03).
pub(super) async fn reap(
    pool: &PgPool,
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
        "SELECT import_key FROM imports i \
         WHERE status = 'PROCESSING' AND ( \
           heartbeat_time IS NULL \
           OR heartbeat_time < now() - make_interval(secs => $1) \
           OR (heartbeat_time < now() - make_interval(secs => $3) \
               AND NOT EXISTS ( \
             SELECT 1 FROM pg_locks l \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
               AND l.database = (SELECT oid FROM pg_database \
                                 WHERE datname = current_database()) \
               AND l.classid = $2::oid AND l.objid = i.owner::oid))) \
         {locking}"
    );
    let args = (sql.as_str(), message, lock_grace.as_secs_f64(), wait);
    let reaped: Vec<i64> = in_transaction(pool, &args, |tx, &(sql, message, grace, wait)| {
        Box::pin(async move {
            if wait {
                let timeout = format!("SET LOCAL lock_timeout = {}", REAP_WAIT.as_millis());
                sqlx::query(sqlx::AssertSqlSafe(timeout))
                    .execute(&mut *tx)
                    .await?;
            }
            let dead: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .bind(LEASE.as_secs_f64())
                .bind(LOCK_NAMESPACE)
                .bind(grace)
                .fetch_all(&mut *tx)
                .await?;
            // Each one as its own ending would do it: users created removed, users updated
            // restored (`undo_import` knows the order that keeps the unique indexes happy).
            for &key in &dead {
                undo_import(tx, key).await?;
                forget_file_keys(tx, key).await?;
            }
            let keys: Vec<i64> = sqlx::query_scalar(
                "UPDATE imports SET status = 'ERROR_UNKNOWN', error_message = $2, \
                 rows_imported = 0, rows_skipped = 0, rows_updated = 0, update_time = now(), \
                 complete_time = now() \
                 WHERE import_key = ANY($1) RETURNING import_key",
            )
            .bind(&dead)
            .bind(message)
            .fetch_all(&mut *tx)
            .await?;
            notify(tx, &keys).await?;
            Ok(keys)
        })
    })
    .await?;
    if !reaped.is_empty() {
        tracing::warn!(imports = ?reaped, "ended imports whose replica is gone");
    }
    Ok(reaped.len() as u64)
}

/// Whether `error` is a reap that waited for a locked import in vain.
pub(super) fn still_locked(error: &StoreError) -> bool {
    let StoreError::Database(source) = error else {
        return false;
    };
    source
        .downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .is_some_and(|db| db.code().as_deref() == Some("55P03"))
}
