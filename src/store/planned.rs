//! A dry run, or the SKIP and UPDATE policies, as both stores write a batch of one, in one
//! transaction: the import held, the values of the batch looked up (`Steps::known`), every
//! row decided (`plan::decide`), what the plan says written (`Steps::apply`), then the
//! batch's record. The values its rows take in the file go to a table of the import's own
//! (`claims`), made by its first planned batch.
//!
//! Another replica may take a value between the lookup and the write: an insert is then
//! refused by the unique indexes and gets its row error as in a plain import; an update fails
//! the transaction on a unique index (`AlreadyExists`), and PostgreSQL runs it again, its
//! lookup seeing the new holder. On SQLite the write transaction holds the whole database, so
//! neither can happen.
//!
//! A dry run goes through here with every policy, ERROR included: it writes no user, only the
//! file keys its rows took, so that its later batches judge their rows as the real import would.

use super::conflicts::merge_by_row;
use super::plan::{self, Mode};
use super::record::{self, Written};
use super::steps::{Param, Steps};
use super::{BatchTarget, BatchWritten, StoreError};
use crate::domain::UserBatch;

/// Whether the account may hold a user: whether an import that was not a dry run ever ran in it
/// (this one included). Users come only from such imports, so with none the account holds no
/// user and a dry run into it (a first import, checked before it runs) needs no lookup of its
/// users. Asked of `imports`, whose index leads with the account on both backends (PostgreSQL's
/// users are keyed by email first: asking them was a scan of the whole table).
const MAY_HOLD_USERS: &str = "SELECT count(*) FROM (SELECT 1 FROM imports \
    WHERE account_id = $1 AND NOT validate_only LIMIT 1) AS any_import";

/// Writes a planned batch; `NotProcessing`, with nothing written, when the import ended.
///
/// The import is held before anything is read: a batch of an import that ended is refused before
/// its lookups, and while the hold lasts no other server can end the import and undo what this
/// batch writes. The rows the plan found in conflict and the inserts the indexes refused are
/// merged into one list, sorted into file order as `Written::conflicted` promises.
pub(crate) async fn write<S: Steps + ?Sized>(
    steps: &mut S,
    target: &BatchTarget<'_>,
    mode: Mode,
    batch: &UserBatch,
) -> Result<BatchWritten, StoreError> {
    if !steps.lock_processing(target.key).await? {
        return Err(StoreError::NotProcessing);
    }
    super::claims::ensure(steps, target.key).await?;
    let account = Param::Text(target.account_id.as_str());
    let account_empty = steps.count(MAY_HOLD_USERS, &[account]).await? == 0;
    let lookups = plan::lookups(batch, mode, account_empty, target.seen);
    let known = steps.known(target, &lookups).await?;
    let plan = plan::decide(mode, batch, &known);
    let refused = steps.apply(target, batch, &plan).await?;
    if let Some(seen) = target.seen {
        // Before the commit: if it rolls back, these values only cost a lookup later.
        plan::remember(seen, &plan);
    }
    let refused_errors = record::conflicts(steps, target, batch, &refused, false).await?;
    let mut conflicted = plan.conflicted.clone();
    conflicted.extend(&refused);
    conflicted.sort_unstable();
    let written = Written {
        imported: plan.would_insert - refused.len() as u64,
        skipped: plan.skipped,
        updated: plan.updated,
        conflicted,
        errors: merge_by_row(&plan.errors, refused_errors),
    };
    record::record(steps, target, batch, written).await
}
