//! The SQLite hot path: a batch's users inserted, updated and looked up through SQLite's C
//! API, on the handle of the sqlx connection that holds the write transaction.
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
use crate::store::policy::{Claim, Existing, FileKey, Update};

const INSERT_USER: &CStr = c"INSERT INTO users (account_id, email, first_name, last_name, role, \
    job_title, external_id, import_key, source_row, create_time) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT DO NOTHING";

/// Keeps what an update replaces, for an import that fails or is cancelled; only when the row
/// changes something (an empty cell, bound as NULL, keeps the stored value).
const SAVE_USER: &CStr = c"INSERT INTO import_user_updates (import_key, account_id, email, \
    first_name, last_name, role, job_title, external_id, update_time, updated_by) \
    SELECT ?1, account_id, email, first_name, last_name, role, job_title, external_id, \
    update_time, updated_by FROM users WHERE account_id = ?2 AND email = ?3 \
    AND (first_name IS NOT coalesce(?4, first_name) OR last_name IS NOT coalesce(?5, last_name) \
         OR role IS NOT coalesce(?6, role) OR job_title IS NOT coalesce(?7, job_title) \
         OR external_id IS NOT coalesce(?8, external_id))";

/// Run once `SAVE_USER` kept the old values, that is when the row changes something.
const UPDATE_USER: &CStr = c"UPDATE users SET first_name = coalesce(?3, first_name), \
    last_name = coalesce(?4, last_name), role = coalesce(?5, role), \
    job_title = coalesce(?6, job_title), external_id = coalesce(?7, external_id), \
    update_time = ?8, updated_by = ?9 WHERE account_id = ?1 AND email = ?2";

const INSERT_FILE_KEY: &CStr = c"INSERT INTO import_file_keys (import_key, email, external_id, \
    source_row, released_external_id) VALUES (?1, ?2, ?3, ?4, ?5)";

/// The columns of `policy::EXISTING_COLUMNS`, by email and by external id.
const USER_BY_EMAIL: &CStr = c"SELECT u.email, u.external_id, u.import_key, u.source_row, \
    CASE WHEN i.status = 'PROCESSING' THEN i.import_id END, u.updated_by, \
    (SELECT w.import_id FROM imports w \
     WHERE w.import_key = u.updated_by AND w.status = 'PROCESSING'), \
    u.first_name, u.last_name, u.role, u.job_title \
    FROM users u JOIN imports i ON i.import_key = u.import_key \
    WHERE u.account_id = ?1 AND u.email = ?2";

const USER_BY_EXTERNAL_ID: &CStr = c"SELECT u.email, u.external_id, u.import_key, \
    u.source_row, CASE WHEN i.status = 'PROCESSING' THEN i.import_id END, u.updated_by, \
    (SELECT w.import_id FROM imports w \
     WHERE w.import_key = u.updated_by AND w.status = 'PROCESSING'), \
    u.first_name, u.last_name, u.role, u.job_title \
    FROM users u JOIN imports i ON i.import_key = u.import_key \
    WHERE u.account_id = ?1 AND u.external_id = ?2";

const FILE_KEY_BY_EMAIL: &CStr = c"SELECT email, external_id, source_row, \
    released_external_id FROM import_file_keys WHERE import_key = ?1 AND email = ?2";

const FILE_KEY_BY_EXTERNAL_ID: &CStr = c"SELECT email, external_id, source_row, \
    released_external_id FROM import_file_keys WHERE import_key = ?1 AND external_id = ?2";

const FILE_KEY_BY_RELEASED: &CStr = c"SELECT email, external_id, source_row, \
    released_external_id FROM import_file_keys \
    WHERE import_key = ?1 AND released_external_id = ?2";

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

/// The import a batch is written for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Target<'a> {
    pub account_id: &'a str,
    pub import_key: i64,
    /// Microseconds since the Unix epoch.
    pub now: i64,
}

