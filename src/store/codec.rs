//! How domain values are stored in columns, and read back, the same way on both backends: a
//! row read back is parsed again, so that a corrupt row is an error instead of a bad value.
//!
//! Times cross as microseconds since the Unix epoch, whatever the column: SQLite stores the
//! integer itself, PostgreSQL a `timestamptz` that its `IMPORT_COLUMNS` turns back into one.
//! Enumerations (status, type, policy, codes) are stored by their names (`as_str`, read back by
//! `from_stored`), never by their numbers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{StoreError, StoredRowError};
use crate::domain::{
    AccountId, Column, ConflictPolicy, Counters, ErrorCode, Filename, Import, ImportId,
    ImportStatus, ImportType, InvitationPolicy, RowError, TextEncoding, TextFormat,
};

/// `Import.users_invited`, as both backends select it among their `IMPORT_COLUMNS`: a SEND
/// import's users are invited by its commit, so its completed rows count without a write of
/// their own; then those `SendInvitations` invited later (`invited_later`).
macro_rules! users_invited_column {
    () => {
        "(CASE WHEN invitations = 'SEND' AND NOT validate_only \
          AND status IN ('COMPLETED_SUCCESS', 'COMPLETED_PARTIAL') \
          THEN rows_imported ELSE 0 END + invited_later) AS users_invited"
    };
}
pub(crate) use users_invited_column;

/// An `imports` row as both backends select it (times in microseconds).
///
/// The fields are named as the columns, and selected by each backend's `IMPORT_COLUMNS`; the only
/// way out is `Import::try_from`, which checks every field a later read relies on.
#[derive(sqlx::FromRow)]
pub(crate) struct ImportRow {
    import_key: i64,
    account_id: String,
    import_id: String,
    r#type: String,
    filename: String,
    created_by: String,
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
    validate_only: bool,
    on_conflict: String,
    rows_skipped: i64,
    rows_updated: i64,
    retry_of_import_id: Option<String>,
    revert_time: Option<i64>,
    revert_note: String,
    details_removed_time: Option<i64>,
    invitations: String,
    users_invited: i64,
    resumable: bool,
    committed_bytes: i64,
    resume_deadline: Option<i64>,
}

impl TryFrom<ImportRow> for Import {
    type Error = StoreError;

    /// `Corrupt`, naming the import and the column, when a stored value does not parse: a row the
    /// service could not have written, so a bug or a hand edit, never a client's fault.
    fn try_from(row: ImportRow) -> Result<Self, StoreError> {
        let corrupt =
            |what: &str| StoreError::Corrupt(format!("import {}: {what}", row.import_key));
        Ok(Import {
            key: row.import_key,
            account_id: AccountId::parse(&row.account_id).map_err(|_| corrupt("account_id"))?,
            import_id: ImportId::parse(&row.import_id).map_err(|_| corrupt("import_id"))?,
            kind: ImportType::from_stored(&row.r#type).ok_or_else(|| corrupt("type"))?,
            filename: Filename::from_stored(row.filename),
            created_by: row.created_by,
            validate_only: row.validate_only,
            on_conflict: ConflictPolicy::from_stored(&row.on_conflict)
                .ok_or_else(|| corrupt("on_conflict"))?,
            retry_of: row
                .retry_of_import_id
                .as_deref()
                .map(ImportId::parse)
                .transpose()
                .map_err(|_| corrupt("retry_of_import_id"))?,
            status: ImportStatus::from_stored(&row.status).ok_or_else(|| corrupt("status"))?,
            counters: Counters {
                bytes_received: row.bytes_received as u64,
                rows_processed: row.rows_processed as u64,
                rows_imported: row.rows_imported as u64,
                rows_failed: row.rows_failed as u64,
                row_errors_omitted: row.row_errors_omitted as u64,
                rows_skipped: row.rows_skipped as u64,
                rows_updated: row.rows_updated as u64,
            },
            format: format_from_columns(row.encoding.as_deref(), row.delimiter.as_deref())?,
            error_message: row.error_message,
            create_time: from_micros(row.create_time),
            update_time: from_micros(row.update_time),
            complete_time: row.complete_time.map(from_micros),
            revert_time: row.revert_time.map(from_micros),
            revert_note: row.revert_note,
            details_removed_time: row.details_removed_time.map(from_micros),
            invitations: InvitationPolicy::from_stored(&row.invitations)
                .ok_or_else(|| corrupt("invitations"))?,
            users_invited: row.users_invited as u64,
            resumable: row.resumable,
            committed_bytes: row.committed_bytes as u64,
            resume_deadline: row.resume_deadline.map(from_micros),
        })
    }
}

/// A waiting import as a resume takes it (`Steps::claim_waiting`): its columns, the reader's
/// state and the rows up to `committed_bytes`.
#[derive(sqlx::FromRow)]
pub(crate) struct ClaimedRow {
    #[sqlx(flatten)]
    pub import: ImportRow,
    pub resume_state: Option<String>,
    pub committed_rows: i64,
}

impl ClaimedRow {
    /// What `Steps::claim_waiting` answers: the import, checked as any row read back, the
    /// reader's state and the rows up to `committed_bytes`.
    pub fn parts(self) -> Result<(Import, Option<String>, u64), StoreError> {
        Ok((
            Import::try_from(self.import)?,
            self.resume_state,
            self.committed_rows as u64,
        ))
    }
}

/// The columns of a stored row error: seq, row_number, column_name, code, message, value.
pub(crate) type RowErrorColumns = (i64, i64, String, String, String, String);

impl TryFrom<RowErrorColumns> for StoredRowError {
    type Error = StoreError;

    /// `Corrupt` for a column or code this version does not know. An empty column name is a row
    /// error about the whole row (a wrong number of fields, undecodable text).
    fn try_from(
        (seq, row_number, column, code, message, value): RowErrorColumns,
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

/// The stored form of a text format: encoding and delimiter names.
///
/// Both or neither: `None` until the reader knew the format. A tab is stored as the two
/// characters `\t`.
pub(crate) fn format_columns(format: Option<TextFormat>) -> (Option<&'static str>, Option<String>) {
    match format {
        Some(f) => (Some(f.encoding.as_str()), Some(f.delimiter_name())),
        None => (None, None),
    }
}

/// The text format back from its columns; `Corrupt` for a name this version does not know.
fn format_from_columns(
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
        // Not read far enough to know (both are written together).
        (None, _) | (_, None) => Ok(None),
    }
}

/// A time as stored: microseconds since the Unix epoch. A time before the epoch (a clock set
/// wrong) is stored as 0 rather than failing the write.
pub(crate) fn micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

/// A stored time back; a negative value (which `micros` never writes) reads as the epoch.
pub(crate) fn from_micros(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros.max(0) as u64)
}
