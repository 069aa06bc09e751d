//! The retention's step, as both stores write it, in one transaction: the clean-up's turn
//! first (on PostgreSQL one replica at a time), then the import marked (its
//! `details_removed_time` set at the first step, `details_left` while rows remain), then at
//! most so many of its row errors and failed rows.
//!
//! Marked first, so that no reader ever takes what is left mid-way for the whole: from the
//! first step on, `GetImport` lists no row error and the report is refused, and a report
//! being read when the mark comes says it was cut short (`import::report`). A server stopped
//! between two steps leaves `details_left` set, and the next round finishes the removal.
//!
//! Which imports and when is the import layer's (`import::retention`); this only removes. A
//! step stays small so that it holds the write lock (SQLite) or its rows (PostgreSQL) only
//! for a moment: uploads' batches pass between the steps.

use super::steps::{Param, Steps};
use super::{Removed, StoreError};
use crate::domain::ImportKey;

/// Marks import `key`'s details removed (the first time), then removes at most `rows` of its
/// row errors, then of its failed rows; `done` once both are gone. `None`, with nothing
/// removed, when another server has the clean-up's turn; `gone_before` when another
/// finished the removal after this one listed the import (counted there, not here).
pub(crate) async fn remove_some<S: Steps + ?Sized>(
    steps: &mut S,
    key: ImportKey,
    rows: u32,
) -> Result<Option<Removed>, StoreError> {
    if !steps.retention_turn().await? {
        return Ok(None);
    }
    if !steps.details_removed(key).await? {
        return Ok(Some(Removed {
            row_errors: 0,
            failed_rows: 0,
            done: true,
            gone_before: true,
        }));
    }
    let rows = u64::from(rows.max(1));
    let row_errors = steps
        .execute(
            DELETE_ROW_ERRORS,
            &[Param::Int(key), Param::Int(rows as i64)],
        )
        .await?;
    let left = rows - row_errors.min(rows);
    let failed_rows = if left > 0 {
        steps
            .execute(
                DELETE_FAILED_ROWS,
                &[Param::Int(key), Param::Int(left as i64)],
            )
            .await?
    } else {
        0
    };
    // Fewer than asked: there were no more.
    let done = row_errors + failed_rows < rows;
    if done {
        steps.execute(NOTHING_LEFT, &[Param::Int(key)]).await?;
    }
    Ok(Some(Removed {
        row_errors,
        failed_rows,
        done,
        gone_before: false,
    }))
}

/// The removal of an import's details is over.
const NOTHING_LEFT: &str = "UPDATE imports SET details_left = FALSE WHERE import_key = $1";
/// The first row errors of an import, in file order. A subquery, since neither SQLite (as
/// built) nor PostgreSQL takes `DELETE ... LIMIT`.
const DELETE_ROW_ERRORS: &str = "DELETE FROM import_row_errors WHERE import_key = $1 AND seq IN \
    (SELECT seq FROM import_row_errors WHERE import_key = $1 ORDER BY seq LIMIT $2)";
/// The first failed rows of an import, in file order.
const DELETE_FAILED_ROWS: &str = "DELETE FROM import_failed_rows WHERE import_key = $1 AND \
    row_number IN (SELECT row_number FROM import_failed_rows WHERE import_key = $1 \
    ORDER BY row_number LIMIT $2)";
