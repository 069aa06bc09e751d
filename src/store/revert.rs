//! `RevertImport` as both stores write it: the users a finished import created are removed,
//! except those another import has updated since (removing them would lose that import's
//! changes), and the import keeps the time and a note of what was done. A second revert
//! removes nothing and keeps the first time and note.
//!
//! Only the users the import *created* go; the users it updated keep its values, since an ended
//! import keeps no record of what its updates replaced (see `ending`). Users an import created
//! and another import later changed are kept, and counted in the note, so that nobody loses a
//! later import's work by reverting an earlier one. So are users who accepted their invitation:
//! an active person is never deleted by an undo.

use super::steps::{Param, RevertState, Steps};
use super::{Reverted, StoreError};
use crate::domain::{ImportKey, ImportStatus};

/// Reverts import `key`: `StillRunning` while it runs, `BeingUpdated` while an UPDATE import
/// still running has changed some of its users (whose ending decides whether they are kept),
/// with nothing changed in either case.
///
/// An import that is not there is `Corrupt`: the caller found it before calling, and imports are
/// never deleted once they have begun (only a discard removes one, before it began). The import's
/// status is held first (`Steps::revert_state`), so that a revert and an ending of the same
/// import take turns.
pub(crate) async fn revert<S: Steps + ?Sized>(
    steps: &mut S,
    key: ImportKey,
) -> Result<Reverted, StoreError> {
    let Some(state) = steps.revert_state(key).await? else {
        return Err(StoreError::Corrupt(format!("import {key} is gone")));
    };
    let (removed, kept) = match state {
        RevertState {
            status: ImportStatus::Processing,
            ..
        } => return Err(StoreError::StillRunning),
        RevertState { reverted: true, .. } => (0, Kept::default()),
        RevertState {
            reverted: false, ..
        } => {
            let (updated, updater) = steps.updated_by_others(key).await?;
            if let Some(import_id) = updater {
                return Err(StoreError::BeingUpdated(import_id));
            }
            let accepted = steps.count(ACCEPTED, &[Param::Int(key)]).await?;
            // The feed is told of each user before it goes, in this transaction.
            super::events::removed(steps, key).await?;
            (
                steps.delete_reverted(key).await?,
                Kept { updated, accepted },
            )
        }
    };
    let import = steps.note_revert(key, &note(removed, kept, state)).await?;
    steps.changed(&[key]).await?;
    Ok(Reverted {
        import,
        removed,
        kept: kept.updated + kept.accepted,
        first: !state.reverted,
    })
}

/// The users a revert keeps, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Kept {
    /// Another import has updated them since: removing them would lose its work.
    updated: u64,
    /// They accepted their invitation: an active person is never deleted by an undo.
    accepted: u64,
}

/// The import's users that accepted their invitation and no other import updated (those are
/// counted as updated): what `delete_reverted` keeps for that reason.
const ACCEPTED: &str = "SELECT count(*) FROM users WHERE import_key = $1 \
    AND (updated_by IS NULL OR updated_by = $1) AND invitation_state = 'ACCEPTED'";

/// The note a revert leaves on its import, and says in its answer (a later revert quotes it):
/// plain words for a person reading `GetImport`, how many users went and, when some stayed,
/// why; and when there was nothing to remove, why there was nothing.
fn note(removed: u64, kept: Kept, state: RevertState) -> String {
    if kept.accepted > 0 {
        let updated = match kept.updated {
            0 => String::new(),
            n => format!(", and {n} because another import has updated them since"),
        };
        return format!(
            "reverted: {removed} users removed; {} kept because they accepted their invitation \
             (an active person is never deleted by an undo){updated}",
            kept.accepted
        );
    }
    match (removed, kept.updated) {
        (0, 0) if state.dry_run => {
            "reverted: nothing to remove, as a dry run writes no user".to_owned()
        }
        (0, 0) if state.status == ImportStatus::CompletedNothingToImport => {
            "reverted: nothing to remove, as the file had no data rows".to_owned()
        }
        (0, 0) if !state.status.is_completed() => format!(
            "reverted: nothing to remove, as the import ended {} and kept no user",
            state.status.words()
        ),
        (0, 0) => "reverted: nothing to remove, as the import created no users (its rows were \
                   skipped, updated or failed)"
            .to_owned(),
        (removed, 0) => format!("reverted: {removed} users removed"),
        (removed, kept) => format!(
            "reverted: {removed} users removed; {kept} kept, because another import has updated \
             them since"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: ImportStatus, dry_run: bool) -> RevertState {
        RevertState {
            status,
            reverted: false,
            dry_run,
        }
    }

    #[test]
    fn a_revert_that_removes_nothing_says_why() {
        let completed = state(ImportStatus::CompletedSuccess, false);
        assert_eq!(
            note(3, Kept::default(), completed),
            "reverted: 3 users removed"
        );
        assert!(
            note(
                0,
                Kept {
                    updated: 2,
                    accepted: 0
                },
                completed
            )
            .contains("2 kept, because another import")
        );
        assert!(note(0, Kept::default(), completed).contains("created no users"));
        let empty = state(ImportStatus::CompletedNothingToImport, false);
        assert!(note(0, Kept::default(), empty).contains("the file had no data rows"));
        let dry = state(ImportStatus::CompletedPartial, true);
        assert!(note(0, Kept::default(), dry).contains("a dry run writes no user"));
        let failed = state(ImportStatus::ErrorUnknown, false);
        assert!(
            note(0, Kept::default(), failed).contains("ended Error - Unknown and kept no user")
        );
        let cancelled = state(ImportStatus::Cancelled, false);
        assert!(note(0, Kept::default(), cancelled).contains("ended Cancelled"));
        let accepted = Kept {
            updated: 1,
            accepted: 2,
        };
        assert_eq!(
            note(3, accepted, completed),
            "reverted: 3 users removed; 2 kept because they accepted their invitation (an \
             active person is never deleted by an undo), and 1 because another import has \
             updated them since"
        );
    }
}
