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
//! - [`pipeline`]: one upload's task, its writer task and its counters;
//! - [`ending`]: the one owner of every import's ending, whatever ends it;
//! - [`progress`]: live counters for watchers;
//! - [`error`]: this layer's errors, into which the store's are mapped;
//! - [`template`]: the downloadable template;
//! - [`retention`]: finished imports' details removed after a while;
//! - `watch`: `WatchImport` streams, live here or followed through the store.
//!
//! [`Importer`], here, is the entry point that requests share: it starts uploads, answers the
//! queries (with the live state of imports running here), and runs the periodic upkeep.
//!
//! # What a reader of an import sees
//!
//! An import's state can be in three places: the store, the live view of an upload running
//! here (`progress`), and an ending decided here but not stored yet (`ending::pending`). Every
//! query answers with the freshest of them (`Importer::freshest`), so that counters never go
//! back between two answers and an import that has ended is never shown PROCESSING again.
//! Another replica answers from its own store reads; with several replicas the live view shows
//! only what is stored, so both agree (see `pipeline::tally`).
//!
//! # Errors
//!
//! Every method returns [`ImportError`], whose variants the gRPC layer maps to status codes.
//! Before the store is open, every call that needs it fails with `NotReady` (UNAVAILABLE).

pub mod checkpoint;
pub mod chunk;
pub mod decoder;
pub mod delimiter;
pub mod ending;
pub mod error;
pub mod feed;
mod invitations;
pub mod parser;
pub mod pipeline;
pub mod progress;
pub mod reader;
mod report;
pub mod retention;
pub mod template;
pub mod validator;
mod watch;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::domain::{AccountId, Caller, Import, ImportId, ImportStatus, Scope};
use crate::metrics::Metrics;
pub use crate::store::ImportCursor;
use crate::store::{Store, StoredRowError};
use ending::{Cause, Endings, Reaper};
pub use error::ImportError;
pub use pipeline::ImportConfig;
use pipeline::admission::{Admission, Kind};
use pipeline::cancel::Cancels;
use pipeline::events::{StreamError, UploadEvent};
use pipeline::memory::BatchMemory;
use progress::ProgressHub;

/// How long `CancelImport` waits for the import to end. An upload stops at once on its cancel;
/// the time is for its ending to be stored, or for another replica to see the request (through
/// its store's notifications) and end it.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// The entry point of the import layer, shared by every request.
///
/// Cheap to clone: every clone shares one state. Made before the database is open (the server
/// answers health checks meanwhile), then given the store with `set_store`.
#[derive(Clone)]
pub struct Importer {
    inner: Arc<Inner>,
}

/// The state every clone of an `Importer` shares.
struct Inner {
    /// Set once the database is open and migrated; requests before that get UNAVAILABLE.
    store: OnceLock<Arc<dyn Store>>,
    /// The live views of the uploads running here.
    hub: ProgressHub,
    /// The settings every upload runs with.
    config: ImportConfig,
    /// Running uploads, so that shutdown can wait for them.
    uploads: TaskTracker,
    /// Cancelled when shutdown stops waiting: running uploads then end in ERROR_UNKNOWN.
    shutdown: CancellationToken,
    /// Endings that could not be stored when they happened, stored by `maintain`.
    endings: Endings,
    /// Watches the imports of other servers, and ends those whose server is gone.
    reaper: Reaper,
    /// The batch memory budget all uploads share.
    memory: BatchMemory,
    /// The limits on uploads running at once, per server and per account.
    admission: Admission,
    /// The cancel tokens of the uploads running here, for `CancelImport`.
    cancels: Cancels,
    /// `WatchImport` streams open at once.
    watchers: Admission,
    /// What the service counts, for `/metrics`.
    metrics: Metrics,
}

