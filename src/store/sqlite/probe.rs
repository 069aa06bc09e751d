//! The write probe (`Store::probe_write`): whether the database can take a write now, for
//! readiness after a fault.

use super::{SqliteStore, begin};
use crate::store::{Fault, StoreError};

/// After a fault, the database takes batches again once this much can be written into it
/// (then rolled back)...
const PROBE_BYTES: i64 = 16 * 1024 * 1024;
/// ...and its filesystem has this much room, for the write-ahead log and its checkpoints.
const PROBE_DISK_ROOM: u64 = 64 * 1024 * 1024;

/// See `Store::probe_write`.
///
/// Two checks: free room beside the file first (`PROBE_DISK_ROOM`, for the write-ahead log),
/// then a real write of `PROBE_BYTES` on the writer connection, rolled back. A filesystem
/// whose room cannot be read is not held against the database.
pub(super) async fn probe(store: &SqliteStore) -> Result<(), StoreError> {
    let dir = store.path.parent().unwrap_or(std::path::Path::new("."));
    let dir = if dir.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        dir
    };
    if let Ok(stat) = rustix::fs::statvfs(dir) {
        let room = stat.f_bavail.saturating_mul(stat.f_frsize);
        if room < PROBE_DISK_ROOM {
            return Err(StoreError::Fault {
                fault: Fault::DiskFull,
                source: format!("{room} bytes free beside {}", store.path.display()).into(),
            });
        }
    }
    let mut conn = store.writer().await?;
    let result = async {
        let mut tx = begin(&mut conn).await?;
        sqlx::query("INSERT INTO write_probe (data) VALUES (zeroblob($1))")
            .bind(PROBE_BYTES)
            .execute(&mut *tx)
            .await?;
        tx.rollback().await?;
        Ok(())
    }
    .await;
    store.release(conn, result)
}
