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
//!
//! To make a token: generate a long random string, give it to the caller, and put its digest
//! in the file (`printf %s "$TOKEN" | sha256sum`, or [`digest`]). Revoking is removing its
//! entry: within a second, the token stops working for new calls (calls already running
//! finish). Without a file the server runs open: every call is let in, as an unnamed caller
//! of every account, and the server says so in its log at start.
//!
//! The parts: [`Tokens`] is one parsed version of the file; [`Authenticator`] holds the
//! current one, checks the `authorization` header of calls (`grpc::auth::CheckToken`), and
//! reads the file again while the server runs (`Authenticator::watch`, spawned by `app`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::domain::Caller;

/// How often the tokens file is looked at: a changed file (a new or revoked token) takes
/// effect within this.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// How long a changed file must stay the same before it is taken.
const SETTLE: Duration = Duration::from_millis(200);

/// The file as TOML gives it. Unknown fields are refused, so that a misspelt key
/// (`acounts`) is an error at load rather than a token with no accounts.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
    /// Says that a file with no token is meant (every call refused): without it, such a file
    /// is taken for a broken one, as a file truncated while it was written would be.
    #[serde(default)]
    allow_empty: bool,
}

/// One `[[tokens]]` entry, before it is checked.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    /// Who holds the token: becomes the caller's name, each import's `created_by`.
    name: String,
    /// The hex SHA-256 of the token, never the token.
    sha256: String,
    /// The accounts the token may act in; `"*"` among them means every account.
    accounts: Vec<String>,
}

/// The tokens of one version of the file, by digest.
///
/// Immutable once parsed: a new version of the file is a new `Tokens`, swapped in whole, so a
/// check never sees half of one version and half of another.
#[derive(Debug, Default)]
pub struct Tokens {
    /// SHA-256 of the token → who it is. A plain hash, with no salt or stretching: right for
    /// long random tokens, which cannot be guessed, and the reason tokens must be generated,
    /// never chosen like passwords.
    by_digest: HashMap<[u8; 32], Caller>,
}

impl Tokens {
    /// Parses a tokens file; the error says what is wrong and where, never a digest.
    ///
    /// Each entry needs a name (1 to 100 characters, no control characters, since it is
    /// stored on imports and written in logs), a 64-hex-digit digest, and at least one account
    /// or `"*"`. The same digest twice is refused rather than one entry silently winning.
    /// Entries are numbered from 1 in errors, as a person counts them in the file.
    ///
    /// A file with no token is refused unless it says `allow_empty = true`, or the operator
    /// said `--allow-empty-tokens` (`allow_empty`): an empty file is far more often one cut
    /// short while it was written than a wish to let nobody in.
    pub fn parse(text: &str, allow_empty: bool) -> Result<Self, String> {
        let file: TokensFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        if file.tokens.is_empty() && !(allow_empty || file.allow_empty) {
            return Err(
                "the file lists no token, so every call would be refused; list the \
                        tokens, or write `allow_empty = true` in it (or start the server with \
                        --allow-empty-tokens) if that is what you mean"
                    .to_owned(),
            );
        }
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

    /// How many tokens the file lists, for the log line that says it was read.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether the file lists no token, in which case every call is refused: unlike a server
    /// without a file, an empty file does not run open.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Who holds `token`, by its digest; `None` for a token the file does not list.
    fn caller(&self, token: &str) -> Option<Caller> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_digest.get(&digest).cloned()
    }
}

/// Why a call was refused.
///
/// The messages say what to do and never quote the token; `grpc::auth::CheckToken` sends
/// them as UNAUTHENTICATED.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this server needs a bearer token: send the metadata \"authorization: Bearer <token>\""
    )]
    /// No `authorization` header, or one whose scheme is not `Bearer` (`Basic ...`).
    Missing,
    /// A `Bearer` header whose token the file does not list (or that is not UTF-8 text, or
    /// has no token after the scheme).
    #[error("the bearer token is not valid; ask for a token of this server")]
    Invalid,
}

/// Checks the tokens of calls: against the current version of the tokens file, or nothing at
/// all on a server that runs open.
pub struct Authenticator {
    /// `None` when the server runs open.
    file: Option<PathBuf>,
    /// `--allow-empty-tokens`: a file with no token is accepted (see `Tokens::parse`).
    allow_empty: bool,
    /// The current version, behind an `Arc` so that a check clones a pointer and releases the
    /// lock at once; the watcher's write waits for no check.
    tokens: RwLock<Arc<Tokens>>,
}

impl Authenticator {
    /// A server without tokens: every call is let in, as `Caller::open`.
    pub fn open() -> Self {
        Self {
            file: None,
            allow_empty: false,
            tokens: RwLock::new(Arc::default()),
        }
    }

