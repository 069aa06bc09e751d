//! Persistence: one trait, one module and one migrations folder per backend, chosen by the
//! database URL's scheme.
//!
//! The all-or-nothing rule lives here. Valid rows are written into the users table while the
//! upload runs, each tagged with its import; an import that ends in an ERROR_* status (or was
//! left PROCESSING by a server that stopped) has its users deleted in the same transaction that
//! sets its status. Uniqueness is the database's job: unique indexes on (account, email) and
//! (account, external_id) catch duplicates in the file and in the account alike, so the server
//! keeps no set of seen addresses and its memory stays flat whatever the file size.

pub mod postgres;
mod queries;
pub mod sqlite;
mod sqlite_insert;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::domain::{
    AccountId, Column, Counters, ErrorCode, Filename, Import, ImportId, ImportKey, ImportStatus,
    ImportType, NewImport, RowError, TextEncoding, TextFormat, UserBatch,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("an import with this id already exists in the account")]
    AlreadyExists,
    /// The import was ended by someone else (recovery after a restart, or another replica).
    #[error("the import is no longer processing")]
    NotProcessing,
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database url: {0}")]
    Config(String),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// An error of the database engine outside sqlx (SQLite's C API).
    #[error("database error: {0}")]
    Engine(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &error {
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
                StoreError::Unavailable(error)
            }
            E::Database(db) if db.is_unique_violation() => StoreError::AlreadyExists,
            // Connection exceptions; a server shutting down, starting or full; a database closed
            // to connections.
            E::Database(db)
                if db.code().is_some_and(|code| {
                    code.starts_with("08")
                        || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "55000")
                }) =>
            {
                StoreError::Unavailable(error)
            }
            _ => StoreError::Database(error),
        }
    }
}

/// What writing one batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Users inserted.
    pub imported: u64,
    /// Valid rows refused by a uniqueness rule (DUPLICATE_IN_FILE or ALREADY_EXISTS).
    pub conflicts: u64,
    /// Row errors stored, validation and conflict errors together.
    pub errors_stored: u64,
    /// Row errors left out because the import reached its cap.
    pub errors_omitted: u64,
}

/// Where a batch goes and how its errors are numbered.
#[derive(Debug, Clone)]
pub struct BatchTarget<'a> {
    pub key: ImportKey,
    pub account_id: &'a AccountId,
    /// Sequence number of the first row error this batch stores: errors are read back in
    /// this order, which is file order.
    pub next_error_seq: u64,
    /// How many more row errors may be stored for this import.
    pub error_budget: u64,
    /// Bytes of the file received when the batch was cut, for the stored progress.
    pub bytes_received: u64,
    pub format: Option<TextFormat>,
}

/// How an import ends.
#[derive(Debug, Clone)]
pub struct Conclusion {
    pub status: ImportStatus,
    pub counters: Counters,
    pub format: Option<TextFormat>,
    pub error_message: String,
}

/// A stored row error with its position, for paging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRowError {
    pub seq: u64,
    pub error: RowError,
}

/// How the pipeline should cut batches for a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Rows per batch, and so per write transaction.
    pub rows: usize,
    /// A batch that is not full is still written this long after the writer took the last
    /// one: a quiet client must not hold batch memory, and other replicas read progress from
    /// the stored counters.
    pub flush_after: Option<Duration>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    fn batching(&self) -> Batching;

    /// Answers when the database does: readiness follows it.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Ends every import left PROCESSING by a server that stopped: ERROR_UNKNOWN with
    /// `message`, users deleted. Returns how many.
    async fn recover_interrupted(&self, message: &str) -> Result<u64, StoreError>;

    /// Periodic upkeep, every few seconds: keeps the leases of the imports running here and
    /// ends those whose replica is gone. Returns how many were ended. Nothing to do for a
    /// single-replica store, which ends interrupted imports at start.
    async fn maintain(&self, running: &[ImportKey], message: &str) -> Result<u64, StoreError> {
        let _ = (running, message);
        Ok(0)
    }

    /// Wakes when an import changes, whichever replica changed it. `None` when only this
    /// process writes (watchers then poll).
    fn subscribe(&self, key: ImportKey) -> Option<tokio::sync::watch::Receiver<u64>> {
        let _ = key;
        None
    }

    /// Creates the import, PROCESSING. `AlreadyExists` when the id is taken in the account.
    async fn create_import(&self, new: &NewImport) -> Result<Import, StoreError>;

    /// Removes an import that was refused before anything was written.
    async fn discard_import(&self, key: ImportKey) -> Result<(), StoreError>;

    /// Writes a batch in one transaction: its users (duplicates refused by the unique
    /// indexes and reported as row errors), its row errors, and the import's counters.
    async fn write_batch(
        &self,
        target: &BatchTarget<'_>,
        batch: &UserBatch,
    ) -> Result<BatchOutcome, StoreError>;

    /// Sets the terminal status; an ERROR_* status deletes the import's users in the same
    /// transaction. `NotProcessing` when the import had already ended.
    async fn conclude_import(
        &self,
        key: ImportKey,
        conclusion: &Conclusion,
    ) -> Result<Import, StoreError>;

    async fn get_import(
        &self,
        account_id: &AccountId,
        import_id: &ImportId,
    ) -> Result<Option<Import>, StoreError>;

    /// The account's imports, newest first, after `before` (an import key) when given.
    async fn list_imports(
        &self,
        account_id: &AccountId,
        before: Option<ImportKey>,
        limit: u32,
    ) -> Result<Vec<Import>, StoreError>;

    /// Row errors in file order, after sequence number `after` when given.
    async fn list_row_errors(
        &self,
        key: ImportKey,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<StoredRowError>, StoreError>;
}

