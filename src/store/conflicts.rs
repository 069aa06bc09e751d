//! Rows the unique indexes refused, turned into row errors that say who holds the value.
//!
//! Both backends insert with `ON CONFLICT DO NOTHING` (or a `COPY` that falls back to it),
//! learn which rows were refused, then look up who holds each refused email and external id
//! (`lookup::holders`, run by `record::plain`). What the row error then says depends only on
//! that holder, so it is decided here, once, and purely.
//!
//! The three answers a holder gives:
//!
//! - a row of this same import: DUPLICATE_IN_FILE, naming that row;
//! - a user of an import still running: the value may be free again if that import fails, so the
//!   error names the import (`RowError::being_imported`);
//! - a user of a finished import, or nobody any more: ALREADY_EXISTS.
//!
//! Only a holder *before* the row counts (see `refusals`), so that the errors are those a
//! row-by-row reading of the file gives, although the batch was inserted at once.

use std::collections::HashMap;

use crate::domain::{Column, ImportKey, RowError, UserBatch};

/// Who holds a value a row was refused for: the import and row that wrote it.
///
/// Read by `lookup::holders` (`lookup::HolderRow`), one per value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    /// The import that created the holding user; this import's own key means a row of its own
    /// file.
    pub import_key: ImportKey,
    /// The holder's row in that import's file.
    pub source_row: u64,
    /// The holder's import id while that import still runs: if it fails, its users are
    /// deleted and the value is free again, which the row error must say.
    pub running_import: Option<String>,
}

/// The row error for a value held by someone else.
///
/// `key` is the import the row belongs to, `value` the value as the row wrote it. `None` (the
/// holder went between the refusal and the lookup) is told as ALREADY_EXISTS: the value was taken
/// when the row came.
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
        // Held by a finished import's user; or by nobody any more (the holder went between
        // the insert and the lookup): the value was taken when the row came.
        Some(Holder {
            running_import: None,
            ..
        })
        | None => RowError::already_exists(row_number, column, value),
    }
}

/// The values whose holders a batch must know: those of the users the unique indexes refused,
/// and (with `probes`) the valid ones of its failed rows. Emails, then external ids.
///
/// Failed rows are probed so that their row errors also say when a value they hold is taken: a
/// person fixing the row then fixes both at once.
pub(crate) fn looked_up<'b>(
    batch: &'b UserBatch,
    refused: &[usize],
    probes: bool,
) -> (Vec<&'b str>, Vec<&'b str>) {
    let users = refused.iter().map(|&i| batch.user(i));
    let mut emails: Vec<&str> = users.clone().map(|u| u.email).collect();
    let mut ids: Vec<&str> = users.filter_map(|u| u.external_id).collect();
    for probe in batch.probes().filter(|_| probes) {
        emails.extend(probe.email.map(|(normalised, _)| normalised));
        ids.extend(probe.external_id);
    }
    (emails, ids)
}

/// The row errors for values held by someone else, in file order (a row's email before its
/// external id), exactly as a reading of the file row by row gives them:
///
/// - a value counts as held by another import's user, or by a row of this import that comes
///   *before* the row in the file. The lookup runs after the whole batch was inserted, so it
///   also finds later rows of this import that took a value the row would have held, had it
///   been imported: those are not its conflicts;
/// - a refused user gets an error for each value so held (at least one, since the unique
///   indexes refused it; when its holder went away in between, the email is the likelier
///   culprit);
/// - a failed row gets one for each of its valid values so held, beside its validation errors
///   (with `probes`).
pub(crate) fn refusals(
    key: ImportKey,
    batch: &UserBatch,
    refused: &[usize],
    probes: bool,
    by_email: &HashMap<String, Holder>,
    by_external_id: &HashMap<String, Holder>,
) -> Vec<RowError> {
    let earlier = |holders: &HashMap<String, Holder>, value: &str, row: u64| {
        holders
            .get(value)
            .filter(|h| h.import_key != key || h.source_row < row)
            .cloned()
    };
    let mut errors = Vec::with_capacity(refused.len());
    for &i in refused {
        let user = batch.user(i);
        let row = user.row_number;
        let email_holder = earlier(by_email, user.email, row);
        let id_holder = user
            .external_id
            .and_then(|id| earlier(by_external_id, id, row));
        if email_holder.is_some() || id_holder.is_none() {
            errors.push(conflict_error(
                key,
                row,
                Column::Email,
                user.email_as_written,
                email_holder,
            ));
        }
        if let (Some(id), Some(holder)) = (user.external_id, id_holder) {
            errors.push(conflict_error(
                key,
                row,
                Column::ExternalId,
                id,
                Some(holder),
            ));
        }
    }
    for probe in batch.probes().filter(|_| probes) {
        let row = probe.row_number;
        if let Some((email, as_written)) = probe.email
            && let Some(holder) = earlier(by_email, email, row)
        {
            errors.push(conflict_error(
                key,
                row,
                Column::Email,
                as_written,
                Some(holder),
            ));
        }
        if let Some(id) = probe.external_id
            && let Some(holder) = earlier(by_external_id, id, row)
        {
            errors.push(conflict_error(
                key,
                row,
                Column::ExternalId,
                id,
                Some(holder),
            ));
        }
    }
    // Refused users and failed rows, each in file order: one file order. Stable, so that a
    // row's email stays before its external id.
    errors.sort_by_key(|e| e.row_number);
    errors
}

