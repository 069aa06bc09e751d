//! One upload, from its first message to its ending.
//!
//! ```text
//!  events ─► FileReader ──────────► UserBatch ─► writer task ─► Store
//!  (chunks)  (reader.rs: intake,    (bounded      (one batch
//!            decoder, parser,        queue)        at a time)
//!            validator)
//!     │             │                                  │
//!     │             └── rows read ──► Tally ◄── rows written
//!     │                                 └──► Live: GetImport, WatchImport
//!     └─ any reason to stop: a Cause ──► ending: one decision, stored, answered
//! ```
//!
//! - `context`: the settings an upload runs with, and what it shares;
//! - `start`: the metadata and the checks before the import exists;
//! - [`events`]: the upload's messages as events;
//! - `tally`: the upload's counters, kept in one place;
//! - [`memory`]: the batch memory budget shared by all uploads;
//! - `writer`: the task that writes batches while the next is read;
//! - [`admission`] and [`cancel`]: the limits on uploads, and the cancels asked of those
//!   running here;
//! - `resume`: a resumed upload's reader, and the reader's state each batch of a resumable
//!   upload is stored with (`start` takes a waiting import for a resume).
//!
//! How the import ends is not decided here: whatever stops the upload becomes a
//! `crate::import::ending::Cause`, settled by the one owner of endings.
//!
//! The whole upload runs in a task of its own, which owns the request stream: if the client
//! goes away or hyper drops the handler, the stream ends or breaks, and this task still ends
//! the import (ERROR_UNKNOWN, users deleted) instead of leaving it PROCESSING.
//!
//! # The order of an upload
//!
//! 1. The metadata message, within the idle timeout. Then, before anything is created: the
//!    caller's token must cover the account, the admission limits must have room, the store
//!    must have no write fault, and `retry_of_import_id` must name an import of the account.
//!    A refusal here is only an answer: there is no import to end.
//! 2. The import is created PROCESSING; from here on, every way out goes through one
//!    `Cause` and its ending, even a panic of the reader.
//! 3. Chunks are read while the writer writes the batches before them. Shutdown, a cancel
//!    (here or from another replica), a failed write, a stall and the client's messages are
//!    all watched at once, and a step blocked on the writer or on batch memory does not delay
//!    a shutdown or a cancel.
//! 4. The finish message is checked (size, SHA-256) before the last bytes are read; the stream
//!    must then end.
//! 5. The writer's queue is drained: a completion is one only once every batch is stored.
//!
//! # Memory and backpressure
//!
//! An upload holds at most the reader's bounded buffers, the batch being filled, one batch
//! queued and one being written. Batches take their memory from the budget all uploads share
//! (`memory`), so a slow database slows every reader, and through them the clients (HTTP/2
//! flow control), rather than growing the heap.

pub mod admission;
pub mod cancel;
mod context;
pub mod events;
pub mod memory;
mod resume;
mod start;
mod tally;
mod writer;

