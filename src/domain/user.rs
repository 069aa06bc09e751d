//! A user to invite, and the columns of the Users file it is read from.
//!
//! The validator (`import::validator`) finds the columns by their headers, trims each cell
//! (`text::trim_cell`), and parses it with the rules here: `Email::parse` for the address,
//! `Role::parse` for the role, `parse_text` for the free-text cells. A row becomes a
//! [`NewUser`] when every cell passes, else a [`FailedRow`] with every error it has.

use super::email::Email;
use super::row_error::RowError;
use super::text::{Invisible, first_invisible, printable_ascii};

/// The Users template's columns, in template order. A file may have them in any order, found
/// by their headers (`aliases`); the arrays of a row's cells (`[&str; 6]`) are in this order,
/// indexed by `column as usize`, so the variants' order must stay that of `ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    /// The address to invite: required, and the user's identity in the account (unique,
    /// compared by its key, see `Email`).
    Email,
    /// Optional free text.
    FirstName,
    /// Optional free text.
    LastName,
    /// `admin`, `member` or `viewer` in any case; empty means `member`.
    Role,
    /// Optional free text.
    JobTitle,
    /// The account's own id for the user (an HR system's employee number): optional, unique in
    /// the account when present, and compared exactly, so it may hold no invisible character.
    ExternalId,
}

impl Column {
    /// Every column, in template order: the order of the template's header, of the error
    /// report's columns and of a row's cells.
    pub const ALL: [Column; 6] = [
        Column::Email,
        Column::FirstName,
        Column::LastName,
        Column::Role,
        Column::JobTitle,
        Column::ExternalId,
    ];

    /// The header the template writes, and the name row errors use. Also how a row error's
    /// column is stored, which `from_name` reads back.
    pub fn name(self) -> &'static str {
        match self {
            Column::Email => "email",
            Column::FirstName => "first_name",
            Column::LastName => "last_name",
            Column::Role => "role",
            Column::JobTitle => "job_title",
            Column::ExternalId => "external_id",
        }
    }

    /// A column by its exact template name, as row errors store it; `None` is a corrupt row.
    /// Not for the headers of a file: those are matched by `aliases`, after folding.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Other headers people write for this column, already folded (see
    /// `validator::fold_header`): lower case, with every character that is not a letter or a
    /// digit removed. The list includes the folded template name. An alias belongs to one
    /// column only (a test checks), and the template lists them for clients.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Column::Email => &[
                "email",
                "emailaddress",
                "mail",
                "emails",
                "workemail",
                "businessemail",
                "useremail",
            ],
            Column::FirstName => &["firstname", "first", "givenname", "forename", "prenom"],
            Column::LastName => &[
                "lastname",
                "last",
                "surname",
                "familyname",
                "nom",
                "secondname",
            ],
            Column::Role => &[
                "role",
                "userrole",
                "accessrole",
                "accountrole",
                "permission",
            ],
            Column::JobTitle => &["jobtitle", "title", "position", "job", "jobposition"],
            Column::ExternalId => &[
                "externalid",
                "employeeid",
                "employeenumber",
                "staffid",
                "userid",
                "extid",
            ],
        }
    }

    /// The longest value accepted, in characters, not bytes, so that a name in a script of
    /// multi-byte letters gets as much room as a Latin one. The email's 254 follows RFC 5321
    /// (`MAX_EMAIL_CHARS`). The template's descriptions write these numbers out by hand:
    /// change both. The role's 16 is never applied, since the role is parsed against its
    /// three names instead.
    pub fn max_chars(self) -> usize {
        match self {
            Column::Email => super::email::MAX_EMAIL_CHARS,
            Column::FirstName | Column::LastName | Column::JobTitle => 100,
            Column::Role => 16,
            Column::ExternalId => 64,
        }
    }
}

/// What a user may do in the account. Stored and shown in lower case (`as_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Written `admin` in a file, in any case.
    Admin,
    /// Written `member` in a file, in any case, or left empty: the default.
    #[default]
    Member,
    /// Written `viewer` in a file, in any case.
    Viewer,
}

impl Role {
    /// The accepted names, as the INVALID_ROLE message lists them. Written by hand beside `ALL`
    /// and the template's description of the column: change all three together.
    pub const ALLOWED: &'static str = "admin, member, viewer";

    /// Parses a trimmed role cell: the three names in any (ASCII) case; an empty value means
    /// `member`. `None` is an INVALID_ROLE row error. Whether the cell was empty is kept apart
    /// (`NewUser::role_given`), so that an UPDATE does not reset a role the file left out.
    pub fn parse(value: &str) -> Option<Self> {
        if value.is_empty() || value.eq_ignore_ascii_case("member") {
            Some(Role::Member)
        } else if value.eq_ignore_ascii_case("admin") {
            Some(Role::Admin)
        } else if value.eq_ignore_ascii_case("viewer") {
            Some(Role::Viewer)
        } else {
            None
        }
    }

    /// Every role, in the order the template lists them.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Member, Role::Viewer];

    /// A role as stored (`as_str`), read back: exactly one of the stored names, unlike
    /// `parse`. `None` is a corrupt row.
    pub fn from_stored(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.as_str() == value)
    }

    /// How the role is stored and shown: lower case.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }
}

