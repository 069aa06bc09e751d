//! Who calls, and in which accounts they may act: what a bearer token grants, or, on a server
//! that runs open (no tokens file), everyone everywhere.

use std::collections::HashSet;
use std::sync::Arc;

use super::AccountId;

/// Who calls: a token's holder, or anyone on an open server. `auth` makes one per token of
/// the tokens file, and each call gets the one its bearer token names. Cheap to clone: the
/// name and the accounts are shared, and every `Scope` holds a clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, recorded on the imports it starts (`created_by`) and in the audit
    /// log; empty on an open server.
    name: Arc<str>,
    /// Where it may act.
    accounts: Accounts,
}

/// The accounts a caller may act in.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Accounts {
    /// Every account: an open server, or a token whose accounts list `*`.
    All,
    /// These account ids, compared exactly, as `AccountId` holds them.
    Only(Arc<HashSet<String>>),
}

impl Caller {
    /// Anyone, on a server without tokens.
    pub fn open() -> Self {
        Self {
            name: Arc::from(""),
            accounts: Accounts::All,
        }
    }

    /// The holder of the token `name`, for `accounts`. An entry that is exactly `*` means every
    /// account, whatever the other entries say; any other entry is an account id, compared
    /// exactly (no patterns).
    pub fn token(name: &str, accounts: &[String]) -> Self {
        let accounts = if accounts.iter().any(|a| a == "*") {
            Accounts::All
        } else {
            Accounts::Only(Arc::new(accounts.iter().cloned().collect()))
        };
        Self {
            name: Arc::from(name),
            accounts,
        }
    }

    /// The token's name; empty on an open server.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The accounts the caller may act in, sorted; `None` for every account.
    pub fn accounts(&self) -> Option<Vec<&str>> {
        match &self.accounts {
            Accounts::All => None,
            Accounts::Only(accounts) => {
                let mut list: Vec<&str> = accounts.iter().map(String::as_str).collect();
                list.sort_unstable();
                Some(list)
            }
        }
    }

    /// Whether the caller may act in `account`.
    pub fn may_act_in(&self, account: &AccountId) -> bool {
        match &self.accounts {
            Accounts::All => true,
            Accounts::Only(accounts) => accounts.contains(account.as_str()),
        }
    }

    /// The caller's right to act in `account`, checked: `Err` gives the account back when the
    /// caller may not act there.
    pub fn scope(&self, account: AccountId) -> Result<Scope, AccountId> {
        if self.may_act_in(&account) {
            Ok(Scope {
                caller: self.clone(),
                account,
            })
        } else {
            Err(account)
        }
    }
}

/// A caller and an account it may act in, checked. The import layer takes an account only as
/// a `Scope`, and a `Scope` is only made by [`Caller::scope`]: no request can reach an account
/// without the check, however its handler is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Who acts.
    caller: Caller,
    /// Where: an account `caller` was found to be allowed in when the scope was made.
    account: AccountId,
}

impl Scope {
    /// Who acts.
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Where: an account the caller may act in.
    pub fn account_id(&self) -> &AccountId {
        &self.account
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_acts_in_its_accounts_only() {
        let acme = AccountId::parse("acme").unwrap();
        let other = AccountId::parse("other").unwrap();
        let scoped = Caller::token("hr-sync", &["acme".to_owned()]);
        assert!(scoped.may_act_in(&acme));
        assert!(!scoped.may_act_in(&other));
        assert!(Caller::token("ops", &["*".to_owned()]).may_act_in(&other));
        assert!(Caller::open().may_act_in(&other));
        assert_eq!(Caller::open().name(), "");
        let scope = scoped.scope(acme.clone()).unwrap();
        assert_eq!(scope.account_id(), &acme);
        assert_eq!(scope.caller().name(), "hr-sync");
        assert_eq!(scoped.scope(other.clone()), Err(other));
    }
}
