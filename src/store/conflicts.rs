//! Rows the unique indexes refused, turned into row errors that say who holds the value.
//!
//! Both backends insert with `ON CONFLICT DO NOTHING` (or a `COPY` that falls back to it),
//! learn which rows were refused, then look up who holds each refused email and external id.
//! What the row error then says depends only on that holder, so it is decided here, once.

use std::collections::HashMap;

use crate::domain::{Column, ImportKey, RowError, UserBatch};

/// Who holds a value a row was refused for: the import and row that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub import_key: ImportKey,
    pub source_row: u64,
    /// The holder's import id while that import still runs: if it fails, its users are
    /// deleted and the value is free again, which the row error must say.
    pub running_import: Option<String>,
}

/// The columns the stores' holder lookups return: the value, then the holder.
pub(crate) type HolderRow = (String, i64, i64, Option<String>);

/// The start of a holder lookup of `column` (email or external_id), up to the account's
/// placeholder, which each store writes its own way, as it does the list of values.
pub(crate) fn holder_lookup(column: Column) -> String {
    format!(
        "SELECT u.{}, u.import_key, u.source_row, \
         CASE WHEN i.status = 'PROCESSING' THEN i.import_id END \
         FROM users u JOIN imports i ON i.import_key = u.import_key WHERE u.account_id = ",
        column.name()
    )
}

/// Holders by value, from the rows of a holder lookup.
pub(crate) fn holders_by_value(rows: Vec<HolderRow>) -> HashMap<String, Holder> {
    rows.into_iter()
        .map(|(value, import_key, source_row, running_import)| {
            let holder = Holder {
                import_key,
                source_row: source_row as u64,
                running_import,
            };
            (value, holder)
        })
        .collect()
}

/// The row error for a valid row the unique indexes refused.
fn conflict_error(
    key: ImportKey,
    row_number: u64,
    column: Column,
    value: &str,
    holder: Option<Holder>,
) -> RowError {
    match holder {
        Some(h) if h.import_key == key => {
            RowError::duplicate_in_file(row_number, column, value, h.source_row)
        }
        Some(Holder {
            running_import: Some(import_id),
            ..
        }) => RowError::being_imported(row_number, column, value, &import_id),
        _ => RowError::already_exists(row_number, column, value),
    }
}

/// The row errors of the batch users (by index) that the unique indexes refused, given who
/// holds each refused email and external id.
pub(crate) fn refusals(
    key: ImportKey,
    batch: &UserBatch,
    refused: &[usize],
    by_email: &HashMap<String, Holder>,
    by_external_id: &HashMap<String, Holder>,
) -> Vec<RowError> {
    let mut errors = Vec::with_capacity(refused.len());
    for &i in refused {
        let user = batch.user(i);
        let email_holder = by_email.get(user.email).cloned();
        let id_holder = user
            .external_id
            .and_then(|id| by_external_id.get(id).cloned());
        // When neither is found, the holder went away in between (another import ended):
        // the row still was not imported, and the email is the likelier culprit.
        if email_holder.is_some() || id_holder.is_none() {
            let value = user.email_as_written;
            errors.push(conflict_error(
                key,
                user.row_number,
                Column::Email,
                value,
                email_holder,
            ));
        }
        if let (Some(id), Some(holder)) = (user.external_id, id_holder) {
            errors.push(conflict_error(
                key,
                user.row_number,
                Column::ExternalId,
                id,
                Some(holder),
            ));
        }
    }
    errors
}

/// Merges two lists of row errors sorted by row, keeping each row's errors together.
pub(crate) fn merge_by_row(a: &[RowError], b: Vec<RowError>) -> Vec<RowError> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let mut b = b.into_iter().peekable();
    for error in a {
        while let Some(next) = b.next_if(|e| e.row_number < error.row_number) {
            merged.push(next);
        }
        merged.push(error.clone());
    }
    merged.extend(b);
    merged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ErrorCode;

    #[test]
    fn merged_errors_follow_file_order() {
        let a = vec![
            RowError::required(2, Column::Email),
            RowError::invalid_role(5, "x"),
        ];
        let b = vec![
            RowError::already_exists(3, Column::Email, "a@x.io"),
            RowError::already_exists(9, Column::Email, "b@x.io"),
        ];
        let rows: Vec<(u64, ErrorCode)> = merge_by_row(&a, b)
            .iter()
            .map(|e| (e.row_number, e.code))
            .collect();
        assert_eq!(
            rows,
            vec![
                (2, ErrorCode::Required),
                (3, ErrorCode::AlreadyExists),
                (5, ErrorCode::InvalidRole),
                (9, ErrorCode::AlreadyExists),
            ]
        );
    }

    #[test]
    fn a_holder_in_the_same_import_is_a_duplicate_in_the_file() {
        let same = conflict_error(
            7,
            12,
            Column::Email,
            "a@x.io",
            Some(Holder {
                import_key: 7,
                source_row: 4,
                running_import: Some("this-one".into()),
            }),
        );
        assert_eq!(same.code, ErrorCode::DuplicateInFile);
        assert!(same.message.contains("row 4"));
        let other = conflict_error(
            7,
            12,
            Column::ExternalId,
            "E1",
            Some(Holder {
                import_key: 3,
                source_row: 4,
                running_import: None,
            }),
        );
        assert_eq!(other.code, ErrorCode::AlreadyExists);
        assert_eq!(other.column, Some(Column::ExternalId));
        assert!(
            other.message.contains("already exists"),
            "{}",
            other.message
        );
        let running = conflict_error(
            7,
            12,
            Column::Email,
            "a@x.io",
            Some(Holder {
                import_key: 3,
                source_row: 4,
                running_import: Some("march".into()),
            }),
        );
        assert_eq!(running.code, ErrorCode::AlreadyExists);
        assert!(
            running
                .message
                .contains("import 'march', which is still running"),
            "{}",
            running.message
        );
    }
}
