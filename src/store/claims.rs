//! The values a planned import's rows took in its file (`plan::FileKey`), kept in a table of the
//! import's own, `import_claims_{key}`, from its first planned batch to its ending, which
//! drops the table.
//!
//! Why a table per import and not one shared table keyed by import: an import's file keys live
//! only while it runs, and a dry run or a re-sync claims a value for every row of the file
//! (2.6 million rows for a 199 MiB file). Removing them from a shared table cost a delete per
//! row from the table and each of its three indexes: on SQLite that was 39% of a dry run's time
//! (perf, 50 MiB). A table of its own goes at once (`DROP TABLE` frees its pages).
//!
//! Why keyed by generation first (on SQLite; PostgreSQL's keys lead with the value, see
//! `create`): a file's addresses come in no particular order, so a table
//! keyed by address alone took each batch's keys all over its b-tree, and every batch rewrote
//! most of its pages (on SQLite, each into the write-ahead log): the inserts were 42% of a dry
//! run's samples (50 MiB), and their cost grew with the table. A row's generation is its row
//! number divided by `GENERATION_ROWS`, so each batch writes into the newest generation's part
//! of the b-tree only, at most `GENERATION_ROWS` keys, which stays in the page cache; older
//! generations are never written again. The price is on the lookups: a value is looked up
//! once per generation up to its batch's. The import's filter (`seen`) rules out nearly every
//! value first, so that few are; an upload that resumes an import fills its filter from the
//! table before its first batch (`remember`).
//!
//! Every statement on such a table is built here, from the import's integer key alone (a
//! `ClaimsSql` can only be made in this module), so nothing bound can change what a statement
//! does. Both backends run the same statements but the insert, which each does its fastest way
//! (`insert`, `copy`); SQLite's table is `WITHOUT ROWID`.
//!
//! On PostgreSQL the table is `UNLOGGED`: its rows write no WAL (the inserts took 17% less
//! time, SKIP, 50 MiB), and they are worth nothing once the import ends. The price: PostgreSQL
//! empties an unlogged table when it recovers from a crash, and a standby that takes over has
//! it empty. Only an import that outlives its connection can meet that, one waiting for its
//! client's resume; so each table holds one more row from its making, the `SENTINEL`, and an
//! unlogged table without it lost its keys: the import fails (`StoreError::FileKeysLost`)
//! rather than take duplicates for new rows.
//!
//! Earlier versions' keys are taken over, so that an import that waited for its client's resume
//! across an upgrade keeps the values its rows took: the shared `import_file_keys` table of the
//! first versions once at start (`adopt`), and an import's table keyed by address
//! (`import_file_keys_{key}`, `legacy_table`) by the first batch that finds it (`ensure`).

use super::StoreError;
use super::lookup::Match;
use super::seen::SeenValues;
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

/// How many rows of the file share a generation, as a power of two: 2^17 = 131,072 rows.
///
/// Large enough that a 199 MiB file (2.6 million rows) has 20, so a value is looked up at most
/// 20 times; small enough that a generation's keys (about 11 MiB of pages with their index)
/// stay in SQLite's 32 MiB page cache while its batches write them.
const GENERATION_SHIFT: u32 = 17;

/// The generation of the file row `row` (`GENERATION_SHIFT`).
pub(crate) fn generation(row: u64) -> i64 {
    (row >> GENERATION_SHIFT) as i64
}

/// The table of import `key`'s file keys.
pub(crate) fn table(key: ImportKey) -> String {
    format!("import_claims_{key}")
}

/// The table of import `key`'s file keys as the version before made it: keyed by address.
pub(crate) fn legacy_table(key: ImportKey) -> String {
    format!("import_file_keys_{key}")
}

/// The email of the row each table holds from its making: no row's email is empty, so no lookup
/// finds it, and a table without it lost its rows (see the module's doc).
const SENTINEL: &str = "''";

