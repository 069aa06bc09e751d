//! The one decision per cause: how the import ends, and what its client is told. Pure: it
//! reads the import as created and the counters it reached, and writes nothing, so that every
//! owner of a moment of ending (an upload, recovery, the reaper) takes its decision from here.
//!
//! The rules it keeps:
//!
//! - only a completion keeps users; every other ending removes them, and its counters say so
//!   (`Counters::ended_as`: nothing imported, skipped or updated);
//! - a cancel asked before the ending is stored wins over a completion;
//! - content that is not CSV leaves no import behind, when the import can be removed.
//!
//! It also logs each ending once, without quoting the file: completions and refusals at info,
//! failures at warn, plus an error line with the detail of a failed write or a panic.

use super::{Cause, INTERRUPTED};
use crate::domain::text::escape_controls;
use crate::domain::{ArgumentError, Counters, Import, ImportStatus, TextFormat};
use crate::import::error::ImportError;
use crate::store::{Conclusion, StoreError};

/// What becomes of the import.
#[derive(Debug, Clone)]
pub enum Disposal {
    /// It ends with this conclusion.
    Conclude(Conclusion),
    /// It is removed as if it never was; if that cannot be done, it ends with this instead.
    /// Only an upload can remove its import: recovery and the reaper store the conclusion.
    Discard(Conclusion),
    /// A resumable upload that stopped before its finish message: the import waits for its
    /// client to resume it (`Store::park_import`), for `--resume-window`. If it cannot be made
    /// to wait, it ends with this instead.
    Wait(Conclusion),
}

impl Disposal {
    /// The conclusion stored, or stored instead of a removal that cannot be done.
    pub fn conclusion(&self) -> &Conclusion {
        match self {
            Disposal::Conclude(c) | Disposal::Discard(c) | Disposal::Wait(c) => c,
        }
    }
}

/// What the client is told once the disposal is stored.
#[derive(Debug)]
pub enum Reply {
    /// The import as stored: its status and message tell how it ended.
    Import,
    /// This error, once the ending is stored; the import can still be read with `GetImport`
    /// (unless it was discarded).
    Error(ImportError),
}

/// A cause's decision.
#[derive(Debug)]
pub struct Decision {
    /// What becomes of the import.
    pub disposal: Disposal,
    /// What the uploading client is told, if one waits; recovery and the reaper ignore it.
    pub reply: Reply,
}

