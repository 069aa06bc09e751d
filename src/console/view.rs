//! Pieces of pages that several pages show: a status in the help page's words with what it
//! means, an import's counters, its row errors, times, and the "Next page" link.

use std::time::SystemTime;

use axum::http::Uri;
use maud::{Markup, html};

use super::paths;
use crate::domain::{Import, ImportStatus, ImportType};
use crate::store::StoredRowError;

/// The import's type as the product names it.
pub fn type_words(import: &Import) -> &'static str {
    match import.kind {
        ImportType::Users => "Users (CSV)",
    }
}

/// What a status means, for the person looking at the import.
pub fn explanation(status: ImportStatus) -> &'static str {
    match status {
        ImportStatus::Processing => {
            "The file is being read and its users imported. The counters move as it goes."
        }
        ImportStatus::CompletedSuccess => "Every row of the file was imported.",
        ImportStatus::CompletedPartial => {
            "Some rows were imported; those listed under Errors were not. Download the fix-up \
             file, correct those rows, and import the fixed file."
        }
        ImportStatus::CompletedNothingToImport => {
            "The file was read, but it had no row to import: it held only a header, or blank \
             rows."
        }
        ImportStatus::ErrorParsing => {
            "The file could not be read as CSV, so nothing was imported. The message below says \
             where and why; correct the file and import it again."
        }
        ImportStatus::ErrorUnknown => {
            "The import could not finish, so nothing was imported. The message below says why; \
             import the file again."
        }
        ImportStatus::Cancelled => "The import was cancelled; nothing was imported.",
    }
}

/// The status, in the help page's words, as a badge whose colour says how it went.
pub fn status_badge(status: ImportStatus) -> Markup {
    let class = match status {
        ImportStatus::Processing => "status running",
        ImportStatus::CompletedSuccess => "status ok",
        ImportStatus::CompletedPartial | ImportStatus::CompletedNothingToImport => "status warn",
        ImportStatus::ErrorParsing | ImportStatus::ErrorUnknown | ImportStatus::Cancelled => {
            "status bad"
        }
    };
    html! { span class=(class) data-status { (status.words()) } }
}

/// A time as people read it, in UTC.
pub fn when(time: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(time).to_string();
    format!("{} UTC", text.trim_end_matches('Z').replace('T', " "))
}

/// Who started an import; an open server's imports have nobody.
pub fn by(created_by: &str) -> &str {
    if created_by.is_empty() {
        "—"
    } else {
        created_by
    }
}

/// The import's status, what it means, its counters and its settings. While it runs, the
/// console's script follows `events` and moves the counters (`data-counter`) in place.
pub fn summary(import: &Import, events: &str) -> Markup {
    let c = &import.counters;
    let running = import.status == ImportStatus::Processing;
    let counters: [(&str, &str, u64); 7] = [
        ("rows_processed", "Rows read", c.rows_processed),
        ("rows_imported", "Imported", c.rows_imported),
        ("rows_failed", "Failed", c.rows_failed),
        ("rows_skipped", "Skipped", c.rows_skipped),
        ("rows_updated", "Updated", c.rows_updated),
        ("users_invited", "Invited", import.users_invited),
        ("bytes_received", "Bytes received", c.bytes_received),
    ];
    html! {
        section.summary data-events=[running.then_some(events)] aria-live="polite" {
            p.status-line { "Status: " (status_badge(import.status)) }
            p.explanation data-explanation { (explanation(import.status)) }
            @if running {
                p.note data-live-note hidden {}
            }
            @if import.validate_only {
                p.note { "A dry run: the file was checked as an import would be, and no user \
                          was written." }
            }
            @if !import.error_message.is_empty() {
                p.error role="alert" { (import.error_message) }
            }
            @if !import.revert_note.is_empty() {
                p.note { "Reverted: " (import.revert_note) }
            }
            dl.counters {
                @for (name, label, value) in counters {
                    div { dt { (label) } dd data-counter=(name) { (value) } }
                }
            }
            details {
                summary { "Details" }
                dl.settings {
                    div { dt { "Import id" } dd { code { (import.import_id.as_str()) } } }
                    div { dt { "Type" } dd { (type_words(import)) } }
                    div { dt { "Created" } dd { (when(import.create_time)) } }
                    div { dt { "Created by" } dd { (by(&import.created_by)) } }
                    @if let Some(done) = import.complete_time {
                        div { dt { "Ended" } dd { (when(done)) } }
                    }
                    div { dt { "Existing users" } dd { (import.on_conflict.as_str()) } }
                    div { dt { "Invitations" } dd { (import.invitations.as_str()) } }
                    @if let Some(retry_of) = &import.retry_of {
                        div { dt { "Fixes import" } dd {
                            a href=(paths::import(import.account_id.as_str(), retry_of.as_str())) {
                                (retry_of.as_str()) } } }
                    }
                }
            }
        }
    }
}

