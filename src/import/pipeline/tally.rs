//! The one source of an upload's counters.
//!
//! Two things move them: the reader, which adds what it read (bytes, rows, rows that failed
//! validation), and the store, which applies each committed batch's outcome to the progress
//! it stores with the batch (`BatchOutcome::applied_to`, once per batch) and hands that
//! progress back. Everything else is read from here: the progress stored with the next
//! batch, the live view that `GetImport` and `WatchImport` show, and the ending.
//!
//! **The counters add up in every snapshot**: `rows_processed = rows_imported + rows_failed +
//! rows_skipped + rows_updated`, on both backends. A batch carries what the reader had read
//! when it was cut (`Reads`), which is exactly its rows and those of the batches before it;
//! the progress stored with it counts those reads and no more, so every row it counts as
//! processed has its outcome counted too. The live view shows that committed progress (and
//! the text format as soon as it is known), never the reader's count, which runs ahead of it
//! by the rows not written yet: so the counters also never go back, whichever replica answers
//! (another reads the same progress from the store).

use std::sync::{Arc, Mutex};

use crate::domain::{Counters, Import, TextFormat};
use crate::import::progress::Live;
use crate::store::BatchWritten;

/// The counters of one upload, shared by its reader, its writer task and its ending.
#[derive(Clone)]
pub(super) struct Tally {
    shared: Arc<Shared>,
}

struct Shared {
    counts: Mutex<Counts>,
    /// The import's live view: it shows the committed progress.
    live: Live,
}

/// What the reader has read: the counters only it moves, and its share of `rows_failed`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reads {
    bytes_received: u64,
    rows_processed: u64,
    /// Rows that failed validation (conflicts, found by the store, add to them).
    rows_failed: u64,
}

#[derive(Default)]
struct Counts {
    /// The progress stored with the last committed batch.
    stored: Counters,
    /// What the reader had read when that batch was cut: its part of `stored`.
    stored_reads: Reads,
    /// What the reader had read when the batch being written was cut.
    writing_reads: Reads,
    /// What the reader has read so far.
    reads: Reads,
    /// Row errors stored so far: the next batch's first sequence number, and what is left of
    /// the import's cap.
    errors_stored: u64,
    format: Option<TextFormat>,
    /// Where the file is stored up to (`Import.committed_bytes`), for the live view.
    committed_bytes: u64,
}

impl Counts {
    /// The stored progress, moved on by what the reader had read at `reads`.
    fn at(&self, reads: Reads) -> Counters {
        Counters {
            bytes_received: reads.bytes_received,
            rows_processed: reads.rows_processed,
            rows_failed: self.stored.rows_failed + reads.rows_failed
                - self.stored_reads.rows_failed,
            ..self.stored
        }
    }
}

/// Where the writer's next batch stands: see `BatchTarget`.
pub(super) struct BeforeWrite {
    pub progress: Counters,
    pub next_error_seq: u64,
    pub error_budget: u64,
}

impl Tally {
    pub(super) fn new(live: Live) -> Self {
        Self {
            shared: Arc::new(Shared {
                counts: Mutex::new(Counts::default()),
                live,
            }),
        }
    }

    /// The tally of a resumed upload, from `import` as its last batch stored it and the row
    /// errors stored so far. The reader's count starts where that batch's did, so the batches
    /// to come add to it as if the upload had never stopped.
    pub(super) fn resumed(live: Live, import: &Import, errors_stored: u64) -> Self {
        let reads = Reads {
            bytes_received: import.counters.bytes_received,
            rows_processed: import.counters.rows_processed,
            rows_failed: 0,
        };
        Self {
            shared: Arc::new(Shared {
                counts: Mutex::new(Counts {
                    stored: import.counters,
                    stored_reads: reads,
                    writing_reads: reads,
                    reads,
                    errors_stored,
                    format: import.format,
                    committed_bytes: import.committed_bytes,
                }),
                live,
            }),
        }
    }

    /// The reader got this far: `bytes_received` in all, `rows` more data rows read, of which
    /// `failed` failed validation.
    pub(super) fn read(
        &self,
        bytes_received: u64,
        rows: u64,
        failed: u64,
        format: Option<TextFormat>,
    ) {
        let mut counts = self.lock();
        counts.reads.bytes_received = bytes_received;
        counts.reads.rows_processed += rows;
        counts.reads.rows_failed += failed;
        if format.is_some() && counts.format != format {
            counts.format = format;
            // The counters stay as committed; only the format is news.
            self.shared
                .live
                .publish(counts.stored, format, counts.committed_bytes);
        }
    }

    /// What the reader has read so far: taken when a batch is cut, and carried with it.
    pub(super) fn reads(&self) -> Reads {
        self.lock().reads
    }

