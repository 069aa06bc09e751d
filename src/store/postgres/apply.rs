//! What a plan writes on PostgreSQL (see `store::planned`): updates that keep the values they
//! replace, and the values rows took in the file, each statement over arrays (`unnest`).
//!
//! Both run inside the planned batch's transaction (`planned::write`), after its lookups: the
//! updates before its inserts, the file keys after them. A unique violation here fails the
//! transaction, which `tx` runs again with fresh lookups (`tx::taken_meanwhile`).

use sqlx::PgConnection;

use super::plain::UNNEST_ROWS;
use crate::domain::batch::UserRef;
use crate::domain::{ImportKey, UserBatch};
use crate::store::plan::{Claim, Update};
use crate::store::steps::Dialect;
use crate::store::{BatchTarget, StoreError};

/// Updates the users of `updates` with their rows' non-empty cells (an empty cell, bound as
/// NULL, keeps the stored value), keeping the values they replace for an import that fails.
///
/// `in_order` is the plan's `releases`: when an update frees an external id, the updates go one
/// statement per row, in file order, so that a later row may take the id in the same batch.
/// Otherwise `UNNEST_ROWS` per statement. The old values are kept in the row by the statement
/// that replaces them, so they are exactly what was replaced.
pub(super) async fn update_users(
    conn: &mut PgConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    updates: &[Update],
    in_order: bool,
) -> Result<(), StoreError> {
    // A statement checks the unique indexes row by row, in no particular order: when an
    // update frees an external id that a later one takes, they go one at a time, in file order.
    let rows = if in_order { 1 } else { UNNEST_ROWS };
    for part in updates.chunks(rows) {
        let users: Vec<UserRef<'_>> = part.iter().map(|u| batch.user(u.index)).collect();
        let given = |value: &'_ str| (!value.is_empty()).then_some(value.to_owned());
        let emails: Vec<&str> = users.iter().map(|u| u.email).collect();
        let first_names: Vec<Option<String>> = users.iter().map(|u| given(u.first_name)).collect();
        let last_names: Vec<Option<String>> = users.iter().map(|u| given(u.last_name)).collect();
        let roles: Vec<Option<&str>> = users
            .iter()
            .map(|u| u.role_given.then(|| u.role.as_str()))
            .collect();
        let job_titles: Vec<Option<String>> = users.iter().map(|u| given(u.job_title)).collect();
        let external_ids: Vec<Option<&str>> = users.iter().map(|u| u.external_id).collect();
        // One pass over the users: each row found once and updated by its tuple id, its old
        // values, as the statement's snapshot has them, kept in its `old_*` columns (every
        // right-hand side reads the row as it was). Only the rows that change something (the
        // plan holds no other, but a concurrent change may have made one a no-op since its
        // lookup): a row that changes nothing writes nothing, and the user keeps its update
        // time. A row another transaction changed meanwhile has another tuple id: not updated.
        sqlx::query(
            "WITH n AS (SELECT * FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], \
                                             $7::text[], $8::text[]) \
                        AS n(email, first_name, last_name, role, job_title, external_id)) \
             UPDATE users u SET old_first_name = u.first_name, old_last_name = u.last_name, \
               old_role = u.role, old_job_title = u.job_title, \
               old_external_id = u.external_id, old_update_time = u.update_time, \
               old_updated_by = u.updated_by, \
               first_name = coalesce(o.new_first_name, u.first_name), \
               last_name = coalesce(o.new_last_name, u.last_name), \
               role = coalesce(o.new_role, u.role), \
               job_title = coalesce(o.new_job_title, u.job_title), \
               external_id = coalesce(o.new_external_id, u.external_id), \
               update_time = now(), updated_by = $2 \
             FROM (SELECT v.ctid AS tid, n.first_name AS new_first_name, \
                          n.last_name AS new_last_name, n.role AS new_role, \
                          n.job_title AS new_job_title, n.external_id AS new_external_id \
                   FROM n JOIN users v ON v.account_id = $1 AND v.email = n.email \
                   WHERE v.first_name IS DISTINCT FROM coalesce(n.first_name, v.first_name) \
                      OR v.last_name IS DISTINCT FROM coalesce(n.last_name, v.last_name) \
                      OR v.role IS DISTINCT FROM coalesce(n.role, v.role) \
                      OR v.job_title IS DISTINCT FROM coalesce(n.job_title, v.job_title) \
                      OR v.external_id IS DISTINCT FROM \
                         coalesce(n.external_id, v.external_id)) o \
             WHERE u.ctid = o.tid",
        )
        .bind(target.account_id.as_str())
        .bind(target.key)
        .bind(&emails)
        .bind(&first_names)
        .bind(&last_names)
        .bind(&roles)
        .bind(&job_titles)
        .bind(&external_ids)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Records the values that rows not inserted as users took in the file, in the import's own
/// table (`claims`).
pub(super) async fn insert_file_keys(
    conn: &mut PgConnection,
    key: ImportKey,
    claims: &[Claim<'_>],
) -> Result<(), StoreError> {
    let sql = crate::store::claims::insert(Dialect::Postgres, key);
    for part in claims.chunks(UNNEST_ROWS * 4) {
        let generations: Vec<i64> = part
            .iter()
            .map(|c| crate::store::claims::generation(c.row_number))
            .collect();
        let emails: Vec<&str> = part.iter().map(|c| c.email).collect();
        let ids: Vec<Option<&str>> = part.iter().map(|c| c.external_id).collect();
        let rows: Vec<i64> = part.iter().map(|c| c.row_number as i64).collect();
        let released: Vec<Option<&str>> = part.iter().map(|c| c.released_external_id).collect();
        // Not prepared: the statement names a table that goes with its import.
        sqlx::query(sqlx::AssertSqlSafe(sql.as_str().to_owned()))
            .persistent(false)
            .bind(&generations)
            .bind(&emails)
            .bind(&ids)
            .bind(&rows)
            .bind(&released)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
