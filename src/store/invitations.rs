//! `SendInvitations` and `AcceptInvitation` as both stores write them, in one transaction.
//!
//! A user's invitation state is its own once set here, else its creating import's decision
//! (`queries::invitation_state`). Setting it here writes the three columns at once (state,
//! last invitation time, count), each from the user's effective values, so that a user's
//! reads never mix the two sources. Only the users of completed imports are touched: those of
//! an import still running are not visible yet, and a failed import kept none.
//!
//! The count an import shows (`users_invited`) moves here for the users it held and this call
//! invites (HELD to SENT); a resend changes a user's count, not the import's.

use std::sync::LazyLock;

use super::StoreError;
use super::accounts::key_of;
use super::queries::{Creator, invitation_state, invitations_sent, invite_time};
use super::steps::{Dialect, Param, Steps};
use crate::domain::{AccountId, ImportKey};

/// Who `send` invites: one import's users, one address, or that address among one import's.
#[derive(Debug, Clone, Copy)]
pub struct Invitees<'a> {
    /// Only the users this import created.
    pub import: Option<ImportKey>,
    /// Only the user with this stored address (a mailbox key).
    pub email: Option<&'a str>,
}

/// Invites the HELD users `who` names (with `resend`, the SENT ones again), now; how many.
pub(crate) async fn send<S: Steps + ?Sized>(
    steps: &mut S,
    account_id: &AccountId,
    who: Invitees<'_>,
    resend: bool,
) -> Result<u64, StoreError> {
    let statements = Statements::of(steps.dialect());
    let params = [
        Param::Text(account_id.as_str()),
        Param::Int(who.import.unwrap_or(-1)),
        Param::Text(who.email.unwrap_or("")),
    ];
    // The imports' counts and the feed's events first, while the users are still HELD.
    steps.execute(&statements.count_held, &params).await?;
    super::events::invitations(steps, &params, resend).await?;
    let sql = if resend {
        &statements.send_again
    } else {
        &statements.send_held
    };
    steps.execute(sql, &params).await
}

/// Records that the user with this address accepted: SENT becomes ACCEPTED, told to the feed
/// once; ACCEPTED already is fine and tells nothing again. `false`, with nothing changed, when
/// the user is not there or in another state.
pub(crate) async fn accept<S: Steps + ?Sized>(
    steps: &mut S,
    account_id: &AccountId,
    email: &str,
) -> Result<bool, StoreError> {
    let statements = Statements::of(steps.dialect());
    let params = [Param::Text(account_id.as_str()), Param::Text(email)];
    if steps.execute(&statements.accept, &params).await? == 1 {
        super::events::accepted(steps, &params).await?;
        return Ok(true);
    }
    // Accepted before: fine, and nothing changed, so nothing to tell the feed.
    Ok(steps.count(&statements.accepted_before, &params).await? == 1)
}

/// The statements, built once per dialect from the shared rule.
struct Statements {
    count_held: String,
    send_held: String,
    send_again: String,
    accept: String,
    accepted_before: String,
}

/// The users `send` chooses, as the table or alias `$users`: the account's (`$1`), of import
/// `$2` (-1 for any), with address `$3` ('' for any). The one statement of the rule, for the
/// updates here and for their events (`events::scope`); each adds that the user's import
/// completed, its own way.
macro_rules! chosen {
    ($users:literal) => {
        concat!(
            $users,
            ".account_key = ",
            $crate::store::accounts::key_of!("$1"),
            " AND ($2 < 0 OR ",
            $users,
            ".import_key = $2) AND ($3 = '' OR ",
            $users,
            ".email = $3)"
        )
    };
}
pub(crate) use chosen;

/// `users` rows in scope: those `chosen`, of completed imports.
const IN_SCOPE: &str = concat!(
    chosen!("users"),
    " AND users.import_key IN (SELECT import_key FROM imports \
    WHERE account_id = $1 AND status IN ('COMPLETED_SUCCESS', 'COMPLETED_PARTIAL'))"
);

impl Statements {
    fn of(dialect: Dialect) -> &'static Statements {
        static SQLITE: LazyLock<Statements> = LazyLock::new(|| Statements::new(Dialect::Sqlite));
        static POSTGRES: LazyLock<Statements> =
            LazyLock::new(|| Statements::new(Dialect::Postgres));
        dialect.pick(&SQLITE, &POSTGRES)
    }

    fn new(dialect: Dialect) -> Self {
        // The user's effective values, read through its creating import (the one rule).
        let creator = Creator::OfUser("users");
        let state = invitation_state("users", creator);
        let sent = invitations_sent("users", creator);
        let invited = invite_time("users", creator);
        let now = dialect.now();
        let account = key_of!("$1");
        let invite = |states: &str| {
            format!(
                "UPDATE users SET invitation_state = 'SENT', invite_time = {now}, \
                 invitations_sent = {sent} + 1 WHERE {IN_SCOPE} AND {state} IN ({states})"
            )
        };
        Statements {
            count_held: format!(
                "UPDATE imports SET invited_later = invited_later + (SELECT count(*) FROM users \
                 WHERE users.import_key = imports.import_key AND {IN_SCOPE} \
                 AND {state} = 'HELD') \
                 WHERE account_id = $1 AND ($2 < 0 OR import_key = $2) \
                 AND invitations = 'HOLD' AND status IN ('COMPLETED_SUCCESS', 'COMPLETED_PARTIAL')"
            ),
            send_held: invite("'HELD'"),
            send_again: invite("'HELD', 'SENT'"),
            accept: format!(
                "UPDATE users SET invitation_state = 'ACCEPTED', invite_time = {invited}, \
                 invitations_sent = {sent} WHERE users.account_key = {account} \
                 AND users.email = $2 \
                 AND users.import_key IN (SELECT import_key FROM imports WHERE account_id = $1 \
                 AND status IN ('COMPLETED_SUCCESS', 'COMPLETED_PARTIAL')) \
                 AND {state} = 'SENT'"
            ),
            accepted_before: concat!(
                "SELECT count(*) FROM users WHERE users.account_key = ",
                key_of!("$1"),
                " AND users.email = $2 AND users.invitation_state = 'ACCEPTED'"
            )
            .to_owned(),
        }
    }
}
