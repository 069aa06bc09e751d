//! The read queries, the same SQL on both backends (SQLite accepts `$1` placeholders too), so
//! that `GetImport`, `ListImports` and row error pages cannot differ between them; only the
//! column list differs, since each backend stores times its own way.
//!
//! Each query is generic over the sqlx database, with bounds that say only what it binds and
//! decodes; a backend calls it with its (reader) pool and its own column list. They are plain
//! reads on the pool, outside any write transaction: they see the last committed state, so a
//! running import shows the progress of its last committed batch.
//!
//! Pages are keyset pages (`after` a key, `LIMIT`): a page costs the same wherever it starts, and
//! rows written meanwhile neither shift nor repeat a page.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use super::accounts::key_of;
use super::codec::{ImportRow, RowErrorColumns, from_micros};
use super::{
    FailedCells, FeedRow, FeedState, ImportCursor, InvitedUser, StoreError, StoredEvent,
    StoredRowError, StoredUser, UserFilter,
};
use crate::domain::{AccountId, Import, ImportId, ImportKey, InvitationState, Role, UserEventKind};

/// One import by account and id (the unique key of `imports`); `None` when there is none.
/// `columns` is the backend's `IMPORT_COLUMNS`.
pub(crate) async fn get_import<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
    columns: &str,
    account_id: &AccountId,
    import_id: &ImportId,
) -> Result<Option<Import>, StoreError>
where
    for<'r> ImportRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    let sql = format!("SELECT {columns} FROM imports WHERE account_id = $1 AND import_id = $2");
    let row: Option<ImportRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(account_id.as_str())
        .bind(import_id.as_str())
        .fetch_optional(executor)
        .await?;
    row.map(Import::try_from).transpose()
}

/// The Imports list. `time_param` is how the backend writes a `create_time` from the cursor's
/// microseconds, bound as `$2`.
///
/// Newest first, ties by `import_id`, descending both, which the index on `(account_id,
/// create_time, import_id)` serves; the cursor compares as a row value, so a page starts exactly
/// after the last import of the one before.
pub(crate) async fn list_imports<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
    columns: &str,
    time_param: &str,
    account_id: &AccountId,
    after: Option<&ImportCursor>,
    limit: u32,
) -> Result<Vec<Import>, StoreError>
where
    for<'r> ImportRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    let order = "ORDER BY create_time DESC, import_id DESC";
    let rows: Vec<ImportRow> = match after {
        None => {
            let sql =
                format!("SELECT {columns} FROM imports WHERE account_id = $1 {order} LIMIT $2");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(account_id.as_str())
                .bind(i64::from(limit))
                .fetch_all(executor)
                .await?
        }
        Some(cursor) => {
            let sql = format!(
                "SELECT {columns} FROM imports WHERE account_id = $1 \
                 AND (create_time, import_id) < ({time_param}, $3) {order} LIMIT $4"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(account_id.as_str())
                .bind(cursor.create_micros)
                .bind(cursor.import_id.as_str())
                .bind(i64::from(limit))
                .fetch_all(executor)
                .await?
        }
    };
    rows.into_iter().map(Import::try_from).collect()
}

/// An import's stored row errors in file order (by `seq`), after `after` when given: `seq`
/// numbers errors from 0, so "none yet" binds as -1.
pub(crate) async fn list_row_errors<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
    key: ImportKey,
    after: Option<u64>,
    limit: u32,
) -> Result<Vec<StoredRowError>, StoreError>
where
    for<'r> RowErrorColumns: FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    let rows: Vec<RowErrorColumns> = sqlx::query_as(
        "SELECT seq, row_number, column_name, code, message, value FROM import_row_errors \
         WHERE import_key = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(key)
    .bind(after.map_or(-1, |s| s as i64))
    .bind(i64::from(limit))
    .fetch_all(executor)
    .await?;
    rows.into_iter().map(StoredRowError::try_from).collect()
}

/// A user as `list_users` and `user_events` select it (times in microseconds), made a
/// `StoredUser` by one rule (`UserRow::into_user`).
#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    email: String,
    first_name: String,
    last_name: String,
    role: String,
    job_title: String,
    external_id: Option<String>,
    /// The import that created the user (`user_events` has an `import_id` of its own).
    user_import_id: String,
    user_create_time: i64,
    user_update_time: i64,
    invitation_state: String,
    invite_time: Option<i64>,
    invitations_sent: i64,
}

