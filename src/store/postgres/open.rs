//! Opening the PostgreSQL store: the migrations and the one-off rekeying on a small pool of
//! their own, then this replica's owner lock, then the pool every request uses, whose
//! connections carry the owner number (`steps::OWNED` fences the upload's writes with it).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::notify::{self, Changes};
use super::tx::{in_transaction, only_conflicts};
use super::{PostgresStore, liveness, plain};
use crate::store::error::FaultLatch;
use crate::store::{OpenOptions, StoreError};
use crate::store::{claims, rekey};

impl PostgresStore {
    /// Connects, applies `migrations/postgres` (sqlx's migrator takes a lock, so replicas that
    /// start together apply them once), takes this replica's owner lock and starts listening.
    ///
    /// Returns once the owner lock is held, so that no import is created before its owner's lock
    /// can be seen. A server that does not answer yet is `Unavailable` (worth retrying, see
    /// `store::open`); a bad URL is `Config`.
    pub async fn open(url: &str, settings: OpenOptions) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Config(format!("{url}: {e}")))?
            .application_name("bulk-import");
        let setup = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&setup).await?;
        let rekeyed = in_transaction(
            &setup,
            &AtomicU64::new(0),
            &(),
            only_conflicts,
            |mut steps, ()| {
                Box::pin(async move {
                    let rekeyed = rekey::rekey(&mut steps).await?;
                    claims::adopt(&mut steps).await?;
                    Ok(rekeyed)
                })
            },
        )
        .await?;
        rekeyed.log();
        setup.close().await;

        let (owner, lock_task) = liveness::hold_owner_lock(options.clone()).await?;
        // Every connection carries the owner number, so that the upload's own writes can
        // require the import to be this replica's (`steps::OWNED`).
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // Requests fail fast with UNAVAILABLE while the database is away.
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.options([("bulk_import.owner", owner.to_string())]))
            .await?;
        let changes = Arc::new(Changes::default());
        let listen_task = tokio::spawn(notify::listen(pool.clone(), changes.clone()));
        tracing::info!(owner, "postgres store ready");
        Ok(Self {
            pool,
            owner,
            plain: plain::PlainWrites::new(),
            beside_from: settings.file_keys_beside_from,
            changes,
            faults: FaultLatch::default(),
            tasks: vec![lock_task, listen_task],
            events_written: AtomicU64::new(0),
        })
    }
}
