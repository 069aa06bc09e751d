//! Bearer tokens, scoped to accounts, from a TOML file that is read again when it changes.
//!
//! ```toml
//! [[tokens]]
//! name = "hr-sync"                 # who: recorded on each import, shown in logs
//! sha256 = "<hex SHA-256 of the token>"
//! accounts = ["acct-1", "acct-2"]  # or ["*"] for every account
//! ```
//!
//! The file holds digests, not tokens: a presented token is hashed and looked up by its digest,
//! so the server never holds, logs or echoes a token. In Kubernetes the file is a mounted
//! Secret, which the kubelet replaces when the Secret changes: the file is checked every
//! second, and a broken new version keeps the old tokens (and says why in the log) rather than
//! locking everyone out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::domain::Caller;

/// How often the tokens file is looked at.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    accounts: Vec<String>,
}

/// The tokens of one version of the file, by digest.
#[derive(Debug, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Caller>,
}

impl Tokens {
    /// Parses a tokens file; the error says what is wrong and where, never a digest.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokensFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let mut by_digest = HashMap::new();
        for (i, token) in file.tokens.iter().enumerate() {
            if token.name.trim().is_empty() {
                return Err(format!("token {}: name must not be empty", i + 1));
            }
            // The name is stored as `created_by` and written in audit logs.
            if token.name.chars().any(char::is_control) || token.name.chars().count() > 100 {
                return Err(format!(
                    "token {}: name must be at most 100 characters, without control characters",
                    i + 1
                ));
            }
            let which = format!("token {} ('{}')", i + 1, token.name);
            let mut digest = [0u8; 32];
            hex::decode_to_slice(token.sha256.trim(), &mut digest)
                .map_err(|_| format!("{which}: sha256 must be 64 hex digits"))?;
            if token.accounts.is_empty() {
                return Err(format!(
                    "{which}: accounts must list at least one account, or \"*\""
                ));
            }
            let caller = Caller::token(&token.name, &token.accounts);
            if by_digest.insert(digest, caller).is_some() {
                return Err(format!("{which}: the same token is listed twice"));
            }
        }
        Ok(Self { by_digest })
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    fn caller(&self, token: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_digest.get(&digest).cloned()
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this server needs a bearer token: send the metadata \"authorization: Bearer <token>\""
    )]
    Missing,
    #[error("the bearer token is not valid; ask for a token of this server")]
    Invalid,
}

/// Checks the tokens of calls: against the current version of the tokens file, or nothing at
/// all on a server that runs open.
pub struct Authenticator {
    /// `None` when the server runs open.
    file: Option<PathBuf>,
    tokens: RwLock<Arc<Tokens>>,
}

impl Authenticator {
    /// A server without tokens: every call is let in, as `Caller::open`.
    pub fn open() -> Self {
        Self {
            file: None,
            tokens: RwLock::new(Arc::default()),
        }
    }

    /// Reads the tokens file; a server does not start with a broken one.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let tokens = Tokens::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), tokens = tokens.len(), "read the auth tokens");
        Ok(Self {
            file: Some(path.to_owned()),
            tokens: RwLock::new(Arc::new(tokens)),
        })
    }

    pub fn is_open(&self) -> bool {
        self.file.is_none()
    }

    /// Who makes a call with this `authorization` metadata value.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        if self.file.is_none() {
            return Ok(Caller::open());
        }
        let value = authorization.ok_or(AuthError::Missing)?;
        let value = std::str::from_utf8(value).map_err(|_| AuthError::Invalid)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Invalid)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        let tokens = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tokens.caller(token.trim()).ok_or(AuthError::Invalid)
    }

    /// Reads the file again whenever its content changes, for as long as the server runs.
    pub async fn watch(self: Arc<Self>) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let mut last = std::fs::read(&path).ok();
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = match tokio::fs::read(&path).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    // Between the kubelet's swaps the file may be away for a moment.
                    tracing::debug!(path = %path.display(), error = %e, "cannot read the auth tokens");
                    continue;
                }
            };
            if last.as_deref() == Some(now.as_slice()) {
                continue;
            }
            let parsed = std::str::from_utf8(&now)
                .map_err(|_| "the file is not UTF-8 text".to_owned())
                .and_then(Tokens::parse);
            match parsed {
                Ok(tokens) => {
                    tracing::info!(path = %path.display(), tokens = tokens.len(), "read the auth tokens again");
                    *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tokens);
                }
                Err(reason) => tracing::error!(
                    path = %path.display(), %reason,
                    "the auth tokens file is broken; keeping the tokens read before"
                ),
            }
            last = Some(now);
        }
    }
}

/// The hex SHA-256 of a token, as the tokens file wants it.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AccountId;

    fn file(entries: &[(&str, &str, &[&str])]) -> String {
        entries
            .iter()
            .map(|(name, token, accounts)| {
                let accounts: Vec<String> = accounts.iter().map(|a| format!("\"{a}\"")).collect();
                format!(
                    "[[tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\naccounts = [{}]\n",
                    digest(token),
                    accounts.join(", ")
                )
            })
            .collect()
    }

    #[test]
    fn a_token_is_known_by_its_digest_only() {
        let tokens = Tokens::parse(&file(&[("hr-sync", "s3cret", &["acme"])])).unwrap();
        let caller = tokens.caller("s3cret").unwrap();
        assert_eq!(caller.name(), "hr-sync");
        assert!(caller.may_act_in(&AccountId::parse("acme").unwrap()));
        assert!(tokens.caller("S3cret").is_none());
    }

    #[test]
    fn broken_files_say_what_is_wrong() {
        assert!(Tokens::parse("[[tokens]]\nname = \"x\"\n").is_err());
        let bad_digest = "[[tokens]]\nname = \"x\"\nsha256 = \"abc\"\naccounts = [\"a\"]\n";
        assert!(
            Tokens::parse(bad_digest)
                .unwrap_err()
                .contains("64 hex digits")
        );
        let none = file(&[("x", "t", &[])]);
        assert!(
            Tokens::parse(&none)
                .unwrap_err()
                .contains("at least one account")
        );
        let twice = file(&[("x", "t", &["a"]), ("y", "t", &["b"])]);
        assert!(Tokens::parse(&twice).unwrap_err().contains("twice"));
        assert!(Tokens::parse("[[tokens]]\nnom = 1\n").is_err());
    }

    #[test]
    fn calls_need_a_bearer_token_when_there_is_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, file(&[("ops", "t0ken", &["*"])])).unwrap();
        let auth = Authenticator::from_file(&path).unwrap();
        assert_eq!(auth.check(None), Err(AuthError::Missing));
        assert_eq!(auth.check(Some(b"Basic abc")), Err(AuthError::Missing));
        assert_eq!(auth.check(Some(b"Bearer nope")), Err(AuthError::Invalid));
        assert_eq!(auth.check(Some(b"Bearer t0ken")).unwrap().name(), "ops");
        assert_eq!(auth.check(Some(b"bearer  t0ken ")).unwrap().name(), "ops");
        assert_eq!(Authenticator::open().check(None), Ok(Caller::open()));
    }
}