impl UserRow {
    /// The user; `Corrupt`, naming `whose` row, for a role or state this build does not know.
    fn into_user(self, whose: impl Fn() -> String) -> Result<StoredUser, StoreError> {
        let corrupt = |what: String| StoreError::Corrupt(format!("{}: {what}", whose()));
        let role = Role::from_stored(&self.role)
            .ok_or_else(|| corrupt(format!("role '{}'", self.role)))?;
        let invitation_state = InvitationState::from_stored(&self.invitation_state)
            .ok_or_else(|| corrupt(format!("invitation state '{}'", self.invitation_state)))?;
        Ok(StoredUser {
            email: self.email,
            first_name: self.first_name,
            last_name: self.last_name,
            role,
            job_title: self.job_title,
            external_id: self.external_id,
            import_id: self.user_import_id,
            create_time: from_micros(self.user_create_time),
            update_time: from_micros(self.user_update_time),
            invitation_state,
            invite_time: self.invite_time.map(from_micros),
            invitations_sent: self.invitations_sent.clamp(0, i64::from(u32::MAX)) as u32,
        })
    }
}

/// How a statement reaches the columns of the import that created user `u`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Creator<'a> {
    /// Joined under this alias.
    Joined(&'a str),
    /// Not joined (an `UPDATE users`): read by a subquery on the user's `import_key`.
    OfUser(&'a str),
}

impl Creator<'_> {
    /// The creating import's `column`.
    fn column(self, column: &str) -> String {
        match self {
            Creator::Joined(i) => format!("{i}.{column}"),
            Creator::OfUser(u) => {
                format!("(SELECT c.{column} FROM imports c WHERE c.import_key = {u}.import_key)")
            }
        }
    }
}

/// User `u`'s invitation state, `i` reaching its creating import: its own once something
/// after the import's commit set it (`SendInvitations`, `AcceptInvitation`), else what the
/// import decided: SENT with SEND (its commit invited the user), HELD with HOLD. The one rule,
/// with `invitations_sent` and `invite_time`, for every read and every change of an
/// invitation, on both backends.
pub(crate) fn invitation_state(u: &str, i: Creator<'_>) -> String {
    format!(
        "coalesce({u}.invitation_state, \
         CASE WHEN {} = 'HOLD' THEN 'HELD' ELSE 'SENT' END)",
        i.column("invitations")
    )
}

/// The invitations user `u` was sent, by the same rule: 1 from a SEND import's commit.
pub(crate) fn invitations_sent(u: &str, i: Creator<'_>) -> String {
    format!(
        "CAST(coalesce({u}.invitations_sent, \
         CASE WHEN {} = 'HOLD' THEN 0 ELSE 1 END) AS BIGINT)",
        i.column("invitations")
    )
}

/// When user `u` was last invited, by the same rule: a SEND import's commit invited it when
/// the import completed; none while it is HELD.
pub(crate) fn invite_time(u: &str, i: Creator<'_>) -> String {
    format!(
        "coalesce({u}.invite_time, CASE WHEN {u}.invitation_state IS NULL \
         AND {} <> 'HOLD' THEN {} END)",
        i.column("invitations"),
        i.column("complete_time")
    )
}

/// The users of an account's completed imports, by email (byte order on both backends), as
/// committed: a user that an UPDATE import still running has changed shows the values it had
/// before that import (kept in the user's `old_*` columns to put back if it fails), until the
/// import completes. So no reader sees values that may yet be undone, as no reader sees the
/// users of an import still running. `micros` says how the backend reads a time column as
/// microseconds.
///
/// Absent filters and `after` are bound as sentinels (-1, the empty string), so that one
/// statement serves every page. A user never updated reads its create time as its update time.
pub(crate) async fn list_users<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
    micros: fn(&str) -> String,
    account_id: &AccountId,
    filter: UserFilter<'_>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<StoredUser>, StoreError>
