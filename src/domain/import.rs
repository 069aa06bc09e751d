//! An import and its life cycle: PROCESSING, then exactly one terminal status.

use std::time::SystemTime;

use super::ArgumentError;
use super::ids::{AccountId, ImportId};

/// What an import creates. Only users today; the type is part of the contract so that other
/// kinds of import can come without a new API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportType {
    Users,
}

impl ImportType {
    pub fn as_str(self) -> &'static str {
        match self {
            ImportType::Users => "USERS",
        }
    }

    pub fn from_stored(value: &str) -> Option<Self> {
        match value {
            "USERS" => Some(ImportType::Users),
            _ => None,
        }
    }
}

/// The statuses of the product's help page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportStatus {
    Processing,
    CompletedSuccess,
    CompletedPartial,
    CompletedNothingToImport,
    ErrorParsing,
    ErrorUnknown,
    /// Stopped by `CancelImport`: nothing imported or updated.
    Cancelled,
}

impl ImportStatus {
    pub const ALL: [ImportStatus; 7] = [
        ImportStatus::Processing,
        ImportStatus::CompletedSuccess,
        ImportStatus::CompletedPartial,
        ImportStatus::CompletedNothingToImport,
        ImportStatus::ErrorParsing,
        ImportStatus::ErrorUnknown,
        ImportStatus::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        self != ImportStatus::Processing
    }

    /// The status a finished upload earns from its counters.
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

    /// A COMPLETED_* status: its users stay.
    pub fn is_completed(self) -> bool {
        matches!(
            self,
            ImportStatus::CompletedSuccess
                | ImportStatus::CompletedPartial
                | ImportStatus::CompletedNothingToImport
        )
    }

    pub fn from_stored(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

/// The encoding a file was read with, as the `Import` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    Utf8,
    Utf16Le,
    Utf16Be,
    /// PowerShell's `Export-Csv -Encoding UTF32`, with its byte order mark.
    Utf32Le,
    Utf32Be,
    Windows1252,
}

impl TextEncoding {
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

/// How a file's text is written, as the `Import` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextFormat {
    pub encoding: TextEncoding,
    pub delimiter: u8,
}

impl TextFormat {
    /// The delimiter as the API shows it: `,`, `;`, or `\t` for a tab.
    pub fn delimiter_name(self) -> String {
        match self.delimiter {
            b'\t' => "\\t".to_owned(),
            other => char::from(other).to_string(),
        }
    }

    pub fn delimiter_from_name(name: &str) -> Option<u8> {
        match name {
            "\\t" => Some(b'\t'),
            other if other.len() == 1 => Some(other.as_bytes()[0]),
            _ => None,
        }
    }
}

/// What happens to a row whose email already belongs to a user of the account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// The row fails with ALREADY_EXISTS.
    #[default]
    Error,
    /// The user is left as it is, and the row counted as skipped.
    Skip,
    /// The row's non-empty cells replace the user's values.
    Update,
}

impl ConflictPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::Error => "ERROR",
            ConflictPolicy::Skip => "SKIP",
            ConflictPolicy::Update => "UPDATE",
        }
    }

    pub fn from_stored(value: &str) -> Option<Self> {
        [Self::Error, Self::Skip, Self::Update]
            .into_iter()
            .find(|p| p.as_str() == value)
    }
}

/// The numbers an import reports while it runs and once it finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes_received: u64,
    /// Data rows read and validated (blank rows are not counted).
    pub rows_processed: u64,
    pub rows_imported: u64,
    /// Rows with at least one error.
    pub rows_failed: u64,
    /// Row errors not stored because the import reached its cap; the counters above stay exact.
    pub row_errors_omitted: u64,
    /// Rows whose user existed and was left as it is (`ConflictPolicy::Skip`).
    pub rows_skipped: u64,
    /// Rows whose user existed and was updated (`ConflictPolicy::Update`).
    pub rows_updated: u64,
}

/// The file name the client gave, kept as given (the proto says so; surrounding spaces
/// included): only `.csv` files are accepted, as the product promises, judged on the name
/// without those spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filename(String);

const MAX_FILENAME_CHARS: usize = 255;

impl Filename {
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

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name read back from the database, where only parsed names are written.
    pub fn from_stored(value: String) -> Self {
        Self(value)
    }
}

/// What the first message of an upload asks for, once checked.
#[derive(Debug, Clone)]
pub struct NewImport {
    pub account_id: AccountId,
    pub import_id: ImportId,
    pub kind: ImportType,
    pub filename: Filename,
    /// The name of the token that starts it; empty on an open server.
    pub created_by: String,
    /// A dry run: checked like an import, with no user written.
    pub validate_only: bool,
    pub on_conflict: ConflictPolicy,
    /// The import of the same account whose failed rows this file corrects.
    pub retry_of: Option<ImportId>,
}

/// The store's own handle on an import: a small integer is cheaper than the
/// (account, import id) pair in the users and row errors tables.
pub type ImportKey = i64;

#[derive(Debug, Clone, PartialEq)]
pub struct Import {
    pub key: ImportKey,
    pub account_id: AccountId,
    pub import_id: ImportId,
    pub kind: ImportType,
    pub filename: Filename,
    /// The name of the token that started it; empty when the server ran open.
    pub created_by: String,
    pub validate_only: bool,
    pub on_conflict: ConflictPolicy,
    pub retry_of: Option<ImportId>,
    pub status: ImportStatus,
    pub counters: Counters,
    /// How the file's text is written, once its first bytes were read.
    pub format: Option<TextFormat>,
    /// Why the import ended in an ERROR_* status; empty otherwise.
    pub error_message: String,
    pub create_time: SystemTime,
    pub update_time: SystemTime,
    pub complete_time: Option<SystemTime>,
    /// When `RevertImport` removed its users, and what it did.
    pub revert_time: Option<SystemTime>,
    pub revert_note: String,
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
