//! An import and its life cycle: PROCESSING, then exactly one terminal status.
//!
//! The first message of an upload asks for an import ([`NewImport`]); it is created
//! PROCESSING, its [`Counters`] move while the file is read, and it ends once: in a COMPLETED_*
//! status, which keeps its users, or in an ERROR_* status or CANCELLED, whose users are removed
//! and whose updates are undone.
//!
//! Each enum here is stored as the text of its `as_str`, readable in a SQL shell, and read back
//! with `from_stored`: a stored value that no longer parses is a corrupt row, never a guess.

use std::time::SystemTime;

use super::ArgumentError;
use super::ids::{AccountId, ImportId};
use super::invitation::InvitationPolicy;

/// What an import creates. Only users today; the type is part of the contract so that other
/// kinds of import can come without a new API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportType {
    /// Users invited into the account, from a file with the Users template's columns.
    Users,
}

impl ImportType {
    /// How the type is stored: `USERS`.
    pub fn as_str(self) -> &'static str {
        match self {
            ImportType::Users => "USERS",
        }
    }

    /// A type as stored, read back; `None` is a corrupt row.
    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "USERS" => Some(ImportType::Users),
            _ => None,
        }
    }
}

/// The statuses of the product's help page. Every status but PROCESSING is terminal, and an
/// import reaches exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStatus {
    /// The upload runs; the counters move.
    Processing,
    /// No row failed: each was imported, or skipped or updated under those policies.
    CompletedSuccess,
    /// At least one row failed, even if all did; the others went in, and each failed row is
    /// listed with its errors.
    CompletedPartial,
    /// The file has no data row: a header alone, or only blank rows after it.
    CompletedNothingToImport,
    /// The file could not be read, for instance a header without an email column, a byte that
    /// cannot be decoded or a quote never closed. Nothing is imported.
    ErrorParsing,
    /// Anything else ended the upload, for instance: the stream broke or stalled, `finish`
    /// never came or did not match the file, the file was too large, a write failed, the
    /// server shut down. Nothing is imported.
    ErrorUnknown,
    /// Stopped by `CancelImport`: nothing imported or updated.
    Cancelled,
}

impl ImportStatus {
    /// Every status, for `from_stored`, the metrics and the tests.
    pub const ALL: [ImportStatus; 7] = [
        ImportStatus::Processing,
        ImportStatus::CompletedSuccess,
        ImportStatus::CompletedPartial,
        ImportStatus::CompletedNothingToImport,
        ImportStatus::ErrorParsing,
        ImportStatus::ErrorUnknown,
        ImportStatus::Cancelled,
    ];

    /// Every status but PROCESSING: the import has ended, and only a revert still changes it
    /// (its revert time and note).
    pub fn is_terminal(self) -> bool {
        self != ImportStatus::Processing
    }

    /// The status a finished upload earns from its counters: NOTHING_TO_IMPORT with no row,
    /// SUCCESS with no failed row, PARTIAL otherwise, even when every row failed.
    pub fn completed(rows_processed: u64, rows_failed: u64) -> Self {
        if rows_processed == 0 {
            ImportStatus::CompletedNothingToImport
        } else if rows_failed == 0 {
            ImportStatus::CompletedSuccess
        } else {
            ImportStatus::CompletedPartial
        }
    }