pub use context::{Context, ImportConfig};

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::{FutureExt, Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use super::chunk::IntakeError;
use super::ending::{Cause, Ending};
use super::error::ImportError;
use super::reader::{FileReader, ReadError, RowSink};
use crate::domain::{ArgumentError, Caller, FailedRow, Import, ImportKey, NewUser, UserBatch};
use crate::store::{Batching, Store, StoreError};
use events::{FinishCheck, StreamError, UploadEvent};
use tally::Tally;
use writer::{Queued, Writer};

/// Chunks are parsed in slices of this size, so a batch is cut close to its size even when a
/// client sends multi-megabyte chunks.
const PARSE_SLICE: usize = 64 * 1024;

/// Runs one upload for `caller` to its end and returns the finished import.
///
/// An error before the import is created (a stalled or malformed start, no permission, a
/// limit, a write fault, an unknown `retry_of`, a taken id) leaves nothing behind. After it,
/// the answer is the one its ending decided and stored (`ending::settle`): the import as
/// stored, or the error its cause maps to.
pub async fn run<S>(ctx: Context, caller: Caller, mut events: S) -> Result<Import, ImportError>
where
    S: Stream<Item = Result<UploadEvent, StreamError>> + Send + Unpin + 'static,
{
    let start::Started {
        import,
        admitted: _admitted,
        resumed,
    } = start::start(&ctx, &caller, &mut events).await?;
    tracing::info!(
        account_id = %import.account_id, import_id = %import.import_id,
        created_by = import.created_by.as_str(), resumable = import.resumable,
        "upload started"
    );
    let started = tokio::time::Instant::now();
    let _active = ctx.metrics.upload_started();
    let live = ctx.hub.start(import.clone());
    let tally = match &resumed {
        Some(claimed) => Tally::resumed(live, &claimed.import, claimed.errors_stored),
        None => Tally::new(live),
    };
    let cancel = ctx.cancels.register(import.key);
    let reader = resume::reader(&ctx.config, resumed.as_ref());
    let mut upload = None;
    let cause = match reader {
        Some(reader) => {
            let upload = upload.insert(Upload::new(
                &ctx,
                &import,
                reader,
                tally.clone(),
                cancel.token.clone(),
            ));
            AssertUnwindSafe(upload.receive(&mut events))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Cause::Panicked(message)
                })
        }
        None => Cause::Panicked("the stored state of a resumed upload cannot be read".into()),
    };
    drop(events);
    let cause = match upload.as_mut() {
        Some(upload) => upload.stop_writing(cause).await,
        None => cause,
    };
    let ending = Ending {
        store: ctx.store.as_ref(),
        hub: &ctx.hub,
        endings: &ctx.endings,
        import: &import,
        counters: tally.counters(),
        format: tally.format(),
        metrics: &ctx.metrics,
        started,
        resume_window: ctx.config.resume_window,
    };
    ending.settle(cause).await
}

/// An upload while its stream is read.
struct Upload<'a> {
    ctx: &'a Context,
    /// Bytes in, rows out: owned by this task alone, and synchronous.
    reader: FileReader,
    /// The upload's counters, shared with the writer task.
    tally: Tally,
    /// The batch being filled.
    batch: UserBatch,
    /// The memory granted to the batch being filled: taken once it has rows, so that an
    /// upload that sends nothing holds nothing.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// `None` once it stopped on a failed write.
    writer: Option<Writer>,
    /// How the store wants its batches.
    batching: Batching,
    /// When the writer took the last batch.
    last_flush: tokio::time::Instant,
    /// Fired by `CancelImport` on this server.
    cancel: CancellationToken,
    /// The import's key, to look for a cancel asked on another replica.
    key: ImportKey,
    /// A resumable upload: each batch is stored with the reader's state at its last row.
    resumable: bool,
}

/// Where the reader puts rows: the batch being filled, with what this step read.
struct BatchSink<'b> {
    batch: &'b mut UserBatch,
    /// Data rows read in this step, valid or not.
    rows: u64,
    /// Of those, rows that failed validation.
    failed: u64,
}

impl RowSink for BatchSink<'_> {
    fn user(&mut self, row_number: u64, user: &NewUser<'_>) {
        self.batch.push_user(row_number, user);
        self.rows += 1;
    }

    fn failed(&mut self, row: FailedRow<'_>) {
        self.batch.push_failed_row(row);
        self.rows += 1;
        self.failed += 1;
    }
}

impl<'a> Upload<'a> {
    /// Starts the writer task, and takes the store's batching (or the configured rows per
    /// batch, for tests).
    fn new(
        ctx: &'a Context,
        import: &Import,
        reader: FileReader,
        tally: Tally,
        cancel: CancellationToken,
    ) -> Self {
        let writer = Writer::spawn(
            ctx.store.clone(),
            import,
            tally.clone(),
            ctx.config.max_stored_row_errors,
        );
        Self {
            ctx,
            reader,
            tally,
            batch: UserBatch::default(),
            permit: None,
            writer: Some(writer),
            batching: {
                let mut batching = ctx.store.batching();
                if let Some(rows) = ctx.config.batch_rows {
                    batching.rows = rows.max(1);
                }
                batching
            },
            last_flush: tokio::time::Instant::now(),
            cancel,
            key: import.key,
            resumable: import.resumable,
        }
    }

