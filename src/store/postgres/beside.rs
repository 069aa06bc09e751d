//! A planned batch's file keys written in two parts at once: part by the batch's own
//! transaction, part beside it, by a transaction of its own on a second connection.
//!
//! Why: a dry run writes nothing but file keys, and on PostgreSQL one server process inserting
//! them into the table and its two unique indexes is the whole of its time (`pg_stat_activity`,
//! 50 MiB: the `COPY` in 88 of 90 samples), while the plain import writes with two (`parallel`).
//! Outside the service, two sessions inserting half the keys each took 0.58 of one session's time.
//!
//! The price is atomicity: the part beside commits on its own, before the batch's transaction.
//! Should that transaction then fail, the keys beside are left in the table for rows whose batch
//! did not commit. Nothing may judge a row by them, so each way an import goes on after such a
//! failure removes them first:
//! - the same batch run again (`tx`: it lost a race, or the `COPY` met a leftover key): its
//!   transaction deletes the keys from the first row the part beside wrote on, before its
//!   lookups (`Beside::clear_leftovers`);
//! - a resume, whatever left the import waiting for its client (a failed batch of an upload
//!   whose client stalled or went, a shutdown, a server that died): it deletes every key past
//!   the rows recorded (`claims::drop_unrecorded`, as it does their users);
//! - any other failure ends the import, whose ending drops the table.
//!
//! The part beside holds the import as the batch's transaction does (`hold_processing!`, a key
//! share lock both may have at once), and the batch's transaction keeps its hold until it ends,
//! after the part beside: no ending can drop the table meanwhile, the reaper passes the import
//! by, and only the replica that owns it writes. The second connection is waited for briefly
//! (`BESIDE_ACQUIRE_WAIT`): the batch's transaction holds a connection and its locks while it
//! waits, and a pool that many such batches emptied would otherwise stall every other request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::OwnedSemaphorePermit;

use super::copy::copy_claims;
use super::plain::PlainWrites;
use super::steps::hold_processing;
use super::tx::commit_lazily;
use crate::domain::ImportKey;
use crate::store::StoreError;
use crate::store::claims;
use crate::store::plan::{Claim, Plan};
use crate::store::steps::Steps;

/// How long the part beside waits for a lock before it gives up. It never should: the plan
/// gives every key of a batch once, and a batch runs alone per import. Were it to wait for a
/// key the batch's own transaction holds, which waits for it in turn, PostgreSQL could not see
/// the cycle; this ends it with an error.
const BESIDE_LOCK_TIMEOUT: &str = "10s";

/// How long the part beside waits for a connection before the batch's transaction writes its
/// keys itself: enough to open one (a few milliseconds on a local network), not to queue
/// behind other requests while holding the batch's.
const BESIDE_ACQUIRE_WAIT: Duration = Duration::from_millis(100);

/// The part beside's start, once its transaction's settings are made: the import held as the
/// batch holds it (`$1`), and whether its table (`$2`) is visible to this transaction.
const HOLD_AND_SEE: &str = concat!(
    "WITH held AS (",
    hold_processing!(),
    ") SELECT EXISTS (SELECT 1 FROM held) AND to_regclass($2) IS NOT NULL"
);

/// What one planned batch's transactions share across its attempts (`tx::in_transaction`):
/// where the second connection and its writer come from, and whether an attempt left keys
/// beside.
pub(super) struct Beside<'a> {
    pool: &'a PgPool,
    /// Whose second writers a part beside takes one of (`PlainWrites::second_writer`), for as
    /// long as it writes: one per spare core, across uploads.
    writers: &'a PlainWrites,
    /// Keys from which a part goes beside: fewer are not worth a transaction
    /// (`OpenOptions::file_keys_beside_from`, 4,096 unless a test lowers it).
    from: usize,
    /// A part beside committed in an attempt: the next attempt removes its keys first.
    committed: AtomicBool,
    /// The first row of the keys the part beside wrote (the least, whatever the order).
    from_row: AtomicU64,
}

