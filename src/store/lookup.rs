//! The lookups of who holds a batch's values, written once for both backends and for both of
//! SQLite's paths (sqlx and the C API): every lookup statement is built here from the same
//! constants, and its rows are decoded through the same row types, so that a column added or
//! reordered is a change in one place.
//!
//! - `existing_users`: the account's users that hold an email or external id of the batch,
//!   with what a dry run, SKIP and UPDATE need to decide a row (`plan::Existing`);
//! - `holders`: who holds a value the unique indexes refused, for its row error
//!   (`conflicts::Holder`);
//! - the values earlier rows of the same import took without becoming users (`plan::FileKey`)
//!   are looked up in the import's own table (`claims::lookup`), and decoded here (`FileKeyRow`).
//!
//! Each takes the account as `$1` and the value as `$2`. How `$2` matches is the
//! one thing the backends write differently (`Match`): SQLite steps a point lookup per value
//! through its C API, PostgreSQL binds all the values as one array.
//!
//! The lookups run inside the batch's write transaction: what they find is what the batch's
//! writes then meet, on SQLite for certain (it holds the database), on PostgreSQL unless another
//! replica commits a value in between (see `planned`).

use std::collections::HashMap;

use super::conflicts::Holder;
use super::plan::{Existing, FileKey};
use crate::domain::Column;

/// How a lookup's `$2` matches the values looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Match {
    /// One value per execution (`= $2`): SQLite's prepared point lookups, cheaper there than
    /// `IN` lists bound through sqlx.
    One,
    /// Every value at once, as an array (`= ANY($2)`): one round trip to PostgreSQL.
    Any,
}

impl Match {
    /// The user's rowid, for `plan::Existing::row_id`: SQLite's update of a user it looked up
    /// finds the row again by it in the same transaction (the table's own key, rather than a
    /// descent of the email index for the saved values and another for the update: the
    /// updates' share of an UPDATE that changed every user, 50 MiB, 32% → 26% of the samples).
    /// PostgreSQL's updates are set-based statements by email and need none.
    fn row_id(self) -> &'static str {
        match self {
            Match::One => "u.rowid",
            Match::Any => "NULL::bigint",
        }
    }

    /// The text that follows the column in the `WHERE` clause, the values being `$2`.
    fn sql(self) -> &'static str {
        match self {
            Match::One => "= $2",
            Match::Any => "= ANY($2)",
        }
    }

    /// The same, the values being parameter `n`.
    pub(crate) fn sql_at(self, n: u8) -> String {
        match self {
            Match::One => format!("= ${n}"),
            Match::Any => format!("= ANY(${n})"),
        }
    }
}

/// The users table joined to the import that created each user: whether that import still
/// runs decides whether its user may be skipped or updated yet.
const USERS_WITH_CREATOR: &str =
    "FROM users u JOIN imports i ON i.import_key = u.import_key WHERE u.account_id = $1";

/// The columns of an `Existing` lookup, in `ExistingRow` order, up to SQLite's rowid.
///
/// The running imports' ids come from the same statement, so that whether a holder's import still
/// runs is read in the transaction that acts on it.
const EXISTING_COLUMNS: &str = "u.email, u.external_id, u.import_key, u.source_row, \
    CASE WHEN i.status = 'PROCESSING' THEN i.import_id END, u.updated_by, \
    (SELECT w.import_id FROM imports w \
     WHERE w.import_key = u.updated_by AND w.status = 'PROCESSING')";

/// The user's other values, which only an UPDATE that writes compares with its row's
/// (`plan::Existing::changed_by`).
const EXISTING_VALUES: &str = "u.first_name, u.last_name, u.role, u.job_title";

/// In their place for every other lookup: empty texts, which neither backend reads off the
/// user's row, sends or copies (an empty `String` holds no allocation). SKIP's, and dry runs'.
const NO_VALUES: &str = "'', '', '', ''";