where
    for<'r> UserRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    // `w` is the UPDATE import still running that changed the user, if one did: the values
    // from before it, in the row's `old_*` columns, are shown instead.
    let committed = |column: &str| {
        format!("CASE WHEN w.import_key IS NULL THEN u.{column} ELSE u.old_{column} END")
    };
    let creator = Creator::Joined("i");
    let state = invitation_state("u", creator);
    let sql = format!(
        "SELECT u.email, {first} AS first_name, {last} AS last_name, {role} AS role, \
         {title} AS job_title, {external_id} AS external_id, i.import_id AS user_import_id, \
         {created} AS user_create_time, {updated} AS user_update_time, \
         {state} AS invitation_state, {invited} AS invite_time, {sent} AS invitations_sent \
         FROM users u JOIN imports i ON i.import_key = u.import_key \
         LEFT JOIN imports w ON w.import_key = u.updated_by AND w.status = 'PROCESSING' \
         WHERE u.account_key = {account} AND u.email > $2 \
         AND ($3 < 0 OR u.import_key = $3) \
         AND ($5 = '' OR {state} = $5) AND ($6 = '' OR u.email = $6) \
         AND i.status IN ('COMPLETED_SUCCESS', 'COMPLETED_PARTIAL', \
                          'COMPLETED_NOTHING_TO_IMPORT') \
         ORDER BY u.email LIMIT $4",
        account = key_of!("$1"),
        first = committed("first_name"),
        last = committed("last_name"),
        role = committed("role"),
        title = committed("job_title"),
        external_id = committed("external_id"),
        created = micros("u.create_time"),
        updated = micros(&format!(
            "coalesce({}, u.create_time)",
            committed("update_time")
        )),
        // A SEND import's users were invited by its commit: its completion time.
        invited = micros(&invite_time("u", creator)),
        sent = invitations_sent("u", creator),
    );
    let rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(account_id.as_str())
        .bind(after.unwrap_or(""))
        .bind(filter.import.unwrap_or(-1))
        .bind(i64::from(limit))
        .bind(filter.state.map_or("", InvitationState::as_str))
        .bind(filter.email.unwrap_or(""))
        .fetch_all(executor)
        .await?;
    rows.into_iter()
        .map(|row| {
            let email = row.email.clone();
            row.into_user(|| format!("user {email}"))
        })
        .collect()
}

/// A failed row as `failed_rows` selects it: its number, its six cells, and its reasons.
type FailedColumns = (i64, String, String, String, String, String, String, String);

/// The failed rows of an import, in file order, after row `after` when given: every failed
/// row, each with its cells and reasons (see `failed`).
pub(crate) async fn failed_rows<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
    key: ImportKey,
    after: Option<u64>,
    limit: u32,
) -> Result<Vec<FailedCells>, StoreError>
where
    for<'r> FailedColumns: FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    let rows: Vec<FailedColumns> = sqlx::query_as(
        "SELECT row_number, email, first_name, last_name, role, job_title, external_id, errors \
         FROM import_failed_rows WHERE import_key = $1 AND row_number > $2 \
         ORDER BY row_number LIMIT $3",
    )
    .bind(key)
    .bind(after.map_or(-1, |r| r as i64))
    .bind(i64::from(limit))
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(row, email, first, last, role, title, external_id, errors)| FailedCells {
                row_number: row as u64,
                cells: [email, first, last, role, title, external_id],
                errors,
            },
        )
        .collect())
}

/// Imports whose details' removal a stopped server left under way, then finished imports whose
/// details are kept and that ended before their cut-off (microseconds since the epoch;
/// `None`: kept for ever, bound as the smallest time), dry runs by their own, oldest first. `time` turns a bound microsecond value (`$n`) into the backend's time, to
/// compare with `complete_time` (the index `imports_details_kept` serves the search).
pub(crate) async fn expired_details<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
    time: impl Fn(&str) -> String,
    imports: Option<i64>,
    dry_runs: Option<i64>,
    limit: u32,
) -> Result<Vec<ImportKey>, StoreError>
where
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    // Removals a stopped server left under way first, then expired imports, oldest first.
    let sql = format!(
        "SELECT import_key FROM imports WHERE details_left \
         UNION ALL \
         SELECT import_key FROM (SELECT import_key FROM imports \
             WHERE details_removed_time IS NULL AND complete_time IS NOT NULL \
               AND complete_time < CASE WHEN validate_only THEN {} ELSE {} END \
             ORDER BY complete_time LIMIT $3) AS expired \
         LIMIT $3",
        time("$2"),
        time("$1")
    );
    // Before any stored time: nothing is that old.
    let never = i64::MIN / 2;
    let keys: Vec<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(imports.unwrap_or(never))
        .bind(dry_runs.unwrap_or(never))
        .bind(i64::from(limit))
        .fetch_all(executor)
        .await?;
    Ok(keys.into_iter().map(|(key,)| key).collect())
}

/// An event row as `user_events` selects it (times in microseconds).
#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    seq: i64,
    account_id: String,
    import_id: String,
    r#type: String,
    #[sqlx(flatten)]
    user: UserRow,
    event_time: i64,
    import_key: Option<i64>,
}

