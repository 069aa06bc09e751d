//! The store's errors, classified once, here, by what the import layer must do about them:
//! retry shortly (an outage), wait until someone makes room (a fault), refuse the request, or
//! report a bug. The classes, and the plain words they are told with, are the same whichever
//! backend raised them; the backend's own error is kept as the source, for the server's log.

use std::fmt;

/// The backend's error behind a classified one, for the log only.
pub type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
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
        outage: Outage,
        #[source]
        source: Source,
    },
    /// The database answers but cannot store more until someone acts (frees disk space, fixes
    /// the disk): retrying at once is pointless, and readiness says so.
    #[error("{fault}")]
    Fault {
        fault: Fault,
        #[source]
        source: Source,
    },
    #[error("invalid database url: {0}")]
    Config(String),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// Anything else: an error this service does not expect, which is a bug to report.
    #[error("unexpected database error")]
    Database(#[source] Source),
}

/// Why the database cannot be reached, in plain words.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    DiskFull,
    DiskError,
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
    pub(crate) fn unavailable(outage: Outage, source: impl Into<Source>) -> Self {
        StoreError::Unavailable {
            outage,
            source: source.into(),
        }
    }

    /// Whether the same call may succeed in a moment, with nothing done meanwhile: what a
    /// start-up or a short retry waits for.
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Fault>> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl From<sqlx::Error> for StoreError {
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
