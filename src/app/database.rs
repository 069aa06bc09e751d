//! The database's side of a running server: it is opened (retrying while it is not there
//! yet), imports a stopped server left PROCESSING are ended (`import::ending::orphans`), and
//! then, for as long as the server runs, readiness follows the database, the upkeep runs
//! every few seconds (life signs renewed, waiting endings stored, abandoned imports reaped),
//! the retention's clean-up every few minutes (`import::retention`), and with
//! `--events-nats-url` the relay of the feed (`relay`), in a task of its own.
//!
//! It runs as one task beside the gRPC server, so that the server answers (liveness,
//! readiness NOT_SERVING, the template) while the database is not there yet. The importer gets
//! its store only after recovery, which is how uploads are kept out until it is done.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use super::readiness::{Readiness, readiness_loop};
use crate::import::Importer;
use crate::import::retention::Retention;
use crate::store::{self, OpenOptions, StoreError};

/// How often life signs are renewed and abandoned imports ended: well within the reaper's
/// grace (`import::ending::orphans::LOCK_GRACE`).
///
/// 3 s against a grace of 10 s: a live server renews its imports' life signs at least three
/// times before another replica may judge them abandoned, so one slow round of upkeep does not
/// get its imports reaped.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3);

/// The relay to NATS, started once the database is open, and how shutdown stops it.
pub(super) struct Relay {
    pub config: crate::relay::RelayConfig,
    /// Cancelled at shutdown: the relay gives its lease up.
    pub stop: tokio_util::sync::CancellationToken,
    /// Where it runs, for shutdown to wait for it.
    pub tasks: tokio_util::task::TaskTracker,
}

/// Opens and migrates the database, ends imports a previous run left PROCESSING, then keeps
/// readiness in step with the database and runs the periodic upkeep. Returns only if the
/// database cannot be opened for good (a wrong URL, a file that cannot be created, a failed
/// migration); an error the store calls transient (a PostgreSQL server still starting) is
/// retried until it goes, while readiness says NOT_SERVING.
pub(super) async fn start_database(
    url: String,
    options: OpenOptions,
    importer: Importer,
    readiness: Readiness,
    retention: Retention,
    relay: Option<Relay>,
) -> Result<std::convert::Infallible, StoreError> {
    let metrics = importer.metrics().clone();
    let open = || async {
        let store = store::open(&url, options).await?;
        // Before the importer has the store: no upload may start meanwhile, on an import
        // that recovery would end.
        let window = importer.config().resume_window;
        let ended =
            crate::import::ending::orphans::recover(store.as_ref(), &metrics, window).await?;
        if ended > 0 {
            tracing::warn!(imports = ended, "ended imports interrupted by a stop");
        }
        Ok::<_, StoreError>(store)
    };
    let store = open
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .without_max_times(),
        )
        .when(StoreError::is_transient)
        .notify(|e, delay| {
            tracing::warn!(
                error = e.detail(),
                ?delay,
                "the database is not ready; retrying"
            )
        })
        .await?;
    importer.set_store(store);
    if let Some(Relay {
        config,
        stop,
        tasks,
    }) = relay
    {
        tasks.spawn(crate::relay::run(importer.clone(), config, stop));
    }
    let upkeep = async {
        let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = importer.maintain().await {
                tracing::warn!(error = %e, "upkeep failed; retrying");
            }
        }
    };
    tokio::select! {
        never = readiness_loop(importer.clone(), readiness) => never,
        never = upkeep => never,
        never = crate::import::retention::keep(importer.clone(), retention) => Ok(never),
    }
}