/// The backends, by URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Result<Self, StoreError> {
        match url.split(':').next().unwrap_or_default() {
            "sqlite" => Ok(Backend::Sqlite),
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            scheme => Err(StoreError::Config(format!(
                "unsupported database url scheme '{scheme}:'; use sqlite://PATH or \
                 postgres://USER@HOST/DATABASE"
            ))),
        }
    }
}

/// Opens the store a database URL names: `sqlite:` (the embedded default) or `postgres:`.
pub async fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match Backend::of(url)? {
        Backend::Sqlite => Arc::new(sqlite::SqliteStore::open(url).await?),
        Backend::Postgres => Arc::new(postgres::PostgresStore::open(url).await?),
    })
}

#[derive(sqlx::FromRow)]
pub(crate) struct ImportRow {
    import_key: i64,
    account_id: String,
    import_id: String,
    r#type: String,
    filename: String,
    status: String,
    bytes_received: i64,
    rows_processed: i64,
    rows_imported: i64,
    rows_failed: i64,
    row_errors_omitted: i64,
    encoding: Option<String>,
    delimiter: Option<String>,
    error_message: String,
    create_time: i64,
    update_time: i64,
    complete_time: Option<i64>,
}

impl TryFrom<ImportRow> for Import {
    type Error = StoreError;

    fn try_from(row: ImportRow) -> Result<Self, StoreError> {
        let corrupt =
            |what: &str| StoreError::Corrupt(format!("import {}: {what}", row.import_key));
        Ok(Import {
            key: row.import_key,
            account_id: AccountId::parse(&row.account_id).map_err(|_| corrupt("account_id"))?,
            import_id: ImportId::parse(&row.import_id).map_err(|_| corrupt("import_id"))?,
            kind: ImportType::from_stored(&row.r#type).ok_or_else(|| corrupt("type"))?,
            filename: Filename::from_stored(row.filename),
            status: ImportStatus::from_stored(&row.status).ok_or_else(|| corrupt("status"))?,
            counters: Counters {
                bytes_received: row.bytes_received as u64,
                rows_processed: row.rows_processed as u64,
                rows_imported: row.rows_imported as u64,
                rows_failed: row.rows_failed as u64,
                row_errors_omitted: row.row_errors_omitted as u64,
            },
            format: format_from_columns(row.encoding.as_deref(), row.delimiter.as_deref())?,
            error_message: row.error_message,
            create_time: from_micros(row.create_time),
            update_time: from_micros(row.update_time),
            complete_time: row.complete_time.map(from_micros),
        })
    }
}

/// Who holds a value a row was refused for: the import and row that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub import_key: ImportKey,
    pub source_row: u64,
    /// The holder's import id while that import still runs: if it fails, its users are
    /// deleted and the value is free again, which the row error must say.
    pub running_import: Option<String>,
}

/// The columns the stores' holder lookups return: the value, then the holder.
pub(crate) type HolderRow = (String, i64, i64, Option<String>);

/// The start of a holder lookup of `column` (email or external_id), up to the account's
/// placeholder, which each store writes its own way, as it does the list of values.
pub(crate) fn holder_lookup(column: Column) -> String {
    format!(
        "SELECT u.{}, u.import_key, u.source_row, \
         CASE WHEN i.status = 'PROCESSING' THEN i.import_id END \
         FROM users u JOIN imports i ON i.import_key = u.import_key WHERE u.account_id = ",
        column.name()
    )
}