/// The statements that make import `key`'s table, in order: the table keyed by generation and
/// email, the unique external ids of each generation, and the released ones (an update's, see
/// `plan::FileKey`). The `SENTINEL` is added apart (`add_sentinel`).
fn create(dialect: Dialect, key: ImportKey) -> [ClaimsSql; 3] {
    let table = table(key);
    let without_rowid = dialect.pick::<&str>(&" WITHOUT ROWID", &"");
    let unlogged = dialect.pick::<&str>(&"", &"UNLOGGED ");
    // Byte order on PostgreSQL, as the `users` columns whose values these are: a database's
    // default collation (`en_US.UTF-8`, even `C.UTF-8`) compares through the C library's
    // collation, 13% of these inserts' time on a `C.UTF-8` database (SKIP, 50 MiB). SQLite
    // compares bytes already.
    let text = dialect.pick::<&str>(&"TEXT", &"TEXT COLLATE \"C\"");
    // PostgreSQL's keys lead with the value: its table writes no WAL and its buffers hold the
    // pages, so the generation gained nothing there, and its planner, with two arrays to match
    // and no statistics on a new table, read the whole table per lookup (a dry run of 199 MiB
    // went from x0.95 to x3.0 of a plain import). Its lookups still name the generations,
    // which every row they can find is in.
    let (generation, key) =
        *dialect.pick::<(&str, &str)>(&("generation, ", "generation, email"), &("", "email"));
    [
        format!(
            "CREATE {unlogged}TABLE IF NOT EXISTS {table} (generation BIGINT NOT NULL, \
             email {text} NOT NULL, external_id {text}, source_row BIGINT NOT NULL, \
             released_external_id {text}, PRIMARY KEY ({key})){without_rowid}"
        ),
        format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {table}_external_id ON {table} \
             ({generation}external_id) WHERE external_id IS NOT NULL"
        ),
        format!(
            "CREATE INDEX IF NOT EXISTS {table}_released ON {table} \
             ({generation}released_external_id) WHERE released_external_id IS NOT NULL"
        ),
    ]
    .map(ClaimsSql)
}

/// Adds the `SENTINEL` to import `key`'s table, unless a copy brought it.
fn add_sentinel(key: ImportKey) -> ClaimsSql {
    ClaimsSql(format!(
        "INSERT INTO {} (generation, email, source_row) VALUES (0, {SENTINEL}, 0) \
         ON CONFLICT DO NOTHING",
        table(key)
    ))
}

/// Counts the `SENTINEL` of import `key`'s table: 0 when the table lost its rows.
fn sentinel(key: ImportKey) -> ClaimsSql {
    ClaimsSql(format!(
        "SELECT count(*) FROM {} WHERE generation = 0 AND email = {SENTINEL}",
        table(key)
    ))
}

/// The columns a file key is written in, in this order by every insert: `copy_from`, `insert`,
/// and `copy`, whose binary rows `postgres::copy::encode_claim` encodes in it.
const COLUMNS: &str = "generation, email, external_id, source_row, released_external_id";

/// Copies the rows of `from` that `filter` keeps (with the columns of the tables keyed by
/// address) into import `key`'s table, each in its row's generation.
///
/// The `WHERE` is always there: SQLite would read `ON CONFLICT` after a bare `FROM` as a join's.
fn copy_from(key: ImportKey, from: &str, filter: &str) -> ClaimsSql {
    ClaimsSql(format!(
        "INSERT INTO {} ({COLUMNS}) SELECT source_row >> {GENERATION_SHIFT}, email, \
         external_id, source_row, released_external_id FROM {from} WHERE {filter} \
         ON CONFLICT DO NOTHING",
        table(key)
    ))
}

/// Drops import `key`'s table, and one the version before made, if it has them: its ending
/// (`ending::forget`).
pub(crate) fn drop(key: ImportKey) -> [ClaimsSql; 2] {
    [table(key), legacy_table(key)].map(|table| ClaimsSql(format!("DROP TABLE IF EXISTS {table}")))
}

/// Deletes import `key`'s file keys of the rows after row `rows`: keys a batch whose record did
/// not commit left (`postgres::beside`). The row number is an integer, written into the text.
pub(crate) fn unrecorded(key: ImportKey, rows: u64) -> ClaimsSql {
    ClaimsSql(format!(
        "DELETE FROM {} WHERE source_row > {rows}",
        table(key)
    ))
}

