//! The SQLite hot path: a batch of users inserted through SQLite's C API, on the handle of the
//! sqlx connection that holds the write transaction.
//!
//! Why not sqlx here: sqlx binds every value through a fresh `Arc<String>` and hands each
//! statement to the connection's worker thread; for millions of rows, those allocations and
//! thread hand-offs were most of the CPU time (perf: malloc/free about 15%, memmove 7%, context
//! switches 7%). Here one prepared statement is stepped once per row with every text bound in
//! place (`SQLITE_STATIC`: no copy), the way `sqlite3 .import` does it, and `sqlite3_changes`
//! says at once whether `ON CONFLICT DO NOTHING` refused the row.
//!
//! Soundness rests on two borrows the types carry: the `LockedSqliteHandle` keeps sqlx's
//! worker off the connection while it is used here, and a `Statement<'data>` only accepts
//! text that lives for `'data`, which outlives the statement, so SQLite never reads a value
//! bound without a copy after it was freed.

use std::ffi::{CStr, c_int};
use std::marker::PhantomData;
use std::ptr::NonNull;

use libsqlite3_sys as ffi;
use sqlx::sqlite::LockedSqliteHandle;

use crate::domain::UserBatch;

const INSERT_USER: &CStr = c"INSERT INTO users (account_id, email, first_name, last_name, role, \
    job_title, external_id, import_key, source_row, create_time) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING";

/// What inserting a batch did.
pub(super) struct Inserted {
    /// Indexes (in the batch) of the users the unique indexes refused.
    pub refused: Vec<usize>,
    /// The rowids given to the users inserted: consecutive, as this connection is the only
    /// writer while the transaction lasts.
    pub rowids: Option<(i64, i64)>,
}

/// An error of SQLite's C API, with its (extended) result code, which the store classifies.
#[derive(Debug, thiserror::Error)]
#[error("sqlite error {code}: {message}")]
pub(super) struct SqliteFailure {
    pub code: c_int,
    message: String,
}

/// Inserts every user of `batch`. The caller holds the write transaction on this connection.
pub(super) fn insert_users(
    handle: &mut LockedSqliteHandle<'_>,
    account_id: &str,
    import_key: i64,
    now: i64,
    batch: &UserBatch,
) -> Result<Inserted, SqliteFailure> {
    let db = handle.as_raw_handle();
    // SAFETY: the locked handle gives us the connection alone for as long as it is borrowed,
    // which covers every use of `db` and of the statement in this function.
    let mut statement = unsafe { Statement::prepare(db, INSERT_USER)? };
    let mut refused = Vec::new();
    let mut rowids: Option<(i64, i64)> = None;
    for (index, user) in batch.users().enumerate() {
        statement.text(1, account_id)?;
        statement.text(2, user.email)?;
        statement.text(3, user.first_name)?;
        statement.text(4, user.last_name)?;
        statement.text(5, user.role.as_str())?;
        statement.text(6, user.job_title)?;
        match user.external_id {
            Some(id) => statement.text(7, id)?,
            None => statement.null(7)?,
        }
        statement.int(8, import_key)?;
        statement.int(9, user.row_number as i64)?;
        statement.int(10, now)?;
        if statement.execute()? {
            // SAFETY: `db` is valid and ours alone (see above).
            let rowid = unsafe { ffi::sqlite3_last_insert_rowid(db.as_ptr()) };
            rowids = Some(rowids.map_or((rowid, rowid), |(first, _)| (first, rowid)));
        } else {
            refused.push(index);
        }
    }
    Ok(Inserted { refused, rowids })
}

/// A prepared statement, finalized on drop, whose bound text must live for `'data`.
struct Statement<'data> {
    db: NonNull<ffi::sqlite3>,
    stmt: NonNull<ffi::sqlite3_stmt>,
    /// Text bound with `SQLITE_STATIC` is read by SQLite until the statement is finalized.
    bound: PhantomData<&'data str>,
}

impl<'data> Statement<'data> {
    /// # Safety
    ///
    /// `db` is a valid connection, used by nobody else while the statement lives.
    unsafe fn prepare(db: NonNull<ffi::sqlite3>, sql: &CStr) -> Result<Self, SqliteFailure> {
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `db` is valid; `sql` is NUL-terminated, and -1 tells SQLite to read up to it.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                db.as_ptr(),
                sql.as_ptr(),
                -1,
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
            (ffi::SQLITE_OK, Some(statement)) => Ok(statement),
            _ => Err(failure(db, rc)),
        }
    }

    /// Binds `value` without copying it: `'data` outlives the statement.
    fn text(&mut self, index: c_int, value: &'data str) -> Result<(), SqliteFailure> {
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

    fn int(&mut self, index: c_int, value: i64) -> Result<(), SqliteFailure> {
        // SAFETY: the statement is valid.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.stmt.as_ptr(), index, value) };
        self.check(rc)
    }

    fn null(&mut self, index: c_int) -> Result<(), SqliteFailure> {
        // SAFETY: the statement is valid.
        let rc = unsafe { ffi::sqlite3_bind_null(self.stmt.as_ptr(), index) };
        self.check(rc)
    }

    /// Runs the statement once; `true` when it changed a row (the insert was not refused).
    fn execute(&mut self) -> Result<bool, SqliteFailure> {
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

    fn check(&self, rc: c_int) -> Result<(), SqliteFailure> {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(failure(self.db, rc))
        }
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
fn failure(db: NonNull<ffi::sqlite3>, rc: c_int) -> SqliteFailure {
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
