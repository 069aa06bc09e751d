//! A safe face on SQLite's C API for the hot path (`capi`): the connection's raw handle taken
//! from sqlx for a moment (`on_handle`), prepared statements that finalize themselves and only
//! bind text that outlives them (`Statement`), the rows they step through (`Row`), and SQLite's
//! failures with their extended codes (`SqliteFailure`).
//!
//! Every `unsafe` block of the hot path is here, each with the reason it is sound; `capi`
//! writes the statements and what to do with their rows.

use std::ffi::{CStr, c_int};
use std::marker::PhantomData;
use std::ptr::NonNull;

use libsqlite3_sys as ffi;
use sqlx::SqliteConnection;
use sqlx::sqlite::LockedSqliteHandle;

use crate::store::StoreError;

/// An error of SQLite's C API, with its (extended) result code, which the store classifies.
#[derive(Debug, thiserror::Error)]
#[error("sqlite error {code}: {message}")]
pub(super) struct SqliteFailure {
    /// SQLite's result code, extended when the failure had one.
    pub code: c_int,
    /// SQLite's message (`sqlite3_errmsg`), copied when the failure happened.
    pub message: String,
}

/// Runs `work` on the connection's raw handle. A few milliseconds of SQLite work per thousand
/// rows: tell the runtime, so that other tasks move to another worker meanwhile. No `.await`
/// between taking the handle and finishing with it, so the handle cannot be released early by
/// a cancellation.
pub(super) async fn on_handle<T>(
    conn: &mut SqliteConnection,
    work: impl FnOnce(&mut LockedSqliteHandle<'_>) -> Result<T, SqliteFailure>,
) -> Result<T, StoreError> {
    let mut handle = conn.lock_handle().await?;
    let run = || work(&mut handle);
    match tokio::runtime::Handle::current().runtime_flavor() {
        tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(run),
        tokio::runtime::RuntimeFlavor::CurrentThread => run(),
        // A flavour this code does not know: do not block the runtime's thread blindly.
        other => {
            tracing::debug!(?other, "unknown runtime flavour; running the C API inline");
            run()
        }
    }
    .map_err(|e| StoreError::from_sqlite_code(e.code, e))
}

/// A prepared statement, finalized on drop, whose bound text must live for `'data`.
///
/// Prepared per call of the functions above and finalized when dropped at its end, so that
/// nothing of it outlives the locked handle it was prepared on.
pub(super) struct Statement<'data> {
    db: NonNull<ffi::sqlite3>,
    stmt: NonNull<ffi::sqlite3_stmt>,
    /// Text bound with `SQLITE_STATIC` is read by SQLite until the statement is finalized.
    bound: PhantomData<&'data str>,
}

impl<'data> Statement<'data> {
    /// # Safety
    ///
    /// `db` is a valid connection, used by nobody else while the statement lives.
    pub(super) unsafe fn prepare(
        db: NonNull<ffi::sqlite3>,
        sql: &str,
    ) -> Result<Self, SqliteFailure> {
        let len = c_int::try_from(sql.len()).map_err(|_| SqliteFailure {
            code: ffi::SQLITE_TOOBIG,
            message: "statement too long".to_owned(),
        })?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `db` is valid; the pointer and length describe `sql`, which SQLite reads
        // only during this call (no NUL terminator is needed when the length is given).
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                db.as_ptr(),
                sql.as_ptr().cast(),
                len,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        let statement = NonNull::new(stmt).map(|stmt| Self {
            db,
            stmt,
            bound: PhantomData,
        });
        match (rc, statement) {
            (ffi::SQLITE_OK, Some(statement)) => statement.check_parameters(),
            _ => Err(failure(db, rc)),
        }
    }

    /// Values are bound by position. The shared statements name their parameters `$1`,
    /// `$2`..., which SQLite numbers by first appearance: each must appear in its own place,
    /// or a value would go to another parameter. Checked once per statement prepared.
    pub(super) fn check_parameters(self) -> Result<Self, SqliteFailure> {
        // SAFETY: the statement is valid.
        let count = unsafe { ffi::sqlite3_bind_parameter_count(self.stmt.as_ptr()) };
        for index in 1..=count {
            // SAFETY: as above; SQLite returns a NUL-terminated name it owns, or NULL.
            let name = unsafe { ffi::sqlite3_bind_parameter_name(self.stmt.as_ptr(), index) };
            if name.is_null() {
                continue;
            }
            // SAFETY: a non-NULL name is NUL-terminated and lives with the statement.
            let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
            let number = name.get(1..).and_then(|n| n.parse::<c_int>().ok());
            if number != Some(index) {
                return Err(SqliteFailure {
                    code: ffi::SQLITE_MISUSE,
                    message: format!("parameter {name} is number {index} of its statement"),
                });
            }
        }
        Ok(self)
    }

    /// Binds `value` without copying it: `'data` outlives the statement.
    pub(super) fn text(&mut self, index: c_int, value: &'data str) -> Result<(), SqliteFailure> {
        let len = c_int::try_from(value.len()).map_err(|_| SqliteFailure {
            code: ffi::SQLITE_TOOBIG,
            message: "value too long".to_owned(),
        })?;
        // SAFETY: the statement is valid; the pointer and length describe `value`, which lives
        // as long as the statement.
        let rc = unsafe {
            ffi::sqlite3_bind_text(
                self.stmt.as_ptr(),
                index,
                value.as_ptr().cast(),
                len,
                ffi::SQLITE_STATIC(),
            )
        };
        self.check(rc)
    }

