//! How an upload ends: the one owner of each import's ending.
//!
//! Every way an upload can stop is a `Cause`. `Ending::settle` turns it into exactly one
//! decision (a terminal status, or the removal of an import refused at the door) with the
//! answer the client gets, and stores it. Nothing else decides how an import ends, so a new
//! cause is one more variant here.
//!
//! What the client is told always agrees with what is finally stored:
//!
//! ```text
//!  Cause ─► decide ─► store it ─┬─ stored ──────────────► the decided answer
//!                               ├─ ended meanwhile by ──► what that server stored
//!                               │  another server
//!                               └─ cannot be stored ────► UNAVAILABLE; the decision, a
//!                                  (database away, full)   completion turned into ERROR_UNKNOWN,
//!                                                          is kept in `Endings` and stored by
//!                                                          the upkeep once the database is back
//! ```
//!
//! A completion that cannot be stored becomes ERROR_UNKNOWN because the client was not told
//! that the import completed, so none of its users may stay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};

use crate::domain::text::escape_controls;
use crate::domain::{ArgumentError, Counters, Import, ImportKey, ImportStatus, TextFormat};
use crate::import::chunk::IntakeError;
use crate::import::error::ImportError;
use crate::import::progress::ProgressHub;
use crate::metrics::Metrics;
use crate::store::{Conclusion, Store, StoreError};

/// The `error_message` of an import whose server stopped or died before it finished.
pub const INTERRUPTED: &str = "the server stopped before the import finished, so nothing was \
    imported; upload the file again";

/// Why an upload stops.
#[derive(Debug)]
pub(super) enum Cause {
    /// The finish message arrived and matched, and every row was read and written.
    Completed,
    /// The finish message's size or checksum does not match what arrived.
    Mismatch(String),
    /// The file cannot be read.
    Parsing(String),
    TooLarge(IntakeError),
    /// The content is not CSV at all: refused at the door, before anything was written.
    NotCsv(IntakeError),
    /// The stream ended without a finish message.
    Incomplete,
    /// The stream broke: the client went away, or the network failed.
    Broken(String),
    /// A malformed message.
    Protocol(ArgumentError),
    /// The server is shutting down and the grace period is over.
    ShuttingDown,
    /// Nothing arrived for this long.
    Stalled(Duration),
    /// `CancelImport`.
    Cancelled,
    /// A write failed.
    Store(StoreError),
    /// A bug: reading the file panicked. The import still ends.
    Panicked(String),
}

impl Cause {
    /// A name for the audit log, which never quotes the file.
    fn kind(&self) -> &'static str {
        match self {
            Cause::Completed => "completed",
            Cause::Mismatch(_) => "size_or_checksum_mismatch",
            Cause::Parsing(_) => "unreadable_file",
            Cause::TooLarge(_) => "too_large",
            Cause::NotCsv(_) => "not_csv",
            Cause::Incomplete => "no_finish",
            Cause::Broken(_) => "stream_broke",
            Cause::Protocol(_) => "malformed_message",
            Cause::ShuttingDown => "shutdown",
            Cause::Stalled(_) => "stalled",
            Cause::Cancelled => "cancelled",
            Cause::Store(_) => "database",
            Cause::Panicked(_) => "internal",
        }
    }
}

/// What becomes of the import.
#[derive(Debug, Clone)]
enum Disposal {
    /// It ends with this terminal status.
    Conclude(Conclusion),
    /// It is removed as if it never was; if that cannot be done, it ends with this instead.
    Discard(Conclusion),
}

impl Disposal {
    fn conclusion(&self) -> &Conclusion {
        match self {
            Disposal::Conclude(c) | Disposal::Discard(c) => c,
        }
    }
}

/// What the client is told once the disposal is stored.
#[derive(Debug)]
enum Reply {
    /// The import as stored.
    Import,
    Error(ImportError),
}

/// What is left to settle an upload's ending.
pub(super) struct Ending<'a> {
    pub store: &'a dyn Store,
    pub hub: &'a ProgressHub,
    pub endings: &'a Endings,
    /// The import as it was created.
    pub import: &'a Import,
    pub counters: Counters,
    pub format: Option<TextFormat>,
    pub metrics: &'a Metrics,
    /// When the upload's metadata was accepted, for its duration.
    pub started: tokio::time::Instant,
}

