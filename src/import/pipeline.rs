//! One upload, from its first message to its terminal status.
//!
//! ```text
//!   events ──► FileReader ──────────────────────► UserBatch ──► writer task ──► Store
//!   (chunks)   (intake, decoder, parser,           (bounded       (one transaction
//!               validator: see reader.rs)           queue)          per batch)
//! ```
//!
//! The reader (this task) parses and validates while the writer task writes the previous
//! batches, and the channel between them is bounded, so a slow database slows the reading of
//! the stream and backpressure reaches the client through HTTP/2 flow control; memory stays a
//! few batches whatever the file size.
//!
//! The whole upload runs in its own task, which owns the request stream: if the client goes
//! away or hyper drops the handler, the stream ends or breaks, and this task still ends the
//! import (ERROR_UNKNOWN, users deleted) instead of leaving it PROCESSING.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;

use super::chunk::IntakeError;
use super::progress::Live;
use super::reader::{FileReader, ReadError, RowSink};
use super::{ImportError, Importer};
use crate::domain::{
    AccountId, ArgumentError, Counters, Import, ImportKey, ImportStatus, NewImport, NewUser,
    RowError, TextFormat, UserBatch,
};
use crate::store::{BatchTarget, Batching, Conclusion, Store, StoreError};

/// One message of an upload, as the transport layer decoded it.
#[derive(Debug)]
pub enum UploadEvent {
    Metadata(NewImport),
    Chunk(Bytes),
    Finish(FinishCheck),
}

impl UploadEvent {
    fn name(&self) -> &'static str {
        match self {
            UploadEvent::Metadata(_) => "metadata",
            UploadEvent::Chunk(_) => "chunk",
            UploadEvent::Finish(_) => "finish",
        }
    }
}

/// What the client says the whole file was, checked when it finishes.
#[derive(Debug, Clone, Default)]
pub struct FinishCheck {
    pub size_bytes: Option<u64>,
    pub sha256: Option<[u8; 32]>,
}

/// A message the transport could not turn into an event.
#[derive(Debug)]
pub enum StreamError {
    /// The message was malformed (a bad field).
    Invalid(ArgumentError),
    /// The stream broke.
    Transport(String),
}

/// Why an upload stopped before a normal completion.
#[derive(Debug)]
enum Abort {
    /// The content is not CSV: refused before anything was written; the import is removed.
    Refused(IntakeError),
    TooLarge(IntakeError),
    /// The file cannot be read: ERROR_PARSING.
    Parsing(String),
    /// The finish message's size or checksum does not match what arrived.
    Mismatch(String),
    /// The stream ended without a finish message.
    Incomplete,
    Broken(String),
    Protocol(ArgumentError),
    Store(StoreError),
    ShuttingDown,
    /// A bug: reading the file panicked. The import still ends, instead of staying PROCESSING.
    Panicked(String),
}

/// Batches queued for the writer: one being written, one waiting, one being filled.
const WRITER_QUEUE: usize = 1;
/// Chunks are parsed in slices of this size, so a batch is cut close to its size even when a
/// client sends multi-megabyte chunks.
const PARSE_SLICE: usize = 64 * 1024;

pub(super) async fn run<S>(importer: Importer, mut events: S) -> Result<Import, ImportError>
where
    S: Stream<Item = Result<UploadEvent, StreamError>> + Send + Unpin + 'static,
{
    let new = match events.next().await {
        Some(Ok(UploadEvent::Metadata(new))) => new,
        Some(Ok(other)) => {
            return Err(ArgumentError::new(
                "metadata",
                format!(
                    "the first message of an upload must be metadata; got {}",
                    other.name()
                ),
            )
            .into());
        }
        Some(Err(StreamError::Invalid(e))) => return Err(e.into()),
        Some(Err(StreamError::Transport(e))) => return Err(ImportError::Cancelled(e)),
        None => {
            return Err(ArgumentError::new(
                "metadata",
                "the upload ended before its metadata message",
            )
            .into());
        }
    };
    let store = importer.store()?;
    let import = match store.create_import(&new).await {
        Ok(import) => import,
        Err(StoreError::AlreadyExists) => {
            return Err(ImportError::AlreadyExists {
                account_id: new.account_id,
                import_id: new.import_id,
            });
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        account_id = %import.account_id, import_id = %import.import_id,
        filename = import.filename.as_str(), "upload started"
    );
    let live = importer.hub().start(import.clone());
    let mut upload = Upload::new(importer, store, import, live);
    let outcome = AssertUnwindSafe(upload.receive(&mut events))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(Abort::Panicked(message))
        });
    drop(events);
    upload.conclude(outcome).await
}