    /// Binds `value`, or NULL for `None` (which, in the update statements, keeps the stored
    /// value).
    pub(super) fn optional_text(
        &mut self,
        index: c_int,
        value: Option<&'data str>,
    ) -> Result<(), SqliteFailure> {
        match value {
            Some(value) => self.text(index, value),
            None => self.null(index),
        }
    }

    /// Steps through the statement's rows, handing each to `each`, then resets it.
    pub(super) fn rows(&mut self, mut each: impl FnMut(&Row<'_>)) -> Result<(), SqliteFailure> {
        loop {
            // SAFETY: the statement and its connection are valid and ours alone.
            let rc = unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) };
            match rc {
                ffi::SQLITE_ROW => each(&Row {
                    stmt: self.stmt,
                    row: PhantomData,
                }),
                ffi::SQLITE_DONE => break,
                _ => {
                    let failure = failure(self.db, rc);
                    // SAFETY: as above.
                    unsafe { ffi::sqlite3_reset(self.stmt.as_ptr()) };
                    return Err(failure);
                }
            }
        }
        // SAFETY: as above.
        let reset = unsafe { ffi::sqlite3_reset(self.stmt.as_ptr()) };
        self.check(reset)
    }

    /// Binds an integer.
    pub(super) fn int(&mut self, index: c_int, value: i64) -> Result<(), SqliteFailure> {
        // SAFETY: the statement is valid.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.stmt.as_ptr(), index, value) };
        self.check(rc)
    }

    /// Binds NULL.
    pub(super) fn null(&mut self, index: c_int) -> Result<(), SqliteFailure> {
        // SAFETY: the statement is valid.
        let rc = unsafe { ffi::sqlite3_bind_null(self.stmt.as_ptr(), index) };
        self.check(rc)
    }

    /// Runs the statement once; `true` when it changed a row (the insert was not refused).
    pub(super) fn execute(&mut self) -> Result<bool, SqliteFailure> {
        // SAFETY: the statement and its connection are valid and ours alone.
        unsafe {
            let rc = ffi::sqlite3_step(self.stmt.as_ptr());
            let changed = ffi::sqlite3_changes(self.db.as_ptr()) > 0;
            let reset = ffi::sqlite3_reset(self.stmt.as_ptr());
            if rc != ffi::SQLITE_DONE {
                return Err(failure(self.db, rc));
            }
            self.check(reset)?;
            Ok(changed)
        }
    }

    /// `SQLITE_OK`, or the failure with the connection's message and extended code.
    pub(super) fn check(&self, rc: c_int) -> Result<(), SqliteFailure> {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(failure(self.db, rc))
        }
    }
}

/// The current row of a statement being stepped: valid until the next step.
///
/// Its lifetime ties it to the `rows` call that hands it out, so that no column is read after the
/// statement moved on.
pub(super) struct Row<'s> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    row: PhantomData<&'s ()>,
}

impl Row<'_> {
    /// A text column, copied out; `None` for NULL.
    pub(super) fn text(&self, column: c_int) -> Option<String> {
        // SAFETY: the statement is on a row; SQLite returns a pointer and length valid until the
        // next step, and the bytes are copied before that.
        unsafe {
            let ptr = ffi::sqlite3_column_text(self.stmt.as_ptr(), column);
            if ptr.is_null() {
                return None;
            }
            let len = ffi::sqlite3_column_bytes(self.stmt.as_ptr(), column) as usize;
            let bytes = std::slice::from_raw_parts(ptr, len);
            Some(String::from_utf8_lossy(bytes).into_owned())
        }
    }

    /// An integer column; 0 for NULL, as SQLite converts it.
    pub(super) fn int(&self, column: c_int) -> i64 {
        // SAFETY: the statement is on a row.
        unsafe { ffi::sqlite3_column_int64(self.stmt.as_ptr(), column) }
    }

    /// An integer column; `None` for NULL.
    pub(super) fn optional_int(&self, column: c_int) -> Option<i64> {
        // SAFETY: the statement is on a row.
        let kind = unsafe { ffi::sqlite3_column_type(self.stmt.as_ptr(), column) };
        (kind != ffi::SQLITE_NULL).then(|| self.int(column))
    }
}

impl Drop for Statement<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement is valid and finalized exactly once.
        unsafe {
            ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}

/// The failure of the last call on `db`, with SQLite's extended code when it has one.
pub(super) fn failure(db: NonNull<ffi::sqlite3>, rc: c_int) -> SqliteFailure {
    // SAFETY: `db` is valid; SQLite returns a NUL-terminated message it owns, copied here.
    let (code, message) = unsafe {
        let extended = ffi::sqlite3_extended_errcode(db.as_ptr());
        let message = CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr()));
        (
            if extended & 0xff == rc & 0xff {
                extended
            } else {
                rc
            },
            message.to_string_lossy().into_owned(),
        )
    };
    SqliteFailure { code, message }
}
