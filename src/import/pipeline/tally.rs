//! The one source of an upload's counters.
//!
//! The reader adds what it read, the writer task what each committed batch did; everything
//! else is read from here: the progress stored with each batch, the live view that `GetImport`
//! and `WatchImport` show, the stored ending, and so the response.
//!
//! With several replicas (`Batching::shared`) the live view is the progress as stored with the
//! last committed batch, not the reader's count, which runs ahead of it: another replica
//! answers from the store, and a client polling both must never see the counters go back. With
//! one replica it shows the rows as they are read.

use std::sync::{Arc, Mutex};

use crate::domain::{Counters, TextFormat};
use crate::import::progress::Live;
use crate::store::BatchOutcome;

#[derive(Clone)]
pub(super) struct Tally {
    shared: Arc<Shared>,
}

struct Shared {
    counts: Mutex<Counts>,
    live: Live,
    /// The live view shows only what is stored (see the module's doc).
    stored_only: bool,
}

#[derive(Default)]
struct Counts {
    counters: Counters,
    /// Row errors stored so far: the next batch's first sequence number, and what is left of
    /// the import's cap.
    errors_stored: u64,
    format: Option<TextFormat>,
}

/// Where the writer's next batch stands: see `BatchTarget`.
pub(super) struct BeforeWrite {
    pub progress: Counters,
    pub next_error_seq: u64,
    pub error_budget: u64,
}

impl Tally {
    pub(super) fn new(live: Live, stored_only: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                counts: Mutex::new(Counts::default()),
                live,
                stored_only,
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
        let c = &mut counts.counters;
        c.bytes_received = bytes_received;
        c.rows_processed += rows;
        c.rows_failed += failed;
        if format.is_some() {
            counts.format = format;
        }
        if !self.shared.stored_only {
            self.shared.live.publish(counts.counters, counts.format);
        }
    }

    /// A batch committed, with `stored` as the progress stored with it: what a live view that
    /// shows only stored progress shows from now on.
    pub(super) fn written(
        &self,
        outcome: &BatchOutcome,
        stored: Counters,
        format: Option<TextFormat>,
    ) {
        let mut counts = self.lock();
        counts.counters = outcome.applied_to(counts.counters);
        counts.errors_stored += outcome.errors_stored;
        if self.shared.stored_only {
            self.shared.live.publish(stored, format);
        } else {
            self.shared.live.publish(counts.counters, counts.format);
        }
    }

    /// Where the next batch stands, for a cap of `max_stored_errors` row errors per import.
    pub(super) fn before_write(&self, max_stored_errors: u64) -> BeforeWrite {
        let counts = self.lock();
        BeforeWrite {
            progress: counts.counters,
            next_error_seq: counts.errors_stored,
            error_budget: max_stored_errors.saturating_sub(counts.errors_stored),
        }
    }

    pub(super) fn counters(&self) -> Counters {
        self.lock().counters
    }

    pub(super) fn format(&self) -> Option<TextFormat> {
        self.lock().format
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic while holding this lock cannot leave the counts half-updated.
        self.shared.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}
