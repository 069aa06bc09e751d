//! The fix-up file of an import (`GetImportErrorReport`): its failed rows, with the reason
//! beside each, as a CSV a person fixes in a spreadsheet and uploads again as it is.
//!
//! - UTF-8 with a byte order mark, so that Excel opens it as UTF-8;
//! - the template's columns, with the cells as the file had them, then `row_number` and
//!   `errors` (each error's column, code and message, joined by `; `), which an upload ignores
//!   as unknown columns;
//! - a cell that a spreadsheet would run as a formula gets a leading `'`, which the import
//!   drops again (`text::spreadsheet_safe`, `text::read_cell`): every cell imports from the
//!   report exactly as it did from the original file (the property test below);
//! - every failed row, whatever the cap on stored row errors (see `store::failed`): a person
//!   who fixes every row of it and imports it again loses nothing.
//!
//! Only a completed import has one: one that ended otherwise imported nothing, so the whole
//! file must be uploaded again, and a fix-up file of some of its rows would mislead
//! (`Importer::error_report` says so with FAILED_PRECONDITION).
//!
//! It is written page by page as it is read, so it takes little memory however many rows
//! failed.
//!
//! The stream is fed by a task through a channel of two chunks: a slow reader holds the task
//! back, one that goes away stops it at its next page, and an error mid-way goes to the reader
//! as the stream's last item (after the pages sent so far).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::error::ImportError;
use crate::domain::text::spreadsheet_safe;
use crate::domain::{Column, Import, ImportStatus};
use crate::store::{FailedCells, Store};

/// Why `import` has no fix-up file, in words that say what to do instead; `None` when it has
/// one: a completed import with data rows (its report may be just the header: no row failed).
pub(super) fn unavailable(import: &Import) -> Option<String> {
    let id = &import.import_id;
    let ended = import.status.words();
    match import.status {
        ImportStatus::CompletedSuccess | ImportStatus::CompletedPartial => {
            import.details_removed_time.map(|removed| {
                format!(
                    "the details of import '{id}' (its row errors and fix-up file) were removed \
                     on {}, when they passed the server's retention period; its counters remain. \
                     To see the rows that fail again, make a dry run of the same file",
                    day(removed)
                )
            })
        }
        ImportStatus::Processing => Some(format!(
            "import '{id}' is still running; its error report is ready once it ends"
        )),
        ImportStatus::CompletedNothingToImport => Some(format!(
            "import '{id}' ended {ended}: its file had no data rows, so there is nothing to \
             fix; check that the file holds the users, then upload it again"
        )),
        ImportStatus::ErrorParsing => Some(format!(
            "import '{id}' ended {ended}, so nothing was imported and there is no error report \
             to fix: fix the file as the import's error_message says ({}), then upload the whole \
             file again",
            import.error_message
        )),
        ImportStatus::ErrorUnknown => Some(format!(
            "import '{id}' ended {ended}, so nothing was imported and there is no error report \
             to fix; its error_message says why ({})",
            import.error_message
        )),
        ImportStatus::Cancelled => Some(format!(
            "import '{id}' was cancelled ({ended}), so nothing was imported and there is no \
             error report to fix; upload the whole file again"
        )),
    }
}

/// The UTC day of `time` (`2026-12-05`), as a person reads when something happened.
fn day(time: std::time::SystemTime) -> String {
    let mut text = prost_types::Timestamp::from(time).to_string();
    text.truncate(10);
    text
}

/// Failed rows read at a time. A failed row keeps at most six cells of 1,024 characters
/// (`store::failed`), so a page holds a few megabytes at the very most.
const PAGE_ROWS: u32 = 200;
/// A chunk of the stream is sent once it holds this much.
const CHUNK_BYTES: usize = 256 * 1024;

/// Writes the report of `import` into `out`, a chunk per page; stops early when the receiver
/// is gone.
///
/// Its last chunk goes only once the import is read again and its details are still kept: if
/// the retention began removing them meanwhile (`store::retention` marks the import first),
/// the pages read may lack rows, and the stream ends with the refusal instead, so that no
/// client takes a cut report for the whole.
pub(super) async fn write(
    store: Arc<dyn Store>,
    import: Import,
    out: mpsc::Sender<Result<Bytes, ImportError>>,
) {
    if let Err(e) = write_pages(store.as_ref(), &import, &out).await {
        let _ = out.send(Err(e)).await;
    }
}