/// The Errors section's table: row, column, value, message, as the file had them.
pub fn errors_table(import: &Import, errors: &[StoredRowError]) -> Markup {
    html! {
        @if import.details_removed_time.is_some() {
            p.note { "The row errors of this import were removed after the retention period; \
                      the counters stay." }
        } @else if errors.is_empty() {
            p.empty { @if import.status == ImportStatus::Processing { "No row error so far." }
                      @else { "No row errors." } }
        } @else {
            table.row-errors {
                caption.visually-hidden { "Row errors, in file order" }
                thead { tr {
                    th scope="col" class="num" { "Row" } th scope="col" { "Column" }
                    th scope="col" { "Value" } th scope="col" { "Message" }
                } }
                tbody {
                    @for e in errors {
                        tr {
                            td.num { (e.error.row_number) }
                            td { (e.error.column.map_or("(whole row)", |c| c.name())) }
                            td { code { (e.error.value) } }
                            td { (e.error.message) }
                        }
                    }
                }
            }
            @if import.counters.row_errors_omitted > 0 {
                p.note { (import.counters.row_errors_omitted) " more row errors were not stored \
                         (the server keeps a limited number per import); the counters are exact." }
            }
        }
    }
}

/// A "Next page" link with `page_token`, when there is a next page.
pub fn next_page(uri: &Uri, next: &str) -> Markup {
    next_page_with(uri, "page_token", next)
}

/// A "Next page" link that sets `param` to `next` in this page's address, keeping its other
/// parameters, when there is a next page.
pub fn next_page_with(uri: &Uri, param: &str, next: &str) -> Markup {
    if next.is_empty() {
        return html! {};
    }
    let kept: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(param))
        .collect();
    let mut query = kept.join("&");
    if !query.is_empty() {
        query.push('&');
    }
    query.push_str(&format!("{param}={}", paths::query_value(next)));
    html! {
        nav.pager aria-label="Pages" {
            a rel="next" href=(format!("{}?{query}", uri.path())) { "Next page →" }
        }
    }
}

/// The fix-up file's name: the upload's, with `-fix-up` before `.csv`, in characters a
/// `Content-Disposition` header carries as they are.
pub fn fix_up_name(filename: &str) -> String {
    let stem = filename
        .strip_suffix(".csv")
        .or_else(|| filename.strip_suffix(".CSV"))
        .unwrap_or(filename);
    let safe: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' ') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}-fix-up.csv", safe.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fix_up_file_is_named_after_the_upload() {
        assert_eq!(fix_up_name("users.csv"), "users-fix-up.csv");
        assert_eq!(fix_up_name("a\"b;c.CSV"), "a_b_c-fix-up.csv");
    }

    #[test]
    fn the_next_page_keeps_the_other_parameters() {
        let uri: Uri = "/accounts/acme/users?import_id=x&page_token=old"
            .parse()
            .unwrap();
        let link = next_page(&uri, "new+token").into_string();
        assert!(
            link.contains("/accounts/acme/users?import_id=x&amp;page_token=new%2Btoken"),
            "{link}"
        );
    }
}
