//! Imports: the upload pipeline and the queries on imports, independent of gRPC.
//!
//! Data flows chunk → parser → validator → store, with progress published on the way:
//!
//! - [`chunk`]: the size limit, the checksum, a first look at the content, the byte order mark;
//! - [`decoder`]: UTF-8, UTF-16 and Windows-1252 to UTF-8, as the chunks stream;
//! - [`delimiter`]: which of `,` `;` and tab the header line uses;
//! - [`parser`]: incremental CSV framing with spreadsheet row numbers and bounded records;
//! - [`validator`]: the header's column mapping, then `NewUser` or row errors for each row;
//! - [`reader`]: the above composed, bytes in, rows out;
//! - [`pipeline`]: one upload's task, its writer task, its counters, and how it ends;
//! - [`progress`]: live counters for watchers;
//! - [`error`]: this layer's errors, into which the store's are mapped;
//! - [`template`]: the downloadable template.
//!
//! [`Importer`], here, is the entry point that requests share: it starts uploads, answers the
//! queries (with the live state of imports running here), and runs the periodic upkeep.

pub mod chunk;
pub mod decoder;
pub mod delimiter;
pub mod error;
pub mod parser;
pub mod pipeline;
pub mod progress;
pub mod reader;
mod report;
pub mod template;
pub mod validator;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{AccountId, Caller, Counters, Import, ImportId, ImportKey, ImportStatus};
use crate::metrics::Metrics;
pub use crate::store::ImportCursor;
use crate::store::{Store, StoredRowError};
pub use error::ImportError;
pub use pipeline::ImportConfig;
use pipeline::admission::Admission;
use pipeline::cancel::Cancels;
use pipeline::ending::Endings;
pub use pipeline::ending::INTERRUPTED;
use pipeline::events::{StreamError, UploadEvent};
use pipeline::memory::BatchMemory;
use progress::{FollowEnd, ProgressHub, WATCH_TICK, follow_local};

/// How long a watcher of an import running elsewhere waits for a change notification before
/// reading the stored state anyway.
const POLL_FALLBACK: Duration = Duration::from_secs(1);
/// How long `CancelImport` waits for the import to end.
const CANCEL_WAIT: Duration = Duration::from_secs(30);
/// Reads of the store a watcher may fail in a row (about 5 s) before its stream ends with
/// the error.
const WATCH_FAILURES: u32 = 20;

/// Whether counters `a` are further along than `b`: two snapshots of one upload's stored
/// progress, each counter of which only grows.
fn later(a: &Counters, b: &Counters) -> bool {
    let a = [
        a.bytes_received,
        a.rows_processed,
        a.rows_imported,
        a.rows_failed,
        a.row_errors_omitted,
    ];
    let b = [
        b.bytes_received,
        b.rows_processed,
        b.rows_imported,
        b.rows_failed,
        b.row_errors_omitted,
    ];
    a.iter().zip(&b).all(|(x, y)| x >= y) && a != b
}

/// The entry point of the import layer, shared by every request.
#[derive(Clone)]
pub struct Importer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Set once the database is open and migrated; requests before that get UNAVAILABLE.
    store: OnceLock<Arc<dyn Store>>,
    hub: ProgressHub,
    config: ImportConfig,
    /// Running uploads, so that shutdown can wait for them.
    uploads: TaskTracker,
    /// Cancelled when shutdown stops waiting: running uploads then end in ERROR_UNKNOWN.
    shutdown: CancellationToken,
    /// Endings that could not be stored when they happened, stored by `maintain`.
    endings: Endings,
    memory: BatchMemory,
    admission: Admission,
    cancels: Cancels,
    /// `WatchImport` streams open at once.
    watchers: Arc<tokio::sync::Semaphore>,
    metrics: Metrics,
}

