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
//! storage. A state-changing request without it is refused before its handler runs.
//!
//! On a loopback address the console answers only requests addressed to a loopback name
//! (`localhost`, `127.0.0.1`, `[::1]`): a page of another site whose name an attacker rebinds
//! to 127.0.0.1 (DNS rebinding) gets a refusal, not an open server's console.
//!
//! Signed-in sessions live in memory, bounded ([`MAX_SESSIONS`]): with several replicas, a
//! browser must come back to the replica it signed in on (the chart's Service sets client
//! affinity), and a restart signs everyone out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cookie::{Cookie, SameSite};

use super::Console;
use super::error::{JsonError, PageError};
use crate::domain::{Caller, Scope};

/// The session cookie's name.
pub const COOKIE: &str = "bulk_import_session";
/// Its name over HTTPS: the `__Host-` prefix makes browsers refuse it from a sibling domain
/// (or with a narrower path), so no other site can plant an id for this one.
pub const SECURE_COOKIE: &str = "__Host-bulk_import_session";
/// Signed-in sessions kept at once; past it the oldest-expiring goes. Only a valid token
/// makes one, so this bounds what the holders of tokens can cost.
pub const MAX_SESSIONS: usize = 10_000;
/// How long a request's body (a form, the check's first bytes) may take to arrive whole.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A session id: 32 random bytes.
type SessionId = [u8; 32];

/// A signed-in session.
#[derive(Debug, Clone, Copy)]
struct Session {
    /// The digest of the token it signed in with.
    digest: [u8; 32],
    /// When it ends, whatever it does meanwhile.
    expires: Instant,
}

/// The signed-in sessions of this process, and the key of every CSRF token.
pub struct Sessions {
    /// By id.
    map: Mutex<HashMap<SessionId, Session>>,
    /// How long a signed-in session lasts (`--console-session-ttl`).
    ttl: Duration,
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
    fn get(&self, id: &SessionId) -> Option<Session> {
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
        if map.len() >= MAX_SESSIONS {
            let now = Instant::now();
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS
                && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
            {
                map.remove(&oldest);
            }
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
    fn csrf(&self, id: &SessionId) -> String {
        use hmac::{KeyInit, Mac};
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        mac.update(id);
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }
}

/// Cryptographically random bytes from the operating system.
fn random() -> [u8; 32] {
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
    id: SessionId,
    /// The CSRF token its forms must carry.
    pub csrf: String,
    /// Who it is now; `None` before sign-in (or after its token was revoked).
    caller: Option<Caller>,
    /// The server runs without tokens: every page says so.
    pub open: bool,
    /// The peer's address, for the audit log.
    peer: Option<SocketAddr>,
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
}

/// The console's middleware, around every route: refuses a request addressed to another name
/// on a loopback console, finds the session, refuses a state-changing request without the
/// browser's CSRF token, and adds the security headers to every answer.
pub async fn visit(State(console): State<Console>, mut request: Request, next: Next) -> Response {
    let sessions = &console.inner.sessions;
    let auth = &console.inner.auth;
    if console.inner.loopback && !loopback_host(request.headers()) {
        let mut response = PageError::ForeignHost.into_response();
        secure_headers(response.headers_mut());
        return response;
    }
    let secure = console.inner.secure || forwarded_https(request.headers());
    let (id, new) = match session_id(request.headers(), secure) {
        Some(id) => (id, false),
        None => (random(), true),
    };
    let caller = match sessions.get(&id) {
        Some(session) => auth.caller_of(&session.digest),
        None if auth.is_open() => Some(Caller::open()),
        None => None,
    };
    let csrf = sessions.csrf(&id);
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    // The console's script sends its token in a header, and reads JSON answers.
    let scripted = request.headers().contains_key("x-csrf-token");
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let refuse = |refusal: PageError| {
            let mut response = if scripted {
                JsonError(refusal).into_response()
            } else {
                refusal.into_response()
            };
            secure_headers(response.headers_mut());
            response
        };
        request = match csrf_of(request).await {
            Ok((Some(token), rebuilt)) if same(&token, &csrf) => rebuilt,
            Ok(_) => return refuse(PageError::Csrf),
            Err(error) => return refuse(error),
        };
    }
    // Assets are cached, and must carry no cookie.
    let asset = request.uri().path().starts_with("/assets/");
    request.extensions_mut().insert(Visit {
        id,
        csrf,
        caller,
        open: auth.is_open(),
        peer,
    });
    request.extensions_mut().insert(Secure(secure));
    let mut response = next.run(request).await;
    if new && !asset && !response.headers().contains_key(header::SET_COOKIE) {
        set_cookie(response.headers_mut(), &id, None, secure);
    }
    secure_headers(response.headers_mut());
    response
}

/// Compares two tokens in a time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether the request is addressed to a loopback name: `localhost` (or a name under it), a
/// 127.0.0.0/8 address or `[::1]`, with any port.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether the browser came over HTTPS: the session cookie is then `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct Secure(pub bool);

/// A TLS-terminating proxy in front (an ingress) says the browser used HTTPS. Believing it can
/// only make the cookie stricter.
fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The session id the request's cookie names, if well formed: over HTTPS only the
/// `__Host-` cookie, which no other site can have set.
fn session_id(headers: &HeaderMap, secure: bool) -> Option<SessionId> {
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

/// The CSRF token a state-changing request carries: the `x-csrf-token` header (the console's
/// script sends it), else the `csrf` field of a form. Every body but the upload's is read here,
/// whole, small and in time (`MAX_BODY_BYTES`, `BODY_TIMEOUT`), and put back for the handler:
/// a client that sends headers and then trickles or withholds its body is answered within
/// the timeout rather than holding a connection. The upload's body is streamed to the
/// pipeline, whose idle timeout bounds it.
async fn csrf_of(request: Request) -> Result<(Option<String>, Request), PageError> {
    let header = request
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if request.uri().path().ends_with("/new-import/upload") {
        return Ok((header, request));
    }
    let is_form = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, super::MAX_BODY_BYTES);
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) | Err(_) => return Err(PageError::Body),
    };
    let token = header.or_else(|| is_form.then(|| csrf_field(&bytes)).flatten());
    Ok((
        token,
        Request::from_parts(parts, axum::body::Body::from(bytes)),
    ))
}

/// The `csrf` field of a URL-encoded form.
fn csrf_field(body: &[u8]) -> Option<String> {
    /// The one field read; the handler reads the rest.
    #[derive(serde::Deserialize)]
    struct Field {
        /// The form's CSRF token.
        csrf: Option<String>,
    }
    serde_urlencoded::from_bytes::<Field>(body)
        .ok()
        .and_then(|f| f.csrf)
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
fn set_cookie(headers: &mut HeaderMap, id: &SessionId, ttl: Option<Duration>, secure: bool) {
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

/// The headers of every answer: a Content-Security-Policy that allows the console's own
/// script and style only (no inline script, no other origin, no framing), no MIME sniffing,
/// no referrer to other sites, and no caching of pages that show an account's data.
fn secure_headers(headers: &mut HeaderMap) {
    const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                       base-uri 'none'";
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
}
