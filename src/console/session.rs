//! Console sessions: who a browser is, and the CSRF token of its forms.
//!
//! Every browser gets a random id in a cookie that is HttpOnly, SameSite=Strict and `Secure`
//! when it came over HTTPS. The id alone is nothing: only a sign-in puts it in this process's
//! map, with the *digest* of the token it signed in with (never the token) and its end; the
//! [`Authenticator`](crate::auth::Authenticator) is asked on every request who that digest is now, so a token removed from
//! the tokens file stops its sessions within a second, as it stops gRPC calls. An id that is
//! not in the map is an anonymous visitor: on an open server, anyone; else someone who can only
//! sign in. Anonymous visitors cost no memory, so a flood of them evicts nobody; sign-in
//! gives a new id, so an id planted before it is worth nothing after.
//!
//! The CSRF token of a browser's forms is an HMAC of its id under a key drawn at start: only
//! the console's pages show it, another site can neither read nor compute it, and it needs no
//! storage. A state-changing request without it is refused before its handler runs (`guard`).
//!
//! Signed-in sessions live in memory, bounded ([`MAX_SESSIONS`]): with several replicas, a
//! browser must come back to the replica it signed in on (the chart's Service sets client
//! affinity), and a restart signs everyone out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};

use super::Console;
use super::error::PageError;
use crate::domain::{Caller, Scope};

/// The session cookie's name.
pub const COOKIE: &str = "bulk_import_session";
/// Its name over HTTPS: the `__Host-` prefix makes browsers refuse it from a sibling domain
/// (or with a narrower path), so no other site can plant an id for this one.
pub const SECURE_COOKIE: &str = "__Host-bulk_import_session";
/// Signed-in sessions kept at once; past it the oldest-expiring goes. Only a valid token
/// makes one, so this bounds what the holders of tokens can cost.
pub const MAX_SESSIONS: usize = 10_000;
/// Signed-in sessions of one token: past it, that token's own oldest goes, so that one
/// token's holder signing in again and again cannot sign the others out.
pub const MAX_SESSIONS_PER_TOKEN: usize = 100;

/// A session id: 32 random bytes.
pub(super) type SessionId = [u8; 32];

/// A signed-in session.
#[derive(Debug, Clone, Copy)]
pub(super) struct Session {
    /// The digest of the token it signed in with.
    pub(super) digest: [u8; 32],
    /// When it ends, whatever it does meanwhile.
    expires: Instant,
}

/// The signed-in sessions of this process, and the key of every CSRF token.
pub struct Sessions {
    /// By id.
    map: Mutex<HashMap<SessionId, Session>>,
    /// How long a signed-in session lasts (`--console-session-ttl`).
    pub(super) ttl: Duration,
    /// The HMAC key of CSRF tokens, drawn at start: a restart makes old pages' forms stale.
    key: [u8; 32],
}

impl Sessions {
    /// No session yet; signed-in sessions last `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
            key: random(),
        }
    }

    /// The live signed-in session of `id`; an expired one is removed.
    pub(super) fn get(&self, id: &SessionId) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(session) if session.expires > Instant::now() => Some(*session),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// A new signed-in session for the token of `digest`, making room when the map is full.
    fn create(&self, digest: [u8; 32]) -> SessionId {
        let session = Session {
            digest,
            expires: Instant::now() + self.ttl,
        };
        let id = random();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        let mine = map.values().filter(|s| s.digest == digest).count();
        if mine >= MAX_SESSIONS_PER_TOKEN
            && let Some(oldest) = map
                .iter()
                .filter(|(_, s)| s.digest == digest)
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(id, session);
        id
    }

    /// Ends a session (sign-out).
    fn remove(&self, id: &SessionId) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// The CSRF token of the browser with `id`: HMAC-SHA256 of the id under the key.
    pub(super) fn csrf(&self, id: &SessionId) -> String {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(id);
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

/// Cryptographically random bytes from the operating system.
pub(super) fn random() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    // The OS's generator does not fail on the systems this runs on; if it ever did, a session
    // must not get a guessable id, so the request fails instead.
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes
}

/// What the console knows of a request's browser, put in the request's extensions by
/// [`visit`]; every handler takes it.
#[derive(Debug, Clone)]
pub struct Visit {
    /// The session's id.
    pub(super) id: SessionId,
    /// The CSRF token its forms must carry.
    pub csrf: String,
    /// Who it is now; `None` before sign-in (or after its token was revoked).
    pub(super) caller: Option<Caller>,
    /// The server runs without tokens: every page says so.
    pub open: bool,
    /// The peer's address, for the audit log.
    pub(super) peer: Option<SocketAddr>,
}

impl Visit {
    /// The signed-in caller, or the way to the sign-in page, back to `next` after it.
    pub fn caller(&self, next: &str) -> Result<&Caller, PageError> {
        self.caller.as_ref().ok_or_else(|| PageError::SignIn {
            next: next.to_owned(),
        })
    }

    /// The caller, if signed in: for the pages that show differently to one.
    pub fn signed_in(&self) -> Option<&Caller> {
        self.caller.as_ref()
    }

