//! A batch of validated rows on its way to the store.
//!
//! The batch owns one text buffer and spans into it instead of six `String`s per user: a
//! 200 MiB file is millions of rows, and per-field allocations were most of the hot path.

use std::ops::Range;

use super::row_error::RowError;
use super::user::{FailedRow, NewUser, Role};

/// Text bytes a typical row needs (a generated Users row is about 80).
const TEXT_BYTES_PER_ROW: usize = 96;

/// A valid row, its text held by the batch.
#[derive(Debug, Clone)]
pub struct BatchUser {
    /// The spreadsheet row the user came from: kept in the users table so that a duplicate
    /// later in the file can name the row of the first.
    pub row_number: u64,
    email: Range<u32>,
    /// Set only when the file's spelling differs from the normalised address.
    email_as_written: Option<Range<u32>>,
    first_name: Range<u32>,
    last_name: Range<u32>,
    pub role: Role,
    role_given: bool,
    job_title: Range<u32>,
    external_id: Option<Range<u32>>,
}

/// The valid values of a row that failed validation, still checked against their holders.
#[derive(Debug, Clone)]
struct Probe {
    row_number: u64,
    email: Option<(Range<u32>, Range<u32>)>,
    external_id: Option<Range<u32>>,
}

/// A borrowed view of the values of a failed row: see `FailedRow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeRef<'a> {
    pub row_number: u64,
    /// Normalised, and as the file has it.
    pub email: Option<(&'a str, &'a str)>,
    pub external_id: Option<&'a str>,
}

#[derive(Debug, Default)]
pub struct UserBatch {
    text: String,
    users: Vec<BatchUser>,
    /// Failed rows whose address or external id is valid, in file order.
    probes: Vec<Probe>,
    /// The cells of failed rows, for the error report, in file order.
    failed_cells: Vec<(u64, [Range<u32>; 6])>,
    /// Validation errors of this batch's rows, in file order.
    pub errors: Vec<RowError>,
    /// Data rows in this batch, valid or not: what the batch is cut by. (The upload's
    /// counters are kept by its tally, not here.)
    pub rows: u64,
    /// Heap bytes of `errors`, kept as they are pushed: the pipeline checks the batch's size
    /// after every slice of input.
    error_bytes: usize,
}

/// A borrowed view of one user of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserRef<'a> {
    pub row_number: u64,
    /// Normalised (lower-case).
    pub email: &'a str,
    /// As the file has it, for row error values.
    pub email_as_written: &'a str,
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub role: Role,
    /// The role cell was not empty.
    pub role_given: bool,
    pub job_title: &'a str,
    pub external_id: Option<&'a str>,
}

impl UserBatch {
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

    fn push_text(&mut self, value: &str) -> Range<u32> {
        let start = self.text.len() as u32;
        self.text.push_str(value);
        start..self.text.len() as u32
    }

    /// Valid rows, that is users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Heap memory used, roughly: what the batch costs while it waits to be written.
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

    /// No row at all, valid or not.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The cells of the failed rows that have them, in file order.
    pub fn failed_cells(&self) -> impl Iterator<Item = (u64, [&str; 6])> + '_ {
        let text = |r: &Range<u32>| &self.text[r.start as usize..r.end as usize];
        self.failed_cells
            .iter()
            .map(move |(row, cells)| (*row, cells.each_ref().map(text)))
    }

    /// The valid values of the failed rows, in file order.
    pub fn probes(&self) -> impl ExactSizeIterator<Item = ProbeRef<'_>> + '_ {
        let text = |r: &Range<u32>| &self.text[r.start as usize..r.end as usize];
        self.probes.iter().map(move |p| ProbeRef {
            row_number: p.row_number,
            email: p.email.as_ref().map(|(n, w)| (text(n), text(w))),
            external_id: p.external_id.as_ref().map(text),
        })
    }

    pub fn users(&self) -> impl ExactSizeIterator<Item = UserRef<'_>> + '_ {
        self.users.iter().map(|u| self.view(u))
    }

    pub fn user(&self, index: usize) -> UserRef<'_> {
        self.view(&self.users[index])
    }

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