/// Holders by value, from the rows of a holder lookup.
pub(crate) fn holders_by_value(rows: Vec<HolderRow>) -> HashMap<String, Holder> {
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

/// The row error for a valid row the unique indexes refused.
pub(crate) fn conflict_error(
    key: ImportKey,
    row_number: u64,
    column: Column,
    value: &str,
    holder: Option<Holder>,
) -> RowError {
    match holder {
        Some(h) if h.import_key == key => {
            RowError::duplicate_in_file(row_number, column, value, h.source_row)
        }
        Some(Holder {
            running_import: Some(import_id),
            ..
        }) => RowError::being_imported(row_number, column, value, &import_id),
        _ => RowError::already_exists(row_number, column, value),
    }
}

/// The row errors of the batch users (by index) that the unique indexes refused, given who
/// holds each refused email and external id.
pub(crate) fn refusals(
    key: ImportKey,
    batch: &UserBatch,
    refused: &[usize],
    by_email: &HashMap<String, Holder>,
    by_external_id: &HashMap<String, Holder>,
) -> Vec<RowError> {
    let mut errors = Vec::with_capacity(refused.len());
    for &i in refused {
        let user = batch.user(i);
        let email_holder = by_email.get(user.email).cloned();
        let id_holder = user
            .external_id
            .and_then(|id| by_external_id.get(id).cloned());
        // When neither is found, the holder went away in between (another import ended):
        // the row still was not imported, and the email is the likelier culprit.
        if email_holder.is_some() || id_holder.is_none() {
            let value = user.email_as_written;
            errors.push(conflict_error(
                key,
                user.row_number,
                Column::Email,
                value,
                email_holder,
            ));
        }
        if let (Some(id), Some(holder)) = (user.external_id, id_holder) {
            errors.push(conflict_error(
                key,
                user.row_number,
                Column::ExternalId,
                id,
                Some(holder),
            ));
        }
    }
    errors
}

impl StoredRowError {
    /// From the stored columns: seq, row_number, column_name, code, message, value.
    pub(crate) fn from_columns(
        (seq, row_number, column, code, message, value): (i64, i64, String, String, String, String),
    ) -> Result<Self, StoreError> {
        let column = match column.as_str() {
            "" => None,
            name => Some(
                Column::from_name(name)
                    .ok_or_else(|| StoreError::Corrupt(format!("row error column '{name}'")))?,
            ),
        };
        let code = ErrorCode::from_stored(&code)
            .ok_or_else(|| StoreError::Corrupt(format!("row error code '{code}'")))?;
        Ok(StoredRowError {
            seq: seq as u64,
            error: RowError {
                row_number: row_number as u64,
                column,
                code,
                message,
                value,
            },
        })
    }
}

/// Merges two lists of row errors sorted by row, keeping each row's errors together.
pub(crate) fn merge_by_row(a: &[RowError], b: Vec<RowError>) -> Vec<RowError> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let mut b = b.into_iter().peekable();
    for error in a {
        while let Some(next) = b.next_if(|e| e.row_number < error.row_number) {
            merged.push(next);
        }
        merged.push(error.clone());
    }
    merged.extend(b);
    merged
}

/// The stored form of a text format: encoding and delimiter names.
pub(crate) fn format_columns(format: Option<TextFormat>) -> (Option<&'static str>, Option<String>) {
    match format {
        Some(f) => (Some(f.encoding.as_str()), Some(f.delimiter_name())),
        None => (None, None),
    }
}

pub(crate) fn format_from_columns(
    encoding: Option<&str>,
    delimiter: Option<&str>,
) -> Result<Option<TextFormat>, StoreError> {
    match (encoding, delimiter) {
        (Some(e), Some(d)) => Ok(Some(TextFormat {
            encoding: TextEncoding::from_stored(e)
                .ok_or_else(|| StoreError::Corrupt(format!("encoding '{e}'")))?,
            delimiter: TextFormat::delimiter_from_name(d)
                .ok_or_else(|| StoreError::Corrupt(format!("delimiter '{d}'")))?,
        })),
        _ => Ok(None),
    }
}

pub(crate) fn micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

pub(crate) fn from_micros(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ErrorCode;

    #[test]
    fn merged_errors_follow_file_order() {
        let a = vec![
            RowError::required(2, Column::Email),
            RowError::invalid_role(5, "x"),
        ];
        let b = vec![
            RowError::already_exists(3, Column::Email, "a@x.io"),
            RowError::already_exists(9, Column::Email, "b@x.io"),
        ];
        let rows: Vec<(u64, ErrorCode)> = merge_by_row(&a, b)
            .iter()
            .map(|e| (e.row_number, e.code))
            .collect();
        assert_eq!(
            rows,
            vec![
                (2, ErrorCode::Required),
                (3, ErrorCode::AlreadyExists),
                (5, ErrorCode::InvalidRole),
                (9, ErrorCode::AlreadyExists),
            ]
        );
    }

    #[test]
    fn a_holder_in_the_same_import_is_a_duplicate_in_the_file() {
        let same = conflict_error(
            7,
            12,
            Column::Email,
            "a@x.io",
            Some(Holder {
                import_key: 7,
                source_row: 4,
                running_import: Some("this-one".into()),
            }),
        );
        assert_eq!(same.code, ErrorCode::DuplicateInFile);
        assert!(same.message.contains("row 4"));
        let other = conflict_error(
            7,
            12,
            Column::ExternalId,
            "E1",
            Some(Holder {
                import_key: 3,
                source_row: 4,
                running_import: None,
            }),
        );
        assert_eq!(other.code, ErrorCode::AlreadyExists);
        assert_eq!(other.column, Some(Column::ExternalId));
        assert!(
            other.message.contains("already exists"),
            "{}",
            other.message
        );
        let running = conflict_error(
            7,
            12,
            Column::Email,
            "a@x.io",
            Some(Holder {
                import_key: 3,
                source_row: 4,
                running_import: Some("march".into()),
            }),
        );
        assert_eq!(running.code, ErrorCode::AlreadyExists);
        assert!(
            running
                .message
                .contains("import 'march', which is still running"),
            "{}",
            running.message
        );
    }
}