/// What the batch's own transaction writes of the plan's keys, and what goes beside, with the
/// second writer it takes.
struct Split<'p, 'a> {
    here: &'p [Claim<'a>],
    there: &'p [Claim<'a>],
    /// Held until both parts are written; `None` when nothing goes beside.
    writer: Option<OwnedSemaphorePermit>,
}

impl<'p, 'a> Split<'p, 'a> {
    /// Every key written by the batch's own transaction.
    fn alone(plan: &'p Plan<'a>) -> Self {
        Self {
            here: &plan.claims,
            there: &[],
            writer: None,
        }
    }
}

impl<'a> Beside<'a> {
    /// For one batch's attempts, on `pool`, with a second writer of `writers` when a part goes
    /// beside, from `from` keys on.
    pub(super) fn new(pool: &'a PgPool, writers: &'a PlainWrites, from: usize) -> Self {
        Self {
            pool,
            writers,
            from,
            committed: AtomicBool::new(false),
            from_row: AtomicU64::new(u64::MAX),
        }
    }

    /// Which of `plan`'s keys go beside: none with few keys or without a free second writer
    /// (taken here, without waiting, and held by the split); else a share that leaves each
    /// transaction about as much to do. The batch's own does its updates and inserts too, each
    /// about twice a key's work (an update writes a new tuple and its index entries), so the
    /// part beside takes more of the keys the more of those there are.
    ///
    /// None either once an attempt left keys beside: this attempt's transaction deletes them
    /// (`clear_leftovers`), and holds their index entries until it ends; a part beside that
    /// wrote one of those keys again would wait for it, while it waits for the part beside, a
    /// cycle PostgreSQL cannot see (it would end only by `BESIDE_LOCK_TIMEOUT`).
    fn split<'p, 'c>(&self, plan: &'p Plan<'c>) -> Split<'p, 'c> {
        let claims = plan.claims.as_slice();
        let left_keys = self.committed.load(Ordering::Relaxed);
        if left_keys || claims.len() < self.from {
            return Split::alone(plan);
        }
        let Some(writer) = self.writers.second_writer() else {
            return Split::alone(plan);
        };
        let work = claims.len() + 2 * (plan.updates.len() + plan.inserts.len());
        let there = (work / 2).min(claims.len());
        let (here, there) = claims.split_at(claims.len() - there);
        Split {
            here,
            there,
            writer: Some(writer),
        }
    }

    /// Writes `claims` for import `key` in a transaction of its own, which commits before the
    /// batch's. `Ok(false)` when it could not, and the batch's transaction must write them: the
    /// pool had no connection for it in time (the batch's has one), or the table is not there
    /// for it (the batch's own transaction made it, and has not committed), or the import is no
    /// longer this replica's to write (the batch's transaction then fails as well).
    async fn write(&self, key: ImportKey, claims: &[Claim<'_>]) -> Result<bool, StoreError> {
        let mut conn = match tokio::time::timeout(BESIDE_ACQUIRE_WAIT, self.pool.acquire()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) => return Ok(false),
            Ok(Err(e)) => return Err(e.into()),
        };
        let mut tx = sqlx::Acquire::begin(&mut conn).await?;
        // Lazily, as the batch's; every lock wait bounded, the hold's too.
        commit_lazily(&mut tx).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = '{BESIDE_LOCK_TIMEOUT}'"
        )))
        .execute(&mut *tx)
        .await?;
        let ready: bool = sqlx::query_scalar(HOLD_AND_SEE)
            .bind(key)
            .bind(claims::table(key))
            .fetch_one(&mut *tx)
            .await?;
        if !ready {
            return Ok(false);
        }
        copy_claims(&mut tx, key, claims).await?;
        // Before the commit: a commit whose answer is lost may still have happened.
        let first = claims
            .iter()
            .map(|c| c.row_number)
            .min()
            .unwrap_or(u64::MAX);
        self.from_row.fetch_min(first, Ordering::Relaxed);
        self.committed.store(true, Ordering::Relaxed);
        tx.commit().await?;
        Ok(true)
    }

    /// Removes the keys an earlier attempt of this batch left beside, in this attempt's
    /// transaction, before its lookups. Nothing to do after a first attempt, or when no part
    /// beside committed.
    ///
    /// A scan of the import's table (no index leads with the row), paid only after a failure.
    pub(super) async fn clear_leftovers(
        &self,
        steps: &mut impl Steps,
        key: ImportKey,
    ) -> Result<(), StoreError> {
        if !self.committed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let from = self.from_row.load(Ordering::Relaxed);
        tracing::debug!(
            import_key = key,
            from_row = from,
            "removing the file keys a failed attempt left beside"
        );
        steps
            .execute_claims(&claims::unrecorded(key, from.saturating_sub(1)))
            .await?;
        Ok(())
    }
}

