//! The start of an upload, before its import exists: the metadata message, then every check
//! that can refuse it, in order (the caller's right to the account, the admission limits, the
//! store's health, `retry_of_import_id`, a taken id).
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
use crate::store::StoreError;

/// Reads the metadata and creates the import PROCESSING, holding its admission place; or
/// refuses the upload, and logs why.
pub(super) async fn start<S>(
    ctx: &Context,
    caller: &Caller,
    events: &mut S,
) -> Result<(Import, Admitted), ImportError>
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

/// The checks that need the server and the store, then the import, created PROCESSING.
async fn create(ctx: &Context, new: NewImport) -> Result<(Import, Admitted), ImportError> {
    let admitted = ctx.admission.admit(&new.account_id)?;
    if let Some(fault) = ctx.store.fault() {
        return Err(ImportError::Unavailable(format!(
            "{fault}, so no upload is taken until there is room; retry once the service \
             reports ready again"
        )));
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
        Ok(import) => Ok((import, admitted)),
        Err(StoreError::AlreadyExists) => {
            // A retry: say how the first try ended (as this server knows it best).
            let status = match ctx.store.get_import(&new.account_id, &new.import_id).await {
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
