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
//! Each takes the account's key (`store::accounts`) as `$1` and the value as `$2`. How `$2`
//! matches is the one thing the backends write differently (`Match`): SQLite steps a point
//! lookup per value through its C API, PostgreSQL binds all the values as one array.
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
    /// Where the user's row is, for `plan::Existing::row_id`: an update of a user looked up
    /// finds the row again by it in the same transaction, rather than by a descent of the email
    /// index. SQLite's rowid (the updates' share of an UPDATE that changed every user, 50 MiB:
    /// 32% → 26% of the samples); PostgreSQL's tuple id, `(block, offset)` as
    /// `block << 16 | offset` (an offset is 16 bits), which `postgres::apply` turns back.
    fn row_id(self) -> &'static str {
        match self {
            Match::One => "u.rowid",
            Match::Any => {
                "((u.ctid::text::point)[0]::bigint << 16) | (u.ctid::text::point)[1]::bigint"
            }
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
/// runs decides whether a holder's conflict names it (`holders`).
const USERS_WITH_CREATOR: &str =
    "FROM users u JOIN imports i ON i.import_key = u.import_key WHERE u.account_key = $1";

/// The account's imports still running, by key, with their ids: read once per batch, in the
/// batch's transaction, for the users its lookups find (`Existing::noting`). A user's creating
/// import and its last update are then told apart from the rest without a join per user,
/// which cost two more descents (of `imports`, by key) per user found.
pub(crate) const RUNNING_IMPORTS: &str =
    "SELECT import_key, import_id FROM imports WHERE account_id = $1 AND status = 'PROCESSING'";

/// A `RUNNING_IMPORTS` row.
pub(crate) type RunningRow = (i64, String);

/// The running imports of an account, by key (`RUNNING_IMPORTS`).
pub(crate) type Running = foldhash::HashMap<i64, String>;

/// The columns of an `Existing` lookup, in `ExistingRow` order, up to SQLite's rowid.
const EXISTING_COLUMNS: &str = "u.email, u.external_id, u.import_key, u.source_row, u.updated_by";

/// The user's other values, which only an UPDATE that writes compares with its row's
/// (`plan::Existing::changed_by`).
const EXISTING_VALUES: &str = "u.first_name, u.last_name, u.role, u.job_title";

/// In their place for every other lookup: empty texts, which neither backend reads off the
/// user's row, sends or copies (an empty `String` holds no allocation). SKIP's, and dry runs'.
const NO_VALUES: &str = "'', '', '', ''";

/// The account's users whose `column` (email or external_id) is one of the values, with their
/// other values when `values` (`plan::Lookups::user_values`).
///
/// Both columns have a unique index per account, so each value finds at most one user: a
/// descent of that index and a read of the user's row, nothing else.
pub(crate) fn existing_users(column: Column, matching: Match, values: bool) -> String {
    format!(
        "SELECT {EXISTING_COLUMNS}, {}, {} FROM users u WHERE u.account_key = $1 AND u.{} {}",
        matching.row_id(),
        if values { EXISTING_VALUES } else { NO_VALUES },
        column.name(),
        matching.sql()
    )
}

/// An `Existing` lookup's row: email, external id, creating import and its row, the last
/// updating import, SQLite's rowid, then the other values.
pub(crate) type ExistingRow = (
    String,
    Option<String>,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    String,
    String,
    String,
    String,
);

impl From<ExistingRow> for Existing {
    /// The user of a lookup's `row`, as yet without the ids of its imports that still run:
    /// `noting` sets them, once the account's running imports were read after the users.
    fn from(row: ExistingRow) -> Self {
        let (email, external_id, import_key, source_row, updated_by, row_id) =
            (row.0, row.1, row.2, row.3, row.4, row.5);
        Self {
            email,
            external_id,
            import_key,
            source_row: source_row as u64,
            running_import: None,
            updated_by,
            running_update: None,
            row_id,
            first_name: row.6,
            last_name: row.7,
            role: row.8,
            job_title: row.9,
        }
    }
}

impl Existing {
    /// The same user, its creating import's id and its last update's set from `running`: those
    /// of them that still run.
    ///
    /// `running` is read after the users in the same transaction (on PostgreSQL, whose reads
    /// each see what committed before them): a user found belongs to an import that ran or had
    /// ended then, and one that still runs when `running` is read is in it.
    pub(crate) fn noting(mut self, running: &Running) -> Self {
        self.running_import = running.get(&self.import_key).cloned();
        self.running_update = self.updated_by.and_then(|key| running.get(&key).cloned());
        self
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
    fn a_user_found_knows_which_of_its_imports_still_run() {
        let running: Running = [(7, "creating".to_owned()), (9, "updating".to_owned())]
            .into_iter()
            .collect();
        let row = |import_key, updated_by| -> ExistingRow {
            let text = String::new;
            let email = "a@x.io".to_owned();
            (
                email,
                None,
                import_key,
                2,
                updated_by,
                Some(5),
                text(),
                text(),
                text(),
                text(),
            )
        };
        let both = Existing::from(row(7, Some(9))).noting(&running);
        assert_eq!(both.running_import.as_deref(), Some("creating"));
        assert_eq!(both.running_update.as_deref(), Some("updating"));
        assert_eq!(
            (both.updated_by, both.row_id, both.source_row),
            (Some(9), Some(5), 2)
        );
        let ended = Existing::from(row(3, Some(4))).noting(&running);
        assert_eq!((ended.running_import, ended.running_update), (None, None));
        let never_updated = Existing::from(row(9, None)).noting(&running);
        assert_eq!(never_updated.running_import.as_deref(), Some("updating"));
        assert_eq!(never_updated.running_update, None);
    }

    #[test]
    fn both_backends_look_up_the_same_columns() {
        for values in [false, true] {
            let one = existing_users(Column::Email, Match::One, values);
            let any = existing_users(Column::Email, Match::Any, values);
            // The same but for the match and where the row is: SQLite's rowid, PostgreSQL's
            // tuple id.
            assert_eq!(
                one.replace("= $2", "= ANY($2)")
                    .replace(Match::One.row_id(), Match::Any.row_id()),
                any
            );
            assert!(one.ends_with("u.email = $2"), "{one}");
            // No join: whether the user's imports run comes from `RUNNING_IMPORTS`.
            assert!(!one.contains("JOIN"), "{one}");
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
