//! The store's errors, classified once, here, by what the import layer must do about them:
//! retry shortly (an outage), wait until someone makes room (a fault), refuse the request, or
//! report a bug. The classes, and the plain words they are told with, are the same whichever
//! backend raised them; the backend's own error is kept as the source, for the server's log.
//!
//! Each backend error is classified exactly once, on its way out of the backend: sqlx errors by
//! `From<sqlx::Error>`, SQLite's C API by `from_sqlite_code`, PostgreSQL's SQLSTATEs by
//! `from_sqlstate`. The import layer maps these classes to its own errors in one place
//! (`import::error`); no caller looks at a backend's codes.

use std::fmt;

use crate::domain::ImportKey;

/// The backend's error behind a classified one, for the log only.
///
/// Never shown to a client: its text may hold SQL, paths or values (`StoreError::detail` joins it
/// in for the log).
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of the store, by what the caller must do about it.
///
/// - answers about the data (`AlreadyExists`, `NotProcessing`, `StillRunning`, `BeingUpdated`):
///   the request is refused, the transaction was rolled back cleanly, and the connection is fine
///   (`is_answer`);
/// - `Unavailable`: retry shortly, with nothing done meanwhile (`is_transient`);
/// - `Fault`: writes will keep failing until someone acts; the store latches it and readiness
///   fails until a write probe succeeds (`FaultLatch`);
/// - `Conflict`: another import's transaction won, again and again; the request may be sent
///   again;
/// - `Config`, `Migrate`: the service cannot start on this database;
/// - `Corrupt`, `Database`: a bug, or data the service did not write; logged with its detail, and
///   told to the client only as an internal error.
///
/// The `Display` text is the plain words; the source is only for the log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique index refused a write. From `Store::create_import`: the import id is taken in the
    /// account (the caller says so with the existing import's status). Elsewhere it is
    /// unexpected, except inside a planned PostgreSQL batch, where it means another replica took
    /// a value between the lookup and the write, and the batch is run again
    /// (`postgres::tx::taken_meanwhile`).
    #[error("an import with this id already exists in the account")]
    AlreadyExists,
    /// The import was ended by someone else (recovery after a restart, or another replica).
    #[error("the import is no longer processing")]
    NotProcessing,
    /// The import still runs, and the request needs it ended.
    #[error("the import is still running")]
    StillRunning,
    /// An UPDATE import still running (this id) has changed some of the import's users: a
    /// revert must wait for it, whose ending decides whether those users are kept.
    #[error("import '{0}' is updating some of its users")]
    BeingUpdated(String),
    /// The database cannot be reached for now; the same request may succeed in a moment.
    #[error("{outage}")]
    Unavailable {
        /// Why, in plain words for the client.
        outage: Outage,
        /// The backend's error, for the log.
        #[source]
        source: Source,
    },
    /// The database answers but cannot store more until someone acts (frees disk space, fixes
    /// the disk): retrying at once is pointless, and readiness says so.
    #[error("{fault}")]
    Fault {
        /// What is wrong, in plain words for the client and for readiness.
        fault: Fault,
        /// The backend's error, for the log.
        #[source]
        source: Source,
    },
    /// The transaction lost a deadlock or a serialization conflict with another import's,
    /// after being run again a few times (PostgreSQL).
    ///
    /// Nothing of the write is stored; the same request may succeed when the other import is
    /// done.
    #[error("the database kept aborting this write in favour of another import's")]
    Conflict(#[source] Source),
    /// The file keys table of this import (`claims`) lost its rows: PostgreSQL empties its
    /// unlogged tables when it recovers from a crash, or on a standby that takes over. The
    /// import cannot tell a row's duplicates before the cut any more, so it must fail.
    #[error(
        "the database lost what it kept of this import's earlier rows (PostgreSQL recovered from a \
         crash)"
    )]
    FileKeysLost(ImportKey),
    /// The database URL, the SQLite file or its lock cannot be used as given (a bad URL, another
    /// server holding the file): the service must not start. The message names what to fix.
    #[error("invalid database url: {0}")]
    Config(String),
    /// The migrations could not be applied at start (sqlx's error says which and why): for
    /// instance the database has a migration this version does not know, or one was changed since
    /// it was applied. The service must not start on it.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value this version cannot read back (an unknown status, code or name), or a row
    /// that should be there and is not: a bug or a hand edit, never retried. The message names
    /// the import and column.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// Anything else: an error this service does not expect, which is a bug to report.
    #[error("unexpected database error")]
    Database(#[source] Source),
}

/// Why the database cannot be reached, in plain words.
///
/// Every outage is transient: the same request, sent again later, may succeed unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outage {
    /// No connection could be made, or the pool waited too long for one.
    NotAnswering,
    /// An open connection was cut (the server restarted, an administrator ended it).
    ConnectionLost,
    /// The server is starting up or shutting down.
    Starting,
    /// Another process holds SQLite's write lock past the busy timeout.
    Locked,
}