    /// How the status is stored: readable in a SQL shell, stable across releases.
    pub fn as_str(self) -> &'static str {
        match self {
            ImportStatus::Processing => "PROCESSING",
            ImportStatus::CompletedSuccess => "COMPLETED_SUCCESS",
            ImportStatus::CompletedPartial => "COMPLETED_PARTIAL",
            ImportStatus::CompletedNothingToImport => "COMPLETED_NOTHING_TO_IMPORT",
            ImportStatus::ErrorParsing => "ERROR_PARSING",
            ImportStatus::ErrorUnknown => "ERROR_UNKNOWN",
            ImportStatus::Cancelled => "CANCELLED",
        }
    }

    /// The status in the product's help page's own words (`Completed - Partial`): what people
    /// read, in the CLI, in messages and on the console.
    pub fn words(self) -> &'static str {
        match self {
            ImportStatus::Processing => "Processing",
            ImportStatus::CompletedSuccess => "Completed - Success",
            ImportStatus::CompletedPartial => "Completed - Partial",
            ImportStatus::CompletedNothingToImport => "Completed - Nothing to Import",
            ImportStatus::ErrorParsing => "Error - Parsing",
            ImportStatus::ErrorUnknown => "Error - Unknown",
            ImportStatus::Cancelled => "Cancelled",
        }
    }

    /// A COMPLETED_* status: its users stay. Any other terminal status removed them and undid
    /// its updates (see `Counters::ended_as`).
    pub fn is_completed(self) -> bool {
        matches!(
            self,
            ImportStatus::CompletedSuccess
                | ImportStatus::CompletedPartial
                | ImportStatus::CompletedNothingToImport
        )
    }

    /// A status as stored, read back; `None` is a corrupt row.
    pub fn from_stored(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

/// The encoding a file was read with, as the `Import` reports it: named by a byte order mark,
/// else UTF-8, falling back to Windows-1252 when the first byte that is not UTF-8 comes
/// before any other non-ASCII character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TextEncoding {
    /// UTF-8, with or without a byte order mark: the default.
    Utf8,
    /// UTF-16 little-endian, found by its byte order mark.
    Utf16Le,
    /// UTF-16 big-endian, found by its byte order mark.
    Utf16Be,
    /// PowerShell's `Export-Csv -Encoding UTF32`, with its byte order mark.
    Utf32Le,
    /// UTF-32 big-endian, found by its byte order mark.
    Utf32Be,
    /// No byte order mark and not UTF-8: the code page in which Excel on Windows saves plain
    /// "CSV" in Western European locales.
    Windows1252,
}

impl TextEncoding {
    /// The name the API shows and the store keeps: `UTF-8`, `UTF-16LE`, `UTF-16BE`, `UTF-32LE`,
    /// `UTF-32BE` or `windows-1252`.
    pub fn as_str(self) -> &'static str {
        match self {
            TextEncoding::Utf8 => "UTF-8",
            TextEncoding::Utf16Le => "UTF-16LE",
            TextEncoding::Utf16Be => "UTF-16BE",
            TextEncoding::Utf32Le => "UTF-32LE",
            TextEncoding::Utf32Be => "UTF-32BE",
            TextEncoding::Windows1252 => "windows-1252",
        }
    }

    /// An encoding as stored, read back; `None` is a corrupt row.
    pub fn from_stored(value: &str) -> Option<Self> {
        [
            Self::Utf8,
            Self::Utf16Le,
            Self::Utf16Be,
            Self::Utf32Le,
            Self::Utf32Be,
            Self::Windows1252,
        ]
        .into_iter()
        .find(|e| e.as_str() == value)
    }
}

/// How a file's text is written, as the `Import` reports it: known once the first bytes were
/// read, and stored as two columns written together (`encoding`, `delimiter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextFormat {
    /// The encoding the file was read with.
    pub encoding: TextEncoding,
    /// The field delimiter, one ASCII byte: `,`, `;` or tab, the most frequent in the header
    /// line, or any visible character an Excel `sep=` first line names.
    pub delimiter: u8,
}

impl TextFormat {
    /// The delimiter as the API shows it and the store keeps it: `,`, `;`, or `\t` (the two
    /// characters) for a tab.
    pub fn delimiter_name(self) -> String {
        match self.delimiter {
            b'\t' => "\\t".to_owned(),
            other => char::from(other).to_string(),
        }
    }

    /// A delimiter as stored (`delimiter_name`), read back: `\t` is a tab, any other one-byte
    /// name is itself. `None` is a corrupt row.
    pub fn delimiter_from_name(name: &str) -> Option<u8> {
        match name {
            "\\t" => Some(b'\t'),
            other if other.len() == 1 => Some(other.as_bytes()[0]),
            _ => None,
        }
    }
}

