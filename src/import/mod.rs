//! Imports: the upload pipeline and the queries on imports, independent of gRPC.
//!
//! Data flows chunk → parser → validator → store, with progress published on the way:
//!
//! - [`chunk`]: the size limit, the checksum, a first look at the content, the byte order mark;
//! - [`decoder`]: UTF-8, UTF-16 and Windows-1252 to UTF-8, as the chunks stream;
//! - [`parser`]: incremental CSV framing with spreadsheet row numbers and bounded records;
//! - [`validator`]: the header's column mapping, then `NewUser` or row errors for each row;
//! - [`reader`]: the above composed, bytes in, rows out, with the delimiter found on the way;
//! - [`pipeline`]: one upload's task, its writer task, and how it ends;
//! - [`progress`]: live counters for watchers;
//! - [`template`]: the downloadable template.

pub mod chunk;
pub mod decoder;
pub mod parser;
pub mod pipeline;
pub mod progress;
pub mod reader;
pub mod template;
pub mod validator;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{AccountId, ArgumentError, Import, ImportId, ImportKey};
use crate::store::{Conclusion, Store, StoreError, StoredRowError};
use pipeline::{StreamError, UploadEvent};
use progress::{FollowEnd, ProgressHub, WATCH_TICK, follow_local};

/// Memory for batches across all uploads, in KiB (see `Inner::batch_memory`).
const BATCH_MEMORY_KIB: usize = 64 * 1024;

/// How long a watcher of an import running elsewhere waits for a change notification before
/// reading the stored state anyway.
const POLL_FALLBACK: Duration = Duration::from_secs(1);

/// The `error_message` of an import whose server stopped or died before it finished.
pub const INTERRUPTED: &str = "the server stopped before the import finished, so nothing was \
    imported; upload the file again";

/// The import layer's errors; the gRPC layer maps each to a status code.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0}")]
    InvalidArgument(#[from] ArgumentError),
    #[error("import '{import_id}' already exists in account '{account_id}'")]
    AlreadyExists {
        account_id: AccountId,
        import_id: ImportId,
    },
    #[error("import '{import_id}' was not found in account '{account_id}'")]
    NotFound {
        account_id: AccountId,
        import_id: ImportId,
    },
    #[error("{0}")]
    TooLarge(String),
    #[error("the upload stream broke: {0}")]
    Cancelled(String),
    #[error("the service is starting: the database is not ready yet; retry shortly")]
    NotReady,
    #[error("the server is shutting down; retry shortly")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Debug, Clone)]
pub struct ImportConfig {
    pub max_upload_bytes: u64,
    /// Row errors stored per import; the counters stay exact beyond it.
    pub max_stored_row_errors: u64,
    pub record_limits: parser::Limits,
}

impl Default for ImportConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 200 * 1024 * 1024,
            max_stored_row_errors: 100_000,
            record_limits: parser::Limits::default(),
        }
    }
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
    /// Endings that could not be stored (the database was away), retried by `maintain`.
    abandoned: Mutex<Vec<(ImportKey, Conclusion)>>,
    /// Memory for batches being filled, queued or written, in KiB, shared by every upload: a
    /// batch is filled only once its memory is granted, so memory stays bounded however many
    /// uploads run, and a full budget slows the readers of the streams (backpressure).
    batch_memory: Arc<Semaphore>,
}