/// Why a free-text cell was refused: each variant becomes one row error on the cell's column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// Longer than the column's limit, in characters: TOO_LONG.
    TooLong {
        /// The column's limit (`Column::max_chars`), which the message states.
        max: usize,
    },
    /// A control character, such as a tab or a line break inside quotes: INVALID_CHARACTER.
    ControlCharacter,
    /// An invisible character inside an external id, which must be typed exactly:
    /// INVALID_CHARACTER, naming the character and its position.
    Invisible(Invisible),
}

/// A trimmed free-text cell (names, job title, external id): bounded in characters, not bytes,
/// and free of control characters, which would break the emails and screens it ends up in. An
/// external id is also free of invisible characters, which would make a second id of the same
/// one; names keep theirs, since some scripts need joiners. Not used for the email, which
/// `Email::parse` judges, nor for the role.
pub fn parse_text(value: &str, column: Column) -> Result<&str, TextError> {
    let max = column.max_chars();
    // Nearly every cell is short printable ASCII, which has no control and no invisible
    // character: one pass, and done.
    if value.len() <= max && printable_ascii(value.as_bytes()) {
        return Ok(value);
    }
    // A byte count bounds the character count from above: count characters only when needed.
    if value.len() > max && value.chars().count() > max {
        return Err(TextError::TooLong { max });
    }
    let has_control = if value.is_ascii() {
        value.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        value.chars().any(char::is_control)
    };
    if has_control {
        return Err(TextError::ControlCharacter);
    }
    if column == Column::ExternalId
        && let Some(invisible) = first_invisible(value)
    {
        return Err(TextError::Invisible(invisible));
    }
    Ok(value)
}

/// A row that failed validation: every error it has, and its address and external id when
/// those are valid, so that they are still checked against the rows and users that hold them
/// (a row is told all that stands in its way, not only the first thing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRow<'a> {
    /// Every error of the row, in column order: the validation errors of its cells, or one
    /// whole-row error (a row with the wrong number of fields, or too long or too wide to read).
    /// Never empty: the batch numbers the row by its first error.
    pub errors: Vec<RowError>,
    /// The row's address when it is valid: still checked against earlier rows and the
    /// account's users, so the row also learns of a DUPLICATE_IN_FILE or ALREADY_EXISTS.
    pub email: Option<Email<'a>>,
    /// The row's external id when it is present and valid, for the same checks.
    pub external_id: Option<&'a str>,
    /// The row's cells by template column, as the file had them, for the error report.
    /// `None` when they could not be picked: the row is then known only by its error.
    pub cells: Option<[&'a str; 6]>,
}

impl FailedRow<'_> {
    /// A row with only these errors: none of its values can be checked or shown.
    pub fn with_errors(errors: Vec<RowError>) -> Self {
        Self {
            errors,
            email: None,
            external_id: None,
            cells: None,
        }
    }
}

/// A user read from one valid row. Borrows the row's text, so validating allocates nothing
/// unless the email's key differs from the cell (capitals, an international domain, a
/// local part not in NFC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser<'a> {
    /// The address, with its key and its spelling in the file.
    pub email: Email<'a>,
    /// Trimmed; empty when the cell is. At most 100 characters, none of them a control.
    pub first_name: &'a str,
    /// Trimmed; empty when the cell is. At most 100 characters, none of them a control.
    pub last_name: &'a str,
    /// `member` when the cell is empty: see `role_given`.
    pub role: Role,
    /// The role cell was not empty: an UPDATE keeps the stored role otherwise.
    pub role_given: bool,
    /// Trimmed; empty when the cell is. At most 100 characters, none of them a control.
    pub job_title: &'a str,
    /// `None` when the cell is empty: uniqueness applies only to present ids.
    pub external_id: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_ignore_case_and_default_to_member() {
        assert_eq!(Role::parse("ADMIN"), Some(Role::Admin));
        assert_eq!(Role::parse("Viewer"), Some(Role::Viewer));
        assert_eq!(Role::parse(""), Some(Role::Member));
        assert_eq!(Role::parse("superuser"), None);
    }

    #[test]
    fn text_is_bounded_in_characters() {
        let hundred_accents = "é".repeat(100);
        assert_eq!(
            parse_text(&hundred_accents, Column::FirstName),
            Ok(hundred_accents.as_str())
        );
        assert_eq!(
            parse_text(&"é".repeat(101), Column::FirstName),
            Err(TextError::TooLong { max: 100 })
        );
        assert_eq!(
            parse_text("Ada\tLovelace", Column::FirstName),
            Err(TextError::ControlCharacter)
        );
        assert_eq!(
            parse_text("Zoë\u{85}", Column::LastName),
            Err(TextError::ControlCharacter)
        );
        assert!(parse_text(&"x".repeat(65), Column::ExternalId).is_err());
        assert!(matches!(
            parse_text("E\u{200B}1", Column::ExternalId),
            Err(TextError::Invisible(_))
        ));
        // A joiner inside a name is part of the name.
        assert_eq!(
            parse_text("\u{0915}\u{094D}\u{200D}\u{0937}", Column::FirstName),
            Ok("\u{0915}\u{094D}\u{200D}\u{0937}")
        );
    }

    #[test]
    fn aliases_are_folded_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for column in Column::ALL {
            assert_eq!(Column::from_name(column.name()), Some(column));
            for alias in column.aliases() {
                assert!(alias.bytes().all(|b| b.is_ascii_lowercase()), "{alias}");
                assert!(seen.insert(*alias), "{alias} listed twice");
            }
        }
    }
}