    /// Reads the stream up to its finish message, parsing and handing batches to the writer as
    /// chunks arrive, and checks the file against that message. Returns why it stopped:
    /// `Completed` once every row was read and handed over and the stream ended after the
    /// finish message, which must be the last.
    async fn receive<S>(&mut self, events: &mut S) -> Cause
    where
        S: Stream<Item = Result<UploadEvent, StreamError>> + Unpin,
    {
        let mut finished = false;
        let idle = self.ctx.config.idle_timeout;
        let mut last_message = tokio::time::Instant::now();
        // Cancelled from another replica: its request comes through the store.
        let remote_cancel = cancelled_elsewhere(self.ctx.store.clone(), self.key);
        tokio::pin!(remote_cancel);
        loop {
            // A batch that waits while the client is slow is written anyway once due, when
            // the writer has nothing to do: while it writes, cutting the batch short would
            // only make more, smaller writes (8 uploads at once on SQLite: 15% slower).
            let flush_at = self
                .batching
                .flush_after
                .filter(|_| !self.batch.is_empty())
                .map(|after| self.last_flush + after);
            let writer_idle = self.writer.as_ref().map(Writer::idle_signal);
            let flush_due = async move {
                match (flush_at, writer_idle) {
                    (Some(at), Some(mut idle)) => {
                        tokio::time::sleep_until(at).await;
                        // An error: the writer stopped, which `failed` reports.
                        if idle.wait_for(|idle| *idle).await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    _ => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => return Cause::ShuttingDown,
                _ = self.cancel.cancelled() => return Cause::Cancelled,
                () = &mut remote_cancel => return Cause::Cancelled,
                error = failed(&mut self.writer) => {
                    self.writer = None;
                    return Cause::Store(error);
                }
                () = flush_due => {
                    if let Err(cause) = self.send_batch().await {
                        return cause;
                    }
                    continue;
                }
                () = tokio::time::sleep_until(last_message + idle) => {
                    return Cause::Stalled(idle);
                }
                event = events.next() => event,
            };
            if finished {
                return match event {
                    None => Cause::Completed {
                        cancel_asked: false,
                    },
                    Some(Ok(late)) => Cause::Protocol(ArgumentError::new(
                        "finish",
                        format!(
                            "finish must be the last message of an upload, but a {} message \
                             came after it; send the file again, ending with finish",
                            late.name()
                        ),
                    )),
                    Some(Err(StreamError::Invalid(e))) => Cause::Protocol(e),
                    // Only the first message is timed so: after it, it cannot come.
                    Some(Err(StreamError::Transport(e) | StreamError::Stalled(e))) => {
                        Cause::Broken(e)
                    }
                };
            }
            // Only bytes of the file keep an upload alive: empty chunks every few seconds do
            // not dodge the idle timeout.
            let moved = match &event {
                Some(Ok(UploadEvent::Chunk(chunk))) => !chunk.is_empty(),
                Some(Ok(UploadEvent::Finish(_))) => true,
                Some(Ok(UploadEvent::Metadata(_)) | Err(_)) | None => false,
            };
            // A step may wait on the writer or on batch memory, behind a slow database: a
            // shutdown or a cancel must not wait for it.
            let (shutdown, cancel) = (self.ctx.shutdown.clone(), self.cancel.clone());
            let step = match event {
                Some(Ok(UploadEvent::Chunk(chunk))) => tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => Err(Cause::ShuttingDown),
                    _ = cancel.cancelled() => Err(Cause::Cancelled),
                    step = self.chunk(&chunk) => step,
                },
                Some(Ok(UploadEvent::Finish(check))) => {
                    // Committed once the stream ends: nothing may follow.
                    finished = true;
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => Err(Cause::ShuttingDown),
                        _ = cancel.cancelled() => Err(Cause::Cancelled),
                        step = self.finish(&check) => step,
                    }
                }
                Some(Ok(UploadEvent::Metadata(_))) => Err(Cause::Protocol(ArgumentError::new(
                    "metadata",
                    "metadata may only be the first message of an upload",
                ))),
                Some(Err(StreamError::Invalid(e))) => Err(Cause::Protocol(e)),
                Some(Err(StreamError::Transport(e) | StreamError::Stalled(e))) => {
                    Err(Cause::Broken(e))
                }
                None => Err(match self.reader.check_content() {
                    Err(ReadError::Intake(e @ IntakeError::NotCsv { .. })) => Cause::NotCsv(e),
                    // Content that may be CSV, cut short before its finish message.
                    Ok(())
                    | Err(
                        ReadError::Intake(IntakeError::TooLarge { .. }) | ReadError::Parsing(_),
                    ) => Cause::Incomplete,
                }),
            };
            if let Err(cause) = step {
                return cause;
            }
            // Time spent in the step (waiting on a slow database, say) is not the client's.
            if moved {
                last_message = tokio::time::Instant::now();
            }
        }
    }