/// Decides how `import` ends for `cause`, from the counters it `reached` and the text format
/// read. Messages quote the file at times (a header name, a value): control characters are
/// escaped, so that no NUL, which PostgreSQL text cannot hold, reaches the store or the client.
pub fn decide(
    cause: Cause,
    import: &Import,
    reached: Counters,
    format: Option<TextFormat>,
) -> Decision {
    let id = &import.import_id;
    let kind = cause.kind();
    let ending = |status, message: &str| {
        Conclusion::new(
            status,
            reached,
            format,
            escape_controls(message).into_owned(),
        )
    };
    let unknown = |message: &str| ending(ImportStatus::ErrorUnknown, message);
    let cancelled = || {
        let message = "the import was cancelled (CancelImport), so nothing was imported or \
                       updated";
        (
            ending(ImportStatus::Cancelled, message),
            Reply::Error(ImportError::ImportCancelled(message.to_owned())),
        )
    };
    // A resumable upload whose client or server went away waits for the client instead of
    // ending; the other causes end it as they would any upload.
    let waits = import.resumable && cause.leaves_waiting();
    let stalled_for = match &cause {
        Cause::Stalled(idle) => Some(idle.as_secs()),
        _ => None,
    };
    let (conclusion, reply) = match cause {
        Cause::Completed { cancel_asked: true } => cancelled(),
        Cause::Completed {
            cancel_asked: false,
        } => {
            let status = ImportStatus::completed(reached.rows_processed, reached.rows_failed);
            tracing::info!(
                account_id = %import.account_id, import_id = %id,
                created_by = import.created_by.as_str(),
                status = status.as_str(), rows_processed = reached.rows_processed,
                rows_imported = reached.rows_imported, rows_failed = reached.rows_failed,
                "import completed"
            );
            (ending(status, ""), Reply::Import)
        }
        Cause::NotCsv(e) => {
            tracing::info!(
                account_id = %import.account_id, import_id = %id,
                created_by = import.created_by.as_str(), reason = %e, "upload refused"
            );
            let instead = unknown(&e.to_string());
            let reply = e.into();
            return Decision {
                disposal: Disposal::Discard(instead),
                reply: Reply::Error(reply),
            };
        }
        Cause::Parsing(message) => (ending(ImportStatus::ErrorParsing, &message), Reply::Import),
        Cause::Mismatch(message) => (unknown(&message), Reply::Import),
        Cause::TooLarge(e) => (unknown(&e.to_string()), Reply::Error(e.into())),
        Cause::Incomplete => {
            let message = "the upload ended before its finish message, so nothing was \
                           imported; upload the whole file again";
            let reply = ArgumentError::new("finish", message).into();
            (unknown(message), Reply::Error(reply))
        }
        Cause::Broken(detail) => (
            unknown(
                "the upload stream broke before its finish message, so nothing was imported; \
                 upload the whole file again",
            ),
            Reply::Error(ImportError::StreamBroke(detail)),
        ),
        Cause::Protocol(e) => (
            unknown(&format!(
                "the upload was malformed ({}), so nothing was imported",
                e.described()
            )),
            Reply::Error(e.into()),
        ),
        Cause::Cancelled => cancelled(),
        Cause::Stalled(idle) => {
            let message = super::stalled(idle);
            (
                unknown(&message),
                Reply::Error(ImportError::Stalled(message)),
            )
        }
        Cause::ShuttingDown => (
            unknown(
                "the server shut down during the upload, so nothing was imported; upload the \
                 file again",
            ),
            Reply::Error(ImportError::ShuttingDown),
        ),
        Cause::Store(e) => {
            tracing::error!(import_id = %id, error = e.detail(), "a write failed");
            (unknown(&write_failed(&e)), Reply::Error(e.into()))
        }
        Cause::Panicked(message) => {
            tracing::error!(import_id = %id, panic = message, "import panicked");
            (
                unknown(
                    "an internal error ended the import, so nothing was imported; upload the \
                     file again, and report it if it happens again",
                ),
                Reply::Error(ImportError::Internal(format!(
                    "the upload panicked: {message}"
                ))),
            )
        }
        // Nobody waits for an answer: the client went with its server.
        Cause::Interrupted | Cause::Abandoned => (unknown(INTERRUPTED), Reply::Import),
        Cause::NotResumed(window) => (
            unknown(&format!(
                "the upload was not resumed within {}, so nothing was imported; upload the \
                 file again",
                super::duration_words(window)
            )),
            Reply::Import,
        ),
    };
    if waits {
        tracing::info!(
            account_id = %import.account_id, import_id = %id,
            created_by = import.created_by.as_str(), cause = kind,
            "resumable upload stopped; the import waits for its client"
        );
        let resume = format!(
            "import '{id}' waits for the rest: resume it from its committed_bytes (GetImport)"
        );
        let reply = match reply {
            Reply::Error(ImportError::Stalled(_)) => Reply::Error(ImportError::Stalled(format!(
                "upload stalled: nothing arrived for {} s; {resume}",
                stalled_for.unwrap_or_default()
            ))),
            // The client half-closed without its finish message: not a malformed upload of a
            // resumable import, which may be sent in parts.
            Reply::Error(ImportError::InvalidArgument(_)) => Reply::Error(ImportError::Paused(
                format!("the upload ended before its finish message; {resume}"),
            )),
            reply => reply,
        };
        return Decision {
            disposal: Disposal::Wait(conclusion),
            reply,
        };
    }
    if conclusion.removes_users() {
        // Not the error message: it may quote the file (a header's columns).
        tracing::warn!(
            account_id = %import.account_id, import_id = %id,
            created_by = import.created_by.as_str(), cause = kind,
            status = conclusion.status().as_str(), "import failed"
        );
    }
    Decision {
        disposal: Disposal::Conclude(conclusion),
        reply,
    }
}

