//! The writer task: writes an upload's batches one at a time while the reader fills the next.
//!
//! The queue between them is bounded (one batch waiting), so a slow database slows the reading
//! of the stream and backpressure reaches the client through HTTP/2 flow control; memory stays
//! a few batches whatever the file size. A failed write stops the task at once: the upload
//! learns of it through [`Writer::failed`] and ends the import.
//!
//! Each batch carries what the reader had read when it was cut, and the writer asks the tally
//! for the progress to store with it from that (`Tally::before_write`): the stored counters
//! then count exactly the rows whose outcomes they hold, so they add up, and the batch's
//! outcome is applied to them once, by the store.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::task::JoinHandle;

use super::tally::{Reads, Tally};
use crate::domain::{ConflictPolicy, Import, TextFormat, UserBatch};
use crate::store::{BatchTarget, Committed, SeenValues, Store, StoreError};

/// Batches queued for the writer: one being written, one waiting, one being filled. So an
/// upload holds at most three batches, each with its grant from the shared memory budget.
const WRITER_QUEUE: usize = 1;

/// A batch on its way to the store.
pub(super) struct Queued {
    /// The rows, valid and failed, in file order.
    pub batch: UserBatch,
    /// How the file's text is written, as far as the reader knew when the batch was cut.
    pub format: Option<TextFormat>,
    /// What the reader had read when the batch was cut: the progress stored with it counts
    /// these rows, whose outcomes it then holds (see `tally`).
    pub reads: Reads,
    /// The batch's share of the memory budget, released once it is written.
    pub memory: Option<OwnedSemaphorePermit>,
    /// Where the file stands once the batch is stored: stored with it.
    pub committed: CommittedAt,
}

/// Where the file stands after a batch's last row (`store::Committed`, owned).
#[derive(Debug, Default)]
pub(super) struct CommittedAt {
    pub bytes: u64,
    pub rows: u64,
    /// The reader's state there, stored: only for a resumable upload.
    pub state: Option<String>,
}

/// The handle the upload keeps on its writer task. Dropping it without `finish` closes the
/// queue; the task then writes what was queued and stops.
pub(super) struct Writer {
    /// The bounded queue: `WRITER_QUEUE` batches wait at most.
    tx: mpsc::Sender<Queued>,
    /// The task: `Ok` once the queue closed and every batch was written, the first failed
    /// write's error otherwise.
    task: JoinHandle<Result<(), StoreError>>,
    /// Whether the writer waits for a batch, with none queued: only then does cutting a batch
    /// early (a slow client) get rows written sooner; while it writes, a batch keeps filling.
    idle: watch::Receiver<bool>,
}

impl Writer {
    /// Starts the writer task of `import`. Each batch is written with the import's key,
    /// account, conflict policy and dry-run flag, and at most `max_stored_errors` row errors
    /// are stored for the whole import.
    pub(super) fn spawn(
        store: Arc<dyn Store>,
        import: &Import,
        tally: Tally,
        max_stored_errors: u64,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Queued>(WRITER_QUEUE);
        let (key, account_id) = (import.key, import.account_id.clone());
        let (on_conflict, validate_only) = (import.on_conflict, import.validate_only);
        // Only planned imports (dry runs, SKIP, UPDATE) look values up, and only they have a
        // filter (`SeenValues`). An upload that resumes its import did not see the values of
        // the rows before it: its filter notes them from the store before its first batch.
        let planned = validate_only || on_conflict != ConflictPolicy::Error;
        let resumed = import.counters.rows_processed > 0 || import.committed_bytes > 0;
        let seen = planned.then(SeenValues::new);
        let (idle_tx, idle) = watch::channel(true);
        let task = tokio::spawn(async move {
            let account_key = store.account_key(&account_id).await?;
            if let Some(seen) = seen.as_ref().filter(|_| resumed) {
                store.remember_file_keys(key, seen).await?;
            }
            loop {
                idle_tx.send_replace(rx.is_empty());
                let Some(Queued {
                    batch,
                    format,
                    reads,
                    memory,
                    committed,
                }) = rx.recv().await
                else {
                    break;
                };
                idle_tx.send_replace(false);
                let before = tally.before_write(max_stored_errors, reads);
                let target = BatchTarget {
                    key,
                    account_id: &account_id,
                    account_key,
                    next_error_seq: before.next_error_seq,
                    error_budget: before.error_budget,
                    progress: before.progress,
                    committed: Committed {
                        bytes: committed.bytes,
                        rows: committed.rows,
                        state: committed.state.as_deref(),
                    },
                    format,
                    on_conflict,
                    validate_only,
                    seen: seen.as_ref(),
                };
                let written = store.write_batch(&target, &batch).await?;
                tally.written(&written, format, committed.bytes);
                drop((batch, memory));
            }
            Ok(())
        });
        Self { tx, task, idle }
    }

    /// Whether the writer is idle, as it changes (see `idle`).
    pub(super) fn idle_signal(&self) -> watch::Receiver<bool> {
        self.idle.clone()
    }

    /// Whether the writer is idle right now (see `idle`).
    pub(super) fn is_idle(&self) -> bool {
        *self.idle.borrow()
    }

    /// Hands a batch over, waiting while the writer is behind: this is where backpressure
    /// starts. `false` when the writer stopped; `failed` then says why.
    pub(super) async fn send(&self, queued: Queued) -> bool {
        self.tx.send(queued).await.is_ok()
    }

    /// Resolves once the writer stopped on its own, which only a failed write does. Not to be
    /// awaited again after it resolved.
    pub(super) async fn failed(&mut self) -> StoreError {
        match (&mut self.task).await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => StoreError::Database("the writer stopped with batches to come".into()),
            Err(e) => StoreError::Database(format!("the writer task failed: {e}").into()),
        }
    }

    /// Closes the queue and waits for the batches in it to be written: `Ok` once every batch
    /// is stored, the first failed write's error otherwise (a panic of the task included).
    pub(super) async fn finish(self) -> Result<(), StoreError> {
        drop(self.tx);
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Database(
                format!("the writer task failed: {e}").into(),
            )),
        }
    }
}