/// The report, page by page: the header once, then a chunk per page of failed rows.
async fn write_pages(
    store: &dyn Store,
    import: &Import,
    out: &mpsc::Sender<Result<Bytes, ImportError>>,
) -> Result<(), ImportError> {
    let key = import.key;
    let mut page = b"\xEF\xBB\xBF".to_vec();
    header(&mut page)?;
    let mut rows_after = None;
    loop {
        let rows = store.failed_rows(key, rows_after, PAGE_ROWS).await?;
        let Some(last) = rows.last() else {
            break;
        };
        rows_after = Some(last.row_number);
        for row in &rows {
            failed_row(&mut page, row)?;
            // A chunk stays well under what a client takes in one message (gRPC's usual
            // 4 MiB), however long the rows.
            if page.len() >= CHUNK_BYTES
                && out
                    .send(Ok(Bytes::from(std::mem::take(&mut page))))
                    .await
                    .is_err()
            {
                return Ok(());
            }
        }
        if !page.is_empty()
            && out
                .send(Ok(Bytes::from(std::mem::take(&mut page))))
                .await
                .is_err()
        {
            return Ok(());
        }
    }
    let now = store
        .get_import(&import.account_id, &import.import_id)
        .await?;
    if let Some(why) = now.as_ref().and_then(unavailable) {
        return Err(ImportError::FailedPrecondition(format!(
            "the report was cut short: {why}"
        )));
    }
    if !page.is_empty() {
        let _ = out.send(Ok(Bytes::from(page))).await;
    }
    Ok(())
}

/// The header line: the template's columns, then `row_number` and `errors`.
fn header(page: &mut Vec<u8>) -> Result<(), ImportError> {
    let mut names: Vec<String> = Column::ALL.iter().map(|c| c.name().to_owned()).collect();
    names.extend(["row_number".to_owned(), "errors".to_owned()]);
    line(page, names.into_iter())
}

/// One failed row's line: its cells, each made safe for a spreadsheet, its row number, and
/// its reasons.
fn failed_row(page: &mut Vec<u8>, row: &FailedCells) -> Result<(), ImportError> {
    let mut cells: Vec<String> = row
        .cells
        .iter()
        .map(|c| spreadsheet_safe(c).into_owned())
        .collect();
    cells.push(row.row_number.to_string());
    cells.push(spreadsheet_safe(&row.errors).into_owned());
    line(page, cells.into_iter())
}

