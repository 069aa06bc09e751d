//! The user event feed's writes, as both stores make them: each in the transaction of the
//! change it tells of (a transactional outbox), with the user as the change left it.
//!
//! Order: a flow takes the feed's turn (`Steps::events_turn`) before its first event and holds
//! it to its commit. On PostgreSQL that is an advisory lock of the transaction, so that
//! transactions that write events commit one after the other and a `seq` drawn later never
//! commits before one drawn earlier: a follower that read up to `seq` N has missed nothing
//! below it. SQLite's one writer gives that order already. The turn is taken late, just
//! before the events, so that transactions wait for each other only for that moment.
//!
//! What is written: one INVITED_AT_COMMIT row at a SEND import's commit, which the feed reads
//! as an INVITED event per user the import created (one row per user there doubled the time
//! of a plain import: 2.94 s to 5.88 s for 788,126 rows on SQLite); UPDATED for each user an
//! UPDATE import changed, at its commit; INVITED or INVITATION_RESENT for each
//! user `SendInvitations` invites; INVITATION_ACCEPTED; REMOVED for each user a revert
//! removes, before it goes. A HELD user enters the feed with its INVITED event: until then
//! its updates and its removal tell nothing, since a follower never heard of it.

use std::sync::LazyLock;

use super::StoreError;
use super::accounts::key_of;
use super::invitations::chosen;
use super::queries::{Creator, invitation_state, invitations_sent, invite_time};
use super::steps::{Dialect, Param, Steps};
use crate::domain::ImportKey;

/// The columns of an event, in the order every statement here fills them.
const COLUMNS: &str = "account_id, import_id, type, email, first_name, last_name, role, \
    job_title, external_id, user_import_id, user_create_time, user_update_time, \
    invitation_state, invite_time, invitations_sent, event_time, import_key, source_row";

/// What a statement writes for each user `u` (created by import `i`): the event's import and
/// type, and the user's invitation as the change leaves it.
struct Told {
    import_id: &'static str,
    kind: &'static str,
    state: String,
    invite_time: String,
    sent: String,
    /// Kept for REMOVED only: the creating import and the file row, which the feed's reading
    /// of an INVITED_AT_COMMIT row needs once the user is gone.
    origin: bool,
}

/// Where a statement's users `u` come from, and the column that gives their address order.
struct Source {
    from: &'static str,
    order: &'static str,
}

/// Every user, as `u`. The UPDATED events of an import find its users by `updated_by` through
/// their partial index (`users_updated_by`), not by a read of every user of every account.
const USERS: Source = Source {
    from: "users u",
    order: "u.email",
};

/// `INSERT ... SELECT` of one event per user `u` of `source` that `filter` keeps, in address
/// order.
fn insert(dialect: Dialect, told: Told, source: Source, filter: &str) -> String {
    let Source { from, order } = source;
    let Told {
        import_id,
        kind,
        state,
        invite_time,
        sent,
        origin,
    } = told;
    let now = dialect.now();
    let origin = if origin {
        "u.import_key, u.source_row"
    } else {
        "NULL, NULL"
    };
    format!(
        "INSERT INTO user_events ({COLUMNS}) \
         SELECT i.account_id, {import_id}, '{kind}', u.email, u.first_name, u.last_name, \
         u.role, u.job_title, u.external_id, i.import_id, u.create_time, \
         coalesce(u.update_time, u.create_time), {state}, {invite_time}, {sent}, {now}, \
         {origin} FROM {from} JOIN imports i ON i.import_key = u.import_key \
         WHERE {filter} ORDER BY {order}"
    )
}

/// The user's invitation as stored (its own, else its import's decision).
fn as_stored() -> (String, String, String) {
    let creator = Creator::Joined("i");
    (
        invitation_state("u", creator),
        invite_time("u", creator),
        invitations_sent("u", creator),
    )
}

