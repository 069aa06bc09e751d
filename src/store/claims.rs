//! The values a planned import's rows took in its file (`plan::FileKey`), kept in a table of the
//! import's own, `import_file_keys_{key}`, from its first planned batch to its ending, which
//! drops the table.
//!
//! Why a table per import and not one shared table keyed by import: an import's file keys live
//! only while it runs, and a dry run or a re-sync claims a value for every row of the file
//! (2.6 million rows for a 199 MiB file). Removing them from a shared table cost a delete per
//! row from the table and each of its three indexes: on SQLite that was 39% of a dry run's time
//! (perf, 50 MiB). A table of its own goes at once (`DROP TABLE` frees its pages), and its keys
//! need no import key in front, so its indexes are smaller.
//!
//! Every statement on such a table is built here, from the import's integer key alone (a
//! `ClaimsSql` can only be made in this module), so nothing bound can change what a statement
//! does. Both backends run the same statements; SQLite's table is `WITHOUT ROWID`, keyed by email.
//!
//! On PostgreSQL the table is `UNLOGGED`: its rows write no WAL (the inserts took 17% less
//! time, SKIP, 50 MiB), and they are worth nothing once the import ends. The price: PostgreSQL
//! empties an unlogged table when it recovers from a crash, and a standby that takes over has
//! it empty. Only an import that outlives its connection can meet that, one waiting for its
//! client's resume; so each table holds one more row from its making, the `SENTINEL`, and an
//! unlogged table without it lost its keys: the import fails (`StoreError::FileKeysLost`)
//! rather than take duplicates for new rows. A logged table (the versions before, whose
//! waiting imports a new version resumes) has no sentinel, and loses nothing.
//!
//! The shared `import_file_keys` table of earlier versions is read once at start (`adopt`): an
//! import that waited for a resume across an upgrade keeps the values its rows took.

use super::StoreError;
use super::lookup::Match;
use super::steps::{Dialect, Param, Steps};
use crate::domain::ImportKey;

/// A statement on one import's file keys table, built from its key alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClaimsSql(String);

impl ClaimsSql {
    /// The statement's text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The table of import `key`'s file keys.
pub(crate) fn table(key: ImportKey) -> String {
    format!("import_file_keys_{key}")
}

/// The email of the row each table holds from its making: no row's email is empty, so no lookup
/// finds it, and a table without it lost its rows (see the module's doc).
const SENTINEL: &str = "''";

/// The statements that make import `key`'s table, in order: the table keyed by email, the
/// unique external ids, the released ones (an update's, see `plan::FileKey`), and its
/// `SENTINEL`.
pub(crate) fn create(dialect: Dialect, key: ImportKey) -> [ClaimsSql; 4] {
    let table = table(key);
    let without_rowid = dialect.pick::<&str>(&" WITHOUT ROWID", &"");
    let unlogged = dialect.pick::<&str>(&"", &"UNLOGGED ");
    // Byte order on PostgreSQL, as the `users` columns whose values these are (and the shared
    // table of earlier versions): a database's default collation (`en_US.UTF-8`, even
    // `C.UTF-8`) compares through the C library's collation, 13% of these inserts' time on
    // a `C.UTF-8` database (SKIP, 50 MiB). SQLite compares bytes already.
    let text = dialect.pick::<&str>(&"TEXT", &"TEXT COLLATE \"C\"");
    [
        format!(
            "CREATE {unlogged}TABLE IF NOT EXISTS {table} (email {text} NOT NULL PRIMARY KEY, \
             external_id {text}, source_row BIGINT NOT NULL, released_external_id {text})\
             {without_rowid}"
        ),
        format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {table}_external_id ON {table} (external_id) \
             WHERE external_id IS NOT NULL"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {table}_released ON {table} (released_external_id) \
             WHERE released_external_id IS NOT NULL"
        ),
        format!("INSERT INTO {table} (email, source_row) VALUES ({SENTINEL}, 0)"),
    ]
    .map(ClaimsSql)
}

/// Counts the `SENTINEL` of import `key`'s table: 0 when the table lost its rows.
fn sentinel(key: ImportKey) -> ClaimsSql {
    ClaimsSql(format!(
        "SELECT count(*) FROM {} WHERE email = {SENTINEL}",
        table(key)
    ))
}

/// Drops import `key`'s table, if it has one: its ending (`ending::forget`).
pub(crate) fn drop(key: ImportKey) -> ClaimsSql {
    ClaimsSql(format!("DROP TABLE IF EXISTS {}", table(key)))
}

/// The columns of a file keys table a lookup may match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimColumn {
    /// The email key a row took.
    Email,
    /// The external id a row took.
    ExternalId,
    /// The external id an update took away from its user: free for later rows.
    Released,
}

impl ClaimColumn {
    fn name(self) -> &'static str {
        match self {
            ClaimColumn::Email => "email",
            ClaimColumn::ExternalId => "external_id",
            ClaimColumn::Released => "released_external_id",
        }
    }
}

