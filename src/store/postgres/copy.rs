//! Binary `COPY`, PostgreSQL's fastest way in, for the two writes of a row each:
//!
//! - users, straight into the users table, which skips the per-row index probes of
//!   `ON CONFLICT`, inserts pages at a time, and leaves the server no text to parse. A `COPY`
//!   cannot skip a duplicate: the first one fails it whole. So it runs inside a savepoint of the
//!   part's transaction, and a duplicate rolls back to it, leaving the transaction usable for
//!   the slower insert that follows (`plain::insert_users`). Nothing of a failed `COPY` stays.
//! - a planned import's file keys, into its own table (`claims`). A dry run writes one per row
//!   of the file and nothing else, so this is its whole cost: as an `INSERT` over `unnest`
//!   arrays they took longer than a plain import's `COPY` of the users (a dry run of 50 MiB:
//!   2.6 s against 2.3 s). No savepoint: the plan never claims a value twice, so a unique
//!   violation is a bug or a race, and fails the transaction as the insert did
//!   (`tx::taken_meanwhile`).

use sqlx::PgConnection;

use crate::domain::batch::UserRef;
use crate::domain::{ImportKey, UserBatch};
use crate::store::claims;
use crate::store::plan::Claim;
use crate::store::{AccountKey, BatchTarget};

/// `COPY` data goes to the server in messages of this size, encoded as they are sent: the
/// server starts on the first rows at once, and neither side holds the batch in another form.
const COPY_PIECE_BYTES: usize = 64 * 1024;
/// The start of a binary `COPY` stream: signature, flags, no header extension.
const COPY_BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Fields per row of the `COPY` into users.
const COPY_FIELDS: i16 = 9;
/// Fields per row of the `COPY` into an import's file keys (`claims::copy`).
const CLAIM_FIELDS: i16 = 5;

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
                "COPY users (account_key, email, first_name, last_name, role, job_title, \
                 external_id, import_key, source_row) FROM STDIN (FORMAT binary)",
            )
            .await?;
        let mut data = Vec::with_capacity(COPY_PIECE_BYTES + 4 * 1024);
        data.extend_from_slice(COPY_BINARY_HEADER);
        for &index in users {
            encode_row(
                &mut data,
                target.account_key,
                target.key,
                &batch.user(index),
            );
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
/// (text as UTF-8, integers big-endian, -1 for NULL).
///
/// Appends to `data`, in the nine columns of the `COPY` statement: account key, email, the four
/// text fields, external id, import key, source row.
fn encode_row(data: &mut Vec<u8>, account: AccountKey, import_key: ImportKey, user: &UserRef<'_>) {
    data.extend_from_slice(&COPY_FIELDS.to_be_bytes());
    put_int(data, account.0);
    for value in [
        user.email,
        user.first_name,
        user.last_name,
        user.role.as_str(),
        user.job_title,
    ] {
        put_text(data, Some(value));
    }
    put_text(data, user.external_id);
    put_bigint(data, import_key);
    put_bigint(data, user.row_number as i64);
}

/// Copies `claims` into import `key`'s file keys table, in the plan's order. (Sorted by email,
/// the table's key, they took no less time: 50 MiB dry runs, three alternating pairs, 2.39 –
/// 2.69 s sorted against 2.26 – 2.63 s not.)
pub(super) async fn copy_claims(
    conn: &mut PgConnection,
    key: ImportKey,
    claims: &[Claim<'_>],
) -> Result<(), sqlx::Error> {
    if claims.is_empty() {
        return Ok(());
    }
    let mut copy = conn.copy_in_raw(claims::copy(key).as_str()).await?;
    let mut data = Vec::with_capacity(COPY_PIECE_BYTES + 4 * 1024);
    data.extend_from_slice(COPY_BINARY_HEADER);
    for claim in claims {
        encode_claim(&mut data, claim);
        if data.len() >= COPY_PIECE_BYTES {
            copy.send(data.as_slice()).await?;
            data.clear();
        }
    }
    data.extend_from_slice(&(-1_i16).to_be_bytes());
    copy.send(data.as_slice()).await?;
    copy.finish().await?;
    Ok(())
}

/// One file key as a row of a binary `COPY`, in the columns of `claims::copy`: generation,
/// email, external id, source row, released external id.
fn encode_claim(data: &mut Vec<u8>, claim: &Claim<'_>) {
    data.extend_from_slice(&CLAIM_FIELDS.to_be_bytes());
    put_bigint(data, claims::generation(claim.row_number));
    put_text(data, Some(claim.email));
    put_text(data, claim.external_id);
    put_bigint(data, claim.row_number as i64);
    put_text(data, claim.released_external_id);
}

/// A text field: its length and its UTF-8 bytes, or -1 for NULL.
fn put_text(data: &mut Vec<u8>, value: Option<&str>) {
    match value {
        // Record limits keep every value far below 2 GiB.
        Some(value) => {
            data.extend_from_slice(&(value.len() as i32).to_be_bytes());
            data.extend_from_slice(value.as_bytes());
        }
        None => data.extend_from_slice(&(-1_i32).to_be_bytes()),
    }
}

/// An integer field: its length, 4, and its value, big-endian.
fn put_int(data: &mut Vec<u8>, value: i32) {
    data.extend_from_slice(&4_i32.to_be_bytes());
    data.extend_from_slice(&value.to_be_bytes());
}

/// A bigint field: its length, 8, and its value, big-endian.
fn put_bigint(data: &mut Vec<u8>, value: i64) {
    data.extend_from_slice(&8_i32.to_be_bytes());
    data.extend_from_slice(&value.to_be_bytes());
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
        encode_row(&mut data, AccountKey(3), 7, &user);
        let mut expected = 9_i16.to_be_bytes().to_vec();
        expected.extend_from_slice(&4_i32.to_be_bytes());
        expected.extend_from_slice(&3_i32.to_be_bytes());
        for text in ["a@x.io", "Ada", "", "admin", ""] {
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

    #[test]
    fn a_file_key_is_encoded_field_by_field() {
        let claim = Claim {
            email: "a@x.io",
            external_id: None,
            row_number: 131_073,
            released_external_id: Some("E-1"),
        };
        let mut data = Vec::new();
        encode_claim(&mut data, &claim);
        let mut expected = 5_i16.to_be_bytes().to_vec();
        let bigint = |expected: &mut Vec<u8>, n: i64| {
            expected.extend_from_slice(&8_i32.to_be_bytes());
            expected.extend_from_slice(&n.to_be_bytes());
        };
        bigint(&mut expected, 1);
        expected.extend_from_slice(&6_i32.to_be_bytes());
        expected.extend_from_slice(b"a@x.io");
        expected.extend_from_slice(&(-1_i32).to_be_bytes());
        bigint(&mut expected, 131_073);
        expected.extend_from_slice(&3_i32.to_be_bytes());
        expected.extend_from_slice(b"E-1");
        assert_eq!(data, expected);
    }
}
