//! From records to users: the header row says which field is which column, then each data row
//! becomes a `NewUser` or the list of everything wrong with it.
//!
//! - The header is matched by folded names and aliases (`fold_header`, `Column::aliases`), so
//!   "E-mail Address" finds the email column; columns the template does not know are ignored,
//!   and only the email column is required. A header the validator cannot use (no email column,
//!   or two columns for one field) makes the whole file ERROR_PARSING.
//! - A data row reports every error it has, in column order, not only the first: the person
//!   fixing the file sees everything at once in the error report.
//! - Values borrow from the parser's buffer: a row is copied only into its batch.
//!
//! Uniqueness (a duplicate email or external id, in the file or in the account) is not checked
//! here: the store's unique indexes find it as the batch is written.

use std::str::Utf8Error;

use crate::domain::email::EmailError;
use crate::domain::text::read_cell;
use crate::domain::user::{TextError, parse_text};
use crate::domain::{Column, Email, FailedRow, NewUser, Role, RowError};

use super::parser::Fields;

/// Where each template column sits in the file, found from the header row. Built once per
/// file; every data row is read through it.
#[derive(Debug, Clone)]
pub struct Header {
    /// For each template column (by `Column as usize`), its 0-based field in the file, if the
    /// file has it.
    positions: [Option<usize>; Column::ALL.len()],
    /// Fields per record: a record with another count is a FIELD_COUNT error.
    width: usize,
}

/// A header that cannot be read: the whole file is an ERROR_PARSING.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// No column of the header folds to an email alias.
    #[error(
        "the file has no email column: its first row must be a header with an 'email' column \
         (download the template to see the expected columns); found {found}"
    )]
    NoEmailColumn {
        /// The header's non-empty names (the first 20, each cut short), or "an empty first
        /// row": what the file has instead.
        found: String,
    },
    /// Two columns of the header fold to the same template column: which one to read would be
    /// a guess.
    #[error(
        "the header has two columns for {column} ('{first}' in column {first_index} and \
         '{second}' in column {second_index}); keep only one of them"
    )]
    DuplicateColumn {
        /// The template column's name.
        column: &'static str,
        /// The first header name for it, as the file has it (trimmed).
        first: String,
        /// The first one's column, 1-based as a spreadsheet counts.
        first_index: usize,
        /// The second header name for it.
        second: String,
        /// The second one's column, 1-based.
        second_index: usize,
    },
}

/// A cell that is not valid UTF-8: the file was not read with the right encoding. The reader
/// ends the file with ERROR_PARSING at this cell. (The decoder emits only UTF-8, so this is a
/// second line of defence: a field can hold invalid bytes only if that promise breaks.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidText {
    /// The spreadsheet row of the cell.
    pub row_number: u64,
    /// 1-based column of the file.
    pub column_index: usize,
    /// The first byte that is not valid there, when there is one to name.
    pub byte: Option<u8>,
}

/// A header as a resumed upload stores it: where each template column sits, and the width.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredHeader {
    /// Per template column (in `Column::ALL` order), its 0-based field, if the file has it.
    pub positions: Vec<Option<usize>>,
    /// Fields per record.
    pub width: usize,
}

impl Header {
    /// The header as stored with a resumed upload's state.
    pub fn stored(&self) -> StoredHeader {
        StoredHeader {
            positions: self.positions.to_vec(),
            width: self.width,
        }
    }

    /// A header stored by `stored`; `None` for one `parse` could not have made (no email
    /// column, a column past the width, two columns in one field).
    pub fn from_stored(stored: &StoredHeader) -> Option<Self> {
        let positions: [Option<usize>; Column::ALL.len()] =
            stored.positions.as_slice().try_into().ok()?;
        let mut used: Vec<usize> = positions.iter().flatten().copied().collect();
        let valid = positions[Column::Email as usize].is_some()
            && used.iter().all(|&p| p < stored.width)
            && {
                used.sort_unstable();
                used.windows(2).all(|w| w[0] != w[1])
            };
        valid.then_some(Self {
            positions,
            width: stored.width,
        })
    }