    /// Reads the tokens file; a server does not start with a broken one, nor with one that
    /// lists no token unless that is said (`allow_empty`, or the file's `allow_empty`).
    pub fn from_file(path: &Path, allow_empty: bool) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let tokens =
            Tokens::parse(&text, allow_empty).map_err(|e| format!("{}: {e}", path.display()))?;
        if tokens.is_empty() {
            tracing::warn!(
                path = %path.display(),
                "the auth tokens file lists no token: every call is refused until it does"
            );
        } else {
            tracing::info!(path = %path.display(), tokens = tokens.len(), "read the auth tokens");
        }
        Ok(Self {
            file: Some(path.to_owned()),
            allow_empty,
            tokens: RwLock::new(Arc::new(tokens)),
        })
    }

    /// Whether the server runs without a tokens file; `app` warns about it at start.
    pub fn is_open(&self) -> bool {
        self.file.is_none()
    }

    /// Who makes a call with this `authorization` metadata value.
    ///
    /// The scheme is matched in any case (`bearer` works), and spaces around the token are
    /// ignored. A poisoned lock is used as it is: the tokens inside are whole either way.
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

    /// The console's sign-in: the digest of `token` and its caller, for a token the current
    /// file lists. The session keeps the digest, never the token, and asks
    /// [`caller_of`](Self::caller_of) on each request. `None` on an open server, which has
    /// nobody to sign in.
    pub fn sign_in(&self, token: &str) -> Option<([u8; 32], Caller)> {
        self.file.as_ref()?;
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        self.caller_of(&digest).map(|caller| (digest, caller))
    }

    /// Who holds the token with this digest, as the current file says: a session's token
    /// removed from the file (revoked) is `None` within a second, as it is for gRPC calls.
    pub fn caller_of(&self, digest: &[u8; 32]) -> Option<Caller> {
        self.file.as_ref()?;
        let tokens = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        tokens.by_digest.get(digest).cloned()
    }

    /// Reads the file again whenever its content changes, for as long as the server runs.
    ///
    /// Compares the bytes, not the modification time, so that any change is seen however the
    /// file was replaced. A file that cannot be read (between the kubelet's swaps) is skipped
    /// until the next look. A broken version is logged once, and the tokens read before stay
    /// until the file changes again. Returns at once on an open server; `app` aborts it at
    /// shutdown.
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
            // A file being written may be caught half way, and a half may parse: a version is
            // taken only once it stays the same for a moment.
            tokio::time::sleep(SETTLE).await;
            match tokio::fs::read(&path).await {
                Ok(again) if again == now => {}
                // Still changing, or away: looked at again at the next tick.
                Ok(_) | Err(_) => continue,
            }
            let parsed = std::str::from_utf8(&now)
                .map_err(|_| "the file is not UTF-8 text".to_owned())
                .and_then(|text| Tokens::parse(text, self.allow_empty));
            match parsed {
                Ok(tokens) => {
                    if tokens.is_empty() {
                        // Said so by the file or the operator, so taken; but every call is now
                        // refused, which the operator should see at once.
                        tracing::warn!(
                            path = %path.display(),
                            "the auth tokens file lists no token now: every call is refused \
                             until it does"
                        );
                    } else {
                        tracing::info!(
                            path = %path.display(), tokens = tokens.len(),
                            "read the auth tokens again"
                        );
                    }
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
///
/// Lower-case hex, as `sha256sum` prints it; the file accepts either case.
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
        let tokens = Tokens::parse(&file(&[("hr-sync", "s3cret", &["acme"])]), false).unwrap();
        let caller = tokens.caller("s3cret").unwrap();
        assert_eq!(caller.name(), "hr-sync");
        assert!(caller.may_act_in(&AccountId::parse("acme").unwrap()));
        assert!(tokens.caller("S3cret").is_none());
    }

    #[test]
    fn broken_files_say_what_is_wrong() {
        assert!(Tokens::parse("[[tokens]]\nname = \"x\"\n", false).is_err());
        let bad_digest = "[[tokens]]\nname = \"x\"\nsha256 = \"abc\"\naccounts = [\"a\"]\n";
        assert!(
            Tokens::parse(bad_digest, false)
                .unwrap_err()
                .contains("64 hex digits")
        );
        let none = file(&[("x", "t", &[])]);
        assert!(
            Tokens::parse(&none, false)
                .unwrap_err()
                .contains("at least one account")
        );
        let twice = file(&[("x", "t", &["a"]), ("y", "t", &["b"])]);
        assert!(Tokens::parse(&twice, false).unwrap_err().contains("twice"));
        assert!(Tokens::parse("[[tokens]]\nnom = 1\n", false).is_err());
        // A file with no token is refused, unless that is said, in the file or by the flag.
        assert!(
            Tokens::parse("", false)
                .unwrap_err()
                .contains("lists no token")
        );
        assert!(Tokens::parse("", true).unwrap().is_empty());
        assert!(
            Tokens::parse("allow_empty = true\n", false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn calls_need_a_bearer_token_when_there_is_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.toml");
        std::fs::write(&path, file(&[("ops", "t0ken", &["*"])])).unwrap();
        let auth = Authenticator::from_file(&path, false).unwrap();
        assert_eq!(auth.check(None), Err(AuthError::Missing));
        assert_eq!(auth.check(Some(b"Basic abc")), Err(AuthError::Missing));
        assert_eq!(auth.check(Some(b"Bearer nope")), Err(AuthError::Invalid));
        assert_eq!(auth.check(Some(b"Bearer t0ken")).unwrap().name(), "ops");
        assert_eq!(auth.check(Some(b"bearer  t0ken ")).unwrap().name(), "ops");
        assert_eq!(Authenticator::open().check(None), Ok(Caller::open()));
    }
}
