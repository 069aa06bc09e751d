//! Limits on uploads running at once, and on `WatchImport` streams open at once, per server
//! and per account, applied before anything is created: one client, or one account's clients,
//! cannot take the server's uploads or watchers from everyone else, and a refused upload
//! leaves nothing behind.
//!
//! Both limits are per server: with several replicas each counts its own uploads. A place is
//! tried, never waited for: a full server answers RESOURCE_EXHAUSTED at once, so that the client
//! retries later (or elsewhere) rather than holding a stream open in a queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::AccountId;
use crate::import::error::ImportError;

/// What an `Admission` counts: the words and flags its refusals name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Uploads running (`--max-concurrent-uploads`, `--max-concurrent-uploads-per-account`).
    Uploads,
    /// `WatchImport` streams open (`--max-watchers`, `--max-watchers-per-account`).
    Watchers,
}

impl Kind {
    /// What a refusal names: the thing counted, its server flag, its account flag, and what
    /// to do instead.
    fn words(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Kind::Uploads => (
                "uploads running",
                "--max-concurrent-uploads",
                "--max-concurrent-uploads-per-account",
                "retry later",
            ),
            Kind::Watchers => (
                "watch streams open (WatchImport, WatchUserEvents)",
                "--max-watchers",
                "--max-watchers-per-account",
                "retry later, or poll GetImport",
            ),
        }
    }
}

/// The places for uploads, or for watchers, on this server. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    /// What is counted, for the refusals' words.
    kind: Kind,
    /// One permit per upload the server may run.
    server: Arc<Semaphore>,
    /// The server's limit, for the message.
    max_server: usize,
    /// Uploads running, by account; an account with none has no entry.
    accounts: Arc<Mutex<HashMap<String, usize>>>,
    /// The limit per account.
    max_per_account: usize,
}

/// An admitted upload's (or watcher's) place; given back when dropped.
pub struct Admitted {
    /// The server's place, given back with the permit.
    _server: OwnedSemaphorePermit,
    /// The account counts, to give the account's place back.
    accounts: Arc<Mutex<HashMap<String, usize>>>,
    /// The account the place was taken for.
    account: String,
}

impl Admission {
    /// Places for `max_server` uploads, at most `max_per_account` per account; a limit of 0
    /// counts as 1.
    pub fn new(kind: Kind, max_server: usize, max_per_account: usize) -> Self {
        Self {
            kind,
            server: Arc::new(Semaphore::new(max_server.max(1))),
            max_server: max_server.max(1),
            accounts: Arc::default(),
            max_per_account: max_per_account.max(1),
        }
    }

    /// A place for an upload into `account`, or RESOURCE_EXHAUSTED naming the limit. The
    /// upload holds the place until it has ended, its ending stored or kept.
    pub fn admit(&self, account: &AccountId) -> Result<Admitted, ImportError> {
        self.admit_key(account.as_str())
    }

    /// `admit`, counted under `key`: an account id, or `*` for a follower of every account
    /// its token allows (`WatchUserEvents`).
    pub fn admit_key(&self, account: &str) -> Result<Admitted, ImportError> {
        let (what, server_flag, account_flag, instead) = self.kind.words();
        let server = self.server.clone().try_acquire_owned().map_err(|_| {
            ImportError::LimitReached(format!(
                "this server already has {} {what}, its limit ({server_flag}); {instead}",
                self.max_server
            ))
        })?;
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let running = accounts.entry(account.to_owned()).or_default();
        if *running >= self.max_per_account {
            return Err(ImportError::LimitReached(format!(
                "account '{account}' already has {} {what} on this server, its limit \
                 ({account_flag}); {instead}",
                self.max_per_account
            )));
        }
        *running += 1;
        Ok(Admitted {
            _server: server,
            accounts: self.accounts.clone(),
            account: account.to_owned(),
        })
    }
}

/// Gives the account's place back (and drops the account's entry at zero); the server's place
/// goes back with the permit.
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

    /// The account limit refuses first for a busy account, the server limit for everyone;
    /// a dropped place can be taken again.
    #[test]
    fn both_limits_hold_and_places_come_back() {
        let admission = Admission::new(Kind::Uploads, 3, 2);
        let a = AccountId::parse("a").unwrap();
        let b = AccountId::parse("b").unwrap();
        let first = admission.admit(&a).unwrap();
        let _second = admission.admit(&a).unwrap();
        let refused = admission.admit(&a).err().unwrap().to_string();
        assert!(refused.contains("per-account"), "{refused}");
        let _third = admission.admit(&b).unwrap();
        let refused = admission.admit(&b).err().unwrap().to_string();
        assert!(refused.contains("(--max-concurrent-uploads)"), "{refused}");
        drop(first);
        admission.admit(&a).unwrap();
    }
}
