//! A user to invite, and the columns of the Users file it is read from.

use super::email::Email;
use super::row_error::RowError;
use super::text::{Invisible, first_invisible, printable_ascii};

/// The Users template's columns, in template order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Column {
    Email,
    FirstName,
    LastName,
    Role,
    JobTitle,
    ExternalId,
}

impl Column {
    pub const ALL: [Column; 6] = [
        Column::Email,
        Column::FirstName,
        Column::LastName,
        Column::Role,
        Column::JobTitle,
        Column::ExternalId,
    ];

    /// The header the template writes, and the name row errors use.
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

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Other headers people write for this column, already folded (see
    /// `validator::fold_header`): lower case, with spaces, '-' and '_' removed.
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

    /// The longest value accepted, in characters.
    pub fn max_chars(self) -> usize {
        match self {
            Column::Email => super::email::MAX_EMAIL_CHARS,
            Column::FirstName | Column::LastName | Column::JobTitle => 100,
            Column::Role => 16,
            Column::ExternalId => 64,
        }
    }
}

/// What a user may do in the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    Admin,
    #[default]
    Member,
    Viewer,
}

impl Role {
    pub const ALLOWED: &'static str = "admin, member, viewer";

    /// Any case; an empty value means `member`.
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

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }
}

/// Why a free-text cell was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    TooLong {
        max: usize,
    },
    ControlCharacter,
    /// An invisible character inside an external id, which must be typed exactly.
    Invisible(Invisible),
}

/// A trimmed free-text cell (names, job title, external id): bounded in characters, not bytes,
/// and free of control characters, which would break the emails and screens it ends up in. An
/// external id is also free of invisible characters, which would make a second id of the same
/// one; names keep theirs, since some scripts need joiners.
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
    pub errors: Vec<RowError>,
    pub email: Option<Email<'a>>,
    pub external_id: Option<&'a str>,
    /// The row's cells by template column, as the file had them, for the error report.
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
/// unless the email needs lower-casing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser<'a> {
    pub email: Email<'a>,
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub role: Role,
    /// The role cell was not empty: an UPDATE keeps the stored role otherwise.
    pub role_given: bool,
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
