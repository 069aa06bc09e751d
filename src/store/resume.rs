//! Resumable uploads as both stores write them: an import made to wait for its client, and a
//! waiting import taken by a resume. What a waiting import becomes when it ends (cancelled, or
//! its deadline passed) is an ending like any other (`ending::conclude`, under
//! `Guard::Waiting`).
//!
//! Where a file stands (`committed_bytes`, the reader's state) is stored by each batch's
//! record, in its transaction (`Steps::store_progress`), so that it never disagrees with the
//! rows stored.

use std::time::Duration;

use super::steps::{Param, Steps};
use super::{Claimed, Guard, StoreError};
use crate::domain::{Import, ImportKey};

/// Makes import `key` wait for its client for `window`, if `guard` holds; `NotProcessing`
/// otherwise, with nothing changed. Its watchers are told.
pub(crate) async fn park<S: Steps + ?Sized>(
    steps: &mut S,
    key: ImportKey,
    window: Duration,
    guard: Guard,
) -> Result<Import, StoreError> {
    let Some(import) = steps.set_waiting(key, window, guard).await? else {
        return Err(StoreError::NotProcessing);
    };
    steps.changed(&[key]).await?;
    Ok(import)
}

/// Takes waiting import `key` for a resume at `offset`; `NotProcessing` when it does not wait
/// (any more) or stands elsewhere, with nothing changed. Users past its committed rows, left
/// by a batch whose record did not commit, go first, and so do their file keys: the resume
/// writes their rows again.
pub(crate) async fn claim<S: Steps + ?Sized>(
    steps: &mut S,
    key: ImportKey,
    offset: u64,
) -> Result<Claimed, StoreError> {
    let Some((import, state, rows)) = steps.claim_waiting(key, offset).await? else {
        return Err(StoreError::NotProcessing);
    };
    steps.drop_unrecorded(key, rows).await?;
    super::claims::drop_unrecorded(steps, key, rows).await?;
    let errors_stored = steps.count(COUNT_ROW_ERRORS, &[Param::Int(key)]).await?;
    steps.changed(&[key]).await?;
    Ok(Claimed {
        import,
        state,
        errors_stored,
    })
}

/// Row errors stored for an import: numbered from 0 in file order, so also the next one's
/// number.
const COUNT_ROW_ERRORS: &str = "SELECT count(*) FROM import_row_errors WHERE import_key = $1";