struct Upload {
    importer: Importer,
    store: std::sync::Arc<dyn Store>,
    import: Import,
    live: Live,
    reader: FileReader,
    rows: BatchSink,
    writer: Option<Writer>,
    /// How the store wants its batches.
    batching: Batching,
    /// When the writer took the last batch.
    last_flush: tokio::time::Instant,
}

/// Collects rows into the batch being filled, and counts them.
struct BatchSink {
    batch: UserBatch,
    /// The memory granted to the batch being filled: taken once it has rows, so that an
    /// upload that sends nothing holds nothing.
    permit: Option<OwnedSemaphorePermit>,
    batch_rows: usize,
    processed: u64,
    failed: u64,
}

impl BatchSink {
    /// The memory granted to the batch being filled.
    fn granted_bytes(&self) -> usize {
        UserBatch::estimated_bytes(self.batch_rows)
    }
}

impl RowSink for BatchSink {
    fn user(&mut self, row_number: u64, user: &NewUser<'_>) {
        self.batch.push_user(row_number, user);
        self.processed += 1;
    }

    fn failed(&mut self, errors: Vec<RowError>) {
        self.batch.push_failed_row(errors);
        self.processed += 1;
        self.failed += 1;
    }
}

impl Upload {
    fn new(
        importer: Importer,
        store: std::sync::Arc<dyn Store>,
        import: Import,
        live: Live,
    ) -> Self {
        let config = importer.config();
        let batching = store.batching();
        let writer = Writer::spawn(
            store.clone(),
            import.key,
            import.account_id.clone(),
            live.clone(),
            config.max_stored_row_errors,
        );
        Self {
            reader: FileReader::new(config.max_upload_bytes, config.record_limits),
            rows: BatchSink {
                batch: UserBatch::default(),
                permit: None,
                batch_rows: batching.rows,
                processed: 0,
                failed: 0,
            },
            writer: Some(writer),
            batching,
            last_flush: tokio::time::Instant::now(),
            importer,
            store,
            import,
            live,
        }
    }

    /// Reads the stream up to its finish message, parsing and writing as chunks arrive, and
    /// checks the file against that message.
    async fn receive<S>(&mut self, events: &mut S) -> Result<(), Abort>
    where
        S: Stream<Item = Result<UploadEvent, StreamError>> + Unpin,
    {
        let shutdown = self.importer.shutdown_token();
        loop {
            // A batch that waits while the client is slow is written anyway once due.
            let flush_at = self
                .batching
                .flush_after
                .filter(|_| !self.rows.batch.is_empty())
                .map(|after| self.last_flush + after);
            let flush_due = async {
                match flush_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Err(Abort::ShuttingDown),
                () = flush_due => {
                    self.send_batch().await?;
                    continue;
                }
                event = events.next() => event,
            };
            match event {
                Some(Ok(UploadEvent::Chunk(chunk))) => {
                    // Parse slice by slice, handing full batches to the writer in between, so
                    // that a batch stays near its size even for multi-megabyte chunks.
                    for slice in chunk.chunks(PARSE_SLICE) {
                        self.read(|reader, rows| reader.push(slice, rows))?;
                        self.grant_batch_memory().await;
                        // Full by rows, or by memory: long values or many errors per row make
                        // a batch larger than its grant long before it has its rows.
                        let full = self.rows.batch.rows_processed >= self.batching.rows as u64
                            || self.rows.batch.heap_bytes() >= self.rows.granted_bytes();
                        let due = !self.rows.batch.is_empty()
                            && self
                                .batching
                                .flush_after
                                .is_some_and(|after| self.last_flush.elapsed() >= after);
                        if full || due {
                            self.send_batch().await?;
                        }
                    }
                }
                Some(Ok(UploadEvent::Finish(check))) => {
                    // Checked before the last bytes are read: a truncated file would often
                    // end in a parsing error (a quote or a character cut short) that hides
                    // the real cause.
                    self.verify(&check)?;
                    self.read(|reader, rows| reader.finish(rows))?;
                    self.grant_batch_memory().await;
                    return Ok(());
                }
                Some(Ok(UploadEvent::Metadata(_))) => {
                    return Err(Abort::Protocol(ArgumentError::new(
                        "metadata",
                        "metadata may only be the first message of an upload",
                    )));
                }
                Some(Err(StreamError::Invalid(e))) => return Err(Abort::Protocol(e)),
                Some(Err(StreamError::Transport(e))) => return Err(Abort::Broken(e)),
                None => {
                    return Err(match self.reader.check_content() {
                        Err(ReadError::Intake(e @ IntakeError::NotCsv { .. })) => Abort::Refused(e),
                        _ => Abort::Incomplete,
                    });
                }
            }
        }
    }