/// Why a failed write ended the import, in the words its ending keeps: the cause in plain
/// words where the store classified it, a generic database error otherwise (the detail is in
/// the log, not in the import).
fn write_failed(error: &StoreError) -> String {
    let database_error = "the import failed because of a database error, so nothing was \
                          imported; upload the file again";
    match error {
        StoreError::Unavailable { outage, .. } => format!(
            "the import failed because {outage}, so nothing was imported; upload the file again"
        ),
        StoreError::Fault { fault, .. } => format!(
            "the import failed because {fault}, so nothing was imported; upload the file again \
             once there is room"
        ),
        StoreError::Conflict(_) => "the import failed because the database kept aborting its \
                                    writes in favour of another import's, so nothing was \
                                    imported; upload the file again"
            .to_owned(),
        StoreError::NotProcessing => "the import was ended by another server while it ran, so \
                                      nothing was imported; upload the file again"
            .to_owned(),
        e @ StoreError::FileKeysLost(_) => format!(
            "the import failed because {e}, so nothing was imported; upload the whole file \
             again"
        ),
        StoreError::AlreadyExists
        | StoreError::StillRunning
        | StoreError::BeingUpdated(_)
        | StoreError::Config(_)
        | StoreError::Migrate(_)
        | StoreError::Corrupt(_)
        | StoreError::Database(_) => database_error.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AccountId, ConflictPolicy, Filename, ImportId, ImportType};
    use std::time::SystemTime;

    /// An import as created: PROCESSING, nothing counted.
    fn import() -> Import {
        Import {
            key: 1,
            account_id: AccountId::parse("acme").unwrap(),
            import_id: ImportId::parse("i1").unwrap(),
            kind: ImportType::Users,
            filename: Filename::parse("users.csv").unwrap(),
            created_by: String::new(),
            validate_only: false,
            on_conflict: ConflictPolicy::Update,
            retry_of: None,
            status: ImportStatus::Processing,
            counters: Counters::default(),
            format: None,
            error_message: String::new(),
            create_time: SystemTime::UNIX_EPOCH,
            update_time: SystemTime::UNIX_EPOCH,
            complete_time: None,
            revert_time: None,
            details_removed_time: None,
            invitations: Default::default(),
            users_invited: 0,
            resumable: false,
            committed_bytes: 0,
            resume_deadline: None,
            revert_note: String::new(),
        }
    }

    /// Counters with something in every field an ending may keep or drop.
    fn reached() -> Counters {
        Counters {
            bytes_received: 100,
            rows_processed: 4,
            rows_imported: 1,
            rows_failed: 1,
            row_errors_omitted: 0,
            rows_skipped: 1,
            rows_updated: 1,
        }
    }

    /// The same counters complete, or end CANCELLED when a cancel was asked meanwhile, with
    /// the counters a failed ending keeps and the uploading client told so.
    #[test]
    fn a_cancel_asked_before_the_ending_wins_over_the_completion() {
        let completed = decide(
            Cause::Completed {
                cancel_asked: false,
            },
            &import(),
            reached(),
            None,
        );
        assert_eq!(
            completed.disposal.conclusion().status(),
            ImportStatus::CompletedPartial
        );
        assert_eq!(completed.disposal.conclusion().counters(), reached());
        let cancelled = decide(
            Cause::Completed { cancel_asked: true },
            &import(),
            reached(),
            None,
        );
        let conclusion = cancelled.disposal.conclusion();
        assert_eq!(conclusion.status(), ImportStatus::Cancelled);
        assert!(matches!(
            cancelled.reply,
            Reply::Error(ImportError::ImportCancelled(_))
        ));
        assert_eq!(
            conclusion.counters(),
            reached().ended_as(conclusion.status())
        );
    }

    /// Whatever the cause, a failed ending's counters say that no user stayed, and keep what
    /// was read.
    #[test]
    fn every_failed_ending_keeps_nothing_it_imported_skipped_or_updated() {
        let causes = || {
            vec![
                Cause::Mismatch("size".into()),
                Cause::Parsing("bad".into()),
                Cause::Incomplete,
                Cause::Broken("reset".into()),
                Cause::ShuttingDown,
                Cause::Stalled(std::time::Duration::from_secs(60)),
                Cause::Cancelled,
                Cause::Store(StoreError::NotProcessing),
                Cause::Panicked("boom".into()),
                Cause::Interrupted,
                Cause::Abandoned,
            ]
        };
        for cause in causes() {
            let kind = cause.kind();
            let decision = decide(cause, &import(), reached(), None);
            let c = decision.disposal.conclusion().counters();
            assert_eq!(
                (c.rows_imported, c.rows_skipped, c.rows_updated),
                (0, 0, 0),
                "{kind}"
            );
            assert_eq!((c.rows_processed, c.rows_failed), (4, 1), "{kind}");
        }
    }

    /// Recovery and the reaper end an import in ERROR_UNKNOWN with `INTERRUPTED`.
    #[test]
    fn a_server_that_stopped_is_named_in_the_ending() {
        for cause in [Cause::Interrupted, Cause::Abandoned] {
            let decision = decide(cause, &import(), reached(), None);
            let conclusion = decision.disposal.conclusion();
            assert_eq!(conclusion.status(), ImportStatus::ErrorUnknown);
            assert!(conclusion.error_message().contains("server stopped"));
        }
    }

    /// A resumable upload whose client or server went away waits for its client; one that
    /// failed on its own (a parse error, a cancel, a bad message) ends as any upload does.
    #[test]
    fn a_resumable_upload_waits_only_when_its_client_or_server_went_away() {
        let resumable = Import {
            resumable: true,
            ..import()
        };
        for cause in [
            Cause::Incomplete,
            Cause::Broken("reset".into()),
            Cause::ShuttingDown,
            Cause::Stalled(std::time::Duration::from_secs(60)),
            Cause::Interrupted,
            Cause::Abandoned,
        ] {
            let kind = cause.kind();
            let decision = decide(cause, &resumable, reached(), None);
            assert!(matches!(decision.disposal, Disposal::Wait(_)), "{kind}");
            assert!(
                !matches!(
                    decision.reply,
                    Reply::Error(ImportError::InvalidArgument(_))
                ),
                "{kind}"
            );
        }
        for cause in [
            Cause::Parsing("bad".into()),
            Cause::Cancelled,
            Cause::Mismatch("size".into()),
            Cause::Protocol(ArgumentError::new("chunk", "bad")),
        ] {
            let kind = cause.kind();
            let decision = decide(cause, &resumable, reached(), None);
            assert!(matches!(decision.disposal, Disposal::Conclude(_)), "{kind}");
        }
        let plain = decide(Cause::Broken("reset".into()), &import(), reached(), None);
        assert!(matches!(plain.disposal, Disposal::Conclude(_)));
        let expired = decide(
            Cause::NotResumed(std::time::Duration::from_secs(24 * 3600)),
            &resumable,
            reached(),
            None,
        );
        let conclusion = expired.disposal.conclusion();
        assert_eq!(conclusion.status(), ImportStatus::ErrorUnknown);
        assert!(
            conclusion
                .error_message()
                .contains("the upload was not resumed within 24 h"),
            "{}",
            conclusion.error_message()
        );
    }
}
