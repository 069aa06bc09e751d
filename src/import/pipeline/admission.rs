//! Limits on uploads running at once, per server and per account, applied before an import
//! is created: one client, or one account's clients, cannot take the server's uploads from
//! everyone else, and a refused upload leaves nothing behind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::AccountId;
use crate::import::error::ImportError;

#[derive(Clone)]
pub struct Admission {
    server: Arc<Semaphore>,
    max_server: usize,
    accounts: Arc<Mutex<HashMap<String, usize>>>,
    max_per_account: usize,
}

/// An admitted upload's place; given back when dropped.
pub struct Admitted {
    _server: OwnedSemaphorePermit,
    accounts: Arc<Mutex<HashMap<String, usize>>>,
    account: String,
}

impl Admission {
    pub fn new(max_server: usize, max_per_account: usize) -> Self {
        Self {
            server: Arc::new(Semaphore::new(max_server.max(1))),
            max_server: max_server.max(1),
            accounts: Arc::default(),
            max_per_account: max_per_account.max(1),
        }
    }

    /// A place for an upload into `account`, or RESOURCE_EXHAUSTED naming the limit.
    pub(super) fn admit(&self, account: &AccountId) -> Result<Admitted, ImportError> {
        let server = self.server.clone().try_acquire_owned().map_err(|_| {
            ImportError::LimitReached(format!(
                "this server already runs {} uploads, its limit \
                 (--max-concurrent-uploads); retry later",
                self.max_server
            ))
        })?;
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let running = accounts.entry(account.as_str().to_owned()).or_default();
        if *running >= self.max_per_account {
            return Err(ImportError::LimitReached(format!(
                "account '{account}' already has {} uploads running on this server, its limit \
                 (--max-concurrent-uploads-per-account); retry later",
                self.max_per_account
            )));
        }
        *running += 1;
        Ok(Admitted {
            _server: server,
            accounts: self.accounts.clone(),
            account: account.as_str().to_owned(),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = accounts.get_mut(&self.account) {
            *running -= 1;
            if *running == 0 {
                accounts.remove(&self.account);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_limits_hold_and_places_come_back() {
        let admission = Admission::new(3, 2);
        let a = AccountId::parse("a").unwrap();
        let b = AccountId::parse("b").unwrap();
        let first = admission.admit(&a).unwrap();
        let _second = admission.admit(&a).unwrap();
        let refused = admission.admit(&a).err().unwrap().to_string();
        assert!(refused.contains("per-account"), "{refused}");
        let _third = admission.admit(&b).unwrap();
        let refused = admission.admit(&b).err().unwrap().to_string();
        assert!(refused.contains("--max-concurrent-uploads)"), "{refused}");
        drop(first);
        admission.admit(&a).unwrap();
    }
}