/// Removes import `key`'s file keys of the rows after its recorded `rows`, if it has a table: a
/// resume's, which writes those rows again, as it removes their users
/// (`Steps::drop_unrecorded`). On SQLite a batch's keys commit with its record, so there are
/// none; on PostgreSQL a batch's part beside commits before it (`postgres::beside`).
///
/// A scan of the table: once per resume.
pub(crate) async fn drop_unrecorded<S: Steps + ?Sized>(
    steps: &mut S,
    key: ImportKey,
    rows: u64,
) -> Result<(), StoreError> {
    if steps.claims_table(&table(key)).await? != ClaimsTable::Missing {
        steps.execute_claims(&unrecorded(key, rows)).await?;
    }
    Ok(())
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

/// Import `key`'s file keys whose `column` is one of the values (`$1`) in one of the
/// generations (`$2`), in `FileKeyRow` order (`lookup`). (In that order in the text too:
/// SQLite numbers `$N` parameters as they first appear.)
pub(crate) fn lookup(key: ImportKey, column: ClaimColumn, matching: Match) -> ClaimsSql {
    ClaimsSql(format!(
        "SELECT email, external_id, source_row, released_external_id FROM {} \
         WHERE {} {} AND generation {}",
        table(key),
        column.name(),
        matching.sql_at(1),
        matching.sql_at(2)
    ))
}

/// One file key, `$1` to `$5`: SQLite's insert, one row at a time through its C interface.
pub(crate) fn insert(key: ImportKey) -> ClaimsSql {
    ClaimsSql(format!(
        "INSERT INTO {} ({COLUMNS}) VALUES ($1, $2, $3, $4, $5)",
        table(key)
    ))
}

/// A batch's file keys in one binary `COPY`, in `COLUMNS`: PostgreSQL's insert
/// (`postgres::copy`).
pub(crate) fn copy(key: ImportKey) -> ClaimsSql {
    ClaimsSql(format!(
        "COPY {} ({COLUMNS}) FROM STDIN (FORMAT binary)",
        table(key)
    ))
}

/// What a file keys table is, if there is one (`Steps::claims_table`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimsTable {
    /// None.
    Missing,
    /// One whose rows outlive any crash: SQLite's, and PostgreSQL's logged tables of the
    /// versions before the unlogged ones. Nothing to check.
    Durable,
    /// PostgreSQL's unlogged table, which its crash recovery empties: its `SENTINEL` says
    /// whether it still holds its rows.
    Unlogged,
}

/// Makes import `key`'s table unless it has one: before the lookups of each planned batch.
/// `FileKeysLost` when its table lost its rows (a crash of PostgreSQL, see the module's doc).
///
/// A table the version before made (`legacy_table`) is copied into the new one and dropped, its
/// sentinel with it: an unlogged one that lost its rows makes a new table that lost them too.
pub(crate) async fn ensure<S: Steps + ?Sized>(
    steps: &mut S,
    key: ImportKey,
) -> Result<(), StoreError> {
    let kept = match steps.claims_table(&table(key)).await? {
        ClaimsTable::Durable => return Ok(()),
        ClaimsTable::Unlogged => steps.count_claims(&sentinel(key)).await?,
        ClaimsTable::Missing => {
            for sql in create(steps.dialect(), key) {
                steps.execute_claims(&sql).await?;
            }
            let legacy = legacy_table(key);
            let earlier = steps.claims_table(&legacy).await?;
            if earlier != ClaimsTable::Missing {
                steps
                    .execute_claims(&copy_from(key, &legacy, "true"))
                    .await?;
                steps
                    .execute_claims(&ClaimsSql(format!("DROP TABLE {legacy}")))
                    .await?;
            }
            // A durable table had nothing to lose, and the first tables had no sentinel.
            if earlier != ClaimsTable::Unlogged {
                steps.execute_claims(&add_sentinel(key)).await?;
            }
            match steps.claims_table(&table(key)).await? {
                ClaimsTable::Unlogged => steps.count_claims(&sentinel(key)).await?,
                _ => 1,
            }
        }
    };
    match kept {
        0 => Err(StoreError::FileKeysLost(key)),
        _ => Ok(()),
    }
}

