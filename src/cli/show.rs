//! The client's output for people: statuses in the help page's own words, counts with
//! thousands separators, row errors as a table.
//!
//! The words are the product's, so that what a person reads in the terminal matches the help
//! page (`Completed - Partial`, not `IMPORT_STATUS_COMPLETED_PARTIAL`). These strings are for
//! people and may change; scripts use `--json` (`json`) and the exit code.

use crate::proto;

/// A status as the product's help page names it.
///
/// `Unknown status` for UNSPECIFIED or a number this client does not know (a newer server),
/// rather than a failed command.
pub fn status_words(status: i32) -> &'static str {
    match crate::grpc::convert::domain_status(status) {
        Some(status) => status.words(),
        None => "Unknown status",
    }
}

/// A note for an import some of whose row errors were not stored: how many, and that the
/// fix-up file still holds every failed row. `None` when every error was stored.
pub fn omitted(import: &proto::Import) -> Option<String> {
    // Once the details are removed there is neither: `import` says so.
    (import.row_errors_omitted > 0 && import.details_removed_time.is_none()).then(|| {
        format!(
            "{} more row errors were not stored (the server keeps at most \
             --max-stored-row-errors per import); every failed row, with its reasons, is in the \
             fix-up file: `bulk-import errors --account {} {} > fix.csv`",
            count(import.row_errors_omitted),
            import.account_id,
            import.import_id
        )
    })
}

/// `196027` → `196,027`.
///
/// Takes the proto's `int64` as it comes; a negative number (which no counter is) keeps its
/// sign in front of the groups.
pub fn count(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        grouped.push('-');
    }
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// The outcome in one line: `Completed - Partial: 196,027 imported, 3,973 failed`.
///
/// A dry run says `would be imported` and ends with a reminder that nothing was written;
/// `updated` and `skipped` appear only when the conflict policy made some, so the common line
/// stays short. Printed by `upload` at the end and by `watch` for each snapshot.
pub fn outcome(import: &proto::Import) -> String {
    let mut parts = Vec::new();
    let imported = if import.validate_only {
        "would be imported"
    } else {
        "imported"
    };
    parts.push(format!("{} {imported}", count(import.rows_imported)));
    if import.rows_updated > 0 {
        parts.push(format!("{} updated", count(import.rows_updated)));
    }
    if import.rows_skipped > 0 {
        parts.push(format!("{} skipped", count(import.rows_skipped)));
    }
    parts.push(format!("{} failed", count(import.rows_failed)));
    let mut line = format!("{}: {}", status_words(import.status), parts.join(", "));
    if import.validate_only {
        line.push_str(" (a dry run: nothing was written)");
    }
    line
}

/// An import, a field per line: id, file name, status, row counts and bytes received.
///
/// The lines that only some imports have (existing users updated or skipped, dry run, retry
/// of, reverted, error) appear only when they apply. Used by `get`, `cancel` and `revert`.
pub fn import(import: &proto::Import) -> String {
    let mut lines = vec![
        format!("import_id:   {}", import.import_id),
        format!("filename:    {}", import.filename),
        format!("status:      {}", status_words(import.status)),
        format!(
            "rows:        {} processed, {} imported, {} failed",
            count(import.rows_processed),
            count(import.rows_imported),
            count(import.rows_failed)
        ),
    ];
    if import.rows_skipped > 0 || import.rows_updated > 0 {
        lines.push(format!(
            "existing:    {} updated, {} skipped",
            count(import.rows_updated),
            count(import.rows_skipped)
        ));
    }
    lines.push(format!(
        "received:    {} bytes",
        count(import.bytes_received)
    ));
    if import.resumable {
        lines.push(format!(
            "committed:   {} bytes (a resume sends the file from there)",
            count(import.committed_bytes)
        ));
    }
    if let Some(deadline) = &import.resume_deadline {
        lines.push(format!(
            "waiting:     for its client to resume the upload, until {} \
             (`bulk-import resume --import {} FILE`)",
            deadline, import.import_id
        ));
    }
    if import.validate_only {
        lines.push("dry run:     yes, no user was written".to_owned());
    }
    if !import.retry_of_import_id.is_empty() {
        lines.push(format!("retry of:    {}", import.retry_of_import_id));
    }
    if let Some(time) = &import.revert_time {
        lines.push(format!("reverted:    {time} ({})", import.revert_note));
    }
    if let Some(time) = &import.details_removed_time {
        lines.push(format!(
            "details:     removed {time}, past the server's retention: no row errors or \
             fix-up file (a dry run of the same file shows the errors again)"
        ));
    }
    if !import.error_message.is_empty() {
        lines.push(format!("error:       {}", import.error_message));
    }
    lines.join("\n")
}

/// Row errors as a table: row, column, code, message.
///
/// Columns are as wide as their longest cell; the message comes last and is never cut, so a
/// long one wraps in the terminal rather than hiding its advice. An error of the whole row
/// shows `-` as its column. The offending value is left out; `--json` and the fix-up file
/// have it.
pub fn row_errors(errors: &[proto::RowError]) -> String {
    let width = |f: fn(&proto::RowError) -> usize, header: &str| {
        errors.iter().map(f).max().unwrap_or(0).max(header.len())
    };
    let row_w = width(|e| count(e.row_number).len(), "ROW");
    let column_w = width(|e| e.column.len().max(1), "COLUMN");
    let code_w = width(|e| e.code.len(), "CODE");
    let mut lines = vec![format!(
        "{:>row_w$}  {:<column_w$}  {:<code_w$}  MESSAGE",
        "ROW", "COLUMN", "CODE"
    )];
    for e in errors {
        let column = if e.column.is_empty() { "-" } else { &e.column };
        lines.push(format!(
            "{:>row_w$}  {:<column_w$}  {:<code_w$}  {}",
            count(e.row_number),
            column,
            e.code,
            e.message
        ));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ImportStatus;

    #[test]
    fn counts_have_thousands_separators() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(196_027), "196,027");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(-4200), "-4,200");
    }

    #[test]
    fn the_outcome_uses_the_help_pages_words() {
        let import = proto::Import {
            status: ImportStatus::CompletedPartial as i32,
            rows_imported: 196_027,
            rows_failed: 3_973,
            ..Default::default()
        };
        assert_eq!(
            outcome(&import),
            "Completed - Partial: 196,027 imported, 3,973 failed"
        );
        for status in [
            ImportStatus::CompletedSuccess,
            ImportStatus::CompletedNothingToImport,
            ImportStatus::ErrorParsing,
            ImportStatus::ErrorUnknown,
            ImportStatus::Cancelled,
        ] {
            assert!(!status_words(status as i32).contains('_'));
        }
    }
}
