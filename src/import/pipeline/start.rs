//! The start of an upload, before its import exists: the metadata message, then every check
//! that can refuse it, in order (the caller's right to the account, the admission limits, the
//! store's health, `retry_of_import_id`, a taken id). A resumable upload whose import exists
//! is a resume: the import must wait for its client, with the same metadata, and
//! `resume_offset` must be its `committed_bytes`; then this server takes it (`resume`).
//!
//! A refusal here is only an answer: there is no import to end. Each is logged once, with who
//! asked (`created_by`, the token's name), in which account and why: "upload refused" at
//! info, or PERMISSION_DENIED in the audit lines (`crate::audit`).

use futures::Stream;

use super::Context;
use super::admission::Admitted;
use super::events::{self, StreamError, UploadEvent};
use crate::domain::{ArgumentError, Caller, Import, NewImport};
use crate::import::ending::stalled;
use crate::import::error::ImportError;
use crate::store::{Claimed, StoreError};

/// What `start` began: the import, created or resumed, and the upload's place.
pub(super) struct Started {
    /// The import, PROCESSING and driven by this upload.
    pub import: Import,
    /// The upload's admission place, held until it ends.
    pub admitted: Admitted,
    /// For a resume: where the upload stopped.
    pub resumed: Option<Claimed>,
}

/// Reads the metadata and creates the import PROCESSING, holding its admission place; or
/// refuses the upload, and logs why.
pub(super) async fn start<S>(
    ctx: &Context,
    caller: &Caller,
    events: &mut S,
) -> Result<Started, ImportError>
where
    S: Stream<Item = Result<UploadEvent, StreamError>> + Unpin,
{
    let new = metadata(ctx, events).await.inspect_err(|e| {
        // Before its metadata an upload names no account: a stream opened and dropped costs a
        // client nothing, so these lines are throttled (one a second, with the count left out)
        // lest a flood of them fill the log.
        static BEFORE_METADATA: crate::audit::Throttle = crate::audit::Throttle::new();
        BEFORE_METADATA.warn(|suppressed| {
            tracing::info!(created_by = caller.name(), reason = %e, suppressed, "upload refused");
        });
    })?;
    // Before anything else, and before a byte of the file is read: the same check as every
    // other request's (`grpc::auth::scoped`).
    let scope = caller.scope(new.account_id.clone()).map_err(|account| {
        crate::audit::denied(caller.name(), account.as_str(), "UploadImport", None);
        ImportError::PermissionDenied(account)
    })?;
    let new = NewImport {
        created_by: scope.caller().name().to_owned(),
        ..new
    };
    let (account_id, import_id) = (new.account_id.clone(), new.import_id.clone());
    create(ctx, new).await.inspect_err(|e| {
        tracing::info!(
            account_id = %account_id, import_id = %import_id, created_by = caller.name(),
            reason = %e, "upload refused"
        );
    })
}

/// The metadata message, within the idle timeout, unless the server is shutting down.
async fn metadata<S>(ctx: &Context, events: &mut S) -> Result<NewImport, ImportError>
where
    S: Stream<Item = Result<UploadEvent, StreamError>> + Unpin,
{
    let idle = ctx.config.idle_timeout;
    let metadata = tokio::time::timeout(idle, events::metadata(events));
    tokio::select! {
        biased;
        _ = ctx.shutdown.cancelled() => Err(ImportError::ShuttingDown),
        new = metadata => match new {
            Ok(new) => new,
            Err(_) => Err(ImportError::Stalled(stalled(idle))),
        },
    }
}

