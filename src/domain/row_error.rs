//! Row-by-row validation errors: what is wrong with which cell, and how to fix it.
//!
//! A row error is read by the person who uploaded the file, in GetImport and in the `errors`
//! column of the error report, to find the row in their sheet and fix it. So every message
//! names the column, quotes the value where that helps to find it, and ends with what to do.
//! The validator makes the errors of a row's own cells; the store makes those of its values
//! held elsewhere (DUPLICATE_IN_FILE, ALREADY_EXISTS).

use super::user::Column;

/// The longest `value` a row error carries, in characters, as the proto promises: enough to
/// recognise a value, while a cell can be far longer and every row error is stored and sent.
/// The messages quote values cut to the same length.
pub const MAX_ERROR_VALUE_CHARS: usize = 200;

/// Stable codes that scripts can match on; the message is for people. Stored as `as_str` and
/// sent as is in the proto's `RowError.code`: renaming one breaks clients and stored imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A required cell is empty: only `email` is required.
    Required,
    /// The email is not an address this service invites: malformed, quoted, with a comment, an
    /// IP or dotless domain, an invalid international domain, or an invisible character.
    InvalidEmail,
    /// A cell longer than its column's limit in characters (`Column::max_chars`), or a whole
    /// row longer than the parser's record limit in bytes.
    TooLong,
    /// A control character in a text cell, or an invisible character in an external id.
    InvalidCharacter,
    /// A role other than admin, member or viewer.
    InvalidRole,
    /// The email or external id is on an earlier row of the same file, under every conflict
    /// policy: the message names that row.
    DuplicateInFile,
    /// The email or external id belongs to a user of the account: an existing one (its email
    /// under the ERROR policy; its external id, on a row that is not skipped and is not that
    /// user's), one that another running import is adding, or one that a running UPDATE
    /// import has changed.
    AlreadyExists,
    /// A whole-row error: the row has another number of fields than the header, or more than
    /// the parser's limit. Its cells are not read.
    FieldCount,
}

impl ErrorCode {
    /// Every code, for `from_stored` and for the test that each one round-trips.
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::Required,
        ErrorCode::InvalidEmail,
        ErrorCode::TooLong,
        ErrorCode::InvalidCharacter,
        ErrorCode::InvalidRole,
        ErrorCode::DuplicateInFile,
        ErrorCode::AlreadyExists,
        ErrorCode::FieldCount,
    ];

    /// The code as stored and sent: the proto's SCREAMING_SNAKE_CASE names.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Required => "REQUIRED",
            ErrorCode::InvalidEmail => "INVALID_EMAIL",
            ErrorCode::TooLong => "TOO_LONG",
            ErrorCode::InvalidCharacter => "INVALID_CHARACTER",
            ErrorCode::InvalidRole => "INVALID_ROLE",
            ErrorCode::DuplicateInFile => "DUPLICATE_IN_FILE",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::FieldCount => "FIELD_COUNT",
        }
    }

    /// A code as stored, read back; `None` is a corrupt row.
    pub fn from_stored(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == value)
    }
}

/// One problem with one row, or one cell, of a file. Made by the constructors below, which
/// keep the messages in one voice, and read back as stored by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// As a spreadsheet numbers it: the header is row 1, the first data row 2. Every record
    /// and every blank line is a row, and a record with a quoted line break is still one, so
    /// the number is the one the person sees beside the row in their sheet.
    pub row_number: u64,
    /// `None` for an error about the whole row (FIELD_COUNT, or a row too long to read).
    /// Stored as the column's template name, empty for `None`.
    pub column: Option<Column>,
    /// What kind of problem, for scripts.
    pub code: ErrorCode,
    /// What is wrong and how to fix it, in one sentence for a person, with control characters
    /// of the quoted value escaped.
    pub message: String,
    /// The offending value, cut to `MAX_ERROR_VALUE_CHARS` and then escaped (`cut`); empty
    /// when there is none (an empty cell, a whole-row error). For an email, as written.
    pub value: String,
}