    /// Where the next batch stands, for a cap of `max_stored_errors` row errors per import:
    /// the writer is taking the batch that was cut at `cut`.
    pub(super) fn before_write(&self, max_stored_errors: u64, cut: Reads) -> BeforeWrite {
        let mut counts = self.lock();
        counts.writing_reads = cut;
        BeforeWrite {
            progress: counts.at(cut),
            next_error_seq: counts.errors_stored,
            error_budget: max_stored_errors.saturating_sub(counts.errors_stored),
        }
    }

    /// The batch taken by the last `before_write` committed, as `written` says, with the file
    /// stored up to `committed_bytes`.
    pub(super) fn written(
        &self,
        written: &BatchWritten,
        format: Option<TextFormat>,
        committed_bytes: u64,
    ) {
        let mut counts = self.lock();
        counts.stored = written.progress;
        counts.committed_bytes = committed_bytes;
        counts.stored_reads = counts.writing_reads;
        counts.errors_stored += written.outcome.errors_stored;
        self.shared
            .live
            .publish(written.progress, format.or(counts.format), committed_bytes);
    }

    /// The counters the upload reached: the committed progress and everything read since.
    /// Once every batch is written (a completion), that is the committed progress.
    pub(super) fn counters(&self) -> Counters {
        let counts = self.lock();
        counts.at(counts.reads)
    }

    /// The text format the reader found, once it found it.
    pub(super) fn format(&self) -> Option<TextFormat> {
        self.lock().format
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic while holding this lock cannot leave the counts half-updated.
        self.shared.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        AccountId, ConflictPolicy, Filename, Import, ImportId, ImportStatus, ImportType,
    };
    use crate::import::progress::ProgressHub;
    use crate::store::BatchOutcome;

    fn tally() -> (Tally, tokio::sync::watch::Receiver<Import>) {
        let hub = ProgressHub::default();
        let import = Import {
            key: 1,
            account_id: AccountId::parse("acme").unwrap(),
            import_id: ImportId::parse("i1").unwrap(),
            kind: ImportType::Users,
            filename: Filename::parse("users.csv").unwrap(),
            created_by: String::new(),
            validate_only: false,
            on_conflict: ConflictPolicy::Error,
            retry_of: None,
            status: ImportStatus::Processing,
            counters: Counters::default(),
            format: None,
            error_message: String::new(),
            create_time: std::time::SystemTime::UNIX_EPOCH,
            update_time: std::time::SystemTime::UNIX_EPOCH,
            complete_time: None,
            revert_time: None,
            details_removed_time: None,
            invitations: Default::default(),
            users_invited: 0,
            resumable: false,
            committed_bytes: 0,
            resume_deadline: None,
            revert_note: String::new(),
        };
        let live = hub.start(import);
        let rx = hub.subscribe(1).unwrap();
        (Tally::new(live), rx)
    }

    /// The store's side of a write: the outcome applied once to the progress it was given.
    fn commit(tally: &Tally, before: &BeforeWrite, outcome: BatchOutcome) {
        let written = BatchWritten {
            outcome,
            progress: outcome.applied_to(before.progress),
        };
        tally.written(&written, None, 0);
    }

    fn adds_up(c: &Counters) -> bool {
        c.rows_processed == c.rows_imported + c.rows_failed + c.rows_skipped + c.rows_updated
    }

    #[test]
    fn a_batch_counts_the_rows_read_until_it_was_cut_and_no_more() {
        let (tally, rx) = tally();
        // Ten rows, two failed validation: the batch holds eight users.
        tally.read(100, 10, 2, None);
        let cut = tally.reads();
        // The reader goes on while the batch waits for the writer.
        tally.read(150, 5, 1, None);
        let first = tally.before_write(1000, cut);
        assert_eq!(first.progress.rows_processed, 10);
        let outcome = BatchOutcome {
            imported: 6,
            conflicts: 1,
            updated: 0,
            skipped: 1,
            errors_stored: 3,
            errors_omitted: 0,
        };
        commit(&tally, &first, outcome);
        let shown = rx.borrow().counters;
        assert!(adds_up(&shown), "{shown:?}");
        assert_eq!(
            (
                shown.rows_processed,
                shown.rows_imported,
                shown.rows_failed,
                shown.rows_skipped
            ),
            (10, 6, 3, 1)
        );
        // What was read since is not shown yet, but is counted in what the upload reached.
        let reached = tally.counters();
        assert_eq!((reached.rows_processed, reached.rows_failed), (15, 4));
        let second = tally.before_write(1000, tally.reads());
        assert_eq!(second.progress, reached);
        assert_eq!((second.next_error_seq, second.error_budget), (3, 997));
    }

    #[test]
    fn reading_alone_shows_nothing_but_the_format() {
        let (tally, rx) = tally();
        tally.read(100, 10, 1, None);
        assert_eq!(rx.borrow().counters, Counters::default());
        let format = TextFormat {
            encoding: crate::domain::TextEncoding::Utf8,
            delimiter: b';',
        };
        tally.read(200, 10, 0, Some(format));
        assert_eq!(rx.borrow().format, Some(format));
        assert_eq!(rx.borrow().counters, Counters::default());
    }
}
