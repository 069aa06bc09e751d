//! Memory for batches across all uploads.
//!
//! Batches being filled, queued or written share one budget: a batch is filled only once its
//! memory is granted, so memory stays bounded however many uploads run, and a full budget
//! slows the readers of the streams (backpressure). A batch takes its grant once it has rows,
//! so that a client that sends nothing holds nothing.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget, in KiB.
const BATCH_MEMORY_KIB: usize = 64 * 1024;

#[derive(Clone)]
pub struct BatchMemory {
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
    pub(super) async fn reserve(&self, bytes: usize) -> OwnedSemaphorePermit {
        let kib = (bytes / 1024).clamp(1, BATCH_MEMORY_KIB) as u32;
        self.kib
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the batch memory semaphore is never closed")
    }
}
