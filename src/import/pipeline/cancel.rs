//! Cancelling a running upload. `CancelImport` on the server that runs the upload fires its
//! token here; on another replica it sets the import's `cancel_requested` in the database and
//! notifies, and the uploading server, which follows its import's changes, sees it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::domain::ImportKey;

/// The cancel tokens of the uploads running here.
#[derive(Clone, Default)]
pub struct Cancels {
    running: Arc<Mutex<HashMap<ImportKey, CancellationToken>>>,
}

/// An upload's place in `Cancels`, until it is dropped.
pub(super) struct Registered {
    cancels: Cancels,
    key: ImportKey,
    pub token: CancellationToken,
}

impl Cancels {
    pub(super) fn register(&self, key: ImportKey) -> Registered {
        let token = CancellationToken::new();
        self.lock().insert(key, token.clone());
        Registered {
            cancels: self.clone(),
            key,
            token,
        }
    }

    /// Cancels the upload of `key` if it runs here; `false` when it does not.
    pub fn cancel(&self, key: ImportKey) -> bool {
        match self.lock().get(&key) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ImportKey, CancellationToken>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.cancels.lock().remove(&self.key);
    }
}
