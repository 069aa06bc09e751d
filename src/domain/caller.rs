//! Who calls, and in which accounts they may act: what a bearer token grants, or, on a server
//! that runs open (no tokens file), everyone everywhere.

use std::collections::HashSet;
use std::sync::Arc;

use super::AccountId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, recorded on the imports it starts (`created_by`) and in the audit
    /// log; empty on an open server.
    name: Arc<str>,
    accounts: Accounts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Accounts {
    All,
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

    /// The holder of the token `name`, for `accounts` (`*` alone means every account).
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

    pub fn may_act_in(&self, account: &AccountId) -> bool {
        match &self.accounts {
            Accounts::All => true,
            Accounts::Only(accounts) => accounts.contains(account.as_str()),
        }
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
    }
}
