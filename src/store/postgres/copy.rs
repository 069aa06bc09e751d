//! The fast path for users: a binary `COPY` straight into the users table, which skips the
//! per-row index probes of `ON CONFLICT`, inserts pages at a time, and leaves the server no
//! text to parse.
//!
//! A `COPY` cannot skip a duplicate: the first one fails it whole. So it runs inside a savepoint
//! of the part's transaction, and a duplicate rolls back to it, leaving the transaction usable
//! for the slower insert that follows (`plain::insert_users`). Nothing of a failed `COPY` stays.

use sqlx::PgConnection;

use crate::domain::batch::UserRef;
use crate::domain::{ImportKey, UserBatch};
use crate::store::BatchTarget;

/// `COPY` data goes to the server in messages of this size, encoded as they are sent: the
/// server starts on the first rows at once, and neither side holds the batch in another form.
const COPY_PIECE_BYTES: usize = 64 * 1024;
/// The start of a binary `COPY` stream: signature, flags, no header extension.
const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Fields per row of the `COPY` into users.
const COPY_FIELDS: i16 = 9;

/// Copies the users of `batch` at `users` (indexes). Any duplicate fails the whole `COPY`; it
/// then rolls back to its savepoint and returns `false`, and the caller inserts the users the
/// slower way that tolerates duplicates.
///
/// Only a unique violation falls back; any other error is returned, and fails the part. An empty
/// list copies nothing and succeeds. The column order here and in `encode_row` must match.
pub(super) async fn copy_users(
    conn: &mut PgConnection,
    target: &BatchTarget<'_>,
    batch: &UserBatch,
    users: &[usize],
) -> Result<bool, sqlx::Error> {
    if users.is_empty() {
        return Ok(true);
    }
    sqlx::query("SAVEPOINT copy_users")
        .execute(&mut *conn)
        .await?;
    let copied = async {
        let mut copy = conn
            .copy_in_raw(
                "COPY users (account_id, email, first_name, last_name, role, job_title, \
                 external_id, import_key, source_row) FROM STDIN (FORMAT binary)",
            )
            .await?;
        let mut data = Vec::with_capacity(COPY_PIECE_BYTES + 4 * 1024);
        data.extend_from_slice(COPY_BINARY_HEADER);
        let account = target.account_id.as_str();
        for &index in users {
            encode_row(&mut data, account, target.key, &batch.user(index));
            if data.len() >= COPY_PIECE_BYTES {
                copy.send(data.as_slice()).await?;
                data.clear();
            }
        }
        data.extend_from_slice(&(-1_i16).to_be_bytes());
        copy.send(data.as_slice()).await?;
        copy.finish().await
    }
    .await;
    match copied {
        Ok(_) => {
            sqlx::query("RELEASE SAVEPOINT copy_users")
                .execute(&mut *conn)
                .await?;
            Ok(true)
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            sqlx::query("ROLLBACK TO SAVEPOINT copy_users")
                .execute(&mut *conn)
                .await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// One user as a row of a binary `COPY`: the field count, then each field's length and bytes
/// (text as UTF-8, bigints big-endian, -1 for NULL).
///
/// Appends to `data`, in the nine columns of the `COPY` statement: account, email, the four text
/// fields, external id, import key, source row.
fn encode_row(data: &mut Vec<u8>, account: &str, import_key: ImportKey, user: &UserRef<'_>) {
    let text = |data: &mut Vec<u8>, value: &str| {
        // Record limits keep every value far below 2 GiB.
        data.extend_from_slice(&(value.len() as i32).to_be_bytes());
        data.extend_from_slice(value.as_bytes());
    };
    let bigint = |data: &mut Vec<u8>, value: i64| {
        data.extend_from_slice(&8_i32.to_be_bytes());
        data.extend_from_slice(&value.to_be_bytes());
    };
    data.extend_from_slice(&COPY_FIELDS.to_be_bytes());
    for value in [
        account,
        user.email,
        user.first_name,
        user.last_name,
        user.role.as_str(),
        user.job_title,
    ] {
        text(data, value);
    }
    match user.external_id {
        Some(id) => text(data, id),
        None => data.extend_from_slice(&(-1_i32).to_be_bytes()),
    }
    bigint(data, import_key);
    bigint(data, user.row_number as i64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;

    #[test]
    fn a_row_is_encoded_field_by_field() {
        let user = UserRef {
            row_number: 2,
            email: "a@x.io",
            email_as_written: "A@x.io",
            first_name: "Ada",
            last_name: "",
            role: Role::Admin,
            role_given: true,
            job_title: "",
            external_id: None,
        };
        let mut data = Vec::new();
        encode_row(&mut data, "acme", 7, &user);
        let mut expected = 9_i16.to_be_bytes().to_vec();
        for text in ["acme", "a@x.io", "Ada", "", "admin", ""] {
            expected.extend_from_slice(&(text.len() as i32).to_be_bytes());
            expected.extend_from_slice(text.as_bytes());
        }
        expected.extend_from_slice(&(-1_i32).to_be_bytes());
        for n in [7_i64, 2] {
            expected.extend_from_slice(&8_i32.to_be_bytes());
            expected.extend_from_slice(&n.to_be_bytes());
        }
        assert_eq!(data, expected);
    }
}
