//! One server per SQLite file. A second server on the same file would take the first one's
//! running imports for interrupted ones at its start, and end them (users deleted). So the
//! server holds an exclusive lock on a file beside the database for as long as it runs, and
//! writes its process id in it, so that a second server can say who holds it. The kernel
//! releases the lock when the process dies, however it dies.
//!
//! The lock is advisory (`File::try_lock`, an `flock` on Unix): it keeps out other servers of
//! this service, not other programs that open the database. The lock file stays on disk after a
//! release; only the lock on it matters, never whether the file exists.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::store::StoreError;

/// This server's exclusive hold on `<database>.lock`, for as long as the value lives (or until
/// `release`).
pub(super) struct FileLock {
    /// The open lock file: the lock lives as long as this handle.
    file: File,
    /// Its path, for the log.
    path: PathBuf,
}

impl FileLock {
    /// Takes the lock of the database at `database`: `<database>.lock`.
    ///
    /// Never waits: a lock already held (by another process, or another store in this one) is
    /// `Config` at once, naming the holder's process id as it wrote it, so that an operator can
    /// find it. Any other failure to open or lock the file is `Config` too: the server must not
    /// start without the lock.
    pub(super) fn acquire(database: &Path) -> Result<Self, StoreError> {
        let mut path = database.as_os_str().to_owned();
        path.push(".lock");
        let path = PathBuf::from(path);
        let cannot = |e: std::io::Error| {
            StoreError::Config(format!("cannot open the lock file {}: {e}", path.display()))
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(cannot)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "another process".to_owned(),
                    pid => format!("another process (pid {pid})"),
                };
                return Err(StoreError::Config(format!(
                    "the database {} is in use: {holder} holds {}; only one server may use a \
                     SQLite file (stop the other one, or give this one another --database-url; \
                     several replicas need PostgreSQL)",
                    database.display(),
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(cannot(e)),
        }
        // Who holds it, for the next one that tries.
        let pid = std::process::id().to_string();
        file.set_len(0).map_err(cannot)?;
        file.rewind().map_err(cannot)?;
        file.write_all(pid.as_bytes()).map_err(cannot)?;
        Ok(Self { file, path })
    }

    /// Lets another server use the database (a restart in the same process).
    ///
    /// An unlock that fails is only logged: the lock goes with the file handle, dropped here,
    /// anyway.
    pub(super) fn release(self) {
        if let Err(e) = self.file.unlock() {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot release the lock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("x.db");
        let first = FileLock::acquire(&database).unwrap();
        let refused = FileLock::acquire(&database).err().unwrap().to_string();
        assert!(refused.contains("x.db is in use"), "{refused}");
        assert!(
            refused.contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
        assert!(refused.contains("x.db.lock"), "{refused}");
        first.release();
        FileLock::acquire(&database).unwrap();
    }
}
