//! Email keys of stored users brought to today's form, once per change of the rule, when a
//! server first starts on a database that has rows keyed by an older rule (`domain::email`):
//!
//! - `email_keys_idna_nfc`: domains keyed in IDNA form and local parts in NFC. Before it
//!   `anna@bücher.example` and `anna@xn--bcher-kva.example` could be two users;
//! - `email_keys_casefold`: local parts case-folded instead of lower-cased. Before it `ΣΣ@x.gr`
//!   (kept as `σς@x.gr`, the final-sigma rule) and `σσ@x.gr` could be two users.
//!
//! After them each mailbox is one key, and new rows are compared against that key. The loop
//! applies today's rule, so one run covers every rule it has not run for yet.
//!
//! Only addresses with a non-ASCII character can change. When two old rows now have one key,
//! the older keeps it and the other is left as it was, with a warning that names both: one of
//! them has to be removed by a person, who knows which is the real one.
//!
//! The loop is written once; each store runs it in one transaction at start, after its
//! migrations, with its own SQL for the few steps (`Steps::non_ascii_emails`,
//! `MOVE_EMAIL`). Replicas that start together: the first to claim the migration does
//! it, the others wait for its commit and then find it claimed.

use super::StoreError;
use super::accounts::key_of;
use super::steps::{Param, Steps};

/// Its names in `data_migrations`, one per change of the key rule: a database that has not seen
/// one of them gets the loop once more.
const NAMES: [&str; 2] = ["email_keys_idna_nfc", "email_keys_casefold"];

/// Claims the migration: a second claim changes nothing.
///
/// 0 rows changed means another start already did it (or is doing it, and this one waited for its
/// commit): nothing else runs.
const CLAIM: &str = "INSERT INTO data_migrations (name) VALUES ($1) ON CONFLICT DO NOTHING";

/// A user's address to its new key (`$1`), unless another user of the account has that key.
///
/// The `NOT EXISTS` keeps the unique index from failing the whole start-up: 0 rows changed is a
/// clash, logged and counted, and the row keeps its old key.
const MOVE_EMAIL: &str = concat!(
    "UPDATE users SET email = $1 WHERE account_key = ",
    key_of!("$2"),
    " AND email = $3 AND NOT EXISTS (SELECT 1 FROM users WHERE account_key = ",
    key_of!("$2"),
    " AND email = $1)"
);

/// What the migration did.
///
/// Logged once at start (`log`); nothing else reads it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rekeyed {
    /// Rows whose key changed.
    pub changed: u64,
    /// Rows whose new key another row already had.
    pub clashes: u64,
}

impl Rekeyed {
    /// One info line when the migration changed or met anything; silent on every later start, and
    /// on a database that had no old keys.
    pub(crate) fn log(&self) {
        if self.changed > 0 || self.clashes > 0 {
            tracing::info!(
                changed = self.changed,
                clashes = self.clashes,
                "email keys brought to their IDNA and NFC form"
            );
        }
    }
}

/// Brings every old key to today's form, once per database.
///
/// Runs in the store's start-up transaction, after the migrations; an error fails the start, and
/// the claim is rolled back with the rest, so the next start tries again. Addresses already in
/// today's form, or that no longer parse (`domain::email::rekeyed` gives `None`), are left alone.
pub(crate) async fn rekey<S: Steps + ?Sized>(steps: &mut S) -> Result<Rekeyed, StoreError> {
    let mut done = Rekeyed::default();
    let mut claimed = 0;
    for name in NAMES {
        claimed += steps.execute(CLAIM, &[Param::Text(name)]).await?;
    }
    if claimed == 0 {
        return Ok(done);
    }
    for (account_id, old) in steps.non_ascii_emails().await? {
        let Some(new) = crate::domain::email::rekeyed(&old) else {
            continue;
        };
        let params = [
            Param::Text(&new),
            Param::Text(&account_id),
            Param::Text(&old),
        ];
        if steps.execute(MOVE_EMAIL, &params).await? > 0 {
            done.changed += 1;
        } else {
            clash(&account_id, &old, &new);
            done.clashes += 1;
        }
    }
    Ok(done)
}

/// Logs a row that could not take its new key.
///
/// A warning, not an error: the service runs on, but a person has to pick which of the two users
/// is the real one and remove the other.
fn clash(account_id: &str, old: &str, new: &str) {
    tracing::warn!(
        account_id,
        email = old,
        key = new,
        "two users are one mailbox; this one keeps its old key: remove one of them"
    );
}
