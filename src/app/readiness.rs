//! Readiness, as Kubernetes' gRPC probe asks for it (`bulkimport.v1.ImportService`) and as
//! `/readyz` says it: SERVING once the database is open and while it answers and can be
//! written, NOT_SERVING otherwise, and for good once shutdown starts.
//!
//! "Can be written" matters: after a write fault (a full disk) the database still answers
//! reads, but an upload would fail, so readiness stays NOT_SERVING until a test write as large
//! as a batch succeeds (`Importer::ready`). Kubernetes then stops sending calls to the pod,
//! but does not restart it, since liveness stays SERVING: a restart would not free the disk.

use std::sync::Arc;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::READINESS_SERVICE;
use crate::import::Importer;
use crate::store::StoreError;

/// How often readiness checks that the database answers and can be written...
const READINESS_INTERVAL: Duration = Duration::from_secs(5);
/// ...and how often while it does not, so that the service is back soon after the database.
const RECOVERY_INTERVAL: Duration = Duration::from_secs(1);
/// A readiness check that takes longer fails: the write probe after a fault writes 16 MiB.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The readiness status, which shutdown turns NOT_SERVING for good.
#[derive(Clone)]
pub(super) struct Readiness {
    /// The gRPC health service's statuses: readiness is `READINESS_SERVICE` there.
    pub(super) reporter: HealthReporter,
    /// Set by shutdown; the lock orders a check of the database against it.
    pub(super) stopping: Arc<tokio::sync::Mutex<bool>>,
    /// `/readyz` of the metrics listener says the same.
    pub(super) metrics: crate::metrics::Metrics,
}

impl Readiness {
    /// Reports whether the database answers, unless shutdown started.
    ///
    /// Holds the `stopping` lock while it reports, so that a check that began before shutdown
    /// cannot turn readiness back to SERVING after `stop` turned it off.
    async fn set(&self, serving: bool) {
        let stopping = self.stopping.lock().await;
        if *stopping {
            return;
        }
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.metrics.set_ready(serving);
        self.reporter
            .set_service_status(READINESS_SERVICE, status)
            .await;
    }

    /// Turns readiness NOT_SERVING for good, for gRPC and `/readyz` alike: the first step of
    /// shutdown, so that load balancers stop sending calls while uploads finish.
    pub(super) async fn stop(&self) {
        let mut stopping = self.stopping.lock().await;
        *stopping = true;
        self.metrics.set_ready(false);
        self.reporter
            .set_service_status(READINESS_SERVICE, ServingStatus::NotServing)
            .await;
    }
}

/// Keeps readiness in step with the database: SERVING while it answers and can be written.
///
/// Checks every 5 s while ready and every second while not, each check bounded by
/// `CHECK_TIMEOUT` (a database that hangs is not ready). Logs and reports only changes, so a
/// steady state writes no log line. Never returns (its `Result<Infallible, _>` matches
/// `start_database`'s); shutdown aborts the task it runs in.
pub(super) async fn readiness_loop(
    importer: Importer,
    readiness: Readiness,
) -> Result<std::convert::Infallible, StoreError> {
    let mut serving = None;
    loop {
        let checked = tokio::time::timeout(CHECK_TIMEOUT, importer.ready()).await;
        let ok = matches!(checked, Ok(Ok(())));
        if serving != Some(ok) {
            match checked {
                Ok(Ok(())) => tracing::info!("ready: the database answers and can be written"),
                Ok(Err(e)) => tracing::warn!(reason = %e, "not ready"),
                Err(_) => tracing::warn!("not ready: the database does not answer in time"),
            }
            readiness.set(ok).await;
            serving = Some(ok);
        }
        let interval = if ok {
            READINESS_INTERVAL
        } else {
            RECOVERY_INTERVAL
        };
        tokio::time::sleep(interval).await;
    }
}