    /// The caller's right to act in `account` (as typed in the address), checked as gRPC
    /// checks it: a bad id is INVALID_ARGUMENT, an account the token does not cover
    /// PERMISSION_DENIED, logged in the audit log.
    pub fn scope(&self, account: &str, next: &str) -> Result<Scope, PageError> {
        let caller = self.caller(next)?;
        let account =
            crate::grpc::convert::account_id(account).map_err(|e| PageError::Import(e.into()))?;
        caller.scope(account).map_err(|account| {
            crate::audit::denied(caller.name(), account.as_str(), "console", self.peer);
            PageError::Import(crate::import::ImportError::PermissionDenied(account))
        })
    }
    /// The caller's right to `account` and the import id of the address, both checked as
    /// gRPC checks them (the account first).
    pub fn import(
        &self,
        account: &str,
        import_id: &str,
        next: &str,
    ) -> Result<(Scope, crate::domain::ImportId), PageError> {
        let scope = self.scope(account, next)?;
        let id =
            crate::grpc::convert::import_id(import_id).map_err(|e| PageError::Import(e.into()))?;
        Ok((scope, id))
    }
}

/// Whether the browser came over HTTPS: the session cookie is then `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct Secure(pub bool);

/// The session id the request's cookie names, if well formed: over HTTPS only the
/// `__Host-` cookie, which no other site can have set.
pub(super) fn session_id(headers: &HeaderMap, secure: bool) -> Option<SessionId> {
    let name = if secure { SECURE_COOKIE } else { COOKIE };
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .and_then(|c| URL_SAFE_NO_PAD.decode(c.value()).ok())
        .and_then(|bytes| bytes.try_into().ok())
}

/// Whether the browser of `visit` may still act in `account`: its session still there and
/// its token still in the file with the account (an open server: always). For streams, which
/// outlive the check of the request that opened them.
pub fn still_allowed(console: &Console, visit: &Visit, account: &crate::domain::AccountId) -> bool {
    let auth = &console.inner.auth;
    if auth.is_open() {
        return true;
    }
    console
        .inner
        .sessions
        .get(&visit.id)
        .and_then(|session| auth.caller_of(&session.digest))
        .is_some_and(|caller| caller.may_act_in(account))
}

/// Signs a browser in with `token`: a new session id for the token's digest (the id it had
/// before stays anonymous). `None` for a token the file does not list.
pub fn sign_in(console: &Console, token: &str) -> Option<(Caller, SessionCookie)> {
    let (digest, caller) = console.inner.auth.sign_in(token)?;
    let id = console.inner.sessions.create(digest);
    Some((caller, SessionCookie(id, true)))
}

/// Ends a session: its id is forgotten, and the browser gets a new anonymous one.
pub fn sign_out(console: &Console, visit: &Visit) -> SessionCookie {
    console.inner.sessions.remove(&visit.id);
    SessionCookie(random(), false)
}

/// A new id for the browser's cookie, and whether it is a signed-in session's.
pub struct SessionCookie(SessionId, bool);

impl SessionCookie {
    /// Sets the cookie on `response`: a signed-in session's ends with the session, an
    /// anonymous one with the browser's.
    pub fn set(&self, console: &Console, secure: Secure, response: &mut Response) {
        let ttl = self.1.then_some(console.inner.sessions.ttl);
        set_cookie(response.headers_mut(), &self.0, ttl, secure.0);
    }
}

/// The session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's page
/// sends it), `Secure` over HTTPS, and gone when the session ends (`ttl`), or when the browser
/// closes for an anonymous one.
pub(super) fn set_cookie(
    headers: &mut HeaderMap,
    id: &SessionId,
    ttl: Option<Duration>,
    secure: bool,
) {
    let name = if secure { SECURE_COOKIE } else { COOKIE };
    let mut cookie = Cookie::build((name, URL_SAFE_NO_PAD.encode(id)))
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .path("/");
    if let Some(ttl) = ttl {
        cookie = cookie.max_age(cookie::time::Duration::seconds(ttl.as_secs() as i64));
    }
    let cookie = cookie.build();
    if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
        headers.insert(header::SET_COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_token_signing_in_again_and_again_signs_only_itself_out() {
        let sessions = Sessions::new(Duration::from_secs(3600));
        let other = sessions.create([2; 32]);
        let first = sessions.create([1; 32]);
        for _ in 0..MAX_SESSIONS_PER_TOKEN * 3 {
            sessions.create([1; 32]);
        }
        assert!(
            sessions.get(&other).is_some(),
            "another token's session stays"
        );
        assert!(sessions.get(&first).is_none(), "its own oldest went");
        let map = sessions.map.lock().unwrap();
        assert_eq!(
            map.values().filter(|s| s.digest == [1; 32]).count(),
            MAX_SESSIONS_PER_TOKEN
        );
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_id_and_the_process() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let (a, b) = ([7; 32], [8; 32]);
        assert_eq!(sessions.csrf(&a), sessions.csrf(&a));
        assert_ne!(sessions.csrf(&a), sessions.csrf(&b));
        assert_ne!(
            sessions.csrf(&a),
            Sessions::new(Duration::from_secs(60)).csrf(&a)
        );
    }
}