/// Notes in `seen` every value import `key`'s table holds, in one read of it: the filter of an
/// upload that resumes the import, which did not see the rows before it. The table is made
/// first, or taken over from the version before, as a batch would (`ensure`).
pub(crate) async fn remember<S: Steps + ?Sized>(
    steps: &mut S,
    key: ImportKey,
    seen: &SeenValues,
) -> Result<(), StoreError> {
    ensure(steps, key).await?;
    let values = ClaimsSql(format!(
        "SELECT email, external_id, released_external_id FROM {}",
        table(key)
    ));
    steps.remember_claims(&values, seen).await
}

/// Runs `sql`, a `SELECT email, external_id, released_external_id` on an import's table, on
/// `executor`, noting each row in `seen` as it comes: `Steps::remember_claims` of both
/// backends. Streamed: a table of a 199 MiB file holds 2.6 million rows.
pub(crate) async fn note_rows<'c, DB: sqlx::Database + sqlx::database::HasStatementCache>(
    executor: impl sqlx::Executor<'c, Database = DB>,
    sql: &ClaimsSql,
    seen: &SeenValues,
) -> Result<(), StoreError>
where
    for<'r> (String, Option<String>, Option<String>): sqlx::FromRow<'r, DB::Row>,
    for<'q> DB::Arguments: sqlx::IntoArguments<DB>,
{
    use futures::TryStreamExt;
    let mut rows = sqlx::query_as::<DB, (String, Option<String>, Option<String>)>(
        sqlx::AssertSqlSafe(sql.as_str().to_owned()),
    )
    .persistent(false)
    .fetch(executor);
    while let Some((email, id, released)) = rows.try_next().await? {
        seen.insert_claim(&email, id.as_deref(), released.as_deref());
    }
    Ok(())
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
        let copy = copy_from(key, "import_file_keys", &format!("import_key = {key}"));
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
        assert!(
            create[0]
                .as_str()
                .contains("import_claims_42 (generation BIGINT NOT NULL, email TEXT NOT NULL")
        );
        assert!(
            create[0]
                .as_str()
                .ends_with("PRIMARY KEY (generation, email)) WITHOUT ROWID")
        );
        let postgres = super::create(Dialect::Postgres, 42);
        assert!(!postgres[0].as_str().contains("ROWID"));
        assert!(postgres[0].as_str().starts_with("CREATE UNLOGGED TABLE"));
        assert!(create[0].as_str().starts_with("CREATE TABLE"));
        assert!(
            postgres[0]
                .as_str()
                .contains("email TEXT COLLATE \"C\" NOT NULL")
        );
        assert_eq!(
            add_sentinel(42).as_str(),
            "INSERT INTO import_claims_42 (generation, email, source_row) VALUES (0, '', 0) \
             ON CONFLICT DO NOTHING"
        );
        assert_eq!(
            drop(7).map(|sql| sql.0),
            [
                "DROP TABLE IF EXISTS import_claims_7",
                "DROP TABLE IF EXISTS import_file_keys_7"
            ]
        );
        assert!(
            lookup(7, ClaimColumn::Released, Match::Any)
                .as_str()
                .ends_with(
                    "FROM import_claims_7 WHERE released_external_id = ANY($1) \
                            AND generation = ANY($2)"
                )
        );
        assert!(
            lookup(7, ClaimColumn::Email, Match::One)
                .as_str()
                .ends_with("WHERE email = $1 AND generation = $2")
        );
        assert!(insert(7).as_str().ends_with("VALUES ($1, $2, $3, $4, $5)"));
        assert_eq!(
            unrecorded(7, 131_073).as_str(),
            "DELETE FROM import_claims_7 WHERE source_row > 131073"
        );
        assert_eq!(
            copy(7).as_str(),
            "COPY import_claims_7 (generation, email, external_id, source_row, \
             released_external_id) FROM STDIN (FORMAT binary)"
        );
        assert!(
            copy_from(7, "import_file_keys_7", "true")
                .as_str()
                .contains("SELECT source_row >> 17, email")
        );
    }

    #[test]
    fn a_generation_is_a_run_of_rows_of_the_file() {
        assert_eq!(generation(0), 0);
        assert_eq!(generation(131_071), 0);
        assert_eq!(generation(131_072), 1);
        // The last row of a 199 MiB file (2,591,138 rows): 20 generations.
        assert_eq!(generation(2_591_139), 19);
    }
}
