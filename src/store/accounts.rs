//! Accounts by key: the users table holds a small integer for its account in place of the
//! account's text (migration 0018 on both backends), so that its unique indexes, which both
//! hold the account, compare and store an integer. Clients still name an account by its text:
//! an upload asks for its account's key once (`key`), and every other statement on `users`
//! that a client's account id selects reads the key by `key_of!`.

use super::steps::{Param, Steps};
use super::{AccountKey, StoreError};
use crate::domain::AccountId;

/// The account's row, made on its first use. `NOT EXISTS` before `ON CONFLICT`: PostgreSQL's
/// identity would spend a value on every conflicting insert, that is on every upload.
const ENSURE: &str = "INSERT INTO accounts (account_id) SELECT $1 \
    WHERE NOT EXISTS (SELECT 1 FROM accounts WHERE account_id = $1) ON CONFLICT DO NOTHING";

/// The account's key, as the 64-bit integer both backends' scalar reads decode.
const KEY: &str = "SELECT CAST(account_key AS BIGINT) FROM accounts WHERE account_id = $1";

/// The key of the account whose id is the statement's parameter `$p` (`"$1"`), for a
/// statement on `users`: read once per statement (an uncorrelated subquery), and the unique
/// indexes are then used as with a bound key.
macro_rules! key_of {
    ($p:literal) => {
        concat!(
            "(SELECT account_key FROM accounts WHERE account_id = ",
            $p,
            ")"
        )
    };
}
pub(crate) use key_of;

/// The key of `account`, its row made first if it has none yet. One write transaction: the
/// row is there for every later batch, whichever replica writes it.
pub(crate) async fn key<S: Steps + ?Sized>(
    steps: &mut S,
    account: &AccountId,
) -> Result<AccountKey, StoreError> {
    let id = [Param::Text(account.as_str())];
    steps.execute(ENSURE, &id).await?;
    let key = steps.count(KEY, &id).await?;
    i32::try_from(key)
        .map(AccountKey)
        .map_err(|_| StoreError::Corrupt(format!("account key {key} out of range")))
}
