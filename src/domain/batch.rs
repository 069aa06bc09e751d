//! A batch of validated rows on its way to the store.
//!
//! The batch owns one text buffer and spans into it instead of six `String`s per user: a
//! 200 MiB file is millions of rows, and per-field allocations were most of the hot path.
//!
//! A batch is a stretch of the file in file order: its valid users, the errors of its failed
//! rows, and what the store needs of those failed rows (their valid values, to report their
//! conflicts too; their cells, for the error report). The pipeline fills one, cuts it when it
//! has the store's number of rows or fills its memory grant (`heap_bytes`), and hands it to
//! the writer; the store reads it through the borrowed views `UserRef` and `ProbeRef`.

use std::ops::Range;

use super::row_error::RowError;
use super::user::{FailedRow, NewUser, Role};

/// Text bytes a typical row needs (a generated Users row is about 80). It sizes the text
/// buffer up front and the memory a batch is granted (`estimated_bytes`): a batch of longer
/// rows fills its grant before it has its rows, and is simply cut early.
const TEXT_BYTES_PER_ROW: usize = 96;

/// A valid row, its text held by the batch as byte ranges into `UserBatch::text`, so that a
/// user costs no allocation. Read through `UserRef`.
#[derive(Debug, Clone)]
pub struct BatchUser {
    /// The spreadsheet row the user came from: kept in the users table so that a duplicate
    /// later in the file can name the row of the first.
    pub row_number: u64,
    /// The key (normalised address).
    email: Range<u32>,
    /// Set only when the file's spelling differs from the normalised address.
    email_as_written: Option<Range<u32>>,
    /// Trimmed; an empty range for an empty cell, as for the other text cells.
    first_name: Range<u32>,
    /// Trimmed.
    last_name: Range<u32>,
    /// `member` when the cell was empty: see `role_given`.
    pub role: Role,
    /// The role cell was not empty: an UPDATE keeps the stored role otherwise.
    role_given: bool,
    /// Trimmed.
    job_title: Range<u32>,
    /// `None` when the cell was empty.
    external_id: Option<Range<u32>>,
}

/// The valid values of a row that failed validation, still checked against their holders, so
/// that the row is told of a duplicate or an existing user beside its validation errors.
#[derive(Debug, Clone)]
struct Probe {
    /// The row's spreadsheet number.
    row_number: u64,
    /// The key and the address as written, when the address is valid.
    email: Option<(Range<u32>, Range<u32>)>,
    external_id: Option<Range<u32>>,
}

/// A borrowed view of the values of a failed row: see `FailedRow`. The store looks up who
/// holds them, and gives the row a DUPLICATE_IN_FILE or ALREADY_EXISTS error for each one
/// held by an earlier row or another user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeRef<'a> {
    /// The row's spreadsheet number: errors found for these values are the row's.
    pub row_number: u64,
    /// Normalised, and as the file has it.
    pub email: Option<(&'a str, &'a str)>,
    /// The row's external id, when present and valid.
    pub external_id: Option<&'a str>,
}

/// A batch of rows on its way to the store, in file order. Every string lives in one text
/// buffer (see the module's doc); the views borrow from it.
#[derive(Debug, Default)]
pub struct UserBatch {
    /// Every string of the batch, back to back; the ranges index it.
    text: String,
    /// The valid rows, in file order: the indexes `user` takes and the store reports refused
    /// users by.
    users: Vec<BatchUser>,
    /// Failed rows whose address or external id is valid, in file order.
    probes: Vec<Probe>,
    /// The cells of failed rows, for the error report, in file order.
    failed_cells: Vec<(u64, [Range<u32>; 6])>,
    /// Validation errors of this batch's rows, in file order. When it records the batch, the
    /// store merges them, row by row, with the conflict errors it found.
    pub errors: Vec<RowError>,
    /// Data rows in this batch, valid or not: what the batch is cut by. (The upload's
    /// counters are kept by its tally, not here.)
    pub rows: u64,
    /// Heap bytes of `errors`, kept as they are pushed: the pipeline checks the batch's size
    /// after every slice of input.
    error_bytes: usize,
}

