//! What a batch keeps of its failed rows, for the fix-up file (`GetImportErrorReport`).
//!
//! One line per failed row, every failed row of the batch, with the reasons it failed: the
//! fix-up file holds every row that did not import, whatever the cap on stored row errors
//! (`--max-stored-row-errors`), which bounds only the pages of `GetImport`. A person who fixes
//! the file and imports it again loses no row. The cells are the file's, after decoding, for a
//! row that failed validation; for a valid row refused by a conflict, its values as the import
//! read them (trimmed, the address as written, the role as its name), which import the same.
//!
//! Stored in the batch's record transaction (`record::record`), read back in row order by
//! `queries::failed_rows`, and kept as long as the import (a discard deletes them with its row,
//! `ON DELETE CASCADE`).

use std::borrow::Cow;
use std::collections::HashMap;

use crate::domain::{Column, RowError, UserBatch, text};

/// The longest cell, in characters from where its value starts, that a failed row keeps as
/// it is. A cell longer than this fails on its length (no column takes more than
/// `Column::max_chars`, at most 254) and is kept cut to this (see `kept`): the fix-up file of
/// rows with megabyte cells stays small, and each such cell still fails the same way when the
/// report is imported, so the person sees what to shorten.
const MAX_KEPT_CHARS: usize = 1024;

/// A cell as a failed row keeps it: as it is, unless it is longer than `MAX_KEPT_CHARS`; then
/// from where its value starts (what the import trims away first is dropped), cut to that
/// many characters, provided the cut still reads as a value longer than any column takes, so
/// that it imports with the same error as the whole cell. Otherwise (a pathological cell
/// whose length is mostly blank inside) it is kept whole.
fn kept(cell: &str) -> &str {
    if cell.len() <= MAX_KEPT_CHARS {
        return cell;
    }
    let value = text::trim_cell(cell);
    let start = value.as_ptr() as usize - cell.as_ptr() as usize;
    let rest = &cell[start..];
    let Some((end, _)) = rest.char_indices().nth(MAX_KEPT_CHARS) else {
        return cell;
    };
    let cut = &rest[..end];
    let longest_column = Column::ALL.iter().map(|c| c.max_chars()).max().unwrap_or(0);
    if text::read_cell(cut).chars().count() > longest_column {
        cut
    } else {
        cell
    }
}

/// A failed row's line: its row number, its six cells in template column order, and why it
/// failed.
///
/// Borrowed from the batch where a cell needs no change (`storable`), so that keeping the cells
/// copies nothing until they are bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FailedLine<'b> {
    /// The row's spreadsheet number.
    pub row_number: u64,
    /// email, first_name, last_name, role, job_title, external_id.
    pub cells: [Cow<'b, str>; 6],
    /// Every error of the row, as the fix-up file's `errors` column shows them (`reasons`).
    pub errors: String,
}

/// A cell as stored: a NUL, which PostgreSQL text cannot hold (and the row's error names),
/// shown as `\u0000`, on both backends alike.
///
/// Both backends store the same text, so that the fix-up file is the same whichever wrote it.
fn storable(cell: &str) -> Cow<'_, str> {
    if cell.contains('\0') {
        Cow::Owned(cell.replace('\0', "\\u0000"))
    } else {
        Cow::Borrowed(cell)
    }
}

/// The lines to keep for the batch's failed rows: `errors` is every row error of the batch
/// (validation and conflicts, before any cap), in file order with a row's errors together, and
/// `conflicted` the valid users (indexes in the batch) that failed on a conflict. Every failed
/// row has at least one error, so one pass over `errors` gives one line per failed row. A row
/// known only by its error (a row with the wrong number of fields, or undecodable text) keeps
/// empty cells: its line still tells what is wrong. A conflicted row's role is empty when the
/// row gave none, as in the file.
pub(crate) fn lines<'b>(
    batch: &'b UserBatch,
    conflicted: &[usize],
    errors: &[RowError],
) -> Vec<FailedLine<'b>> {
    if errors.is_empty() {
        return Vec::new();
    }
    let mut cells: HashMap<u64, [&'b str; 6]> = batch.failed_cells().collect();
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
    for row_errors in errors.chunk_by(|a, b| a.row_number == b.row_number) {
        let row = row_errors[0].row_number;
        let row_cells = cells.remove(&row).unwrap_or([""; 6]);
        lines.push(FailedLine {
            row_number: row,
            cells: row_cells.map(|cell| storable(kept(cell))),
            errors: storable(&reasons(row_errors)).into_owned(),
        });
    }
    lines
}

/// A row's errors as the fix-up file's `errors` column says them: each error's column (`row`
/// for an error of the whole row), code and message, joined by `; `.
pub(crate) fn reasons(errors: &[RowError]) -> String {
    let mut text = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            text.push_str("; ");
        }
        let column = e.column.map_or("row", |c| c.name());
        text.push_str(&format!("{column} {}: {}", e.code.as_str(), e.message));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Column, Email, FailedRow, NewUser, Role};

    #[test]
    fn one_line_per_failed_row_with_its_reasons() {
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
        let errors = vec![
            RowError::already_exists(2, Column::Email, "Ann@x.io"),
            batch.errors[0].clone(),
            batch.errors[1].clone(),
            batch.errors[2].clone(),
        ];
        let lines = lines(&batch, &[0], &errors);
        let plain: Vec<(u64, [&str; 6])> = lines
            .iter()
            .map(|line| (line.row_number, line.cells.each_ref().map(|c| c.as_ref())))
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
        // Each line says every reason of its row.
        assert!(
            lines[0].errors.starts_with("email ALREADY_EXISTS: "),
            "{}",
            lines[0].errors
        );
        assert!(
            lines[1].errors.starts_with("email REQUIRED: "),
            "{}",
            lines[1].errors
        );
        assert!(
            lines[1].errors.contains("; role INVALID_ROLE: "),
            "{}",
            lines[1].errors
        );
        assert!(
            lines[2].errors.starts_with("row FIELD_COUNT: "),
            "{}",
            lines[2].errors
        );
    }

    #[test]
    fn a_long_cell_is_kept_cut_and_still_too_long() {
        let long = format!("   =J{}", "J".repeat(900_000));
        let cut = kept(&long);
        assert_eq!(cut.chars().count(), MAX_KEPT_CHARS);
        assert!(
            cut.starts_with("=JJ"),
            "the blanks the import trims are dropped"
        );
        assert!(text::read_cell(cut).chars().count() > 254);
        let short = "x".repeat(MAX_KEPT_CHARS);
        assert_eq!(kept(&short), short);
        // Mostly blank inside: a cut would read short, so the cell stays whole.
        let hollow = format!("a{}b", " ".repeat(5000));
        assert_eq!(kept(&hollow), hollow);
    }
}