/// The statements, built once per dialect.
struct Statements {
    invited_at_commit: String,
    updated_at_commit: String,
    invited: String,
    resent: String,
    accepted: String,
    removed: String,
    /// $1: a time in microseconds, $2: how many. The oldest events before it.
    horizon: String,
    remove_old: String,
}

impl Statements {
    fn of(dialect: Dialect) -> &'static Statements {
        static SQLITE: LazyLock<Statements> = LazyLock::new(|| Statements::new(Dialect::Sqlite));
        static POSTGRES: LazyLock<Statements> =
            LazyLock::new(|| Statements::new(Dialect::Postgres));
        dialect.pick(&SQLITE, &POSTGRES)
    }

    fn new(dialect: Dialect) -> Self {
        let stored = || {
            let (state, invite_time, sent) = as_stored();
            (state, invite_time, sent)
        };
        let told = |import_id, kind, (state, invite_time, sent): (String, String, String)| Told {
            import_id,
            kind,
            state,
            invite_time,
            sent,
            origin: kind == "REMOVED",
        };
        let now = dialect.now().to_owned();
        let (_, _, sent) = stored();
        // The oldest events written before $1, at most $2.
        let before = match dialect {
            Dialect::Sqlite => "$1",
            Dialect::Postgres => "to_timestamp($1::bigint / 1000000.0)",
        };
        // Not past what a relay that ran within the retention has yet to publish
        // (`relay`): NATS away for longer than --event-retention loses nothing.
        let relayed = "(SELECT CASE WHEN r.epoch = 0 OR r.lease_until < $1 \
             THEN 9223372036854775807 WHEN r.at_row IS NULL THEN r.at_seq + 1 ELSE r.at_seq END \
             FROM user_events_relay r WHERE r.id = 1)";
        let oldest = format!(
            "SELECT seq FROM user_events WHERE event_time < {before} AND seq < {relayed} \
             ORDER BY seq LIMIT $2"
        );
        Statements {
            // $1: the import that committed (SEND, not a dry run: checked by the caller). One
            // row; the user columns are empty.
            invited_at_commit: format!(
                "INSERT INTO user_events ({COLUMNS}) SELECT account_id, import_id, \
                 'INVITED_AT_COMMIT', '', '', '', '', '', NULL, import_id, {now}, {now}, 'SENT', \
                 NULL, 0, {now}, import_key, NULL FROM imports WHERE import_key = $1"
            ),
            updated_at_commit: insert(
                dialect,
                told(
                    "(SELECT w.import_id FROM imports w WHERE w.import_key = $1)",
                    "UPDATED",
                    stored(),
                ),
                USERS,
                &format!(
                    "u.updated_by = $1 AND u.import_key <> $1 AND {} <> 'HELD'",
                    stored().0
                ),
            ),
            // $1 account, $2 import key or -1, $3 address or '': as `invitations::send`, before
            // its update, with the values it writes.
            invited: insert(
                dialect,
                told(
                    "i.import_id",
                    "INVITED",
                    ("'SENT'".to_owned(), now.clone(), format!("{sent} + 1")),
                ),
                USERS,
                &format!("{} AND {} = 'HELD'", scope(), stored().0),
            ),
            resent: insert(
                dialect,
                told(
                    "i.import_id",
                    "INVITATION_RESENT",
                    ("'SENT'".to_owned(), now, format!("{sent} + 1")),
                ),
                USERS,
                &format!("{} AND {} = 'SENT'", scope(), stored().0),
            ),
            // $1 account, $2 address: after `invitations::accept` changed it.
            accepted: insert(
                dialect,
                told("i.import_id", "INVITATION_ACCEPTED", stored()),
                USERS,
                concat!("u.account_key = ", key_of!("$1"), " AND u.email = $2"),
            ),
            // $1: the import reverted; the users `delete_reverted` is about to remove.
            removed: insert(
                dialect,
                told("i.import_id", "REMOVED", stored()),
                USERS,
                &format!(
                    "u.import_key = $1 AND (u.updated_by IS NULL OR u.updated_by = $1) \
                     AND coalesce(u.invitation_state, '') <> 'ACCEPTED' AND {} <> 'HELD'",
                    stored().0
                ),
            ),
            horizon: format!(
                "UPDATE user_events_horizon SET seq = (SELECT max(m) FROM (SELECT seq AS m \
                 FROM user_events_horizon UNION ALL SELECT seq FROM ({oldest}) o) h) WHERE id = 1"
            ),
            remove_old: format!("DELETE FROM user_events WHERE seq IN ({oldest})"),
        }
    }
}