/// A borrowed view of one user of a batch, as the stores write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRef<'a> {
    /// The spreadsheet row, stored with the user (`source_row`) so that a duplicate later in
    /// the file can name it.
    pub row_number: u64,
    /// Normalised (lower-case).
    pub email: &'a str,
    /// As the file has it, for row error values.
    pub email_as_written: &'a str,
    /// Trimmed; empty when the cell was.
    pub first_name: &'a str,
    /// Trimmed; empty when the cell was.
    pub last_name: &'a str,
    /// `member` when the cell was empty: see `role_given`.
    pub role: Role,
    /// The role cell was not empty: an UPDATE keeps the stored role otherwise, and the error
    /// report shows an empty cell.
    pub role_given: bool,
    /// Trimmed; empty when the cell was.
    pub job_title: &'a str,
    /// `None` when the cell was empty: uniqueness applies only to present ids.
    pub external_id: Option<&'a str>,
}

impl UserBatch {
    /// An empty batch with room for `rows` users of typical length (`TEXT_BYTES_PER_ROW`).
    pub fn with_capacity(rows: usize) -> Self {
        Self {
            text: String::with_capacity(rows * TEXT_BYTES_PER_ROW),
            users: Vec::with_capacity(rows),
            ..Self::default()
        }
    }

    /// Makes room for `rows` rows in all, so that filling the batch does not reallocate.
    pub fn reserve_rows(&mut self, rows: usize) {
        let more = rows.saturating_sub(self.users.len());
        self.text.reserve(more * TEXT_BYTES_PER_ROW);
        self.users.reserve(more);
    }

    /// Adds a valid row's user from spreadsheet row `row_number`, copying its text into the
    /// batch, since the row borrows the reader's buffer. The address as written is copied only
    /// when it differs from the key.
    pub fn push_user(&mut self, row_number: u64, user: &NewUser<'_>) {
        let email = self.push_text(user.email.as_str());
        let email_as_written = (user.email.as_written() != user.email.as_str())
            .then(|| self.push_text(user.email.as_written()));
        let first_name = self.push_text(user.first_name);
        let last_name = self.push_text(user.last_name);
        let job_title = self.push_text(user.job_title);
        let external_id = user.external_id.map(|id| self.push_text(id));
        self.users.push(BatchUser {
            row_number,
            email,
            email_as_written,
            first_name,
            last_name,
            role: user.role,
            role_given: user.role_given,
            job_title,
            external_id,
        });
        self.rows += 1;
    }

    /// Adds a failed row: its errors; its valid address and external id, when it has either,
    /// for the store to probe; its cells, when it has them, for the error report. The row is
    /// numbered by its first error, so `row.errors` must not be empty. It counts in `rows`,
    /// not in `len`.
    pub fn push_failed_row(&mut self, row: FailedRow<'_>) {
        if let Some(first) = row.errors.first()
            && (row.email.is_some() || row.external_id.is_some())
        {
            let email = row.email.as_ref().map(|e| {
                let normalised = self.push_text(e.as_str());
                let written = self.push_text(e.as_written());
                (normalised, written)
            });
            let external_id = row.external_id.map(|id| self.push_text(id));
            self.probes.push(Probe {
                row_number: first.row_number,
                email,
                external_id,
            });
        }
        if let (Some(cells), Some(first)) = (row.cells, row.errors.first()) {
            let row_number = first.row_number;
            let cells = cells.map(|cell| self.push_text(cell));
            self.failed_cells.push((row_number, cells));
        }
        for error in row.errors {
            self.error_bytes +=
                std::mem::size_of::<RowError>() + error.message.capacity() + error.value.capacity();
            self.errors.push(error);
        }
        self.rows += 1;
    }

    /// Appends `value` to the text buffer and returns its range. The `u32` offsets keep the
    /// per-row records small: a batch is cut when it fills its memory grant, a few MiB with the
    /// stores' batch sizes, far below 4 GiB.
    fn push_text(&mut self, value: &str) -> Range<u32> {
        let start = self.text.len() as u32;
        self.text.push_str(value);
        start..self.text.len() as u32
    }

    /// Valid rows, that is users; `rows` counts the failed ones too.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Heap memory used, roughly: what the batch costs while it waits to be written. The
    /// pipeline compares it with the batch's grant after each slice of input, since long
    /// values or many errors per row fill a batch before it has its rows.
    pub fn heap_bytes(&self) -> usize {
        self.text.len()
            + self.users.len() * std::mem::size_of::<BatchUser>()
            + self.probes.len() * std::mem::size_of::<Probe>()
            + self.failed_cells.len() * std::mem::size_of::<(u64, [Range<u32>; 6])>()
            + self.error_bytes
    }

