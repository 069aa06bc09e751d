//! An import's ending as both stores write it, in one order, in one transaction: the status
//! first, so that only an import still PROCESSING (and whose guard holds) loses anything;
//! then, for an ending that is not a completion, its users removed and its updates undone;
//! then what only a running import needs (its file keys; the values its updates replaced stay
//! in its users' rows, where nothing reads them once it ended);
//! then, for a completion, its events; and a change notification last. What the ending *is*
//! was decided in the import layer (`import::ending`); this only stores it.
//!
//! Why this order:
//!
//! - the status first, guarded: it is the one statement that can find the import no longer
//!   PROCESSING (another server ended it, or the guard of an abandoned import no longer holds),
//!   and then nothing else runs: an ending that lost must neither remove the users of an import
//!   that still runs nor undo again what another ending undid;
//! - the users created before the updates undone: a restored user may take back an external id
//!   that one of the import's own new users holds;
//! - the events after everything that takes time: they take the feed's turn (PostgreSQL), which
//!   every transaction that writes events waits for, held to the commit;
//! - the notification last: PostgreSQL delivers it at commit, and a follower that wakes reads the
//!   import as this transaction leaves it.

use super::steps::{Param, Steps};
use super::{Conclusion, Guard, StoreError};
use crate::domain::{Import, ImportKey, InvitationPolicy};

/// Stores `conclusion` for import `key` if `guard` holds; `NotProcessing` otherwise, with
/// nothing changed.
///
/// The one write of an ending, on either backend, whatever decided it (the upload's own end, a
/// cancel, recovery at start, the reaper). The caller's transaction commits or rolls back all of
/// it: an error after the status leaves the import PROCESSING, to be ended again.
pub(crate) async fn conclude<S: Steps + ?Sized>(
    steps: &mut S,
    key: ImportKey,
    conclusion: &Conclusion,
    guard: Guard,
) -> Result<Import, StoreError> {
    let Some(import) = steps.set_ending(key, conclusion, guard).await? else {
        return Err(StoreError::NotProcessing);
    };
    if conclusion.removes_users() {
        undo(steps, key).await?;
    }
    forget(steps, key).await?;
    if import.status.is_completed() && !import.validate_only {
        // What the commit tells the feed, in its transaction: last, since it holds the feed's
        // turn (PostgreSQL) until the commit.
        let invited =
            (import.invitations == InvitationPolicy::Send).then_some(import.counters.rows_imported);
        super::events::at_commit(steps, key, invited).await?;
    }
    steps.changed(&[key]).await?;
    Ok(import)
}

/// Removes an import refused before it began (its content is not CSV), as if it never was.
///
/// No guard: only the server that created the import calls it, from the import's own ending.
/// Whatever may have been written is undone first, then the import's row goes, so `GetImport`
/// answers NOT_FOUND and the id can be used again.
pub(crate) async fn discard<S: Steps + ?Sized>(
    steps: &mut S,
    key: ImportKey,
) -> Result<(), StoreError> {
    undo(steps, key).await?;
    forget(steps, key).await?;
    steps.execute(DELETE_IMPORT, &[Param::Int(key)]).await?;
    steps.changed(&[key]).await?;
    Ok(())
}

/// Asks the server that runs import `key` to cancel it (it follows its import's changes);
/// `NotProcessing` when it had ended.
///
/// This only sets a flag and notifies: the server that runs the import follows its changes, reads
/// the flag (`Store::cancel_requested`) and ends the import itself, through `conclude`, so that
/// its batches and its ending keep their order. `CancelImport` on the server that runs the upload
/// cancels it there directly, without this.
pub(crate) async fn request_cancel<S: Steps + ?Sized>(
    steps: &mut S,
    key: ImportKey,
) -> Result<(), StoreError> {
    if steps.execute(REQUEST_CANCEL, &[Param::Int(key)]).await? == 0 {
        return Err(StoreError::NotProcessing);
    }
    steps.changed(&[key]).await
}

/// A discarded import's own row; its row errors and failed rows' cells go with it (`ON DELETE
/// CASCADE`).
const DELETE_IMPORT: &str = "DELETE FROM imports WHERE import_key = $1";

/// The flag, only on a running import: 0 rows changed is `NotProcessing`.
const REQUEST_CANCEL: &str = "UPDATE imports SET cancel_requested = true \
    WHERE import_key = $1 AND status = 'PROCESSING'";

/// The external ids of the users an import updated are cleared before their old values come
/// back: the unique index checks row by row, and the import may have given an id one user
/// released to another (or to a user it created). The users an import updated are the ones
/// whose `updated_by` it is (through their partial index), and their `old_*` columns hold what
/// it replaced (`sqlite::capi::UPDATE_USER`, `postgres::apply::update_users`).
const CLEAR_RESTORED_IDS: &str = "UPDATE users SET external_id = NULL \
    WHERE updated_by = $1 AND external_id IS NOT NULL";

/// Old external ids that cannot come back: another import took them meanwhile.
const LOST_IDS: &str = "SELECT count(*) FROM users AS u WHERE u.updated_by = $1 \
    AND u.old_external_id IS NOT NULL AND EXISTS (SELECT 1 FROM users AS o \
        WHERE o.account_key = u.account_key AND o.external_id = u.old_external_id)";

/// The values an import's updates replaced, put back, its mark included (`updated_by` goes
/// back to the import before, if any); an old external id another user holds now stays
/// cleared. The `old_*` columns are left as they are: they mean something only while the
/// user's `updated_by` import runs, and readers ask that first.
const RESTORE_UPDATED: &str = "UPDATE users SET first_name = old_first_name, \
    last_name = old_last_name, role = old_role, job_title = old_job_title, \
    update_time = old_update_time, updated_by = old_updated_by, \
    external_id = CASE WHEN EXISTS (SELECT 1 FROM users AS o \
        WHERE o.account_key = users.account_key AND o.external_id = users.old_external_id) \
        THEN NULL ELSE old_external_id END \
    WHERE updated_by = $1";

/// Puts back what a failed or cancelled import changed: the users it created go, then the
/// users it updated get their values back (with their external ids cleared first, see
/// `CLEAR_RESTORED_IDS`). An old id that another import took meanwhile cannot come back: the
/// user is restored without it, and the log says how many.
async fn undo<S: Steps + ?Sized>(steps: &mut S, key: ImportKey) -> Result<(), StoreError> {
    steps.delete_created(key).await?;
    steps
        .execute(CLEAR_RESTORED_IDS, &[Param::Int(key)])
        .await?;
    let lost = steps.count(LOST_IDS, &[Param::Int(key)]).await?;
    steps.execute(RESTORE_UPDATED, &[Param::Int(key)]).await?;
    if lost > 0 {
        tracing::warn!(
            import_key = key,
            users = lost,
            "an undone update could not give these users back their external id: another \
             import has taken it since; they are restored without one"
        );
    }
    Ok(())
}

/// What an ended import no longer needs: the values its rows held in the file (needed only to
/// judge its later rows: their table goes at once, `claims`). The values its updates replaced
/// stay in its users' rows, where nothing reads them once it ended (`RESTORE_UPDATED`).
async fn forget<S: Steps + ?Sized>(steps: &mut S, key: ImportKey) -> Result<(), StoreError> {
    for drop in super::claims::drop(key) {
        steps.execute_claims(&drop).await?;
    }
    Ok(())
}
