//! What a plan's updates write on PostgreSQL (see `store::planned`): the users' new values, with
//! the values they replace, each statement over arrays (`unnest`). The values rows took in the
//! file go by `COPY` (`copy::copy_claims`, part of them `beside`).
//!
//! They run inside the planned batch's transaction (`planned::write`), after its lookups and
//! before its inserts. A unique violation here fails the transaction, which `tx` runs again
//! with fresh lookups (`tx::taken_meanwhile`).

use sqlx::PgConnection;

use super::plain::UNNEST_ROWS;
use crate::domain::UserBatch;
use crate::domain::batch::UserRef;
use crate::store::plan::{Cells, Update};
use crate::store::{BatchTarget, StoreError};

/// What an update writes: the file's non-empty cells (`o`, NULL for an empty one, which keeps
/// the stored value), and the values it replaces, as the statement's snapshot has them, in the
/// user's `old_*` columns, so that they are exactly what was replaced.
macro_rules! update_users_set {
    () => {
        "UPDATE users u SET old_first_name = u.first_name, old_last_name = u.last_name, \
           old_role = u.role, old_job_title = u.job_title, \
           old_external_id = u.external_id, old_update_time = u.update_time, \
           old_updated_by = u.updated_by, \
           first_name = coalesce(o.first_name, u.first_name), \
           last_name = coalesce(o.last_name, u.last_name), \
           role = coalesce(o.role, u.role), \
           job_title = coalesce(o.job_title, u.job_title), \
           external_id = coalesce(o.external_id, u.external_id), \
           update_time = now(), updated_by = $2 "
    };
}

/// Each user found again by the tuple id its lookup read in this transaction (`$3`, as
/// `lookup::Match::row_id` packs it): a TID scan, rather than a descent of the email index and
/// a read of the row. A user another transaction changed since has another tuple id, and is
/// not updated; its old tuple's place may even hold another user's tuple by then (pruning
/// frees the place of a heap-only tuple at once), so the row found must also be the user
/// looked up, as the plan judged it: its email (`$9`), creating import (`$10`) and last
/// update (`$11`), all read from the tuple the scan fetched anyway.
const BY_TUPLE_ID: &str = concat!(
    update_users_set!(),
    "FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
                 $9::text[], $10::bigint[], $11::bigint[]) \
          AS o(id, first_name, last_name, role, job_title, external_id, email, import_key, \
               updated_by) \
     WHERE u.ctid = format('(%s,%s)', o.id >> 16, o.id & 65535)::tid AND u.account_key = $1 \
       AND u.email = o.email AND u.import_key = o.import_key \
       AND u.updated_by IS NOT DISTINCT FROM o.updated_by"
);

/// Each user found again by its email (`$9`), as it stands now, and updated only if it is
/// still the user the plan judged (the same creating import, `$10`, and last update, `$11`:
/// an acceptance changed it, not another import) and the file changes something of it: for
/// the users `BY_TUPLE_ID` missed. Those it did update hold the file's values now, and are
/// passed over.
const BY_EMAIL: &str = concat!(
    update_users_set!(),
    "FROM (SELECT v.ctid AS tid, n.first_name, n.last_name, n.role, n.job_title, \
                  n.external_id \
           FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], \
                       $8::text[], $9::text[], $10::bigint[], $11::bigint[]) \
                AS n(id, first_name, last_name, role, job_title, external_id, email, \
                     import_key, updated_by) \
           JOIN users v ON v.account_key = $1 AND v.email = n.email \
           WHERE v.import_key = n.import_key \
             AND v.updated_by IS NOT DISTINCT FROM n.updated_by \
             AND (v.first_name IS DISTINCT FROM coalesce(n.first_name, v.first_name) \
              OR v.last_name IS DISTINCT FROM coalesce(n.last_name, v.last_name) \
              OR v.role IS DISTINCT FROM coalesce(n.role, v.role) \
              OR v.job_title IS DISTINCT FROM coalesce(n.job_title, v.job_title) \
              OR v.external_id IS DISTINCT FROM coalesce(n.external_id, v.external_id))) o \
     WHERE u.ctid = o.tid"
);