/// One CSV line, quoted where needed, onto `page`, ended by CRLF as RFC 4180 has it. Writing
/// to memory fails only on a bug, which becomes `Internal`.
fn line(page: &mut Vec<u8>, cells: impl Iterator<Item = String>) -> Result<(), ImportError> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(page);
    writer
        .write_record(cells)
        .and_then(|()| writer.flush().map_err(csv::Error::from))
        .map_err(|e| ImportError::Internal(format!("writing the error report: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::text::read_cell;
    use crate::import::parser::Limits;
    use crate::import::reader::check;
    use proptest::prelude::*;

    /// The pieces cells are made of: what a spreadsheet or a person puts at a cell's ends
    /// (spaces, tabs, CRs, line breaks, an invisible character), what makes a formula
    /// (`= + - @`), what CSV must quote (quotes, commas), the report's own `'`, and text.
    fn piece() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just(" "),
            Just("\t"),
            Just("\r"),
            Just("\n"),
            Just("\r\n"),
            Just("="),
            Just("+"),
            Just("-"),
            Just("@"),
            Just("'"),
            Just("\""),
            Just(","),
            Just(";"),
            Just("\u{200B}"),
            Just("a"),
            Just("Zoë"),
            Just("1"),
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(piece(), 0..6).prop_map(|p| p.concat())
    }

    /// A row's six cells: an address with anything at its ends (usually a valid one, so that
    /// most rows import and their values are compared), a role, and free text elsewhere.
    fn row() -> impl Strategy<Value = [String; 6]> {
        let email = prop_oneof![
            4 => (text(), text()).prop_map(|(a, b)| format!("{a}ann@x.io{b}")),
            1 => text(),
        ];
        let role = prop_oneof![
            Just(String::new()),
            Just("admin".to_owned()),
            Just(" Viewer\t".to_owned()),
            Just("\tadmin".to_owned()),
            Just("=admin".to_owned()),
            text(),
        ];
        (email, text(), text(), role, text(), text())
            .prop_map(|(e, f, l, r, t, x)| [e, f, l, r, t, x])
    }

    /// The header the person's file has: the template's columns.
    const HEADER: &str = "email,first_name,last_name,role,job_title,external_id\n";

    /// A one-row file with these cells, as a spreadsheet would write it.
    fn original(cells: &[String; 6]) -> Vec<u8> {
        let mut file = HEADER.as_bytes().to_vec();
        line(&mut file, cells.iter().cloned()).unwrap();
        file
    }

    /// The error report holding that row with `cells` kept for it.
    fn report(cells: &[String; 6]) -> Vec<u8> {
        let mut file = b"\xEF\xBB\xBF".to_vec();
        header(&mut file).unwrap();
        let row = FailedCells {
            row_number: 2,
            cells: cells.clone(),
            errors: "=role INVALID_ROLE: \"boss\" is not a role".to_owned(),
        };
        failed_row(&mut file, &row).unwrap();
        file
    }

    /// How the import reads a file: every row's values or error codes, through the real reader.
    fn read(file: &[u8]) -> Vec<String> {
        let outcome = check::read(file, &[], Limits::default());
        assert_eq!(outcome.end, Ok(()), "{}", String::from_utf8_lossy(file));
        outcome.rows
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A failed row's cells are kept as the file had them: imported from the report, each
        /// gives exactly what it gave from the file.
        #[test]
        fn a_row_imports_from_the_report_as_it_did_from_the_file(cells in row()) {
            // A row blank once trimmed is skipped, and never in a report.
            prop_assume!(cells.iter().any(|c| !read_cell(c).is_empty()));
            prop_assert_eq!(read(&report(&cells)), read(&original(&cells)));
        }

        /// A row refused by a conflict is kept as the import read it: imported from the
        /// report, it gives what the file gave.
        #[test]
        fn a_row_kept_as_read_imports_as_it_did_from_the_file(cells in row()) {
            prop_assume!(cells.iter().any(|c| !read_cell(c).is_empty()));
            let read_values = cells.clone().map(|c| read_cell(&c).to_owned());
            prop_assert_eq!(read(&report(&read_values)), read(&original(&cells)));
        }
    }

    #[test]
    fn a_cell_that_starts_with_a_tab_or_a_cr_survives_the_round_trip() {
        for cell in ["\tTab", "\rCR", "\t", "\t =1", "  '=x", "'\tTab"] {
            let cells = [
                "ann@x.io".to_owned(),
                cell.to_owned(),
                cell.to_owned(),
                String::new(),
                cell.to_owned(),
                String::new(),
            ];
            assert_eq!(read(&report(&cells)), read(&original(&cells)), "{cell:?}");
        }
    }

    #[test]
    fn only_a_completed_import_with_rows_has_a_report() {
        use crate::domain::{AccountId, ConflictPolicy, Counters, Filename, ImportId, ImportType};
        let import = |status| Import {
            key: 1,
            account_id: AccountId::parse("acme").unwrap(),
            import_id: ImportId::parse("i1").unwrap(),
            kind: ImportType::Users,
            filename: Filename::parse("users.csv").unwrap(),
            created_by: String::new(),
            validate_only: false,
            on_conflict: ConflictPolicy::Error,
            retry_of: None,
            status,
            counters: Counters::default(),
            format: None,
            error_message: "the file is not valid text".to_owned(),
            create_time: std::time::SystemTime::UNIX_EPOCH,
            update_time: std::time::SystemTime::UNIX_EPOCH,
            complete_time: None,
            revert_time: None,
            details_removed_time: None,
            invitations: Default::default(),
            users_invited: 0,
            resumable: false,
            committed_bytes: 0,
            resume_deadline: None,
            revert_note: String::new(),
        };
        for status in ImportStatus::ALL {
            let why = unavailable(&import(status));
            assert_eq!(
                why.is_none(),
                matches!(
                    status,
                    ImportStatus::CompletedSuccess | ImportStatus::CompletedPartial
                ),
                "{status:?}"
            );
        }
        let parsing = unavailable(&import(ImportStatus::ErrorParsing)).unwrap();
        assert!(parsing.contains("Error - Parsing"), "{parsing}");
        assert!(parsing.contains("the file is not valid text"), "{parsing}");
    }
}