impl Importer {
    pub fn new(config: ImportConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: OnceLock::new(),
                hub: ProgressHub::default(),
                config,
                uploads: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                abandoned: Mutex::new(Vec::new()),
                batch_memory: Arc::new(Semaphore::new(BATCH_MEMORY_KIB)),
            }),
        }
    }

    /// Makes the importer ready: called once the store is open and migrated.
    pub fn set_store(&self, store: Arc<dyn Store>) {
        let _ = self.inner.store.set(store);
    }

    pub fn store(&self) -> Result<Arc<dyn Store>, ImportError> {
        self.inner.store.get().cloned().ok_or(ImportError::NotReady)
    }

    pub fn config(&self) -> &ImportConfig {
        &self.inner.config
    }

    pub(crate) fn hub(&self) -> &ProgressHub {
        &self.inner.hub
    }

    /// Waits until memory for a batch of `bytes` is free, and holds it.
    pub(crate) async fn reserve_batch_memory(&self, bytes: usize) -> OwnedSemaphorePermit {
        let kib = (bytes / 1024).clamp(1, BATCH_MEMORY_KIB) as u32;
        self.inner
            .batch_memory
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the batch memory semaphore is never closed")
    }

    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// Runs one upload to its end and returns the finished import. The upload runs in its own
    /// task: if the caller is dropped, the upload still ends properly.
    pub async fn upload<S>(&self, events: S) -> Result<Import, ImportError>
    where
        S: Stream<Item = Result<UploadEvent, StreamError>> + Send + Unpin + 'static,
    {
        if self.inner.shutdown.is_cancelled() || self.inner.uploads.is_closed() {
            return Err(ImportError::ShuttingDown);
        }
        let task = self
            .inner
            .uploads
            .spawn(pipeline::run(self.clone(), events));
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
            uploads.wait().await;
        }
    }

    /// Keeps an ending that could not be stored, for `maintain` to store later.
    pub(crate) fn abandon(&self, key: ImportKey, conclusion: Conclusion) {
        self.abandoned().push((key, conclusion));
    }

    fn abandoned(&self) -> std::sync::MutexGuard<'_, Vec<(ImportKey, Conclusion)>> {
        self.inner
            .abandoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Periodic upkeep (every few seconds): stores endings that could not be stored when they
    /// happened, keeps the leases of the uploads running here, and ends imports whose replica
    /// is gone.
    pub async fn maintain(&self) -> Result<(), ImportError> {
        let store = self.store()?;
        let pending = std::mem::take(&mut *self.abandoned());
        for (key, conclusion) in pending {
            match store.conclude_import(key, &conclusion).await {
                Ok(_) | Err(StoreError::NotProcessing) => {
                    tracing::info!(import_key = key, "stored the end of an interrupted import");
                }
                // Kept for the next round; the leases below must be kept meanwhile.
                Err(e) => {
                    tracing::warn!(import_key = key, error = %e, "cannot store the end of an import yet");
                    self.abandon(key, conclusion);
                }
            }
        }
        store
            .maintain(&self.hub().running(), INTERRUPTED)
            .await
            .map_err(ImportError::from)
            .map(|_| ())
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

    /// Row errors of an import in file order, after sequence number `after`.
    pub async fn row_errors(
        &self,
        key: ImportKey,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredRowError>, ImportError> {
        Ok(self.store()?.list_row_errors(key, after, limit).await?)
    }

    /// The account's imports, newest first.
    pub async fn list(
        &self,
        account_id: &AccountId,
        before: Option<ImportKey>,
        limit: u32,
    ) -> Result<Vec<Import>, ImportError> {
        let imports = self
            .store()?
            .list_imports(account_id, before, limit)
            .await?;
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
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        tokio::spawn(async move { this.feed_watcher(import, tx).await });
        Ok(ReceiverStream::new(rx))
    }

    async fn feed_watcher(&self, import: Import, out: mpsc::Sender<Result<Import, ImportError>>) {
        if import.status.is_terminal() {
            let _ = out.send(Ok(import)).await;
            return;
        }
        let last = match self.hub().subscribe(import.key) {
            Some(rx) => match follow_local(rx, &out, None).await {
                FollowEnd::Finished | FollowEnd::WatcherGone => return,
                FollowEnd::ChannelClosed(seen) => seen,
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
                    if failures >= 20 {
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

    /// The live snapshot of an import running in this process, else the stored one.
    fn freshest(&self, stored: Import) -> Import {
        if stored.status.is_terminal() {
            return stored;
        }
        self.hub().snapshot(stored.key).unwrap_or(stored)
    }
}
