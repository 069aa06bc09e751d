//! Endings decided but not stored yet (the database was away or full when they happened),
//! stored by the upkeep. Until then the import is shown with its decided ending, never as
//! PROCESSING, with the counters the ending stores (`Conclusion::new` applies the one rule),
//! so that no reader sees a counter drop once it is stored.
//!
//! While an ending waits here, this server keeps renewing the import's life sign (see
//! `keys`), so that the reaper of another server does not end it another way. If this server
//! stops first, the ending is lost with it, and the import is ended as interrupted at the next
//! start (SQLite) or by another server's reaper (PostgreSQL); both import nothing, as the kept
//! ending would have. The shutdown makes a last, bounded attempt to store them
//! (`Importer::shutdown`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::decide::Disposal;
use crate::domain::{Import, ImportKey, ImportStatus};
use crate::store::{Guard, Store, StoreError};

/// The endings that wait, shared by the uploads (which keep them) and the upkeep (which
/// stores them). Keyed by import: an import has at most one ending waiting. Cheap to clone.
#[derive(Clone, Default)]
pub struct Endings {
    pending: Arc<Mutex<HashMap<ImportKey, Pending>>>,
}

/// One ending that waits.
struct Pending {
    /// The import as it will be stored.
    decided: Import,
    /// What to store: the conclusion, or the removal of an import refused at the door.
    disposal: Disposal,
}

impl Endings {
    /// Keeps an ending to be stored later; `decided` is the import as it will be. Readers see
    /// `decided` from now on (`overlay`).
    pub(super) fn keep(&self, decided: Import, disposal: Disposal) {
        self.lock()
            .insert(decided.key, Pending { decided, disposal });
    }

    /// The imports whose ending waits: their life signs are kept meanwhile, so that no other
    /// server ends them another way.
    pub fn keys(&self) -> Vec<ImportKey> {
        self.lock().keys().copied().collect()
    }

    /// An import with its decided ending when that is not stored yet: how `GetImport`,
    /// `ListImports` and a retry's `AlreadyExists` show an import whose ending waits. A
    /// terminal import is returned as it is: what is stored wins.
    pub fn overlay(&self, import: Import) -> Import {
        if import.status.is_terminal() {
            return import;
        }
        match self.lock().get(&import.key) {
            Some(pending) => pending.decided.clone(),
            None => import,
        }
    }

    /// Stores the endings that wait, each once; those that still cannot be stored wait on.
    /// Called by the upkeep (`Importer::maintain`) and once more at shutdown. The lock is not
    /// held across the store's calls: uploads may keep new endings meanwhile.
    ///
    /// Stored, or found ended by another server: the ending leaves the map. A passing outage:
    /// it waits for the next round. Any other error: the message is replaced by a plain one
    /// (the message may be what the database refuses), and the next round tries that.
    pub async fn store_pending(&self, store: &dyn Store) {
        let waiting: Vec<(ImportKey, Import, Disposal)> = self
            .lock()
            .iter()
            .map(|(key, p)| (*key, p.decided.clone(), p.disposal.clone()))
            .collect();
        for (key, decided, disposal) in waiting {
            let stored = match &disposal {
                Disposal::Discard(_) => store.discard_import(key).await,
                Disposal::Conclude(c) | Disposal::Wait(c) => store
                    .conclude_import(key, c, Guard::Processing)
                    .await
                    .map(|_| ()),
            };
            match stored {
                Ok(()) => {
                    tracing::info!(
                        import_key = key,
                        status = disposal.conclusion().status().as_str(),
                        "stored the end of an import"
                    );
                    self.lock().remove(&key);
                }
                // Another server ended it meanwhile (it took this one for dead). Both endings
                // import nothing; say so if the stored one differs from what the client heard.
                Err(StoreError::NotProcessing) => {
                    let ended = store
                        .get_import(&decided.account_id, &decided.import_id)
                        .await
                        .ok()
                        .flatten()
                        .map(|i| i.status);
                    if ended != Some(decided.status) && matches!(disposal, Disposal::Conclude(_)) {
                        tracing::warn!(
                            import_key = key,
                            decided = decided.status.as_str(),
                            stored = ended.map_or("gone", ImportStatus::as_str),
                            "another server ended this import first; its ending stays"
                        );
                    }
                    self.lock().remove(&key);
                }
                Err(e) if !worth_waiting(&e) => {
                    // Not the database being away, full or busy: this disposal as it is cannot
                    // be stored (a value the database refuses, say). A refused import's
                    // removal becomes the ending it has instead; an ending, the same ending
                    // with a plain message.
                    tracing::error!(
                        import_key = key,
                        error = e.detail(),
                        "cannot store the end of an import as it is; storing it another way"
                    );
                    let instead = match disposal {
                        Disposal::Discard(instead) => instead,
                        Disposal::Conclude(c) | Disposal::Wait(c) => c.with_message(
                            "the import ended with an error the server could not record in \
                             full; nothing was imported, upload the file again"
                                .to_owned(),
                        ),
                    };
                    if let Some(pending) = self.lock().get_mut(&key) {
                        pending.decided.error_message = instead.error_message().to_owned();
                        pending.disposal = Disposal::Conclude(instead);
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        import_key = key,
                        error = e.detail(),
                        "cannot store the end of an import yet"
                    );
                }
            }
        }
    }

    /// The map, even after a panic elsewhere poisoned the lock.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ImportKey, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether an ending that could not be stored may be stored later as it is: the database is
/// away (an outage), cannot take writes until someone makes room (a fault: a full disk is
/// what parks most endings), or lost a conflict. Any other error will come back however long
/// the ending waits.
fn worth_waiting(error: &StoreError) -> bool {
    match error {
        StoreError::Unavailable { .. } | StoreError::Fault { .. } | StoreError::Conflict(_) => true,
        StoreError::AlreadyExists
        | StoreError::NotProcessing
        | StoreError::StillRunning
        | StoreError::BeingUpdated(_)
        | StoreError::FileKeysLost(_)
        | StoreError::Config(_)
        | StoreError::Migrate(_)
        | StoreError::Corrupt(_)
        | StoreError::Database(_) => false,
    }
}