/// The feed's rows after `after`, in order, at most `limit`; only `account`'s when given.
pub(crate) async fn user_events<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
    micros: fn(&str) -> String,
    account: Option<&AccountId>,
    after: i64,
    limit: u32,
) -> Result<Vec<FeedRow>, StoreError>
where
    for<'r> EventRow: FromRow<'r, DB::Row>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    let sql = format!(
        "SELECT seq, account_id, import_id, type, email, first_name, last_name, role, \
         job_title, external_id, user_import_id, {created} AS user_create_time, \
         {updated} AS user_update_time, invitation_state, {invited} AS invite_time, \
         invitations_sent, {at} AS event_time, import_key FROM user_events \
         WHERE seq > $1 AND ($2 = '' OR account_id = $2) ORDER BY seq LIMIT $3",
        created = micros("user_create_time"),
        updated = micros("user_update_time"),
        invited = micros("invite_time"),
        at = micros("event_time"),
    );
    let rows: Vec<EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(after)
        .bind(account.map_or("", AccountId::as_str))
        .bind(i64::from(limit))
        .fetch_all(executor)
        .await?;
    rows.into_iter()
        .map(|row| {
            let corrupt = |what: &str| StoreError::Corrupt(format!("event {}: {what}", row.seq));
            if row.r#type == "INVITED_AT_COMMIT" {
                return Ok(FeedRow::InvitedAtCommit {
                    seq: row.seq,
                    import_key: row.import_key.ok_or_else(|| corrupt("import_key"))?,
                    account_id: row.account_id,
                    import_id: row.import_id,
                    event_time: from_micros(row.event_time),
                });
            }
            let seq = row.seq;
            Ok(FeedRow::Event(StoredEvent {
                seq,
                kind: UserEventKind::from_stored(&row.r#type).ok_or_else(|| corrupt("type"))?,
                user: row.user.into_user(|| format!("event {seq}"))?,
                account_id: row.account_id,
                import_id: row.import_id,
                event_time: from_micros(row.event_time),
            }))
        })
        .collect()
}

/// A user an INVITED_AT_COMMIT row tells of, as `invited_at_commit` selects it.
type InvitedColumns = (
    i64,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
    i64,
);

/// The users import `key` created, after file row `after_row`, in file order, at most
/// `limit`: those still there, and those a revert removed since (from their REMOVED events).
/// Each with its row; the caller makes them INVITED as the commit left them.
pub(crate) async fn invited_at_commit<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
    micros: fn(&str) -> String,
    key: ImportKey,
    after_row: i64,
    limit: u32,
) -> Result<Vec<(i64, InvitedUser)>, StoreError>
where
    for<'r> InvitedColumns: FromRow<'r, DB::Row>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    let sql = format!(
        "SELECT source_row, email, first_name, last_name, role, job_title, external_id, c, m \
         FROM (SELECT u.source_row, u.email, u.first_name, u.last_name, u.role, u.job_title, \
         u.external_id, {created} AS c, {updated} AS m FROM users u \
         WHERE u.import_key = $1 AND u.source_row > $2 \
         UNION ALL SELECT e.source_row, e.email, e.first_name, e.last_name, e.role, \
         e.job_title, e.external_id, {removed_created} AS c, {removed_updated} AS m \
         FROM user_events e WHERE e.type = 'REMOVED' AND e.import_key = $1 \
         AND e.source_row > $2) x ORDER BY source_row LIMIT $3",
        created = micros("u.create_time"),
        updated = micros("coalesce(u.update_time, u.create_time)"),
        removed_created = micros("e.user_create_time"),
        removed_updated = micros("e.user_update_time"),
    );
    let rows: Vec<InvitedColumns> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(key)
        .bind(after_row)
        .bind(i64::from(limit))
        .fetch_all(executor)
        .await?;
    rows.into_iter()
        .map(
            |(row, email, first_name, last_name, role, job_title, external_id, c, m)| {
                let role = Role::from_stored(&role)
                    .ok_or_else(|| StoreError::Corrupt(format!("user {email}: role '{role}'")))?;
                Ok((
                    row,
                    InvitedUser {
                        email,
                        first_name,
                        last_name,
                        role,
                        job_title,
                        external_id,
                        create_time: from_micros(c),
                        update_time: from_micros(m),
                    },
                ))
            },
        )
        .collect()
}

/// The feed's name and bounds (`Store::feed_state`).
pub(crate) async fn feed_state<'c, DB: Database>(
    executor: impl Executor<'c, Database = DB>,
) -> Result<FeedState, StoreError>
where
    for<'r> (String, i64, i64): FromRow<'r, DB::Row>,
    for<'q> DB::Arguments: IntoArguments<DB>,
{
    let (feed, horizon, last): (String, i64, i64) = sqlx::query_as(
        "SELECT feed, seq, CAST(coalesce((SELECT max(seq) FROM user_events), seq) AS BIGINT) \
         FROM user_events_horizon WHERE id = 1",
    )
    .fetch_one(executor)
    .await?;
    Ok(FeedState {
        feed,
        horizon,
        last,
    })
}