impl Importer {
    pub fn new(config: ImportConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: OnceLock::new(),
                hub: ProgressHub::default(),
                uploads: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                endings: Endings::default(),
                memory: BatchMemory::default(),
                admission: Admission::new(config.max_uploads, config.max_uploads_per_account),
                cancels: Cancels::default(),
                watchers: Arc::new(tokio::sync::Semaphore::new(config.max_watchers.max(1))),
                metrics: Metrics::new(),
                config,
            }),
        }
    }

    /// Makes the importer ready: called once the store is open and migrated.
    pub fn set_store(&self, store: Arc<dyn Store>) {
        let pools = store.clone();
        self.inner.metrics.watch_pools(move || pools.pool_stats());
        let _ = self.inner.store.set(store);
    }

    /// What the service counts, for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    fn store(&self) -> Result<Arc<dyn Store>, ImportError> {
        self.inner.store.get().cloned().ok_or(ImportError::NotReady)
    }

    pub fn config(&self) -> &ImportConfig {
        &self.inner.config
    }

    /// Runs one upload for `caller` to its end and returns the finished import. The upload runs
    /// in its own task: if the caller is dropped, the upload still ends properly.
    pub async fn upload<S>(&self, caller: Caller, events: S) -> Result<Import, ImportError>
    where
        S: Stream<Item = Result<UploadEvent, StreamError>> + Send + Unpin + 'static,
    {
        if self.inner.shutdown.is_cancelled() || self.inner.uploads.is_closed() {
            return Err(ImportError::ShuttingDown);
        }
        let ctx = pipeline::Context {
            store: self.store()?,
            hub: self.inner.hub.clone(),
            memory: self.inner.memory.clone(),
            shutdown: self.inner.shutdown.clone(),
            endings: self.inner.endings.clone(),
            admission: self.inner.admission.clone(),
            cancels: self.inner.cancels.clone(),
            metrics: self.inner.metrics.clone(),
            config: self.inner.config.clone(),
        };
        let task = self.inner.uploads.spawn(pipeline::run(ctx, caller, events));
        task.await
            .map_err(|e| ImportError::Internal(format!("the upload task failed: {e}")))?
    }

    /// Stops taking uploads and waits up to `grace` for the running ones; those still running
    /// then end in ERROR_UNKNOWN, and this waits for them to record it.
    pub async fn shutdown(&self, grace: Duration) {
        let uploads = &self.inner.uploads;
        uploads.close();
        if tokio::time::timeout(grace, uploads.wait()).await.is_err() {
            tracing::warn!(
                running = uploads.len(),
                "uploads still running after the grace period; ending them"
            );
            self.inner.shutdown.cancel();
            // Each upload stops at once on that token; a bound all the same, so that a wedged
            // one cannot hold the process past its termination grace.
            if tokio::time::timeout(Duration::from_secs(10), uploads.wait())
                .await
                .is_err()
            {
                tracing::error!(
                    running = uploads.len(),
                    "uploads did not stop; exiting anyway"
                );
            }
        }
        // A last try for endings that wait: those still not stored are ended at the next
        // start (or by another replica) as interrupted, which also removes their users.
        if let Ok(store) = self.store() {
            let stored = self.inner.endings.store_pending(store.as_ref());
            let _ = tokio::time::timeout(Duration::from_secs(5), stored).await;
        }
    }

    /// Lets go of the database, once nothing runs on it any more.
    pub async fn close(&self) {
        if let Ok(store) = self.store() {
            store.close().await;
        }
    }

    /// Whether new uploads can be taken: the database answers, and can be written. After a
    /// write fault (a full disk) this writes as much as a batch, rolled back, until that works.
    pub async fn ready(&self) -> Result<(), ImportError> {
        let store = self.store()?;
        store.ping().await?;
        if store.fault().is_some() {
            store.probe_write().await?;
        }
        Ok(())
    }

    /// Periodic upkeep (every few seconds): stores endings that could not be stored when they
    /// happened, keeps the leases of the uploads running here (and of those endings), and ends
    /// imports whose replica is gone.
    pub async fn maintain(&self) -> Result<(), ImportError> {
        let store = self.store()?;
        self.inner.endings.store_pending(store.as_ref()).await;
        let mut running = self.inner.hub.running();
        running.extend(self.inner.endings.keys());
        store.maintain(&running, INTERRUPTED).await?;
        Ok(())
    }

    pub async fn get(
        &self,
        account_id: &AccountId,
        import_id: &ImportId,
    ) -> Result<Import, ImportError> {
        let stored = self.store()?.get_import(account_id, import_id).await?;
        let import = stored.ok_or_else(|| ImportError::NotFound {
            account_id: account_id.clone(),
            import_id: import_id.clone(),
        })?;
        Ok(self.freshest(import))
    }

    /// Cancels a PROCESSING import, wherever it runs, and waits (a bounded while) for it to
    /// end: see `CancelImport`.
    pub async fn cancel(
        &self,
        account_id: &AccountId,
        import_id: &ImportId,
    ) -> Result<Import, ImportError> {
        let import = self.get(account_id, import_id).await?;
        let not_running = |import: &Import| {
            ImportError::FailedPrecondition(format!(
                "import '{}' already ended ({}); only a PROCESSING import can be cancelled",
                import.import_id,
                import.status.as_str()
            ))
        };
        if import.status.is_terminal() {
            return Err(not_running(&import));
        }
        if !self.inner.cancels.cancel(import.key) {
            // It runs on another replica, which follows its import's changes.
            match self.store()?.request_cancel(import.key).await {
                Ok(()) => {}
                Err(crate::store::StoreError::NotProcessing) => {
                    let ended = self.get(account_id, import_id).await?;
                    return Err(not_running(&ended));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let ended = tokio::time::timeout(CANCEL_WAIT, async {
            let mut updates = self.watch(account_id, import_id).await?;
            let mut last = None;
            while let Some(update) = futures::StreamExt::next(&mut updates).await {
                last = Some(update?);
            }
            last.ok_or_else(|| ImportError::Internal("a watch that said nothing".into()))
        })
        .await
        .map_err(|_| {
            ImportError::Unavailable(format!(
                "the cancel of import '{import_id}' is asked, but the server that runs it has \
                 not ended it yet; follow it with GetImport"
            ))
        })??;
        match ended.status {
            ImportStatus::Cancelled => Ok(ended),
            status => Err(ImportError::FailedPrecondition(format!(
                "import '{import_id}' ended ({}) before it could be cancelled",
                status.as_str()
            ))),
        }
    }

    /// Removes the users an import created (see `RevertImport`): the import, how many were
    /// removed by this call, and how many kept.
    pub async fn revert(
        &self,
        account_id: &AccountId,
        import_id: &ImportId,
    ) -> Result<crate::store::Reverted, ImportError> {
        let import = self.get(account_id, import_id).await?;
        if !import.status.is_terminal() {
            return Err(ImportError::FailedPrecondition(format!(
                "import '{import_id}' is still running; wait for it to end (or cancel it), \
                 then revert it"
            )));
        }
        let reverted = self.store()?.revert_import(import.key).await?;
        tracing::info!(
            account_id = %account_id, import_id = %import_id, removed = reverted.removed,
            kept = reverted.kept, "import reverted"
        );
        Ok(reverted)
    }

    /// The account's users, by email, after `after`; only those `import_id` created when given.
    pub async fn users(
        &self,
        account_id: &AccountId,
        import_id: Option<&ImportId>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<crate::store::StoredUser>, ImportError> {
        let import = match import_id {
            Some(id) => Some(self.get(account_id, id).await?.key),
            None => None,
        };
        Ok(self
            .store()?
            .list_users(account_id, import, after, limit)
            .await?)
    }

    /// The error report of an import, as chunks of a CSV file (see `report`), fed by a task
    /// through a small bounded channel, which stops when the reader goes away.
    pub async fn error_report(
        &self,
        account_id: &AccountId,
        import_id: &ImportId,
    ) -> Result<ReceiverStream<Result<bytes::Bytes, ImportError>>, ImportError> {
        let import = self.get(account_id, import_id).await?;
        if !import.status.is_terminal() {
            return Err(ImportError::FailedPrecondition(format!(
                "import '{import_id}' is still running; its error report is ready once it ends"
            )));
        }
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(report::write(self.store()?, import.key, tx));
        Ok(ReceiverStream::new(rx))
    }

    /// Row errors of an import in file order, after sequence number `after`.
    pub async fn row_errors(
        &self,
        key: ImportKey,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredRowError>, ImportError> {
        Ok(self.store()?.list_row_errors(key, after, limit).await?)
    }

    /// The account's imports, newest first (by `create_time`, ties by `import_id`), after
    /// `after` when given.
    pub async fn list(
        &self,
        account_id: &AccountId,
        after: Option<&ImportCursor>,
        limit: u32,
    ) -> Result<Vec<Import>, ImportError> {
        let imports = self.store()?.list_imports(account_id, after, limit).await?;
        Ok(imports.into_iter().map(|i| self.freshest(i)).collect())
    }

    /// Follows an import: see `WatchImport` in the proto. The stream is fed by a task through
    /// a small bounded channel and stops when the watcher goes away.
    pub async fn watch(
        &self,
        account_id: &AccountId,
        import_id: &ImportId,
    ) -> Result<ReceiverStream<Result<Import, ImportError>>, ImportError> {
        let import = self.get(account_id, import_id).await?;
        // Held by the feeding task: a watcher counts until its stream ends.
        let place = self
            .inner
            .watchers
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                ImportError::LimitReached(format!(
                    "this server already has {} WatchImport streams open, its limit \
                 (--max-watchers); retry later, or poll GetImport",
                    self.inner.config.max_watchers
                ))
            })?;
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        let counted = self.inner.metrics.watcher_started();
        tokio::spawn(async move {
            this.feed_watcher(import, tx).await;
            drop((place, counted));
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn feed_watcher(&self, import: Import, out: mpsc::Sender<Result<Import, ImportError>>) {
        if import.status.is_terminal() {
            let _ = out.send(Ok(import)).await;
            return;
        }
        let last = match self.inner.hub.subscribe(import.key) {
            Some(rx) => match follow_local(rx, &out, None).await {
                FollowEnd::Finished | FollowEnd::WatcherGone => return,
                FollowEnd::ChannelClosed(seen) => seen.map(|seen| *seen),
            },
            None => {
                if out.send(Ok(import.clone())).await.is_err() {
                    return;
                }
                Some(import.clone())
            }
        };
        self.poll_store(import, last, out).await;
    }

    /// Follows an import that runs elsewhere (another replica) or just ended here, through the
    /// store: woken by the store's change notifications when it has them (re-reading at most
    /// every `WATCH_TICK`, and at least every `POLL_FALLBACK` in case one was missed), else
    /// polled every `WATCH_TICK`.
    async fn poll_store(
        &self,
        import: Import,
        mut last: Option<Import>,
        out: mpsc::Sender<Result<Import, ImportError>>,
    ) {
        let mut changes = self
            .store()
            .ok()
            .and_then(|store| store.subscribe(import.key));
        let mut tick = tokio::time::interval(WATCH_TICK);
        let mut failures = 0;
        loop {
            tokio::select! {
                _ = out.closed() => return,
                _ = tick.tick() => {}
            }
            if let Some(changes) = &mut changes {
                tokio::select! {
                    _ = out.closed() => return,
                    _ = changes.changed() => {}
                    _ = tokio::time::sleep(POLL_FALLBACK) => {}
                }
            }
            let current = match self.get(&import.account_id, &import.import_id).await {
                Ok(current) => current,
                Err(e @ ImportError::NotFound { .. }) => {
                    let _ = out.send(Err(e)).await;
                    return;
                }
                Err(e) => {
                    failures += 1;
                    if failures >= WATCH_FAILURES {
                        let _ = out.send(Err(e)).await;
                        return;
                    }
                    continue;
                }
            };
            failures = 0;
            let moved = last
                .as_ref()
                .is_none_or(|l| l.counters != current.counters || l.status != current.status);
            let terminal = current.status.is_terminal();
            if moved || terminal {
                if out.send(Ok(current.clone())).await.is_err() || terminal {
                    return;
                }
                last = Some(current);
            }
        }
    }

    /// The live snapshot of an import running in this process, or its decided ending while
    /// that waits to be stored, else the stored one.
    fn freshest(&self, stored: Import) -> Import {
        if stored.status.is_terminal() {
            return stored;
        }
        match self.inner.hub.snapshot(stored.key) {
            // Both are progress as stored, the live one published just after its batch
            // committed: take the later, so that answers never go back.
            Some(live) if !later(&stored.counters, &live.counters) => live,
            Some(_) => stored,
            None => self.inner.endings.overlay(stored),
        }
    }
}