    /// What a batch of `rows` typical rows holds, to reserve memory before filling it.
    pub fn estimated_bytes(rows: usize) -> usize {
        rows * (TEXT_BYTES_PER_ROW + std::mem::size_of::<BatchUser>())
    }

    /// No row at all, valid or not. A batch with no user may still hold failed rows, whose
    /// errors must be stored.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The cells of the failed rows that have them, in file order: the row number and its six
    /// cells in template column order.
    pub fn failed_cells(&self) -> impl Iterator<Item = (u64, [&str; 6])> + '_ {
        let text = |r: &Range<u32>| &self.text[r.start as usize..r.end as usize];
        self.failed_cells
            .iter()
            .map(move |(row, cells)| (*row, cells.each_ref().map(text)))
    }

    /// The valid values of the failed rows, in file order; only rows with a valid address or
    /// external id have one.
    pub fn probes(&self) -> impl ExactSizeIterator<Item = ProbeRef<'_>> + '_ {
        let text = |r: &Range<u32>| &self.text[r.start as usize..r.end as usize];
        self.probes.iter().map(move |p| ProbeRef {
            row_number: p.row_number,
            email: p.email.as_ref().map(|(n, w)| (text(n), text(w))),
            external_id: p.external_id.as_ref().map(text),
        })
    }

    /// The valid users, in file order; their positions are the indexes `user` takes.
    pub fn users(&self) -> impl ExactSizeIterator<Item = UserRef<'_>> + '_ {
        self.users.iter().map(|u| self.view(u))
    }

    /// The valid user at `index`, in push order. Panics out of range: the stores only use
    /// indexes below `len`.
    pub fn user(&self, index: usize) -> UserRef<'_> {
        self.view(&self.users[index])
    }

    /// Resolves a user's ranges. The address as written falls back to the key, which is how the
    /// file spelled it when no copy was kept.
    fn view<'a>(&'a self, u: &BatchUser) -> UserRef<'a> {
        let text = |r: &Range<u32>| &self.text[r.start as usize..r.end as usize];
        UserRef {
            row_number: u.row_number,
            email: text(&u.email),
            email_as_written: text(u.email_as_written.as_ref().unwrap_or(&u.email)),
            first_name: text(&u.first_name),
            last_name: text(&u.last_name),
            role: u.role,
            role_given: u.role_given,
            job_title: text(&u.job_title),
            external_id: u.external_id.as_ref().map(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Column, Email};

    #[test]
    fn users_read_back_as_pushed() {
        let mut batch = UserBatch::with_capacity(2);
        let user = NewUser {
            email: Email::parse("Zoë@Example.com").unwrap(),
            first_name: "Zoë",
            last_name: "O'Brien",
            role: Role::Admin,
            role_given: false,
            job_title: "",
            external_id: Some("EMP-1"),
        };
        batch.push_user(2, &user);
        let before = batch.heap_bytes();
        assert!(before > 0);
        batch.push_failed_row(FailedRow::with_errors(vec![RowError::required(
            3,
            Column::Email,
        )]));
        assert_eq!(batch.probes().len(), 0);
        batch.push_failed_row(FailedRow {
            errors: vec![RowError::invalid_role(4, "x")],
            email: Some(Email::parse("Bo@x.io").unwrap()),
            external_id: Some("E9"),
            cells: None,
        });
        let probe = batch.probes().next().unwrap();
        assert_eq!(probe.row_number, 4);
        assert_eq!(probe.email, Some(("bo@x.io", "Bo@x.io")));
        assert_eq!(probe.external_id, Some("E9"));
        assert!(batch.heap_bytes() > before + std::mem::size_of::<RowError>());
        assert_eq!(batch.len(), 1);
        assert_eq!(batch.rows, 3);
        assert_eq!(batch.errors.len(), 2);
        let u = batch.user(0);
        assert_eq!(u.email, "zoë@example.com");
        assert_eq!(u.email_as_written, "Zoë@Example.com");
        assert_eq!(u.first_name, "Zoë");
        assert_eq!(u.last_name, "O'Brien");
        assert_eq!(u.external_id, Some("EMP-1"));
        assert_eq!(u.row_number, 2);
    }
}