    /// Runs the reader and adds what it read to the live counters.
    fn read(
        &mut self,
        step: impl FnOnce(&mut FileReader, &mut BatchSink) -> Result<(), ReadError>,
    ) -> Result<(), Abort> {
        let rows_before = self.rows.processed;
        let result = step(&mut self.reader, &mut self.rows);
        let bytes_received = self.reader.bytes_received();
        let rows = self.rows.processed - rows_before;
        self.live.set_format(self.reader.format());
        self.live.update(|c| {
            c.bytes_received = bytes_received;
            c.rows_processed += rows;
        });
        result.map_err(|e| match e {
            ReadError::Intake(e @ IntakeError::TooLarge { .. }) => Abort::TooLarge(e),
            ReadError::Intake(e @ IntakeError::NotCsv { .. }) => Abort::Refused(e),
            ReadError::Parsing(message) => Abort::Parsing(message),
        })
    }

    /// Once a batch has its first rows, takes its memory, waiting while other uploads hold
    /// the budget, and gives the batch its capacity. Before that (a client that sent nothing
    /// yet, or only the first bytes, which are held until the content was looked at) the
    /// upload holds no memory of the budget.
    async fn grant_batch_memory(&mut self) {
        if self.rows.permit.is_none() && !self.rows.batch.is_empty() {
            let bytes = self.rows.granted_bytes();
            self.rows.permit = Some(self.importer.reserve_batch_memory(bytes).await);
            self.rows.batch.reserve_rows(self.rows.batch_rows);
        }
    }

    /// Hands the current batch to the writer, waiting while the writer is behind: this is
    /// where backpressure starts. The next batch takes its memory when its first chunk comes.
    async fn send_batch(&mut self) -> Result<(), Abort> {
        let batch = std::mem::take(&mut self.rows.batch);
        // The batch carries its memory grant until it is written.
        let meta = (
            self.reader.bytes_received(),
            self.reader.format(),
            self.rows.permit.take(),
        );
        let queue = &self
            .writer
            .as_ref()
            .expect("the writer runs until the upload ends")
            .tx;
        if queue.send((batch, meta)).await.is_ok() {
            // The next batch's time starts once the writer took this one: counted from before
            // the wait, a slow writer would have every batch after it flushed nearly empty.
            self.last_flush = tokio::time::Instant::now();
            return Ok(());
        }
        // The writer stopped early: its error says why.
        let stopped = self.writer.take().expect("checked above").finish().await;
        Err(Abort::Store(
            stopped.err().unwrap_or(StoreError::NotProcessing),
        ))
    }