/// Merges two lists of row errors sorted by row, keeping each row's errors together.
///
/// On a tie `a`'s come first: the callers pass validation errors (or the plan's) as `a` and the
/// conflicts found afterwards as `b`, so a row's own errors read before its conflicts. Linear:
/// both lists are already in file order.
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

    fn user<'a>(email: &'a str, external_id: Option<&'a str>) -> crate::domain::NewUser<'a> {
        crate::domain::NewUser {
            email: crate::domain::Email::parse(email).unwrap(),
            first_name: "",
            last_name: "",
            role: crate::domain::Role::Member,
            role_given: false,
            job_title: "",
            external_id,
        }
    }

    fn held(import_key: ImportKey, source_row: u64) -> Holder {
        Holder {
            import_key,
            source_row,
            running_import: None,
        }
    }

    #[test]
    fn a_value_taken_by_a_later_row_is_no_conflict_of_an_earlier_one() {
        // a@x.com,E1 / a@x.com,E2 / c@x.com,E2: row 3 is refused for its email; row 4 then
        // takes E2, which row 3 never held.
        let mut batch = UserBatch::with_capacity(3);
        batch.push_user(2, &user("a@x.com", Some("E1")));
        batch.push_user(3, &user("a@x.com", Some("E2")));
        batch.push_user(4, &user("c@x.com", Some("E2")));
        let by_email = HashMap::from([("a@x.com".to_owned(), held(7, 2))]);
        let by_id = HashMap::from([("E2".to_owned(), held(7, 4))]);
        let errors = refusals(7, &batch, &[1], true, &by_email, &by_id);
        let seen: Vec<_> = errors
            .iter()
            .map(|e| (e.row_number, e.column, e.code))
            .collect();
        assert_eq!(
            seen,
            vec![(3, Some(Column::Email), ErrorCode::DuplicateInFile)]
        );
        assert!(errors[0].message.contains("row 2"));
    }

    #[test]
    fn a_failed_row_is_told_of_its_held_values_too() {
        let mut batch = UserBatch::with_capacity(2);
        batch.push_user(2, &user("a@x.com", Some("E1")));
        batch.push_failed_row(crate::domain::FailedRow {
            errors: vec![RowError::invalid_role(3, "boss")],
            email: Some(crate::domain::Email::parse("A@x.com").unwrap()),
            external_id: Some("E1"),
            cells: None,
        });
        let by_email = HashMap::from([("a@x.com".to_owned(), held(7, 2))]);
        let by_id = HashMap::from([("E1".to_owned(), held(3, 9))]);
        let errors = refusals(7, &batch, &[], true, &by_email, &by_id);
        let seen: Vec<_> = errors
            .iter()
            .map(|e| (e.row_number, e.column, e.code))
            .collect();
        assert_eq!(
            seen,
            vec![
                (3, Some(Column::Email), ErrorCode::DuplicateInFile),
                (3, Some(Column::ExternalId), ErrorCode::AlreadyExists),
            ]
        );
        assert_eq!(errors[0].value, "A@x.com");
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