impl RowError {
    /// A row error whose message the caller wrote; `value` is cut and escaped here. The named
    /// constructors below are the usual way: they write the message.
    pub fn new(
        row_number: u64,
        column: Option<Column>,
        code: ErrorCode,
        message: String,
        value: &str,
    ) -> Self {
        Self {
            row_number,
            column,
            code,
            message,
            value: cut(value),
        }
    }

    /// An empty required cell: the person fills it in.
    pub fn required(row: u64, column: Column) -> Self {
        Self::new(
            row,
            Some(column),
            ErrorCode::Required,
            format!("{} is required; fill it in", column.name()),
            "",
        )
    }

    /// A cell over `max` characters. The message gives the cell's count too, so that the
    /// person knows how much to cut.
    pub fn too_long(row: u64, column: Column, value: &str, max: usize) -> Self {
        Self::new(
            row,
            Some(column),
            ErrorCode::TooLong,
            format!(
                "{} must be at most {max} characters; got {}, shorten it",
                column.name(),
                value.chars().count()
            ),
            value,
        )
    }

    /// A text cell with a control character, such as a tab or a line break inside quotes.
    /// The value shows it escaped (`\u0009`), so that the person can see where it is.
    pub fn control_character(row: u64, column: Column, value: &str) -> Self {
        Self::new(
            row,
            Some(column),
            ErrorCode::InvalidCharacter,
            format!(
                "{} must not contain control characters such as tabs or line breaks; remove them",
                column.name()
            ),
            value,
        )
    }

    /// An invisible character inside a value that must be typed exactly (an external id).
    pub fn invisible_character(
        row: u64,
        column: Column,
        value: &str,
        invisible: super::text::Invisible,
    ) -> Self {
        Self::new(
            row,
            Some(column),
            ErrorCode::InvalidCharacter,
            format!(
                "{} must not contain invisible characters; it has {invisible}; retype the value",
                column.name()
            ),
            value,
        )
    }

    /// An address refused for `reason`, in plain words (`EmailError`'s, or the invisible
    /// character's). The message quotes the address as written and shows the expected form.
    pub fn invalid_email(row: u64, value: &str, reason: &str) -> Self {
        Self::new(
            row,
            Some(Column::Email),
            ErrorCode::InvalidEmail,
            format!(
                "email '{}' is not a valid address: {reason}; write it as name@example.com",
                cut(value)
            ),
            value,
        )
    }

    /// A role cell that is none of the three names. The message lists them and says that an
    /// empty cell means member.
    pub fn invalid_role(row: u64, value: &str) -> Self {
        Self::new(
            row,
            Some(Column::Role),
            ErrorCode::InvalidRole,
            format!(
                "role must be one of {}; got '{}' (leave it empty for member)",
                super::user::Role::ALLOWED,
                cut(value)
            ),
            value,
        )
    }

    /// A row with `found` fields where the header has `expected`: a whole-row error, since the
    /// fields cannot be matched to columns. The message names the likely causes: a missing or
    /// extra delimiter, or a comma in a value that is not in double quotes.
    pub fn field_count(row: u64, expected: usize, found: usize) -> Self {
        Self::new(
            row,
            None,
            ErrorCode::FieldCount,
            format!(
                "row has {found} fields but the header has {expected}; check for a missing or \
                 extra delimiter, or a value with a comma that is not in double quotes"
            ),
            "",
        )
    }

    /// The same value appears on an earlier row of this file, `first_row`, which keeps it: the
    /// person removes one of the two rows.
    pub fn duplicate_in_file(row: u64, column: Column, value: &str, first_row: u64) -> Self {
        Self::new(
            row,
            Some(column),
            ErrorCode::DuplicateInFile,
            format!(
                "{} '{}' already appears in row {first_row} of this file; remove one of the two rows",
                column.name(),
                cut(value)
            ),
            value,
        )
    }

