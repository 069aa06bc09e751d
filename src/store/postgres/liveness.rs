//! What shows that a replica lives: each replica holds a session advisory lock on its own
//! random owner number for as long as it lives, and stamps its running imports with it and
//! with a heartbeat, renewed every few seconds and with every batch.
//!
//! This module only reports those signs (`processing`); whether an import is abandoned is
//! judged above the store, by the reaper (`import::ending::orphans`), which ends an import only
//! once its heartbeat has stood still for a while *as that reaper saw it*, and through the
//! one owner of endings. A lock alone says little: its connection may drop (a proxy blip, a
//! database restart) while its replica lives on and heartbeats.
//!
//! The owner lock is held on a connection of its own, outside the pool: a pooled connection may
//! be closed or recycled at any time, and the lock would go with it.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::IMPORT_COLUMNS;
use crate::domain::{Import, ImportKey};
use crate::store::codec::ImportRow;
use crate::store::{LifeSign, Processing, StoreError};

/// First key of the advisory locks this service takes ("BIMP"), so that they do not collide
/// with other users of the database.
pub(super) const LOCK_NAMESPACE: i64 = 0x4249_4D50;
/// Second key of the retention's lock (`Steps::retention_turn`): 0, which no owner number is.
pub(super) const RETENTION_LOCK: i64 = 0;
/// Second key of the user event feed's turn (`Steps::events_turn`): -1, which no owner number
/// (drawn from a sequence, from 1) is.
pub(super) const EVENTS_LOCK: i64 = -1;
/// How often the owner lock's connection is checked.
///
/// A lost connection is noticed within this, and the lock taken again on a new one.
const LOCK_CHECK: Duration = Duration::from_secs(5);

/// A new replica's owner number: random, positive, and an `int4` as advisory locks want.
///
/// Random rather than configured, so that replicas need no identity of their own; a restarted
/// replica is a new owner, and its old imports are judged like any other's.
fn new_owner() -> i64 {
    i64::from(uuid::Uuid::new_v4().as_u128() as u32 & 0x7fff_ffff).max(1)
}

/// Chooses this replica's owner number and takes its advisory lock on a connection of its
/// own, then keeps the lock for as long as the returned task runs, taking it again (after a
/// backoff) whenever its connection is lost. Returns the owner once the lock is first held.
///
/// The number is random; the first lock is only *tried*, and a number another live replica
/// holds (about one chance in 2^31 per replica) is given up for another, rather than waited
/// for, which would hang the start for as long as that replica lives.
pub(super) async fn hold_owner_lock(
    options: PgConnectOptions,
) -> Result<(i64, JoinHandle<()>), StoreError> {
    let (locked, mut lock_taken) = watch::channel(None::<i64>);
    let task = tokio::spawn(async move {
        let (options, locked) = (&options, &locked);
        let session = move || async move {
            let mut conn = PgConnection::connect_with(options).await?;
            let known = *locked.borrow();
            let owner = match known {
                // Taken again after a lost connection: the same number, whose imports carry it.
                Some(owner) => {
                    sqlx::query("SELECT pg_advisory_lock($1::int, $2::int)")
                        .bind(LOCK_NAMESPACE)
                        .bind(owner)
                        .execute(&mut conn)
                        .await?;
                    owner
                }
                None => loop {
                    let owner = new_owner();
                    let taken: bool =
                        sqlx::query_scalar("SELECT pg_try_advisory_lock($1::int, $2::int)")
                            .bind(LOCK_NAMESPACE)
                            .bind(owner)
                            .fetch_one(&mut conn)
                            .await?;
                    if taken {
                        break owner;
                    }
                    tracing::warn!(owner, "another replica holds this owner number; another");
                },
            };
            locked.send_replace(Some(owner));
            loop {
                tokio::time::sleep(LOCK_CHECK).await;
                sqlx::query("SELECT 1").execute(&mut conn).await?;
            }
        };
        // Retried for as long as the store lives (the task is aborted with it): it never
        // ends by itself.
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
        tracing::error!(error = %e, "gave up the owner lock");
    });
    match lock_taken.wait_for(Option::is_some).await {
        Ok(owner) => Ok(((*owner).unwrap_or_default(), task)),
        Err(_) => Err(StoreError::Database(
            "the owner lock task ended before taking the lock".into(),
        )),
    }
}

/// Renews the heartbeat of the imports this replica runs.
///
/// Those it owns and that are still PROCESSING; no query for an empty list.
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

/// An import's heartbeat in microseconds since the Unix epoch, exactly (`extract` gives a
/// numeric): the life sign `Guard::Abandoned` compares.
///
/// Exact, so that the guard's `IS NOT DISTINCT FROM` matches the value `processing` read.
pub(super) const HEARTBEAT_MICROS: &str = "(extract(epoch FROM heartbeat_time) * 1000000)::bigint";

/// Whether the owner lock of the replica that runs import `i` is held.
///
/// An SQL expression, for a statement whose `imports` row is aliased `i`: it looks the lock up in
/// `pg_locks`, in this database, by the namespace and the import's `owner`.
pub(super) fn owner_alive() -> String {
    format!(
        "EXISTS (SELECT 1 FROM pg_locks l \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
           AND l.classid = {LOCK_NAMESPACE}::oid AND l.objid = i.owner::oid)"
    )
}

/// A PROCESSING import with its life sign, as `processing` selects it.
///
/// The import's own columns, flattened, then the two signs.
#[derive(sqlx::FromRow)]
struct ProcessingRow {
    #[sqlx(flatten)]
    import: ImportRow,
    heartbeat: Option<i64>,
    owner_alive: bool,
}

/// Every PROCESSING import, with its heartbeat and whether its owner's lock is held.
///
/// Read in one statement, so that the signs and the import were true together.
pub(super) async fn processing(pool: &PgPool) -> Result<Vec<Processing>, StoreError> {
    let sql = format!(
        "SELECT {IMPORT_COLUMNS}, {HEARTBEAT_MICROS} AS heartbeat, {} AS owner_alive \
         FROM imports i WHERE status = 'PROCESSING'",
        owner_alive()
    );
    let rows: Vec<ProcessingRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|row| {
            Ok(Processing {
                import: Import::try_from(row.import)?,
                sign: LifeSign {
                    heartbeat: row.heartbeat,
                    owner_alive: row.owner_alive,
                },
            })
        })
        .collect()
}