impl fmt::Display for Outage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outage::NotAnswering => "the database does not answer",
            Outage::ConnectionLost => "the connection to the database was lost",
            Outage::Starting => "the database is starting or stopping",
            Outage::Locked => "the database is locked by another process",
        })
    }
}

/// Why the database cannot store more, in plain words.
///
/// Unlike an outage, a fault stays until someone acts, so the store remembers it (`FaultLatch`)
/// and readiness reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No room: SQLite's `SQLITE_FULL` (or a file at its `max_page_count`), PostgreSQL's `53100`,
    /// or too little free space beside the SQLite file for the write probe.
    DiskFull,
    /// The disk failed a read or a write: SQLite's `SQLITE_IOERR`, PostgreSQL's `58030`.
    DiskError,
    /// The database refuses writes: SQLite's `SQLITE_READONLY`, PostgreSQL's `25006` (a standby
    /// after a failover, or a database set read-only).
    ReadOnly,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::DiskFull => "the database's disk is full",
            Fault::DiskError => "the database's disk failed to read or write",
            Fault::ReadOnly => "the database is read-only",
        })
    }
}

impl StoreError {
    /// An `Unavailable` error, boxing the backend's error as its source.
    pub(crate) fn unavailable(outage: Outage, source: impl Into<Source>) -> Self {
        StoreError::Unavailable {
            outage,
            source: source.into(),
        }
    }

    /// Whether this is an answer about the data (an id taken, an import that ended or still
    /// runs), after which the transaction was rolled back cleanly and its connection is fine,
    /// rather than a failure of the database.
    ///
    /// SQLite's store keeps its writer connection after an answer, and closes it after anything
    /// else, since it may be left mid-transaction.
    pub fn is_answer(&self) -> bool {
        match self {
            StoreError::AlreadyExists
            | StoreError::NotProcessing
            | StoreError::StillRunning
            | StoreError::BeingUpdated(_)
            | StoreError::FileKeysLost(_) => true,
            StoreError::Unavailable { .. }
            | StoreError::Fault { .. }
            | StoreError::Conflict(_)
            | StoreError::Config(_)
            | StoreError::Migrate(_)
            | StoreError::Corrupt(_)
            | StoreError::Database(_) => false,
        }
    }

    /// Whether the same call may succeed in a moment, with nothing done meanwhile: what a
    /// start-up or a short retry waits for.
    ///
    /// Only outages: a fault or a lost conflict may also clear, but not by waiting a moment with
    /// nothing done (see `Fault`, `Conflict`).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// The fault that keeps the database from storing more, if that is what this is.
    pub fn fault(&self) -> Option<Fault> {
        match self {
            StoreError::Fault { fault, .. } => Some(*fault),
            _ => None,
        }
    }

    /// The error with its sources, for the server's log (clients get only the plain words).
    pub fn detail(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(e) = source {
            text.push_str(": ");
            text.push_str(&e.to_string());
            source = e.source();
        }
        text
    }

    /// Classifies an SQLite result code (primary or extended), as SQLite's C API returns it.
    ///
    /// The primary code (the low byte) decides the class, except for constraints, where only a
    /// unique index (`SQLITE_CONSTRAINT_UNIQUE`) is `AlreadyExists`: a check or foreign key
    /// failing is a bug.
    pub(crate) fn from_sqlite_code(code: i32, source: impl Into<Source>) -> Self {
        use libsqlite3_sys as ffi;
        let source = source.into();
        match code & 0xff {
            ffi::SQLITE_FULL => StoreError::Fault {
                fault: Fault::DiskFull,
                source,
            },
            ffi::SQLITE_IOERR => StoreError::Fault {
                fault: Fault::DiskError,
                source,
            },
            ffi::SQLITE_READONLY => StoreError::Fault {
                fault: Fault::ReadOnly,
                source,
            },
            ffi::SQLITE_BUSY | ffi::SQLITE_LOCKED => StoreError::Unavailable {
                outage: Outage::Locked,
                source,
            },
            ffi::SQLITE_CONSTRAINT if code == ffi::SQLITE_CONSTRAINT_UNIQUE => {
                StoreError::AlreadyExists
            }
            _ => StoreError::Database(source),
        }
    }

    /// Classifies a PostgreSQL SQLSTATE.
    ///
    /// Class `08` and the session-ending `57P01`/`57P02` are lost connections, `57P03` a server
    /// starting; `53300` and `55000` mean no connection for now. `23505` is a unique violation,
    /// `40P01`/`40001` a lost deadlock or serialization conflict; the fault codes are on `Fault`.
    /// Anything else is `Database`.
    fn from_sqlstate(code: &str, source: Source) -> Self {
        let outage = match code {
            // Connection exceptions; an administrator or a crash ending the session.
            c if c.starts_with("08") => Some(Outage::ConnectionLost),
            "57P01" | "57P02" => Some(Outage::ConnectionLost),
            "57P03" => Some(Outage::Starting),
            // Too many connections; a database closed to connections.
            "53300" | "55000" => Some(Outage::NotAnswering),
            _ => None,
        };
        if let Some(outage) = outage {
            return StoreError::Unavailable { outage, source };
        }
        match code {
            "23505" => StoreError::AlreadyExists,
            // A deadlock, or a serialization failure: the other transaction won.
            "40P01" | "40001" => StoreError::Conflict(source),
            "53100" => StoreError::Fault {
                fault: Fault::DiskFull,
                source,
            },
            "58030" => StoreError::Fault {
                fault: Fault::DiskError,
                source,
            },
            // A standby after a failover, or a database set read-only.
            "25006" => StoreError::Fault {
                fault: Fault::ReadOnly,
                source,
            },
            _ => StoreError::Database(source),
        }
    }
}