    /// The value belongs to a user the account already has. Also used when the holder went
    /// away between the write and the lookup: the value was taken when the row came.
    pub fn already_exists(row: u64, column: Column, value: &str) -> Self {
        Self::new(
            row,
            Some(column),
            ErrorCode::AlreadyExists,
            format!(
                "a user with {} '{}' already exists in this account; remove the row or change the value",
                column.name(),
                cut(value)
            ),
            value,
        )
    }

    /// The value belongs to a user that another import, still running, is adding: if that
    /// import fails, its users are removed and the row can be imported again.
    pub fn being_imported(row: u64, column: Column, value: &str, import_id: &str) -> Self {
        Self::new(
            row,
            Some(column),
            ErrorCode::AlreadyExists,
            format!(
                "a user with {} '{}' is being added by import '{}', which is still running; \
                 if that import does not complete, import this row again",
                column.name(),
                cut(value),
                cut(import_id)
            ),
            value,
        )
    }

    /// The value belongs to a user an UPDATE import still running has changed: if that import
    /// fails, the user's old values come back, so this row cannot be decided yet.
    pub fn being_changed(row: u64, column: Column, value: &str, import_id: &str) -> Self {
        Self::new(
            row,
            Some(column),
            ErrorCode::AlreadyExists,
            format!(
                "the user with {} '{}' is being changed by import '{}', which is still running; \
                 once that import has ended, import this row again",
                column.name(),
                cut(value),
                cut(import_id)
            ),
            value,
        )
    }
}

/// A value as row errors and messages show it: cut to `MAX_ERROR_VALUE_CHARS` characters, on a
/// character boundary, with control characters as `\u0000` escapes (see `text`). The limit
/// holds for what is shown: a character is kept only if it fits whole, escape included (each
/// escape is six characters), so an escape is never cut in half.
pub fn cut(value: &str) -> String {
    let escaped = super::text::escape_controls(value);
    if escaped.chars().count() <= MAX_ERROR_VALUE_CHARS {
        return escaped.into_owned();
    }
    let mut shown = String::new();
    let mut chars = 0;
    for c in value.chars() {
        let width = if c.is_control() { 6 } else { 1 };
        if chars + width > MAX_ERROR_VALUE_CHARS {
            break;
        }
        chars += width;
        shown.push_str(&super::text::escape_controls(c.encode_utf8(&mut [0; 4])));
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_shown_is_cut_to_its_limit_escapes_included() {
        let controls = "\u{1}".repeat(300);
        let shown = cut(&controls);
        assert_eq!(
            shown.chars().count(),
            198,
            "33 whole escapes of six characters"
        );
        assert!(shown.ends_with("\\u0001"));
        assert_eq!(cut(&"a".repeat(300)).chars().count(), MAX_ERROR_VALUE_CHARS);
        assert_eq!(cut("a\u{7}b"), "a\\u0007b");
    }

    #[test]
    fn values_are_cut_to_200_characters() {
        let long = "é".repeat(300);
        let error = RowError::too_long(2, Column::FirstName, &long, 100);
        assert_eq!(error.value.chars().count(), 200);
        assert!(error.message.contains("got 300"));
    }

    #[test]
    fn values_and_messages_hold_no_control_characters() {
        let e = RowError::invalid_role(3, "ad\0min");
        assert_eq!(e.value, "ad\\u0000min");
        assert!(e.message.contains("got 'ad\\u0000min'"), "{}", e.message);
        let e = RowError::control_character(3, Column::FirstName, "Na\0me");
        assert_eq!(e.value, "Na\\u0000me");
    }

    #[test]
    fn codes_round_trip_through_storage() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_stored(code.as_str()), Some(code));
        }
    }

    #[test]
    fn messages_name_the_value_and_the_fix() {
        let e = RowError::invalid_role(7, "superuser");
        assert_eq!(
            e.message,
            "role must be one of admin, member, viewer; got 'superuser' (leave it empty for member)"
        );
        assert_eq!(e.code.as_str(), "INVALID_ROLE");
        assert_eq!(e.column, Some(Column::Role));
    }
}