    /// Parses a chunk slice by slice, handing full batches to the writer in between, so that a
    /// batch stays near its size even for multi-megabyte chunks.
    ///
    /// After each slice the batch is sent when it is full, by rows or by bytes, or when it is
    /// due (`Batching::flush_after`) and the writer is idle. Sending waits while the writer is
    /// behind: that wait is what slows the reading of the stream.
    async fn chunk(&mut self, chunk: &[u8]) -> Result<(), Cause> {
        self.ctx.metrics.received(chunk.len() as u64);
        for slice in chunk.chunks(PARSE_SLICE) {
            self.read(|reader, sink| reader.push(slice, sink))?;
            self.grant_batch_memory().await;
            // Full by rows, or by memory: long values or many errors per row make a batch
            // larger than its grant long before it has its rows.
            let full = self.batch.rows >= self.batching.rows as u64
                || self.batch.heap_bytes() >= self.granted_bytes();
            let due = !self.batch.is_empty()
                && self
                    .batching
                    .flush_after
                    .is_some_and(|after| self.last_flush.elapsed() >= after)
                && self.writer.as_ref().is_some_and(Writer::is_idle);
            if full || due {
                self.send_batch().await?;
            }
        }
        Ok(())
    }

    /// The finish message: checks it against what arrived, reads the rest of the file, and
    /// hands the last batch to the writer.
    async fn finish(&mut self, check: &FinishCheck) -> Result<(), Cause> {
        // Checked before the last bytes are read: a truncated file would often end in a
        // parsing error (a quote or a character cut short) that hides the real cause.
        self.verify(check)?;
        self.read(|reader, sink| reader.finish(sink))?;
        if !self.batch.is_empty() {
            self.grant_batch_memory().await;
            self.send_batch().await?;
        }
        Ok(())
    }