/// The fault a store's writes last met, kept until a write probe shows it gone: after a full
/// disk, deleting a failed import's users may succeed while a batch still would not fit, so
/// only the probe, which writes as much as a batch, may say the database takes batches again.
#[derive(Debug, Default)]
pub(crate) struct FaultLatch {
    fault: std::sync::Mutex<Option<Fault>>,
}

impl FaultLatch {
    /// Notes the fault, if any, of a write's result.
    pub(crate) fn observe<T>(&self, result: &Result<T, StoreError>) {
        if let Err(error) = result
            && let Some(fault) = error.fault()
        {
            let mut latched = self.lock();
            if latched.is_none() {
                tracing::error!(%fault, error = error.detail(), "the database cannot be written");
            }
            *latched = Some(fault);
        }
    }

    /// The fault latched, if any: what `Store::fault` answers.
    pub(crate) fn get(&self) -> Option<Fault> {
        *self.lock()
    }

    /// Records the result of a write probe: a success clears the fault.
    pub(crate) fn probed(&self, result: &Result<(), StoreError>) {
        match result {
            Ok(()) => {
                if self.lock().take().is_some() {
                    tracing::info!("the database can be written again");
                }
            }
            Err(_) => self.observe(result),
        }
    }

    /// A poisoned lock is taken anyway: the value is a plain `Option`, never left half-written.
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Fault>> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl From<sqlx::Error> for StoreError {
    /// Pool and I/O errors are `NotAnswering`, a crashed worker or a protocol error
    /// `ConnectionLost`; database errors go by their code (SQLite's result code, or PostgreSQL's
    /// SQLSTATE); anything else is `Database`.
    fn from(error: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match error {
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed => {
                StoreError::unavailable(Outage::NotAnswering, error)
            }
            E::WorkerCrashed | E::Protocol(_) => {
                StoreError::unavailable(Outage::ConnectionLost, error)
            }
            E::Database(ref db) => {
                if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                    let code = db
                        .code()
                        .and_then(|c| c.parse::<i32>().ok())
                        .unwrap_or_default();
                    return StoreError::from_sqlite_code(code, error);
                }
                match db.code() {
                    Some(code) => {
                        let code = code.into_owned();
                        StoreError::from_sqlstate(&code, error.into())
                    }
                    None => StoreError::Database(error.into()),
                }
            }
            other => StoreError::Database(other.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        "detail".into()
    }

    #[test]
    fn sqlite_codes_fall_into_classes() {
        use libsqlite3_sys as ffi;
        let fault = |code| StoreError::from_sqlite_code(code, source()).fault();
        assert_eq!(fault(ffi::SQLITE_FULL), Some(Fault::DiskFull));
        assert_eq!(fault(ffi::SQLITE_IOERR_WRITE), Some(Fault::DiskError));
        assert_eq!(fault(ffi::SQLITE_READONLY), Some(Fault::ReadOnly));
        assert!(StoreError::from_sqlite_code(ffi::SQLITE_BUSY, source()).is_transient());
        assert!(matches!(
            StoreError::from_sqlite_code(ffi::SQLITE_CONSTRAINT_UNIQUE, source()),
            StoreError::AlreadyExists
        ));
        assert!(matches!(
            StoreError::from_sqlite_code(ffi::SQLITE_ERROR, source()),
            StoreError::Database(_)
        ));
    }

    #[test]
    fn sqlstates_fall_into_classes() {
        assert!(StoreError::from_sqlstate("57P01", source()).is_transient());
        assert!(StoreError::from_sqlstate("08006", source()).is_transient());
        assert_eq!(
            StoreError::from_sqlstate("53100", source()).fault(),
            Some(Fault::DiskFull)
        );
        assert!(matches!(
            StoreError::from_sqlstate("42P01", source()),
            StoreError::Database(_)
        ));
    }

    #[test]
    fn causes_are_told_in_plain_words() {
        let full = StoreError::from_sqlite_code(libsqlite3_sys::SQLITE_FULL, source());
        assert_eq!(full.to_string(), "the database's disk is full");
        let lost = StoreError::from_sqlstate("57P01", source());
        assert_eq!(lost.to_string(), "the connection to the database was lost");
    }
}