    async fn conclude(mut self, outcome: Result<(), Abort>) -> Result<Import, ImportError> {
        let outcome = match outcome {
            Ok(()) => self.complete().await,
            Err(abort) => Err(abort),
        };
        let abort = match outcome {
            Ok(import) => {
                tracing::info!(
                    account_id = %import.account_id, import_id = %import.import_id,
                    status = import.status.as_str(),
                    rows_processed = import.counters.rows_processed,
                    rows_imported = import.counters.rows_imported,
                    rows_failed = import.counters.rows_failed,
                    "import completed"
                );
                return Ok(import);
            }
            Err(abort) => abort,
        };
        // Let the writer drain so that no batch lands after the users are deleted.
        let written = match self.writer.take() {
            Some(writer) => writer.finish().await.unwrap_or_default(),
            None => WriterTotals::default(),
        };
        let (status, message, reply) = match abort {
            Abort::Refused(e) => return self.refuse(e).await,
            Abort::Parsing(message) => (ImportStatus::ErrorParsing, message, None),
            Abort::Mismatch(message) => (ImportStatus::ErrorUnknown, message, None),
            Abort::TooLarge(e) => (
                ImportStatus::ErrorUnknown,
                e.to_string(),
                Some(ImportError::TooLarge(e.to_string())),
            ),
            Abort::Incomplete => {
                let message = "the upload ended before its finish message, so nothing was \
                               imported; upload the whole file again"
                    .to_owned();
                let reply = ArgumentError::new("finish", message.clone());
                (ImportStatus::ErrorUnknown, message, Some(reply.into()))
            }
            Abort::Broken(detail) => (
                ImportStatus::ErrorUnknown,
                "the upload stream broke before its finish message, so nothing was imported; \
                 upload the whole file again"
                    .to_owned(),
                Some(ImportError::Cancelled(detail)),
            ),
            Abort::Protocol(e) => (
                ImportStatus::ErrorUnknown,
                format!("the upload was malformed ({e}), so nothing was imported"),
                Some(e.into()),
            ),
            Abort::Store(e) => {
                tracing::error!(import_id = %self.import.import_id, error = %e, "database error");
                (
                    ImportStatus::ErrorUnknown,
                    "the import failed because of a database error, so nothing was imported; \
                     upload the file again"
                        .to_owned(),
                    Some(e.into()),
                )
            }
            Abort::Panicked(message) => {
                tracing::error!(import_id = %self.import.import_id, panic = message, "import panicked");
                (
                    ImportStatus::ErrorUnknown,
                    "an internal error ended the import, so nothing was imported; upload the \
                     file again, and report it if it happens again"
                        .to_owned(),
                    Some(ImportError::Internal(format!(
                        "the upload panicked: {message}"
                    ))),
                )
            }
            Abort::ShuttingDown => (
                ImportStatus::ErrorUnknown,
                "the server shut down during the upload, so nothing was imported; upload the \
                 file again"
                    .to_owned(),
                Some(ImportError::ShuttingDown),
            ),
        };
        tracing::warn!(
            account_id = %self.import.account_id, import_id = %self.import.import_id,
            status = status.as_str(), error_message = message.as_str(), "import failed"
        );
        // Nothing is imported: the store deletes the users written so far.
        let counters = Counters {
            rows_imported: 0,
            ..self.counters(&written)
        };
        let ended = self.end(status, counters, message).await;
        match (reply, ended) {
            (Some(error), _) => Err(error),
            (None, ended) => ended,
        }
    }

    /// The content is not CSV: nothing was written, so the import is removed as if it never
    /// was, and the client gets INVALID_ARGUMENT.
    async fn refuse(&self, reason: IntakeError) -> Result<Import, ImportError> {
        tracing::info!(import_id = %self.import.import_id, %reason, "upload refused");
        let key = self.import.key;
        self.importer.hub().forget(key);
        let store = self.store.clone();
        let discarded = (|| async { store.discard_import(key).await })
            .retry(retry_policy())
            .await;
        if let Err(e) = discarded {
            // It cannot be removed now: it is ended instead, by the upkeep once the database
            // answers, rather than left PROCESSING.
            tracing::error!(import_id = %self.import.import_id, error = %e, "could not remove a refused import");
            let conclusion = Conclusion {
                status: ImportStatus::ErrorUnknown,
                counters: self.counters(&WriterTotals::default()),
                format: self.reader.format(),
                error_message: reason.to_string(),
            };
            self.importer.abandon(key, conclusion);
        }
        Err(ArgumentError::new("chunk", reason.to_string()).into())
    }

    /// The size and checksum the finish message gives, against what arrived.
    fn verify(&self, check: &FinishCheck) -> Result<(), Abort> {
        let received = self.reader.bytes_received();
        if let Some(size) = check.size_bytes
            && size != received
        {
            return Err(Abort::Mismatch(format!(
                "the finish message says the file has {size} bytes but {received} bytes \
                 arrived, so nothing was imported; upload the file again"
            )));
        }
        if let Some(expected) = check.sha256
            && expected != self.reader.sha256()
        {
            return Err(Abort::Mismatch(format!(
                "the file's SHA-256 is {} but the finish message says {}, so nothing was \
                 imported; upload the file again",
                hex::encode(self.reader.sha256()),
                hex::encode(expected)
            )));
        }
        Ok(())
    }