/// Writes `plan`'s keys for import `key`: on the batch's own connection after `before` (its
/// updates and inserts), and, when the batch has a `beside` and `Beside::split` sends some
/// there, those beside it at the same time, or on the batch's connection too when the part
/// beside could not write them. `before`'s value, once both have written.
pub(super) async fn write_keys<T>(
    conn: &mut PgConnection,
    beside: Option<&Beside<'_>>,
    key: ImportKey,
    plan: &Plan<'_>,
    before: impl AsyncFnOnce(&mut PgConnection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let split = beside.map_or_else(|| Split::alone(plan), |beside| beside.split(plan));
    // The writer is held until both parts are written, or one failed.
    let Split {
        here,
        there,
        writer: _writer,
    } = split;
    let own = async {
        let value = before(&mut *conn).await?;
        copy_claims(&mut *conn, key, here).await?;
        Ok::<T, StoreError>(value)
    };
    let Some(beside) = beside.filter(|_| !there.is_empty()) else {
        return own.await;
    };
    let (own, wrote) = tokio::join!(own, beside.write(key, there));
    let value = own?;
    if !wrote? {
        copy_claims(conn, key, there).await?;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::plan::Update;

    fn plan(claims: usize, updates: usize, inserts: usize) -> Plan<'static> {
        let claim = Claim {
            email: "a@example.com",
            external_id: None,
            row_number: 2,
            released_external_id: None,
        };
        let update = Update {
            index: 0,
            row_id: None,
            import_key: 1,
            updated_by: None,
        };
        Plan {
            claims: vec![claim; claims],
            updates: vec![update; updates],
            inserts: vec![0; inserts],
            ..Plan::default()
        }
    }

    fn sizes(split: Split<'_, '_>) -> (usize, usize) {
        (split.here.len(), split.there.len())
    }

    #[tokio::test]
    async fn the_keys_beside_leave_each_transaction_about_as_much_to_do() {
        let pool = PgPool::connect_lazy("postgres://nowhere/none").unwrap();
        let writers = PlainWrites::new();
        let beside = Beside::new(&pool, &writers, 4096);
        // A dry run: keys only, half each.
        assert_eq!(sizes(beside.split(&plan(10_000, 0, 0))), (5_000, 5_000));
        assert_eq!(sizes(beside.split(&plan(10_001, 0, 0))), (5_001, 5_000));
        // A re-sync's SKIP: the batch's transaction inserts the new users too.
        assert_eq!(sizes(beside.split(&plan(9_000, 0, 1_000))), (3_500, 5_500));
        // UPDATE of every user: the updates are the batch's, every key beside.
        assert_eq!(sizes(beside.split(&plan(10_000, 10_000, 0))), (0, 10_000));
        // Too few keys to be worth a transaction.
        assert_eq!(sizes(beside.split(&plan(4_095, 0, 0))), (4_095, 0));
        // A split holds its second writer: with every one taken, the batch writes alone.
        let all = || std::iter::from_fn(|| writers.second_writer()).collect::<Vec<_>>();
        let held = all();
        let free = held.len();
        assert!(free >= 1);
        assert_eq!(sizes(beside.split(&plan(10_000, 0, 0))), (10_000, 0));
        drop(held);
        let keys = plan(10_000, 0, 0);
        let split = beside.split(&keys);
        assert_eq!(all().len(), free - 1);
        drop(split);
        assert_eq!(all().len(), free);
        // After an attempt left keys beside, the batch writes alone.
        beside.committed.store(true, Ordering::Relaxed);
        assert_eq!(sizes(beside.split(&plan(10_000, 0, 0))), (10_000, 0));
    }
}