/// What the update statements take, one array per parameter, in the order of the users.
struct Users<'a> {
    /// Where the lookup found each (`$3`).
    ids: Vec<i64>,
    /// The file's cells (`$4` – `$8`).
    first_names: Vec<Option<&'a str>>,
    last_names: Vec<Option<&'a str>>,
    roles: Vec<Option<&'a str>>,
    job_titles: Vec<Option<&'a str>>,
    external_ids: Vec<Option<&'a str>>,
    /// The user as the plan judged it: its email, creating import and last update (`$9` –
    /// `$11`).
    emails: Vec<&'a str>,
    creators: Vec<i64>,
    updaters: Vec<Option<i64>>,
}

impl<'a> Users<'a> {
    /// The arrays of `part`, whose rows are in `batch`.
    fn of(batch: &'a UserBatch, part: &[Update]) -> Result<Self, StoreError> {
        let users: Vec<UserRef<'a>> = part.iter().map(|u| batch.user(u.index)).collect();
        let cells: Vec<Cells<'a>> = users.iter().map(Cells::of).collect();
        Ok(Self {
            ids: part
                .iter()
                .map(|u| u.row_id)
                .collect::<Option<Vec<i64>>>()
                // The lookups always read it (`lookup::Match::row_id`): without it, a bug.
                .ok_or_else(|| {
                    StoreError::Database(
                        "a user to update was looked up without its tuple id".into(),
                    )
                })?,
            first_names: cells.iter().map(|c| c.first_name).collect(),
            last_names: cells.iter().map(|c| c.last_name).collect(),
            roles: cells.iter().map(|c| c.role).collect(),
            job_titles: cells.iter().map(|c| c.job_title).collect(),
            external_ids: cells.iter().map(|c| c.external_id).collect(),
            emails: users.iter().map(|u| u.email).collect(),
            creators: part.iter().map(|u| u.import_key).collect(),
            updaters: part.iter().map(|u| u.updated_by).collect(),
        })
    }

    /// Runs `sql` (`BY_TUPLE_ID` or `BY_EMAIL`) for these users: how many it updated.
    async fn update(
        &self,
        conn: &mut PgConnection,
        sql: &'static str,
        target: &BatchTarget<'_>,
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query(sql)
            .bind(target.account_key.0)
            .bind(target.key)
            .bind(&self.ids)
            .bind(&self.first_names)
            .bind(&self.last_names)
            .bind(&self.roles)
            .bind(&self.job_titles)
            .bind(&self.external_ids)
            .bind(&self.emails)
            .bind(&self.creators)
            .bind(&self.updaters)
            .execute(&mut *conn)
            .await?
            .rows_affected())
    }
}

/// Updates the users of `updates` with their rows' non-empty cells, keeping the values they
/// replace for an import that fails.
///
/// `in_order` is the plan's `releases`: when an update frees an external id, the updates go one
/// statement per row, in file order, so that a later row may take the id in the same batch.
/// Otherwise `UNNEST_ROWS` per statement.
///
/// By tuple id first (for the updates of every user of 50 MiB, batch by batch in file order:
/// 12.5 s by email, 9.9 s by tuple id with the lookups). A user that another transaction
/// changed since its lookup is missed. One that an acceptance changed is found again by email,
/// as is: acceptances come at any time, and would otherwise rerun the batch as often as they
/// keep pace with it. If any other is missed (another import changed or removed it: the
/// plan's judgement of it may no longer hold), the race is lost, and the whole transaction runs
/// again with fresh lookups (`tx`), rather than count an update that did not happen or write
/// one the rules would refuse.
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
        let users = Users::of(batch, part)?;
        let asked = part.len() as u64;
        let updated = users.update(conn, BY_TUPLE_ID, target).await?;
        if updated < asked {
            tracing::debug!(
                missed = asked - updated,
                "users changed since their lookup; finding them again by email"
            );
            let again = users.update(conn, BY_EMAIL, target).await?;
            if updated + again != asked {
                return Err(StoreError::Conflict(
                    format!(
                        "{} of {asked} users to update were changed by another import meanwhile",
                        (asked - updated).saturating_sub(again)
                    )
                    .into(),
                ));
            }
        }
    }
    Ok(())
}
