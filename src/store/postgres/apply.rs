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
/// not updated.
const BY_TUPLE_ID: &str = concat!(
    update_users_set!(),
    "FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) \
          AS o(id, first_name, last_name, role, job_title, external_id) \
     WHERE u.ctid = format('(%s,%s)', o.id >> 16, o.id & 65535)::tid AND u.account_id = $1"
);

/// Each user found again by its email (`$3`), as it stands now, and updated only if the file
/// changes something of it: for the users `BY_TUPLE_ID` missed. Those it did update hold the
/// file's values now, and are passed over.
const BY_EMAIL: &str = concat!(
    update_users_set!(),
    "FROM (SELECT v.ctid AS tid, n.first_name, n.last_name, n.role, n.job_title, \
                  n.external_id \
           FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                       $8::text[]) AS n(email, first_name, last_name, role, job_title, \
                                        external_id) \
           JOIN users v ON v.account_id = $1 AND v.email = n.email \
           WHERE v.first_name IS DISTINCT FROM coalesce(n.first_name, v.first_name) \
              OR v.last_name IS DISTINCT FROM coalesce(n.last_name, v.last_name) \
              OR v.role IS DISTINCT FROM coalesce(n.role, v.role) \
              OR v.job_title IS DISTINCT FROM coalesce(n.job_title, v.job_title) \
              OR v.external_id IS DISTINCT FROM coalesce(n.external_id, v.external_id)) o \
     WHERE u.ctid = o.tid"
);

/// The cells an update writes, one array per column, in the order of its users.
struct Cells<'a> {
    first_names: Vec<Option<&'a str>>,
    last_names: Vec<Option<&'a str>>,
    roles: Vec<Option<&'a str>>,
    job_titles: Vec<Option<&'a str>>,
    external_ids: Vec<Option<&'a str>>,
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
/// changed since its lookup (an acceptance, say) is missed, and found again by email; if even
/// then fewer users change than the plan counts, the race is lost, and the whole transaction
/// runs again with fresh lookups (`tx`), rather than count an update that did not happen.
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
        let cells = Cells {
            first_names: users.iter().map(|u| given(u.first_name)).collect(),
            last_names: users.iter().map(|u| given(u.last_name)).collect(),
            roles: users
                .iter()
                .map(|u| u.role_given.then(|| u.role.as_str()))
                .collect(),
            job_titles: users.iter().map(|u| given(u.job_title)).collect(),
            external_ids: users.iter().map(|u| u.external_id).collect(),
        };
        let ids = part
            .iter()
            .map(|u| u.row_id)
            .collect::<Option<Vec<i64>>>()
            // The lookups always read it (`lookup::Match::row_id`): a plan without it is a bug.
            .ok_or_else(|| {
                StoreError::Database("a user to update was looked up without its tuple id".into())
            })?;
        let asked = part.len() as u64;
        let updated = update(conn, BY_TUPLE_ID, target, &ids, &cells).await?;
        if updated < asked {
            tracing::debug!(
                missed = asked - updated,
                "users changed since their lookup; finding them again by email"
            );
            let emails: Vec<&str> = users.iter().map(|u| u.email).collect();
            let again = update(conn, BY_EMAIL, target, &emails, &cells).await?;
            if updated + again != asked {
                return Err(StoreError::Conflict(
                    format!(
                        "{} of {asked} users to update were changed by another transaction \
                         meanwhile",
                        asked - updated
                    )
                    .into(),
                ));
            }
        }
    }
    Ok(())
}

/// A cell that is not empty: an empty one keeps the stored value.
fn given(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

/// Runs `sql` (`BY_TUPLE_ID` or `BY_EMAIL`) for the users of `keys` and their `cells`: how many
/// it updated.
async fn update<'q, K>(
    conn: &mut PgConnection,
    sql: &'static str,
    target: &BatchTarget<'_>,
    keys: &'q K,
    cells: &'q Cells<'q>,
) -> Result<u64, StoreError>
where
    K: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Sync,
{
    Ok(sqlx::query(sql)
        .bind(target.account_id.as_str())
        .bind(target.key)
        .bind(keys)
        .bind(&cells.first_names)
        .bind(&cells.last_names)
        .bind(&cells.roles)
        .bind(&cells.job_titles)
        .bind(&cells.external_ids)
        .execute(&mut *conn)
        .await?
        .rows_affected())
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