    /// The finish message arrived, checked, and every record was read: write the rest and
    /// commit.
    async fn complete(&mut self) -> Result<Import, Abort> {
        if !self.rows.batch.is_empty() {
            self.send_batch().await?;
        }
        let totals = self
            .writer
            .take()
            .expect("writer runs until conclude")
            .finish()
            .await
            .map_err(Abort::Store)?;
        let counters = self.counters(&totals);
        let status = ImportStatus::completed(counters.rows_processed, counters.rows_failed);
        self.end(status, counters, String::new())
            .await
            .map_err(|e| match e {
                ImportError::Store(e) => Abort::Store(e),
                other => Abort::Store(StoreError::Corrupt(other.to_string())),
            })
    }

    fn counters(&self, written: &WriterTotals) -> Counters {
        Counters {
            bytes_received: self.reader.bytes_received(),
            rows_processed: self.rows.processed,
            rows_imported: written.imported,
            rows_failed: self.rows.failed + written.conflicts,
            row_errors_omitted: written.errors_omitted,
        }
    }

    /// Stores the terminal status (retrying while the database hiccups) and tells watchers.
    async fn end(
        &self,
        status: ImportStatus,
        counters: Counters,
        error_message: String,
    ) -> Result<Import, ImportError> {
        let conclusion = Conclusion {
            status,
            counters,
            format: self.reader.format(),
            error_message,
        };
        let key = self.import.key;
        let store = self.store.clone();
        let result = (|| async { store.conclude_import(key, &conclusion).await })
            .retry(retry_policy())
            .when(|e| matches!(e, StoreError::Unavailable(_) | StoreError::Database(_)))
            .await;
        let import = match result {
            Ok(import) => import,
            Err(StoreError::NotProcessing) => {
                // Someone else ended it (recovery on another replica): report what is stored.
                let stored = self
                    .store
                    .get_import(&self.import.account_id, &self.import.import_id)
                    .await;
                match stored {
                    Ok(Some(import)) => import,
                    // Local watchers then follow the store, which has the ending.
                    other => {
                        self.importer.hub().forget(key);
                        return Err(match other {
                            Err(e) => e.into(),
                            _ => ImportError::Internal("the import disappeared".into()),
                        });
                    }
                }
            }
            Err(e) => {
                tracing::error!(
                    import_id = %self.import.import_id, error = %e,
                    "could not store the end of an import; retrying in the background"
                );
                self.importer.hub().forget(key);
                self.importer.abandon(key, conclusion);
                return Err(e.into());
            }
        };
        self.importer.hub().conclude(import.clone());
        Ok(import)
    }
}

fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(5)
}

/// What the writer task did, summed over its batches.
#[derive(Debug, Default, Clone, Copy)]
struct WriterTotals {
    imported: u64,
    conflicts: u64,
    errors_omitted: u64,
}

/// The writer task and the bounded queue that feeds it.
/// A batch, with the bytes received and the text format when it was cut, and its memory.
type Queued = (
    UserBatch,
    (u64, Option<TextFormat>, Option<OwnedSemaphorePermit>),
);

struct Writer {
    tx: mpsc::Sender<Queued>,
    task: JoinHandle<Result<WriterTotals, StoreError>>,
}

impl Writer {
    fn spawn(
        store: std::sync::Arc<dyn Store>,
        key: ImportKey,
        account_id: AccountId,
        live: Live,
        max_stored_errors: u64,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Queued>(WRITER_QUEUE);
        let task = tokio::spawn(async move {
            let mut totals = WriterTotals::default();
            let mut stored_errors = 0;
            while let Some((batch, (bytes_received, format, _memory))) = rx.recv().await {
                let target = BatchTarget {
                    key,
                    account_id: &account_id,
                    next_error_seq: stored_errors,
                    error_budget: max_stored_errors.saturating_sub(stored_errors),
                    bytes_received,
                    format,
                };
                let outcome = store.write_batch(&target, &batch).await?;
                stored_errors += outcome.errors_stored;
                totals.imported += outcome.imported;
                totals.conflicts += outcome.conflicts;
                totals.errors_omitted += outcome.errors_omitted;
                live.update(|c| {
                    c.rows_imported += outcome.imported;
                    c.rows_failed += batch.rows_failed + outcome.conflicts;
                    c.row_errors_omitted += outcome.errors_omitted;
                });
            }
            Ok(totals)
        });
        Self { tx, task }
    }

    /// Closes the queue and waits for the batches in it to be written.
    async fn finish(self) -> Result<WriterTotals, StoreError> {
        drop(self.tx);
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(StoreError::Corrupt(format!("the writer task failed: {e}"))),
        }
    }
}