/// `invitations::send`'s users in scope, as `u` (`invitations::chosen`), their import `i`
/// completed.
fn scope() -> &'static str {
    concat!(
        chosen!("u"),
        " AND i.status IN ('COMPLETED_SUCCESS', 'COMPLETED_PARTIAL')"
    )
}

/// The events of import `key`'s commit: INVITED for the `invited` users it created when it
/// invites them, UPDATED for the users it changed.
pub(crate) async fn at_commit<S: Steps + ?Sized>(
    steps: &mut S,
    key: ImportKey,
    invited: Option<u64>,
) -> Result<(), StoreError> {
    let statements = Statements::of(steps.dialect());
    steps.events_turn().await?;
    if let Some(users) = invited {
        steps
            .execute(&statements.invited_at_commit, &[Param::Int(key)])
            .await?;
        steps.told(users);
    }
    let updated = steps
        .execute(&statements.updated_at_commit, &[Param::Int(key)])
        .await?;
    steps.told(updated);
    Ok(())
}

/// The events of a `SendInvitations` step, before its update: `params` as its.
pub(crate) async fn invitations<S: Steps + ?Sized>(
    steps: &mut S,
    params: &[Param<'_>],
    resend: bool,
) -> Result<(), StoreError> {
    let statements = Statements::of(steps.dialect());
    steps.events_turn().await?;
    let invited = steps.execute(&statements.invited, params).await?;
    steps.told(invited);
    if resend {
        let resent = steps.execute(&statements.resent, params).await?;
        steps.told(resent);
    }
    Ok(())
}

/// The event of an accepted invitation, after the change.
pub(crate) async fn accepted<S: Steps + ?Sized>(
    steps: &mut S,
    params: &[Param<'_>],
) -> Result<(), StoreError> {
    let statements = Statements::of(steps.dialect());
    steps.events_turn().await?;
    let accepted = steps.execute(&statements.accepted, params).await?;
    steps.told(accepted);
    Ok(())
}

/// The events of a revert, before it removes the users.
pub(crate) async fn removed<S: Steps + ?Sized>(
    steps: &mut S,
    key: ImportKey,
) -> Result<(), StoreError> {
    let statements = Statements::of(steps.dialect());
    steps.events_turn().await?;
    let removed = steps
        .execute(&statements.removed, &[Param::Int(key)])
        .await?;
    steps.told(removed);
    Ok(())
}

/// Removes at most `rows` of the oldest events written before `before` (microseconds since
/// the Unix epoch), and moves the feed's horizon past them, in one transaction; how many.
/// `None`, with nothing removed, when another replica has the clean-up's turn.
pub(crate) async fn remove_old<S: Steps + ?Sized>(
    steps: &mut S,
    before: i64,
    rows: u32,
) -> Result<Option<u64>, StoreError> {
    if !steps.retention_turn().await? {
        return Ok(None);
    }
    let statements = Statements::of(steps.dialect());
    let params = [Param::Int(before), Param::Int(i64::from(rows.max(1)))];
    // The horizon first, from the very rows that go.
    steps.execute(&statements.horizon, &params).await?;
    Ok(Some(steps.execute(&statements.remove_old, &params).await?))
}