/// The account's users whose `column` (email or external_id) is one of the values, with their
/// other values when `values` (`plan::Lookups::user_values`).
///
/// Both columns have a unique index per account, so each value finds at most one user.
pub(crate) fn existing_users(column: Column, matching: Match, values: bool) -> String {
    format!(
        "SELECT {EXISTING_COLUMNS}, {}, {} {USERS_WITH_CREATOR} AND u.{} {}",
        matching.row_id(),
        if values { EXISTING_VALUES } else { NO_VALUES },
        column.name(),
        matching.sql()
    )
}

/// An `Existing` lookup's row: email, external id, creating import and its row, the
/// creating import's id while it runs, the last updating import and its id while it runs,
/// SQLite's rowid, then the other values.
pub(crate) type ExistingRow = (
    String,
    Option<String>,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    String,
    String,
    String,
    String,
);

impl From<ExistingRow> for Existing {
    fn from(row: ExistingRow) -> Self {
        let (email, external_id, import_key, source_row, running_import, updated_by) =
            (row.0, row.1, row.2, row.3, row.4, row.5);
        Self {
            email,
            external_id,
            import_key,
            source_row: source_row as u64,
            running_import,
            updated_by,
            running_update: row.6,
            row_id: row.7,
            first_name: row.8,
            last_name: row.9,
            role: row.10,
            job_title: row.11,
        }
    }
}

/// Who holds the values in `column` (email or external_id): the value, then its holder.
///
/// Lighter than `existing_users`: a conflict's row error needs only the holder's import, its row,
/// and whether that import still runs (see `conflicts::Holder`).
pub(crate) fn holders(column: Column, matching: Match) -> String {
    let name = column.name();
    format!(
        "SELECT u.{name}, u.import_key, u.source_row, \
         CASE WHEN i.status = 'PROCESSING' THEN i.import_id END \
         {USERS_WITH_CREATOR} AND u.{name} {}",
        matching.sql()
    )
}

/// A holder lookup's row: the value, the import that wrote it and its row, and that import's
/// id while it still runs.
pub(crate) type HolderRow = (String, i64, i64, Option<String>);

/// Holders by value, from the rows of a holder lookup.
///
/// Shared by both backends, so that the decoding of a `HolderRow` is written once.
pub(crate) fn holders_by_value(
    rows: impl IntoIterator<Item = HolderRow>,
) -> HashMap<String, Holder> {
    rows.into_iter()
        .map(|(value, import_key, source_row, running_import)| {
            let holder = Holder {
                import_key,
                source_row: source_row as u64,
                running_import,
            };
            (value, holder)
        })
        .collect()
}

/// A file key lookup's row.
///
/// Email, external id, source row and released external id, as `FileKey` has them.
pub(crate) type FileKeyRow = (String, Option<String>, i64, Option<String>);

impl From<FileKeyRow> for FileKey {
    fn from((email, external_id, source_row, released_external_id): FileKeyRow) -> Self {
        Self {
            email,
            external_id,
            source_row: source_row as u64,
            released_external_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_look_up_the_same_columns() {
        for values in [false, true] {
            let one = existing_users(Column::Email, Match::One, values);
            let any = existing_users(Column::Email, Match::Any, values);
            // The same but for the match and the rowid, which only SQLite has.
            assert_eq!(
                one.replace("= $2", "= ANY($2)")
                    .replace("u.rowid", "NULL::bigint"),
                any
            );
            assert!(one.ends_with("u.email = $2"), "{one}");
        }
        // Without the other values, as many columns, empty: `ExistingRow` reads both alike.
        let keys = existing_users(Column::Email, Match::Any, false);
        let all = existing_users(Column::Email, Match::Any, true);
        assert_eq!(keys.replace(NO_VALUES, EXISTING_VALUES), all);
        assert_eq!(
            NO_VALUES.split(',').count(),
            EXISTING_VALUES.split(',').count()
        );
        assert!(holders(Column::ExternalId, Match::One).starts_with("SELECT u.external_id,"));
    }
}
