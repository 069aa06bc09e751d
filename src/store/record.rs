//! The record a batch leaves, as both stores write it once its users are written: the
//! import's progress (which also says whether it still runs), its row errors up to the
//! import's cap, the cells of its failed rows for the fix-up file, and a change notification.
//!
//! Also the plain import's conflicts: rows the unique indexes refused, with the row errors
//! that say who holds their values (`conflicts::refusals`).
//!
//! The order inside the record matters: the progress is stored first, because its `WHERE status =
//! 'PROCESSING'` is what tells whether the import still runs; a batch of an import that ended
//! meanwhile stores nothing (`NotProcessing`, and the caller rolls back). Row errors are numbered
//! from `BatchTarget::next_error_seq` and stored up to `error_budget`; the rest are only counted
//! (`errors_omitted`), and the failed rows' cells follow exactly the errors stored, so that the
//! fix-up file has a line for each.

use super::conflicts::{looked_up, merge_by_row, refusals};
use super::failed;
use super::steps::Steps;
use super::{BatchOutcome, BatchTarget, BatchWritten, StoreError};
use crate::domain::{Column, RowError, UserBatch};

/// What writing a batch's users did, on any path, before its record.
///
/// Built by the plain path (`plain`) or the planned one (`planned::write`), and turned by
/// `record` into the batch's `BatchOutcome`.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Users inserted (a dry run: that would have been).
    pub imported: u64,
    /// Rows whose user was left as it is (SKIP).
    pub skipped: u64,
    /// Rows whose user was updated (UPDATE).
    pub updated: u64,
    /// Valid rows that failed on a conflict (indexes in the batch), in file order.
    pub conflicted: Vec<usize>,
    /// Their row errors, and those of failed rows whose values are held, in file order.
    pub errors: Vec<RowError>,
}

/// Records a written batch; `NotProcessing` when the import ended meanwhile, in which case
/// the transaction must not commit.
///
/// The batch's validation errors (`batch.errors`) and its conflict errors are merged into one
/// file order, each row's validation errors first, before the cap is applied: the errors kept are
/// the first ones in the file, whichever kind they are.
pub(crate) async fn record<S: Steps + ?Sized>(
    steps: &mut S,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    written: Written,
) -> Result<BatchWritten, StoreError> {
    let errors = merge_by_row(&batch.errors, written.errors);
    let stored = (errors.len() as u64).min(target.error_budget) as usize;
    let outcome = BatchOutcome {
        imported: written.imported,
        conflicts: written.conflicted.len() as u64,
        skipped: written.skipped,
        updated: written.updated,
        errors_stored: stored as u64,
        errors_omitted: (errors.len() - stored) as u64,
    };
    let progress = outcome.applied_to(target.progress);
    if !steps
        .store_progress(target.key, &progress, target.format, &target.committed)
        .await?
    {
        return Err(StoreError::NotProcessing);
    }
    steps
        .insert_row_errors(target.key, target.next_error_seq, &errors[..stored])
        .await?;
    // Every failed row, whatever the cap on stored errors: see `failed`.
    let lines = failed::lines(batch, &written.conflicted, &errors);
    steps.insert_failed_rows(target.key, &lines).await?;
    steps.changed(&[target.key]).await?;
    Ok(BatchWritten { outcome, progress })
}

/// Records a batch of the plain import (ERROR policy, not a dry run), whose users went in
/// with the unique indexes refusing `refused` (batch indexes, in file order).
///
/// Every user not refused was inserted; the refused ones, and the failed rows whose values are
/// held, get their conflict row errors from a lookup of who holds their values.
pub(crate) async fn plain<S: Steps + ?Sized>(
    steps: &mut S,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    refused: Vec<usize>,
) -> Result<BatchWritten, StoreError> {
    let errors = conflicts(steps, target, batch, &refused, true).await?;
    let written = Written {
        imported: (batch.len() - refused.len()) as u64,
        conflicted: refused,
        errors,
        ..Written::default()
    };
    record(steps, target, batch, written).await
}

/// The row errors for the values that `refused` users (and, with `probes`, the batch's failed
/// rows) found held.
///
/// No query when there is nothing to look up. `probes` is for the plain import only: a planned
/// batch has already judged its failed rows' values in `plan::decide`, and asks here only about
/// inserts the indexes refused after the plan (another replica took the value in between).
pub(crate) async fn conflicts<S: Steps + ?Sized>(
    steps: &mut S,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    refused: &[usize],
    probes: bool,
) -> Result<Vec<RowError>, StoreError> {
    if refused.is_empty() && (!probes || batch.probes().len() == 0) {
        return Ok(Vec::new());
    }
    let (emails, ids) = looked_up(batch, refused, probes);
    let by_email = steps
        .holders(target.account_key, Column::Email, &emails)
        .await?;
    let by_id = steps
        .holders(target.account_key, Column::ExternalId, &ids)
        .await?;
    Ok(refusals(
        target.key, batch, refused, probes, &by_email, &by_id,
    ))
}