    /// Reads the header row: which field holds which template column. Header names are read
    /// lossily, since an unknown column's name only matters for the message.
    pub fn parse(fields: &Fields<'_>) -> Result<Self, HeaderError> {
        let mut positions: [Option<usize>; Column::ALL.len()] = [None; Column::ALL.len()];
        let mut names: Vec<String> = Vec::with_capacity(fields.len());
        for (index, raw) in fields.iter().enumerate() {
            let name = String::from_utf8_lossy(raw).trim().to_owned();
            if let Some(column) = column_for(&name) {
                let slot = &mut positions[column as usize];
                if let Some(first_index) = *slot {
                    return Err(HeaderError::DuplicateColumn {
                        column: column.name(),
                        first: names[first_index].clone(),
                        first_index: first_index + 1,
                        second: name,
                        second_index: index + 1,
                    });
                }
                *slot = Some(index);
            }
            names.push(name);
        }
        if positions[Column::Email as usize].is_none() {
            let found = match names.iter().filter(|n| !n.is_empty()).count() {
                0 => "an empty first row".to_owned(),
                _ => format!(
                    "columns {}",
                    names
                        .iter()
                        .filter(|n| !n.is_empty())
                        .take(20)
                        .map(|n| format!("'{}'", crate::domain::row_error::cut(n)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err(HeaderError::NoEmailColumn { found });
        }
        Ok(Self {
            positions,
            width: fields.len(),
        })
    }

    /// Picks this row's cells by column. Only the cells of known columns are decoded: the
    /// others are ignored, whatever they hold.
    ///
    /// A row wider than the header whose extra fields are all blank counts as the header's
    /// width. A row of another width keeps its count, and no cell is read: `NewUser::try_from`
    /// makes it one FIELD_COUNT error. The whole record is checked as UTF-8 once; a cell is
    /// checked alone only when that fails, so the error can name its column.
    pub fn row<'a>(&self, fields: &Fields<'a>) -> Result<CsvRow<'a>, InvalidText> {
        let mut values = [""; Column::ALL.len()];
        // Excel pads rows with empty fields when any row had more columns than the header.
        let padded = fields.len() > self.width
            && (self.width..fields.len()).all(|i| {
                fields
                    .get(i)
                    .is_some_and(|f| f.iter().all(u8::is_ascii_whitespace))
            });
        let field_count = if padded { self.width } else { fields.len() };
        if field_count == self.width {
            let text = fields.text();
            for (value, position) in values.iter_mut().zip(self.positions) {
                let Some(index) = position else { continue };
                if let Some(cell) = text.and_then(|t| t.get(index)) {
                    *value = cell;
                    continue;
                }
                let raw = fields.get(index).unwrap_or_default();
                *value = std::str::from_utf8(raw).map_err(|e| InvalidText {
                    row_number: fields.row_number,
                    column_index: index + 1,
                    byte: first_bad_byte(raw, e),
                })?;
            }
        }
        Ok(CsvRow {
            row_number: fields.row_number,
            field_count,
            header_width: self.width,
            values,
        })
    }
}

/// The byte at which `error` says the cell stops being UTF-8.
fn first_bad_byte(raw: &[u8], error: Utf8Error) -> Option<u8> {
    raw.get(error.valid_up_to()).copied()
}

/// Folds a header for matching: case, spaces, '-', '_' and other punctuation are ignored, so
/// `E-mail Address`, `email_address` and `EmailAddress` are one name. Letters and digits of
/// any script are kept and accents are not removed, so `Prénom` folds to `prénom`, which is
/// not the alias `prenom`.
pub fn fold_header(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The template column a header name stands for, if any.
fn column_for(name: &str) -> Option<Column> {
    let folded = fold_header(name);
    Column::ALL
        .into_iter()
        .find(|c| c.aliases().contains(&folded.as_str()))
}

/// One data row's cells, by template column.
#[derive(Debug, Clone, Copy)]
pub struct CsvRow<'a> {
    /// The row's spreadsheet row number, which every row error names.
    pub row_number: u64,
    /// Fields the row has, not counting the empty ones Excel pads a row with.
    field_count: usize,
    /// Fields the header has: a row with another count is one FIELD_COUNT error.
    header_width: usize,
    /// The cells, by `Column as usize`: empty for a column the file does not have, and all
    /// empty when the row's width is wrong (it is not read then).
    values: [&'a str; Column::ALL.len()],
}

impl<'a> CsvRow<'a> {
    /// A cell without the spaces and invisible characters at its ends, and without the `'`
    /// an error report puts before a formula character.
    fn value(&self, column: Column) -> &'a str {
        read_cell(self.values[column as usize])
    }
}

/// A data row's validation. A row of the wrong width is one FIELD_COUNT error and nothing else
/// (its cells may be shifted, so checking them would only mislead). Otherwise every cell is
/// checked: the email parsed and normalised, the texts checked for length, control and
/// invisible characters, the role matched (empty means member). A failed row keeps its valid
/// email and external id, which the store still checks against the account, and its cells, for
/// the error report.
impl<'a> TryFrom<CsvRow<'a>> for NewUser<'a> {
    /// Every error of the row, in column order, with its values that are valid.
    type Error = FailedRow<'a>;

    fn try_from(row: CsvRow<'a>) -> Result<Self, Self::Error> {
        let n = row.row_number;
        if row.field_count != row.header_width {
            return Err(FailedRow::with_errors(vec![RowError::field_count(
                n,
                row.header_width,
                row.field_count,
            )]));
        }
        let mut errors = Vec::new();

        let email_value = row.value(Column::Email);
        let email = match Email::parse(email_value) {
            Ok(email) => Some(email),
            Err(EmailError::Empty) => {
                errors.push(RowError::required(n, Column::Email));
                None
            }
            Err(EmailError::TooLong) => {
                errors.push(RowError::too_long(
                    n,
                    Column::Email,
                    email_value,
                    Column::Email.max_chars(),
                ));
                None
            }
            Err(EmailError::Invalid(reason)) => {
                errors.push(RowError::invalid_email(n, email_value, reason));
                None
            }
            Err(EmailError::Invisible(invisible)) => {
                let reason = format!("it has an invisible character, {invisible}; retype it");
                errors.push(RowError::invalid_email(n, email_value, &reason));
                None
            }
        };

        let mut text = |column: Column| -> &'a str {
            let value = row.value(column);
            match parse_text(value, column) {
                Ok(value) => value,
                Err(TextError::TooLong { max }) => {
                    errors.push(RowError::too_long(n, column, value, max));
                    ""
                }
                Err(TextError::ControlCharacter) => {
                    errors.push(RowError::control_character(n, column, value));
                    ""
                }
                Err(TextError::Invisible(invisible)) => {
                    errors.push(RowError::invisible_character(n, column, value, invisible));
                    ""
                }
            }
        };
        let first_name = text(Column::FirstName);
        let last_name = text(Column::LastName);
        let role_value = row.value(Column::Role);
        let role = Role::parse(role_value);
        let job_title = text(Column::JobTitle);
        let external_id = text(Column::ExternalId);

        if role.is_none() {
            // Keep errors in column order: role comes between last_name and job_title.
            let at = errors
                .iter()
                .position(|e| matches!(e.column, Some(Column::JobTitle) | Some(Column::ExternalId)))
                .unwrap_or(errors.len());
            errors.insert(at, RowError::invalid_role(n, role_value));
        }

        let external_id = (!external_id.is_empty()).then_some(external_id);
        match (email, role) {
            (Some(email), Some(role)) if errors.is_empty() => Ok(NewUser {
                email,
                first_name,
                last_name,
                role,
                role_given: !role_value.is_empty(),
                job_title,
                external_id,
            }),
            (email, _) => Err(FailedRow {
                errors,
                email,
                external_id,
                cells: Some(row.values),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ErrorCode;
    use crate::import::parser::{CsvParser, Limits, Record};

    /// A valid row as `email|first|last|role|title|external_id`, or its `(column, code)` pairs.
    type Outcome = Result<String, Vec<(String, &'static str)>>;

    /// Parses `csv` and returns the header result and each data row's validation, with the
    /// parser and the validator as the reader composes them (no decoding: `csv` is UTF-8).
    fn validate(csv: &str) -> Result<Vec<Outcome>, HeaderError> {
        let mut parser = CsvParser::new(b',', Limits::default());
        let mut header: Option<Header> = None;
        let mut out = Vec::new();
        let mut on_record = |r: Record<'_>| -> Result<(), HeaderError> {
            let Record::Fields(f) = r else { panic!() };
            match &header {
                None => header = Some(Header::parse(&f)?),
                Some(h) => {
                    let row = h.row(&f).expect("utf-8");
                    out.push(match NewUser::try_from(row) {
                        Ok(u) => Ok(format!(
                            "{}|{}|{}|{}|{}|{:?}",
                            u.email.as_str(),
                            u.first_name,
                            u.last_name,
                            u.role.as_str(),
                            u.job_title,
                            u.external_id
                        )),
                        Err(failed) => Err(failed
                            .errors
                            .into_iter()
                            .map(|e| {
                                (
                                    e.column.map(Column::name).unwrap_or("").to_owned(),
                                    e.code.as_str(),
                                )
                            })
                            .collect()),
                    });
                }
            }
            Ok(())
        };
        parser.feed(csv.as_bytes(), &mut on_record)?;
        parser.finish(&mut on_record)?;
        Ok(out)
    }

    /// Aliases, case, padding and column order do not matter, and an unknown column is
    /// ignored; the email is trimmed and lower-cased, the role matched in any case.
    #[test]
    fn headers_match_aliases_in_any_order_and_case() {
        let rows = validate(
            " Surname ,E-mail Address,First_Name,Title,Notes,ROLE,Employee ID\n\
             Lovelace, ADA@Example.com ,Ada,Countess,ignored,Admin,E1\n",
        )
        .unwrap();
        assert_eq!(
            rows,
            vec![Ok(
                "ada@example.com|Ada|Lovelace|admin|Countess|Some(\"E1\")".to_owned()
            )]
        );
    }

    /// The two header errors: no email column (the message lists what was found), and two
    /// names for one column (the message gives both, 1-based).
    #[test]
    fn a_header_without_email_is_refused() {
        let err = validate("name,role\nAda,admin\n").unwrap_err();
        assert_eq!(
            err,
            HeaderError::NoEmailColumn {
                found: "columns 'name', 'role'".into()
            }
        );
        assert!(err.to_string().contains("no email column"));
        assert!(matches!(
            validate("email,Email Address\n").unwrap_err(),
            HeaderError::DuplicateColumn {
                first_index: 1,
                second_index: 2,
                ..
            }
        ));
    }

    /// A row with five bad cells gets five errors, role in its place between last_name and
    /// job_title; a short row gets only FIELD_COUNT.
    #[test]
    fn every_error_of_a_row_is_reported_in_column_order() {
        let long = "x".repeat(101);
        let rows = validate(&format!(
            "email,first_name,last_name,role,job_title,external_id\n\
             ,{long},\"tab\there\",superuser,{long},\n\
             ada at example.com,,,,,\n\
             a@example.com,,\n\
             b@example.com,Bo,,VIEWER,,\n"
        ))
        .unwrap();
        let e = |c: &str, code| (c.to_owned(), code);
        assert_eq!(
            rows,
            vec![
                Err(vec![
                    e("email", "REQUIRED"),
                    e("first_name", "TOO_LONG"),
                    e("last_name", "INVALID_CHARACTER"),
                    e("role", "INVALID_ROLE"),
                    e("job_title", "TOO_LONG"),
                ]),
                Err(vec![e("email", "INVALID_EMAIL")]),
                Err(vec![e("", "FIELD_COUNT")]),
                Ok("b@example.com|Bo||viewer||None".to_owned()),
            ]
        );
        assert_eq!(ErrorCode::FieldCount.as_str(), "FIELD_COUNT");
    }

    /// Folding removes spaces, `-` and `_` and lowers the case; an unknown name maps to none.
    #[test]
    fn headers_fold_punctuation_and_case() {
        assert_eq!(fold_header(" E-Mail_Address "), "emailaddress");
        assert_eq!(column_for("Last Name"), Some(Column::LastName));
        assert_eq!(column_for("Job-Title"), Some(Column::JobTitle));
        assert_eq!(column_for("external_id"), Some(Column::ExternalId));
        assert_eq!(column_for("Department"), None);
    }
}
