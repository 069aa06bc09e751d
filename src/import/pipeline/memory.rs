//! Memory for batches across all uploads.
//!
//! Batches being filled, queued or written share one budget: a batch is filled past its first
//! slice of input (`PARSE_SLICE`, 64 KiB) only once its memory is granted, so memory stays
//! bounded however many uploads run, and a full budget slows the readers of the streams
//! (backpressure). A batch takes its grant once it has rows, so that a client that sends
//! nothing holds nothing.
//!
//! The grant is an estimate for a batch of typical rows (`UserBatch::estimated_bytes`). The
//! pipeline cuts a batch once its heap reaches the grant, even short of its rows, so long
//! values or many row errors make more, smaller batches rather than larger ones; a batch may
//! pass its grant by what one slice of input adds. The grant is released once the batch is
//! written (or dropped).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget, in KiB: 64 MiB for all the batches of all uploads.
const BATCH_MEMORY_KIB: usize = 64 * 1024;

/// The batch memory budget, shared by every upload of the process. Cheap to clone.
#[derive(Clone)]
pub struct BatchMemory {
    /// One permit per free KiB of the budget.
    kib: Arc<Semaphore>,
}

impl Default for BatchMemory {
    fn default() -> Self {
        Self {
            kib: Arc::new(Semaphore::new(BATCH_MEMORY_KIB)),
        }
    }
}

impl BatchMemory {
    /// Waits until `bytes` of the budget are free, and holds them until the permit is dropped.
    /// A request larger than the whole budget takes the whole budget, so it waits for the
    /// others to finish rather than forever. Waiters are served in order (tokio's semaphore is
    /// fair), so a large batch is not starved by small ones.
    pub(super) async fn reserve(&self, bytes: usize) -> OwnedSemaphorePermit {
        let kib = (bytes / 1024).clamp(1, BATCH_MEMORY_KIB) as u32;
        self.kib
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the batch memory semaphore is never closed")
    }
}
