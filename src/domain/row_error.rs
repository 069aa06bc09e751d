//! Row-by-row validation errors: what is wrong with which cell, and how to fix it.

use super::user::Column;

/// The longest `value` a row error carries, in characters.
pub const MAX_ERROR_VALUE_CHARS: usize = 200;

/// Stable codes that scripts can match on; the message is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Required,
    InvalidEmail,
    TooLong,
    InvalidCharacter,
    InvalidRole,
    DuplicateInFile,
    AlreadyExists,
    FieldCount,
}

impl ErrorCode {
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

    pub fn from_stored(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// As a spreadsheet numbers it: the header is row 1.
    pub row_number: u64,
    /// `None` for an error about the whole row.
    pub column: Option<Column>,
    pub code: ErrorCode,
    pub message: String,
    /// The offending value, cut to `MAX_ERROR_VALUE_CHARS`.
    pub value: String,
}

impl RowError {
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

    pub fn required(row: u64, column: Column) -> Self {
        Self::new(
            row,
            Some(column),
            ErrorCode::Required,
            format!("{} is required; fill it in", column.name()),
            "",
        )
    }

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

    /// The same value appears on an earlier row of this file.
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

    /// The value belongs to a user the account already has.
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
}

/// A value as row errors and messages show it: cut to `MAX_ERROR_VALUE_CHARS` characters, on a
/// character boundary, with control characters as `\u0000` escapes (see `text`).
pub fn cut(value: &str) -> String {
    let cut = match value.char_indices().nth(MAX_ERROR_VALUE_CHARS) {
        Some((end, _)) => &value[..end],
        None => value,
    };
    super::text::escape_controls(cut).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

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
