//! Transactions that are run again when they lose to another import's: two imports writing
//! overlapping addresses can deadlock, and PostgreSQL then aborts one of them.
//!
//! Every attempt is a new transaction on a connection from the pool, with the body run again from
//! the start: a body must do nothing outside its transaction that a second run would repeat (the
//! plain path's backoff and part bookkeeping live outside, in `plain`). No isolation level is
//! set, so transactions run at the database's default (READ COMMITTED unless changed); the row
//! locks the steps take (`FOR UPDATE`, `FOR KEY SHARE`) order what must not interleave.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};

use super::steps::PgSteps;
use crate::store::StoreError;

/// Runs `body` in a transaction on a pooled connection, with the shared steps in PostgreSQL's
/// dialect (the feed's events it writes added to `told` once it commits), and again (a few times, after a short backoff) when it loses a deadlock or a
/// serialization conflict (`StoreError::Conflict`), or fails as `again` says. Any other error
/// rolls the transaction back and is returned; the pool drops a connection that broke.
///
/// `body` gets what it works on as `data`, borrowed for as long as the transaction, rather
/// than capturing it: its future is then tied to that one lifetime, and can be boxed as `Send`.
///
/// Up to 7 retries, 10 ms to 200 ms apart with jitter; after that the last error is returned
/// (`Conflict`, or the one `again` accepted).
pub(super) async fn in_transaction<D, T>(
    pool: &PgPool,
    told: &AtomicU64,
    data: &D,
    again: fn(&StoreError) -> bool,
    body: impl for<'c> Fn(PgSteps<'c>, &'c D) -> BoxFuture<'c, Result<T, StoreError>> + Sync,
) -> Result<T, StoreError>
where
    D: Sync + ?Sized,
{
    let body = &body;
    let attempt = move || async move {
        let mut tx = pool.begin().await?;
        let events = AtomicU64::new(0);
        let value = body(PgSteps::new(&mut tx, &events), data).await?;
        tx.commit().await?;
        told.fetch_add(events.into_inner(), Ordering::Relaxed);
        Ok(value)
    };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(10))
                .with_max_delay(Duration::from_millis(200))
                .with_max_times(7)
                .with_jitter(),
        )
        .when(|e| matches!(e, StoreError::Conflict(_)) || again(e))
        .notify(|e, _| tracing::debug!(error = e.detail(), "retrying a transaction"))
        .await
}

/// Run nothing again but lost conflicts.
///
/// For every transaction but a planned batch's: a unique violation there is an answer
/// (`AlreadyExists` from an id taken) or a bug, and running it again would not change it.
pub(super) fn only_conflicts(_: &StoreError) -> bool {
    false
}

/// Also run again after a unique violation: for a transaction that looks values up and then
/// writes, it means another import took a value in between, which the next attempt's lookup
/// sees.
///
/// Only for `planned::write`, whose lookups see the new holder on the next attempt; a violation
/// that persists is returned after the last retry.
pub(super) fn taken_meanwhile(error: &StoreError) -> bool {
    matches!(error, StoreError::AlreadyExists)
}

/// Lets the transaction commit without waiting for its WAL to reach the disk. A batch need
/// not be durable before the next: if the server crashes, the import is PROCESSING and gets
/// ended anyway. Its ending commits synchronously, which flushes every earlier batch too.
pub(super) async fn commit_lazily(conn: &mut PgConnection) -> Result<(), StoreError> {
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(conn)
        .await?;
    Ok(())
}