/// The checks that need the server and the store, then the import, created PROCESSING (or
/// resumed, see `resume`).
async fn create(ctx: &Context, new: NewImport) -> Result<Started, ImportError> {
    let admitted = ctx.admission.admit(&new.account_id)?;
    if let Some(fault) = ctx.store.fault() {
        return Err(ImportError::Unavailable(format!(
            "{fault}, so no upload is taken until there is room; retry once the service \
             reports ready again"
        )));
    }
    if new.resumable {
        let existing = ctx
            .store
            .get_import(&new.account_id, &new.import_id)
            .await?;
        if let Some(existing) = existing {
            let claimed = resume(ctx, &new, existing).await?;
            return Ok(Started {
                import: claimed.import.clone(),
                admitted,
                resumed: Some(claimed),
            });
        }
        if new.resume_offset > 0 {
            ctx.metrics.resume_asked("not_found");
            return Err(ImportError::NotFound {
                account_id: new.account_id,
                import_id: new.import_id,
            });
        }
    }
    if let Some(retry_of) = &new.retry_of
        && ctx
            .store
            .get_import(&new.account_id, retry_of)
            .await?
            .is_none()
    {
        return Err(ArgumentError::new(
            "retry_of_import_id",
            format!(
                "retry_of_import_id '{retry_of}' names no import of account '{}'; give the id of \
                 the import whose error report this file corrects, or leave it empty",
                new.account_id
            ),
        )
        .into());
    }
    match ctx.store.create_import(&new).await {
        Ok(import) => Ok(Started {
            import,
            admitted,
            resumed: None,
        }),
        Err(StoreError::AlreadyExists) => {
            // A retry: say how the first try ended (as this server knows it best).
            let existing = ctx.store.get_import(&new.account_id, &new.import_id).await;
            if new.resumable
                && let Ok(Some(existing)) = existing
            {
                // Two first uploads at once: the other one runs, or already waits (its stream
                // broke at once), and this one then resumes it.
                let claimed = resume(ctx, &new, existing).await?;
                return Ok(Started {
                    import: claimed.import.clone(),
                    admitted,
                    resumed: Some(claimed),
                });
            }
            let status = match existing {
                Ok(Some(existing)) => Some(ctx.endings.overlay(existing).status),
                // Gone again, or unreadable now: the answer says to look it up.
                Ok(None) | Err(_) => None,
            };
            Err(ImportError::AlreadyExists {
                account_id: new.account_id,
                import_id: new.import_id,
                status,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// A resume of `existing`: refused unless it waits for its client, the metadata is the first
/// upload's and `resume_offset` is its `committed_bytes`; then taken for this server, in one
/// guarded write, so that of two resumes at once one runs and the other is told it does.
async fn resume(ctx: &Context, new: &NewImport, existing: Import) -> Result<Claimed, ImportError> {
    let refused = |outcome: &'static str, error: ImportError| {
        ctx.metrics.resume_asked(outcome);
        Err(error)
    };
    let existing = ctx.endings.overlay(existing);
    if existing.status.is_terminal() {
        return refused(
            "ended",
            ImportError::AlreadyExists {
                account_id: new.account_id.clone(),
                import_id: new.import_id.clone(),
                status: Some(existing.status),
            },
        );
    }
    if !existing.waiting() {
        let how = if existing.resumable {
            "its upload runs on another stream; wait for that stream to end (WatchImport \
             shows resume_deadline once it waits), or cancel the import"
        } else {
            "it was not uploaded with resumable, and its upload runs; follow it with \
             WatchImport"
        };
        return refused(
            if existing.resumable {
                "running"
            } else {
                "not_resumable"
            },
            ImportError::FailedPrecondition(format!(
                "import '{}' cannot be resumed now: {how}",
                existing.import_id
            )),
        );
    }
    if let Some(error) = changed_field(new, &existing) {
        return refused("changed_metadata", error.into());
    }
    if new.resume_offset != existing.committed_bytes {
        return refused(
            "wrong_offset",
            ImportError::ResumeOffset {
                import_id: existing.import_id.clone(),
                committed_bytes: existing.committed_bytes,
                given: new.resume_offset,
            },
        );
    }
    match ctx
        .store
        .claim_import(existing.key, new.resume_offset)
        .await
    {
        Ok(claimed) => {
            ctx.metrics.resume_asked("resumed");
            tracing::info!(
                account_id = %new.account_id, import_id = %new.import_id,
                committed_bytes = claimed.import.committed_bytes, "upload resumed"
            );
            Ok(claimed)
        }
        // Taken by another resume, ended, or moved on meanwhile: answer from what it is now.
        Err(StoreError::NotProcessing) => {
            let now = ctx
                .store
                .get_import(&new.account_id, &new.import_id)
                .await?;
            match now {
                Some(now) if !now.waiting() || now.committed_bytes != new.resume_offset => {
                    Box::pin(resume(ctx, new, now)).await
                }
                Some(_) | None => Err(ImportError::Ended),
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The first field of a resume's metadata that differs from its import's first upload, as
/// INVALID_ARGUMENT naming it: a resume goes on with the same file, read the same way.
fn changed_field(new: &NewImport, existing: &Import) -> Option<ArgumentError> {
    let differs = |field: &'static str, given: &str, first: &str| {
        ArgumentError::new(
            field,
            format!(
                "{field} is '{given}' but import '{}' was uploaded with '{first}'; a resume \
                 sends the first upload's metadata unchanged, with only resume_offset new",
                existing.import_id
            ),
        )
    };
    let id = |id: &Option<crate::domain::ImportId>| {
        id.as_ref().map(ToString::to_string).unwrap_or_default()
    };
    if new.filename.as_str() != existing.filename.as_str() {
        Some(differs(
            "filename",
            new.filename.as_str(),
            existing.filename.as_str(),
        ))
    } else if new.kind != existing.kind {
        Some(differs("type", new.kind.as_str(), existing.kind.as_str()))
    } else if new.validate_only != existing.validate_only {
        let show = |b: bool| b.to_string();
        Some(differs(
            "validate_only",
            &show(new.validate_only),
            &show(existing.validate_only),
        ))
    } else if new.on_conflict != existing.on_conflict {
        Some(differs(
            "on_conflict",
            new.on_conflict.as_str(),
            existing.on_conflict.as_str(),
        ))
    } else if new.invitations != existing.invitations {
        Some(differs(
            "invitations",
            new.invitations.as_str(),
            existing.invitations.as_str(),
        ))
    } else if new.retry_of != existing.retry_of {
        Some(differs(
            "retry_of_import_id",
            &id(&new.retry_of),
            &id(&existing.retry_of),
        ))
    } else {
        None
    }
}