    /// Runs the reader for one step and adds what it read to the tally, even when the step
    /// fails: the rows read before a parsing error count, and the ending keeps them as
    /// processed. Maps the reader's errors to their causes.
    fn read(
        &mut self,
        step: impl FnOnce(&mut FileReader, &mut BatchSink<'_>) -> Result<(), ReadError>,
    ) -> Result<(), Cause> {
        let mut sink = BatchSink {
            batch: &mut self.batch,
            rows: 0,
            failed: 0,
        };
        let result = step(&mut self.reader, &mut sink);
        let (rows, failed) = (sink.rows, sink.failed);
        self.tally.read(
            self.reader.bytes_received(),
            rows,
            failed,
            self.reader.format(),
        );
        result.map_err(|e| match e {
            ReadError::Intake(e @ IntakeError::TooLarge { .. }) => Cause::TooLarge(e),
            ReadError::Intake(e @ IntakeError::NotCsv { .. }) => Cause::NotCsv(e),
            ReadError::Parsing(message) => Cause::Parsing(message),
        })
    }

    /// The memory granted to the batch being filled: the estimate for a full batch of typical
    /// rows, which also serves as the batch's size limit in bytes.
    fn granted_bytes(&self) -> usize {
        UserBatch::estimated_bytes(self.batching.rows)
    }

    /// Once a batch has its first rows, takes its memory, waiting while other uploads hold
    /// the budget, and gives the batch its capacity. Before that (a client that sent nothing
    /// yet, or only the first bytes, which are held until the content was looked at) the
    /// upload holds no memory of the budget.
    async fn grant_batch_memory(&mut self) {
        if self.permit.is_none() && !self.batch.is_empty() {
            self.permit = Some(self.ctx.memory.reserve(self.granted_bytes()).await);
            self.batch.reserve_rows(self.batching.rows);
        }
    }

    /// Hands the current batch to the writer, waiting while the writer is behind. The next
    /// batch takes its memory when its first rows come.
    async fn send_batch(&mut self) -> Result<(), Cause> {
        let committed = self.committed()?;
        let queued = Queued {
            committed,
            batch: std::mem::take(&mut self.batch),
            format: self.reader.format(),
            // Exactly the rows of this batch and those before it: see `tally`.
            reads: self.tally.reads(),
            memory: self.permit.take(),
        };
        let Some(writer) = self.writer.as_mut() else {
            return Err(Cause::Store(StoreError::Database(
                "a batch came after the writer stopped".into(),
            )));
        };
        if writer.send(queued).await {
            // The next batch's time starts once the writer took this one: counted from before
            // the wait, a slow writer would have every batch after it flushed nearly empty.
            self.last_flush = tokio::time::Instant::now();
            return Ok(());
        }
        let error = writer.failed().await;
        self.writer = None;
        Err(Cause::Store(error))
    }

    /// The size and checksum the finish message gives, against what arrived. Either may be
    /// left out by the client; the size is checked first, as its message is the plainer.
    fn verify(&self, check: &FinishCheck) -> Result<(), Cause> {
        let received = self.reader.bytes_received();
        if let Some(size) = check.size_bytes
            && size != received
        {
            return Err(Cause::Mismatch(format!(
                "the finish message says the file has {size} bytes but {received} bytes \
                 arrived, so nothing was imported; upload the file again"
            )));
        }
        if let Some(expected) = check.sha256
            && expected != self.reader.sha256()
        {
            return Err(Cause::Mismatch(format!(
                "the file's SHA-256 is {} but the finish message says {}, so nothing was \
                 imported; upload the file again",
                hex::encode(self.reader.sha256()),
                hex::encode(expected)
            )));
        }
        Ok(())
    }

    /// Whether `CancelImport` asked for this import, here or on another replica.
    async fn cancel_asked(&self) -> bool {
        self.cancel.is_cancelled()
            || self
                .ctx
                .store
                .cancel_requested(self.key)
                .await
                .unwrap_or(false)
    }

    /// Closes the writer's queue and waits for it: the batches of a completed upload must all
    /// be written (a failed one makes it a store failure), and those of a failed one must
    /// land before its ending deletes its users. A completion learns whether a cancel was
    /// asked meanwhile: the ending decides what that means.
    async fn stop_writing(&mut self, cause: Cause) -> Cause {
        // A cancel asked (here or on another replica) wins over waiting for the client.
        let cause = if self.resumable && cause.leaves_waiting() && self.cancel_asked().await {
            Cause::Cancelled
        } else {
            cause
        };
        // The rows read whole before the client went are stored too, so that it sends less
        // again. Only for the causes that come between two steps, when the batch holds every
        // row the reader read: a shutdown may have dropped a step's batch half-way, and the
        // reader's place would then claim rows that no batch holds. A failure here only leaves
        // the rows to be sent again.
        let between_steps = matches!(
            cause,
            Cause::Incomplete | Cause::Broken(_) | Cause::Stalled(_)
        );
        if self.resumable && between_steps && !self.batch.is_empty() {
            let _ = self.send_batch().await;
        }
        match (self.writer.take(), cause) {
            (Some(writer), Cause::Completed { .. }) => match writer.finish().await {
                Ok(()) => Cause::Completed {
                    cancel_asked: self.cancel_asked().await,
                },
                Err(e) => Cause::Store(e),
            },
            (Some(writer), cause) => {
                let _ = writer.finish().await;
                cause
            }
            (None, cause) => cause,
        }
    }
}

/// Resolves once `CancelImport` on another replica asked to cancel the import: the store
/// wakes its followers on every change of the import, and the flag is read then (and once at
/// first, for a request that came before the subscription). Never for a store that only this
/// process writes (the local token covers it).
async fn cancelled_elsewhere(store: Arc<dyn Store>, key: ImportKey) {
    let Some(mut changes) = store.subscribe(key) else {
        return std::future::pending().await;
    };
    if store.cancel_requested(key).await.unwrap_or(false) {
        return;
    }
    while changes.changed().await.is_ok() {
        if store.cancel_requested(key).await.unwrap_or(false) {
            return;
        }
    }
    std::future::pending().await
}

/// Resolves when the writer stops on a failed write; never when there is none.
async fn failed(writer: &mut Option<Writer>) -> StoreError {
    match writer {
        Some(writer) => writer.failed().await,
        None => std::future::pending().await,
    }
}
