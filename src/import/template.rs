//! The downloadable Users template: the header, one example row, and what each column takes.
//!
//! Built from `Column`, the same source the validator reads headers with, so the template can
//! never ask for a column, or spell an alias, that an upload would refuse. It lives here rather
//! than as a file so that it needs no server state and is the same on every replica.
//!
//! `GetImportTemplate` and the CLI's `template` command both serve it from here. The
//! descriptions are written by hand: a limit they state (254, 100, 64 characters) must be
//! changed here too when `Column::max_chars` changes.

use crate::domain::text::spreadsheet_safe;
use crate::domain::{Column, ImportType};

/// One column of a template, as `GetImportTemplate` describes it.
pub struct TemplateColumn {
    /// The header name the template uses (`Column::name`).
    pub name: &'static str,
    /// Whether every file must have the column: only `email` is required.
    pub required: bool,
    /// What the column takes, in a sentence, with its limit.
    pub description: &'static str,
    /// The value of the template's example row.
    pub example: &'static str,
    /// Every header name the validator takes for the column, folded (`fold_header`): lower
    /// case, letters and digits only.
    pub aliases: &'static [&'static str],
}

/// A downloadable template: the file and the description of its columns.
pub struct Template {
    /// The file name to save it under.
    pub filename: &'static str,
    /// The file: the header and one example row, comma-separated, LF line ends, no byte order
    /// mark (all ASCII).
    pub csv: String,
    /// The columns, in the file's order.
    pub columns: Vec<TemplateColumn>,
}

/// The template for `kind` of import. Built anew on each call; it is small.
pub fn template(kind: ImportType) -> Template {
    match kind {
        ImportType::Users => users(),
    }
}

/// The Users template: one column per `Column`, in `Column::ALL` order.
fn users() -> Template {
    let columns: Vec<TemplateColumn> = Column::ALL
        .into_iter()
        .map(|column| {
            let (required, description, example) = describe(column);
            TemplateColumn {
                name: column.name(),
                required,
                description,
                example,
                aliases: column.aliases(),
            }
        })
        .collect();
    // The csv crate quotes whatever needs quoting, so the example stays valid if it changes;
    // and no cell may run as a formula when the file is opened.
    let mut writer = csv::Writer::from_writer(Vec::new());
    let header: Vec<_> = columns
        .iter()
        .map(|c| spreadsheet_safe(c.name).into_owned())
        .collect();
    let example: Vec<_> = columns
        .iter()
        .map(|c| spreadsheet_safe(c.example).into_owned())
        .collect();
    let csv = writer
        .write_record(&header)
        .and_then(|()| writer.write_record(&example))
        .map_err(std::io::Error::other)
        .and_then(|()| writer.into_inner().map_err(std::io::Error::other))
        .map(|bytes| String::from_utf8(bytes).expect("the template is UTF-8"))
        .expect("writing to memory cannot fail");
    Template {
        filename: "users_import_template.csv",
        csv,
        columns,
    }
}

/// Whether `column` is required, its description and its example value.
fn describe(column: Column) -> (bool, &'static str, &'static str) {
    match column {
        Column::Email => (
            true,
            "The user's email address, at most 254 characters; unique in the account, ignoring \
             case.",
            "ada.lovelace@example.com",
        ),
        Column::FirstName => (false, "At most 100 characters.", "Ada"),
        Column::LastName => (false, "At most 100 characters.", "Lovelace"),
        Column::Role => (
            false,
            "One of admin, member, viewer, in any case; empty means member.",
            "member",
        ),
        Column::JobTitle => (false, "At most 100 characters.", "Analyst"),
        Column::ExternalId => (
            false,
            "Your own id for the user (an HR system's employee number), at most 64 \
             characters; unique in the account when present.",
            "EMP-0001",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file a client downloads, byte for byte: changing it changes what users see.
    #[test]
    fn the_users_template_is_a_header_and_an_example() {
        let t = template(ImportType::Users);
        assert_eq!(
            t.csv,
            "email,first_name,last_name,role,job_title,external_id\n\
             ada.lovelace@example.com,Ada,Lovelace,member,Analyst,EMP-0001\n"
        );
        assert_eq!(t.columns.len(), 6);
        assert!(t.columns[0].required);
        assert!(t.columns[1..].iter().all(|c| !c.required));
    }
}
