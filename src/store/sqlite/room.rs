//! The room removed rows leave in the file, given back to the filesystem.
//!
//! SQLite keeps freed pages inside the file for reuse; only with `auto_vacuum = INCREMENTAL`
//! can it give them back, a step at a time (`PRAGMA incremental_vacuum`), without rewriting
//! the whole file. New files are made that way (the writer's connect options); a file made
//! before is converted once, at start (`make_incremental`), which rewrites it (`VACUUM`).
//! After the retention removed rows, `give_back` returns their pages in short writes, so that
//! uploads' batches pass between them.

use std::time::Instant;

use sqlx::SqlitePool;

use super::SqliteStore;
use crate::store::StoreError;

/// Pages given back per write: 8 MiB of 4 KiB pages, a few milliseconds of the write lock.
const STEP_PAGES: i64 = 2048;
/// Writes per call at most: 256 MiB; the rest waits for the next round.
const MAX_STEPS: usize = 32;

/// Converts a file made without incremental vacuum, once. Leaves a file in `FULL` mode (which
/// gives pages back at every commit) as it is. A failure (say no room for the copy `VACUUM`
/// makes) is only logged: the freed pages are then reused inside the file, not given back.
pub(super) async fn make_incremental(writer: &SqlitePool) {
    let Ok(mode) = sqlx::query_scalar::<_, i64>("PRAGMA auto_vacuum")
        .fetch_one(writer)
        .await
    else {
        return;
    };
    // 0: NONE, 1: FULL, 2: INCREMENTAL.
    if mode != 0 {
        return;
    }
    let started = Instant::now();
    tracing::info!(
        "rewriting the database once for incremental vacuum, so that the room the retention \
         frees goes back to the filesystem"
    );
    let converted = async {
        sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
            .execute(writer)
            .await?;
        sqlx::query("VACUUM").execute(writer).await?;
        Ok::<_, sqlx::Error>(())
    }
    .await;
    match converted {
        Ok(()) => tracing::info!(took = ?started.elapsed(), "the database uses incremental vacuum"),
        Err(e) => tracing::warn!(
            error = %e,
            "could not rewrite the database for incremental vacuum; the room removed rows \
             leave is reused inside the file, not given back"
        ),
    }
}

/// Gives free pages back, `STEP_PAGES` per write, `MAX_STEPS` writes at most, then lets a
/// checkpoint shrink the file and cut its log; the bytes given back. Nothing in a file without incremental
/// vacuum (the pages stay free for reuse).
pub(super) async fn give_back(store: &SqliteStore) -> Result<u64, StoreError> {
    let mut given = 0u64;
    for _ in 0..MAX_STEPS {
        let mut conn = store.writer().await?;
        let result = async {
            let free = free_pages(&mut conn).await?;
            if free.0 == 0 {
                return Ok(0);
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "PRAGMA incremental_vacuum({STEP_PAGES})"
            )))
            .execute(&mut *conn)
            .await?;
            let after = free_pages(&mut conn).await?;
            Ok((free.0 - after.0).max(0) as u64 * free.1 as u64)
        }
        .await;
        let freed = store.release(conn, result)?;
        if freed == 0 {
            break;
        }
        given += freed;
    }
    if given > 0 {
        // The file shrinks once the log's pages are written back, and the log, which the
        // vacuum's writes grew, is cut to nothing. This holds the writer while readers
        // finish what they read (reads here are short); a reader that takes longer than the
        // busy timeout only leaves the log as it is, until the next checkpoint.
        let mut conn = store.writer().await?;
        let result = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(StoreError::from);
        store.release(conn, result)?;
    }
    Ok(given)
}

/// The file's free pages and its page size.
async fn free_pages(conn: &mut sqlx::SqliteConnection) -> Result<(i64, i64), StoreError> {
    Ok(sqlx::query_as(
        "SELECT freelist_count, page_size FROM pragma_freelist_count(), pragma_page_size()",
    )
    .fetch_one(conn)
    .await?)
}
