//! The fix-up file of an import (`GetImportErrorReport`): its failed rows, with the reason
//! beside each, as a CSV a person fixes in a spreadsheet and uploads again as it is.
//!
//! - UTF-8 with a byte order mark, so that Excel opens it as UTF-8;
//! - the template's columns, with the cells as the file had them, then `row_number` and
//!   `errors` (each error's column, code and message, joined by `; `), which an upload ignores
//!   as unknown columns;
//! - a cell that a spreadsheet would run as a formula gets a leading `'`, which the import
//!   drops again (`text::spreadsheet_safe`, `text::without_formula_guard`): a round trip keeps
//!   every value exactly.
//!
//! It is written page by page as it is read, so it takes little memory however many rows
//! failed.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::error::ImportError;
use crate::domain::text::spreadsheet_safe;
use crate::domain::{Column, ImportKey};
use crate::store::{Store, StoredRowError};

/// Failed rows read, and written out, at a time.
const PAGE_ROWS: u32 = 500;

/// Writes the report of `key` into `out`, a chunk per page; stops early when the receiver is
/// gone.
pub(super) async fn write(
    store: Arc<dyn Store>,
    key: ImportKey,
    out: mpsc::Sender<Result<Bytes, ImportError>>,
) {
    if let Err(e) = write_pages(store.as_ref(), key, &out).await {
        let _ = out.send(Err(e)).await;
    }
}

async fn write_pages(
    store: &dyn Store,
    key: ImportKey,
    out: &mpsc::Sender<Result<Bytes, ImportError>>,
) -> Result<(), ImportError> {
    let mut header: Vec<&str> = Column::ALL.iter().map(|c| c.name()).collect();
    header.extend(["row_number", "errors"]);
    let mut page = b"\xEF\xBB\xBF".to_vec();
    line(&mut page, header.iter().map(|h| h.to_string()))?;
    // Errors come in file order too: read them alongside, a page at a time.
    let mut errors: Vec<StoredRowError> = Vec::new();
    let mut errors_after = None;
    let mut errors_done = false;
    let mut rows_after = None;
    loop {
        let rows = store.failed_rows(key, rows_after, PAGE_ROWS).await?;
        let Some(last) = rows.last() else {
            break;
        };
        rows_after = Some(last.row_number);
        let last_row = last.row_number;
        // Every error up to the page's last row.
        while !errors_done && errors.last().is_none_or(|e| e.error.row_number <= last_row) {
            let more = store.list_row_errors(key, errors_after, 1000).await?;
            match more.last() {
                Some(e) => errors_after = Some(e.seq),
                None => errors_done = true,
            }
            errors.extend(more);
        }
        for row in rows {
            let reasons: Vec<String> = errors
                .iter()
                .filter(|e| e.error.row_number == row.row_number)
                .map(|e| {
                    let e = &e.error;
                    let column = e.column.map_or("row", Column::name);
                    format!("{column} {}: {}", e.code.as_str(), e.message)
                })
                .collect();
            let mut cells: Vec<String> = row
                .cells
                .iter()
                .map(|c| spreadsheet_safe(c).into_owned())
                .collect();
            cells.push(row.row_number.to_string());
            cells.push(spreadsheet_safe(&reasons.join("; ")).into_owned());
            line(&mut page, cells.into_iter())?;
        }
        errors.retain(|e| e.error.row_number > last_row);
        if out
            .send(Ok(Bytes::from(std::mem::take(&mut page))))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
    if !page.is_empty() {
        let _ = out.send(Ok(Bytes::from(page))).await;
    }
    Ok(())
}

/// One CSV line, quoted where needed, onto `page`.
fn line(page: &mut Vec<u8>, cells: impl Iterator<Item = String>) -> Result<(), ImportError> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(page);
    writer
        .write_record(cells)
        .and_then(|()| writer.flush().map_err(csv::Error::from))
        .map_err(|e| ImportError::Internal(format!("writing the error report: {e}")))
}