impl Ending<'_> {
    /// Counts the ending once it is decided for good: stored, or kept to be stored.
    fn count(&self, conclusion: &Conclusion) {
        self.metrics.import_ended(
            conclusion.status,
            &conclusion.counters,
            self.import.validate_only,
            self.started.elapsed(),
        );
    }

    /// Decides, stores and answers: see the module's doc.
    pub(super) async fn settle(self, cause: Cause) -> Result<Import, ImportError> {
        let (disposal, reply) = self.decide(cause);
        let key = self.import.key;
        match disposal {
            Disposal::Discard(ref instead) => {
                self.hub.forget(key);
                let discarded = (|| self.store.discard_import(key))
                    .retry(storing())
                    .when(StoreError::is_transient)
                    .await;
                if let Err(e) = discarded {
                    tracing::error!(
                        import_id = %self.import.import_id, error = e.detail(),
                        "cannot remove a refused import yet; ending it instead, later"
                    );
                    self.endings
                        .keep(self.decided(instead), Disposal::Discard(instead.clone()));
                }
                match reply {
                    Reply::Error(error) => Err(error),
                    Reply::Import => Err(ImportError::Internal(
                        "a discarded import has nothing to return".into(),
                    )),
                }
            }
            Disposal::Conclude(conclusion) => self.conclude(conclusion, reply).await,
        }
    }

    async fn conclude(&self, conclusion: Conclusion, reply: Reply) -> Result<Import, ImportError> {
        let key = self.import.key;
        let stored = (|| self.store.conclude_import(key, &conclusion))
            .retry(storing())
            .when(StoreError::is_transient)
            .await;
        match stored {
            Ok(import) => {
                self.count(&conclusion);
                self.hub.conclude(import.clone());
                match reply {
                    Reply::Import => Ok(import),
                    Reply::Error(error) => Err(error),
                }
            }
            Err(StoreError::NotProcessing) => {
                // Another server ended it meanwhile (it took this one for dead): answer with
                // what that server stored.
                self.hub.forget(key);
                let stored = self
                    .store
                    .get_import(&self.import.account_id, &self.import.import_id)
                    .await?;
                match (reply, stored) {
                    (Reply::Import, Some(import)) => Ok(import),
                    _ => Err(ImportError::Ended),
                }
            }
            Err(e) => {
                self.hub.forget(key);
                let (kept, reply) = if conclusion.removes_users() {
                    let reply = format!(
                        "{} (the server stores this ending once the database can be written \
                         again: {e})",
                        conclusion.error_message
                    );
                    (conclusion, reply)
                } else {
                    let kept = Conclusion {
                        status: ImportStatus::ErrorUnknown,
                        error_message: format!(
                            "{e} when the import completed, so nothing was imported; upload \
                             the file again"
                        ),
                        ..conclusion
                    };
                    let reply = format!(
                        "the import could not be completed: {e}; nothing was imported, upload \
                         the file again once the service is ready"
                    );
                    (kept, reply)
                };
                tracing::error!(
                    import_id = %self.import.import_id, error = e.detail(),
                    status = kept.status.as_str(),
                    "cannot store the end of an import yet; storing it in the background"
                );
                self.count(&kept);
                self.endings
                    .keep(self.decided(&kept), Disposal::Conclude(kept));
                Err(ImportError::Unavailable(reply))
            }
        }
    }

    /// The one decision per cause: the import's ending and the client's answer.
    fn decide(&self, cause: Cause) -> (Disposal, Reply) {
        let id = &self.import.import_id;
        let kind = cause.kind();
        // Messages quote the file (a header name, a value): no control character, and so no
        // NUL, which PostgreSQL text cannot hold, reaches the store or the client.
        let error = |status, message: String| Conclusion {
            status,
            counters: self.counters,
            format: self.format,
            error_message: escape_controls(&message).into_owned(),
        };
        let unknown = |message: &str| error(ImportStatus::ErrorUnknown, message.to_owned());
        let (conclusion, reply) = match cause {
            Cause::Completed => {
                let c = self.counters;
                let status = ImportStatus::completed(c.rows_processed, c.rows_failed);
                tracing::info!(
                    account_id = %self.import.account_id, import_id = %id,
                    created_by = self.import.created_by.as_str(),
                    status = status.as_str(), rows_processed = c.rows_processed,
                    rows_imported = c.rows_imported, rows_failed = c.rows_failed,
                    "import completed"
                );
                (error(status, String::new()), Reply::Import)
            }
            Cause::NotCsv(e) => {
                tracing::info!(import_id = %id, reason = %e, "upload refused");
                let instead = unknown(&e.to_string());
                let reply = ArgumentError::new("chunk", e.to_string()).into();
                return (Disposal::Discard(instead), Reply::Error(reply));
            }
            Cause::Parsing(message) => (error(ImportStatus::ErrorParsing, message), Reply::Import),
            Cause::Mismatch(message) => (unknown(&message), Reply::Import),
            Cause::TooLarge(e) => (
                unknown(&e.to_string()),
                Reply::Error(ImportError::TooLarge(e.to_string())),
            ),
            Cause::Incomplete => {
                let message = "the upload ended before its finish message, so nothing was \
                               imported; upload the whole file again";
                let reply = ArgumentError::new("finish", message).into();
                (unknown(message), Reply::Error(reply))
            }
            Cause::Broken(detail) => (
                unknown(
                    "the upload stream broke before its finish message, so nothing was \
                     imported; upload the whole file again",
                ),
                Reply::Error(ImportError::Cancelled(detail)),
            ),
            Cause::Protocol(e) => (
                unknown(&format!(
                    "the upload was malformed ({}), so nothing was imported",
                    e.described()
                )),
                Reply::Error(e.into()),
            ),
            Cause::Cancelled => {
                let message = "the import was cancelled (CancelImport), so nothing was \
                               imported or updated";
                (
                    error(ImportStatus::Cancelled, message.to_owned()),
                    Reply::Error(ImportError::ImportCancelled(message.to_owned())),
                )
            }
            Cause::Stalled(idle) => {
                let message = super::stalled(idle);
                (
                    unknown(&message),
                    Reply::Error(ImportError::Stalled(message)),
                )
            }
            Cause::ShuttingDown => (
                unknown(
                    "the server shut down during the upload, so nothing was imported; upload \
                     the file again",
                ),
                Reply::Error(ImportError::ShuttingDown),
            ),
            Cause::Store(e) => {
                tracing::error!(import_id = %id, error = e.detail(), "a write failed");
                let message = match &e {
                    StoreError::Unavailable { outage, .. } => format!(
                        "the import failed because {outage}, so nothing was imported; upload \
                         the file again"
                    ),
                    StoreError::Fault { fault, .. } => format!(
                        "the import failed because {fault}, so nothing was imported; upload \
                         the file again once there is room"
                    ),
                    _ => "the import failed because of a database error, so nothing was \
                          imported; upload the file again"
                        .to_owned(),
                };
                (unknown(&message), Reply::Error(e.into()))
            }
            Cause::Panicked(message) => {
                tracing::error!(import_id = %id, panic = message, "import panicked");
                (
                    unknown(
                        "an internal error ended the import, so nothing was imported; upload \
                         the file again, and report it if it happens again",
                    ),
                    Reply::Error(ImportError::Internal(format!(
                        "the upload panicked: {message}"
                    ))),
                )
            }
        };
        if conclusion.removes_users() {
            // Not the error message: it may quote the file (a header's columns).
            tracing::warn!(
                account_id = %self.import.account_id, import_id = %id,
                created_by = self.import.created_by.as_str(), cause = kind,
                status = conclusion.status.as_str(), "import failed"
            );
        }
        (Disposal::Conclude(conclusion), reply)
    }

    /// The import as it will be stored.
    fn decided(&self, conclusion: &Conclusion) -> Import {
        decided(self.import, conclusion)
    }
}

