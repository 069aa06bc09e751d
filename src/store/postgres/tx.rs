//! Transactions that are run again when they lose to another import's: two imports writing
//! overlapping addresses can deadlock, and PostgreSQL then aborts one of them.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};

use crate::store::StoreError;

/// Runs `body` in a transaction on a pooled connection, and again (a few times, after a short
/// backoff) when it loses a deadlock or a serialization conflict. Any other error rolls the
/// transaction back and is returned; the pool drops a connection that broke.
///
/// `body` gets what it works on as `data`, borrowed for as long as the transaction, rather
/// than capturing it: its future is then tied to that one lifetime, and can be boxed as `Send`.
pub(super) async fn in_transaction<D, T>(
    pool: &PgPool,
    data: &D,
    body: impl for<'c> Fn(&'c mut PgConnection, &'c D) -> BoxFuture<'c, Result<T, sqlx::Error>> + Sync,
) -> Result<T, StoreError>
where
    D: Sync + ?Sized,
{
    in_transaction_when(pool, data, body, |_| false).await
}

/// `in_transaction`, also run again after the errors `also` names: for a transaction that
/// looks values up and then writes, a unique violation means another import took a value in
/// between, which the next attempt's lookup sees.
pub(super) async fn in_transaction_when<D, T>(
    pool: &PgPool,
    data: &D,
    body: impl for<'c> Fn(&'c mut PgConnection, &'c D) -> BoxFuture<'c, Result<T, sqlx::Error>> + Sync,
    also: fn(&sqlx::Error) -> bool,
) -> Result<T, StoreError>
where
    D: Sync + ?Sized,
{
    let body = &body;
    let attempt = move || async move {
        let mut tx = pool.begin().await?;
        let value = body(&mut tx, data).await?;
        tx.commit().await?;
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
        .when(|e| lost_a_conflict(e) || also(e))
        .notify(|e, _| tracing::debug!(error = %e, "retrying a transaction"))
        .await
        .map_err(StoreError::from)
}

/// A unique violation (23505).
pub(super) fn unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// A deadlock, or a serialization failure: the other transaction won, this one may retry.
fn lost_a_conflict(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}