/// What happens to a row whose email already belongs to a user of the account. Duplicates
/// within the file are DUPLICATE_IN_FILE under every policy, and an external id held by
/// another user is ALREADY_EXISTS, unless the row is skipped (a skipped row writes nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// The row fails with ALREADY_EXISTS.
    #[default]
    Error,
    /// The user is left as it is, and the row counted in `rows_skipped`.
    Skip,
    /// The row's non-empty cells replace the user's values (the role only when its cell is not
    /// empty), and the row counts in `rows_updated`. An import that fails or is cancelled puts
    /// the old values back; a revert does not.
    Update,
}

impl ConflictPolicy {
    /// How the policy is stored: `ERROR`, `SKIP` or `UPDATE`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::Error => "ERROR",
            ConflictPolicy::Skip => "SKIP",
            ConflictPolicy::Update => "UPDATE",
        }
    }

    /// A policy as stored, read back; `None` is a corrupt row.
    pub fn from_stored(value: &str) -> Option<Self> {
        [Self::Error, Self::Skip, Self::Update]
            .into_iter()
            .find(|p| p.as_str() == value)
    }
}

/// The numbers an import reports while it runs and once it finished. Each only grows while
/// the upload runs; an ending that is not a completion then zeroes some (`ended_as`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Bytes of the file received so far, as sent (before decoding), counted even past the
    /// size limit: what the `size_bytes` of `finish` is checked against.
    pub bytes_received: u64,
    /// Data rows read and validated (blank rows are not counted).
    pub rows_processed: u64,
    /// Rows written as new users; in a dry run, those that would have been. 0 once an import
    /// ends in an ERROR_* status or CANCELLED.
    pub rows_imported: u64,
    /// Rows with at least one error, each listed with its errors (unless the cap was reached,
    /// see `row_errors_omitted`).
    pub rows_failed: u64,
    /// Row errors not stored because the import reached its cap; the counters above stay exact.
    pub row_errors_omitted: u64,
    /// Rows whose user existed and was left as it is (`ConflictPolicy::Skip`).
    pub rows_skipped: u64,
    /// Rows whose user existed and was updated (`ConflictPolicy::Update`).
    pub rows_updated: u64,
}

impl Counters {
    /// The counters an ending keeps: an ending that is not a completion (an ERROR_* status, a
    /// cancel) imports, skips and updates nothing, since its users are removed and its updates
    /// undone in the transaction that stores it. The one rule for every reader of an ending:
    /// the stores, the live view of an ending that waits to be stored, and the metrics.
    pub fn ended_as(self, status: ImportStatus) -> Self {
        if status.is_completed() {
            return self;
        }
        Self {
            rows_imported: 0,
            rows_skipped: 0,
            rows_updated: 0,
            ..self
        }
    }

    /// Every counter, in a fixed order: destructured, so that a new counter must be added here
    /// and so to every comparison built on it.
    fn all(&self) -> [u64; 7] {
        let Counters {
            bytes_received,
            rows_processed,
            rows_imported,
            rows_failed,
            row_errors_omitted,
            rows_skipped,
            rows_updated,
        } = *self;
        [
            bytes_received,
            rows_processed,
            rows_imported,
            rows_failed,
            row_errors_omitted,
            rows_skipped,
            rows_updated,
        ]
    }

    /// Whether these counters are further along than `other`: two snapshots of one running
    /// upload's progress, each counter of which only grows. Used to choose between the stored
    /// progress and the live one, so that answers never go back.
    pub fn is_later_than(&self, other: &Counters) -> bool {
        let (a, b) = (self.all(), other.all());
        a != b && a.iter().zip(&b).all(|(x, y)| x >= y)
    }
}

/// The file name the client gave, kept as given (the proto says so; surrounding spaces
/// included): only `.csv` files are accepted, as the product promises, judged on the name
/// without those spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filename(String);

/// Longest accepted file name, in characters, surrounding spaces included.
const MAX_FILENAME_CHARS: usize = 255;

