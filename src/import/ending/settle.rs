//! An upload's ending, stored while its client waits for the answer. What the client is told
//! always agrees with what is finally stored:
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

use std::time::{Duration, SystemTime};

use backon::{ExponentialBuilder, Retryable};

use super::decide::{Disposal, Reply, decide};
use super::{Cause, Endings};
use crate::domain::{Counters, Import, ImportStatus, TextFormat};
use crate::import::error::ImportError;
use crate::import::progress::ProgressHub;
use crate::metrics::Metrics;
use crate::store::{Conclusion, Guard, Store, StoreError};

/// What is left to settle an upload's ending.
pub struct Ending<'a> {
    /// Where the ending is stored.
    pub store: &'a dyn Store,
    /// The live views of the uploads running here: this one's gets its final state.
    pub hub: &'a ProgressHub,
    /// Where an ending that cannot be stored now is kept for the upkeep.
    pub endings: &'a Endings,
    /// The import as it was created.
    pub import: &'a Import,
    /// The counters the upload reached, from its tally.
    pub counters: Counters,
    /// The text format the reader found, if it got that far.
    pub format: Option<TextFormat>,
    /// Counts the ending once it is decided for good (`Metrics::import_ended`).
    pub metrics: &'a Metrics,
    /// When the upload's metadata was accepted, for its duration.
    pub started: tokio::time::Instant,
    /// How long a resumable upload that stopped waits for its client (`--resume-window`).
    pub resume_window: Duration,
}

impl Ending<'_> {
    /// Decides the ending for `cause`, stores it, and returns the client's answer. Every
    /// upload ends here exactly once, whatever stopped it.
    pub async fn settle(self, cause: Cause) -> Result<Import, ImportError> {
        let decision = decide(cause, self.import, self.counters, self.format);
        match decision.disposal {
            Disposal::Discard(instead) => self.discard(instead, decision.reply).await,
            Disposal::Conclude(conclusion) => self.conclude(conclusion, decision.reply).await,
            Disposal::Wait(instead) => self.wait(instead, decision.reply).await,
        }
    }

    /// Leaves the import of a resumable upload that stopped waiting for its client, retrying a
    /// short while on an outage; if it cannot be made to wait, it ends with `instead`. The live
    /// view is dropped: the import is the store's alone until a resume takes it, on any
    /// server, and holds no memory here.
    async fn wait(&self, instead: Conclusion, reply: Reply) -> Result<Import, ImportError> {
        let key = self.import.key;
        // Dropped before the import waits: a resume may take it, here, as soon as it does.
        self.hub.forget(key);
        let parked = (|| {
            self.store
                .park_import(key, self.resume_window, Guard::Processing)
        })
        .retry(storing())
        .when(StoreError::is_transient)
        .await;
        match parked {
            Ok(waiting) => {
                self.metrics.upload_paused();
                tracing::info!(
                    account_id = %waiting.account_id, import_id = %waiting.import_id,
                    committed_bytes = waiting.committed_bytes,
                    "the import waits for its client to resume the upload"
                );
                match reply {
                    Reply::Import => Ok(waiting),
                    Reply::Error(error) => Err(error),
                }
            }
            // Ended meanwhile (a cancel, or another server): as any ending that lost.
            Err(StoreError::NotProcessing) => {
                self.hub.forget(key);
                match self
                    .store
                    .get_import(&self.import.account_id, &self.import.import_id)
                    .await?
                {
                    Some(import) if matches!(reply, Reply::Import) => Ok(import),
                    Some(_) | None => Err(ImportError::Ended),
                }
            }
            Err(e) => {
                tracing::error!(
                    import_id = %self.import.import_id, error = e.detail(),
                    "cannot make the import wait for its client; ending it"
                );
                self.conclude(instead, reply).await
            }
        }
    }

    /// Removes an import refused at the door; if that cannot be done now, ends it instead,
    /// later. Either way the client gets the refusal, and no ending is counted in the metrics
    /// (`import_ended`) for it. The removal is tried once here; the upkeep tries again.
    async fn discard(&self, instead: Conclusion, reply: Reply) -> Result<Import, ImportError> {
        let key = self.import.key;
        self.hub.forget(key);
        if let Err(e) = self.store.discard_import(key).await {
            tracing::warn!(
                import_id = %self.import.import_id, error = e.detail(),
                "cannot remove a refused import yet; ending it instead, later"
            );
            let decided = instead.applied_to(self.import, SystemTime::now());
            self.endings.keep(decided, Disposal::Discard(instead));
        }
        match reply {
            Reply::Error(error) => Err(error),
            Reply::Import => Err(ImportError::Internal(
                "a discarded import has nothing to return".into(),
            )),
        }
    }

    /// Stores the conclusion, retrying a short while on an outage, and answers as the module's
    /// doc shows. The live view gets the stored import, so that watchers see the ending from
    /// their channel; when the stored import is another's, or the ending waits, the live view is
    /// dropped and watchers read on from the store, where `Endings::overlay` shows the decision.
    /// Another server's ending is answered with the import it stored when the decided answer was
    /// the import, and with `Ended` (ABORTED) when it was an error.
    async fn conclude(&self, conclusion: Conclusion, reply: Reply) -> Result<Import, ImportError> {
        let key = self.import.key;
        let stored = (|| {
            self.store
                .conclude_import(key, &conclusion, Guard::Processing)
        })
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
                    (Reply::Import | Reply::Error(_), _) => Err(ImportError::Ended),
                }
            }
            Err(e) => {
                let (kept, reply) = unstored(conclusion, &e);
                tracing::error!(
                    import_id = %self.import.import_id, error = e.detail(),
                    status = kept.status().as_str(),
                    "cannot store the end of an import yet; storing it in the background"
                );
                self.count(&kept);
                // Kept before the live view goes: a reader never sees the import PROCESSING
                // again.
                let decided = kept.applied_to(self.import, SystemTime::now());
                self.endings.keep(decided, Disposal::Conclude(kept));
                self.hub.forget(key);
                Err(ImportError::Unavailable(reply))
            }
        }
    }

    /// Counts the ending once it is decided for good: stored, or kept to be stored.
    fn count(&self, conclusion: &Conclusion) {
        self.metrics.import_ended(
            conclusion.status(),
            &conclusion.counters(),
            self.import.validate_only,
            self.started.elapsed(),
        );
    }
}

/// An ending that cannot be stored now (`error`): what is kept to be stored later, and what
/// the client is told. A completion becomes ERROR_UNKNOWN: its client hears that it did not
/// complete, so none of its users may stay.
fn unstored(conclusion: Conclusion, error: &StoreError) -> (Conclusion, String) {
    if conclusion.removes_users() {
        let reply = format!(
            "{} (the server stores this ending once the database can be written again: {error})",
            conclusion.error_message()
        );
        return (conclusion, reply);
    }
    let kept = Conclusion::new(
        ImportStatus::ErrorUnknown,
        conclusion.counters(),
        conclusion.format(),
        format!(
            "{error} when the import completed, so nothing was imported; upload the file again"
        ),
    );
    let reply = format!(
        "the import could not be completed: {error}; nothing was imported, upload the file again \
         once the service is ready"
    );
    (kept, reply)
}

/// Retries while the client waits for its answer: a short hiccup of the database, not an
/// outage (the upkeep takes over after this). At most 6 retries, from 100 ms apart up to 1 s,
/// within 3 s in all, so that the client's answer is not held for long.
fn storing() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_total_delay(Some(Duration::from_secs(3)))
        .with_max_times(6)
}
