//! The client's output for people: statuses in the help page's own words, counts with
//! thousands separators, row errors as a table.

use crate::proto::{self, ImportStatus};

/// A status as the product's help page names it.
pub fn status_words(status: i32) -> &'static str {
    match ImportStatus::try_from(status) {
        Ok(ImportStatus::Processing) => "Processing",
        Ok(ImportStatus::CompletedSuccess) => "Completed - Success",
        Ok(ImportStatus::CompletedPartial) => "Completed - Partial",
        Ok(ImportStatus::CompletedNothingToImport) => "Completed - Nothing to Import",
        Ok(ImportStatus::ErrorParsing) => "Error - Parsing",
        Ok(ImportStatus::ErrorUnknown) => "Error - Unknown",
        Ok(ImportStatus::Cancelled) => "Cancelled",
        Ok(ImportStatus::Unspecified) | Err(_) => "Unknown status",
    }
}

/// `196027` → `196,027`.
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

/// An import, a field per line, then its outcome.
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
    if import.validate_only {
        lines.push("dry run:     yes, no user was written".to_owned());
    }
    if !import.retry_of_import_id.is_empty() {
        lines.push(format!("retry of:    {}", import.retry_of_import_id));
    }
    if let Some(time) = &import.revert_time {
        lines.push(format!("reverted:    {time} ({})", import.revert_note));
    }
    if !import.error_message.is_empty() {
        lines.push(format!("error:       {}", import.error_message));
    }
    lines.join("\n")
}

/// Row errors as a table: row, column, code, message.
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