fn decided(import: &Import, conclusion: &Conclusion) -> Import {
    let now = SystemTime::now();
    let mut counters = conclusion.counters;
    if conclusion.removes_users() {
        counters.rows_imported = 0;
    }
    Import {
        status: conclusion.status,
        counters,
        format: conclusion.format,
        error_message: conclusion.error_message.clone(),
        update_time: now,
        complete_time: Some(now),
        ..import.clone()
    }
}

/// Retries while the client waits for its answer: a short hiccup of the database, not an
/// outage (the upkeep takes over after this).
fn storing() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_total_delay(Some(Duration::from_secs(3)))
        .with_max_times(6)
}

/// Endings decided but not stored yet (the database was away or full), stored by the upkeep.
/// Until then the import is shown with its decided ending, never as PROCESSING.
#[derive(Clone, Default)]
pub struct Endings {
    pending: Arc<Mutex<HashMap<ImportKey, Pending>>>,
}

struct Pending {
    /// The import as it will be stored.
    decided: Import,
    disposal: Disposal,
}

impl Endings {
    fn keep(&self, decided: Import, disposal: Disposal) {
        self.lock()
            .insert(decided.key, Pending { decided, disposal });
    }

    /// The imports whose ending waits: their leases are kept meanwhile.
    pub fn keys(&self) -> Vec<ImportKey> {
        self.lock().keys().copied().collect()
    }

    /// An import with its decided ending when that is not stored yet.
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
    pub async fn store_pending(&self, store: &dyn Store) {
        let waiting: Vec<(ImportKey, Import, Disposal)> = self
            .lock()
            .iter()
            .map(|(key, p)| (*key, p.decided.clone(), p.disposal.clone()))
            .collect();
        for (key, decided, disposal) in waiting {
            let stored = match &disposal {
                Disposal::Discard(_) => store.discard_import(key).await,
                Disposal::Conclude(c) => store.conclude_import(key, c).await.map(|_| ()),
            };
            match stored {
                Ok(()) => {
                    tracing::info!(
                        import_key = key,
                        status = disposal.conclusion().status.as_str(),
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
                Err(e) if !e.is_transient() => {
                    // Not a passing outage: this ending as it is cannot be stored (say, a
                    // value the database refuses). The same ending with a plain message can.
                    tracing::error!(
                        import_key = key,
                        error = e.detail(),
                        "cannot store the end of an import; storing it with a plain message"
                    );
                    if let Disposal::Conclude(c) = &disposal {
                        let plain = Conclusion {
                            error_message: "the import ended with an error the server could \
                                            not record in full; nothing was imported, upload \
                                            the file again"
                                .to_owned(),
                            ..c.clone()
                        };
                        if let Some(pending) = self.lock().get_mut(&key) {
                            pending.disposal = Disposal::Conclude(plain);
                        }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ImportKey, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}