impl Importer {
    /// An importer with `config`, without a store yet: every call that needs the database
    /// answers `NotReady` until `set_store`.
    pub fn new(config: ImportConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: OnceLock::new(),
                hub: ProgressHub::default(),
                uploads: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                endings: Endings::default(),
                reaper: Reaper::default(),
                memory: BatchMemory::default(),
                admission: Admission::new(
                    Kind::Uploads,
                    config.max_uploads,
                    config.max_uploads_per_account,
                ),
                cancels: Cancels::default(),
                watchers: Admission::new(
                    Kind::Watchers,
                    config.max_watchers,
                    config.max_watchers_per_account,
                ),
                metrics: Metrics::new(),
                config,
            }),
        }
    }

    /// Makes the importer ready: called once the store is open and migrated (and, on SQLite,
    /// after recovery ended the imports a stopped server left). A second call does not
    /// replace the store.
    pub fn set_store(&self, store: Arc<dyn Store>) {
        let pools = store.clone();
        self.inner.metrics.watch_pools(move || pools.pool_stats());
        let written = store.clone();
        let feed = self.inner.metrics.feed();
        feed.watch_written(move || written.events_written());
        let _ = self.inner.store.set(store);
    }

    /// What the service counts, for `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The store, or `NotReady` while the database is not open yet.
    fn store(&self) -> Result<Arc<dyn Store>, ImportError> {
        self.inner.store.get().cloned().ok_or(ImportError::NotReady)
    }

    /// The settings uploads run with.
    pub fn config(&self) -> &ImportConfig {
        &self.inner.config
    }

    /// Runs one upload for `caller` to its end and returns the finished import. The upload runs
    /// in its own task: if the caller is dropped, the upload still ends properly.
    ///
    /// Refused with `ShuttingDown` once shutdown has begun (the tracker of uploads is closed),
    /// so that no upload starts while shutdown waits for the running ones.
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

    /// Whether an upload of a file of `size` bytes, whose first bytes are `head`, would be
    /// refused at the door: the caller's right to the account, the size limit and the
    /// content's first look, the same checks and answers as the upload's (`chunk::check_before`).
    /// For a client that can ask before it sends the file (the console), so that a refusal
    /// comes at once rather than after a stream it would have to cut.
    pub fn check_upload(
        &self,
        caller: &Caller,
        new: &crate::domain::NewImport,
        size: u64,
        head: &[u8],
    ) -> Result<(), ImportError> {
        caller
            .scope(new.account_id.clone())
            .map_err(ImportError::PermissionDenied)?;
        chunk::check_before(self.inner.config.max_upload_bytes, size, head)?;
        Ok(())
    }

    /// Stops taking uploads and waits up to `grace` for the running ones; those still running
    /// then end in ERROR_UNKNOWN, and this waits for them to record it.
    ///
    /// `grace` is `--shutdown-grace-seconds`. After it, at most 10 s more for the uploads to
    /// stop and 5 s for the endings that wait, so that the process exits within its
    /// orchestrator's termination grace even with the database away.
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
    /// Behind the readiness checks (`app::readiness`: the gRPC health service and `/readyz`).
    pub async fn ready(&self) -> Result<(), ImportError> {
        let store = self.store()?;
        store.ping().await?;
        if store.fault().is_some() {
            store.probe_write().await?;
        }
        Ok(())
    }

    /// Periodic upkeep (every `app::MAINTENANCE_INTERVAL`, 3 s): renews the life signs of the
    /// imports running here (and of those whose ending waits), stores endings that could not
    /// be stored when they happened, and ends imports whose server is gone.
    ///
    /// Life signs are renewed first, before the slower steps. The running set is read again
    /// before reaping, since uploads start and end meanwhile, and an import running here (or
    /// whose ending waits here) is never judged. A failed heartbeat means the database was out
    /// of sight: the reaper starts its watch again.
    pub async fn maintain(&self) -> Result<(), ImportError> {
        let store = self.store()?;
        let mut here = self.inner.hub.running();
        here.extend(self.inner.endings.keys());
        if let Err(e) = store.heartbeat(&here).await {
            self.inner.reaper.lose_sight();
            return Err(e.into());
        }
        self.inner.endings.store_pending(store.as_ref()).await;
        let mut here = self.inner.hub.running();
        here.extend(self.inner.endings.keys());
        let window = self.inner.config.resume_window;
        let reaped = self
            .inner
            .reaper
            .reap(store.as_ref(), &self.inner.metrics, &here, window)
            .await;
        // Whatever the reaper met: imports past their resume window end all the same.
        let expired = ending::orphans::expire(store.as_ref(), &self.inner.metrics, window).await;
        reaped?;
        expired?;
        Ok(())
    }

    /// One round of the retention's clean-up (see `retention`).
    pub async fn clean_up(
        &self,
        policy: &retention::Retention,
    ) -> Result<retention::Round, ImportError> {
        let store = self.store()?;
        Ok(retention::round(store.as_ref(), &self.inner.metrics, policy).await?)
    }

    /// The import, as fresh as this server knows it (see `freshest`).
    pub async fn get(&self, scope: &Scope, import_id: &ImportId) -> Result<Import, ImportError> {
        self.find(scope.account_id(), import_id).await
    }

    /// `get`, inside the layer, for an account a scope already checked. `NotFound` when the
    /// account has no import with this id.
    async fn find(
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
    ///
    /// Answers the CANCELLED import; `FailedPrecondition` when it had ended, or ended another
    /// way before the cancel took; `Unavailable` when `CANCEL_WAIT` passed without an ending
    /// (the cancel stays asked). The wait is a `watch`, so it takes one of `--max-watchers`
    /// places while it lasts.
    pub async fn cancel(&self, scope: &Scope, import_id: &ImportId) -> Result<Import, ImportError> {
        let account_id = scope.account_id();
        let mut import = self.find(account_id, import_id).await?;
        if import.waiting() {
            // No server drives it: it ends here, at once, through the owner of endings.
            let (store, metrics) = (self.store()?, &self.inner.metrics);
            match ending::orphans::end_waiting(store.as_ref(), metrics, import, Cause::Cancelled)
                .await
            {
                Ok(ended) => return Ok(ended),
                // A resume took it meanwhile (or it ended): cancel it as it is now.
                Err(crate::store::StoreError::NotProcessing) => {
                    import = self.find(account_id, import_id).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
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
                    let ended = self.find(account_id, import_id).await?;
                    return Err(not_running(&ended));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let ended = tokio::time::timeout(CANCEL_WAIT, async {
            // Without a watcher's place: the cancel is asked, and must not be refused now.
            let mut updates = self.follow(self.find(account_id, import_id).await?, ());
            let mut last = None;
            while let Some(update) = futures::StreamExt::next(&mut updates).await {
                let update = update?;
                if update.waiting() {
                    // A resumable upload stopped before it saw the cancel, and its import
                    // waits: it ends here.
                    let store = self.store()?;
                    return Ok(ending::orphans::end_waiting(
                        store.as_ref(),
                        &self.inner.metrics,
                        update,
                        Cause::Cancelled,
                    )
                    .await?);
                }
                last = Some(update);
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
    /// removed by this call, and how many kept. Only an ended import can be reverted; the
    /// store refuses while another running import is updating some of its users.
    pub async fn revert(
        &self,
        scope: &Scope,
        import_id: &ImportId,
    ) -> Result<crate::store::Reverted, ImportError> {
        let account_id = scope.account_id();
        let import = self.find(account_id, import_id).await?;
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

    /// The account's users, by email, after `after`; only those `import_id` created, and only
    /// those whose invitation is in `state`, when given. `NotFound` when `import_id` names no
    /// import of the account.
    pub async fn users(
        &self,
        scope: &Scope,
        import_id: Option<&ImportId>,
        state: Option<crate::domain::InvitationState>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<crate::store::StoredUser>, ImportError> {
        let account_id = scope.account_id();
        let import = match import_id {
            Some(id) => Some(self.find(account_id, id).await?.key),
            None => None,
        };
        let filter = crate::store::UserFilter {
            import,
            state,
            email: None,
        };
        Ok(self
            .store()?
            .list_users(account_id, filter, after, limit)
            .await?)
    }

    /// The error report of an import, as chunks of a CSV file (see `report`), fed by a task
    /// through a small bounded channel, which stops when the reader goes away.
    /// `FailedPrecondition` while the import runs: its rows are still being written.
    pub async fn error_report(
        &self,
        scope: &Scope,
        import_id: &ImportId,
    ) -> Result<ReceiverStream<Result<bytes::Bytes, ImportError>>, ImportError> {
        let account_id = scope.account_id();
        let import = self.find(account_id, import_id).await?;
        if let Some(why) = report::unavailable(&import) {
            return Err(ImportError::FailedPrecondition(why));
        }
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(report::write(self.store()?, import, tx));
        Ok(ReceiverStream::new(rx))
    }

    /// Row errors of an import in file order, after sequence number `after`. Takes the import,
    /// not the id: the caller has already found it in its account. None once the retention
    /// removed its details (or began to: what is left is no longer the whole).
    pub async fn row_errors(
        &self,
        import: &Import,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredRowError>, ImportError> {
        if import.details_removed_time.is_some() {
            return Ok(Vec::new());
        }
        Ok(self
            .store()?
            .list_row_errors(import.key, after, limit)
            .await?)
    }

    /// The account's imports, newest first (by `create_time`, ties by `import_id`), after
    /// `after` when given. Each running one is answered as fresh as `get` would.
    pub async fn list(
        &self,
        scope: &Scope,
        after: Option<&ImportCursor>,
        limit: u32,
    ) -> Result<Vec<Import>, ImportError> {
        let account_id = scope.account_id();
        let imports = self.store()?.list_imports(account_id, after, limit).await?;
        Ok(imports.into_iter().map(|i| self.freshest(i)).collect())
    }

    /// The live snapshot of an import running in this process, or its decided ending while
    /// that waits to be stored, else the stored one. A stored terminal import is answered as it
    /// is: once stored, an ending is final.
    fn freshest(&self, stored: Import) -> Import {
        if stored.status.is_terminal() {
            return stored;
        }
        match self.inner.hub.snapshot(stored.key) {
            // Both are progress as stored, the live one published just after its batch
            // committed: take the later, so that answers never go back.
            Some(live) if !stored.counters.is_later_than(&live.counters) => live,
            Some(_) => stored,
            None => self.inner.endings.overlay(stored),
        }
    }
}