/// Import `key`'s file keys whose `column` is one of the values (`$1`), in `FileKeyRow` order
/// (`lookup`).
pub(crate) fn lookup(key: ImportKey, column: ClaimColumn, matching: Match) -> ClaimsSql {
    ClaimsSql(format!(
        "SELECT email, external_id, source_row, released_external_id FROM {} WHERE {} {}",
        table(key),
        column.name(),
        matching.sql_at(1)
    ))
}

/// One file key (SQLite: `?1` to `?4`), or many as arrays (PostgreSQL: `unnest`).
pub(crate) fn insert(dialect: Dialect, key: ImportKey) -> ClaimsSql {
    let table = table(key);
    let values = dialect.pick::<&str>(
        &"VALUES ($1, $2, $3, $4)",
        &"SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])",
    );
    ClaimsSql(format!(
        "INSERT INTO {table} (email, external_id, source_row, released_external_id) {values}"
    ))
}

/// What an import's file keys table is, if it has one (`Steps::claims_table`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimsTable {
    /// None yet: the import's first planned batch makes it.
    Missing,
    /// One whose rows outlive any crash: SQLite's, and PostgreSQL's logged tables of the
    /// versions before the unlogged ones (an import that waited for a resume across the
    /// upgrade, or ran on an older replica during a rolling one). Nothing to check.
    Durable,
    /// PostgreSQL's unlogged table, which its crash recovery empties: its `SENTINEL` says
    /// whether it still holds its rows.
    Unlogged,
}

/// Makes import `key`'s table unless it has one: before the lookups of each planned batch.
/// `FileKeysLost` when its table lost its rows (a crash of PostgreSQL, see the module's doc).
pub(crate) async fn ensure<S: Steps + ?Sized>(
    steps: &mut S,
    key: ImportKey,
) -> Result<(), StoreError> {
    match steps.claims_table(key).await? {
        ClaimsTable::Durable => Ok(()),
        ClaimsTable::Unlogged => match steps.count_claims(&sentinel(key)).await? {
            0 => Err(StoreError::FileKeysLost(key)),
            _ => Ok(()),
        },
        ClaimsTable::Missing => {
            for sql in create(steps.dialect(), key) {
                steps.execute_claims(&sql).await?;
            }
            Ok(())
        }
    }
}

/// The imports with rows in the shared table of earlier versions.
const LEGACY_IMPORTS: &str = "SELECT DISTINCT import_key FROM import_file_keys";
/// An import's rows of the shared table, gone once copied.
const LEGACY_FORGET: &str = "DELETE FROM import_file_keys WHERE import_key = $1";

/// Moves the file keys of earlier versions' shared table into tables of their imports', once at
/// start, in the start's transaction (after `rekey`), and logs how many imports had some.
///
/// Only an import that waited for its client's resume across an upgrade can have any: every
/// other import's ending removed them. Replicas that start together: the second finds the rows
/// gone (PostgreSQL's transaction waits for the first's delete), or copies none twice (the
/// primary key; `ON CONFLICT DO NOTHING`).
pub(crate) async fn adopt<S: Steps + ?Sized>(steps: &mut S) -> Result<(), StoreError> {
    let keys = steps.import_keys(LEGACY_IMPORTS, &[]).await?;
    for &key in &keys {
        ensure(steps, key).await?;
        let copy = ClaimsSql(format!(
            "INSERT INTO {} (email, external_id, source_row, released_external_id) \
             SELECT email, external_id, source_row, released_external_id FROM import_file_keys \
             WHERE import_key = {key} ON CONFLICT DO NOTHING",
            table(key)
        ));
        steps.execute_claims(&copy).await?;
        steps.execute(LEGACY_FORGET, &[Param::Int(key)]).await?;
    }
    if !keys.is_empty() {
        tracing::info!(
            imports = keys.len(),
            "file keys of running imports moved to tables of their own"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_names_the_import_s_own_table() {
        let create = create(Dialect::Sqlite, 42);
        assert!(create[0].as_str().contains("import_file_keys_42 (email"));
        assert!(create[0].as_str().ends_with("WITHOUT ROWID"));
        let postgres = super::create(Dialect::Postgres, 42);
        assert!(!postgres[0].as_str().contains("ROWID"));
        assert!(postgres[0].as_str().starts_with("CREATE UNLOGGED TABLE"));
        assert!(create[0].as_str().starts_with("CREATE TABLE"));
        assert_eq!(
            create[3].as_str(),
            "INSERT INTO import_file_keys_42 (email, source_row) VALUES ('', 0)"
        );
        assert!(
            postgres[0]
                .as_str()
                .contains("(email TEXT COLLATE \"C\" NOT NULL PRIMARY KEY")
        );
        assert_eq!(drop(7).as_str(), "DROP TABLE IF EXISTS import_file_keys_7");
        assert!(
            lookup(7, ClaimColumn::Released, Match::Any)
                .as_str()
                .ends_with("FROM import_file_keys_7 WHERE released_external_id = ANY($1)")
        );
        assert!(
            insert(Dialect::Sqlite, 7)
                .as_str()
                .ends_with("VALUES ($1, $2, $3, $4)")
        );
    }
}
