//! The cells a batch keeps of its failed rows, for the fix-up file (`GetImportErrorReport`).
//!
//! One line per row that has a stored row error, so that the report has a line for each and
//! the cap on row errors caps the cells too. The cells are the file's, after decoding, for a
//! row that failed validation; for a valid row refused by a conflict, its values as the import
//! read them (trimmed, the address as written, the role as its name), which import the same.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::domain::{RowError, UserBatch};

/// A failed row's line: its row number and its six cells in template column order.
pub(crate) type FailedLine<'b> = (u64, [Cow<'b, str>; 6]);

/// A cell as stored: a NUL, which PostgreSQL text cannot hold (and the row's error names),
/// shown as `\u0000`, on both backends alike.
fn storable(cell: &str) -> Cow<'_, str> {
    if cell.contains('\0') {
        Cow::Owned(cell.replace('\0', "\\u0000"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// The lines to keep for the rows among `stored` (the row errors stored, in file order), with
/// `conflicted` the valid users (indexes in the batch) that failed on a conflict. A row known
/// only by its error (a row with the wrong number of fields, or undecodable text) keeps empty
/// cells: its line still tells what is wrong.
pub(crate) fn lines<'b>(
    batch: &'b UserBatch,
    conflicted: &[usize],
    stored: &[RowError],
) -> Vec<FailedLine<'b>> {
    let Some(last) = stored.last() else {
        return Vec::new();
    };
    let mut cells: HashMap<u64, [&'b str; 6]> = batch
        .failed_cells()
        .take_while(|(row, _)| *row <= last.row_number)
        .collect();
    for &index in conflicted {
        let user = batch.user(index);
        cells.insert(
            user.row_number,
            [
                user.email_as_written,
                user.first_name,
                user.last_name,
                if user.role_given {
                    user.role.as_str()
                } else {
                    ""
                },
                user.job_title,
                user.external_id.unwrap_or_default(),
            ],
        );
    }
    let mut lines: Vec<FailedLine<'b>> = Vec::new();
    for error in stored {
        if lines
            .last()
            .is_some_and(|(row, _)| *row == error.row_number)
        {
            continue;
        }
        let row = error.row_number;
        let cells = cells.remove(&row).unwrap_or([""; 6]);
        lines.push((row, cells.map(storable)));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Column, Email, FailedRow, NewUser, Role};

    #[test]
    fn one_line_per_row_with_a_stored_error() {
        let mut batch = UserBatch::with_capacity(2);
        batch.push_user(
            2,
            &NewUser {
                email: Email::parse("Ann@x.io").unwrap(),
                first_name: "Ann",
                last_name: "",
                role: Role::Admin,
                role_given: true,
                job_title: "",
                external_id: Some("E1"),
            },
        );
        batch.push_failed_row(FailedRow {
            errors: vec![
                RowError::required(3, Column::Email),
                RowError::invalid_role(3, "boss"),
            ],
            email: None,
            external_id: None,
            cells: Some([" ", "Bo", "B", "boss", "=1+1", ""]),
        });
        batch.push_failed_row(FailedRow::with_errors(vec![RowError::field_count(4, 6, 2)]));
        let stored = vec![
            RowError::already_exists(2, Column::Email, "Ann@x.io"),
            batch.errors[0].clone(),
            batch.errors[1].clone(),
            batch.errors[2].clone(),
        ];
        let lines = lines(&batch, &[0], &stored);
        let plain: Vec<(u64, [&str; 6])> = lines
            .iter()
            .map(|(row, cells)| (*row, cells.each_ref().map(|c| c.as_ref())))
            .collect();
        assert_eq!(
            plain,
            vec![
                (2, ["Ann@x.io", "Ann", "", "admin", "", "E1"]),
                (3, [" ", "Bo", "B", "boss", "=1+1", ""]),
                (4, [""; 6]),
            ]
        );
        assert_eq!(storable("a\0b"), "a\\u0000b");
        // The cap on errors caps the lines.
        let capped = super::lines(&batch, &[0], &stored[..2]);
        assert_eq!(capped.len(), 2);
    }
}
