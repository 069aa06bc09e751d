//! The users an import created, found by the rowid ranges its batches were given. The users
//! table has no index on `import_key` (another index to maintain on every insert of the hot
//! path); a batch's inserts get consecutive rowids, as the writer connection is the only
//! writer while its transaction lasts, so a range per batch finds them instead.
//!
//! The invariant the ranges rely on: every rowid inside an import's range is a user that import
//! created. It holds because new rowids are above every rowid in use, a batch's inserts get
//! theirs in one transaction on the only writer, and a user is deleted only by its own import's
//! ending or revert, which forgets the ranges at the same time. So `delete_users` may delete a
//! whole range without checking `import_key`.
//!
//! Why not the index (migration `0003_user_ranges`, and the README's Performance section):
//! maintained on every insert of the hot path, it cost more than a few range rows per batch.

use sqlx::SqliteConnection;

use crate::domain::ImportKey;
use crate::store::StoreError;

/// Keeps the rowids a batch's users were given.
///
/// Nothing when the batch inserted no user.
pub(super) async fn record(
    conn: &mut SqliteConnection,
    key: ImportKey,
    rowids: Option<(i64, i64)>,
) -> Result<(), StoreError> {
    if let Some((first, last)) = rowids {
        sqlx::query(
            "INSERT INTO import_user_ranges (import_key, first_rowid, last_rowid) \
             VALUES ($1, $2, $3)",
        )
        .bind(key)
        .bind(first)
        .bind(last)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The ranges an import's batches recorded, one per batch that inserted users.
async fn ranges(
    conn: &mut SqliteConnection,
    key: ImportKey,
) -> Result<Vec<(i64, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT first_rowid, last_rowid FROM import_user_ranges WHERE import_key = $1",
    )
    .bind(key)
    .fetch_all(&mut *conn)
    .await?)
}

/// Drops an import's ranges once its users are deleted: the rowids may be given again later.
async fn forget(conn: &mut SqliteConnection, key: ImportKey) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM import_user_ranges WHERE import_key = $1")
        .bind(key)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Deletes every user the import created.
///
/// Those another import updated since included (an ending takes back all its import added); then
/// forgets the ranges.
pub(super) async fn delete_users(
    conn: &mut SqliteConnection,
    key: ImportKey,
) -> Result<(), StoreError> {
    for (first, last) in ranges(conn, key).await? {
        sqlx::query("DELETE FROM users WHERE rowid BETWEEN $1 AND $2")
            .bind(first)
            .bind(last)
            .execute(&mut *conn)
            .await?;
    }
    forget(conn, key).await
}

/// Of the users the import created, how many another import has updated since, and the id of
/// a running import among those.
///
/// Stops at the first range that has a running updater: the revert waits for it anyway, so the
/// count is then only what was seen so far.
pub(super) async fn updated_by_others(
    conn: &mut SqliteConnection,
    key: ImportKey,
) -> Result<(u64, Option<String>), StoreError> {
    let mut kept = 0;
    for (first, last) in ranges(conn, key).await? {
        let (in_range, updater): (i64, Option<String>) = sqlx::query_as(
            "SELECT count(u.updated_by), max(w.import_id) FROM users u \
             LEFT JOIN imports w ON w.import_key = u.updated_by AND w.status = 'PROCESSING' \
             WHERE u.rowid BETWEEN $1 AND $2 AND u.import_key = $3 \
             AND u.updated_by IS NOT NULL AND u.updated_by <> $3",
        )
        .bind(first)
        .bind(last)
        .bind(key)
        .fetch_one(&mut *conn)
        .await?;
        if updater.is_some() {
            return Ok((kept + in_range as u64, updater));
        }
        kept += in_range as u64;
    }
    Ok((kept, None))
}

/// Deletes the users the import created that no other import has updated since; how many.
///
/// Checks `import_key` as well as the range, unlike `delete_users`, like the count before it.
pub(super) async fn delete_reverted(
    conn: &mut SqliteConnection,
    key: ImportKey,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    for (first, last) in ranges(conn, key).await? {
        removed += sqlx::query(
            "DELETE FROM users WHERE rowid BETWEEN $1 AND $2 AND import_key = $3 \
             AND (updated_by IS NULL OR updated_by = $3) \
             AND coalesce(invitation_state, '') <> 'ACCEPTED'",
        )
        .bind(first)
        .bind(last)
        .bind(key)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    forget(conn, key).await?;
    Ok(removed)
}