/// Inserts the users of `batch` at `indexes`, in that order. The caller holds the write
/// transaction on this connection.
pub(super) fn insert_users(
    handle: &mut LockedSqliteHandle<'_>,
    target: Target<'_>,
    batch: &UserBatch,
    indexes: impl Iterator<Item = usize>,
) -> Result<Inserted, SqliteFailure> {
    let db = handle.as_raw_handle();
    // SAFETY: the locked handle gives us the connection alone for as long as it is borrowed,
    // which covers every use of `db` and of the statement in this function.
    let mut statement = unsafe { Statement::prepare(db, INSERT_USER)? };
    let mut refused = Vec::new();
    let mut rowids: Option<(i64, i64)> = None;
    for index in indexes {
        let user = batch.user(index);
        statement.text(1, target.account_id)?;
        statement.text(2, user.email)?;
        statement.text(3, user.first_name)?;
        statement.text(4, user.last_name)?;
        statement.text(5, user.role.as_str())?;
        statement.text(6, user.job_title)?;
        statement.optional_text(7, user.external_id)?;
        statement.int(8, target.import_key)?;
        statement.int(9, user.row_number as i64)?;
        statement.int(10, target.now)?;
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

/// Updates the users of `updates` with their rows' non-empty cells, keeping the values they
/// replace. The caller holds the write transaction.
pub(super) fn update_users(
    handle: &mut LockedSqliteHandle<'_>,
    target: Target<'_>,
    batch: &UserBatch,
    updates: &[Update],
) -> Result<(), SqliteFailure> {
    let db = handle.as_raw_handle();
    // SAFETY: as in `insert_users`.
    let (mut save, mut update) = unsafe {
        (
            Statement::prepare(db, SAVE_USER)?,
            Statement::prepare(db, UPDATE_USER)?,
        )
    };
    for &Update { index } in updates {
        let user = batch.user(index);
        let role = user.role_given.then(|| user.role.as_str());
        save.int(1, target.import_key)?;
        save.text(2, target.account_id)?;
        save.text(3, user.email)?;
        save.optional_text(4, given(user.first_name))?;
        save.optional_text(5, given(user.last_name))?;
        save.optional_text(6, role)?;
        save.optional_text(7, given(user.job_title))?;
        save.optional_text(8, user.external_id)?;
        // A row that changes nothing writes nothing: the user keeps its update time.
        if !save.execute()? {
            continue;
        }
        update.text(1, target.account_id)?;
        update.text(2, user.email)?;
        update.optional_text(3, given(user.first_name))?;
        update.optional_text(4, given(user.last_name))?;
        update.optional_text(5, role)?;
        update.optional_text(6, given(user.job_title))?;
        update.optional_text(7, user.external_id)?;
        update.int(8, target.now)?;
        update.int(9, target.import_key)?;
        update.execute()?;
    }
    Ok(())
}

/// A cell that is not empty: an empty one keeps the stored value.
fn given(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

/// Records the values that rows not inserted as users took in the file.
pub(super) fn insert_file_keys(
    handle: &mut LockedSqliteHandle<'_>,
    import_key: i64,
    claims: &[Claim<'_>],
) -> Result<(), SqliteFailure> {
    let db = handle.as_raw_handle();
    // SAFETY: as in `insert_users`.
    let mut insert = unsafe { Statement::prepare(db, INSERT_FILE_KEY)? };
    for claim in claims {
        insert.int(1, import_key)?;
        insert.text(2, claim.email)?;
        insert.optional_text(3, claim.external_id)?;
        insert.int(4, claim.row_number as i64)?;
        insert.optional_text(5, claim.released_external_id)?;
        insert.execute()?;
    }
    Ok(())
}

/// The account's users that hold one of `emails` or `external_ids`: a point lookup per value
/// on the unique indexes, cheaper than `IN` lists bound through sqlx.
pub(super) fn existing_users(
    handle: &mut LockedSqliteHandle<'_>,
    account_id: &str,
    emails: &[&str],
    external_ids: &[&str],
) -> Result<Vec<Existing>, SqliteFailure> {
    let db = handle.as_raw_handle();
    let mut found = Vec::new();
    for (sql, values) in [(USER_BY_EMAIL, emails), (USER_BY_EXTERNAL_ID, external_ids)] {
        // SAFETY: as in `insert_users`.
        let mut lookup = unsafe { Statement::prepare(db, sql)? };
        for value in values {
            lookup.text(1, account_id)?;
            lookup.text(2, value)?;
            lookup.rows(|row| {
                found.push(Existing {
                    email: row.text(0).unwrap_or_default(),
                    external_id: row.text(1),
                    import_key: row.int(2),
                    source_row: row.int(3) as u64,
                    running_import: row.text(4),
                    updated_by: row.optional_int(5),
                    running_update: row.text(6),
                    first_name: row.text(7).unwrap_or_default(),
                    last_name: row.text(8).unwrap_or_default(),
                    role: row.text(9).unwrap_or_default(),
                    job_title: row.text(10).unwrap_or_default(),
                })
            })?;
        }
    }
    Ok(found)
}

/// The file keys of import `import_key` that hold one of `emails` or `external_ids`, or that
/// released one of the external ids.
pub(super) fn file_keys(
    handle: &mut LockedSqliteHandle<'_>,
    import_key: i64,
    emails: &[&str],
    external_ids: &[&str],
    released: bool,
) -> Result<Vec<FileKey>, SqliteFailure> {
    let db = handle.as_raw_handle();
    let mut found = Vec::new();
    let mut lookups = vec![
        (FILE_KEY_BY_EMAIL, emails),
        (FILE_KEY_BY_EXTERNAL_ID, external_ids),
    ];
    if released {
        lookups.push((FILE_KEY_BY_RELEASED, external_ids));
    }
    for (sql, values) in lookups {
        // SAFETY: as in `insert_users`.
        let mut lookup = unsafe { Statement::prepare(db, sql)? };
        for value in values {
            lookup.int(1, import_key)?;
            lookup.text(2, value)?;
            lookup.rows(|row| {
                found.push(FileKey {
                    email: row.text(0).unwrap_or_default(),
                    external_id: row.text(1),
                    source_row: row.int(2) as u64,
                    released_external_id: row.text(3),
                })
            })?;
        }
    }
    Ok(found)
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

    fn optional_text(
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
    fn rows(&mut self, mut each: impl FnMut(&Row<'_>)) -> Result<(), SqliteFailure> {
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

/// The current row of a statement being stepped: valid until the next step.
struct Row<'s> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    row: PhantomData<&'s ()>,
}

impl Row<'_> {
    /// A text column, copied out; `None` for NULL.
    fn text(&self, column: c_int) -> Option<String> {
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

    fn int(&self, column: c_int) -> i64 {
        // SAFETY: the statement is on a row.
        unsafe { ffi::sqlite3_column_int64(self.stmt.as_ptr(), column) }
    }

    /// An integer column; `None` for NULL.
    fn optional_int(&self, column: c_int) -> Option<i64> {
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
