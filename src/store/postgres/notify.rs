//! Progress everywhere: every batch and every ending sends `NOTIFY bulk_import_changes,
//! '<import key>'` in its transaction. Each replica listens (`PgListener`, which reconnects by
//! itself) and wakes its watchers, which read the stored import: the database stays the source
//! of truth, and a missed notification only delays an update until the next poll.
//!
//! A notification carries nothing but the key: a watcher woken reads the import itself, so what
//! it shows is what is stored, never a message that may be stale or out of order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::PgConnection;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::watch;

use crate::domain::ImportKey;

/// The channel of change notifications; the payload is the import key.
const CHANNEL: &str = "bulk_import_changes";

/// Sends a change notification for each key, delivered when the transaction commits.
///
/// One statement for all the keys; nothing for none. A rolled-back transaction sends nothing.
pub(super) async fn notify(conn: &mut PgConnection, keys: &[i64]) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, key::text) FROM unnest($2::bigint[]) AS key")
        .bind(CHANNEL)
        .bind(keys)
        .execute(conn)
        .await?;
    Ok(())
}

/// Watchers of imports, by key, woken by change notifications.
///
/// A `watch` channel per import that has watchers: its value is only a counter that moves, so
/// that a watcher that was busy sees one change, not a backlog.
#[derive(Default)]
pub(super) struct Changes {
    /// The sender of each import followed here; an entry with no receiver left is dropped at the
    /// next `subscribe`.
    watchers: Mutex<HashMap<ImportKey, watch::Sender<u64>>>,
}

impl Changes {
    /// A receiver woken by every later change of import `key`; prunes the imports nobody follows
    /// any more, so the map stays as small as the watchers.
    pub(super) fn subscribe(&self, key: ImportKey) -> watch::Receiver<u64> {
        let mut watchers = self.lock();
        watchers.retain(|_, tx| tx.receiver_count() > 0);
        watchers
            .entry(key)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the watchers of one import; nothing when nobody follows it here.
    fn poke(&self, key: ImportKey) {
        if let Some(tx) = self.lock().get(&key) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// After a lost connection notifications may have been missed: wake everyone to re-read.
    fn poke_all(&self) {
        for tx in self.lock().values() {
            tx.send_modify(|n| *n += 1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ImportKey, watch::Sender<u64>>> {
        self.watchers.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long to wait before listening again while the database is away.
///
/// From 100 ms up to 5 s, for ever: watchers poll meanwhile (see the module's doc).
fn reconnecting() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
}

/// Listens for change notifications for as long as the store lives (the task is aborted with
/// it): a session listens until its connection fails, and a new one starts after a backoff.
///
/// Every new session, and every reconnection inside one, wakes every watcher: notifications sent
/// while nobody listened are lost, so each watcher reads its import again.
pub(super) async fn listen(pool: PgPool, changes: Arc<Changes>) {
    let (pool, changes) = (&pool, &changes);
    let session = move || async move {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        // Something may have changed while nobody listened.
        changes.poke_all();
        loop {
            match listener.try_recv().await? {
                Some(notification) => {
                    if let Ok(key) = notification.payload().parse() {
                        changes.poke(key);
                    }
                }
                // The connection was lost and is back: whatever happened meanwhile was missed.
                None => changes.poke_all(),
            }
        }
    };
    let ended: Result<std::convert::Infallible, sqlx::Error> = session
        .retry(reconnecting())
        .notify(|e, delay| {
            tracing::warn!(error = %e, ?delay, "change notifications interrupted; listening again")
        })
        .await;
    let Err(e) = ended;
    {
        tracing::error!(error = %e, "stopped listening for changes; watchers poll instead");
    }
}