impl Filename {
    /// Checks a client's file name: not blank, at most 255 characters with no control
    /// character, and ending in `.csv` in any case once surrounding spaces are removed (`.csv`
    /// alone is not a name). The refusal of another extension says how to save a sheet as CSV.
    pub fn parse(value: &str) -> Result<Self, ArgumentError> {
        let name = value.trim();
        if name.is_empty() {
            return Err(ArgumentError::new("filename", "filename is required"));
        }
        if value.chars().count() > MAX_FILENAME_CHARS || value.chars().any(char::is_control) {
            return Err(ArgumentError::new(
                "filename",
                "filename must be at most 255 characters, without control characters",
            ));
        }
        let is_csv = name.len() > 4
            && name
                .get(name.len() - 4..)
                .is_some_and(|ext| ext.eq_ignore_ascii_case(".csv"));
        if !is_csv {
            return Err(ArgumentError::new(
                "filename",
                format!(
                    "filename must end in .csv: only CSV files can be imported; got '{name}', \
                 save the sheet as CSV (for instance \"CSV UTF-8\" in Excel) and upload that file"
                ),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The name as the client gave it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name read back from the database, where only parsed names are written.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }
}

/// What the first message of an upload asks for, once checked. The caller's right to the
/// account and `retry_of` are checked next, before any import is created.
#[derive(Debug, Clone)]
pub struct NewImport {
    /// The account the users are imported into.
    pub account_id: AccountId,
    /// Chosen by the client, or generated when it sent none. An id the account has already is
    /// ALREADY_EXISTS, so that a retried upload never imports twice.
    pub import_id: ImportId,
    /// What the file creates.
    pub kind: ImportType,
    /// As the client gave it.
    pub filename: Filename,
    /// The name of the token that starts it; empty on an open server. Set from the caller by
    /// the import layer, never from the request.
    pub created_by: String,
    /// A dry run: checked like an import, with no user written. Its status, counters and row
    /// errors are those the import would have had at this moment.
    pub validate_only: bool,
    /// What to do with a row whose email the account has already.
    pub on_conflict: ConflictPolicy,
    /// The import of the same account whose failed rows this file corrects. It must exist:
    /// the upload is refused with INVALID_ARGUMENT otherwise.
    pub retry_of: Option<ImportId>,
    /// When the users it creates are invited.
    pub invitations: InvitationPolicy,
    /// A resumable upload: a stream that breaks before its finish message leaves the import
    /// waiting for its client (see `Import::resume_deadline`) instead of ending it.
    pub resumable: bool,
    /// Where this upload's bytes start in the file: 0 for a first upload, the import's
    /// `committed_bytes` for a resume (which then names an existing import). Not stored.
    pub resume_offset: u64,
}

/// The store's own handle on an import: a small integer is cheaper than the
/// (account, import id) pair in the users and row errors tables.
pub type ImportKey = i64;

/// An import as stored, with its progress: what GetImport, ListImports and WatchImport
/// show. While it runs, the live view in this process may be fresher than the store's.
#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    /// The store's handle; not part of the API.
    pub key: ImportKey,
    /// The account it belongs to, and its users with it.
    pub account_id: AccountId,
    /// Unique within the account.
    pub import_id: ImportId,
    /// What it creates.
    pub kind: ImportType,
    /// As the client gave it.
    pub filename: Filename,
    /// The name of the token that started it; empty when the server ran open.
    pub created_by: String,
    /// A dry run: no user was written, and a revert removes nothing.
    pub validate_only: bool,
    /// What it did with a row whose email the account had already.
    pub on_conflict: ConflictPolicy,
    /// The import whose failed rows this one corrects, if the client named one.
    pub retry_of: Option<ImportId>,
    /// Where it stands: PROCESSING, or its one terminal status.
    pub status: ImportStatus,
    /// Its progress, or what its ending kept of it (`Counters::ended_as`).
    pub counters: Counters,
    /// How the file's text is written, once its first bytes were read.
    pub format: Option<TextFormat>,
    /// Why the import ended in an ERROR_* status, and what to do; a CANCELLED import has one
    /// too, saying so. Empty while PROCESSING and for a COMPLETED_* status. Control
    /// characters quoted from the file are escaped.
    pub error_message: String,
    /// When the upload's first message created it.
    pub create_time: SystemTime,
    /// When its stored progress or status last changed; a revert does not change it.
    pub update_time: SystemTime,
    /// When it reached its terminal status; `None` while PROCESSING.
    pub complete_time: Option<SystemTime>,
    /// When `RevertImport` first removed its users; `None` if it never ran. A second revert
    /// keeps the first time.
    pub revert_time: Option<SystemTime>,
    /// What the first revert did, in words: how many users it removed, and how many it kept
    /// because another import has updated them since.
    pub revert_note: String,
    /// When the retention period removed its row errors and failed rows (`import::retention`);
    /// `None` while they are kept. The counters stay as they were.
    pub details_removed_time: Option<SystemTime>,
    /// When the users it creates are invited.
    pub invitations: InvitationPolicy,
    /// Its users invited so far: with SEND those it created, once it completed; with HOLD
    /// those `SendInvitations` invited. Resends do not count again.
    pub users_invited: u64,
    /// Opted in to resuming (`NewImport::resumable`).
    pub resumable: bool,
    /// The offset in the file just after the last row a stored batch holds: where a resume
    /// starts. It never goes back.
    pub committed_bytes: u64,
    /// Set while a resumable upload waits for its client: it ends ERROR_UNKNOWN after this.
    pub resume_deadline: Option<SystemTime>,
}

impl Import {
    /// Whether it waits for its client to resume the upload: PROCESSING, with no server
    /// driving it.
    pub fn waiting(&self) -> bool {
        self.status == ImportStatus::Processing && self.resume_deadline.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_storage() {
        for status in ImportStatus::ALL {
            assert_eq!(ImportStatus::from_stored(status.as_str()), Some(status));
        }
        assert_eq!(ImportStatus::from_stored("DONE"), None);
    }

    #[test]
    fn completed_status_follows_the_counters() {
        assert_eq!(
            ImportStatus::completed(0, 0),
            ImportStatus::CompletedNothingToImport
        );
        assert_eq!(
            ImportStatus::completed(3, 0),
            ImportStatus::CompletedSuccess
        );
        assert_eq!(
            ImportStatus::completed(3, 1),
            ImportStatus::CompletedPartial
        );
        assert_eq!(
            ImportStatus::completed(3, 3),
            ImportStatus::CompletedPartial
        );
    }

    #[test]
    fn a_failed_ending_keeps_nothing_it_imported_skipped_or_updated() {
        let counters = Counters {
            bytes_received: 10,
            rows_processed: 5,
            rows_imported: 2,
            rows_failed: 1,
            row_errors_omitted: 1,
            rows_skipped: 1,
            rows_updated: 1,
        };
        for status in ImportStatus::ALL {
            let kept = counters.ended_as(status);
            if status.is_completed() {
                assert_eq!(kept, counters);
            } else {
                assert_eq!(
                    (kept.rows_imported, kept.rows_skipped, kept.rows_updated),
                    (0, 0, 0)
                );
                assert_eq!(
                    (kept.bytes_received, kept.rows_processed, kept.rows_failed),
                    (10, 5, 1)
                );
                assert_eq!(kept.row_errors_omitted, 1);
            }
        }
    }

    #[test]
    fn later_counters_move_every_counter_forward() {
        let base = Counters {
            rows_processed: 5,
            rows_updated: 2,
            ..Counters::default()
        };
        let updated = Counters {
            rows_updated: 3,
            ..base
        };
        assert!(updated.is_later_than(&base));
        assert!(!base.is_later_than(&updated));
        assert!(!base.is_later_than(&base));
        let skipped_less = Counters {
            rows_processed: 9,
            rows_updated: 1,
            ..base
        };
        assert!(!skipped_less.is_later_than(&base));
    }

    #[test]
    fn a_filename_is_kept_as_given() {
        assert_eq!(Filename::parse("a.csv ").unwrap().as_str(), "a.csv ");
        assert!(Filename::parse("   ").is_err());
        assert!(Filename::parse("a.csv\n").is_err());
    }

    #[test]
    fn only_csv_files_are_accepted() {
        assert!(Filename::parse("users.csv").is_ok());
        assert!(Filename::parse("USERS.CSV").is_ok());
        assert!(Filename::parse("Team list.Csv").is_ok());
        for bad in [
            "",
            "users.xlsx",
            "users.csv.zip",
            ".csv",
            "users.tsv",
            "users",
        ] {
            assert!(Filename::parse(bad).is_err(), "{bad}");
        }
    }
}
