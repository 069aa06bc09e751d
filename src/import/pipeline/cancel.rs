//! Cancelling a running upload. `CancelImport` on the server that runs the upload fires its
//! token here; on another replica it sets the import's `cancel_requested` in the database and
//! notifies, and the uploading server, which follows its import's changes, sees it.
//!
//! A cancel only stops the upload: its ending is decided like any other (`ending::decide`),
//! CANCELLED with every user of the import removed. A cancel asked while the last batches are
//! written still wins over the completion (`Cause::Completed`'s `cancel_asked`); one asked once
//! they are all written finds the import ended first.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::domain::ImportKey;

/// The cancel tokens of the uploads running here.
#[derive(Clone, Default)]
pub struct Cancels {
    /// By import, the token its upload watches, and the registration it belongs to. An entry
    /// lives as long as its `Registered`.
    running: Arc<Mutex<HashMap<ImportKey, (u64, CancellationToken)>>>,
    /// Numbers the registrations: a resumed upload of an import may register before the
    /// upload it resumes has let go of its place, which then must not remove the new one.
    registrations: Arc<AtomicU64>,
}

/// An upload's place in `Cancels`, until it is dropped.
pub(super) struct Registered {
    cancels: Cancels,
    key: ImportKey,
    /// Its number in `Cancels::registrations`.
    id: u64,
    /// Fired by `Cancels::cancel`: the upload stops at once, even while it waits on the writer
    /// or on batch memory.
    pub token: CancellationToken,
}

impl Cancels {
    /// Registers the upload of `key`, which keeps the returned place for as long as it runs,
    /// its ending included.
    pub(super) fn register(&self, key: ImportKey) -> Registered {
        let token = CancellationToken::new();
        let id = self.registrations.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, (id, token.clone()));
        Registered {
            cancels: self.clone(),
            key,
            id,
            token,
        }
    }

    /// Cancels the upload of `key` if it runs here; `false` when it does not, and the caller
    /// asks through the store instead (`Store::request_cancel`).
    pub fn cancel(&self, key: ImportKey) -> bool {
        match self.lock().get(&key) {
            Some((_, token)) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// The map, even after a panic elsewhere poisoned the lock.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ImportKey, (u64, CancellationToken)>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The upload has ended: its token leaves the map, and a later `CancelImport` asks through
/// the store, which answers that the import is no longer PROCESSING.
impl Drop for Registered {
    fn drop(&mut self) {
        let mut running = self.cancels.lock();
        if running.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            running.remove(&self.key);
        }
    }
}
